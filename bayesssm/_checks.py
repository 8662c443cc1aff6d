"""Input checks that run in Python, before tracing, with messages that say how to fix the input."""

from __future__ import annotations

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds values (not a tracer), so value checks can run."""
    return not isinstance(x, jax.core.Tracer)


def check_shape(name: str, value, expected: tuple, what: str = "") -> None:
    """`expected` holds ints or None (any size)."""
    shape = tuple(np.shape(value))
    ok = len(shape) == len(expected) and all(
        e is None or e == s for e, s in zip(expected, shape, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {want}{what}, got {shape}.")


def check_positive_int(name: str, value) -> None:
    """A count such as num_steps: a positive Python or NumPy integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def check_finite(name: str, value) -> None:
    if is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{name} has non-finite entries (NaN or inf); parameters must be finite.")


def check_covariance(name: str, value) -> None:
    """Symmetric positive semi-definite, on the last two axes."""
    shape = np.shape(value)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(
            f"{name} must be a square covariance matrix (..., n, n), got shape {shape}."
        )
    if not is_concrete(value):
        return
    check_finite(name, value)
    v = np.asarray(value, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(v)))) if v.size else 1.0
    if not np.allclose(v, np.swapaxes(v, -1, -2), rtol=1e-6, atol=1e-9 * scale):
        raise ValueError(f"{name} must be symmetric.")
    low = float(np.min(np.linalg.eigvalsh(v))) if v.size else 0.0
    if low < -1e-8 * scale:
        raise ValueError(
            f"{name} must be positive semi-definite, but its smallest eigenvalue is {low:.3g}."
        )
