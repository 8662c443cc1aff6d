"""bs.sample_pmmh: the posterior of (Q, R) of an AR(1)-plus-noise model against a grid quadrature
of prior x exact likelihood, with the exact (Kalman) and a particle-filter likelihood; the kept
likelihood estimate; InferenceData layout; input errors.

The reference is independent of the library: y is one Gaussian vector of T entries whose dense
covariance is written down below, and the posterior moments come from a 2-D grid over
(log q, log r). Tolerances are 4 Monte Carlo standard errors from arviz's effective sample size.
"""

import arviz as az
import jax
import numpy as np
import numpyro.distributions as nd
import pytest
import scipy.stats

import bayesssm as bs
from bayesssm.fit import sample_pmmh

A, P0, T = 0.8, 1.0, 50
PRIOR_SHAPE, PRIOR_SCALE = 3.0, 1.0
PRIORS = (nd.InverseGamma(PRIOR_SHAPE, PRIOR_SCALE), nd.InverseGamma(PRIOR_SHAPE, PRIOR_SCALE))
NUM_CHAINS = 4


def WHERE(m):
    return (m.Q, m.R)


def ar1(q, r):
    return bs.LinearGaussianSSM(A=[[A]], Q=[[q]], H=[[1.0]], R=[[r]], m0=[0.0], P0=[[P0]])


def dense_log_likelihood(q, r, y):
    """log N(y; 0, Sigma(q, r)) for arrays q, r (K,): Cov(x_i, x_j) = A^|i-j| Var(x_min(i,j)),
    Var(x_t) = A^2t P0 + q (1 - A^2t) / (1 - A^2), plus r on the diagonal."""
    q, r = np.atleast_1d(q)[:, None], np.atleast_1d(r)[:, None]
    t = np.arange(len(y))
    var = A ** (2 * t) * P0 + q * (1 - A ** (2 * t)) / (1 - A**2)  # (K, T)
    lag = np.abs(t[:, None] - t[None, :])
    cov = A**lag * var[:, np.minimum.outer(t, t)] + r[:, :, None] * np.eye(len(y))
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, np.broadcast_to(y, (len(q), len(y)))[..., None])[..., 0]
    log_det = 2 * np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    return -0.5 * (np.sum(white**2, -1) + log_det + len(y) * np.log(2 * np.pi))


def reference_moments(y):
    """Posterior mean and sd of q and r by quadrature on a uniform grid in (log q, log r), where
    the density is prior(q) prior(r) L(q, r) q r (the trapezoid rule on a smooth, rapidly
    decaying integrand over a wide box is accurate far beyond the Monte Carlo error)."""
    log_grid = np.linspace(np.log(0.01), np.log(4.0), 161)
    lq, lr = (g.ravel() for g in np.meshgrid(log_grid, log_grid, indexing="ij"))
    q, r = np.exp(lq), np.exp(lr)
    prior = scipy.stats.invgamma(PRIOR_SHAPE, scale=PRIOR_SCALE)
    log_density = np.concatenate(
        [dense_log_likelihood(q[i : i + 2000], r[i : i + 2000], y) for i in range(0, q.size, 2000)]
    )
    log_density = log_density + prior.logpdf(q) + prior.logpdf(r) + lq + lr
    weights = np.exp(log_density - log_density.max())
    weights /= weights.sum()
    moments = {}
    for name, value in (("Q", q), ("R", r)):
        mean = np.sum(weights * value)
        moments[name] = (mean, np.sqrt(np.sum(weights * (value - mean) ** 2)))
    return moments


@pytest.fixture(scope="module")
def y():
    return np.asarray(ar1(0.5, 0.5).sample(jax.random.key(3), T)[1][:, 0])


@pytest.fixture(scope="module")
def reference(y):
    return reference_moments(y)


