r"""The loop of Hamiltonian SMC: propagate, temper in the new likelihood, resample, move by HMC.

Each particle carries a window of the last L + 1 states $x_{t-L:t}$ and the state before it
(the anchor $x_{t-L-1}$). At step t the new state is drawn from the transition; the likelihood
$g(y_t \mid x_t)$ then enters in stages, $g^{\beta_1}, g^{\beta_2 - \beta_1}, \dots$ up to
$\beta = 1$, each increment chosen by bisection so that the incremental weights keep an
effective sample size of `target_ess` times the particles that can carry weight (one stage of
weight 1 without tempering). After each stage's reweighting the particles are resampled and
moved by a few HMC steps (blackjax) that leave the window's conditional law
$$\pi_\beta(x_{t-L:t}) \propto \prod_{s=t-L}^{t} f(x_s \mid x_{s-1})
  \prod_{s=t-L}^{t-1} g(y_s \mid x_s)\; g(y_t \mid x_t)^{\beta}$$
(with $x_{t-L-1}$ the anchor, and $p(x_0)$ in place of the transition at s = 0) invariant: an
MCMC move on the path space of the current target, so the weights need no correction
(resample-move). The likelihood estimate multiplies the stages' mean incremental weights and is
unbiased for fixed temperatures; the adaptive choice adds a bias that vanishes as N grows.

The HMC metric is fixed over a step's stages: from a Gaussian filter's covariances
("gaussian"), the variance per coordinate of the other particles right after the propagation
("particles"), or the identity; the step size
follows the acceptance rate from stage to stage (and step to step) towards
`target_acceptance`.

References:
    Gilks, W. R. and Berzuini, C. (2001). Following a moving target: Monte Carlo inference for
    dynamic Bayesian models. JRSS B 63(1).
    Neal, R. M. (2001). Annealed importance sampling. Statistics and Computing 11.
    Herbst, E. and Schorfheide, F. (2019). Tempered particle filtering. Journal of
    Econometrics 210(1).
    Xu, D. (2021). Learning nonlinear state space models with Hamiltonian sequential Monte
    Carlo sampler. arXiv:2102.00698.
"""

from __future__ import annotations

from typing import NamedTuple

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from .._types import Array, Bool, Float, Int, Key
from ..data import Observations
from ..ssm import StepInputs
from ._observed_log_prob import observed_log_likelihoods
from ._proposals import sample_each
from ._resampling import RESAMPLERS, effective_sample_size
from ._tempering import increment_weights, next_increment

# Bounds on the adapted HMC step size (in units of the metric).
_MIN_STEP, _MAX_STEP = 1e-4, 4.0


class HMCSettings(NamedTuple):
    num_particles: int
    lag: int
    tempering: bool
    target_ess: float
    max_stages: int
    resampling: str
    num_hmc_steps: int
    num_integration_steps: int
    target_acceptance: float
    adapt_step_size: bool
    metric: str


class Window(NamedTuple):
    """What the window density at step t conditions on: for each of its L + 1 slots (times
    t - L .. t), the row of y, which entries count, and the inputs of its emission and of the
    transition into it."""

    times: Int[Array, " W"]
    y: Float[Array, "W M"]
    observed: Bool[Array, "W M"]
    emission_steps: StepInputs
    transition_steps: StepInputs


def window_at(data: Observations, t: Int[Array, ""], lag: int) -> Window:
    times = t - lag + jnp.arange(lag + 1)
    at = jnp.clip(times, 0, data.num_timesteps - 1)
    before = jnp.clip(times - 1, 0, data.num_timesteps - 1)
    observed = data.observed[at] & (times >= 0)[:, None]
    return Window(
        times,
        data.values[at],
        observed,
        jax.tree.map(lambda a: a[at], data.steps),
        jax.tree.map(lambda a: a[before], data.steps),
    )


def _log_likelihood(model, x: Array, y, observed, step) -> Float[Array, ""]:
    emission = lambda state: model.emission(state, step)  # noqa: E731
    return observed_log_likelihoods(emission, x[None], y, observed)[0]


