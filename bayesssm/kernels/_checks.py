"""Checks on kernel hyperparameters, run in Python before any tracing."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._checks import check_positive_int, is_concrete
from .._types import ArrayLike
from ..params import Positive, _float_array


def float_dtype(*values: ArrayLike | Positive):
    """The float dtype a kernel's leaves get: that of the arrays among `values` (Python numbers
    are weakly typed and follow them), so float32 hyperparameters give a float32 kernel even
    when others are left at their Python-float defaults."""
    arrays = [v.unconstrained if isinstance(v, Positive) else v for v in values]
    return jnp.result_type(*arrays, 0.0)


def positive(
    owner: str, name: str, value: ArrayLike | Positive, dtype=None, *, allow_zero: bool = False
):
    """`value` as a scalar `Positive` leaf of float `dtype` (default: its own); a plain number
    must be finite and > 0 (>= 0 with `allow_zero`, stored as the smallest normal float).
    A `Positive` is kept as it is."""
    if isinstance(value, Positive):
        raw = value.unconstrained
        if np.shape(raw) != ():
            raise ValueError(f"{owner}: {name} must be a scalar, got shape {np.shape(raw)}.")
        if is_concrete(raw) and not np.isfinite(np.asarray(raw)):
            raise ValueError(f"{owner}: {name} has a non-finite unconstrained value {raw!r}.")
        return value
    array = _float_array(value) if dtype is None else jnp.asarray(value, dtype)
    if array.shape != ():
        raise ValueError(
            f"{owner}: {name} must be a scalar (one kernel per model), got shape {array.shape}."
        )
    if is_concrete(array):
        x = float(array)
        bad = not np.isfinite(x) or (x < 0 if allow_zero else x <= 0)
        if bad:
            want = "non-negative" if allow_zero else "positive"
            raise ValueError(f"{owner}: {name} must be a finite {want} number, got {x!r}.")
    return Positive.from_value(array)


def order(owner: str, value) -> int:
    """A static approximation order: a Python int >= 1."""
    try:
        check_positive_int("order", value)
    except ValueError as err:
        raise ValueError(
            f"{owner}: {err} It is the number of terms of the approximation."
        ) from None
    return int(value)
