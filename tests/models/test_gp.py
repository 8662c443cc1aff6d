"""bs.GPStateSpace: exact GP regression in O(T) equals the dense T x T computation
(tests/reference/dense_gp.py) on irregular times with a very long gap and missing values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.dense_gp import dense_gp

import bayesssm as bs
from bayesssm import kernels

RTOL = 1e-8
NOISE = 0.3


def irregular_series(T: int, seed: int = 0, missing: float = 0.1):
    """Exponential gaps (median ~0.07), one gap 10,000x the median, ~10% of values missing."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(0.1, size=T - 1)
    gaps[T // 2] = 1e4 * np.median(gaps)
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    y = np.sin(times) + rng.normal(scale=0.5, size=T)
    y[rng.random(T) < missing] = np.nan
    return times, y


KERNELS = {
    "Matern12": lambda: kernels.Matern12(variance=1.3, lengthscale=0.7),
    "Matern32": lambda: kernels.Matern32(variance=0.8, lengthscale=0.5),
    "Matern52": lambda: kernels.Matern52(variance=1.1, lengthscale=0.9),
    "Matern72": lambda: kernels.Matern72(variance=0.9, lengthscale=1.2),
    "sum": lambda: (
        kernels.Matern32(variance=0.5, lengthscale=2.0)
        + kernels.Matern12(variance=0.3, lengthscale=0.2)
    ),
    "product": lambda: (
        kernels.Matern52(variance=1.0, lengthscale=3.0)
        * kernels.Cosine(variance=0.7, frequency=2.0)
    ),
    "sum of products": lambda: (
        kernels.Matern32(variance=0.6, lengthscale=1.5)
        * kernels.Matern12(variance=1.0, lengthscale=4.0)
        + kernels.Constant(variance=0.2)
    ),
}


def assert_close(actual, expected):
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * np.max(np.abs(expected)))


@pytest.mark.parametrize("seed, name", list(enumerate(KERNELS)))
def test_equals_dense_gp(seed, name):
    kernel = KERNELS[name]()
    times, y = irregular_series(200, seed=seed)
    model = bs.GPStateSpace(kernel, noise_variance=NOISE)
    series = bs.TimeSeries(times, y)
    oracle = dense_gp(kernel.covariance, times, y, NOISE)
    assert_close(bs.log_marginal(model, series), oracle.log_marginal)
    smoothed = bs.smooth(model, series)
    H = np.asarray(kernel.measurement())[0]
    assert_close(smoothed.means @ H, oracle.mean)
    assert_close(np.einsum("i,tij,j->t", H, smoothed.covs, H), oracle.var)


def test_long_series_and_parallel_path():
    kernel = KERNELS["Matern32"]()
    times, y = irregular_series(1000, seed=7)
    model = bs.GPStateSpace(kernel, noise_variance=NOISE)
    series = bs.TimeSeries(times, y)
    oracle = dense_gp(kernel.covariance, times, y, NOISE)
    for parallel in (False, True):
        engine = bs.Kalman(parallel=parallel)
        assert_close(bs.log_marginal(model, series, engine=engine), oracle.log_marginal)
        smoothed = bs.smooth(model, series, engine=engine)
        assert_close(model.latent(smoothed.means), oracle.mean)


def test_plain_array_means_unit_spacing():
    kernel = KERNELS["Matern52"]()
    _, y = irregular_series(50, seed=3)
    model = bs.GPStateSpace(kernel, noise_variance=NOISE)
    series = bs.TimeSeries(np.arange(50.0), y)
    assert_close(bs.log_marginal(model, y), bs.log_marginal(model, series))


def test_gradient_matches_the_dense_gp():
    times, y = irregular_series(60, seed=11)

    def ours(log_params):
        variance, lengthscale, noise = jnp.exp(log_params)
        model = bs.GPStateSpace(
            kernels.Matern32(variance=variance, lengthscale=lengthscale), noise_variance=noise
        )
        return bs.log_marginal(model, bs.TimeSeries(times, y))

    point = np.log(np.array([0.8, 0.5, 0.3]))
    grad = np.asarray(jax.grad(ours)(jnp.asarray(point)))

    def dense(log_params):
        variance, lengthscale, noise = np.exp(log_params)
        k = kernels.Matern32(variance=variance, lengthscale=lengthscale).covariance
        return dense_gp(k, times, y, noise).log_marginal

    step = 1e-6
    numeric = np.array(
        [(dense(point + step * e) - dense(point - step * e)) / (2 * step) for e in np.eye(3)]
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-6)


