"""The inference verbs: one question each, any engine that can answer it.

Each verb checks its inputs in Python (before tracing), then runs the engine under one
`equinox.filter_jit`, so repeated calls reuse the compiled program and every verb works inside a
user's `jax.jit` or `jax.vmap`.
"""

from __future__ import annotations

import warnings

import numpy as np

from ._checks import check_positive_int, is_concrete
from ._jit import filter_jit
from ._types import Array, Float, Key
from .data import check_observations, model_dtype, observations
from .inference.kalman import Kalman
from .inference.results import FilterResult, ForecastResult, SmootherResult
from .ssm import AbstractLinearGaussianSSM, AbstractSSM


def default_engine(model: AbstractSSM):
    """The best exact engine the model allows."""
    if isinstance(model, AbstractLinearGaussianSSM):
        return Kalman()
    raise TypeError(
        f"{type(model).__name__} has no exact engine (it is not an AbstractLinearGaussianSSM); "
        "pass an approximate one with engine=."
    )


def _setup(model, y, engine, key, inputs, extra_steps=0):
    if not isinstance(model, AbstractSSM):
        raise TypeError(f"model must be a bs.AbstractSSM, got {type(model).__name__}.")
    engine = default_engine(model) if engine is None else engine
    engine.check(model)
    if engine.is_random and key is None:
        raise ValueError(f"{type(engine).__name__} is random: pass key=jax.random.key(...).")
    y, inputs = check_observations(model, y, inputs, extra_steps)
    return engine, (y, inputs, extra_steps)


@filter_jit
def _run(engine, verb: str, model, raw, key, *args):
    y, inputs, extra_steps = raw
    data = observations(y, inputs, extra_steps, model_dtype(model))
    return getattr(engine, verb)(model, data, key, *args)


def filter(
    model: AbstractSSM, y, *, engine=None, key: Key | None = None, inputs=None
) -> FilterResult:
    """Filtering distributions p(x_t | y_{0:t}) and the log-likelihood.

    Args:
        model: the state-space model.
        y: observations (T, M), or (T,) when M = 1; NaN marks a missing entry or row.
        engine: inference engine; default the best exact engine for the model (`bs.Kalman`).
        key: PRNG key, for random engines.
        inputs: control inputs (T, U), for models with control matrices.

    Returns:
        A result with `means` (T, D), `covs` (T, D, D), `chols`, `log_marginal` () and more.
    """
    engine, data = _setup(model, y, engine, key, inputs)
    return _warn_if_degenerate(_run(engine, "filter", model, data, key))


def _warn_if_degenerate(result):
    """Say where a particle filter lost all its weight (its results carry `degenerate_step`)."""
    step = getattr(result, "degenerate_step", None)
    if step is not None and is_concrete(step) and np.ndim(step) == 0 and int(step) >= 0:
        warnings.warn(
            f"every particle weight was zero or NaN at step {int(step)}: the model cannot "
            "explain y there (check the data and the parameters, or use more particles or a "
            "better proposal). log_marginal is -inf; the weights were reset to uniform.",
            RuntimeWarning,
            stacklevel=3,
        )
    return result


def smooth(
    model: AbstractSSM, y, *, engine=None, key: Key | None = None, inputs=None
) -> SmootherResult:
    """Smoothing distributions p(x_t | y_{0:T-1}): `means` (T, D), `covs` (T, D, D), and more."""
    engine, data = _setup(model, y, engine, key, inputs)
    result = _run(engine, "smooth", model, data, key)
    _warn_if_degenerate(getattr(result, "filtered", None))
    return result


def log_marginal(
    model: AbstractSSM, y, *, engine=None, key: Key | None = None, inputs=None
) -> Float[Array, ""]:
    """log p(y_{0:T-1}); differentiable with respect to the model for exact engines."""
    engine, data = _setup(model, y, engine, key, inputs)
    return _run(engine, "log_marginal", model, data, key)


def sample_posterior(
    model: AbstractSSM,
    y,
    *,
    key: Key,
    num_samples: int = 1,
    engine=None,
    inputs=None,
) -> Float[Array, "S T D"]:
    """Joint draws of the whole latent path from p(x_{0:T-1} | y_{0:T-1}), shape (S, T, D)."""
    if key is None:
        raise ValueError("sample_posterior needs key=jax.random.key(...).")
    check_positive_int("num_samples", num_samples)
    engine, data = _setup(model, y, engine, key, inputs)
    return _run(engine, "sample_posterior", model, data, key, num_samples)


def forecast(
    model: AbstractSSM,
    y,
    num_steps: int,
    *,
    engine=None,
    key: Key | None = None,
    inputs=None,
) -> ForecastResult:
    """k-step-ahead predictive means and covariances of states and observations after y.

    For a time-varying model (or one with control inputs) the arrays (and `inputs`) must cover
    T + num_steps steps.

    Returns:
        `means` (K, D), `covs` (K, D, D), `obs_means` (K, M), `obs_covs` (K, M, M).
    """
    check_positive_int("num_steps", num_steps)
    engine, data = _setup(model, y, engine, key, inputs, extra_steps=num_steps)
    return _run(engine, "forecast", model, data, key, num_steps)
