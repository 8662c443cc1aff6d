r"""Adaptive tempered SMC over a flat vector of unconstrained parameters: the compiled core of
`bs.sample_smc`.

One run moves N particles from the prior $\pi_0(u) = p(u)$ to the posterior
$\pi_1(u) \propto p(u)\, p(y \mid u)$ through $\pi_\beta(u) \propto p(u)\, p(y \mid u)^\beta$,
$0 = \beta_0 < \beta_1 < \dots < \beta_K = 1$. Each stage

1. picks $\beta_{k+1} = \beta_k + \delta$ by bisection so that the effective sample size of the
   incremental weights $w_i = p(y \mid u_i)^\delta$ is `target_ess` times N (or $\delta$ takes the
   rest of the way to 1 when even that keeps the ESS above it),
2. adds $\log \frac1N \sum_i w_i$ to the run's log-evidence,
3. resamples (systematic) and
4. moves every particle by a few steps of a Markov kernel that leaves $\pi_{\beta_{k+1}}$
   invariant, tuned on the weighted particles (their variance as HMC's inverse mass matrix, or
   their covariance as the random walk's shape).

The particles' log-likelihoods are carried along: with a random engine they are the estimates
made when each particle was proposed, reused in the reweighting and in the Metropolis-Hastings
ratios (Duan and Fulop 2015), so at $\beta = 1$ the particles target the exact posterior and the
product of the mean weights is an unbiased estimate of the evidence.
"""

from __future__ import annotations

from collections.abc import Callable

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from .._types import Array, Float, Int, Key
from ..inference._resampling import RESAMPLERS
from ..inference._tempering import increment_weights, next_increment

# The optimal random-walk scale for a Gaussian target in d dimensions is 2.38 / sqrt(d) times
# the target's covariance (Roberts, Gelman and Gilks 1997).
_OPTIMAL_SCALE = 2.38
_RESAMPLING = "systematic"


class Settings(eqx.Module):
    """Arrays, not static values: runs with other targets reuse the compiled sampler."""

    target_ess: Float[Array, ""]
    target_acceptance: Float[Array, ""]
    initial_log_step: Float[Array, ""]


class RunState(eqx.Module):
    """One run of the tempering, as the while loop carries it."""

    position: Float[Array, "N d"]
    log_likelihood: Float[Array, " N"]  # exact, or the estimate kept with each particle
    log_prior: Float[Array, " N"]  # log prior + log|det J|
    beta: Float[Array, ""]
    log_evidence: Float[Array, ""]
    log_step: Float[Array, ""]  # log of HMC's step size (unused by the random walk)
    stage: Int[Array, ""]
    temperatures: Float[Array, " S1"]  # beta after each stage; NaN after the last
    acceptance: Float[Array, " S"]  # mean acceptance rate of each stage's moves; NaN after
    key: Key


def _finite_or_minus_inf(x: Array) -> Array:
    return jnp.where(jnp.isnan(x) | (x == jnp.inf), -jnp.inf, x)


def _weighted_moments(position: Float[Array, "N d"], log_weights: Float[Array, " N"]):
    """Mean (d,), variance (d,) and covariance (d, d) under normalised log-weights."""
    weights = jnp.exp(log_weights)
    mean = weights @ position
    centred = position - mean
    covariance = (centred * weights[:, None]).T @ centred
    return mean, jnp.diagonal(covariance), covariance


def _ridge(scale: Array, dtype) -> Array:
    """A floor for variances: degenerate particles (all equal) still give a valid metric."""
    return 100 * jnp.finfo(dtype).eps * (1.0 + scale)


