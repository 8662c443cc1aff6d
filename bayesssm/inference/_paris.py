r"""PaRIS: online particle estimates of smoothed additive functionals, O(N K) a step.

For $S_t = h_0(x_0) + \sum_{s=1}^{t} h_s(x_{s-1}, x_s)$, every particle $x_t^i$ carries a
statistic $\tau_t^i \approx E[S_t \mid x_t = x_t^i, y_{0:t}]$, updated with K draws
$J^{i,1..K}$ from the backward kernel $\propto W_{t-1}^j f(x_t^i \mid x_{t-1}^j)$:

$$\tau_t^i = \frac{1}{K} \sum_{k=1}^K \left(\tau_{t-1}^{J^{i,k}}
    + h_t(x_{t-1}^{J^{i,k}}, x_t^i)\right),\qquad
  E[S_t \mid y_{0:t}] \approx \sum_i W_t^i \tau_t^i.$$

`paris_update` is that update alone (also the building block of conditional-SMC samplers such as
PaRIS particle Gibbs); `filter_step` is one step of the particle filter of `_particle_filter`
(same resampling, proposals, auxiliary weights and degenerate-step handling) as a plain function;
`run_paris` scans both together, so memory stays O(N) whatever T.

References:
    Olsson, J. and Westerborn, J. (2017). Efficient particle-based online smoothing in general
    hidden Markov models: the PaRIS algorithm. Bernoulli 23(3).
    Dau, H.-D. and Chopin, N. (2022). On backward smoothing algorithms. Annals of Statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._types import Array, Float, Int, Key
from ..data import Observations
from ..ssm import StepInputs
from ._backward import backward_indices_exact, backward_indices_rejection
from ._particle_filter import Settings, _moments, filter_step, initial_step, mark_degenerate
from ._proposals import Observation
from ._resampling import effective_sample_size

BACKWARD_KERNELS = {"rejection": backward_indices_rejection, "exact": backward_indices_exact}


def paris_update(
    key: Key,
    model,
    statistics: Any,
    particles_prev: Float[Array, " N *E"],
    log_weights_prev: Float[Array, " N"],
    particles: Float[Array, " P *E"],
    step_prev: StepInputs,
    functional: Callable,
    num_backward: int = 2,
    t: Int[Array, ""] | None = None,
    backward: str = "rejection",
    max_trials: int = 64,
) -> Any:
    r"""One PaRIS update: the statistics of the new particles from those of the previous ones.

    For each new particle $x_t^i$ draws K indices $J^{i,k}$ independently from the backward
    kernel $P(J = j) \propto W_{t-1}^j f(x_t^i \mid x_{t-1}^j)$ and returns
    $\tau_t^i = \frac1K \sum_k (\tau_{t-1}^{J^{i,k}} + h(x_{t-1}^{J^{i,k}}, x_t^i, t))$.

    Nothing here depends on how the new particles were made, so conditional SMC uses it
    unchanged: pass the previous step's particles and their normalised filtering weights (after
    the reference particle has been weighted in, before any resampling), and all the new
    particles, the reference among them (its backward draws are made like any other's).

    Args:
        key: PRNG key.
        model: the state-space model (only `transition` is used).
        statistics: $\tau_{t-1}$, an array or pytree of arrays with leading axis N
            (statistic j belongs to `particles_prev[j]`).
        particles_prev: the particles $x_{t-1}^j$ at step t - 1.
        log_weights_prev: their normalised log filtering weights $\log W_{t-1}^j$ (-inf allowed).
        particles: the new particles $x_t^i$ at step t (any number P, usually N).
        step_prev: `StepInputs` of step t - 1 (the transition's inputs, as in the filter).
        functional: $h(x_{t-1}, x_t, t)$ for one pair of states (E-shaped) and the step t;
            returns an array or pytree with the structure of one statistic (no leading N).
        num_backward: K, backward draws per new particle (K >= 2 keeps PaRIS stable).
        t: the step index handed to `functional`; default `step_prev.index + 1`.
        backward: "rejection" (expected O(1) a draw; exact fallback after `max_trials`) or
            "exact" (O(N) a draw). Both draw from the same kernel.
        max_trials: rejection trials before the exact fallback.

    Returns:
        $\tau_t$: the structure of `statistics` with leading axis P.
    """
    num_new = particles.shape[0]
    t = step_prev.index + 1 if t is None else t
    repeated = jnp.repeat(particles, num_backward, axis=0)  # row i * K + k: particle i
    draw = BACKWARD_KERNELS[backward]
    kwargs = {"max_trials": max_trials} if backward == "rejection" else {}
    indices = draw(key, model, repeated, particles_prev, log_weights_prev, step_prev, **kwargs)
    indices = indices.reshape(num_new, num_backward)
    x_prev = particles_prev[indices]  # (P, K, *E)

    def h_row(x_prevs, x):
        return jax.vmap(lambda xp: functional(xp, x, t))(x_prevs)

    terms = jax.vmap(h_row)(x_prev, particles)  # leaves (P, K, ...)

    def combine(previous, term):
        return jnp.mean(previous[indices] + term, axis=1)

    return jax.tree.map(combine, statistics, terms)


def initial_statistics(
    functional: Callable, initial: Callable | None, particles: Float[Array, " N *E"]
) -> Any:
    r"""$\tau_0^i = h_0(x_0^i)$; without `initial`, zeros shaped like one value of `functional`."""
    if initial is not None:
        return jax.vmap(initial)(particles)
    x = particles[0]
    shape = jax.eval_shape(lambda: functional(x, x, jnp.ones((), jnp.int32)))
    num = particles.shape[0]
    return jax.tree.map(lambda s: jnp.zeros((num, *s.shape), s.dtype), shape)


def weighted_estimate(statistics: Any, log_weights: Float[Array, " N"]) -> Any:
    r"""$\sum_i W^i \tau^i$ for every leaf of `statistics`."""
    weights = jnp.exp(log_weights)

    def mean(leaf):
        return jnp.tensordot(weights.astype(leaf.dtype), leaf, axes=1)

    return jax.tree.map(mean, statistics)


class PaRISResult(NamedTuple):
    r"""Online smoothed expectations of an additive functional, and the filter's by-products.

    `estimates` has the structure of the functional's value with a leading time axis: index t
    estimates $E[S_t \mid y_{0:t}]$ (see `bs.paris`).
    """

    estimates: Any  # leaves (T, ...): E[S_t | y_{0:t}] for every t
    log_marginal: Float[Array, ""]
    log_marginals: Float[Array, " T"]
    ess: Float[Array, " T"]
    degenerate_step: Int[Array, ""]
    means: Float[Array, "T D"]  # filtering means
    particles: Array  # (N, *E) the last step's particles
    log_weights: Float[Array, " N"]
    statistics: Any  # leaves (N, ...): the last step's per-particle statistics


def run_paris(
    model,
    data: Observations,
    key: Key,
    settings: Settings,
    functional: Callable,
    initial: Callable | None,
    num_backward: int,
    backward: str,
) -> PaRISResult:
    """The particle filter and the PaRIS update in one scan over time."""
    observations = Observation(data.values, data.observed, data.steps)
    first = jax.tree.map(lambda a: a[0], observations)
    key_first, key_rest = jax.random.split(key)

    particles, log_weights, log_marginal0, degenerate0 = initial_step(
        model, settings, key_first, first
    )
    statistics = initial_statistics(functional, initial, particles)

    def step(carry, args):
        particles, log_weights, statistics, degenerate = carry
        key, prev_step, obs = args
        key_filter, key_backward = jax.random.split(key)
        out = filter_step(model, settings, key_filter, particles, log_weights, prev_step, obs)
        statistics = paris_update(
            key_backward,
            model,
            statistics,
            particles,
            log_weights,
            out.particles,
            prev_step,
            functional,
            num_backward,
            backward=backward,
        )
        degenerate = mark_degenerate(degenerate, out.alive, prev_step.index)
        mean, _ = _moments(out.particles, out.log_weights)
        outs = (
            weighted_estimate(statistics, out.log_weights),
            out.increment,
            effective_sample_size(out.log_weights),
            mean,
        )
        return (out.particles, out.log_weights, statistics, degenerate), outs

    prev_steps = jax.tree.map(lambda a: a[:-1], data.steps)
    rest = jax.tree.map(lambda a: a[1:], observations)
    keys = jax.random.split(key_rest, data.num_timesteps - 1)
    carry0 = (particles, log_weights, statistics, degenerate0)
    (last, last_log_weights, last_statistics, degenerate), outs = jax.lax.scan(
        step, carry0, (keys, prev_steps, rest)
    )
    estimates, increments, ess, means = outs

    def with_first(first, later):
        return jnp.concatenate([jnp.asarray(first)[None].astype(later.dtype), later])

    estimate0 = weighted_estimate(statistics, log_weights)
    log_marginals = with_first(log_marginal0, increments)
    return PaRISResult(
        estimates=jax.tree.map(with_first, estimate0, estimates),
        log_marginal=jnp.sum(log_marginals),
        log_marginals=log_marginals,
        ess=with_first(effective_sample_size(log_weights), ess),
        degenerate_step=degenerate,
        means=with_first(_moments(particles, log_weights)[0], means),
        particles=last,
        log_weights=last_log_weights,
        statistics=last_statistics,
    )
