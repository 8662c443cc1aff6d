r"""Backward kernels of particle smoothers: draw the predecessor of a state at step t + 1.

Given the filtering particles $x_t^j$ with normalised log-weights $\log W_t^j$ and a state
$x_{t+1}$, the backward kernel picks $j$ with probability proportional to
$W_t^j f(x_{t+1} \mid x_t^j)$. `backward_indices_exact` computes all N terms for each draw
(O(N) a draw, O(N^2) for N draws). `backward_indices_rejection` proposes $j \sim W_t$ and
accepts with probability $f(x_{t+1} \mid x_t^j) / \bar f$, where $\bar f$ bounds the transition
density over the candidates (the largest density at any candidate's mode, so any unimodal
transition works); expected O(1) a draw when the bound is not loose. Draws still rejected after
`max_trials` proposals fall back to the exact kernel, so the result is exact whatever the bound's
slack (the hybrid scheme of Dau and Chopin 2022).

References:
    Godsill, S. J., Doucet, A. and West, M. (2004). Monte Carlo smoothing for nonlinear time
    series. JASA 99(465).
    Douc, R., Garivier, A., Moulines, E. and Olsson, J. (2011). Sequential Monte Carlo smoothing
    for general state space hidden Markov models. Annals of Applied Probability 21(6).
    Dau, H.-D. and Chopin, N. (2022). On backward smoothing algorithms. Annals of Statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._types import Array, Float, Int, Key
from ..ssm import StepInputs
from ._resampling import draw_indices


def transition_log_densities(
    model, x_next: Array, particles: Float[Array, " N *E"], step: StepInputs
) -> Float[Array, " N"]:
    """log f(x_next | x_t^j) for every particle j (`step`: the step moved from)."""
    return jax.vmap(lambda x: model.transition(x, step).log_prob(x_next))(particles)


def backward_log_weights(
    model, x_next: Array, particles: Float[Array, " N *E"], log_weights, step: StepInputs
) -> Float[Array, " N"]:
    """Unnormalised log backward weights log W_t^j + log f(x_next | x_t^j)."""
    return log_weights + transition_log_densities(model, x_next, particles, step)


def backward_indices_exact(
    key: Key,
    model,
    x_next: Float[Array, " S *E"],
    particles: Float[Array, " N *E"],
    log_weights: Float[Array, " N"],
    step: StepInputs,
) -> Int[Array, " S"]:
    """One predecessor index for each of the S states in `x_next`, O(S N)."""
    keys = jax.random.split(key, x_next.shape[0])

    def one(args):
        key, x = args
        logits = backward_log_weights(model, x, particles, log_weights, step)
        return jax.random.categorical(key, logits)

    # lax.map keeps memory at O(N) per draw in flight instead of an (S, N) matrix
    return jax.lax.map(one, (keys, x_next), batch_size=min(64, x_next.shape[0]))


def transition_log_bound(
    model, particles: Float[Array, " N *E"], step: StepInputs
) -> Float[Array, ""]:
    """max_j max_x log f(x | x_t^j): the density at each candidate's mode, maximised over j."""

    def at_mode(x):
        dist = model.transition(x, step)
        return dist.log_prob(dist.mode())

    return jnp.max(jax.vmap(at_mode)(particles))


def backward_indices_rejection(
    key: Key,
    model,
    x_next: Float[Array, " S *E"],
    particles: Float[Array, " N *E"],
    log_weights: Float[Array, " N"],
    step: StepInputs,
    max_trials: int = 32,
) -> Int[Array, " S"]:
    """Predecessor indices by rejection sampling; draws not accepted within `max_trials`
    proposals are drawn from the exact kernel."""
    num = x_next.shape[0]
    log_bound = transition_log_bound(model, particles, step)
    key_loop, key_exact = jax.random.split(key)

    def trial(state):
        key, indices, accepted, count = state
        key, key_propose, key_accept = jax.random.split(key, 3)
        proposed = draw_indices(key_propose, log_weights, num)
        log_density = jax.vmap(lambda x, j: model.transition(particles[j], step).log_prob(x))(
            x_next, proposed
        )
        log_u = jnp.log(jax.random.uniform(key_accept, (num,), log_density.dtype))
        accept = ~accepted & (log_u <= log_density - log_bound)
        return key, jnp.where(accept, proposed, indices), accepted | accept, count + 1

    def more(state):
        _, _, accepted, count = state
        return (count < max_trials) & ~jnp.all(accepted)

    start = (key_loop, jnp.zeros(num, jnp.int32), jnp.zeros(num, bool), 0)
    _, indices, accepted, _ = jax.lax.while_loop(more, trial, start)

    def fallback(indices):
        exact = backward_indices_exact(key_exact, model, x_next, particles, log_weights, step)
        return jnp.where(accepted, indices, exact.astype(indices.dtype))

    return jax.lax.cond(jnp.all(accepted), lambda i: i, fallback, indices)
