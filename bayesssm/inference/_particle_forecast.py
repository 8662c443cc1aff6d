"""Forecasts from a particle filter: the filter run on through unobserved steps is the
predictive distribution, summarised by weighted moments of states and observations."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._types import Array, Float
from ..data import Observations
from ._particle_filter import ParticleHistory
from .results import ForecastResult


def _weighted_moments(weights: Float[Array, " N"], means: Array, covs: Array):
    """Mean and covariance of a mixture: sum_i w_i N(means_i, covs_i)."""
    mean = weights @ means
    centred = means - mean
    spread = jnp.einsum("n,ni,nj->ij", weights, centred, centred)
    return mean, jnp.einsum("n,nij->ij", weights, covs) + spread


def _emission_moments(model, x, step) -> tuple[Array, Array]:
    dist = model.emission(x, step)
    mean = jnp.reshape(dist.mean(), (-1,))
    if dist.event_shape == ():
        return mean, jnp.reshape(dist.variance(), (1, 1))
    return mean, dist.covariance()


def particle_forecast(
    model, history: ParticleHistory, data: Observations, num_steps: int
) -> ForecastResult:
    """Moments of the last `num_steps` steps of a filter run whose data end with that many
    unobserved rows."""
    particles = history.particles[-num_steps:]
    weights = jnp.exp(history.log_weights[-num_steps:])
    steps = jax.tree.map(lambda a: a[-num_steps:], data.steps)

    def one(particles, weights, step):
        flat = particles.reshape(particles.shape[0], -1)
        zero = jnp.zeros((flat.shape[1], flat.shape[1]), flat.dtype)
        mean, cov = _weighted_moments(
            weights, flat, jnp.broadcast_to(zero, (flat.shape[0],) + zero.shape)
        )
        obs_means, obs_covs = jax.vmap(lambda x: _emission_moments(model, x, step))(particles)
        obs_mean, obs_cov = _weighted_moments(weights, obs_means, obs_covs)
        return mean, cov, obs_mean, obs_cov

    return ForecastResult(*jax.vmap(one)(particles, weights, steps))