def window_terms(
    model, states: Float[Array, " W *E"], anchor: Array, window: Window
) -> tuple[Float[Array, " W"], Float[Array, " W"]]:
    """Per slot of one particle's window: log f(x_s | x_{s-1}) (log p(x_0) at s = 0) and
    log g(y_s | x_s); zero for slots before the series starts."""
    previous = jnp.concatenate([anchor[None], states[:-1]])

    def prior_term(prev, x, time, emission_step, transition_step):
        initial = jnp.sum(model.initial(emission_step).log_prob(x))
        moved = jnp.sum(model.transition(prev, transition_step).log_prob(x))
        return jnp.where(time == 0, initial, jnp.where(time > 0, moved, 0.0))

    prior = jax.vmap(prior_term)(
        previous, states, window.times, window.emission_steps, window.transition_steps
    )
    likelihood = jax.vmap(lambda x, y, o, s: _log_likelihood(model, x, y, o, s))(
        states, window.y, window.observed, window.emission_steps
    )
    return prior, likelihood


def window_log_density(
    model, states: Float[Array, " W *E"], anchor: Array, window: Window, beta
) -> Float[Array, ""]:
    """log pi_beta of one particle's window (see the module's docstring)."""
    prior, likelihood = window_terms(model, states, anchor, window)
    powers = jnp.ones_like(likelihood).at[-1].set(beta)
    return jnp.sum(prior) + jnp.sum(powers * likelihood)


def score_terms(model, states, anchors, window: Window, slots: slice) -> Float[Array, ""]:
    r"""The particles' mean of $\log f_\theta + \log g_\theta$ over the window's `slots`, with
    the states held fixed: its gradient in the model is the fixed-lag estimate of those steps'
    share of the score (Fisher's identity)."""
    states, anchors = jax.lax.stop_gradient((states, anchors))

    def one(states, anchor):
        prior, likelihood = window_terms(model, states, anchor, window)
        return jnp.sum(prior[slots]) + jnp.sum(likelihood[slots])

    return jnp.mean(jax.vmap(one)(states, anchors))


def inverse_mass(states: Float[Array, "N W *E"], settings: HMCSettings, fixed):
    """The HMC metric of a step: (K,) or (K, K) shared by all particles, or (N, K) one each.

    "particles" gives each particle the variance per coordinate of the others, computed once a
    step, right after the propagation (fresh draws, no duplicates). A metric that includes the
    particle's own position is no longer a fixed kernel for it: re-estimated at every stage
    from the resampled cloud (whose duplicates are the particle itself), the cloud's variance
    shrank by 17% over 40 moves started at the exact target (D = 50, N = 128), and the
    log-likelihood estimate came out 19 nats too high on a 5-step series.
    """
    flat = states.reshape(states.shape[0], -1)
    if settings.metric == "gaussian":
        return fixed
    if settings.metric == "identity":
        return jnp.ones(flat.shape[1], flat.dtype)
    num = flat.shape[0]
    if num == 1:
        return jnp.ones_like(flat)
    others_mean = (jnp.sum(flat, 0) - flat) / (num - 1)
    others_square = (jnp.sum(flat**2, 0) - flat**2) / (num - 1)
    variance = jnp.maximum(others_square - others_mean**2, 0.0)
    largest = jnp.max(variance, axis=1, keepdims=True)
    floor = jnp.where(largest > 0, 1e-8 * largest, 1.0)
    return jnp.maximum(variance, floor)


def hmc_moves(
    model,
    key: Key,
    states: Float[Array, "N W *E"],
    anchors: Float[Array, " N *E"],
    window: Window,
    beta,
    step_size,
    metric,
    settings: HMCSettings,
):
    """`num_hmc_steps` HMC steps for every particle's window; (moved windows, mean acceptance
    probability)."""

    def one(key, position, anchor, metric):
        def log_density(s):
            return window_log_density(model, s, anchor, window, beta)

        kernel = blackjax.hmc(log_density, step_size, metric, settings.num_integration_steps)
        state = kernel.init(position)

        def body(state, key):
            state, info = kernel.step(key, state)
            return state, info.acceptance_rate

        state, rates = jax.lax.scan(body, state, jax.random.split(key, settings.num_hmc_steps))
        return state.position, jnp.mean(rates)

    keys = jax.random.split(key, states.shape[0])
    per_particle = metric.ndim == 2 and settings.metric == "particles"
    moved, rates = jax.vmap(one, in_axes=(0, 0, 0, 0 if per_particle else None))(
        keys, states, anchors, metric
    )
    return moved, jnp.mean(jnp.where(jnp.isnan(rates), 0.0, rates))


