r"""Conditional sequential Monte Carlo: a bootstrap particle filter that keeps one reference path.

The reference path $x^*_{0:T-1}$ sits at particle index 0 at every step; the other N - 1
particles are drawn as in a bootstrap filter that resamples multinomially at every step (the
conditional law of the other ancestors given the reference's is then plain multinomial, which
lower-variance schemes do not give). With ancestor sampling the reference's ancestor at step t is
drawn with probability $\propto W_{t-1}^j f(x^*_t \mid x_{t-1}^j)$; without it the reference
descends from the reference.

A new path is then drawn from the particle system: by tracing the ancestry of a final particle
drawn by weight (particle Gibbs, with or without ancestor sampling), or by backward sampling
(Whiteley's backward simulation: at each step a predecessor is drawn from the backward kernel).
Either way the map from reference to new path is a Markov kernel that leaves $p(x_{0:T-1} \mid y)$
invariant.

References:
    Andrieu, C., Doucet, A. and Holenstein, R. (2010). Particle Markov chain Monte Carlo methods.
    JRSS B 72(3).
    Whiteley, N. (2010). Discussion of "Particle Markov chain Monte Carlo methods". JRSS B 72(3).
    Lindsten, F., Jordan, M. I. and Schön, T. B. (2014). Particle Gibbs with ancestor sampling.
    JMLR 15.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._types import Array, Float, Int, Key
from ..data import Observations
from ..ssm import StepInputs
from ._backward import backward_log_weights, sample_log_weights
from ._observed_log_prob import observed_log_likelihoods
from ._particle_filter import ParticleHistory, _normalise
from ._proposals import Observation, sample_each
from ._resampling import draw_indices
from ._smoothing import genealogy_paths

REFERENCE = 0  # the reference path's particle index at every step


def _log_likelihoods(model, particles: Array, obs: Observation) -> Float[Array, " N"]:
    return observed_log_likelihoods(
        lambda x: model.emission(x, obs.step), particles, obs.y, obs.observed
    )


def _weigh(log_likelihoods: Float[Array, " N"]) -> Float[Array, " N"]:
    """Normalised log-weights after multinomial resampling (uniform base weights); uniform if
    every weight is zero, so nothing turns NaN downstream."""
    num = log_likelihoods.shape[0]
    uniform = jnp.full(num, -jnp.log(jnp.asarray(num, log_likelihoods.dtype)))
    return _normalise(uniform, log_likelihoods)[0]


def observation_rows(data: Observations) -> Observation:
    """Every step's `Observation`, stacked along a leading T axis."""
    return Observation(data.values, data.observed, data.steps)


def csmc_initial(
    model, key: Key, num: int, reference0: Array, obs: Observation
) -> tuple[Array, Float[Array, " N"]]:
    """Step 0: N - 1 draws from p(x_0) and the reference at index 0; normalised log-weights."""
    particles = model.initial(obs.step).sample(seed=key, sample_shape=(num,))
    particles = particles.at[REFERENCE].set(reference0.astype(particles.dtype))
    return particles, _weigh(_log_likelihoods(model, particles, obs))


def csmc_move(
    model,
    key: Key,
    particles: Float[Array, " N *E"],
    log_weights: Float[Array, " N"],
    reference: Array,
    prev_step: StepInputs,
    obs: Observation,
    ancestor_sampling: bool,
) -> tuple[Array, Float[Array, " N"], Int[Array, " N"]]:
    """One conditional step t - 1 -> t: (particles, normalised log-weights, ancestors)."""
    num = particles.shape[0]
    key_resample, key_ancestor, key_move = jax.random.split(key, 3)
    ancestors = draw_indices(key_resample, log_weights, num).astype(jnp.int32)
    if ancestor_sampling:
        logits = backward_log_weights(model, reference, particles, log_weights, prev_step)
        logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
        drawn = sample_log_weights(jax.random.uniform(key_ancestor, (), logits.dtype), logits)
        # if the reference is impossible from every particle, it keeps its own ancestor
        reference_ancestor = jnp.where(jnp.isfinite(jnp.max(logits)), drawn, REFERENCE)
    else:
        reference_ancestor = jnp.int32(REFERENCE)
    ancestors = ancestors.at[REFERENCE].set(reference_ancestor)
    moved = sample_each(lambda x: model.transition(x, prev_step), key_move, particles[ancestors])
    moved = moved.at[REFERENCE].set(reference.astype(moved.dtype))
    return moved, _weigh(_log_likelihoods(model, moved, obs)), ancestors