def test_bad_input():
    with pytest.raises(TypeError, match="bs.kernels kernel"):
        bs.GPStateSpace("Matern32", noise_variance=0.1)
    with pytest.raises(ValueError, match="noise_variance"):
        bs.GPStateSpace(kernels.Matern32(), noise_variance=0.0)
    model = bs.GPStateSpace(kernels.Matern32(), noise_variance=0.1)
    with pytest.raises(ValueError, match="M = 1"):
        bs.log_marginal(model, np.zeros((10, 2)))


def test_fit_mle_reaches_the_dense_gp_optimum():
    """Hyperparameters fitted by bs.fit_mle on a TimeSeries maximise the dense GP likelihood
    (found independently with scipy on the T x T computation)."""
    import scipy.optimize

    times, y = irregular_series(120, seed=5)
    start = bs.GPStateSpace(kernels.Matern32(variance=1.0, lengthscale=1.0), noise_variance=0.5)
    fitted, history = bs.fit_mle(
        start,
        bs.TimeSeries(times, y),
        where=lambda m: (m.kernel.variance, m.kernel.lengthscale, m.noise_variance),
        progress=False,
    )
    assert history.converged

    def negative(log_params):
        variance, lengthscale, noise = np.exp(log_params)
        k = kernels.Matern32(variance=variance, lengthscale=lengthscale).covariance
        return -dense_gp(k, times, y, noise).log_marginal

    best = scipy.optimize.minimize(
        negative,
        np.zeros(3),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000},
    )
    ours = np.array(
        [
            fitted.kernel.variance.value(),
            fitted.kernel.lengthscale.value(),
            fitted.noise_variance.value(),
        ]
    )
    np.testing.assert_allclose(ours, np.exp(best.x), rtol=1e-4)
    np.testing.assert_allclose(-history.objective[-1], -best.fun, rtol=1e-8)


@pytest.mark.parametrize(
    "kernel",
    [
        lambda p: kernels.Periodic(p[0], p[1], p[2], order=3),
        lambda p: kernels.QuasiPeriodic(p[0], p[1], p[2], p[3], order=3),
    ],
    ids=["Periodic", "QuasiPeriodic"],
)
def test_gradient_is_finite_for_periodic_kernels(kernel):
    """P_inf of a periodic kernel has two equal variances per harmonic (repeated eigenvalues),
    where the derivative of an eigendecomposition is NaN: the initial factor chol P_inf must not
    differentiate one it does not use. The gradient equals central finite differences."""
    rng = np.random.default_rng(13)
    times = np.sort(rng.uniform(0.0, 5.0, size=80))
    y = np.sin(2.0 * np.pi * times / 1.5) + rng.normal(scale=0.5, size=80)
    series = bs.TimeSeries(times, y)

    def ll(log_params):
        params = jnp.exp(log_params)
        model = bs.GPStateSpace(kernel(params[:-1]), noise_variance=params[-1])
        return bs.log_marginal(model, series)

    point = jnp.log(jnp.asarray([0.8, 1.2, 1.5, 4.0, NOISE]))
    grad = np.asarray(jax.grad(ll)(point))
    assert np.all(np.isfinite(grad))
    step = 1e-6
    numeric = np.array(
        [(ll(point + step * e) - ll(point - step * e)) / (2 * step) for e in np.eye(5)]
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)


def test_generic_transition_has_the_discretised_covariance():
    # particle engines use the generic distribution; its covariance must be Q of the SDE step
    gp = bs.GPStateSpace(bs.kernels.Matern52(variance=1.3, lengthscale=0.7), noise_variance=0.1)
    step = bs.StepInputs(index=jnp.asarray(3), dt=jnp.asarray(0.3))
    A, _, Q = gp.transition_covariance_params(step)
    x = jnp.asarray([0.2, -0.4, 1.1])
    dist = gp.transition(x, step)
    np.testing.assert_allclose(dist.covariance(), Q, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dist.mean(), A @ x, rtol=1e-12)