def run(
    position: Float[Array, "N d"],
    key: Key,
    log_likelihood: Callable,
    log_prior: Callable,
    settings: Settings,
    *,
    kernel: str,
    random_likelihood: bool,
    num_mcmc_steps: int,
    num_integration_steps: int,
    max_stages: int,
) -> RunState:
    """One tempering run from prior draws `position` to beta = 1 (or `max_stages` stages).

    `log_likelihood(u, key)` gives log p(y | u) (exact, or a fresh estimate for a random engine;
    key None for an exact one); `log_prior(u)` the log prior plus the log-Jacobian.
    """
    num, _ = position.shape
    dtype = position.dtype

    def likelihoods(positions, key):
        if random_likelihood:
            keys = jax.random.split(key, positions.shape[0])
            return jax.vmap(log_likelihood)(positions, keys)
        return jax.vmap(lambda u: log_likelihood(u, None))(positions)

    key, key_start = jax.random.split(key)
    start = RunState(
        position=position,
        log_likelihood=_finite_or_minus_inf(likelihoods(position, key_start)),
        log_prior=_finite_or_minus_inf(jax.vmap(log_prior)(position)),
        beta=jnp.zeros((), dtype),
        log_evidence=jnp.zeros((), dtype),
        log_step=settings.initial_log_step.astype(dtype),
        stage=jnp.zeros((), jnp.int32),
        temperatures=jnp.full((max_stages + 1,), jnp.nan, dtype).at[0].set(0.0),
        acceptance=jnp.full((max_stages,), jnp.nan, dtype),
        key=key,
    )

    def go_on(state: RunState):
        return (state.beta < 1.0) & (state.stage < max_stages)

    def stage(state: RunState) -> RunState:
        key, key_resample, key_move = jax.random.split(state.key, 3)
        remaining = 1.0 - state.beta
        delta = next_increment(state.log_likelihood, remaining, settings.target_ess)
        last = delta >= remaining
        beta = jnp.where(last, jnp.ones_like(state.beta), state.beta + delta)
        delta = beta - state.beta

        log_weights = increment_weights(state.log_likelihood, delta)
        total = logsumexp(log_weights)
        log_evidence = state.log_evidence + total - jnp.log(jnp.asarray(num, dtype))
        log_weights = log_weights - total
        _, variance, covariance = _weighted_moments(state.position, log_weights)

        ancestors = RESAMPLERS[_RESAMPLING](key_resample, log_weights)
        position = state.position[ancestors]
        ll = state.log_likelihood[ancestors]
        lp = state.log_prior[ancestors]

        if kernel == "rwmh":
            position, ll, lp, acceptance = _random_walk(
                key_move, position, ll, lp, beta, covariance, likelihoods, log_prior,
                num_mcmc_steps,
            )  # fmt: skip
            log_step = state.log_step
        else:
            inverse_mass = variance + _ridge(jnp.mean(variance), dtype)
            position, acceptance = _hamiltonian(
                key_move, position, beta, inverse_mass, jnp.exp(state.log_step),
                lambda u: log_likelihood(u, None), log_prior, kernel, num_mcmc_steps,
                num_integration_steps,
            )  # fmt: skip
            ll = _finite_or_minus_inf(likelihoods(position, None))
            lp = _finite_or_minus_inf(jax.vmap(log_prior)(position))
            # A multiplicative (log-scale) Robbins-Monro-like step towards the target rate:
            # too many rejections shrink the step, too few grow it; one stage's mean rate over
            # N particles and all moves is an almost noise-free signal, so a unit gain is safe.
            log_step = state.log_step + (acceptance - settings.target_acceptance)

        return RunState(
            position=position,
            log_likelihood=ll,
            log_prior=lp,
            beta=beta,
            log_evidence=log_evidence,
            log_step=log_step,
            stage=state.stage + 1,
            temperatures=state.temperatures.at[state.stage + 1].set(beta),
            acceptance=state.acceptance.at[state.stage].set(acceptance),
            key=key,
        )

    return jax.lax.while_loop(go_on, stage, start)


def _random_walk(
    key, position, ll, lp, beta, covariance, likelihoods, log_prior, num_steps
) -> tuple:
    """Gaussian random-walk Metropolis-Hastings targeting p(u) p(y | u)^beta, proposal
    covariance (2.38^2 / d) times the particles' covariance. Each particle keeps the
    log-likelihood (estimate) of its current point; a proposal gets a fresh one."""
    num, dim = position.shape
    dtype = position.dtype
    scaled = (_OPTIMAL_SCALE**2 / dim) * covariance
    ridge = _ridge(jnp.trace(scaled) / dim, dtype)
    chol = jnp.linalg.cholesky(scaled + ridge * jnp.eye(dim, dtype=dtype))

    def one_step(carry, key):
        position, ll, lp = carry
        key_noise, key_ll, key_accept = jax.random.split(key, 3)
        noise = jax.random.normal(key_noise, position.shape, dtype)
        proposal = position + noise @ chol.T
        ll_new = _finite_or_minus_inf(likelihoods(proposal, key_ll))
        lp_new = _finite_or_minus_inf(jax.vmap(log_prior)(proposal))
        log_ratio = (lp_new + increment_weights(ll_new, beta)) - (lp + increment_weights(ll, beta))
        log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
        uniform = jax.random.uniform(key_accept, (num,), dtype)
        accepted = jnp.log(uniform) < log_ratio
        position = jnp.where(accepted[:, None], proposal, position)
        ll = jnp.where(accepted, ll_new, ll)
        lp = jnp.where(accepted, lp_new, lp)
        return (position, ll, lp), jnp.mean(jnp.exp(jnp.minimum(log_ratio, 0.0)))

    keys = jax.random.split(key, num_steps)
    (position, ll, lp), rates = jax.lax.scan(one_step, (position, ll, lp), keys)
    return position, ll, lp, jnp.mean(rates)


def _hamiltonian(
    key,
    position,
    beta,
    inverse_mass,
    step_size,
    log_likelihood,
    log_prior,
    kernel,
    num_steps,
    num_integration_steps,
) -> tuple:
    """`num_steps` blackjax HMC or NUTS steps per particle, targeting p(u) p(y | u)^beta."""

    def density(u):
        return _finite_or_minus_inf(log_prior(u) + beta * log_likelihood(u))

    if kernel == "hmc":
        algorithm = blackjax.hmc(density, step_size, inverse_mass, num_integration_steps)
    else:
        algorithm = blackjax.nuts(density, step_size, inverse_mass)
    states = jax.vmap(algorithm.init)(position)
    num = position.shape[0]

    def one_step(states, key):
        states, info = jax.vmap(algorithm.step)(jax.random.split(key, num), states)
        rate = jnp.where(jnp.isfinite(info.acceptance_rate), info.acceptance_rate, 0.0)
        return states, jnp.mean(rate)

    states, rates = jax.lax.scan(one_step, states, jax.random.split(key, num_steps))
    return states.position, jnp.mean(rates).astype(position.dtype)