def conditional_smc(
    model,
    data: Observations,
    key: Key,
    reference: Float[Array, " T *E"],
    num_particles: int,
    ancestor_sampling: bool,
) -> ParticleHistory:
    """The whole conditional filter; its history of particles, weights and ancestors."""
    rows = observation_rows(data)
    key_first, key_rest = jax.random.split(key)
    first = jax.tree.map(lambda a: a[0], rows)
    particles, log_weights = csmc_initial(model, key_first, num_particles, reference[0], first)

    def step(carry, args):
        particles, log_weights = carry
        key, ref, prev_step, obs = args
        moved, new_log_weights, ancestors = csmc_move(
            model, key, particles, log_weights, ref, prev_step, obs, ancestor_sampling
        )
        return (moved, new_log_weights), (moved, new_log_weights, ancestors)

    keys = jax.random.split(key_rest, data.num_timesteps - 1)
    prev_steps = jax.tree.map(lambda a: a[:-1], data.steps)
    rest = jax.tree.map(lambda a: a[1:], rows)
    _, (moved, log_weights_all, ancestors) = jax.lax.scan(
        step, (particles, log_weights), (keys, reference[1:], prev_steps, rest)
    )
    return ParticleHistory(
        jnp.concatenate([particles[None], moved]),
        jnp.concatenate([log_weights[None], log_weights_all]),
        jnp.concatenate([jnp.arange(num_particles, dtype=jnp.int32)[None], ancestors]),
    )


def traced_path(key: Key, history: ParticleHistory) -> Float[Array, " T *E"]:
    """The ancestry of one final particle drawn by weight."""
    return genealogy_paths(key, history, 1)[0]


def backward_path(
    key: Key, model, data: Observations, history: ParticleHistory
) -> Float[Array, " T *E"]:
    """One backward-simulation draw: the last state by weight, then each predecessor from the
    backward kernel $\\propto W_t^j f(x_{t+1} \\mid x_t^j)$."""
    key_last, key_back = jax.random.split(key)
    last = jax.random.categorical(key_last, history.log_weights[-1])
    x_last = history.particles[-1, last]

    def back(x_next, args):
        key, particles, log_weights, step = args
        logits = backward_log_weights(model, x_next, particles, log_weights, step)
        index = sample_log_weights(jax.random.uniform(key, (), logits.dtype), logits)
        x = particles[index]
        return x, x

    steps = jax.tree.map(lambda a: a[:-1], data.steps)
    keys = jax.random.split(key_back, data.num_timesteps - 1)
    _, earlier = jax.lax.scan(
        back,
        x_last,
        (keys, history.particles[:-1], history.log_weights[:-1], steps),
        reverse=True,
    )
    return jnp.concatenate([earlier, x_last[None]])


def particle_gibbs_step(
    model,
    data: Observations,
    key: Key,
    reference: Float[Array, " T *E"],
    num_particles: int,
    method: str,
) -> Float[Array, " T *E"]:
    """One particle Gibbs move of the path: "ancestor" (ancestor sampling, then tracing) or
    "backward" (conditional filter, then backward simulation)."""
    key_filter, key_path = jax.random.split(key)
    history = conditional_smc(
        model, data, key_filter, reference, num_particles, ancestor_sampling=method == "ancestor"
    )
    if method == "ancestor":
        return traced_path(key_path, history)
    return backward_path(key_path, model, data, history)
