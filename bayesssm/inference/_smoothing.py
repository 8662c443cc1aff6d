"""Particle smoothers: whole-path draws from the particle approximation of p(x_{0:T-1} | y).

`genealogy_paths` follows the ancestry of particles drawn at the last step: cheap, but the paths
coalesce (path degeneracy), so early steps are represented by few distinct particles.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._types import Array, Float, Key
from ._particle_filter import ParticleFilterResult, ParticleHistory
from ._resampling import draw_indices


class ParticleSmootherResult(NamedTuple):
    """Smoothing means and variances p(x_t | y_{0:T-1}) from `paths` drawn by a particle
    smoother; states are flattened to D entries as in `ParticleFilterResult`."""

    means: Float[Array, "T D"]
    variances: Float[Array, "T D"]
    log_marginal: Float[Array, ""]  # the filter's estimate of log p(y_{0:T-1})
    paths: Float[Array, "S T *E"]
    filtered: ParticleFilterResult


def genealogy_paths(key: Key, history: ParticleHistory, num_paths: int) -> Float[Array, "S T *E"]:
    """Paths of `num_paths` final particles drawn by weight, traced back through the ancestors."""
    last = draw_indices(key, history.log_weights[-1], num_paths)

    def back(index, args):
        particles, ancestors = args
        return ancestors[index], particles[index]

    _, reversed_paths = jax.lax.scan(
        back, last, (history.particles, history.ancestors), reverse=True
    )
    return jnp.swapaxes(reversed_paths, 0, 1)


def smoothed_moments(paths: Float[Array, "S T *E"]) -> tuple[Array, Array]:
    """Means and variances (T, D) of equally weighted paths."""
    flat = paths.reshape(paths.shape[0], paths.shape[1], -1)
    return jnp.mean(flat, axis=0), jnp.var(flat, axis=0)
