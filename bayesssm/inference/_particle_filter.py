r"""The particle filter's loop: a `lax.scan` over time, every operation in log-space.

The randomness of a block of steps (the resampling uniforms, and the standard normals of
proposals that move by loc + scale z, from Box-Muller pairs drawn one block ahead) is drawn in
vectorised passes before the block's steps are scanned over it (`_scan_in_blocks`): drawn
inside each step it cost over half the filter's time on CPU (docs/benchmarks.md).

At step t the previous normalised log-weights $\log W_{t-1}^i$ get the auxiliary first-stage
weights $\log \eta^i$ (zero without look-ahead); the particles are resampled from
$W_{t-1}^i \eta^i$ when its effective sample size falls below the threshold; each one moves by
the proposal and earns the log incremental weight minus $\log \eta$ of its ancestor. The
log-likelihood increment is
$\log \sum_i W_{t-1}^i \eta^i + \log \sum_j \tilde W^j w_t^j$, with $\tilde W$ the weights the
particles carry into the move (uniform after resampling), which keeps its exponential unbiased
for $p(y_t \mid y_{0:t-1})$ for every scheme and threshold.

A step where every weight is zero (or NaN, counted as zero) stops the likelihood at -inf, records
the first such step in `degenerate_step`, and restarts the weights uniformly, so nothing
downstream turns NaN.

References:
    Gordon, N. J., Salmond, D. J. and Smith, A. F. M. (1993). Novel approach to nonlinear/
    non-Gaussian Bayesian state estimation. IEE Proceedings F 140(2).
    Pitt, M. K. and Shephard, N. (1999). Filtering via simulation: auxiliary particle filters.
    JASA 94(446).
    Doucet, A. and Johansen, A. M. (2011). A tutorial on particle filtering and smoothing:
    fifteen years later. The Oxford Handbook of Nonlinear Filtering.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from .._types import Array, Bool, Float, Int, Key
from ..data import Observations
from ..ssm import StepInputs
from . import _random as random
from ._proposals import Observation
from ._resampling import FROM_UNIFORMS, RESAMPLERS, effective_sample_size, uniform_shape


class ParticleHistory(NamedTuple):
    """Every step's particles, for smoothing. `ancestors[t, i]` is the index at step t - 1 of
    the parent of particle i at step t (`ancestors[0]` is the identity)."""

    particles: Float[Array, "T N *E"]
    log_weights: Float[Array, "T N"]  # normalised filtering log-weights
    ancestors: Int[Array, "T N"]


class ParticleFilterResult(NamedTuple):
    """The particle approximation of the filtering distributions p(x_t | y_{0:t}).

    States of any event shape E are flattened to D = prod(E) entries in `means` and `variances`.
    """

    means: Float[Array, "T D"]  # weighted means of the filtering particles
    variances: Float[Array, "T D"]  # weighted variances
    log_marginal: Float[Array, ""]  # estimate of log p(y_{0:T-1}); -inf after a degenerate step
    log_marginals: Float[Array, " T"]  # estimates of log p(y_t | y_{0:t-1})
    ess: Float[Array, " T"]  # effective sample size of the filtering weights at each step
    resampled: Bool[Array, " T"]  # whether the particles were resampled before moving to t
    degenerate_step: Int[Array, ""]  # first step where all weights were zero or NaN; -1 if none
    particles: Float[Array, " N *E"]  # the last step's particles
    log_weights: Float[Array, " N"]  # and their normalised log-weights
    history: ParticleHistory | None  # every step's particles (when asked for)


class Settings(NamedTuple):
    num_particles: int
    resampling: str
    ess_threshold: float
    proposal: object  # a proposal from ._proposals
    look_ahead: Callable | None
    store_history: bool


def _moments(particles: Array, log_weights: Float[Array, " N"]):
    flat = particles.reshape(particles.shape[0], -1)
    weights = jnp.exp(log_weights)
    mean = weights @ flat
    return mean, weights @ (flat - mean) ** 2


def _normalise(log_base: Float[Array, " N"], increments: Float[Array, " N"]):
    """Log-weights after weighting, their log-sum, and whether any weight survived."""
    increments = jnp.where(jnp.isnan(increments), -jnp.inf, increments)
    unnormalised = log_base + increments
    total = logsumexp(unnormalised)
    alive = jnp.isfinite(total)
    uniform = -jnp.log(jnp.asarray(log_base.shape[0], log_base.dtype))
    log_weights = jnp.where(alive, unnormalised - total, uniform)
    return log_weights, total, alive


class StepDraws(NamedTuple):
    """A step's pre-drawn randomness: the resampling scheme's uniforms, and the proposal's
    standard normal noise (N, *noise_shape), or None when its moves draw from a key."""

    uniforms: Array
    noise: Array | None


class FilterStep(NamedTuple):
    """What one particle-filter step returns (see `filter_step`)."""

    particles: Array  # (N, *E) the moved particles x_t
    log_weights: Float[Array, " N"]  # their normalised log-weights (uniform after a dead step)
    increment: Float[Array, ""]  # estimate of log p(y_t | y_{0:t-1}); -inf after a dead step
    alive: Bool[Array, ""]  # whether any weight survived
    ancestors: Int[Array, " N"]  # the parent at t - 1 of each particle
    resampled: Bool[Array, ""]


def filter_step(
    model,
    settings: Settings,
    key: Key,
    particles: Float[Array, " N *E"],
    log_weights: Float[Array, " N"],
    prev_step: StepInputs,
    obs: Observation,
    draws: StepDraws | None = None,
) -> FilterStep:
    """One step t - 1 -> t of the particle filter, as `run_particle_filter` does it; with
    `draws`, its resampling uniforms and move noise come from there instead of `key`."""
    num = settings.num_particles
    dtype = log_weights.dtype
    log_uniform = -jnp.log(jnp.asarray(num, dtype))
    key_resample, key_move = jax.random.split(key)
    if settings.look_ahead is not None:
        look = settings.look_ahead(model, particles, prev_step, obs)
        look = jnp.where(jnp.isnan(look), -jnp.inf, look)
        first_stage, first_total, first_alive = _normalise(log_weights, look)
    else:
        first_stage, first_total, first_alive = log_weights, jnp.zeros((), dtype), True
    threshold = settings.ess_threshold

    def resampled(_):
        if draws is None:
            ancestors = RESAMPLERS[settings.resampling](key_resample, first_stage)
        else:
            ancestors = FROM_UNIFORMS[settings.resampling](draws.uniforms, first_stage)
        return ancestors, jnp.full(num, log_uniform)

    def kept(_):
        return jnp.arange(num, dtype=jnp.int32), first_stage

    if threshold >= 1.0:  # a Python float (`ParticleFilter` passes one)
        # Resampling at every step needs no branch (a GPU conditional waits for its predicate
        # on the host each step). XLA folds the always-true one too; this does not rely on it.
        do_resample = jnp.asarray(True)
        ancestors, log_base = resampled(None)
    else:
        ess = effective_sample_size(first_stage)
        do_resample = ess < threshold * num
        ancestors, log_base = jax.lax.cond(do_resample, resampled, kept, None)
    moved, increments = settings.proposal.move(
        model, key_move, particles[ancestors], prev_step, obs, draws and draws.noise
    )
    if settings.look_ahead is not None:
        increments = increments - look[ancestors]
    new_log_weights, total, alive = _normalise(log_base, increments)
    alive = alive & first_alive
    new_log_weights = jnp.where(alive, new_log_weights, log_uniform)
    increment = jnp.where(alive, first_total + total, -jnp.inf)
    return FilterStep(moved, new_log_weights, increment, alive, ancestors, do_resample)


def initial_step(model, settings: Settings, key: Key, first: Observation):
    """Step 0: particles from the initial proposal, weighted; (particles, normalised
    log-weights, log p(y_0) estimate, degenerate step so far)."""
    num = settings.num_particles
    particles, increments = settings.proposal.initial(model, key, num, first)
    log_uniform = -jnp.log(jnp.asarray(num, particles.dtype))
    log_weights, total, alive = _normalise(jnp.full(num, log_uniform), increments)
    log_marginal = jnp.where(alive, total, -jnp.inf)
    return particles, log_weights, log_marginal, jnp.where(alive, -1, 0).astype(jnp.int32)


def mark_degenerate(degenerate: Int[Array, ""], alive, index) -> Int[Array, ""]:
    """The first step t at which no weight survived (`index` is t - 1), or -1."""
    return jnp.where((degenerate < 0) & ~alive, (index + 1).astype(jnp.int32), degenerate)


# A block of steps draws its randomness at once: up to 32 steps and 2^16 numbers (512 KiB in
# float64). Drawn in bulk the numbers vectorise, where draws inside each step would not; a few
# dozen steps already amortise the block's own cost, and small blocks keep memory O(N) per run,
# also under `vmap` over many runs.
STEPS_PER_BLOCK = 32
DRAWS_PER_BLOCK = 2**16


def _blocks(num_steps: int, per_step: int) -> tuple[int, int]:
    """(number of blocks, steps per block) covering `num_steps` steps with the fewest padded
    steps, each block within STEPS_PER_BLOCK steps and DRAWS_PER_BLOCK numbers."""
    cap = max(1, min(STEPS_PER_BLOCK, DRAWS_PER_BLOCK // max(per_step, 1)))
    num_blocks = -(-num_steps // cap)
    return num_blocks, -(-num_steps // num_blocks)


def _scan_in_blocks(step, carry0, xs, key: Key, settings: Settings, noise_shape, dtype):
    """`lax.scan(step, carry0, xs)` with `step(carry, (x, draws))`, the `StepDraws` of a block
    of steps drawn at once. Steps past the end (padding of the last block) leave the carry as
    it is, and their outputs are dropped.

    A block's Box-Muller pairs are drawn during the block before (and carried), so that they
    reach the block materialised and its normals are one vectorised loop of one series each:
    drawn and used in the same block, XLA fuses the angles' Threefry bits into that loop and
    computes them twice a pair (filter N = 1000 on CPU: ~10% slower). The last block draws one
    block of pairs that goes unused.
    """
    num = settings.num_particles
    num_steps = jax.tree.leaves(xs)[0].shape[0]
    if num_steps == 0:  # a single observation: no moves
        return jax.lax.scan(lambda c, x: step(c, (x, None)), carry0, xs)
    u_shape = uniform_shape(settings.resampling, num)
    noise_size = 0 if noise_shape is None else num * math.prod(noise_shape)
    per_step = math.prod(u_shape) + noise_size
    num_blocks, block = _blocks(num_steps, per_step)
    pad = num_blocks * block - num_steps

    def blocked(a):
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
        return a.reshape(num_blocks, block, *a.shape[1:])

    def pairs_for(block_key):
        if noise_shape is None:
            return None
        return random.polar(block_key, (block, -(-noise_size // 2)), dtype)

    def inner(carry, args):
        x, draws, valid = args
        new_carry, out = step(carry, (x, draws))
        if pad:
            new_carry = jax.tree.map(lambda a, b: jnp.where(valid, a, b), new_carry, carry)
        return new_carry, out

    def outer(carry_and_pairs, args):
        carry, pairs = carry_and_pairs
        uniform_key, next_pairs_key, x, valid = args
        uniforms = random.uniform(uniform_key, (block, *u_shape), dtype)
        noise = None
        if pairs is not None:
            noise = random.from_polar(*pairs)[:, :noise_size].reshape(block, num, *noise_shape)
        carry, outs = jax.lax.scan(inner, carry, (x, StepDraws(uniforms, noise), valid))
        return (carry, pairs_for(next_pairs_key)), outs

    valid = (jnp.arange(num_blocks * block) < num_steps).reshape(num_blocks, block)
    key_uniforms, key_pairs = jax.random.split(key)
    uniform_keys = jax.random.split(key_uniforms, num_blocks)
    pairs_keys = jax.random.split(key_pairs, num_blocks + 1)
    (carry, _), outs = jax.lax.scan(
        outer,
        (carry0, pairs_for(pairs_keys[0])),
        (uniform_keys, pairs_keys[1:], jax.tree.map(blocked, xs), valid),
    )
    outs = jax.tree.map(lambda a: a.reshape(num_blocks * block, *a.shape[2:])[:num_steps], outs)
    return carry, outs


def run_particle_filter(
    model, data: Observations, key: Key, settings: Settings
) -> ParticleFilterResult:
    num = settings.num_particles
    observations = Observation(data.values, data.observed, data.steps)
    first = jax.tree.map(lambda a: a[0], observations)
    key_first, key_rest, key_draws = jax.random.split(key, 3)
    particles, log_weights, log_marginal0, degenerate0 = initial_step(
        model, settings, key_first, first
    )

    def step(carry, args):
        particles, log_weights, degenerate = carry
        (key, prev_step, obs), draws = args
        out = filter_step(model, settings, key, particles, log_weights, prev_step, obs, draws)
        degenerate = mark_degenerate(degenerate, out.alive, prev_step.index)
        mean, variance = _moments(out.particles, out.log_weights)
        ess = effective_sample_size(out.log_weights)
        outs = (out.increment, ess, out.resampled, mean, variance)
        if settings.store_history:
            outs = outs + (out.particles, out.log_weights, out.ancestors)
        return (out.particles, out.log_weights, degenerate), outs

    prev_steps = jax.tree.map(lambda a: a[:-1], data.steps)
    rest = jax.tree.map(lambda a: a[1:], observations)
    keys = jax.random.split(key_rest, data.num_timesteps - 1)
    carry0 = (particles, log_weights, degenerate0)
    xs = (keys, prev_steps, rest)
    noise_shape = settings.proposal.noise_shape(
        model, particles[0], jax.tree.map(lambda a: a[0], data.steps), first
    )
    carry, outs = _scan_in_blocks(
        step, carry0, xs, key_draws, settings, noise_shape, particles.dtype
    )
    last, last_log_weights, degenerate = carry
    mean0, variance0 = _moments(particles, log_weights)
    increments, ess, did_resample, means, variances = outs[:5]

    def with_first(first, later):
        return jnp.concatenate([jnp.asarray(first)[None].astype(later.dtype), later])

    log_marginals = with_first(log_marginal0, increments)
    history = None
    if settings.store_history:
        history = ParticleHistory(
            with_first(particles, outs[5]),
            with_first(log_weights, outs[6]),
            with_first(jnp.arange(num, dtype=jnp.int32), outs[7]),
        )
    return ParticleFilterResult(
        means=with_first(mean0, means),
        variances=with_first(variance0, variances),
        log_marginal=jnp.sum(log_marginals),
        log_marginals=log_marginals,
        ess=with_first(effective_sample_size(log_weights), ess),
        resampled=with_first(False, did_resample),
        degenerate_step=degenerate,
        particles=last,
        log_weights=last_log_weights,
        history=history,
    )
