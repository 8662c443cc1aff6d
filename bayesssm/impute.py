"""`bs.impute`: the posterior of missing or unobserved values at any times, in one pass."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from ._jit import filter_jit
from ._types import Array, Float
from .data import TimeSeries, model_dtype, observations
from .ssm import AbstractLinearGaussianSSM, require_capability
from .verbs import _setup


class ImputeResult(NamedTuple):
    """Posterior predictive at the query times (Q of them).

    `mean`/`sd` are those of the observations y (noise included): what a missing value would
    have been. `latent_mean`/`latent_sd` are those of the noise-free signal H x + d (for a
    `bs.GPStateSpace`, the function f). Quantiles, when asked for, have a leading axis of the
    requested levels.
    """

    times: Float[Array, " Q"]
    mean: Float[Array, "Q M"]
    sd: Float[Array, "Q M"]
    latent_mean: Float[Array, "Q M"]
    latent_sd: Float[Array, "Q M"]
    quantiles: Float[Array, "K Q M"] | None
    latent_quantiles: Float[Array, "K Q M"] | None


def impute(model, y, *, at, engine=None, quantiles=None) -> ImputeResult:
    """Posterior mean, sd and quantiles of y and of the signal at the times `at`.

    The query times are merged with the series' times (as unobserved steps) and one smoothing
    pass runs over the merged grid, so queries inside the range, between points, at missing
    entries and beyond either end (forecasting and backcasting) are all answered at once.

    Args:
        model: a linear-Gaussian model (`bs.GPStateSpace`, `bs.LinearGaussianSSM`, ...), or a
            model with a `posterior_predictive(series, rows, *, engine)` method returning the
            mean, the variance of y and the variance of the signal at the rows `rows` of a
            series (`bs.NCDSSM`: its decoder's moments under the smoothed latent).
        y: a `bs.TimeSeries`, or an array (T, M) whose steps are taken as times 0, 1, ..., T-1
            (then `at` must hold whole step numbers).
        at: query times (Q,), in the series' time axis; datetimes for a series built from a
            DatetimeIndex.
        engine: inference engine (default `bs.Kalman()`).
        quantiles: levels in (0, 1), e.g. `(0.025, 0.975)`, for Gaussian quantiles.

    Returns:
        An `ImputeResult`.
    """
    own_predictive = not isinstance(model, AbstractLinearGaussianSSM) and callable(
        getattr(model, "posterior_predictive", None)
    )
    if not own_predictive:
        require_capability(model, AbstractLinearGaussianSSM, "bs.impute")
    series = y if isinstance(y, TimeSeries) else TimeSeries(np.arange(np.shape(y)[0]), y)
    query = _query_times(series, at, plain=not isinstance(y, TimeSeries))
    levels = None if quantiles is None else _levels(quantiles)
    merged, rows = _merge(series, query)
    if own_predictive:
        mean, var, latent_var = model.posterior_predictive(merged, rows, engine=engine)
    else:
        engine, raw = _setup(model, merged, engine, None, None)
        mean, var, latent_var = _predict(engine, model, raw, jnp.asarray(rows))
    sd, latent_sd = jnp.sqrt(var), jnp.sqrt(latent_var)
    if levels is None:
        bands = latent_bands = None
    else:
        z = norm.ppf(jnp.asarray(levels, mean.dtype))[:, None, None]
        bands, latent_bands = mean + z * sd, mean + z * latent_sd
    times = jnp.asarray(query, mean.dtype)
    return ImputeResult(times, mean, sd, mean, latent_sd, bands, latent_bands)


@filter_jit
def _predict(engine, model, raw, rows):
    y, inputs, extra_steps = raw
    data = observations(y, inputs, extra_steps, model_dtype(model))
    smoothed = engine.smooth(model, data)
    steps = jax.tree.map(lambda a: a[rows], data.steps)

    def at_step(step, mean, cov):
        H, d, chol_R = model.emission_params(step)
        latent = H @ cov @ H.T
        return H @ mean + d, jnp.diagonal(latent + chol_R @ chol_R.T), jnp.diagonal(latent)

    return jax.vmap(at_step)(steps, smoothed.means[rows], smoothed.covs[rows])


def _query_times(series: TimeSeries, at, plain: bool) -> np.ndarray:
    query = np.atleast_1d(series.to_times(at) if not plain else np.asarray(at, float))
    if query.ndim != 1 or query.size == 0:
        raise ValueError(f"at must be a non-empty 1-D array of times, got shape {query.shape}.")
    if not np.all(np.isfinite(query)):
        raise ValueError("at has NaN or infinite times.")
    if plain and not np.all(query == np.round(query)):
        raise ValueError(
            "y is a plain array, whose steps are times 0, 1, ..., T-1: at must hold whole step "
            "numbers. For other times, give y as a bs.TimeSeries."
        )
    return query


def _levels(quantiles) -> np.ndarray:
    levels = np.atleast_1d(np.asarray(quantiles, float))
    if levels.ndim != 1 or not np.all((levels > 0) & (levels < 1)):
        raise ValueError(f"quantiles must be levels in (0, 1), got {quantiles!r}.")
    return levels


def _merge(series: TimeSeries, query: np.ndarray) -> tuple[TimeSeries, np.ndarray]:
    """The series on the union of its times and the queries, and each query's row in it."""
    times = np.asarray(series.times)
    grid = np.union1d(times, query)
    values = np.full((grid.size, series.obs_dim), np.nan, np.asarray(series.values).dtype)
    values[np.searchsorted(grid, times)] = np.asarray(series.values)
    return TimeSeries(grid, values), np.searchsorted(grid, query)