@pytest.fixture(scope="module")
def exact_run(y):
    """Random-walk Metropolis on the exact likelihood."""
    return sample_pmmh(
        ar1(0.5, 0.5), y, where=WHERE, priors=PRIORS, key=jax.random.key(1), engine=bs.Kalman(),
        num_samples=1500, num_warmup=500, num_chains=NUM_CHAINS, posterior_predictive=True,
        progress=False,
    )  # fmt: skip


# A locally optimal proposal with 10 particles: the log-likelihood estimate's sd is about 1.1
# near the posterior (measured on 400 runs), the regime where PMMH is most efficient.
PARTICLE_FILTER = bs.ParticleFilter(num_particles=10, proposal="optimal")


@pytest.fixture(scope="module")
def particle_run(y):
    return sample_pmmh(
        ar1(0.5, 0.5), y, where=WHERE, priors=PRIORS, key=jax.random.key(2),
        engine=PARTICLE_FILTER, num_samples=1500, num_warmup=500, num_chains=NUM_CHAINS,
        pointwise_log_likelihood=False, progress=True,
    )  # fmt: skip


def mcse(draws, method="mean") -> float:
    """Monte Carlo standard error of the mean (or sd) of draws (C, S), from arviz's effective
    sample size (of the draws, or of their squared deviations: SE(s) = SE(s^2) / 2s)."""
    draws = np.asarray(draws)
    if method == "mean":
        return draws.std() / np.sqrt(_ess(draws))
    squares = (draws - draws.mean()) ** 2
    return squares.std() / np.sqrt(_ess(squares)) / (2 * draws.std())


def _ess(draws) -> float:
    return float(az.ess(az.convert_to_dataset(draws), method="mean").x)


def check_posterior(idata, reference):
    for name, (mean, sd) in reference.items():
        draws = idata.posterior[name].values[..., 0, 0]
        se_mean = mcse(draws)
        se_sd = mcse(draws, "sd")
        assert abs(draws.mean() - mean) < 4 * se_mean, (name, draws.mean(), mean, se_mean)
        assert abs(draws.std() - sd) < 4 * se_sd, (name, draws.std(), sd, se_sd)


def test_reference_likelihood_is_the_kalman_one(y):
    dense = dense_log_likelihood(0.3, 0.7, y)[0]
    np.testing.assert_allclose(dense, float(bs.log_marginal(ar1(0.3, 0.7), y)), rtol=1e-10)


def test_exact_likelihood_gives_the_quadrature_posterior(exact_run, reference):
    check_posterior(exact_run, reference)


def test_particle_likelihood_gives_the_same_exact_posterior(particle_run, reference):
    check_posterior(particle_run, reference)


def test_warm_up_reaches_the_target_acceptance_roughly(exact_run):
    # A sanity check of the adaptation, not a statistical test: Robbins-Monro ends near 0.234.
    assert 0.12 < float(exact_run.sample_stats.acceptance_rate.mean()) < 0.4


def test_the_estimate_at_the_current_point_is_kept(particle_run, y):
    """A rejected step keeps the previous estimate; and at stationarity the kept estimate's error
    W = log p_hat - log p is biased upwards (PMMH's target tilts W's law by exp(W)), while a
    fresh estimate's has E[W] < 0 (Jensen, for an unbiased p_hat): recomputing the estimate at
    the current point would give a negative mean."""
    stats = particle_run.sample_stats
    kept = stats.log_marginal.values
    rejected = ~stats.accepted.values[:, 1:]
    np.testing.assert_array_equal(kept[:, 1:][rejected], kept[:, :-1][rejected])

    q = particle_run.posterior.Q.values[..., 0, 0]
    r = particle_run.posterior.R.values[..., 0, 0]
    exact = dense_log_likelihood(q.ravel(), r.ravel(), y).reshape(q.shape)
    error_kept = kept - exact
    assert error_kept.mean() > 4 * mcse(error_kept)


