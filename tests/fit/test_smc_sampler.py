"""bs.sample_smc: the log-evidence and posterior moments of Q in an AR(1)-plus-noise model against
quadrature over log q (prior x exact Kalman likelihood x Jacobian), with HMC, NUTS and
random-walk moves, and pseudo-marginal moves on a particle-filter likelihood; the tempering's
temperature rule; InferenceData layout; input errors.

Tolerances are Monte Carlo errors: the estimator's own standard error of the log-evidence (from
the spread of independent runs), and for posterior moments the standard error of the mean of the
per-run moments. The quadrature is exact up to grid error, far below either.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import bayesssm as bs
from bayesssm.inference._resampling import effective_sample_size
from bayesssm.inference._tempering import next_increment

T = 50
PRIOR_LOC, PRIOR_SCALE = np.log(0.5), 1.5
PRIOR = nd.LogNormal(PRIOR_LOC, PRIOR_SCALE)
NUM_RUNS = 8


def WHERE(m):
    return m.Q


def ar1(q, r=0.5):
    return bs.LinearGaussianSSM(A=[[0.8]], Q=[[q]], H=[[1.0]], R=[[r]], m0=[0.0], P0=[[1.0]])


def quadrature(y):
    """log Z and the posterior mean and variance of q, by the trapezoid rule over s = log q on a
    grid of +-12 prior sds, integrand exp(log p(y | e^s) + log p(e^s) + s)."""
    s = np.linspace(PRIOR_LOC - 12 * PRIOR_SCALE, PRIOR_LOC + 12 * PRIOR_SCALE, 6001)
    log_likelihood = jax.jit(jax.vmap(lambda q: bs.log_marginal(ar1(q), y)))(jnp.exp(s))
    log_f = np.asarray(log_likelihood) + np.asarray(PRIOR.log_prob(np.exp(s))) + s
    top = log_f.max()
    f = np.exp(log_f - top)
    # the grid holds the whole mass: the integrand at both ends is negligible
    assert f[0] < 1e-20 and f[-1] < 1e-20, (f[0], f[-1])
    log_z = top + np.log(np.trapezoid(f, s))
    q = np.exp(s)
    mean = np.trapezoid(f * q, s) / np.trapezoid(f, s)
    var = np.trapezoid(f * (q - mean) ** 2, s) / np.trapezoid(f, s)
    return log_z, mean, var


@pytest.fixture(scope="module")
def y():
    return ar1(0.5).sample(jax.random.key(3), T)[1]


@pytest.fixture(scope="module")
def reference(y):
    return quadrature(y)


def smc(y, key, **kwargs):
    settings = dict(num_particles=256, num_runs=NUM_RUNS, num_integration_steps=5, progress=False)
    settings.update(kwargs)
    return bs.sample_smc(ar1(0.5), y, where=WHERE, priors=PRIOR, key=key, **settings)


@pytest.fixture(scope="module")
def hmc_run(y):
    return smc(y, jax.random.key(11))


@pytest.fixture(scope="module")
def rwmh_run(y):
    return smc(y, jax.random.key(12), kernel="rwmh")


def check_evidence(result, reference, sds=3.0):
    log_z = reference[0]
    assert np.isfinite(result.log_evidence_se) and result.log_evidence_se > 0
    error = result.log_evidence - log_z
    assert abs(error) < sds * result.log_evidence_se, (result.log_evidence, log_z, error)


def check_moments(result, reference, sds=4.0):
    """The mean and variance of q: per-run moments (R independent estimates) against quadrature,
    within `sds` standard errors of their average."""
    _, mean, var = reference
    draws = result.inference_data.posterior.Q.values[..., 0, 0]  # (R, N)
    for estimates, truth in ((draws.mean(1), mean), (draws.var(1), var)):
        se = estimates.std(ddof=1) / np.sqrt(len(estimates))
        assert abs(estimates.mean() - truth) < sds * se, (estimates.mean(), truth, se)


def test_hmc_log_evidence_matches_quadrature(hmc_run, reference):
    check_evidence(hmc_run, reference)


def test_hmc_posterior_moments_match_quadrature(hmc_run, reference):
    check_moments(hmc_run, reference)


def test_random_walk_log_evidence_and_moments_match_quadrature(rwmh_run, reference):
    check_evidence(rwmh_run, reference)
    check_moments(rwmh_run, reference)


def test_result_layout(hmc_run, y):
    idata = hmc_run.inference_data
    assert idata.posterior.Q.shape == (NUM_RUNS, 256, 1, 1)
    assert set(idata.posterior.Q.dims) == {"chain", "draw", "state", "state_bis"}
    assert np.all(idata.posterior.Q.values > 0)
    assert idata.posterior.attrs["log_evidence"] == hmc_run.log_evidence
    assert idata.posterior.attrs["log_evidence_se"] == hmc_run.log_evidence_se
    per_run = idata.sample_stats.log_evidence.values
    np.testing.assert_array_equal(per_run[:, 0], hmc_run.log_evidence_per_run)
    np.testing.assert_array_equal(per_run, per_run[:, :1].repeat(256, axis=1))
    # each particle carries its exact log-likelihood
    q = idata.posterior.Q.values[3, 7, 0, 0]
    np.testing.assert_allclose(
        idata.sample_stats.log_marginal.values[3, 7], bs.log_marginal(ar1(q), y), rtol=1e-10
    )
    np.testing.assert_array_equal(idata.observed_data.y.values, np.asarray(y))
    # temperatures rise from 0 to 1, one per stage, NaN after a run's end
    assert hmc_run.num_stages.shape == (NUM_RUNS,) and np.all(hmc_run.num_stages >= 2)
    for betas, stages in zip(hmc_run.temperatures, hmc_run.num_stages, strict=True):
        assert betas[0] == 0.0 and betas[stages] == 1.0
        assert np.all(np.diff(betas[: stages + 1]) > 0)
        assert np.all(np.isnan(betas[stages + 1 :]))
    # log-mean-exp of the runs, and the delta-method standard error
    z = np.exp(hmc_run.log_evidence_per_run - hmc_run.log_evidence)
    np.testing.assert_allclose(z.mean(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(hmc_run.log_evidence_se, z.std(ddof=1) / np.sqrt(NUM_RUNS))


def test_next_temperature_sets_the_ess_to_its_target():
    log_likelihood = -0.5 * jax.random.normal(jax.random.key(0), (500,), jnp.float64) ** 2 * 400
    delta = next_increment(log_likelihood, jnp.asarray(1.0), 0.5)
    assert 0 < delta < 1
    weights = delta * log_likelihood
    ess = effective_sample_size(weights - jax.scipy.special.logsumexp(weights))
    np.testing.assert_allclose(ess, 250.0, rtol=1e-6)
    # when even the whole remaining step keeps the ESS above target, it is taken
    flat = jnp.full((500,), -3.0).at[0].set(-3.1)
    assert next_increment(flat, jnp.asarray(0.4), 0.5) == 0.4


def test_one_run_has_no_standard_error(y):
    result = smc(y, jax.random.key(0), num_runs=1, num_particles=64, kernel="rwmh")
    assert np.isfinite(result.log_evidence) and np.isnan(result.log_evidence_se)


def test_errors_before_sampling(y):
    key = jax.random.key(0)

    def call(**kwargs):
        settings = dict(where=WHERE, priors=PRIOR, key=key, progress=False)
        settings.update(kwargs)
        return bs.sample_smc(ar1(0.5), y, **settings)

    with pytest.raises(ValueError, match="num_particles"):
        call(num_particles=1)
    with pytest.raises(ValueError, match="num_runs"):
        call(num_runs=0)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="target_ess"):
            call(target_ess=bad)
    with pytest.raises(ValueError, match="kernel"):
        call(kernel="mala")
    with pytest.raises(ValueError, match="step_size"):
        call(step_size=0.0)
    with pytest.raises(ValueError, match="step_size"):
        call(step_size=-0.1)
    with pytest.raises(ValueError, match="prior"):
        call(priors=None)
    with pytest.raises(ValueError, match="rwmh"):
        call(engine=bs.ParticleFilter(num_particles=10), kernel="hmc")
    with pytest.raises(ValueError, match="rwmh"):
        call(engine=bs.ParticleFilter(num_particles=10), kernel="nuts")
    with pytest.raises(ValueError, match="key"):
        call(key=None)
    with pytest.raises(ValueError, match="prior for Q has shape"):
        call(priors=nd.LogNormal(jnp.zeros(3), 1.0))
    with pytest.raises(ValueError, match="drawing from the prior"):
        call(priors=nd.ImproperUniform(nd.constraints.positive, (), ()))


def test_hitting_max_stages_warns(y):
    with pytest.warns(RuntimeWarning, match="max_stages"):
        result = smc(y, jax.random.key(0), num_runs=2, num_particles=64, kernel="rwmh",
                     max_stages=1, target_ess=0.99)  # fmt: skip
    assert np.all(result.num_stages == 1)


@pytest.mark.slow
def test_nuts_kernel_matches_quadrature(y, reference):
    result = smc(y, jax.random.key(13), kernel="nuts")
    check_evidence(result, reference)
    check_moments(result, reference)


@pytest.mark.slow
def test_posterior_moments_match_sample_nuts(y, hmc_run):
    """Against NUTS: means and variances of q within 4 combined Monte Carlo standard errors
    (the SMC's from its runs' spread, NUTS's from arviz's effective sample size)."""
    import arviz as az

    idata = bs.sample_nuts(
        ar1(0.5), y, where=WHERE, priors=PRIOR, key=jax.random.key(5), num_samples=2000,
        num_warmup=500, num_chains=4, progress=False,
    )  # fmt: skip
    nuts = idata.posterior.Q.values[..., 0, 0]
    draws = hmc_run.inference_data.posterior.Q.values[..., 0, 0]
    for estimates, chain_draws in (
        (draws.mean(1), nuts),
        (draws.var(1), (nuts - nuts.mean()) ** 2),
    ):
        se_smc = estimates.std(ddof=1) / np.sqrt(len(estimates))
        ess = float(az.ess(az.convert_to_dataset(chain_draws), method="mean").x)
        se_nuts = chain_draws.std() / np.sqrt(ess)
        tolerance = 4 * np.hypot(se_smc, se_nuts)
        assert abs(estimates.mean() - chain_draws.mean()) < tolerance, (
            estimates.mean(),
            chain_draws.mean(),
            tolerance,
        )


@pytest.mark.slow
def test_larger_runs_match_quadrature(y, reference):
    """More particles and runs: standard errors about 3x smaller, the same checks."""
    for kernel, seed in (("hmc", 21), ("rwmh", 22)):
        result = smc(y, jax.random.key(seed), kernel=kernel, num_particles=1024, num_runs=16)
        check_evidence(result, reference)
        check_moments(result, reference)


@pytest.mark.slow
def test_pseudo_marginal_particle_filter_matches_quadrature():
    """A bootstrap particle filter's likelihood estimate, pseudo-marginal random-walk moves
    (Duan and Fulop 2015): the evidence and moments still match the exact quadrature."""
    y = ar1(0.5).sample(jax.random.key(4), 30)[1]
    reference = quadrature(y)
    result = bs.sample_smc(
        ar1(0.5), y, where=WHERE, priors=PRIOR, key=jax.random.key(14),
        engine=bs.ParticleFilter(num_particles=200), num_particles=256, num_runs=NUM_RUNS,
        progress=False,
    )  # fmt: skip
    check_evidence(result, reference)
    check_moments(result, reference)
