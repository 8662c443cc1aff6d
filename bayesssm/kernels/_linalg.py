"""Small matrix helpers shared by the kernels."""

from __future__ import annotations

import jax.numpy as jnp
import jax.scipy.linalg as jsl

from .._matmul import symmetrise  # noqa: F401 (the kernels' name for it)
from .._types import Array, Float

# jax's expm returns NaN beyond `max_squarings` halvings (16 by default, an L1 norm of ~3.5e5):
# a step of 1e4 length-scales needs more. Each extra squaring is one (D, D) product.
_MAX_SQUARINGS = 64


def expm(matrix: Float[Array, "D D"]) -> Float[Array, "D D"]:
    """Matrix exponential that stays finite for large norms (for stable matrices it tends to 0)."""
    return jsl.expm(matrix, max_squarings=_MAX_SQUARINGS)


def block_diag(*blocks: Float[Array, "_ _"]) -> Float[Array, "D D"]:
    return jsl.block_diag(*blocks)


def rotations(angles: Float[Array, " J"]) -> Float[Array, "2J 2J"]:
    """Block-diagonal of the 2x2 rotations [[cos a, -sin a], [sin a, cos a]]."""
    c, s = jnp.cos(angles), jnp.sin(angles)
    blocks = jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)  # (J, 2, 2)
    return block_diag(*blocks)


def harmonic_rotations(angle: Float[Array, ""], count: int) -> Float[Array, "2J 2J"]:
    """`rotations` of the angles j * angle, j = 1..count, from one cosine and one sine: the
    harmonics follow by angle addition, exact up to about j rounding errors (on CPU each
    trigonometric call costs as much as a dozen multiplications)."""
    c1, s1 = jnp.cos(angle), jnp.sin(angle)
    cosines, sines = [c1], [s1]
    for _ in range(count - 1):
        c, s = cosines[-1], sines[-1]
        cosines.append(c * c1 - s * s1)
        sines.append(s * c1 + c * s1)
    c, s = jnp.stack(cosines), jnp.stack(sines)
    blocks = jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)  # (J, 2, 2)
    return block_diag(*blocks)


def semidefinite_cholesky(matrix: Float[Array, "D D"]) -> Float[Array, "D D"]:
    """A square root L (L L^T = matrix) of a PSD matrix that may be singular or graded.

    Cholesky with diagonal pivoting, unrolled over the (static) columns: each step eliminates the
    largest remaining diagonal entry, and stops adding columns once that is at rounding level
    (D eps times the largest diagonal entry). The remainder it drops is PSD with entries no
    larger than its diagonal, so the error is at rounding level too, even for a smooth Matérn's
    Q over a short step, whose small entries are mostly rounding error from P - A P A^T. L is
    lower triangular up to a permutation of its rows. Plain array operations: cheap inside a
    `lax.scan` step (no LAPACK call, no eigendecomposition) and differentiable (a dropped column
    has zero derivative).
    """
    n = matrix.shape[-1]
    schur = symmetrise(matrix)
    tol = n * jnp.finfo(matrix.dtype).eps * jnp.max(jnp.diagonal(schur))
    columns = []
    for _ in range(n):
        diagonal = jnp.diagonal(schur)
        pick = jnp.arange(n) == jnp.argmax(diagonal)
        pivot = jnp.max(diagonal)
        kept = pivot > tol
        root = jnp.sqrt(jnp.where(kept, pivot, 1.0))
        column = jnp.where(kept, jnp.sum(jnp.where(pick[None, :], schur, 0.0), axis=1) / root, 0.0)
        columns.append(column)
        schur = schur - column[:, None] * column[None, :]
    return jnp.stack(columns, axis=1)
