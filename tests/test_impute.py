"""bs.impute: the posterior at query times (between points, at missing entries, beyond the range)
equals dense GP prediction, and its 95% bands cover held-out data at the nominal rate."""

import numpy as np
import pytest
import scipy.stats
from reference.dense_gp import dense_gp_predict

import bayesssm as bs
from bayesssm import kernels

NOISE = 0.2


def gp():
    return bs.GPStateSpace(
        kernels.Matern32(variance=1.0, lengthscale=0.6) + kernels.Matern12(0.3, 3.0),
        noise_variance=NOISE,
    )


def test_equals_dense_prediction():
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 20, size=150))
    y = np.sin(times) + rng.normal(scale=0.4, size=150)
    y[rng.random(150) < 0.1] = np.nan
    model = gp()
    query = np.concatenate(
        [
            [-3.0, -0.5],  # before the first time
            rng.uniform(0, 20, size=20),  # between points
            times[np.isnan(y)][:5],  # at missing entries
            times[:2],  # at observed points
            [25.0, 40.0],  # forecasts
        ]
    )
    result = bs.impute(model, bs.TimeSeries(times, y), at=query, quantiles=(0.025, 0.975))
    mean, var = dense_gp_predict(model.kernel.covariance, times, y, NOISE, query)
    np.testing.assert_allclose(result.latent_mean[:, 0], mean, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(result.latent_sd[:, 0] ** 2, var, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(result.sd[:, 0] ** 2, var + NOISE, rtol=1e-8, atol=1e-8)
    z = scipy.stats.norm.ppf(0.975)
    np.testing.assert_allclose(result.quantiles[1], result.mean + z * result.sd, rtol=1e-12)
    np.testing.assert_allclose(result.times, query)


def test_band_coverage_on_data_from_the_model():
    """Held-out values drawn from the model fall inside the 95% bands at a rate in [0.90, 0.99]
    (the binomial standard error at n = 600 is 0.009)."""
    rng = np.random.default_rng(1)
    model = gp()
    T = 1500
    times = np.sort(rng.uniform(0, 300, size=T))
    K = model.kernel.covariance(times[:, None], times[None, :])
    f = np.linalg.cholesky(np.asarray(K) + 1e-10 * np.eye(T)) @ rng.normal(size=T)
    y = f + np.sqrt(NOISE) * rng.normal(size=T)
    held = rng.random(T) < 0.2
    held[700:900] = True  # and one long block
    y_train = np.where(held, np.nan, y)
    result = bs.impute(model, bs.TimeSeries(times, y_train), at=times[held])
    inside = np.abs(y[held] - result.mean[:, 0]) <= 1.96 * result.sd[:, 0]
    assert 0.90 <= inside.mean() <= 0.99, inside.mean()


def test_plain_array_and_bad_queries():
    y = np.sin(np.arange(30.0))
    model = gp()
    result = bs.impute(model, y, at=[3, 31])
    series = bs.impute(model, bs.TimeSeries(np.arange(30.0), y), at=[3.0, 31.0])
    np.testing.assert_allclose(result.mean, series.mean, rtol=1e-12)
    with pytest.raises(ValueError, match="whole step numbers"):
        bs.impute(model, y, at=[2.5])
    with pytest.raises(ValueError, match="NaN"):
        bs.impute(model, bs.TimeSeries(np.arange(30.0), y), at=[np.nan])
    with pytest.raises(ValueError, match="quantiles"):
        bs.impute(model, y, at=[1], quantiles=(0.5, 1.5))
