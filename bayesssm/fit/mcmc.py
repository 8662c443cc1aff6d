"""Posterior sampling of the fitted leaves with NUTS (blackjax)."""

from __future__ import annotations

import dataclasses

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_positive_int
from .._jit import filter_jit
from .._types import Key
from ..diagnostics import to_arviz
from ._objective import Objective, log_posterior
from ._progress import progress_bar
from ._selection import Selection, perturbed_starts

# Draws per compiled call between progress-bar updates.
_CHUNK = 100


def sample_nuts(
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
    target_accept: float = 0.8,
    init_jitter: float = 0.1,
    posterior_predictive: bool = False,
    progress: bool = True,
    dims: dict | None = None,
    coords: dict | None = None,
):
    r"""Posterior draws of the leaves picked by `where`, by NUTS with window adaptation.

    NUTS runs on the unconstrained arrays of the fitted leaves, with density
    $\log p(y \mid \theta) + \log p(\theta) + \log |\det J|$ (the Jacobian of the map to the
    constrained values), so covariances stay valid. Chains run together under `vmap`, each with
    its own adapted step size and diagonal mass matrix (blackjax's Stan-style window adaptation).

    Args:
        model: the model; its values (jittered by `init_jitter` in the unconstrained space) start
            the chains.
        y: observations (T, M) or (T,) with NaN for missing entries, or a batch (B, T, M).
        where: the leaves to sample, as in `equinox.tree_at`.
        priors: one distribution per leaf of `where` (numpyro or distrax), on its value.
        key: PRNG key.
        num_samples: draws per chain after warm-up.
        num_warmup: adaptation steps per chain (discarded).
        num_chains: independent chains.
        engine: engine with a differentiable log-likelihood (default: exact).
        inputs: control inputs (T, U).
        target_accept: the acceptance rate step-size adaptation aims at.
        init_jitter: standard deviation of the jitter of each chain's start.
        posterior_predictive: also draw y from the model at every posterior draw.
        progress: show a progress bar.
        dims, coords: passed to `bs.to_arviz` to name the dimensions.

    Returns:
        `arviz.InferenceData` with groups posterior (the values, constrained), sample_stats
        (diverging, step_size, tree_depth, n_steps, acceptance_rate, energy, lp),
        log_likelihood (per time step, for `arviz.loo`), observed_data, and
        posterior_predictive when asked.

    References:
        Hoffman, M. D. and Gelman, A. (2014). The No-U-Turn sampler. JMLR 15.
    """
    selection = Selection(model, where, priors)
    selection.require_priors("sample_nuts")
    objective = Objective(model, y, engine=engine, inputs=inputs)
    for name, value in (
        ("num_samples", num_samples),
        ("num_warmup", num_warmup),
        ("num_chains", num_chains),
    ):
        check_positive_int(name, value)
    if key is None:
        raise ValueError("sample_nuts needs key=jax.random.key(...).")
    if objective.engine.is_random:
        raise ValueError(
            f"{type(objective.engine).__name__} gives a random log-likelihood estimate; NUTS "
            "needs an exact, differentiable one (use particle MCMC for random engines)."
        )
    y_all = objective.device_y()

    log_density = _LogDensity(selection, objective)
    start = selection.params(model)
    bad = selection.non_finite(start)
    if bad:
        raise ValueError(f"The starting values of {', '.join(bad)} are not finite.")
    key_init, key_warm, key_draw, key_ppc = jax.random.split(key, 4)
    starts = perturbed_starts(start, num_chains, init_jitter, key_init)
    warm_keys = jax.random.split(key_warm, num_chains)

    with progress_bar(num_warmup + num_samples, progress, "sample_nuts") as bar:
        states, parameters = _warm_up(
            starts, warm_keys, model, y_all, log_density, num_warmup, target_accept
        )
        bar.update(num_warmup)
        chunks = []
        done = 0
        while done < num_samples:
            size = min(_CHUNK, num_samples - done)
            key_draw, k = jax.random.split(key_draw)
            chain_keys = jax.random.split(k, num_chains)
            states, out = _draw(states, parameters, chain_keys, model, y_all, log_density, size)
            chunks.append(out)
            done += size
            divergences = sum(int(np.sum(np.asarray(c[2].is_divergent))) for c in chunks)
            bar.update(size, divergences=divergences)
    positions, logdensity, info = jax.tree.map(lambda *xs: jnp.concatenate(xs, 1), *chunks)
    return _inference_data(
        selection, objective, model, y_all, positions, logdensity, info, parameters,
        posterior_predictive, key_ppc, dims, coords,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _LogDensity:
    """log p(y | params) + log prior + log|Jacobian| over the unconstrained arrays; hashable, so
    compiled samplers are reused across calls with the same `where`, priors and engine."""

    selection: Selection
    objective: Objective

    def bind(self, model, y):
        def log_density(params):
            return log_posterior(self.objective, self.selection, model, params, y, jacobian=True)

        return log_density


@filter_jit
def _warm_up(starts, keys, model, y, log_density: _LogDensity, num_warmup, target_accept):
    density = log_density.bind(model, y)

    def one_chain(position, key):
        adaptation = blackjax.window_adaptation(
            blackjax.nuts, density, target_acceptance_rate=target_accept
        )
        (state, parameters), _ = adaptation.run(key, position, num_steps=num_warmup)
        return state, parameters

    return jax.vmap(one_chain)(starts, keys)


@filter_jit
def _draw(states, parameters, keys, model, y, log_density: _LogDensity, size: int):
    density = log_density.bind(model, y)

    def one_chain(state, parameters, key):
        step = blackjax.nuts(density, **parameters).step

        def one(state, key):
            state, info = step(key, state)
            return state, (state.position, state.logdensity, info)

        return jax.lax.scan(one, state, jax.random.split(key, size))

    return jax.vmap(one_chain)(states, parameters, keys)


def _inference_data(
    selection: Selection,
    objective: Objective,
    model,
    y,
    positions,
    logdensity,
    info,
    parameters,
    posterior_predictive: bool,
    key,
    dims,
    coords,
):
    """Draws (chains, draws, ...) -> InferenceData, with pointwise log-likelihoods."""
    chains, draws = logdensity.shape
    flat = jax.tree.map(lambda x: x.reshape(chains * draws, *x.shape[2:]), positions)

    keys = jax.random.split(key, chains * draws)
    values, pointwise, predictive = _per_draw(
        flat, keys, model, y, selection, objective, posterior_predictive
    )
    unflat = lambda x: np.asarray(x).reshape(chains, draws, *x.shape[1:])  # noqa: E731
    posterior = {name: unflat(v) for name, v in zip(selection.names, values, strict=True)}
    step_size = np.broadcast_to(np.asarray(parameters["step_size"])[:, None], (chains, draws))
    sample_stats = {
        "is_divergent": np.asarray(info.is_divergent),
        "acceptance_rate": np.asarray(info.acceptance_rate),
        "num_trajectory_expansions": np.asarray(info.num_trajectory_expansions),
        "num_integration_steps": np.asarray(info.num_integration_steps),
        "energy": np.asarray(info.energy),
        "lp": np.asarray(logdensity),
        "step_size": step_size,
    }
    observed = objective.values()
    if objective.batched:
        dims = {"y": ("series", "time", "obs"), **(dims or {})}
    return to_arviz(
        posterior,
        sample_stats=sample_stats,
        log_likelihood={"y": unflat(pointwise)},
        observed_data={"y": observed},
        posterior_predictive=None if predictive is None else {"y": unflat(predictive)},
        dims=dims,
        coords=coords,
    )


@filter_jit
def _per_draw(flat, keys, model, y, selection, objective, posterior_predictive: bool):
    """Values, pointwise log-likelihoods and (optionally) a replicate of y, per draw."""

    def one(params, key):
        fitted = selection.rebuild(model, params)
        pointwise = objective.log_likelihood_per_step(fitted, y)
        predictive = _predict(fitted, objective, y, key) if posterior_predictive else None
        return selection.values(params), pointwise, predictive

    return jax.lax.map(lambda args: one(*args), (flat, keys), batch_size=256)


def _predict(fitted, objective: Objective, y, key):
    """A replicate of y (same shape) drawn from the model at one posterior draw."""
    num_timesteps = y.shape[-2]
    if objective.batched:
        keys = jax.random.split(key, y.shape[0])
        return jax.vmap(lambda k: fitted.sample(k, num_timesteps)[1])(keys)
    return fitted.sample(key, num_timesteps)[1].reshape(y.shape)