class StageCarry(NamedTuple):
    states: Array  # (N, W, *E)
    anchors: Array  # (N, *E)
    beta: Float[Array, ""]  # the temperature the particles are distributed at
    target: Float[Array, ""]  # the next stage's temperature
    ancestors: Int[Array, " N"]  # the next stage's resampling
    log_increment: Float[Array, ""]
    step_size: Float[Array, ""]
    key: Key
    num_stages: Int[Array, ""]
    acceptance: Float[Array, ""]  # sum over stages
    min_ess: Float[Array, ""]
    alive: Bool[Array, ""]


def assimilate(model, settings: HMCSettings, carry: StageCarry, window: Window, metric):
    """Bring y_t into the particles (stages until beta = 1); the carry's beta starts at 0.

    A stage's reweighting and resampling are computed at the end of the loop's previous
    iteration (or before the loop) and reach the moves through the loop's carry: computed in
    the same iteration as the gather and the moves, XLA fused the resampling's prefix sums
    into their consumers, and a stage took 50 ms instead of 1.3 ms at N = 256.
    """
    num = settings.num_particles
    log_num = jnp.log(jnp.asarray(num, carry.step_size.dtype))
    y_t, observed_t = window.y[-1], window.observed[-1]
    step_t = jax.tree.map(lambda a: a[-1], window.emission_steps)

    def weigh(c: StageCarry) -> StageCarry:
        """The next stage's temperature, incremental weights and ancestors (when beta < 1)."""
        key, key_resample = jax.random.split(c.key)
        log_lik = observed_log_likelihoods(
            lambda x: model.emission(x, step_t), c.states[:, -1], y_t, observed_t
        )
        log_lik = jnp.where(jnp.isnan(log_lik), -jnp.inf, log_lik)
        remaining = 1.0 - c.beta
        last = c.num_stages >= settings.max_stages - 1
        if settings.tempering:
            delta = next_increment(log_lik, remaining, settings.target_ess)
            delta = jnp.where(last, remaining, delta)
        else:
            delta = remaining
        log_weights = increment_weights(log_lik, delta)
        total = logsumexp(log_weights)
        alive = jnp.isfinite(total)
        normalised = jnp.where(alive, log_weights - total, -log_num)
        ancestors = RESAMPLERS[settings.resampling](key_resample, normalised)
        target = jnp.where(alive & (delta < remaining), c.beta + delta, 1.0)
        more = c.beta < 1.0
        return c._replace(
            target=target,
            ancestors=ancestors,
            log_increment=c.log_increment
            + jnp.where(more, jnp.where(alive, total - log_num, -jnp.inf), 0.0),
            key=key,
            num_stages=c.num_stages + more.astype(jnp.int32),
            min_ess=jnp.where(
                more, jnp.minimum(c.min_ess, effective_sample_size(normalised)), c.min_ess
            ),
            alive=c.alive & (alive | ~more),
        )

    def stage(c: StageCarry) -> StageCarry:
        key, key_move = jax.random.split(c.key)
        states, anchors = c.states[c.ancestors], c.anchors[c.ancestors]
        states, rate = hmc_moves(
            model, key_move, states, anchors, window, c.target, c.step_size, metric, settings
        )
        step_size = c.step_size
        if settings.adapt_step_size:
            step_size = step_size * jnp.exp(rate - settings.target_acceptance)
            step_size = jnp.clip(step_size, _MIN_STEP, _MAX_STEP)
        moved = c._replace(
            states=states,
            anchors=anchors,
            beta=c.target,
            step_size=step_size,
            key=key,
            acceptance=c.acceptance + rate,
        )
        return weigh(moved)

    return jax.lax.while_loop(lambda c: c.beta < 1.0, stage, weigh(carry))


class StepOutput(NamedTuple):
    log_marginal: Float[Array, ""]
    filtered: tuple  # (mean, variance) of x_t, flattened
    lagged: tuple  # (mean, variance) of x_{t-L}
    ess: Float[Array, ""]
    num_stages: Int[Array, ""]
    acceptance_rate: Float[Array, ""]
    step_size: Float[Array, ""]
    alive: Bool[Array, ""]


