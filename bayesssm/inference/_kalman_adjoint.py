r"""The log-likelihood of a time-varying linear-Gaussian model by a covariance-form filter, with
derivatives from the filter's adjoint recursion.

Why a second filter: on CPU a step of the square-root filter costs two QR factorisations, each a
library call of a few microseconds, and that fixed cost dominates at the state sizes of GP
kernels (D ~ 10). The covariance form needs only products and, for M > 1 observed entries, one
M x M Cholesky factor; with scalar observations a step is a handful of fused loops, several times
cheaper. It runs the same recursion as the square-root filter in exact arithmetic and agrees
with it to rounding in float64; the square-root filter remains the one for filtering, smoothing
and sampling, where its factors are the result.

Each step's parameters come from the step's inputs (a GP's time gap), computed vectorised for a
block of steps at a time just before the loop over that block, so no (T, D, D) array of
transitions is ever stored: at T = 1e6 and D = 9 each such array is 650 MB, and on CPU writing
fresh memory (a page fault per 4 kB) costs more than recomputing the parameters.

Derivatives: reverse mode through `lax.scan` would store every intermediate of every step. The
adjoint recursion stores only the filtered moments and carries the derivatives
$(\bar\mu_t, \bar\Sigma_t)$ of the log-likelihood with respect to the predicted moments
backward: through the prediction, $\bar m_t = A_t^\top \bar\mu_{t+1}$ and
$\bar P_t = A_t^\top \bar\Sigma_{t+1} A_t$ for the filtered moments, and through the update back
to $(\bar\mu_t, \bar\Sigma_t)$ (the Bryson–Frazier recursion, the smoother in information form).
On the way it forms each step's parameter derivatives, $\bar A_t = \bar\mu_{t+1} m_t^\top +
2 \bar\Sigma_{t+1} A_t P_t$, $\bar Q_t = \bar\Sigma_{t+1}$ and the emission's, and pulls them
back through the parameter function a block at a time (vectorised), so the model's derivative
accumulates block by block. It is wired in as a `custom_jvp`: forward mode, reverse mode and
higher orders all work (higher orders differentiate the adjoint itself), and only the leaves
that carry a tangent are differentiated.

References:
    Bryson, A. E. and Frazier, M. (1963). Smoothing for linear and nonlinear dynamic systems.
    Technical report ASD-TDR-63-119, Wright-Patterson Air Force Base.
    Bierman, G. J. (1973). Fixed interval smoothing with discrete measurements. International
    Journal of Control 18(1).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.scipy.linalg import solve_triangular

from .._matmul import matmul, matvec, symmetrise
from .._types import Array, Float, Scalar
from ..data import Observations
from ..ssm import AbstractLinearGaussianSSM, StepInputs

_LOG_2PI = 1.8378770664093453


def _predict(mean, cov, A, b, Q):
    return matvec(A, mean) + b, symmetrise(matmul(matmul(A, cov), A.T) + Q)


def _update(mean, cov, H, d, R, y, weight):
    """(log N(y_obs; H mean + d, S_obs), and the conditioned mean and covariance).

    Entries with weight 0 are missing: they get a zero column of P H^T and a unit row and column
    of the innovation covariance, so no branch is needed and the result is exact."""
    cross = matmul(cov, H.T) * weight[None, :]  # P H^T on the observed entries
    residual = (y - matvec(H, mean) - d) * weight
    innovation = (matmul(H, cross) + R * weight[None, :]) * weight[:, None]
    chol = jnp.linalg.cholesky(innovation + jnp.diag(1.0 - weight))
    whitened_cross = solve_triangular(chol, cross.T, lower=True)  # (M, D)
    whitened = solve_triangular(chol, residual, lower=True)
    log_det = jnp.sum(jnp.log(jnp.diagonal(chol)))
    log_likelihood = -0.5 * (whitened @ whitened + jnp.sum(weight) * _LOG_2PI) - log_det
    mean = mean + whitened_cross.T @ whitened
    return log_likelihood, mean, cov - matmul(whitened_cross.T, whitened_cross)


def _scalar_update(mean, cov, h, d, r, y, w):
    """`_update` for one entry (w = 1 observed, 0 missing), without a factorisation.

    Also returns what its adjoint needs: u = w P h, s = h'u + w r + 1 - w and
    v = w (y - h'm - d)."""
    u = matvec(cov, h) * w
    sums = matvec(jnp.stack([u, mean]), h)  # h'u and h'm in one pass
    s = sums[0] + w * r + (1.0 - w)
    v = w * (y - sums[1] - d)
    log_likelihood = -0.5 * (v * v / s + jnp.log(s) + w * _LOG_2PI)
    inverse = 1.0 / s
    cov = cov - (u[:, None] * u[None, :]) * inverse  # exactly symmetric
    return log_likelihood, mean + u * (v * inverse), cov, (u, s, v)


def _scalar_update_adjoint(saved, h, w, bar_mean, bar_cov):
    """Derivatives of the scalar update's inputs from those of its outputs (and 1 for the
    log-likelihood). `bar_cov` is symmetric, and so is the returned one.

    Returns those of the predicted mean and covariance, and (bar u, bar s, bar v)."""
    u, s, v = saved
    bar_cov_u = matvec(bar_cov, u)
    sums = matvec(jnp.stack([bar_mean, bar_cov_u]), u)  # u'bar_mean and u'bar_cov u
    bar_v = (sums[0] - v) / s
    bar_s = (0.5 * (v * v / s - 1.0) - sums[0] * v / s + sums[1] / s) / s
    bar_u = bar_mean * (v / s) - 2.0 * bar_cov_u / s + bar_s * h  # s = h'u + ...
    outer = (0.5 * w) * bar_u[:, None] * h[None, :]
    return bar_mean - (w * bar_v) * h, bar_cov + outer + outer.T, (bar_u, bar_s, bar_v)


def _params_at(model: AbstractLinearGaussianSSM, step: StepInputs):
    """Step t's (A, b, Q, H, d, R) in covariance form."""
    H, d, chol_R = model.emission_params(step)
    return (*model.transition_covariance_params(step), H, d, chol_R @ chol_R.T)


def _initial(model: AbstractLinearGaussianSSM, step: StepInputs):
    m0, chol_P0 = model.initial_params(step)
    return m0, chol_P0 @ chol_P0.T


# Steps per block: each block's parameters are computed vectorised (one batch of small arrays
# that stays in cache), and the loop over its steps reads them. On CPU this removes the
# parameters' kernels from the per-step loop, whose cost is mostly a fixed price per kernel.
_BLOCK = 128


def _blocks(tree, size: int):
    """Each leaf (T, ...) padded at the end to a multiple of `size` and reshaped to
    (T / size, size, ...). Padding repeats the last entry (a valid step input; padded steps
    carry no observations, so they change nothing)."""

    def split(leaf):
        T = leaf.shape[0]
        padded = -(-T // size) * size
        leaf = jnp.concatenate([leaf, jnp.repeat(leaf[-1:], padded - T, axis=0)])
        return leaf.reshape(padded // size, size, *leaf.shape[1:])

    return jax.tree.map(split, tree)


def _unblocks(tree, T: int):
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:T], tree)


def _block_size(T: int) -> int:
    return min(_BLOCK, T)


def _blocked(data: Observations, weight):
    """(steps, y, weight) in blocks; padded steps have weight 0 (unobserved)."""
    size = _block_size(data.num_timesteps)
    steps, values = _blocks((data.steps, data.values), size)
    T = data.num_timesteps
    padded = -(-T // size) * size
    weight = jnp.concatenate([weight, jnp.zeros((padded - T, weight.shape[1]), weight.dtype)])
    return steps, values, weight.reshape(padded // size, size, -1)


def _filter(model, data: Observations, weight, keep: bool):
    """One pass over all T steps (update with y_t, then predict t + 1), block by block.

    Returns log p(y) and, if `keep`, what the adjoint needs of each step (`_pack`ed, in blocks):
    scalar observations, the filtered mean and covariance and the update's (u, s, v);
    otherwise the predicted mean and covariance."""

    def step(carry, inputs):
        mean_pred, cov_pred = carry
        (A, b, Q, H, d, R), y_t, w_t = inputs
        if H.shape[0] == 1:
            ll, mean, cov, (u, s, v) = _scalar_update(
                mean_pred, cov_pred, H[0], d[0], R[0, 0], y_t[0], w_t[0]
            )
            kept = (cov, mean, u, jnp.stack([s, v])) if keep else None
        else:
            ll, mean, cov = _update(mean_pred, cov_pred, H, d, R, y_t, w_t)
            kept = (cov_pred, mean_pred) if keep else None
        return _predict(mean, cov, A, b, Q), (ll, None if kept is None else _pack(*kept))

    def block(carry, inputs):
        steps, y, w = inputs
        params = jax.vmap(lambda step: _params_at(model, step))(steps)
        return jax.lax.scan(step, carry, (params, y, w))

    start = _initial(model, data.step(0))
    _, (lls, kept) = jax.lax.scan(block, start, _blocked(data, weight))
    return jnp.sum(lls), kept  # a pairwise sum: accurate in float32 too


def _pack(cov: Float[Array, "D D"], *vectors: Float[Array, " _"]) -> Float[Array, " K"]:
    """What a step keeps for the adjoint, as one vector: the lower triangle of the (symmetric)
    covariance, then the vectors. Half the memory of the full matrix, and stored memory is what
    the adjoint pays for most on CPU (each fresh page is a fault)."""
    rows, cols = np.tril_indices(cov.shape[0])
    return jnp.concatenate([cov[rows, cols], *vectors])


def _unpack(packed: Float[Array, " K"], D: int, sizes: tuple[int, ...]):
    """`_pack`'s inverse: the covariance and the vectors of the given sizes."""
    rows, cols = np.tril_indices(D)
    position = np.zeros((D, D), dtype=np.int32)
    position[rows, cols] = position[cols, rows] = np.arange(rows.size)
    splits = np.cumsum((rows.size, *sizes))[:-1]
    cov, *vectors = jnp.split(packed, splits)
    return cov[position], *vectors


def _is_zero(tangent) -> bool:
    return isinstance(tangent, SymbolicZero)


def adjoint_log_marginal(model: AbstractLinearGaussianSSM, data: Observations) -> Scalar:
    """log p(y) by the covariance-form filter; derivatives by its adjoint (module docstring)."""
    # Every array is an argument (custom_jvp functions may not close over traced values);
    # integer and boolean ones get symbolic-zero tangents.
    dynamic, static = eqx.partition((model, data), eqx.is_array)

    @jax.custom_jvp
    def value(dynamic):
        model, data = eqx.combine(dynamic, static)
        return _filter(model, data, _weights(data), keep=False)[0]

    def value_jvp(primals, tangents):
        (dynamic,), (tangent,) = primals, tangents
        model, data = eqx.combine(dynamic, static)
        weight = _weights(data)
        value, kept = _filter(model, data, weight, keep=True)
        # Only the model's leaves that carry a tangent are differentiated.
        moving = jax.tree.map(lambda t: not _is_zero(t), tangent[0])
        variable, fixed = eqx.partition(dynamic[0], moving)

        def params(variable, step):
            return _params_at(eqx.combine(variable, fixed, static[0]), step)

        def initial(variable, step):
            return _initial(eqx.combine(variable, fixed, static[0]), step)

        tangent_steps = tangent[1].steps
        steps_move = not all(_is_zero(t) for t in jax.tree.leaves(tangent_steps))
        bar_model, bar_steps, bar_y = _adjoint(
            params, initial, variable, data, weight, kept, steps_move
        )
        tangent_model = jax.tree.leaves(eqx.filter(tangent[0], moving))
        pairs = list(zip(jax.tree.leaves(bar_model), tangent_model, strict=True))
        if not _is_zero(tangent[1].values):
            pairs.append((bar_y, tangent[1].values))
        if steps_move:
            for bar, t in zip(
                jax.tree.leaves(bar_steps), jax.tree.leaves(tangent_steps), strict=True
            ):
                if not _is_zero(t) and jnp.issubdtype(t.dtype, jnp.inexact):
                    pairs.append((bar, t))
        out = sum((jnp.vdot(g, t) for g, t in pairs), jnp.zeros((), value.dtype))
        return value, out.astype(value.dtype)

    value.defjvp(value_jvp, symbolic_zeros=True)
    return value(dynamic)


def _weights(data: Observations):
    return data.observed.astype(data.values.dtype)


def _adjoint(params, initial, variable, data, weight, kept, steps_move):
    """The adjoint recursion, last step first, for `params(variable, step)` and
    `initial(variable, step)`; returns the derivative with respect to `variable`, and per step
    with respect to the step inputs (if `steps_move`) and to y.

    Block by block: a block's parameters and their pullback are vectorised, so the loop over its
    steps only forms each step's parameter derivatives."""

    def step(carry, inputs):
        bar_mean_next, bar_cov_next = carry
        (A, b, Q, H, d, R), y_t, w_t, kept_t = inputs
        # Through the prediction into step t + 1: Sigma A serves both A' Sigma A and bar A.
        bar_cov_A = matmul(bar_cov_next, A)
        bar_mean = matvec(A.T, bar_mean_next)
        bar_cov = matmul(A.T, bar_cov_A)
        D = A.shape[0]
        if H.shape[0] == 1:
            cov, mean, u, (s, v) = _unpack(kept_t, D, (D, D, 2))
            bar_mean_pred, bar_cov_pred, (bar_u, bar_s, bar_v) = _scalar_update_adjoint(
                (u, s, v), H[0], w_t[0], bar_mean, bar_cov
            )
            w = w_t[0]
            # h enters u = w P h, s = h'u + w r + 1 - w and v = w (y - h'm - d), at the
            # predicted moments P = cov + u u'/s and m = mean - u v/s.
            bar_h = matvec(cov, bar_u) + u * (jnp.sum(u * bar_u) / s) - bar_v * (mean - u * v / s)
            bar_H = (w * bar_h + bar_s * u)[None, :]
            bar_d, bar_R, bar_y = -(w * bar_v)[None], (w * bar_s)[None, None], (w * bar_v)[None]
        else:
            cov_pred, mean_pred = _unpack(kept_t, D, (D,))
            (_, mean, cov), update_pullback = jax.vjp(
                lambda *a: _update(*a, w_t), mean_pred, cov_pred, H, d, R, y_t
            )
            bars = update_pullback((jnp.ones((), y_t.dtype), bar_mean, bar_cov))
            bar_mean_pred, bar_cov_pred, bar_H, bar_d, bar_R, bar_y = bars
            bar_cov_pred = symmetrise(bar_cov_pred)
        # Step t's transition moved (mean, cov) to step t + 1.
        bar_A = bar_mean_next[:, None] * mean[None, :] + 2.0 * matmul(bar_cov_A, cov)
        bars = (bar_A, bar_mean_next, bar_cov_next, bar_H, bar_d, bar_R)
        return (bar_mean_pred, bar_cov_pred), (bars, bar_y)

    def block(carry, inputs):
        bar_next, total = carry
        steps, y, w, kept_block = inputs
        if steps_move:
            block_params = jax.vmap(params, in_axes=(None, 0))
            values, pullback = jax.vjp(block_params, variable, steps)
        else:
            values, pullback = jax.vjp(lambda v: jax.vmap(lambda s: params(v, s))(steps), variable)
        bar_next, (bars, bar_y) = jax.lax.scan(
            step, bar_next, (values, y, w, kept_block), reverse=True
        )
        pulled = pullback(bars)
        total = jax.tree.map(jnp.add, total, pulled[0])
        return (bar_next, total), (pulled[1] if steps_move else None, bar_y)

    first = data.step(0)
    m0, P0 = initial(variable, first)
    start = ((jnp.zeros_like(m0), jnp.zeros_like(P0)), jax.tree.map(jnp.zeros_like, variable))
    inputs = (*_blocked(data, weight), kept)
    ((bar_m0, bar_P0), total), (bar_steps, bar_y) = jax.lax.scan(block, start, inputs, reverse=True)
    T = data.num_timesteps
    bar_steps, bar_y = _unblocks((bar_steps, bar_y), T)
    if steps_move:
        _, pullback = jax.vjp(initial, variable, first)
        bar_variable, bar_first = pullback((bar_m0, bar_P0))
        bar_steps = jax.tree.map(
            lambda a, f: a.at[0].add(f) if jnp.issubdtype(a.dtype, jnp.inexact) else a,
            bar_steps,
            bar_first,
        )
    else:
        _, pullback = jax.vjp(lambda v: initial(v, first), variable)
        (bar_variable,) = pullback((bar_m0, bar_P0))
    total = jax.tree.map(jnp.add, total, bar_variable)
    return total, bar_steps, bar_y
