"""Square-root Gaussian building blocks shared by the Kalman engines.

Every covariance travels as a lower-triangular factor L (P = L L^T). `tria` re-triangularises a
wide factor by QR, so no covariance is ever formed and then factorised.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from .._matmul import matmul, matvec
from .._types import Array, Bool, Float

_LOG_2PI = float(jnp.log(2 * jnp.pi))


def tria(a: Float[Array, "n k"]) -> Float[Array, "n n"]:
    """Lower-triangular L with non-negative diagonal and L L^T = a a^T (QR of a^T)."""
    n, k = a.shape
    if k < n:
        a = jnp.concatenate([a, jnp.zeros((n, n - k), a.dtype)], axis=1)
    return _tria(a)


@jax.custom_jvp
def _tria(a: Float[Array, "n k"]) -> Float[Array, "n n"]:
    lower = jnp.linalg.qr(a.T, mode="r").T
    sign = jnp.where(jnp.diagonal(lower) < 0, -1.0, 1.0).astype(a.dtype)
    return lower * sign[None, :]


@_tria.defjvp
def _tria_jvp(primals, tangents):
    # QR's own derivative divides by R's diagonal, so it is NaN whenever a a^T is singular, which
    # square-root filters meet structurally (rank-M information factors, singular P0). Here L is
    # differentiated as the Cholesky factor of a a^T; a zero pivot (a direction the factor does
    # not span) is given a unit pivot for the solves and zero derivative, which is exact when the
    # rank is locally constant, as it is in these structural cases.
    (a,), (da,) = primals, tangents
    lower = _tria(a)
    n = lower.shape[0]
    pivots = jnp.abs(jnp.diagonal(lower))
    tol = 10 * n * jnp.finfo(a.dtype).eps * jnp.max(jnp.abs(lower))
    degenerate = pivots <= tol
    safe = lower + jnp.diag(degenerate.astype(a.dtype))
    d_gram = da @ a.T
    d_gram = d_gram + d_gram.T
    x = solve_lower(safe, solve_lower(safe, d_gram).T).T  # safe^{-1} dS safe^{-T}
    phi = jnp.tril(x, -1) + 0.5 * jnp.diag(jnp.diagonal(x))
    d_lower = jnp.where(degenerate[None, :], 0.0, safe @ phi)
    return lower, d_lower


def solve_lower(lower: Float[Array, "n n"], b: Array) -> Array:
    """lower^{-1} b."""
    return solve_triangular(lower, b, lower=True)


def solve_lower_transposed(lower: Float[Array, "n n"], b: Array) -> Array:
    """lower^{-T} b."""
    return solve_triangular(lower, b, lower=True, trans="T")


def predict(
    mean: Float[Array, " D"],
    chol: Float[Array, "D D"],
    A: Float[Array, "D D"],
    b: Float[Array, " D"],
    chol_Q: Float[Array, "D D"],
) -> tuple[Float[Array, " D"], Float[Array, "D D"]]:
    """Moments of A x + b + w for x ~ N(mean, chol chol^T), w ~ N(0, chol_Q chol_Q^T)."""
    return matvec(A, mean) + b, tria(jnp.concatenate([matmul(A, chol), chol_Q], axis=1))


class Update(NamedTuple):
    """The conditioning of x ~ N(mean, L L^T) on one observation y = H x + d + v."""

    mean: Float[Array, " D"]  # posterior mean
    chol: Float[Array, "D D"]  # posterior factor
    chol_S: Float[Array, "M M"]  # innovation factor (identity rows on missing entries)
    gain_factor: Float[Array, "D M"]  # K = gain_factor chol_S^{-1}
    whitened_residual: Float[Array, " M"]  # chol_S^{-1} (y - H mean - d), zero where missing
    log_likelihood: Float[Array, ""]  # log N(y_obs; H mean + d, S_obs)


class UpdateFactors(NamedTuple):
    """The data-free part of an update: it depends on which entries are observed, not on y."""

    chol: Float[Array, "D D"]  # posterior factor
    chol_S: Float[Array, "M M"]  # innovation factor (identity rows on missing entries)
    gain_factor: Float[Array, "D M"]  # K = gain_factor chol_S^{-1}


def update_factors(
    chol: Float[Array, "D D"],
    H: Float[Array, "M D"],
    chol_R: Float[Array, "M M"],
    observed: Bool[Array, " M"],
) -> UpdateFactors:
    """Square-root update of the covariance by one QR of the joint factor of (y, x).

    Missing entries get a zero row of H and a unit noise row: the joint factor then describes
    blockdiag(S_observed, I), which is exact for a correlated R too, with no branch.
    """
    M, D = H.shape
    weight = observed.astype(chol.dtype)
    noise = jnp.concatenate([chol_R * weight[:, None], jnp.diag(1.0 - weight)], axis=1)
    top = jnp.concatenate([noise, matmul(H * weight[:, None], chol)], axis=1)
    bottom = jnp.concatenate([jnp.zeros((D, 2 * M), chol.dtype), chol], axis=1)
    joint = tria(jnp.concatenate([top, bottom], axis=0))
    return UpdateFactors(joint[M:, M:], joint[:M, :M], joint[M:, :M])


def log_abs_det(chol: Float[Array, "n n"]) -> Float[Array, ""]:
    """log |det chol| of a triangular factor."""
    return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(chol))))


def innovation_log_likelihood(
    z: Float[Array, " M"], log_det_S: Float[Array, ""], observed: Bool[Array, " M"]
) -> Float[Array, ""]:
    """log N(y_obs; prediction, S_obs) from the whitened residual z (zero where missing) and
    log |det chol_S| (whose missing rows are unit rows)."""
    return -0.5 * (z @ z) - log_det_S - 0.5 * jnp.sum(observed) * _LOG_2PI


def update(
    mean: Float[Array, " D"],
    chol: Float[Array, "D D"],
    H: Float[Array, "M D"],
    d: Float[Array, " M"],
    chol_R: Float[Array, "M M"],
    y: Float[Array, " M"],
    observed: Bool[Array, " M"],
) -> Update:
    """Square-root Kalman update on the observed entries of y (entries where `observed` is
    False are ignored)."""
    factors = update_factors(chol, H, chol_R, observed)
    residual = jnp.where(observed, y - matvec(H, mean) - d, 0.0)
    z = solve_lower(factors.chol_S, residual)
    log_likelihood = innovation_log_likelihood(z, log_abs_det(factors.chol_S), observed)
    return Update(
        mean + matvec(factors.gain_factor, z),
        factors.chol,
        factors.chol_S,
        factors.gain_factor,
        z,
        log_likelihood,
    )


class BackwardKernel(NamedTuple):
    """p(x_t | x_{t+1}, y_{0:t}) = N(gain x_{t+1} + offset, chol chol^T)."""

    gain: Float[Array, "D D"]
    offset: Float[Array, " D"]
    chol: Float[Array, "D D"]


def backward_factors(
    chol: Float[Array, "D D"], A: Float[Array, "D D"], chol_Q: Float[Array, "D D"]
) -> tuple[Float[Array, "D D"], Float[Array, "D D"]]:
    """The data-free part of a backward kernel: its gain and factor, from the filter's factor."""
    D = chol.shape[0]
    joint = tria(
        jnp.concatenate(
            [
                jnp.concatenate([matmul(A, chol), chol_Q], axis=1),
                jnp.concatenate([chol, jnp.zeros_like(chol)], axis=1),
            ],
            axis=0,
        )
    )
    chol_pred, cross, chol_cond = joint[:D, :D], joint[D:, :D], joint[D:, D:]
    gain = solve_lower_transposed(chol_pred, cross.T).T
    return gain, chol_cond


def backward_kernel(
    mean: Float[Array, " D"],
    chol: Float[Array, "D D"],
    A: Float[Array, "D D"],
    b: Float[Array, " D"],
    chol_Q: Float[Array, "D D"],
) -> BackwardKernel:
    """The Rauch-Tung-Striebel conditional of x_t given x_{t+1}, from the filter at t."""
    gain, chol_cond = backward_factors(chol, A, chol_Q)
    return BackwardKernel(gain, mean - matvec(gain, matvec(A, mean) + b), chol_cond)
