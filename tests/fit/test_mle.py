"""bs.fit_mle: the optimum against statsmodels and scipy, restarts, batches, priors, errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import optax
import pytest
import scipy.optimize
import statsmodels.api as sm
from statsmodels.tsa.statespace.initialization import Initialization

import bayesssm as bs

NILE = sm.datasets.nile.load_pandas().data["volume"].to_numpy()
START = np.var(NILE) / 2
P0 = 1e7


def local_level(q=START, r=START):
    return bs.LinearGaussianSSM(A=[[1.0]], Q=[[q]], H=[[1.0]], R=[[r]], m0=[0.0], P0=[[P0]])


@pytest.fixture(scope="module")
def nile_fit():
    return bs.fit_mle(local_level(), NILE, where=lambda m: (m.Q, m.R), progress=False)


def test_nile_matches_statsmodels(nile_fit):
    # The same model in statsmodels: the same known initial state, no burn-in, same start.
    reference = sm.tsa.UnobservedComponents(NILE, "local level")
    reference.ssm.initialization = Initialization(
        1, "known", constant=np.zeros(1), stationary_cov=np.eye(1) * P0
    )
    reference.loglikelihood_burn = 0
    result = reference.fit(
        start_params=[START, START], method="lbfgs", maxiter=1000, pgtol=1e-12, factr=1, disp=False
    )
    sigma2_obs, sigma2_level = result.params
    fitted, history = nile_fit
    values = bs.unwrap(fitted)
    assert history.converged
    np.testing.assert_allclose(values.R[0, 0], sigma2_obs, rtol=1e-3)
    np.testing.assert_allclose(values.Q[0, 0], sigma2_level, rtol=1e-3)
    log_marginal = bs.log_marginal(fitted, NILE)
    np.testing.assert_allclose(log_marginal, result.llf, rtol=1e-4)
    np.testing.assert_allclose(-history.objective[-1], log_marginal, rtol=1e-12)


def test_history_decreases_to_a_stationary_point(nile_fit):
    fitted, history = nile_fit
    assert history.num_steps == len(history.objective) == len(history.grad_norm)
    assert np.all(np.diff(np.asarray(history.objective)) <= 1e-9 * abs(history.objective[0]))
    grads = jax.grad(lambda m: bs.log_marginal(m, NILE))(fitted)
    # The gradient with respect to the log-Cholesky entries, per observation, is small.
    for leaf in (grads.Q, grads.R):
        assert np.max(np.abs(jax.tree.leaves(leaf)[0])) / len(NILE) < 1e-5


def test_restarts_return_the_best():
    bad = local_level(q=1e-2, r=1e-2)  # a poor start, far in log-variance from the optimum
    fitted, history = bs.fit_mle(
        bad,
        NILE,
        where=lambda m: (m.Q, m.R),
        num_restarts=4,
        restart_scale=3.0,
        key=jax.random.key(0),
        progress=False,
    )
    assert history.restart_objectives.shape == (4,)
    best = int(np.argmin(history.restart_objectives))
    assert history.best_restart == best
    np.testing.assert_allclose(
        -bs.log_marginal(fitted, NILE), history.restart_objectives[best], rtol=1e-12
    )


def test_batch_of_identical_series_has_the_single_series_optimum(nile_fit):
    batch = np.stack([NILE, NILE])[..., None]
    fitted, history = bs.fit_mle(local_level(), batch, where=lambda m: (m.Q, m.R), progress=False)
    single = bs.unwrap(nile_fit[0])
    np.testing.assert_allclose(bs.unwrap(fitted).Q, single.Q, rtol=1e-5)
    np.testing.assert_allclose(bs.unwrap(fitted).R, single.R, rtol=1e-5)
    np.testing.assert_allclose(history.objective[-1], 2 * nile_fit[1].objective[-1], rtol=1e-9)


def test_minibatches_improve_the_fit():
    model = bs.LinearGaussianSSM(A=[[0.8]], Q=[[0.5]], H=[[1.0]], R=[[0.3]], m0=[0.0], P0=[[1.0]])
    keys = jax.random.split(jax.random.key(1), 8)
    batch = jax.vmap(lambda k: model.sample(k, 100)[1])(keys)
    start = eqx.tree_at(lambda m: m.A, model, jnp.array([[0.1]]))
    fitted, history = bs.fit_mle(
        start,
        batch,
        where=lambda m: m.A,
        optimizer=optax.adam(5e-2),
        batch_size=3,
        num_steps=150,
        key=jax.random.key(2),
        progress=False,
    )
    assert history.num_steps == 150

    def total(m):
        return sum(bs.log_marginal(m, y) for y in batch)

    assert total(fitted) > total(start)
    assert abs(float(fitted.A[0, 0]) - 0.8) < 0.15


def test_map_matches_scipy():
    model = bs.LinearGaussianSSM(A=[[0.9]], Q=[[0.2]], H=[[1.0]], R=[[0.5]], m0=[0.0], P0=[[1.0]])
    y = model.sample(jax.random.key(3), 60)[1]
    priors = (nd.InverseGamma(3.0, 1.0), nd.InverseGamma(3.0, 1.0))
    fitted, history = bs.fit_mle(
        model, y, where=lambda m: (m.Q, m.R), priors=priors, progress=False
    )
    assert history.converged

    def negative_log_posterior(log_variances):
        q, r = np.exp(log_variances)
        m = bs.LinearGaussianSSM(A=[[0.9]], Q=[[q]], H=[[1.0]], R=[[r]], m0=[0.0], P0=[[1.0]])
        log_prior = priors[0].log_prob(q) + priors[1].log_prob(r)
        return -float(bs.log_marginal(m, y) + log_prior)

    reference = scipy.optimize.minimize(
        negative_log_posterior,
        np.log([0.2, 0.5]),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000},
    )
    values = bs.unwrap(fitted)
    np.testing.assert_allclose([values.Q[0, 0], values.R[0, 0]], np.exp(reference.x), rtol=1e-5)
    np.testing.assert_allclose(history.objective[-1], reference.fun, rtol=1e-9)


def test_non_finite_start_names_the_leaf():
    model = eqx.tree_at(lambda m: m.A, local_level(), jnp.array([[jnp.nan]]))
    with pytest.raises(ValueError, match="A"):
        bs.fit_mle(model, NILE, where=lambda m: (m.A, m.Q), progress=False)


def test_impossible_start_is_reported():
    model = eqx.tree_at(lambda m: m.R, local_level(), bs.Covariance.from_matrix([[0.0]]))
    model = eqx.tree_at(lambda m: m.P0, model, bs.Covariance.from_matrix([[0.0]]))
    with pytest.raises(ValueError, match="not finite"):
        bs.fit_mle(model, NILE, where=lambda m: m.Q, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"where": lambda m: m.nothing}, "where failed"),
        ({"where": lambda m: jnp.ones(1)}, "not a fittable leaf"),
        ({"where": lambda m: m.B}, "not a fittable leaf"),
        ({"where": lambda m: m.A, "priors": nd.Gamma(1.0, 1.0)}, "support"),
        ({"where": lambda m: m.Q, "priors": (nd.Normal(), nd.Normal())}, "one distribution"),
        ({"where": lambda m: m.Q, "num_restarts": 2}, "key"),
        ({"where": lambda m: m.Q, "batch_size": 2, "key": jax.random.key(0)}, "batch"),
        ({"where": lambda m: m.Q, "num_steps": 0}, "num_steps"),
    ],
)
def test_bad_settings_fail_before_fitting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bs.fit_mle(local_level(), NILE, progress=False, **kwargs)


def test_bad_data_fails_before_fitting():
    with pytest.raises(ValueError, match="y"):
        bs.fit_mle(local_level(), np.ones((10, 2)), where=lambda m: m.Q, progress=False)


def test_a_diverging_optimiser_names_the_leaf_that_went_non_finite():
    # Plain gradient steps of size 1e4 in log-variance overflow exp() at the first step.
    with pytest.raises(ValueError, match=r"restart 0 stopped after step 0: .* of (Q|R) went"):
        bs.fit_mle(
            local_level(),
            NILE,
            where=lambda m: (m.Q, m.R),
            optimizer=optax.sgd(1e4),
            num_steps=5,
            progress=False,
        )
