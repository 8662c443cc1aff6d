r"""Hamiltonian SMC against Kalman, and against the bootstrap filter where that one collapses.

Monte Carlo tolerances, as in test_particle_filter.py (whose helpers these tests share): R
independent runs, averages compared with the exact value within Z standard errors computed from
the runs.
- Without tempering and with a fixed HMC kernel (fixed metric, no step-size adaptation), the
  filter is a resample-move particle filter: its weights are the bootstrap filter's and its
  moves leave the current path posterior invariant, so $\hat Z$ is unbiased and
  $E[\hat Z_{0:t} / Z_{0:t} (\hat\pi_t(\phi) - \pi_t(\phi))] = 0$ for any N, for the filtering
  and for the fixed-lag smoothing estimates (the identity of test_particle_filter.py).
- With adaptive tempering and step sizes (the defaults) the stages and the step size depend on
  the particles, which adds a bias of order 1/N; those checks use the plain average of R runs
  with N large enough that the bias is far below the standard error (slow suite).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayesssm as bs
from tests.inference.test_particle_filter import (
    MODEL,
    Z_LIKELIHOOD,
    T,
    assert_unbiased_likelihood,
    assert_within,
    data,
    kalman,
    z_entries,
)

# A fixed HMC kernel: the weights and the likelihood estimate are exactly a bootstrap filter's.
FIXED = {"tempering": False, "adapt_step_size": False, "metric": "gaussian", "step_size": 0.8}


@functools.cache
def _runner(num: int, lag: int, smooth: bool, **settings):
    engine = bs.HamiltonianSMC(num, lag=lag, **settings)
    verb = bs.smooth if smooth else bs.filter

    def one(key, y):
        result = verb(MODEL, y, engine=engine, key=key)
        filtered = result.filtered if smooth else result
        return result.means, result.variances, filtered.log_marginal, filtered.log_marginals

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def runs(num, num_runs, seed, lag=0, smooth=False, **settings):
    keys = jax.random.split(jax.random.key(seed), num_runs)
    out = _runner(num, lag, smooth, **settings)(keys, data()["missing"])
    return tuple(np.asarray(a) for a in out)


def fixed_lag_moments(lag: int):
    """p(x_t | y_{0:min(t+L, T-1)}) for every t, by the RTS smoother on the data with the rows
    after t + L marked missing, and log p(y_{0:min(t+L, T-1)})."""
    y = np.asarray(data()["missing"])
    means, variances, log_liks = [], [], []
    for t in range(T):
        truncated = y.copy()
        truncated[t + lag + 1 :] = np.nan
        smoothed = bs.smooth(MODEL, jnp.asarray(truncated))
        means.append(np.asarray(smoothed.means[t]))
        variances.append(np.diagonal(np.asarray(smoothed.covs[t])))
        log_liks.append(float(smoothed.log_marginal))
    return np.array(means), np.array(variances), np.array(log_liks)


def assert_weighted_identity(means, variances, log_marginals, exact, what):
    """E[Z_hat / Z (pi_hat(phi) - pi(phi))] = 0 for phi = x, x^2; `exact` = (means, variances,
    cumulative log-likelihoods of the data each estimate conditions on)."""
    exact_means, exact_vars, exact_logs = exact
    ratio = np.exp(log_marginals - exact_logs)[:, :, None]
    z = z_entries(means.shape[0], 2 * means[0].size)
    assert_within(ratio * (means - exact_means), 0.0, z, f"{what}: means")
    second = variances + means**2 - (exact_vars + exact_means**2)
    assert_within(ratio * second, 0.0, z, f"{what}: second moments")


def test_resample_move_filter_is_exact_in_expectation():
    means, variances, log_lik, log_marginals = runs(256, 128, seed=1, **FIXED)
    exact = kalman("missing")
    exact_vars = np.diagonal(np.asarray(exact.covs), axis1=1, axis2=2)
    cumulative = np.cumsum(log_marginals, 1)
    target = (np.asarray(exact.means), exact_vars, np.cumsum(np.asarray(exact.log_marginals)))
    assert_weighted_identity(means, variances, cumulative, target, "resample-move filter")
    assert_unbiased_likelihood(log_lik, float(exact.log_marginal), Z_LIKELIHOOD, "p(y)")


def test_fixed_lag_smoother_is_exact_in_expectation():
    """Moves of the last L + 1 states: the window's oldest state estimates p(x_t | y_{0:t+L})."""
    lag = 3
    means, variances, _, log_marginals = runs(128, 128, seed=2, lag=lag, smooth=True, **FIXED)
    cumulative = np.cumsum(log_marginals, 1)
    ends = np.minimum(np.arange(T) + lag, T - 1)
    exact = fixed_lag_moments(lag)
    assert_weighted_identity(means, variances, cumulative[:, ends], exact, "fixed-lag smoother")


