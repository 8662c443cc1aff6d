r"""Backward kernels of particle smoothers: draw the predecessor of a state at step t + 1.

Given the filtering particles $x_t^j$ with normalised log-weights $\log W_t^j$ and a state
$x_{t+1}$, the backward kernel picks $j$ with probability proportional to
$W_t^j f(x_{t+1} \mid x_t^j)$. `backward_indices_exact` computes all N terms for each draw
(O(N) a draw, O(N^2) for N draws). `backward_indices_rejection` proposes $j \sim W_t$ and
accepts with probability $f(x_{t+1} \mid x_t^j) / \bar f$, where $\bar f$ bounds the transition
density over the candidates (the largest density at any candidate's mode, so it holds for any
transition whose `mode()` distrax knows); expected O(1) a draw when the bound is not loose.
Draws still rejected after `max_trials` proposals fall back to the exact kernel, so the result
is exact whatever the bound's slack (the hybrid scheme of Dau and Chopin 2022). Trials run on
ever smaller buffers of the draws still pending, and only the draws left at the end pay for the
fallback: they are gathered to the front and drawn exactly in chunks of `_FALLBACK_CHUNK`, so R
rejected draws cost about max(R, chunk) N density evaluations.

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
from ._resampling import cumulative_sum, draw_from_cumulative, search_sorted

_EXACT_BATCH = 64  # draws computed side by side by the exact kernel: an (64, N) block in flight
_FALLBACK_CHUNK = 16  # rejected draws redone exactly per pass of the fallback loop
_SHRINK = 8  # each rejection stage runs on a buffer this many times smaller than the last
_SMALLEST_STAGE = 32


def transition_log_densities(
    model, x_next: Array, particles: Float[Array, " N *E"], step: StepInputs
) -> Float[Array, " N"]:
    """log f(x_next | x_t^j) for every particle j (`step`: the step moved from)."""
    return jax.vmap(lambda x: model.transition(x, step).log_prob(x_next))(particles)


def backward_log_weights(
    model, x_next: Array, particles: Float[Array, " N *E"], log_weights, step: StepInputs
) -> Float[Array, " N"]:
    """Unnormalised log backward weights log W_t^j + log f(x_next | x_t^j); NaN counts as -inf."""
    logits = log_weights + transition_log_densities(model, x_next, particles, step)
    return jnp.where(jnp.isnan(logits), -jnp.inf, logits)


def backward_indices_exact(
    key: Key,
    model,
    x_next: Float[Array, " S *E"],
    particles: Float[Array, " N *E"],
    log_weights: Float[Array, " N"],
    step: StepInputs,
) -> Int[Array, " S"]:
    """One predecessor index for each of the S states in `x_next`, O(S N).

    Args:
        key: PRNG key.
        model: the state-space model (its `transition` is used).
        x_next: the states at step t + 1 whose predecessors are drawn.
        particles: the filtering particles at step t.
        log_weights: their normalised log-weights.
        step: the `StepInputs` of step t (the step the transition moves from).

    Returns:
        Indices into `particles`, independent given the particles.
    """
    uniforms = jax.random.uniform(key, (x_next.shape[0],), log_weights.dtype)

    def one(args):
        u, x = args
        return sample_log_weights(u, backward_log_weights(model, x, particles, log_weights, step))

    # lax.map keeps memory at O(batch N) instead of an (S, N) matrix
    return jax.lax.map(one, (uniforms, x_next), batch_size=min(_EXACT_BATCH, x_next.shape[0]))


def sample_log_weights(u: Float[Array, ""], logits: Float[Array, " N"]) -> Int[Array, ""]:
    """The index drawn from unnormalised log-weights by inverse CDF with the uniform u: one
    uniform a draw, where `jax.random.categorical` draws N Gumbel numbers (about 3x the cost)."""
    logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
    cumulative = cumulative_sum(jnp.exp(logits - jnp.max(logits)))
    return search_sorted(cumulative, u * cumulative[-1], side="right")


def transition_log_bound(
    model, particles: Float[Array, " N *E"], step: StepInputs
) -> Float[Array, ""]:
    """max_j max_x log f(x | x_t^j): the density at each candidate's mode, maximised over j."""

    def at_mode(x):
        dist = model.transition(x, step)
        return dist.log_prob(dist.mode())

    try:
        return jnp.max(jax.vmap(at_mode)(particles))
    except NotImplementedError as error:
        raise TypeError(
            "rejection-based backward sampling bounds the transition density by its value at "
            "the mode, but the model's transition distribution has no mode(); use the exact "
            "kernel (smoother='ffbs', or backward='exact' in bs.paris)."
        ) from error


