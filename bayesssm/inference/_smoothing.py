r"""Particle smoothers: whole-path draws from the particle approximation of p(x_{0:T-1} | y).

`genealogy_paths` follows the ancestry of particles drawn at the last step: cheap, but the paths
coalesce (path degeneracy), so early steps are represented by few distinct particles.
`backward_paths` is forward-filtering backward-sampling (FFBS): from a final particle drawn by
weight, each path draws its predecessor at t from the backward kernel
$\propto W_t^j f(x_{t+1} \mid x_t^j)$, by the exact O(N) kernel or by rejection (expected O(1),
exact fallback); paths then mix the particles of every step and do not degenerate.

References:
    Kitagawa, G. (1996). Monte Carlo filter and smoother for non-Gaussian nonlinear state space
    models. Journal of Computational and Graphical Statistics 5(1).
    Godsill, S. J., Doucet, A. and West, M. (2004). Monte Carlo smoothing for nonlinear time
    series. JASA 99(465).
    Douc, R., Garivier, A., Moulines, E. and Olsson, J. (2011). Sequential Monte Carlo smoothing
    for general state space hidden Markov models. Annals of Applied Probability 21(6).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._types import Array, Float, Key
from ..ssm import StepInputs
from ._backward import backward_indices_exact, backward_indices_rejection
from ._particle_filter import ParticleFilterResult, ParticleHistory
from ._resampling import draw_indices

BACKWARD_SAMPLERS = {"ffbs": backward_indices_exact, "ffbs_rejection": backward_indices_rejection}


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


def backward_paths(
    key: Key,
    model,
    history: ParticleHistory,
    steps: StepInputs,
    num_paths: int,
    smoother: str = "ffbs",
) -> Float[Array, "S T *E"]:
    """Forward-filtering backward-sampling: `num_paths` independent draws (given the particles)
    from the particle approximation of p(x_{0:T-1} | y_{0:T-1}).

    Args:
        key: PRNG key.
        model: the state-space model (its `transition` is used).
        history: the filter's particles, normalised log-weights and ancestors at every step.
        steps: the `StepInputs` of every step (leading axis T).
        num_paths: S.
        smoother: "ffbs" (exact kernel, O(S N) a step) or "ffbs_rejection" (rejection
            sampling, expected O(S) a step when the transition's density bound is not loose).

    Returns:
        Paths (S, T, *E).
    """
    draw = BACKWARD_SAMPLERS[smoother]
    key_last, key_back = jax.random.split(key)
    last = history.particles[-1][draw_indices(key_last, history.log_weights[-1], num_paths)]

    def back(x_next, args):
        key, particles, log_weights, step = args
        x = particles[draw(key, model, x_next, particles, log_weights, step)]
        return x, x

    num_steps = history.particles.shape[0]
    earlier = jax.tree.map(lambda a: a[:-1], (history.particles, history.log_weights, steps))
    keys = jax.random.split(key_back, num_steps - 1)
    _, reversed_paths = jax.lax.scan(back, last, (keys, *earlier), reverse=True)
    paths = jnp.concatenate([reversed_paths, last[None]])
    return jnp.swapaxes(paths, 0, 1)


def smoothed_moments(paths: Float[Array, "S T *E"]) -> tuple[Array, Array]:
    """Means and variances (T, D) of equally weighted paths."""
    flat = paths.reshape(paths.shape[0], paths.shape[1], -1)
    return jnp.mean(flat, axis=0), jnp.var(flat, axis=0)
