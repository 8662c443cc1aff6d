"""Posterior sampling of the fitted leaves by particle marginal Metropolis-Hastings."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._checks import check_positive_int
from .._jit import filter_jit
from .._types import Array, Float, Key
from ..diagnostics import to_arviz
from ..inference.smc import ParticleFilter
from ._objective import Objective
from ._progress import progress_bar
from ._selection import Selection, perturbed_starts
from .mcmc import _predict

# Steps per compiled call between progress-bar updates.
_CHUNK = 100
# The optimal random-walk scale for a Gaussian target in d dimensions is 2.38 / sqrt(d) times
# the target's covariance (Roberts, Gelman and Gilks 1997).
_OPTIMAL_SCALE = 2.38
# Weight, in draws, of the previous covariance estimate against the new window's draws.
_ANCHOR_WEIGHT = 10.0
# Robbins-Monro gains (n + 1)^-0.6: summable squares, non-summable sum.
_GAIN_DECAY = 0.6


def sample_pmmh(
    model,
    y,
    *,
    where,
    priors,
    key: Key,
    num_samples: int = 1000,
    num_warmup: int = 1000,
    num_chains: int = 4,
    engine=None,
    inputs=None,
    initial_scale: float = 0.1,
    target_acceptance: float = 0.234,
    init_jitter: float = 0.1,
    pointwise_log_likelihood: bool = True,
    posterior_predictive: bool = False,
    progress: bool = True,
    dims: dict | None = None,
    coords: dict | None = None,
):
    r"""Posterior draws of the leaves picked by `where`, by particle marginal Metropolis-Hastings.

    A Gaussian random walk on the unconstrained arrays $u$ of the fitted leaves, accepted with
    probability
    $$\min\Bigl(1, \frac{\hat p(y \mid u')\, p(u')}{\hat p(y \mid u)\, p(u)}\Bigr),
    \qquad p(u) = p(\theta(u))\, |\det J_\theta(u)|,$$
    where $\hat p(y \mid u)$ is the engine's estimate of the likelihood (`engine.log_marginal`).
    The estimate at the current point is kept, never recomputed: for an unbiased estimate (a
    particle filter's) the chain then targets the exact posterior whatever the number of
    particles. With an exact engine (`bs.Kalman`) this is plain random-walk Metropolis.

    During warm-up each chain adapts its proposal covariance $\lambda^2 \hat\Sigma$: $\hat\Sigma$
    is the empirical covariance of the chain's draws (the first quarter of the warm-up, then
    the rest, each shrunk towards the previous estimate), and $\log \lambda$, which starts at
    $\log(2.38 / \sqrt d)$, follows a Robbins-Monro recursion towards `target_acceptance`. The
    proposal is frozen for the draws that are kept, so they come from a fixed Markov kernel.

    Every chain's first step is accepted (its starting log-likelihood is not computed); choose
    `num_warmup` > 0 to discard it.

    Args:
        model: the model; its values (jittered by `init_jitter` in the unconstrained space) start
            the chains.
        y: observations (T, M) or (T,) with NaN for missing entries, or a batch (B, T, M).
        where: the leaves to sample, as in `equinox.tree_at`.
        priors: one distribution per leaf of `where` (numpyro or distrax), on its value.
        key: PRNG key.
        num_samples: draws kept per chain.
        num_warmup: adaptation steps per chain (discarded); 0 keeps the initial proposal.
        num_chains: independent chains, run together under `vmap`.
        engine: any engine with `log_marginal(model, data, key)`; default
            `bs.ParticleFilter(num_particles=1000)`. Choose the number of particles so that the
            log-likelihood estimate's standard deviation near the posterior is about 1 to 1.5
            (Doucet et al. 2015); `sample_stats.log_marginal` holds the estimates.
        inputs: control inputs (T, U).
        initial_scale: standard deviation of the initial proposal per unconstrained coordinate.
        target_acceptance: the acceptance rate the warm-up aims at; 0.234 is optimal for exact
            likelihoods in many dimensions, noisy ones do best lower (about 0.07 to 0.15,
            Sherlock et al. 2015).
        init_jitter: standard deviation of the jitter of each chain's start.
        pointwise_log_likelihood: store log p(y_t | y_{0:t-1}) per draw (an estimate from a
            random engine's filter) in the log_likelihood group, for `arviz.loo`.
        posterior_predictive: also draw y from the model at every posterior draw.
        progress: show a progress bar.
        dims, coords: passed to `bs.to_arviz` to name the dimensions.

    Returns:
        `arviz.InferenceData` with groups posterior (the values, constrained; chains (C, S)),
        sample_stats (acceptance_rate: the Metropolis-Hastings acceptance probability of each
        step; accepted; log_marginal: the kept estimate of log p(y | theta); lp: that plus the
        log prior and log-Jacobian; step_size: lambda), observed_data, log_likelihood when asked
        (and the engine has a `filter`), and posterior_predictive when asked.

    Raises:
        TypeError: the engine has no `log_marginal`.
        ValueError: `where` selects nothing, a fitted leaf has no prior, bad counts or scales,
            or non-finite starting values.

    References:
        Andrieu, C., Doucet, A. and Holenstein, R. (2010). Particle Markov chain Monte Carlo
        methods. JRSS B 72(3).
        Haario, H., Saksman, E. and Tamminen, J. (2001). An adaptive Metropolis algorithm.
        Bernoulli 7(2).
        Andrieu, C. and Thoms, J. (2008). A tutorial on adaptive MCMC. Statistics and
        Computing 18.
        Doucet, A., Pitt, M. K., Deligiannidis, G. and Kohn, R. (2015). Efficient implementation
        of Markov chain Monte Carlo when using an unbiased likelihood estimator. Biometrika
        102(2).
        Sherlock, C., Thiery, A. H., Roberts, G. O. and Rosenthal, J. S. (2015). On the
        efficiency of pseudo-marginal random walk Metropolis algorithms. Annals of Statistics
        43(1).
    """
    engine = ParticleFilter(num_particles=1000) if engine is None else engine
    if not callable(getattr(engine, "log_marginal", None)):
        raise TypeError(
            f"engine must have a log_marginal(model, data, key) method (e.g. bs.ParticleFilter "
            f"or bs.Kalman), got {type(engine).__name__}."
        )
    selection = Selection(model, where, priors)
    selection.require_priors("sample_pmmh")
    for name, value in (("num_samples", num_samples), ("num_chains", num_chains)):
        check_positive_int(name, value)
    if isinstance(num_warmup, bool) or not isinstance(num_warmup, int | np.integer):
        raise ValueError(f"num_warmup must be a non-negative int, got {num_warmup!r}.")
    if num_warmup < 0:
        raise ValueError(f"num_warmup must be a non-negative int, got {num_warmup!r}.")
    _check_number("initial_scale", initial_scale, low=0.0)
    _check_number("target_acceptance", target_acceptance, low=0.0, high=1.0)
    _check_number("init_jitter", init_jitter, low=0.0, allow_low=True)
    if key is None:
        raise ValueError("sample_pmmh needs key=jax.random.key(...).")
    objective = Objective(model, y, engine=engine, inputs=inputs)
    y_all = objective.device_y()

    start = selection.params(model)
    bad = selection.non_finite(start)
    if bad:
        raise ValueError(f"The starting values of {', '.join(bad)} are not finite.")
    key_init, key_run, key_post = jax.random.split(key, 3)
    starts = perturbed_starts(start, num_chains, init_jitter, key_init)
    target = _Target(selection, objective)
    settings = _Settings(
        jnp.asarray(num_warmup), jnp.asarray(target_acceptance), jnp.asarray(num_warmup // 4)
    )
    chains = _initial_chains(starts, start, float(initial_scale))

    total = int(num_warmup) + num_samples
    chunks = []
    with progress_bar(total, progress, "sample_pmmh") as bar:
        done = 0
        while done < total:
            size = min(_CHUNK, total - done)
            key_run, k = jax.random.split(key_run)
            keys = jax.random.split(k, (num_chains, size))
            steps = jnp.arange(done, done + size)
            chains, out = _advance(chains, steps, keys, model, y_all, start, target, settings)
            chunks.append(jax.device_get(out))
            done += size
            bar.update(size, acceptance=float(chunks[-1].accepted.mean()))
    out = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1)[:, num_warmup:], *chunks)
    return _inference_data(
        selection, objective, model, y_all, start, out, np.exp(np.asarray(chains.log_step)),
        key_post, pointwise_log_likelihood, posterior_predictive, dims, coords,
    )  # fmt: skip


def _check_number(name, value, low, high=None, allow_low=False) -> None:
    ok = isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)
    ok = ok and np.isfinite(value) and (value >= low if allow_low else value > low)
    ok = ok and (high is None or value < high)
    if not ok:
        bounds = (
            f"in ({low}, {high})" if high is not None else f"{'>=' if allow_low else '>'} {low}"
        )
        raise ValueError(f"{name} must be a number {bounds}, got {value!r}.")


class _Settings(eqx.Module):
    """Arrays, not static values: runs of other lengths or targets reuse the compiled sampler."""

    num_warmup: Array
    target_acceptance: Array
    window_start: Array  # the step at which the covariance estimate restarts


@dataclasses.dataclass(frozen=True)
class _Target:
    """Log-likelihood estimate and log prior (with the log-Jacobian) of a flat vector of the
    unconstrained arrays; hashable, so compiled samplers are reused across calls."""

    selection: Selection
    objective: Objective

    def bind(self, model, y, template):
        """Functions of the flat vector; `template` is a pytree of the fitted nodes."""
        dynamic, static = eqx.partition(template, eqx.is_inexact_array)
        _, unravel = ravel_pytree(dynamic)

        def params(flat):
            return eqx.combine(unravel(flat), static)

        def log_likelihood(flat, key):
            fitted = self.selection.rebuild(model, params(flat))
            return self.objective.log_likelihood(fitted, y, key)

        def log_prior(flat):
            p = params(flat)
            return self.selection.log_prior(p) + self.selection.log_abs_det_jacobian(p)

        return params, log_likelihood, log_prior


def _flatten(params) -> Array:
    return ravel_pytree(eqx.filter(params, eqx.is_inexact_array))[0]


class _Chain(eqx.Module):
    """One chain's state: where it is, and its proposal's adaptation."""

    position: Float[Array, " d"]
    log_likelihood: Float[Array, ""]  # the kept estimate at `position`
    log_prior: Float[Array, ""]  # log prior + log|det J| at `position`
    log_step: Float[Array, ""]  # log lambda
    anchor: Float[Array, "d d"]  # the previous window's covariance estimate
    mean: Float[Array, " d"]  # Welford running mean of this window's draws
    scatter: Float[Array, "d d"]  # sum of outer products of their deviations
    count: Float[Array, ""]  # draws in this window

    def shape(self) -> Float[Array, "d d"]:
        """Covariance estimate: the window's draws shrunk towards the anchor."""
        return (_ANCHOR_WEIGHT * self.anchor + self.scatter) / (_ANCHOR_WEIGHT + self.count)


def _initial_chains(starts, start, initial_scale: float) -> _Chain:
    positions = jax.vmap(_flatten)(starts)
    num_chains, dim = positions.shape
    dtype = positions.dtype
    log_step = jnp.log(_OPTIMAL_SCALE / np.sqrt(dim))
    # lambda^2 * anchor = initial_scale^2 * I at the start.
    anchor = (initial_scale * np.sqrt(dim) / _OPTIMAL_SCALE) ** 2 * jnp.eye(dim, dtype=dtype)
    batch = lambda x: jnp.broadcast_to(jnp.asarray(x, dtype), (num_chains, *jnp.shape(x)))  # noqa: E731
    return _Chain(
        position=positions,
        # -inf: the first proposal is always accepted (saves a compiled start-up call).
        log_likelihood=batch(-jnp.inf),
        log_prior=batch(0.0),
        log_step=batch(log_step),
        anchor=batch(anchor),
        mean=batch(jnp.zeros(dim)),
        scatter=batch(jnp.zeros((dim, dim))),
        count=batch(0.0),
    )


class _StepInfo(eqx.Module):
    position: Float[Array, " d"]
    log_marginal: Float[Array, ""]
    lp: Float[Array, ""]
    acceptance_rate: Float[Array, ""]
    accepted: Array


@filter_jit
def _advance(chains, steps, keys, model, y, template, target: _Target, settings: _Settings):
    """Run every chain through the global step indices `steps` (K,), keys (C, K)."""
    _, log_likelihood, log_prior = target.bind(model, y, template)

    def one_chain(chain, keys):
        def body(chain, inputs):
            step, key = inputs
            return _step(chain, step, key, log_likelihood, log_prior, settings)

        return jax.lax.scan(body, chain, (steps, keys))

    return jax.vmap(one_chain)(chains, keys)


def _step(chain: _Chain, step, key, log_likelihood, log_prior, settings: _Settings):
    """One Metropolis-Hastings step, then (during warm-up) one adaptation step."""
    adapting = step < settings.num_warmup
    chain = _restart_window(chain, adapting & (step == settings.window_start))
    # The forced first acceptance (from an unknown start) tells the step size nothing.
    informative = jnp.isfinite(chain.log_likelihood + chain.log_prior)
    key_move, key_ll, key_accept = jax.random.split(key, 3)
    cov = jnp.exp(2 * chain.log_step) * chain.shape()
    chol = jnp.linalg.cholesky(cov)
    noise = jax.random.normal(key_move, chain.position.shape, chain.position.dtype)
    proposal = chain.position + chol @ noise
    ll = _or_minus_inf(log_likelihood(proposal, key_ll))
    lp = _or_minus_inf(log_prior(proposal))
    log_ratio = (ll + lp) - (chain.log_likelihood + chain.log_prior)
    log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)  # -inf - (-inf)
    accepted = jnp.log(jax.random.uniform(key_accept, dtype=log_ratio.dtype)) < log_ratio
    acceptance = jnp.exp(jnp.minimum(log_ratio, 0.0))
    position = jnp.where(accepted, proposal, chain.position)
    chain = eqx.tree_at(
        lambda c: (c.position, c.log_likelihood, c.log_prior),
        chain,
        (
            position,
            jnp.where(accepted, ll, chain.log_likelihood),
            jnp.where(accepted, lp, chain.log_prior),
        ),
    )
    signal = jnp.where(informative, acceptance, settings.target_acceptance)
    adapted = _adapt(chain, step, signal, settings)
    chain = jax.tree.map(lambda a, b: jnp.where(adapting, a, b), adapted, chain)
    info = _StepInfo(
        position, chain.log_likelihood, chain.log_likelihood + chain.log_prior, acceptance, accepted
    )
    return chain, info


