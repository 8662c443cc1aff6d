"""Products of small matrices inside per-step loops.

XLA's CPU backend sends every `dot` to a library call whose fixed cost dominates at the sizes a
state-space step works with (about 0.5 us for a 9 x 9 product, against about 0.2 us for the same
product written as a broadcast multiply and a sum, which XLA fuses into one loop). Above a few
dozen rows the library's blocked kernels win, so larger products stay `dot`s.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._types import Array, Float

# Largest dimension for which the fused broadcast form is used.
_FUSED_MAX = 16


def matmul(a: Float[Array, "n k"], b: Float[Array, "k m"]) -> Float[Array, "n m"]:
    """a @ b, fused for small operands."""
    if max(a.shape + b.shape) > _FUSED_MAX:
        return a @ b
    return jnp.sum(a[:, :, None] * b[None, :, :], axis=1)


def matvec(a: Float[Array, "n k"], x: Float[Array, " k"]) -> Float[Array, " n"]:
    """a @ x, fused for small operands."""
    if max(a.shape) > _FUSED_MAX:
        return a @ x
    return jnp.sum(a * x[None, :], axis=1)


def symmetrise(a: Float[Array, "n n"]) -> Float[Array, "n n"]:
    return 0.5 * (a + a.T)
