"""PaRIS (`bs.paris`): online smoothed additive functionals against the exact Gaussian answer.

The reference conditions the dense joint Gaussian of all states and observations
(tests/reference/dense_gaussian.py) on each prefix y_{0:t}: its block (t-1, t) gives the lag-one
cross-covariances, so E[S_t | y_{0:t}] is exact for every t. The estimates of R independent runs
(one vmapped program) give the standard error; PaRIS is biased like any self-normalised
estimate, by O(T / N), which at N = 1000 and T = 12 is well below the 4 standard errors allowed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayesssm as bs
from bayesssm.inference._paris import paris_update
from bayesssm.inference.paris import paris
from bayesssm.ssm import StepInputs
from tests.reference import dense_gaussian

PARAMS = {
    "A": np.array([[0.9, 0.2], [-0.1, 0.7]]),
    "Q": np.array([[0.3, 0.05], [0.05, 0.2]]),
    "H": np.array([[1.0, 0.5]]),
    "R": np.array([[0.5]]),
    "m0": np.array([0.5, -0.3]),
    "P0": np.eye(2),
}
T = 12
RUNS = 16


def functional(x_prev, x, t):
    return {"cross": x_prev @ x, "squares": x**2, "timed": t * x[0]}


def initial(x0):
    return {"cross": jnp.zeros(()), "squares": x0**2, "timed": jnp.zeros(())}


@pytest.fixture(scope="module")
def problem():
    model = bs.LinearGaussianSSM(**{k: jnp.asarray(v) for k, v in PARAMS.items()})
    _, y = model.sample(jax.random.key(3), num_timesteps=T)
    return model, np.asarray(y)


def exact_online(y):
    """E[S_t | y_{0:t}] for t = 0..T-1, each from the joint Gaussian conditioned on y_{0:t}."""
    joint = dense_gaussian.joint_gaussian(T, **PARAMS)
    out = {"cross": np.zeros(T), "squares": np.zeros((T, 2)), "timed": np.zeros(T)}
    for t in range(T):
        cond = dense_gaussian.condition(joint, y, up_to=t + 1)
        means = [cond.mean[joint.state_index(s)] for s in range(t + 1)]

        def block(s, r, cond=cond):
            return cond.cov[np.ix_(joint.state_index(s), joint.state_index(r))]

        out["squares"][t] = sum(means[s] ** 2 + np.diag(block(s, s)) for s in range(t + 1))
        out["cross"][t] = sum(
            means[s - 1] @ means[s] + np.trace(block(s - 1, s)) for s in range(1, t + 1)
        )
        out["timed"][t] = sum(s * means[s][0] for s in range(1, t + 1))
    return out


def _runs(model, y, num_particles, backward, runs=RUNS):
    engine = bs.ParticleFilter(num_particles=num_particles)

    def one(key):
        result = paris(
            model, y, functional, key=key, engine=engine, initial=initial, backward=backward
        )
        return result.estimates, result.log_marginal

    keys = jax.random.split(jax.random.key(11), runs)
    return jax.jit(jax.vmap(one))(keys)


def _assert_within_se(draws, exact, name):
    draws = np.asarray(draws)
    mean = draws.mean(axis=0)
    se = draws.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])
    assert np.all(np.abs(mean - exact) <= 4 * se), (name, np.max(np.abs(mean - exact) / se))


_CACHE = {}


def _cached_runs(problem, backward, num_particles):
    if (backward, num_particles) not in _CACHE:
        _CACHE[backward, num_particles] = _runs(*problem, num_particles, backward)
    return _CACHE[backward, num_particles]


# The exact kernel is slow-only here: the default suite checks its probabilities exactly
# (tests/inference/test_particle_smoothers.py) and runs it in PaRIS particle Gibbs.
@pytest.mark.parametrize(
    "backward, num_particles",
    [("rejection", 1000), pytest.param("exact", 300, marks=pytest.mark.slow)],
)
def test_online_estimates_match_exact_smoother(problem, backward, num_particles):
    model, y = problem
    estimates, log_marginals = _cached_runs(problem, backward, num_particles)
    exact = exact_online(y)
    for name in exact:
        _assert_within_se(estimates[name], exact[name], name)
    # the filter inside is the usual one: its log-likelihood is unbiased on the natural scale
    ll = dense_gaussian.smooth(y, **PARAMS).log_likelihood
    ratio = np.exp(np.asarray(log_marginals) - ll)
    assert abs(ratio.mean() - 1) <= 4 * ratio.std(ddof=1) / np.sqrt(RUNS)


def test_the_tests_can_fail(problem):
    """A wrong functional's estimates (x_t x_t in place of x_{t-1} x_t) are rejected."""
    estimates, _ = _cached_runs(problem, "rejection", 1000)
    exact = exact_online(problem[1])
    with pytest.raises(AssertionError):
        _assert_within_se(estimates["squares"].sum(-1), exact["cross"], "cross")


def test_paris_update_averages_backward_draws():
    """With one previous particle every backward draw picks it: tau = tau_prev + h exactly."""
    model = bs.LinearGaussianSSM(**{k: jnp.asarray(v) for k, v in PARAMS.items()})
    prev = jnp.array([[0.3, -0.2]])
    new = jnp.array([[1.0, 2.0], [0.0, -1.0], [0.5, 0.5]])
    stats = {"cross": jnp.array([2.0]), "squares": jnp.array([[1.0, 1.0]]), "timed": jnp.zeros(1)}
    update = jax.jit(lambda key, stats: paris_update(
        key, model, stats, prev, jnp.zeros(1), new, StepInputs(jnp.array(4)), functional, 3
    ))  # fmt: skip
    out = update(jax.random.key(0), stats)
    np.testing.assert_allclose(out["cross"], 2.0 + new @ prev[0])
    np.testing.assert_allclose(out["squares"], 1.0 + new**2)
    np.testing.assert_allclose(out["timed"], 5 * new[:, 0])


def test_bad_arguments(problem):
    model, y = problem
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_backward"):
        paris(model, y, functional, key=key, num_backward=0)
    with pytest.raises(TypeError, match="functional"):
        paris(model, y, 3.0, key=key)
    with pytest.raises(TypeError, match="initial"):
        paris(model, y, functional, key=key, initial=1.0)
    with pytest.raises(ValueError, match="backward"):
        paris(model, y, functional, key=key, backward="fast")
    with pytest.raises(TypeError, match="ParticleFilter"):
        paris(model, y, functional, key=key, engine=bs.Kalman())
    with pytest.raises(ValueError, match="key"):
        paris(model, y, functional, key=None)


@pytest.mark.slow
@pytest.mark.parametrize("num_backward", [2, 1])
def test_many_runs_bias_below_monte_carlo_error(problem, num_backward):
    """96 runs at N = 1000: the PaRIS bias at the final step is still within 4 standard errors
    of the 96-run average (2.5x tighter than the default test), for K = 2 and K = 1."""
    model, y = problem
    engine = bs.ParticleFilter(num_particles=1000)

    def one(key):
        result = paris(
            model, y, functional, key=key, engine=engine, initial=initial,
            num_backward=num_backward,
        )  # fmt: skip
        return result.estimates

    keys = jax.random.split(jax.random.key(12), 96)
    estimates = jax.jit(jax.vmap(one))(keys)
    exact = exact_online(y)
    for name in exact:
        _assert_within_se(estimates[name], exact[name], name)