def _or_minus_inf(x):
    return jnp.where(jnp.isfinite(x), x, -jnp.inf)


def _restart_window(chain: _Chain, restart) -> _Chain:
    """The covariance estimate so far becomes the anchor of a fresh window (dropping the
    transient from the start)."""
    fresh = eqx.tree_at(
        lambda c: (c.anchor, c.mean, c.scatter, c.count),
        chain,
        (
            chain.shape(),
            jnp.zeros_like(chain.mean),
            jnp.zeros_like(chain.scatter),
            jnp.zeros_like(chain.count),
        ),
    )
    return jax.tree.map(lambda a, b: jnp.where(restart, a, b), fresh, chain)


def _adapt(chain: _Chain, step, acceptance, settings: _Settings) -> _Chain:
    """Robbins-Monro on log lambda (gains restarting with each window), Welford on the draws."""
    window = jnp.where(step >= settings.window_start, settings.window_start, 0)
    gain = (step - window + 1.0) ** -_GAIN_DECAY
    log_step = chain.log_step + gain * (acceptance - settings.target_acceptance)
    count = chain.count + 1.0
    delta = chain.position - chain.mean
    mean = chain.mean + delta / count
    scatter = chain.scatter + jnp.outer(delta, chain.position - mean)
    return eqx.tree_at(
        lambda c: (c.log_step, c.mean, c.scatter, c.count),
        chain,
        (log_step, mean, scatter, count),
    )


