"""Checks shared by the scalar example models (stochastic volatility, growth, Poisson AR(1)).

They run in Python before any tracing; under `jax.jit` (traced arguments) only shapes are checked.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete
from .._types import Array, ArrayLike
from ..params import AbstractConstrained, Interval, Positive


def _raw(value):
    if isinstance(value, AbstractConstrained):
        return value.unconstrained
    return jnp.asarray(value) if isinstance(value, list | tuple) else value


def float_dtype(*values):
    """The float dtype of the model's leaves: that of the arrays among `values` (Python numbers
    are weakly typed and follow them; constrained leaves count by their `unconstrained` array),
    the default float when all are Python numbers."""
    dtype = jnp.result_type(*(_raw(v) for v in values), 0.0)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def _check_scalar(owner: str, name: str, value) -> None:
    shape = np.shape(value)
    if shape != ():
        raise ValueError(
            f"{owner}: {name} must be a scalar (the state is one number per step), got shape "
            f"{shape}. For a batch of models, build them inside jax.vmap."
        )


def _concrete_float(value) -> float | None:
    return float(np.asarray(value)) if is_concrete(value) else None


def real(owner: str, name: str, value: ArrayLike, dtype) -> Array:
    """`value` as a finite scalar array of `dtype`."""
    _check_scalar(owner, name, value)
    array = jnp.asarray(value, dtype)
    x = _concrete_float(array)
    if x is not None and not np.isfinite(x):
        raise ValueError(f"{owner}: {name} must be a finite number, got {x!r}.")
    return array


def positive(owner: str, name: str, value: ArrayLike | Positive, dtype) -> Positive:
    """`value` as a scalar `Positive` of `dtype`; a plain number must be finite and > 0."""
    if isinstance(value, Positive):
        _check_scalar(owner, name, value.unconstrained)
        raw = _concrete_float(value.unconstrained)
        if raw is not None and not np.isfinite(raw):
            raise ValueError(f"{owner}: {name} has a non-finite unconstrained value {raw!r}.")
        return Positive(value.unconstrained.astype(dtype))
    _check_scalar(owner, name, value)
    array = jnp.asarray(value, dtype)
    x = _concrete_float(array)
    if x is not None and not (np.isfinite(x) and x > 0):
        raise ValueError(f"{owner}: {name} must be a finite positive number, got {x!r}.")
    return Positive.from_value(array)


def coefficient(owner: str, name: str, value: ArrayLike | Interval, dtype) -> Interval:
    """An autoregressive coefficient: a scalar `Interval` inside (-1, 1), of `dtype`.

    An `Interval` whose bounds lie within [-1, 1] is kept (cast to `dtype`).
    """
    if isinstance(value, Interval):
        if value.low < -1.0 or value.high > 1.0:
            raise ValueError(
                f"{owner}: {name} is an Interval on ({value.low!r}, {value.high!r}), which "
                f"reaches outside (-1, 1); the process is stationary only for |{name}| < 1. Use "
                f"bs.params.Interval.from_value({name}) (bounds -1 and 1)."
            )
        _check_scalar(owner, name, value.unconstrained)
        raw = _concrete_float(value.unconstrained)
        if raw is not None and not np.isfinite(raw):
            raise ValueError(f"{owner}: {name} has a non-finite unconstrained value {raw!r}.")
        return Interval(value.unconstrained.astype(dtype), low=value.low, high=value.high)
    _check_scalar(owner, name, value)
    array = jnp.asarray(value, dtype)
    x = _concrete_float(array)
    if x is not None and not (np.isfinite(x) and -1.0 < x < 1.0):
        raise ValueError(
            f"{owner}: {name} must lie strictly between -1 and 1 (a stationary AR(1) state), "
            f"got {x!r}."
        )
    return Interval.from_value(array)


def stationary_sd(rho: Array, sigma: Array) -> Array:
    r"""$\sigma / \sqrt{1 - \rho^2}$, with $1 - \rho^2 = (1 - \rho)(1 + \rho)$ (accurate for
    $|\rho|$ near one)."""
    return sigma / jnp.sqrt((1.0 - rho) * (1.0 + rho))


def check_scalar_data(owner: str, obs_dim: int | None, controls) -> None:
    """One observation per step (y of shape (T,) or (T, 1)) and no control inputs."""
    if obs_dim is not None and obs_dim != 1:
        raise ValueError(
            f"{owner} observes one number per step: y must have shape (T,) or (T, 1), got "
            f"M = {obs_dim} columns. Fit one model per column (for example under jax.vmap)."
        )
    if controls is not None:
        raise ValueError(f"{owner} takes no control inputs (inputs=).")