def _moments(states: Array) -> tuple[Array, Array]:
    flat = states.reshape(states.shape[0], -1)
    return jnp.mean(flat, 0), jnp.var(flat, 0)


def _start(states, anchors, step_size, key) -> StageCarry:
    dtype = step_size.dtype
    return StageCarry(
        states,
        anchors,
        jnp.zeros((), dtype),
        jnp.zeros((), dtype),
        jnp.zeros(states.shape[0], jnp.int32),
        jnp.zeros((), dtype),
        step_size,
        key,
        jnp.zeros((), jnp.int32),
        jnp.zeros((), dtype),
        jnp.asarray(jnp.inf, dtype),
        jnp.asarray(True),
    )


def _output(carry: StageCarry, step_size_used) -> StepOutput:
    return StepOutput(
        carry.log_increment,
        _moments(carry.states[:, -1]),
        _moments(carry.states[:, 0]),
        carry.min_ess,
        carry.num_stages,
        carry.acceptance / carry.num_stages,
        step_size_used,
        carry.alive,
    )


class HMCSMCRun(NamedTuple):
    outputs: StepOutput  # stacked over the T steps
    states: Array  # (N, W, *E): the last windows
    score_surrogate: Float[Array, ""]  # zero-valued gradients aside: see `score_terms`


def _frozen(model):
    """The model with its arrays cut off from differentiation: the sampler (its while loops)
    runs on this one, and only `score_terms` sees the live parameters."""
    return jax.tree.map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, model)


def run_hmc_smc(
    model, data: Observations, key: Key, settings: HMCSettings, step_size, fixed_metrics=None
) -> HMCSMCRun:
    """All T steps; `fixed_metrics` (T, K, K) holds the "gaussian" metric of each step."""
    live, model = model, _frozen(model)
    num, lag = settings.num_particles, settings.lag
    dtype = data.values.dtype
    step_size = jnp.asarray(step_size, dtype)
    key_initial, key_first, key_rest = jax.random.split(key, 3)
    first_window = window_at(data, jnp.asarray(0), lag)
    x0 = model.initial(data.step(0)).sample(seed=key_initial, sample_shape=(num,))
    x0 = x0.astype(dtype)
    states = jnp.broadcast_to(x0[:, None], (num, lag + 1, *x0.shape[1:]))
    metric0 = inverse_mass(states, settings, None if fixed_metrics is None else fixed_metrics[0])
    carry = assimilate(
        model, settings, _start(states, x0, step_size, key_first), first_window, metric0
    )
    first = _output(carry, step_size)
    # the oldest slot of each window is final: its terms enter the score once, here
    oldest = slice(0, 1)
    score0 = score_terms(live, carry.states, carry.anchors, first_window, oldest)

    def step(carry, args):
        states, _, step_size = carry
        t, key = args
        key_move, key_stages = jax.random.split(key)
        prev_step = data.step(t - 1)
        new = sample_each(lambda x: model.transition(x, prev_step), key_move, states[:, -1])
        anchors = states[:, 0]
        states = jnp.concatenate([states[:, 1:], new[:, None].astype(dtype)], axis=1)
        metric = inverse_mass(states, settings, None if fixed_metrics is None else fixed_metrics[t])
        window = window_at(data, t, lag)
        out = assimilate(
            model, settings, _start(states, anchors, step_size, key_stages), window, metric
        )
        score = score_terms(live, out.states, out.anchors, window, oldest)
        return (out.states, out.anchors, out.step_size), (_output(out, step_size), score)

    times = jnp.arange(1, data.num_timesteps)
    keys = jax.random.split(key_rest, data.num_timesteps - 1)
    start = (carry.states, carry.anchors, carry.step_size)
    (states, anchors, _), (rest, scores) = jax.lax.scan(step, start, (times, keys))
    outputs = jax.tree.map(
        lambda a, b: jnp.concatenate([jnp.asarray(a)[None].astype(b.dtype), b]), first, rest
    )
    last_window = window_at(data, jnp.asarray(data.num_timesteps - 1), lag)
    tail = score_terms(live, states, anchors, last_window, slice(1, None))
    return HMCSMCRun(outputs, states, score0 + jnp.sum(scores) + tail)