def test_tempered_filter_likelihood_and_stages():
    """The defaults (adaptive tempering, step size and metric): the likelihood within its Monte
    Carlo error (the adaptation's O(1/N) bias is far below it here), every stage's ESS at or
    above its target, and a fully missing row a single stage adding nothing."""
    engine = bs.HamiltonianSMC(256)
    y = data()["missing"]

    def one(key):
        r = bs.filter(MODEL, y, engine=engine, key=key)
        return r.log_marginal, r.log_marginals, r.ess, r.num_stages, r.acceptance_rate

    keys = jax.random.split(jax.random.key(3), 64)
    log_lik, log_marginals, ess, stages, acceptance = (
        np.asarray(a) for a in jax.jit(jax.vmap(one))(keys)
    )
    exact = kalman("missing")
    assert_unbiased_likelihood(log_lik, float(exact.log_marginal), Z_LIKELIHOOD, "tempered p(y)")
    assert np.all(ess >= 0.5 * 256 - 1e-6)
    missing_rows = np.all(np.isnan(np.asarray(y)), axis=1)
    np.testing.assert_array_equal(stages[:, missing_rows], 1)
    np.testing.assert_allclose(log_marginals[:, missing_rows], 0.0, atol=1e-12)
    assert np.all(stages[:, ~missing_rows] >= 1)
    assert 0.5 < acceptance.mean() < 0.97


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["gaussian", "particles"])
def test_tempered_filter_moments_plain_average(metric):
    means, variances, log_lik, _ = runs(4096, 32, seed=4, metric=metric)
    exact = kalman("missing")
    exact_vars = np.diagonal(np.asarray(exact.covs), axis1=1, axis2=2)
    z = z_entries(means.shape[0], 2 * means[0].size)
    assert_within(means, np.asarray(exact.means), z, f"{metric}: means")
    assert_within(variances, exact_vars, z, f"{metric}: variances")
    assert_unbiased_likelihood(log_lik, float(exact.log_marginal), Z_LIKELIHOOD, "p(y)")


# -- many dimensions, informative observations ----------------------------------------------


def _high_dimensional(dim: int, length: int):
    model = bs.LinearGaussianSSM(
        A=0.9 * np.eye(dim),
        Q=0.5 * np.eye(dim),
        H=np.eye(dim),
        R=0.1 * np.eye(dim),
        m0=np.zeros(dim),
        P0=np.eye(dim),
    )
    _, y = model.sample(jax.random.key(0), length)
    return model, y


def _log_likelihoods(model, y, engine, num_runs, seed):
    def one(key):
        r = bs.filter(model, y, engine=engine, key=key)
        return r.log_marginal, getattr(r, "num_stages", jnp.ones(y.shape[0], jnp.int32))

    keys = jax.random.split(jax.random.key(seed), num_runs)
    log_lik, stages = jax.jit(jax.vmap(one))(keys)
    return np.asarray(log_lik), np.asarray(stages)


@pytest.mark.slow
def test_variance_at_d50_far_below_bootstrap_at_equal_cost():
    """D = 50, R = 0.1 I against Q = 0.5 I: the bootstrap filter's weights collapse at every
    step. Cost is counted in model evaluations per particle and step (wall time is
    bench/hmc_smc.py's job): a bootstrap move is one draw and one likelihood (counted 1); a
    Hamiltonian stage one likelihood plus, per HMC step, L + 1 gradients (counted 3 each,
    the price of a reverse pass). The bootstrap filter gets that many more particles, and its
    log-likelihood variance must still be at least 10x Hamiltonian SMC's (F-test at the 0.1%
    level over the runs: the observed ratio must exceed 10 times the F quantile)."""
    import scipy.stats

    model, y = _high_dimensional(50, 10)
    exact = float(bs.log_marginal(model, y))
    engine = bs.HamiltonianSMC(64)
    runs_h = 16
    log_h, stages = _log_likelihoods(model, y, engine, runs_h, seed=5)
    per_stage = 1 + engine.num_hmc_steps * (engine.num_integration_steps + 1) * 3
    evaluations = stages.sum(1).mean() * per_stage / y.shape[0]
    num_bootstrap = int(64 * evaluations)
    runs_b = 16
    log_b, _ = _log_likelihoods(model, y, bs.ParticleFilter(num_bootstrap), runs_b, seed=6)
    var_h, var_b = np.var(log_h, ddof=1), np.var(log_b, ddof=1)
    high = scipy.stats.f(runs_b - 1, runs_h - 1).ppf(1 - 1e-3)
    print(f"bootstrap N={num_bootstrap}: var {var_b:.3g} (mean error {log_b.mean() - exact:.1f});")
    print(f"Hamiltonian N=64: var {var_h:.3g} (mean error {log_h.mean() - exact:.2f})")
    assert var_b / var_h >= 10 * high


