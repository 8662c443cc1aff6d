"""Particle smoothers (FFBS, rejection FFBS, genealogy) against the Kalman/RTS smoother.

Smoothing means and variances are averaged over R independent runs (one vmapped program per
smoother); the standard error comes from the spread of the runs. A run's estimate is biased by
O(1/N) (self-normalised weights; the paths' variance uses divisor S), which at N = 400 is a few
hundredths of a standard error of the R-run average, so 4 standard errors is an honest bound.
"""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import bayesssm as bs
from bayesssm.inference._backward import backward_indices_exact, backward_indices_rejection
from bayesssm.ssm import StepInputs

T = 30
RUNS = 16
N = 400
PATHS = 200


@pytest.fixture(scope="module")
def problem():
    model = bs.LinearGaussianSSM(
        A=jnp.array([[0.9]]),
        Q=jnp.array([[0.5]]),
        H=jnp.array([[1.0]]),
        R=jnp.array([[0.8]]),
        m0=jnp.array([0.3]),
        P0=jnp.array([[1.0]]),
    )
    _, y = model.sample(jax.random.key(5), num_timesteps=T)
    return model, np.asarray(y), bs.smooth(model, y)


def _smoother_runs(model, y, smoother):
    engine = bs.ParticleFilter(num_particles=N, smoother=smoother, num_smoothing_paths=PATHS)

    def one(key):
        result = bs.smooth(model, y, engine=engine, key=key)
        assert result.paths.shape == (PATHS, T, 1)
        return result.means[:, 0], result.variances[:, 0]

    keys = jax.random.split(jax.random.key(7), RUNS)
    means, variances = jax.jit(jax.vmap(one))(keys)
    return np.asarray(means), np.asarray(variances)


def _within_4se(draws, exact):
    mean = draws.mean(axis=0)
    se = draws.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])
    return np.abs(mean - exact) <= 4 * se


# ffbs_rejection against RTS is slow-only: the default suite checks it draws the law of ffbs
# (test_ffbs_and_rejection_draw_the_same_law) and its kernel's exact probabilities.
@pytest.mark.parametrize(
    "smoother", ["ffbs", pytest.param("ffbs_rejection", marks=pytest.mark.slow), "genealogy"]
)
def test_smoothing_moments_match_rts(problem, smoother):
    model, y, exact = problem
    means, variances = _smoother_runs(model, y, smoother)
    # the genealogy's paths coalesce: only its last steps are trustworthy
    steps = slice(T - 3, T) if smoother == "genealogy" else slice(None)
    assert np.all(_within_4se(means, np.asarray(exact.means)[:, 0])[steps])
    assert np.all(_within_4se(variances, np.asarray(exact.covs)[:, 0, 0])[steps])
    if smoother == "ffbs":  # the check can fail: the filtering means are not the smoothing ones
        filtered = np.asarray(bs.filter(model, y).means)[:, 0]
        assert not np.all(_within_4se(means, filtered))


def test_ffbs_and_rejection_draw_the_same_law(problem):
    """Same filter (same key), many paths: path means and lag-one products agree within the
    combined standard error (paths are independent given the filter)."""
    model, y, _ = problem
    key = jax.random.key(9)
    draws = {}
    for smoother in ("ffbs", "ffbs_rejection"):
        engine = bs.ParticleFilter(num_particles=200, smoother=smoother)
        paths = bs.sample_posterior(model, y, engine=engine, key=key, num_samples=1000)
        assert paths.shape == (1000, T, 1)
        x = np.asarray(paths)[..., 0]
        draws[smoother] = np.concatenate([x, x[:, 1:] * x[:, :-1]], axis=1)
    a, b = draws["ffbs"], draws["ffbs_rejection"]
    se = np.sqrt(a.var(0, ddof=1) / a.shape[0] + b.var(0, ddof=1) / b.shape[0])
    assert np.all(np.abs(a.mean(0) - b.mean(0)) <= 4 * se)


def test_backward_kernels_have_the_exact_probabilities():
    """Many draws for two fixed states (one in the tail, so rejection often fails and the exact
    fallback runs; max_trials = 0 is all fallback): chi-square against W_j f(x | x_j)."""
    model = bs.LinearGaussianSSM(
        A=jnp.array([[0.8]]), Q=jnp.array([[0.3]]), H=jnp.eye(1), R=jnp.eye(1),
        m0=jnp.zeros(1), P0=jnp.eye(1),
    )  # fmt: skip
    num, draws = 12, 3001
    rng = np.random.default_rng(0)
    particles = rng.normal(size=(num, 1))
    log_w = rng.normal(size=num)
    log_w -= np.log(np.exp(log_w).sum())
    targets = np.array([0.2, 2.5])
    x_next = jnp.asarray(np.repeat(targets, draws)[:, None])
    step = StepInputs(jnp.array(0))

    @jax.jit
    def draw(key, max_trials):  # max_trials may be traced: one program for every value
        exact = backward_indices_exact(key, model, x_next, particles, log_w, step)
        rejection = backward_indices_rejection(
            key, model, x_next, particles, log_w, step, max_trials=max_trials
        )
        return exact, rejection

    runs = {}
    for max_trials in (64, 1, 0):
        exact, rejection = draw(jax.random.key(max_trials), max_trials)
        runs["exact", max_trials] = exact
        runs["rejection", max_trials] = rejection
    for name, indices in runs.items():
        indices = np.asarray(indices).reshape(2, draws)
        for target, row in zip(targets, indices, strict=True):
            log_p = log_w + stats.norm.logpdf(target, 0.8 * particles[:, 0], np.sqrt(0.3))
            p = np.exp(log_p - log_p.max())
            p /= p.sum()
            counts = np.bincount(row, minlength=num)
            keep = p * draws > 1  # pool the cells too small for the chi-square approximation
            observed = np.append(counts[keep], counts[~keep].sum())
            expected = np.append(p[keep], p[~keep].sum()) * draws
            chi2 = np.sum((observed - expected) ** 2 / np.maximum(expected, 1e-300))
            assert chi2 <= stats.chi2.ppf(1 - 1e-4, df=keep.sum()), (name, target, chi2)


class ScalarAR(bs.AbstractSSM):
    rho: jax.Array

    def initial(self, inputs=None):
        return distrax.Normal(0.0, 1.0)

    def transition(self, x, inputs=None):
        return distrax.Normal(self.rho * x, 0.5)

    def emission(self, x, inputs=None):
        return distrax.Normal(x, 1.0)


def test_scalar_states_give_paths_s_t():
    """States of shape () (a distrax.Normal transition, whose mode bounds the rejection)."""
    model = ScalarAR(jnp.asarray(0.7))
    y = np.sin(np.arange(8.0))
    engine = bs.ParticleFilter(num_particles=64, smoother="ffbs_rejection")
    paths = bs.sample_posterior(model, y, engine=engine, key=jax.random.key(0), num_samples=5)
    assert paths.shape == (5, 8)
    assert np.all(np.isfinite(np.asarray(paths)))


def test_default_smoother_is_ffbs_and_bad_names_are_refused():
    assert bs.ParticleFilter().smoother == "ffbs"
    with pytest.raises(ValueError, match="smoother must be one of"):
        bs.ParticleFilter(smoother="forward-backward")
    with pytest.raises(ValueError, match="num_smoothing_paths"):
        bs.ParticleFilter(num_smoothing_paths=0)