def test_inference_data_layout(exact_run, y):
    idata = exact_run
    assert set(idata.groups()) == {
        "posterior", "sample_stats", "log_likelihood", "observed_data", "posterior_predictive"
    }  # fmt: skip
    assert idata.posterior.Q.shape == (NUM_CHAINS, 1500, 1, 1)
    assert set(idata.posterior.Q.dims) == {"chain", "draw", "state", "state_bis"}
    assert set(idata.posterior.R.dims) == {"chain", "draw", "obs", "obs_bis"}
    for stat in ("acceptance_rate", "accepted", "log_marginal", "lp", "step_size"):
        assert idata.sample_stats[stat].shape == (NUM_CHAINS, 1500), stat
    # Each chain adapted its own step.
    assert len(np.unique(idata.sample_stats.step_size.values[:, 0])) == NUM_CHAINS
    np.testing.assert_array_equal(idata.observed_data.y.values[:, 0], y)
    assert idata.log_likelihood.y.shape == (NUM_CHAINS, 1500, T)
    assert idata.posterior_predictive.y.shape == (NUM_CHAINS, 1500, T, 1)
    assert np.all(np.isfinite(idata.posterior_predictive.y.values))

    # With an exact engine the kept estimate is the likelihood, and the pointwise terms sum to it.
    q = idata.posterior.Q.values[2, 11, 0, 0]
    r = idata.posterior.R.values[2, 11, 0, 0]
    exact = dense_log_likelihood(q, r, y)[0]
    np.testing.assert_allclose(idata.sample_stats.log_marginal.values[2, 11], exact, rtol=1e-10)
    np.testing.assert_allclose(idata.log_likelihood.y.values[2, 11].sum(), exact, rtol=1e-10)
    prior = scipy.stats.invgamma(PRIOR_SHAPE, scale=PRIOR_SCALE)
    # lp is the density of the unconstrained arrays: log Cholesky diagonals, so |J| = 2 q * 2 r.
    lp = exact + prior.logpdf(q) + prior.logpdf(r) + np.log(2 * q) + np.log(2 * r)
    np.testing.assert_allclose(idata.sample_stats.lp.values[2, 11], lp, rtol=1e-10)


class _NoLikelihood:
    def check(self, model):
        pass


def test_errors_before_sampling():
    y = np.zeros((20, 1))
    key = jax.random.key(0)

    def call(**kwargs):
        settings = dict(where=WHERE, priors=PRIORS, key=key, engine=bs.Kalman(), progress=False)
        settings.update(kwargs)
        return sample_pmmh(ar1(0.5, 0.5), y, **settings)

    with pytest.raises(ValueError, match="selected nothing"):
        call(where=lambda m: (), priors=())
    with pytest.raises(ValueError, match="needs a prior for every fitted leaf"):
        call(priors=None)
    with pytest.raises(ValueError, match="none given for R"):
        call(priors=(PRIORS[0], None))
    with pytest.raises(ValueError, match="num_chains"):
        call(num_chains=0)
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="num_samples"):
            call(num_samples=bad)
    with pytest.raises(ValueError, match="num_warmup"):
        call(num_warmup=-1)
    with pytest.raises(TypeError, match="log_marginal"):
        call(engine=_NoLikelihood())
    with pytest.raises(ValueError, match="initial_scale"):
        call(initial_scale=0.0)
    with pytest.raises(ValueError, match="target_acceptance"):
        call(target_acceptance=1.5)
    with pytest.raises(ValueError, match="key"):
        call(key=None)


@pytest.mark.slow
def test_bootstrap_particle_filter_gives_the_exact_posterior(y, reference):
    """The canonical PMMH: a bootstrap filter with 100 particles (log-likelihood sd about 1.0),
    more draws."""
    idata = sample_pmmh(
        ar1(0.5, 0.5), y, where=WHERE, priors=PRIORS, key=jax.random.key(5),
        engine=bs.ParticleFilter(num_particles=100), num_samples=5000, num_warmup=1000,
        num_chains=NUM_CHAINS, pointwise_log_likelihood=False, progress=False,
    )  # fmt: skip
    check_posterior(idata, reference)
