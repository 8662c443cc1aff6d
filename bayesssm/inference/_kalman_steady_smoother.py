"""A faster exact smoother for models whose A and chol Q do not depend on t.

The backward kernels' gains and factors depend only on the filter's factors, so once those stop
changing (the steady filter holds them from some step on) the kernels are constant too, and the
smoothed factors, run backward from the last step with a constant kernel, converge to a constant
as well. The backward covariance recursion therefore runs only where something changes: from the
end until its factors have converged (to a few ulps), then, jumping over the constant middle,
through the steps where the filter had not yet converged. The means follow the affine backward
recursion with the stored gains (`lax.scan`, or an associative scan with `parallel`). Results
equal the plain smoother's to rounding.

Which steps are constant is read off the filter's factors (bitwise equal to the last one), so
any filter's outputs are handled correctly; with the plain filter's, which converge but not
bitwise, the recursion simply runs over every step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._types import Array, Float, Int
from ..data import Observations
from ..ssm import AbstractLinearGaussianSSM
from ._associative_scan import associative_scan
from ._kalman_steady import CONVERGED_ULPS
from ._square_root import BackwardKernel, backward_factors, tria


def _constant_from(chols: Float[Array, "T D D"]) -> Int[Array, ""]:
    """The first step from which every factor equals the last one exactly."""
    differs = jnp.any(chols != chols[-1], axis=(-2, -1))
    return jnp.max(jnp.where(differs, jnp.arange(chols.shape[0]), -1)) + 1


def steady_backward(
    model: AbstractLinearGaussianSSM,
    data: Observations,
    filtered_means: Float[Array, "T D"],
    filtered_chols: Float[Array, "T D D"],
    parallel: bool,
) -> tuple[BackwardKernel, Float[Array, "T D"], Float[Array, "T D D"]]:
    """The backward kernels (T-1 of them) and the smoothed means and factors."""
    T, D = filtered_means.shape
    A, _, chol_Q = model.transition_params(data.step(0))
    dtype = filtered_means.dtype
    start = _constant_from(filtered_chols)
    tol = CONVERGED_ULPS * jnp.finfo(dtype).eps
    last_chol = filtered_chols[-1]

    def keep_going(state):
        return state[0] >= 0

    def step(state):
        t, chol_next, held_until, buffers = state
        gain, chol_cond = backward_factors(filtered_chols[t], A, chol_Q)
        chol = tria(jnp.concatenate([gain @ chol_next, chol_cond], axis=1))
        values = (gain, chol_cond, chol)
        buffers = tuple(b.at[t].set(v) for b, v in zip(buffers, values, strict=True))
        change = jnp.max(jnp.abs(chol - chol_next))
        converged = (t >= start) & (change <= tol * jnp.max(jnp.abs(chol)))
        # Kernels are constant from `start` on, so from here back to `start` nothing changes.
        next_t = jnp.where(converged, jnp.minimum(t, start) - 1, t - 1)
        return next_t, chol, jnp.where(converged, t, held_until), buffers

    buffers = (
        jnp.zeros((T - 1, D, D), dtype),  # kernel gains
        jnp.zeros((T - 1, D, D), dtype),  # kernel factors
        jnp.zeros((T - 1, D, D), dtype),  # smoothed factors
    )
    init = (jnp.asarray(T - 2), last_chol, start, buffers)
    _, _, held_until, buffers = jax.lax.while_loop(keep_going, step, init)
    # Steps in [start, held_until) were skipped: they repeat step held_until.
    index = jnp.arange(T - 1)
    held = jnp.where((index >= start) & (index < held_until), held_until, index)
    gain, chol_cond, chols = (b[held] for b in buffers)

    prev = jax.tree.map(lambda a: a[:-1], data.steps)
    b = jax.vmap(lambda step: model.transition_params(step)[1])(prev)
    heads = filtered_means[:-1]
    offset = heads - jnp.einsum("tij,tj->ti", gain, heads @ A.T + b)
    kernels = BackwardKernel(gain, offset, chol_cond)
    means = _backward_means(gain, offset, filtered_means[-1], parallel)
    return kernels, means, jnp.concatenate([chols, last_chol[None]])


def _backward_means(
    gain: Float[Array, "T-1 D D"],
    offset: Float[Array, "T-1 D"],
    last_mean: Float[Array, " D"],
    parallel: bool,
) -> Float[Array, "T D"]:
    """m_t = gain_t m_{t+1} + offset_t from m_{T-1} = last_mean."""
    if parallel:

        def compose(later, earlier):
            return earlier[0] @ later[0], earlier[0] @ later[1] + earlier[1]

        gains = jnp.concatenate([gain, jnp.zeros_like(gain[:1])])
        offsets = jnp.concatenate([offset, last_mean[None]])
        _, means = associative_scan(jax.vmap(compose), (gains, offsets), reverse=True)
        return means

    def step(mean_next, affine):
        mean = affine[0] @ mean_next + affine[1]
        return mean, mean

    _, means = jax.lax.scan(step, last_mean, (gain, offset), reverse=True)
    return jnp.concatenate([means, last_mean[None]])
