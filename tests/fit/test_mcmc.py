"""bs.sample_nuts: recovery of true parameters, convergence diagnostics, InferenceData layout,
and (slow) simulation-based calibration."""

import arviz as az
import jax
import numpy as np
import numpyro.distributions as nd
import pytest
import scipy.stats

import bayesssm as bs

# An AR(1) state observed in noise; Q and R get inverse-gamma priors, the rest is known.
PRIORS = (nd.InverseGamma(3.0, 1.0), nd.InverseGamma(3.0, 1.0))


def WHERE(m):
    return (m.Q, m.R)


def ar1(q, r):
    return bs.LinearGaussianSSM(A=[[0.8]], Q=[[q]], H=[[1.0]], R=[[r]], m0=[0.0], P0=[[1.0]])


def nuts(y, key, **kwargs):
    # 4 x 1000 draws: R-hat's own sampling noise (about 0.003 at 4 x 500 draws, where
    # well-mixed chains already reach 1.009) stays well below the 0.01 margin.
    settings = dict(num_samples=1000, num_warmup=500, num_chains=4, progress=False)
    settings.update(kwargs)
    return bs.sample_nuts(ar1(0.5, 0.5), y, where=WHERE, priors=PRIORS, key=key, **settings)


TRUTHS = [(0.3, 0.5), (0.6, 0.2), (0.4, 0.4)]


def run(i):
    """Data simulated from known (Q, R), sampled with four chains."""
    q, r = TRUTHS[i]
    y = ar1(q, r).sample(jax.random.key(10 + i), 300)[1]
    return (q, r), y, nuts(y, jax.random.key(20 + i))


@pytest.fixture(scope="module")
def runs():
    """The first data set: the other two run in the slow test below (CI's time budget)."""
    return [run(0)]


def check_recovery(runs):
    for (q, r), _, idata in runs:
        for name, truth in (("Q", q), ("R", r)):
            draws = idata.posterior[name].values[..., 0, 0]
            assert abs(draws.mean() - truth) < 3 * draws.std(), (name, truth, draws.mean())


def check_convergence(runs):
    for _, _, idata in runs:
        assert int(idata.sample_stats.diverging.sum()) == 0
        rhat = az.rhat(idata)
        assert float(rhat.Q.max()) < 1.01 and float(rhat.R.max()) < 1.01


def test_recovers_the_truth_within_three_posterior_sd(runs):
    check_recovery(runs)


def test_chains_converge_without_divergences(runs):
    check_convergence(runs)


@pytest.mark.slow
def test_recovery_and_convergence_on_more_data_sets():
    more = [run(i) for i in range(1, len(TRUTHS))]
    check_recovery(more)
    check_convergence(more)


def test_inference_data_layout(runs):
    _, y, idata = runs[0]
    assert idata.posterior.Q.shape == (4, 1000, 1, 1)
    assert set(idata.posterior.Q.dims) == {"chain", "draw", "state", "state_bis"}
    assert idata.log_likelihood.y.shape == (4, 1000, 300)
    np.testing.assert_array_equal(idata.observed_data.y.values, np.asarray(y))
    for stat in ("diverging", "step_size", "tree_depth", "acceptance_rate", "lp"):
        assert stat in idata.sample_stats
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)


def test_pointwise_log_likelihood_sums_to_the_log_marginal(runs):
    _, y, idata = runs[0]
    q = idata.posterior.Q.values[1, 7, 0, 0]
    r = idata.posterior.R.values[1, 7, 0, 0]
    np.testing.assert_allclose(
        idata.log_likelihood.y.values[1, 7].sum(), bs.log_marginal(ar1(q, r), y), rtol=1e-10
    )


def test_posterior_predictive_has_the_data_shape():
    y = ar1(0.3, 0.5).sample(jax.random.key(0), 50)[1]
    idata = nuts(
        y, jax.random.key(1), num_samples=20, num_warmup=50, num_chains=2, posterior_predictive=True
    )
    assert idata.posterior_predictive.y.shape == (2, 20, 50, 1)
    assert np.all(np.isfinite(idata.posterior_predictive.y.values))


def test_errors_before_sampling():
    y = np.zeros((20, 1))
    with pytest.raises(ValueError, match="prior"):
        bs.sample_nuts(ar1(0.5, 0.5), y, where=WHERE, priors=None, key=jax.random.key(0))
    with pytest.raises(ValueError, match="support"):
        bs.sample_nuts(
            ar1(0.5, 0.5), y, where=lambda m: m.A, priors=nd.Gamma(1.0, 1.0), key=jax.random.key(0)
        )
    with pytest.raises(ValueError, match="num_chains"):
        bs.sample_nuts(
            ar1(0.5, 0.5), y, where=WHERE, priors=PRIORS, key=jax.random.key(0), num_chains=0
        )


@pytest.mark.slow
def test_simulation_based_calibration():
    """Talts et al. (2018): draw (Q, R) from the prior, y from the model, then the rank of the
    true value among L posterior draws is uniform on {0..L} if the sampler is calibrated.

    100 data sets, L = 99 thinned draws each; a chi-square test on 10 rank bins per parameter at
    level 0.001 (a miscalibrated sampler gives p-values far below).
    """
    num_sets, num_draws = 100, 99
    ranks = {"Q": [], "R": []}
    key = jax.random.key(2024)
    for _ in range(num_sets):
        key, k_prior_q, k_prior_r, k_data, k_nuts = jax.random.split(key, 5)
        q = float(PRIORS[0].sample(k_prior_q))
        r = float(PRIORS[1].sample(k_prior_r))
        y = ar1(q, r).sample(k_data, 100)[1]
        idata = nuts(y, k_nuts, num_samples=4 * num_draws, num_warmup=300, num_chains=1)
        for name, truth in (("Q", q), ("R", r)):
            draws = idata.posterior[name].values[0, ::4, 0, 0]
            ranks[name].append(int(np.sum(draws < truth)))
    for name, rank in ranks.items():
        counts = np.bincount(np.asarray(rank) * 10 // (num_draws + 1), minlength=10)
        p_value = scipy.stats.chisquare(counts).pvalue
        assert p_value > 1e-3, (name, counts)