def _inference_data(
    selection: Selection,
    objective: Objective,
    model,
    y,
    template,
    out: _StepInfo,
    step_size,
    key,
    pointwise: bool,
    posterior_predictive: bool,
    dims,
    coords,
):
    """Draws (chains, draws, d) -> InferenceData."""
    chains, draws = out.log_marginal.shape
    flat = out.position.reshape(chains * draws, -1)
    keys = jax.random.split(key, chains * draws)
    pointwise = pointwise and callable(getattr(objective.engine, "filter", None))
    values, per_step, predictive = _per_draw(
        jnp.asarray(flat), keys, model, y, template, selection, objective, pointwise,
        posterior_predictive,
    )  # fmt: skip
    unflat = lambda x: np.asarray(x).reshape(chains, draws, *x.shape[1:])  # noqa: E731
    posterior = {name: unflat(v) for name, v in zip(selection.names, values, strict=True)}
    sample_stats = {
        "acceptance_rate": out.acceptance_rate,
        "accepted": out.accepted,
        "log_marginal": out.log_marginal,
        "lp": out.lp,
        "step_size": np.broadcast_to(np.asarray(step_size)[:, None], (chains, draws)),
    }
    if objective.batched:
        dims = {"y": ("series", "time", "obs"), **(dims or {})}
    return to_arviz(
        posterior,
        sample_stats=sample_stats,
        log_likelihood=None if per_step is None else {"y": unflat(per_step)},
        observed_data={"y": objective.values()},
        posterior_predictive=None if predictive is None else {"y": unflat(predictive)},
        dims=dims,
        coords=coords,
    )


@filter_jit
def _per_draw(
    flat, keys, model, y, template, selection, objective, pointwise: bool, predictive: bool
):
    """Values, pointwise log-likelihoods and (optionally) a replicate of y, per draw."""
    params, _, _ = _Target(selection, objective).bind(model, y, template)

    def one(args):
        position, key = args
        key_ll, key_y = jax.random.split(key)
        p = params(position)
        fitted = selection.rebuild(model, p)
        per_step = objective.log_likelihood_per_step(fitted, y, key_ll) if pointwise else None
        replicate = _predict(fitted, objective, y, key_y) if predictive else None
        return selection.values(p), per_step, replicate

    return jax.lax.map(one, (flat, keys), batch_size=256)
