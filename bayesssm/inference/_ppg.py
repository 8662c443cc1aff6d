r"""One sweep of the PaRIS particle Gibbs (PPG) sampler.

A conditional bootstrap filter (`_csmc`) runs with the current path as its reference particle;
alongside it every particle, the reference's included, carries a PaRIS statistic for the
additive functional $S = h_0(x_0) + \sum_{t \ge 1} h_t(x_{t-1}, x_t)$, updated with K draws from
the backward kernel (`_paris.paris_update`). The sweep returns $\sum_i W_{T-1}^i \tau_{T-1}^i$
and the next reference path, a backward-simulation draw through the sweep's particles (so the
paths form the backward-sampling particle Gibbs chain, which leaves $p(x_{0:T-1} \mid y)$
invariant). Averaged over sweeps at stationarity, the estimates lose the self-normalisation
bias of a single PaRIS pass.

References:
    Cardoso, G., Janati El Idrissi, Y., Le Corff, S., Moulines, E. and Olsson, J. (2023). State
    and parameter learning with PaRIS particle Gibbs. ICML 2023.
    Olsson, J. and Westerborn, J. (2017). Efficient particle-based online smoothing in general
    hidden Markov models: the PaRIS algorithm. Bernoulli 23(3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._types import Array, Float, Key
from ..data import Observations
from ._csmc import backward_path, csmc_initial, csmc_move, observation_rows
from ._paris import initial_statistics, paris_update, weighted_estimate
from ._particle_filter import ParticleHistory


def ppg_sweep(
    model,
    data: Observations,
    key: Key,
    reference: Float[Array, " T *E"],
    num_particles: int,
    num_backward: int,
    functional: Callable,
    initial_functional: Callable | None = None,
    state_functional: Callable | None = None,
    backward: str = "exact",
) -> tuple[Any, Float[Array, " T *E"]]:
    """(the sweep's estimate of E[S | y], the next reference path).

    `functional(x_prev, x, t)` gives $h_t$ for t >= 1; `initial_functional(x0)` gives $h_0$
    (zero when None). A part of $h_t$ that depends on $x_t$ alone may be passed separately as
    `state_functional(x, t)` (t >= 1): it is added to each particle's statistic once instead of
    once per backward draw (the same estimate, K times fewer evaluations). `backward` is the
    backward kernel of the PaRIS update ("exact" or "rejection").
    """
    rows = observation_rows(data)
    key_first, key_rest, key_path = jax.random.split(key, 3)
    first = jax.tree.map(lambda a: a[0], rows)
    particles, log_weights = csmc_initial(model, key_first, num_particles, reference[0], first)
    statistics = initial_statistics(functional, initial_functional, particles)

    def step(carry, args):
        particles, log_weights, statistics = carry
        key, ref, prev_step, obs = args
        key_move, key_backward = jax.random.split(key)
        moved, new_log_weights, ancestors = csmc_move(
            model, key_move, particles, log_weights, ref, prev_step, obs, ancestor_sampling=False
        )
        statistics = paris_update(
            key_backward,
            model,
            statistics,
            particles,
            log_weights,
            moved,
            prev_step,
            functional,
            num_backward,
            backward=backward,
        )
        if state_functional is not None:
            t = prev_step.index + 1
            terms = jax.vmap(lambda x: state_functional(x, t))(moved)
            statistics = jax.tree.map(jnp.add, statistics, terms)
        return (moved, new_log_weights, statistics), (moved, new_log_weights, ancestors)

    keys = jax.random.split(key_rest, data.num_timesteps - 1)
    prev_steps = jax.tree.map(lambda a: a[:-1], data.steps)
    rest = jax.tree.map(lambda a: a[1:], rows)
    (_, last_log_weights, statistics), (moved, log_weights_all, ancestors) = jax.lax.scan(
        step, (particles, log_weights, statistics), (keys, reference[1:], prev_steps, rest)
    )
    history = ParticleHistory(
        jnp.concatenate([particles[None], moved]),
        jnp.concatenate([log_weights[None], log_weights_all]),
        jnp.concatenate([jnp.arange(num_particles, dtype=jnp.int32)[None], ancestors]),
    )
    estimate = weighted_estimate(statistics, last_log_weights)
    return estimate, backward_path(key_path, model, data, history)
