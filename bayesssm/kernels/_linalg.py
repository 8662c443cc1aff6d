"""Small matrix helpers shared by the kernels."""

from __future__ import annotations

import jax.numpy as jnp
import jax.scipy.linalg as jsl

from .._types import Array, Float

# jax's expm returns NaN beyond `max_squarings` halvings (16 by default, an L1 norm of ~3.5e5):
# a step of 1e4 length-scales needs more. Each extra squaring is one (D, D) product.
_MAX_SQUARINGS = 64


def expm(matrix: Float[Array, "D D"]) -> Float[Array, "D D"]:
    """Matrix exponential that stays finite for large norms (for stable matrices it tends to 0)."""
    return jsl.expm(matrix, max_squarings=_MAX_SQUARINGS)


def symmetrise(matrix: Float[Array, "D D"]) -> Float[Array, "D D"]:
    return 0.5 * (matrix + matrix.T)


def block_diag(*blocks: Float[Array, "_ _"]) -> Float[Array, "D D"]:
    return jsl.block_diag(*blocks)


def rotations(angles: Float[Array, " J"]) -> Float[Array, "2J 2J"]:
    """Block-diagonal of the 2x2 rotations [[cos a, -sin a], [sin a, cos a]]."""
    c, s = jnp.cos(angles), jnp.sin(angles)
    blocks = jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)  # (J, 2, 2)
    return block_diag(*blocks)