def _stage_sizes(num: int) -> list[int]:
    """Buffer sizes of the rejection stages: each holds the draws still pending, 8x fewer."""
    sizes = [num]
    while sizes[-1] // _SHRINK >= _SMALLEST_STAGE:
        sizes.append(sizes[-1] // _SHRINK)
    return sizes


def backward_indices_rejection(
    key: Key,
    model,
    x_next: Float[Array, " S *E"],
    particles: Float[Array, " N *E"],
    log_weights: Float[Array, " N"],
    step: StepInputs,
    max_trials: int = 64,
) -> Int[Array, " S"]:
    r"""Predecessor indices by rejection sampling, with the same law as `backward_indices_exact`.

    Every trial proposes, for each draw not yet accepted, $j \sim W_t$ and accepts it with
    probability $f(x_{t+1} \mid x_t^j) / \bar f$. Trials run on a buffer of the pending draws
    that shrinks 8-fold whenever the pending ones fit a smaller one (static shapes, so a few
    hard draws do not keep every trial at size S). Draws not accepted within `max_trials`
    trials are gathered and drawn from the exact kernel, `_FALLBACK_CHUNK` at a time, so they
    cost O(N) each, not O(S N) for all. Arguments are those of `backward_indices_exact`.
    """
    x_next, particles = jnp.asarray(x_next), jnp.asarray(particles)
    num = x_next.shape[0]
    log_bound = transition_log_bound(model, particles, step)
    cumulative = cumulative_sum(jnp.exp(log_weights))
    key_loop, key_exact = jax.random.split(key)

    def run_stage(stage, state):
        """Trials on the draws at `positions` (padded with `num`) until few enough are left."""
        positions, stop_at, indices, accepted, trials = state
        size = positions.shape[0]
        x = x_next[jnp.minimum(positions, num - 1)]

        def trial(inner):
            key, chosen, done, count = inner
            key_propose, key_accept = jax.random.split(jax.random.fold_in(key, count))
            proposed = draw_from_cumulative(key_propose, cumulative, size)
            log_density = jax.vmap(lambda x, j: model.transition(particles[j], step).log_prob(x))(
                x, proposed
            )
            log_u = jnp.log(jax.random.uniform(key_accept, (size,), log_density.dtype))
            accept = ~done & (log_u <= log_density - log_bound)
            return key, jnp.where(accept, proposed, chosen), done | accept, count + 1

        def more(inner):
            _, _, done, count = inner
            return (count < max_trials) & (jnp.sum(~done) > stop_at)

        start = (jax.random.fold_in(key_loop, stage), indices[positions % num])
        start = (*start, accepted[positions % num] | (positions >= num), trials)
        _, chosen, done, trials = jax.lax.while_loop(more, trial, start)
        indices = indices.at[positions].set(chosen, mode="drop")
        return indices, accepted.at[positions].set(done, mode="drop"), trials

    indices, accepted = jnp.zeros(num, jnp.int32), jnp.zeros(num, bool)
    trials = jnp.zeros((), jnp.int32)
    sizes = _stage_sizes(num)
    for stage, size in enumerate(sizes):  # a few static stages, not a loop over draws
        if stage == 0:
            positions = jnp.arange(num)
        else:  # if more are pending than fit, the rest wait for the exact fallback
            (positions,) = jnp.nonzero(~accepted, size=size, fill_value=num)
        stop_at = sizes[stage + 1] if stage + 1 < len(sizes) else 0
        indices, accepted, trials = run_stage(
            stage, (positions, stop_at, indices, accepted, trials)
        )

    # The rejected draws, in front (padded with `num`, an index past the end that drops out).
    chunk = min(_FALLBACK_CHUNK, num)
    (pending,) = jnp.nonzero(~accepted, size=num + chunk, fill_value=num)
    num_pending = jnp.sum(~accepted)

    def redo(state):
        start, indices = state
        where = jax.lax.dynamic_slice(pending, (start,), (chunk,))
        x = x_next[jnp.minimum(where, num - 1)]
        exact = backward_indices_exact(
            jax.random.fold_in(key_exact, start), model, x, particles, log_weights, step
        )
        return start + chunk, indices.at[where].set(exact, mode="drop")

    _, indices = jax.lax.while_loop(
        lambda state: state[0] < num_pending, redo, (jnp.zeros((), jnp.int32), indices)
    )
    return indices
