"""bs.GPStateSpace with several outputs (the linear model of coregionalisation, y = W f + v)
equals the dense multi-output GP (tests/reference/dense_gp.py) on irregular times with single
entries and whole rows missing, for both Kalman engines, in bs.impute, and in its gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.dense_gp import dense_gp, dense_multi_output_gp

import bayesssm as bs
from bayesssm import kernels

RTOL = 1e-8
MIXING = np.array([[1.0, 0.5], [0.3, -1.2], [0.0, 0.8]])  # M = 3 outputs, Q = 2 latent GPs
NOISE = np.array([0.1, 0.3, 0.2])


def assert_close(actual, expected, rtol=RTOL):
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.max(np.abs(expected)))


def irregular_series(T: int, M: int, seed: int = 0):
    """Exponential gaps with one gap 1,000x the median; ~15% of single entries and ~10% of
    whole rows missing."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(0.1, size=T - 1)
    gaps[T // 2] = 1e3 * np.median(gaps)
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    y = np.sin(times)[:, None] * np.arange(1, M + 1) + rng.normal(scale=0.5, size=(T, M))
    y[rng.random((T, M)) < 0.15] = np.nan
    y[rng.random(T) < 0.1] = np.nan
    y[1] = np.nan  # at least one whole row
    return times, y


def lmc():
    return (
        kernels.Matern32(variance=0.8, lengthscale=0.5),
        kernels.Matern52(variance=1.1, lengthscale=2.0) + kernels.Matern12(0.3, 0.2),
    )


MODELS = {
    # name: (GPStateSpace arguments, the latent kernels, W, noise) for the dense oracle
    "lmc": lambda: ((lmc(), NOISE, MIXING), lmc(), MIXING, NOISE),
    "icm": lambda: (
        (kernels.Matern32(variance=1.0, lengthscale=0.7), 0.25, MIXING),
        (kernels.Matern32(variance=1.0, lengthscale=0.7),) * 2,
        MIXING,
        0.25,
    ),
    "independent": lambda: ((list(lmc()), [0.1, 0.4]), lmc(), np.eye(2), [0.1, 0.4]),
}


def covs_of_outputs(model, covs):
    H = np.asarray(model.emission_params(None)[0])
    return np.einsum("id,tde,ie->ti", H, np.asarray(covs), H)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("name", list(MODELS))
def test_equals_dense_multi_output_gp(name, parallel):
    args, ks, W, noise = MODELS[name]()
    model = bs.GPStateSpace(*args)
    M = W.shape[0]
    times, y = irregular_series(120, M, seed=len(name))
    series = bs.TimeSeries(times, y)
    log_marginal, mean, var = dense_multi_output_gp([k.covariance for k in ks], W, times, y, noise)
    engine = bs.Kalman(parallel=parallel)
    assert model.obs_dim == M
    assert_close(bs.log_marginal(model, series, engine=engine), log_marginal)
    smoothed = bs.smooth(model, series, engine=engine)
    assert model.latent(smoothed.means).shape == (120, M)
    assert_close(model.latent(smoothed.means), mean)
    assert_close(covs_of_outputs(model, smoothed.covs), var)


def test_single_output_is_unchanged():
    """No mixing: one output, latent of shape (T,). A (1, 1) mixing of 1 is the same model with
    outputs of shape (T, 1); so is a sequence of one kernel."""
    kernel = kernels.Matern32(variance=0.8, lengthscale=0.5)
    times, y = irregular_series(60, 1, seed=4)
    series = bs.TimeSeries(times, y[:, 0])
    single = bs.GPStateSpace(kernel, noise_variance=0.3)
    assert single.mixing is None and single.obs_dim == 1 and single.num_latent == 1
    oracle = dense_gp(kernel.covariance, times, y[:, 0], 0.3)
    assert_close(bs.log_marginal(single, series), oracle.log_marginal)
    assert single.latent(bs.smooth(single, series).means).shape == (60,)
    for other in (
        bs.GPStateSpace(kernel, noise_variance=0.3, mixing=[[1.0]]),
        bs.GPStateSpace([kernel], noise_variance=[0.3]),
    ):
        assert_close(bs.log_marginal(other, series), oracle.log_marginal)
        latent = other.latent(bs.smooth(other, series).means)
        assert latent.shape == (60, 1)
        assert_close(latent[:, 0], oracle.mean)


def test_impute_equals_dense_prediction():
    args, ks, W, noise = MODELS["lmc"]()
    model = bs.GPStateSpace(*args)
    times, y = irregular_series(80, 3, seed=9)
    rng = np.random.default_rng(2)
    query = np.concatenate(
        [
            [-2.0, -0.3],  # before the first time
            rng.uniform(times[0], times[-1], size=10),  # between points (and in the long gap)
            times[[1, 5]],  # at a missing row and at a row with observed entries
            times[-1] + np.array([0.5, 10.0]),  # forecasts
        ]
    )
    result = bs.impute(model, bs.TimeSeries(times, y), at=query, quantiles=(0.1, 0.9))
    _, mean, var = dense_multi_output_gp([k.covariance for k in ks], W, times, y, noise, query)
    assert result.mean.shape == result.sd.shape == (query.size, 3)
    assert result.quantiles.shape == (2, query.size, 3)
    assert_close(result.latent_mean, mean)
    assert_close(result.mean, mean)
    assert_close(result.latent_sd**2, var)
    assert_close(result.sd**2, var + noise)


def test_gradient_matches_the_dense_gp():
    """d log p / d(W, lengthscale of the first latent GP) against central differences of the
    dense log marginal."""
    times, y = irregular_series(40, 3, seed=11)
    series = bs.TimeSeries(times, y)
    other = kernels.Matern12(variance=0.7, lengthscale=1.5)

    def ours(W, log_lengthscale):
        first = kernels.Matern32(variance=0.8, lengthscale=jnp.exp(log_lengthscale))
        model = bs.GPStateSpace((first, other), NOISE, mixing=W)
        return bs.log_marginal(model, series)

    def dense(W, log_lengthscale):
        first = kernels.Matern32(variance=0.8, lengthscale=np.exp(log_lengthscale))
        ks = [first.covariance, other.covariance]
        return dense_multi_output_gp(ks, W, times, y, NOISE)[0]

    point = np.log(0.5)
    grad_W, grad_ls = jax.grad(ours, argnums=(0, 1))(jnp.asarray(MIXING), jnp.asarray(point))
    step = 1e-6
    numeric_W = np.zeros_like(MIXING)
    for index in np.ndindex(MIXING.shape):
        e = np.zeros_like(MIXING)
        e[index] = step
        numeric_W[index] = (dense(MIXING + e, point) - dense(MIXING - e, point)) / (2 * step)
    numeric_ls = (dense(MIXING, point + step) - dense(MIXING, point - step)) / (2 * step)
    np.testing.assert_allclose(grad_W, numeric_W, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad_ls, numeric_ls, rtol=1e-6)


def test_fit_mle_improves_the_likelihood():
    """Fitting W, a lengthscale and the per-output noise runs and raises the log marginal."""
    key_x, key_noise = jax.random.split(jax.random.key(0))
    truth = bs.GPStateSpace(lmc(), NOISE, mixing=MIXING)
    times = np.sort(np.random.default_rng(3).uniform(0, 10, size=60))
    Ws, dense = MIXING, [k.covariance for k in lmc()]
    K = sum(
        np.kron(np.asarray(k(times[:, None], times[None, :])), np.outer(w, w))
        for k, w in zip(dense, Ws.T, strict=True)
    )
    f = np.linalg.cholesky(K + 1e-9 * np.eye(K.shape[0])) @ np.asarray(
        jax.random.normal(key_x, (K.shape[0],))
    )
    y = f.reshape(60, 3) + np.sqrt(NOISE) * np.asarray(jax.random.normal(key_noise, (60, 3)))
    y[5, 1] = y[10] = np.nan
    series = bs.TimeSeries(times, y)
    start = bs.GPStateSpace(lmc(), [0.5, 0.5, 0.5], mixing=np.full((3, 2), 0.5) + np.eye(3, 2))
    fitted, history = bs.fit_mle(
        start,
        series,
        where=lambda m: (m.mixing, m.kernel[0].lengthscale, m.noise_variance),
        num_steps=200,
        progress=False,
    )
    assert fitted.mixing.shape == (3, 2)
    assert fitted.noise_variance.value().shape == (3,)
    before, after = bs.log_marginal(start, series), bs.log_marginal(fitted, series)
    assert np.isfinite(after) and after > before + 1.0
    assert after >= bs.log_marginal(truth, series) - 5.0


def test_batch_float32_and_sampling():
    model = bs.GPStateSpace(lmc(), NOISE, mixing=MIXING)
    times, y = irregular_series(30, 3, seed=1)
    series = bs.TimeSeries(times, y)
    batch = jnp.stack([MIXING, 2 * MIXING])
    lls = jax.vmap(lambda W: bs.log_marginal(bs.GPStateSpace(lmc(), NOISE, mixing=W), series))(
        batch
    )
    assert_close(lls[0], bs.log_marginal(model, series))
    x, y_sampled = model.sample(jax.random.key(0), num_timesteps=20)
    assert x.shape == (20, model.state_dim) and y_sampled.shape == (20, 3)

    f32 = bs.GPStateSpace(
        (kernels.Matern32(variance=jnp.float32(0.8), lengthscale=jnp.float32(0.5)),),
        jnp.asarray(NOISE[:2], jnp.float32),
        mixing=jnp.asarray(MIXING[:2, :1], jnp.float32),
    )
    series32 = bs.TimeSeries(times, y[:, :2].astype(np.float32))
    ll = bs.log_marginal(f32, series32)
    assert ll.dtype == jnp.float32
    expected = dense_multi_output_gp(
        [kernels.Matern32(0.8, 0.5).covariance], MIXING[:2, :1], times, y[:, :2], NOISE[:2]
    )[0]
    np.testing.assert_allclose(ll, expected, rtol=1e-4)


def test_bad_input():
    ks = lmc()
    with pytest.raises(ValueError, match=r"2 columns but 3 kernels"):
        bs.GPStateSpace((*ks, kernels.Matern12()), 0.1, mixing=MIXING)
    with pytest.raises(ValueError, match=r"2-D array \(M, Q\)"):
        bs.GPStateSpace(ks, 0.1, mixing=np.ones(3))
    with pytest.raises(ValueError, match="mixing has non-finite"):
        bs.GPStateSpace(ks, 0.1, mixing=np.where(MIXING == 0, np.nan, MIXING))
    with pytest.raises(ValueError, match=r"noise_variance must be a scalar or have shape \(3,\)"):
        bs.GPStateSpace(ks, [0.1, 0.2], mixing=MIXING)
    with pytest.raises(ValueError, match="noise_variance must be finite positive"):
        bs.GPStateSpace(ks, [0.1, 0.0, 0.2], mixing=MIXING)
    with pytest.raises(ValueError, match="noise_variance"):
        bs.GPStateSpace(ks, -1.0, mixing=MIXING)
    with pytest.raises(ValueError, match="empty sequence"):
        bs.GPStateSpace([], 0.1)
    with pytest.raises(TypeError, match=r"kernel\[1\] must be a bs.kernels kernel"):
        bs.GPStateSpace([kernels.Matern12(), "Matern32"], 0.1)
    model = bs.GPStateSpace(ks, NOISE, mixing=MIXING)
    with pytest.raises(ValueError, match="M = 3 outputs.*must have 3 columns, got 2"):
        bs.log_marginal(model, np.zeros((10, 2)))
    with pytest.raises(ValueError, match="M = 1 column"):
        bs.log_marginal(bs.GPStateSpace(ks[0], 0.1), np.zeros((10, 3)))
