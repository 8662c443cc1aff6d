"""Posterior sampling of the fitted leaves, and the model evidence, by adaptive tempered SMC."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as numpyro_dist

from .._checks import check_positive_int
from .._jit import filter_jit
from .._types import Key
from ..diagnostics import to_arviz
from ..params import AbstractConstrained
from . import _tempering
from ._objective import Objective
from ._progress import progress_bar
from ._selection import Selection
from .pmmh import _check_number, _flatten, _per_draw, _Target

_KERNELS = ("hmc", "nuts", "rwmh")


class SMCSamplerResult(NamedTuple):
    r"""What `bs.sample_smc` returns.

    Attributes:
        inference_data: `arviz.InferenceData`; posterior (chain = run, draw = particle), values
            in the constrained space; sample_stats log_evidence (the run's estimate, repeated
            over its particles), log_marginal (each particle's log-likelihood, an estimate for a
            random engine) and lp (that plus log prior and log-Jacobian); observed_data. The
            posterior group's attrs hold log_evidence and log_evidence_se.
        log_evidence: $\log \hat Z$, the runs' evidence estimates combined, a float.
        log_evidence_se: its standard error (NaN for one run), a float.
        log_evidence_per_run: (R,) each run's $\log \hat Z_r$.
        num_stages: (R,) tempering stages each run took.
        temperatures: (R, K + 1) each run's $\beta_0 = 0, \dots, \beta_K = 1$, K the most
            stages any run took; NaN after a run's last stage.
    """

    inference_data: object
    log_evidence: float
    log_evidence_se: float
    log_evidence_per_run: np.ndarray
    num_stages: np.ndarray
    temperatures: np.ndarray


def sample_smc(
    model,
    y,
    *,
    where,
    priors,
    key: Key,
    num_particles: int = 1000,
    num_runs: int = 4,
    kernel: str | None = None,
    num_mcmc_steps: int = 5,
    num_integration_steps: int = 10,
    step_size: float | None = None,
    target_ess: float = 0.5,
    target_acceptance: float = 0.75,
    max_stages: int = 200,
    engine=None,
    inputs=None,
    progress: bool = True,
    dims: dict | None = None,
    coords: dict | None = None,
) -> SMCSamplerResult:
    r"""Posterior draws of the leaves picked by `where` and the log-evidence, by adaptive
    tempered sequential Monte Carlo.

    The sampler works on the unconstrained arrays $u$ of the fitted leaves, with prior density
    $p(u) = p(\theta(u))\, |\det J_\theta(u)|$ (as `bs.sample_nuts`), and moves N particles from
    the prior to the posterior through the tempered densities
    $$\pi_\beta(u) \propto p(u)\, p(y \mid u)^\beta, \qquad
    0 = \beta_0 < \beta_1 < \dots < \beta_K = 1.$$
    The particles start as draws from the priors (each leaf's prior in its natural space, mapped
    to $u$ by the leaf's inverse transform). At each stage the next temperature is found by
    bisection so that the effective sample size of the incremental weights
    $w_i = p(y \mid u_i)^{\beta_{k+1} - \beta_k}$ is `target_ess` $\times N$ (clipped at
    $\beta = 1$); the particles are resampled (systematic) and moved by `num_mcmc_steps` steps
    of a kernel that leaves $\pi_{\beta_{k+1}}$ invariant:

    - "hmc": blackjax HMC with `num_integration_steps` leapfrog steps; the inverse mass matrix
      is the particles' weighted variance per coordinate at this stage, and the step size
      (initially `step_size`, default $0.5 / \sqrt d$) is multiplied after each stage by
      $\exp(\bar a - a^*)$, $\bar a$ the stage's mean acceptance rate and $a^*$
      `target_acceptance` (Buchholz et al. 2021 tune HMC within SMC from the particles
      likewise);
    - "nuts": blackjax NUTS with the same mass matrix and step size;
    - "rwmh": Gaussian random-walk Metropolis with covariance $(2.38^2 / d)\,\hat\Sigma$,
      $\hat\Sigma$ the particles' weighted covariance.

    With a random engine (`bs.ParticleFilter`), only "rwmh" is allowed, and it is a
    pseudo-marginal move: each particle carries the log-likelihood estimate made when it was
    proposed, reused (never recomputed) in the reweighting and in the Metropolis-Hastings ratio,
    and a proposal gets a fresh estimate (density-tempered marginalised SMC, Duan and Fulop
    2015). The final particles then target the exact posterior and the evidence estimate stays
    unbiased whatever the particle filter's size.

    A run's evidence estimate is
    $\hat Z_r = \prod_k \frac1N \sum_i w_i^{(k)}$, unbiased for
    $Z = \int p(y \mid u)\, p(u)\, du$. The `num_runs` independent runs (under `vmap`) are
    combined as $\hat Z = \frac1R \sum_r \hat Z_r$, with the delta-method standard error of
    $\log \hat Z$, $\mathrm{sd}(\hat Z_r) / (\sqrt R\, \overline{\hat Z})$ (computed in log space;
    it needs `num_runs` >= 2 and is NaN for one run). The whole tempering of a run is one
    `lax.while_loop`, compiled once; the final particles are equally weighted (each stage ends
    with a resampling and moves), so they are posterior draws as they stand.

    Args:
        model: the model; its fitted leaves' structure (not their values) is used.
        y: observations (T, M) or (T,) with NaN for missing entries, or a batch (B, T, M).
        where: the leaves to sample, as in `equinox.tree_at`.
        priors: one distribution per leaf of `where` (numpyro or distrax), on its value; each
            must be able to `sample`.
        key: PRNG key.
        num_particles: N, particles per run (>= 2).
        num_runs: R, independent runs; the posterior has R chains of N draws.
        kernel: "hmc", "nuts" or "rwmh"; None picks "hmc" for an exact engine and "rwmh" for a
            random one.
        num_mcmc_steps: kernel steps per particle per stage.
        num_integration_steps: leapfrog steps per HMC step.
        step_size: HMC/NUTS's initial step size (default $0.5 / \sqrt d$), adapted between stages.
        target_ess: the fraction of N the ESS of each stage's weights is set to, in (0, 1).
        target_acceptance: the acceptance rate HMC/NUTS's step size adaptation aims at.
        max_stages: at most this many stages per run; a run stopped before $\beta = 1$ gives a
            warning (its draws and evidence are those of a tempered posterior).
        engine: any engine with `log_marginal(model, data, key)` (default: exact). HMC and NUTS
            need a differentiable, deterministic one.
        inputs: control inputs (T, U).
        progress: show a progress bar (it completes when the compiled runs return).
        dims, coords: passed to `bs.to_arviz` to name the dimensions.

    Returns:
        `SMCSamplerResult(inference_data, log_evidence, log_evidence_se, log_evidence_per_run,
        num_stages, temperatures)`; see `SMCSamplerResult`.

    Raises:
        ValueError: a fitted leaf has no prior or a prior cannot be sampled, bad counts or
            settings, an unknown kernel, or HMC/NUTS with a random engine.
        TypeError: the engine has no `log_marginal`.

    References:
        Del Moral, P., Doucet, A. and Jasra, A. (2006). Sequential Monte Carlo samplers. JRSS B
        68(3).
        Jasra, A., Stephens, D. A., Doucet, A. and Tsagaris, T. (2011). Inference for Lévy-driven
        stochastic volatility models via adaptive sequential Monte Carlo. Scandinavian Journal
        of Statistics 38(1).
        Buchholz, A., Chopin, N. and Jacob, P. E. (2021). Adaptive tuning of Hamiltonian Monte
        Carlo within sequential Monte Carlo. Bayesian Analysis 16(3).
        Duan, J.-C. and Fulop, A. (2015). Density-tempered marginalized sequential Monte Carlo
        samplers. Journal of Business & Economic Statistics 33(2).
    """
    if engine is not None and not callable(getattr(engine, "log_marginal", None)):
        raise TypeError(
            f"engine must have a log_marginal(model, data, key) method (e.g. bs.Kalman or "
            f"bs.ParticleFilter), got {type(engine).__name__}."
        )
    selection = Selection(model, where, priors)
    selection.require_priors("sample_smc")
    for name, value in (
        ("num_runs", num_runs),
        ("num_mcmc_steps", num_mcmc_steps),
        ("num_integration_steps", num_integration_steps),
        ("max_stages", max_stages),
    ):
        check_positive_int(name, value)
    check_positive_int("num_particles", num_particles)
    if num_particles < 2:
        raise ValueError(f"num_particles must be an int >= 2, got {num_particles!r}.")
    _check_number("target_ess", target_ess, low=0.0, high=1.0)
    _check_number("target_acceptance", target_acceptance, low=0.0, high=1.0)
    if step_size is not None:
        _check_number("step_size", step_size, low=0.0)
    if kernel is not None and kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS} (or None), got {kernel!r}.")
    if key is None:
        raise ValueError("sample_smc needs key=jax.random.key(...).")
    objective = Objective(model, y, engine=engine, inputs=inputs)
    random_engine = bool(objective.engine.is_random)
    if kernel is None:
        kernel = "rwmh" if random_engine else "hmc"
    if random_engine and kernel != "rwmh":
        raise ValueError(
            f"{type(objective.engine).__name__} gives a random log-likelihood estimate; "
            f'kernel="{kernel}" needs an exact, differentiable one. Use kernel="rwmh" (a '
            "pseudo-marginal random walk), or an exact engine."
        )
    y_all = objective.device_y()

    template = selection.params(model)
    key_prior, key_run = jax.random.split(key)
    start = _prior_draws(selection, template, key_prior, num_runs * num_particles)
    dim = start.shape[-1]
    start = start.reshape(num_runs, num_particles, dim)
    dtype = start.dtype
    initial_step = 0.5 / np.sqrt(dim) if step_size is None else float(step_size)
    settings = _tempering.Settings(
        target_ess=jnp.asarray(target_ess, dtype),
        target_acceptance=jnp.asarray(target_acceptance, dtype),
        initial_log_step=jnp.asarray(np.log(initial_step), dtype),
    )
    target = _Target(selection, objective)
    run_keys = jax.random.split(key_run, num_runs)
    options = dict(
        kernel=kernel,
        random_likelihood=random_engine,
        num_mcmc_steps=num_mcmc_steps,
        num_integration_steps=num_integration_steps,
        max_stages=max_stages,
    )
    with progress_bar(num_runs, progress, "sample_smc", label="log_evidence") as bar:
        runs = jax.device_get(
            _run_all(start, run_keys, model, y_all, template, target, settings, **options)
        )
        per_run = np.asarray(runs.log_evidence, dtype=np.float64)
        log_evidence, log_evidence_se = _combine(per_run)
        bar.update(num_runs, log_evidence)

    num_stages = np.asarray(runs.stage)
    unfinished = np.asarray(runs.beta) < 1.0
    if np.any(unfinished):
        warnings.warn(
            f"sample_smc: {int(unfinished.sum())} of {num_runs} runs stopped at max_stages="
            f"{max_stages} before reaching the posterior (beta = "
            f"{np.round(np.asarray(runs.beta)[unfinished], 4).tolist()}); their draws and "
            "evidence are those of a tempered posterior. Increase max_stages or target_ess.",
            RuntimeWarning,
            stacklevel=2,
        )
    temperatures = np.asarray(runs.temperatures)[:, : int(num_stages.max()) + 1]

    idata = _inference_data(
        selection, objective, model, y_all, template, runs, per_run, dims, coords
    )
    idata.posterior.attrs["log_evidence"] = log_evidence
    idata.posterior.attrs["log_evidence_se"] = log_evidence_se
    return SMCSamplerResult(
        inference_data=idata,
        log_evidence=log_evidence,
        log_evidence_se=log_evidence_se,
        log_evidence_per_run=per_run,
        num_stages=num_stages,
        temperatures=temperatures,
    )


@filter_jit
def _run_all(start, keys, model, y, template, target: _Target, settings, **options):
    """Every run, under `vmap`: start (R, N, d), keys (R,)."""
    _, log_likelihood, log_prior = target.bind(model, y, template)

    def one(position, key):
        return _tempering.run(position, key, log_likelihood, log_prior, settings, **options)

    return jax.vmap(one)(start, keys)


def _combine(per_run: np.ndarray) -> tuple[float, float]:
    r"""$\log \frac1R \sum_r \hat Z_r$ and its delta-method standard error
    $\mathrm{sd}(\hat Z_r) / (\sqrt R\, \overline{\hat Z})$, from the $\log \hat Z_r$."""
    num = per_run.size
    finite = np.where(np.isnan(per_run), -np.inf, per_run)
    top = np.max(finite)
    if not np.isfinite(top):
        return float(top if num else np.nan), float("nan")
    log_mean = top + np.log(np.mean(np.exp(finite - top)))
    if num < 2:
        return float(log_mean), float("nan")
    relative = np.exp(finite - log_mean)  # Z_r / mean Z, mean 1
    return float(log_mean), float(np.std(relative, ddof=1) / np.sqrt(num))


def _prior_draws(selection: Selection, template: tuple, key, num: int):
    """`num` draws from the priors, as flat unconstrained vectors (num, d)."""
    keys = jax.random.split(key, len(template))
    nodes = []
    for name, node, prior, k in zip(selection.names, template, selection.priors, keys, strict=True):
        constrained = isinstance(node, AbstractConstrained)
        shape = tuple(node.shape) if constrained else tuple(np.shape(node))
        dtype = node.unconstrained.dtype if constrained else node.dtype
        value = jnp.asarray(_sample(name, prior, k, num, shape), dtype)
        if constrained:
            unconstrained = node.bijector.inverse(value).astype(dtype)
            nodes.append(eqx.tree_at(lambda n: n.unconstrained, node, unconstrained))
        else:
            nodes.append(value)
    flat = jax.vmap(_flatten)(tuple(nodes))
    if not np.all(np.isfinite(np.asarray(flat))):
        raise ValueError(
            "Some draws from the priors are not finite in the unconstrained space (a value on "
            "the boundary of its support, e.g. a variance of 0); use priors that put no mass "
            "there."
        )
    return flat


def _sample(name: str, prior, key, num: int, shape: tuple):
    """(num, *shape) draws of one leaf's prior; a prior of fewer axes than the leaf draws its
    leading axes independently (as `Selection.log_prior` counts them)."""
    prior_shape = tuple(prior.batch_shape) + tuple(prior.event_shape)
    if len(prior_shape) > len(shape) or shape[len(shape) - len(prior_shape) :] != prior_shape:
        raise ValueError(
            f"sample_smc draws its starting particles from the priors, but the prior for {name} "
            f"has shape {prior_shape}, which is not a trailing part of {name}'s shape {shape}. "
            "Give a prior of the leaf's shape (or a scalar one)."
        )
    sample_shape = (num, *shape[: len(shape) - len(prior_shape)])
    try:
        if isinstance(prior, numpyro_dist.Distribution):
            return prior.sample(key, sample_shape)
        if isinstance(prior, distrax.Distribution):
            return prior.sample(seed=key, sample_shape=sample_shape)
        raise TypeError(f"{type(prior).__name__} is neither a numpyro nor a distrax distribution")
    except (NotImplementedError, TypeError, ValueError) as error:
        raise ValueError(
            f"sample_smc draws its starting particles from the priors, but drawing from the "
            f"prior for {name} ({type(prior).__name__}) failed: {error}. Use a numpyro or "
            "distrax distribution that can sample."
        ) from error


def _inference_data(
    selection: Selection, objective: Objective, model, y, template, runs, per_run, dims, coords
):
    """Final particles (R, N, d) -> InferenceData (chain = run, draw = particle)."""
    chains, draws, _ = runs.position.shape
    flat = jnp.asarray(runs.position.reshape(chains * draws, -1))
    keys = jax.random.split(jax.random.key(0), chains * draws)  # unused: no predictive draws
    values, _, _ = _per_draw(flat, keys, model, y, template, selection, objective, False, False)
    unflat = lambda x: np.asarray(x).reshape(chains, draws, *x.shape[1:])  # noqa: E731
    posterior = {name: unflat(v) for name, v in zip(selection.names, values, strict=True)}
    log_marginal = np.asarray(runs.log_likelihood)
    sample_stats = {
        "log_evidence": np.broadcast_to(per_run[:, None], (chains, draws)),
        "log_marginal": log_marginal,
        "lp": log_marginal + np.asarray(runs.log_prior),
    }
    if objective.batched:
        dims = {"y": ("series", "time", "obs"), **(dims or {})}
    return to_arviz(
        posterior,
        sample_stats=sample_stats,
        observed_data={"y": objective.values()},
        dims=dims,
        coords=coords,
    )
