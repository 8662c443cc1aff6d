"""Sequential square-root Kalman filter, smoother and path sampler (lax.scan over time)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._types import Array, Float, Key
from ..data import Observations
from ..ssm import AbstractLinearGaussianSSM
from ._square_root import BackwardKernel, predict, tria, update


def _first_update(model: AbstractLinearGaussianSSM, data: Observations):
    first = data.step(0)
    m0, chol_P0 = model.initial_params(first)
    H, d, chol_R = model.emission_params(first)
    return m0, chol_P0, update(m0, chol_P0, H, d, chol_R, data.values[0], data.observed[0])


def filter_sequential(model: AbstractLinearGaussianSSM, data: Observations):
    """The square-root filter, one predict and one update per step in `lax.scan`: filtered means
    and factors, per-step log-likelihoods and predicted moments."""
    m0, chol_P0, first = _first_update(model, data)

    def step(carry, args):
        mean, chol = carry
        prev, here, y, observed = args
        mean_pred, chol_pred = predict(mean, chol, *model.transition_params(prev))
        up = update(mean_pred, chol_pred, *model.emission_params(here), y, observed)
        return (up.mean, up.chol), (up.mean, up.chol, up.log_likelihood, mean_pred, chol_pred)

    prev = jax.tree.map(lambda a: a[:-1], data.steps)
    here = jax.tree.map(lambda a: a[1:], data.steps)
    _, rest = jax.lax.scan(
        step, (first.mean, first.chol), (prev, here, data.values[1:], data.observed[1:])
    )
    head = (first.mean, first.chol, first.log_likelihood, m0, chol_P0)
    return tuple(jnp.concatenate([h[None], r]) for h, r in zip(head, rest, strict=True))


def smooth_sequential(
    kernels: BackwardKernel, last_mean: Float[Array, " D"], last_chol: Float[Array, "D D"]
):
    """Run the backward kernels of steps T-2..0 from the last filtered moments."""

    def step(carry, kernel):
        mean, chol = carry
        mean = kernel.gain @ mean + kernel.offset
        chol = tria(jnp.concatenate([kernel.gain @ chol, kernel.chol], axis=1))
        return (mean, chol), (mean, chol)

    _, (means, chols) = jax.lax.scan(step, (last_mean, last_chol), kernels, reverse=True)
    return jnp.concatenate([means, last_mean[None]]), jnp.concatenate([chols, last_chol[None]])


def sample_sequential(
    key: Key,
    kernels: BackwardKernel,
    last_mean: Float[Array, " D"],
    last_chol: Float[Array, "D D"],
    num_samples: int,
) -> Float[Array, "S T D"]:
    """Backward sampling: x_{T-1} from the last filter, then x_t | x_{t+1} by the kernels."""
    num_steps = kernels.offset.shape[0] + 1
    noise = jax.random.normal(key, (num_steps, num_samples, last_mean.shape[0]), last_mean.dtype)
    last = last_mean + noise[-1] @ last_chol.T

    def step(x_next, args):
        kernel, eps = args
        x = x_next @ kernel.gain.T + kernel.offset + eps @ kernel.chol.T
        return x, x

    _, paths = jax.lax.scan(step, last, (kernels, noise[:-1]), reverse=True)
    return jnp.swapaxes(jnp.concatenate([paths, last[None]]), 0, 1)
