"""Constrained parameters: leaves stored so that unconstrained optimisation keeps them valid.

A constrained leaf is an `equinox.Module` holding an unconstrained array; `value()` maps it back.
`unwrap` replaces every constrained leaf of a pytree by its value, so `bs.unwrap(model).Q` is the
plain covariance matrix while `model.Q` is what an optimiser updates.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._types import Array, ArrayLike, Float

# exp() of this is the smallest positive normal float64: an exactly singular factor stays finite.
_LOG_FLOOR = float(np.log(np.finfo(np.float64).tiny))


class AbstractConstrained(eqx.Module):
    """A parameter stored in an unconstrained space."""

    @abc.abstractmethod
    def value(self) -> Array:
        """The parameter in its natural (constrained) space."""


class Covariance(AbstractConstrained):
    r"""A covariance matrix $\Sigma = L L^\top$ stored as its Cholesky factor $L$.

    The strictly lower triangle of `unconstrained` is $L$'s, its diagonal is $\log L_{ii}$, and its
    upper triangle is ignored, so any real array is a valid covariance. A leading batch axis (for
    example a time axis) is allowed.

    Build it with `Covariance.from_matrix` or `Covariance.from_cholesky`.
    """

    unconstrained: Float[Array, "*batch n n"]

    @classmethod
    def from_cholesky(cls, chol: ArrayLike) -> Covariance:
        """From a lower-triangular factor with non-negative diagonal."""
        chol = jnp.asarray(chol)
        diag = jnp.diagonal(chol, axis1=-2, axis2=-1)
        log_diag = jnp.log(jnp.maximum(jnp.abs(diag), jnp.finfo(chol.dtype).tiny))
        log_diag = jnp.maximum(log_diag, _LOG_FLOOR)
        strict = jnp.tril(chol, -1)
        eye = jnp.eye(chol.shape[-1], dtype=bool)
        return cls(jnp.where(eye, log_diag[..., None, :], strict))

    @classmethod
    def from_matrix(cls, matrix: ArrayLike) -> Covariance:
        """From a symmetric positive semi-definite matrix (a singular one is allowed)."""
        return cls.from_cholesky(psd_cholesky(jnp.asarray(matrix)))

    @property
    def cholesky(self) -> Float[Array, "*batch n n"]:
        """Lower-triangular factor with positive diagonal."""
        u = self.unconstrained
        eye = jnp.eye(u.shape[-1], dtype=bool)
        return jnp.where(eye, jnp.exp(u), jnp.tril(u, -1))

    def value(self) -> Float[Array, "*batch n n"]:
        chol = self.cholesky
        return chol @ jnp.swapaxes(chol, -1, -2)


def psd_cholesky(matrix: Float[Array, "*batch n n"]) -> Float[Array, "*batch n n"]:
    """Cholesky factor of a PSD matrix that may be singular (where plain Cholesky gives NaN).

    Falls back to a symmetric eigen-square-root triangularised by QR, which is exact for singular
    matrices; the result has a non-negative diagonal.
    """
    matrix = 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))
    chol = jnp.linalg.cholesky(matrix)

    def from_eigh(m):
        w, v = jnp.linalg.eigh(m)
        root = v * jnp.sqrt(jnp.maximum(w, 0.0))[..., None, :]
        r = jnp.linalg.qr(jnp.swapaxes(root, -1, -2), mode="r")
        lower = jnp.swapaxes(r, -1, -2)
        sign = jnp.where(jnp.diagonal(lower, axis1=-2, axis2=-1) < 0, -1.0, 1.0)
        return lower * sign[..., None, :]

    ok = jnp.all(jnp.isfinite(chol), axis=(-2, -1), keepdims=True)
    return jnp.where(ok, chol, from_eigh(matrix))


def _is_constrained(x) -> bool:
    return isinstance(x, AbstractConstrained)


def unwrap(tree):
    """Replace every constrained leaf in `tree` by its plain value.

    Example:
        >>> Q_hat = bs.unwrap(fitted).Q   # a (D, D) matrix, not a Covariance
    """
    return jax.tree.map(
        lambda x: x.value() if _is_constrained(x) else x, tree, is_leaf=_is_constrained
    )