# -- bad input ------------------------------------------------------------------------------


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="step_size must be a positive number"):
        bs.HamiltonianSMC(step_size=0.0)
    with pytest.raises(ValueError, match="step_size must be a positive number"):
        bs.HamiltonianSMC(step_size=-0.1)
    with pytest.raises(ValueError, match="lag must be a non-negative int"):
        bs.HamiltonianSMC(lag=-1)
    with pytest.raises(ValueError, match="num_particles"):
        bs.HamiltonianSMC(num_particles=0)
    with pytest.raises(ValueError, match="metric must be one of"):
        bs.HamiltonianSMC(metric="riemann")
    with pytest.raises(ValueError, match="target_ess must be in"):
        bs.HamiltonianSMC(target_ess=1.0)
    with pytest.raises(ValueError, match="unknown resampling"):
        bs.HamiltonianSMC(resampling="best")


def test_lag_longer_than_series_raises():
    y = data()["complete"][:5]
    engine = bs.HamiltonianSMC(8, lag=5)
    with pytest.raises(ValueError, match=r"lag = 5 is longer than the series allows.*at most 4"):
        bs.filter(MODEL, y, engine=engine, key=jax.random.key(0))
    bs.filter(MODEL, y, engine=bs.HamiltonianSMC(8, lag=4), key=jax.random.key(0))


def test_path_draws_are_refused_with_a_pointer():
    with pytest.raises(TypeError, match="not joint path draws"):
        bs.sample_posterior(
            MODEL, data()["complete"], engine=bs.HamiltonianSMC(8), key=jax.random.key(0)
        )


# -- gradients: the fixed-lag score, and stochastic-gradient MLE -----------------------------


def _scalar_model(a, q):
    return bs.LinearGaussianSSM(A=[[a]], Q=[[q]], H=[[1.0]], R=[[0.5]], m0=[0.0], P0=[[1.0]])


def test_gradient_is_the_score_estimate():
    """With the window covering the series (lag = T - 1) the gradient of the log-likelihood
    estimate is the particle estimate of E[grad log p(x, y) | y], Fisher's identity for the
    score: its average over runs matches Kalman's gradient within its Monte Carlo error (the
    self-normalised estimate's O(1/N) bias is below it here). The last states' terms come from
    the final window, the others from each step's oldest slot."""
    length = 8
    _, y = _scalar_model(0.8, 0.3).sample(jax.random.key(3), length)
    point = jnp.array([0.8, 0.3])
    exact = jax.grad(lambda p: bs.log_marginal(_scalar_model(p[0], p[1]), y))(point)
    engine = bs.HamiltonianSMC(128, lag=length - 1)

    def score(key):
        def log_lik(p):
            return bs.log_marginal(_scalar_model(p[0], p[1]), y, engine=engine, key=key)

        return jax.grad(log_lik)(point)

    num_runs = 32
    scores = np.asarray(jax.jit(jax.vmap(score))(jax.random.split(jax.random.key(7), num_runs)))
    assert_within(scores, np.asarray(exact), z_entries(num_runs, 2), "score (a, q)")


@pytest.mark.slow
def test_fit_mle_with_hamiltonian_smc_reaches_the_exact_mle():
    """`bs.fit_mle` with the engine: stochastic-gradient ascent (Adam, a fresh key every step,
    step sizes decaying from 0.05 to 0.001 as stochastic approximation needs) on the fixed-lag
    score (lag 5 on an AR(0.8): the truncation's bias is 0.8^10, ~1e-1 of a step's share),
    200 steps from Q = 1, against the exact MLE from the Kalman engine, within 2% (as issue 6
    asks of PPG-driven MLE). Measured: 0.6%, 0.8%, 0.6% off with keys 0, 1, 2; with a constant
    step size 0.05 the last iterate wandered 3.9% off."""
    import optax

    _, y = _scalar_model(0.8, 0.3).sample(jax.random.key(3), 100)
    start = _scalar_model(0.8, 1.0)
    exact, _ = bs.fit_mle(start, y, where=lambda m: m.Q, progress=False)
    fitted, history = bs.fit_mle(
        start,
        y,
        where=lambda m: m.Q,
        engine=bs.HamiltonianSMC(128, lag=5),
        key=jax.random.key(0),
        optimizer=optax.adam(optax.cosine_decay_schedule(0.05, 200, alpha=0.02)),
        num_steps=200,
        progress=False,
    )
    q_exact = float(bs.unwrap(exact).Q[0, 0])
    q_fitted = float(bs.unwrap(fitted).Q[0, 0])
    assert history.num_steps == 200
    assert abs(q_fitted - q_exact) <= 0.02 * q_exact, (q_fitted, q_exact)
