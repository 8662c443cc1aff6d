"""Variational inference for the fitted leaves, with numpyro's SVI and its automatic guides."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from numpyro import distributions as dist
from numpyro.distributions import constraints
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoGuide, AutoMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_value

from .._checks import check_positive_int
from .._jit import filter_jit
from .._types import Array, Float, Key
from ..diagnostics import to_arviz
from ..numpyro import SSMDistribution
from ._objective import Objective, log_posterior
from ._progress import progress_bar
from ._selection import Selection

if TYPE_CHECKING:
    import arviz

# SVI steps inside one compiled call between progress-bar updates.
_CHUNK = 100

_GUIDES = {"multivariate_normal": AutoMultivariateNormal, "normal": AutoNormal}


class VIResult(NamedTuple):
    """What `bs.fit_vi` fitted, and how.

    Attributes:
        losses: (num_steps,) the loss per step: the negative ELBO, a Monte Carlo estimate
            with `num_particles` draws (nats, for all series together).
        guide: the numpyro autoguide over the unconstrained arrays of the fitted leaves; its
            sites are named as the leaves (`"Q"`, `"kernel.lengthscale"`).
        params: the guide's fitted numpyro parameters (for `guide.sample_posterior`,
            `guide.median`, `guide.quantiles`).
        model: the model the fit started from (its other leaves are kept in every draw).
        where: the `where` of the fit.
    """

    losses: Float[Array, " steps"]
    guide: AutoGuide
    params: dict[str, Array]
    model: Any
    where: Callable

    def sample_model(self, key: Key, num_samples: int):
        """Models at `num_samples` draws from the variational posterior.

        Args:
            key: PRNG key.
            num_samples: number of draws S.

        Returns:
            The model with every array leaf carrying a leading (S,) axis (the fitted leaves
            drawn, the others repeated), so that `jax.vmap(f)(models)` maps over the draws.
        """
        sites = _Sites(Selection(self.model, self.where), self.model)
        draws = self.guide.sample_posterior(key, self.params, sample_shape=(num_samples,))
        return eqx.filter_vmap(sites.rebuild)(draws)

    def median_model(self):
        """The model at the variational posterior's median (of the unconstrained arrays)."""
        sites = _Sites(Selection(self.model, self.where), self.model)
        return sites.rebuild(self.guide.median(self.params))


class _Sites:
    """The fitted leaves as numpyro sites: one site per unconstrained array, named as the leaf."""

    def __init__(self, selection: Selection, model):
        self.selection = selection
        self.model = model
        self.start = selection.params(model)
        self.treedefs, self.names = [], []
        for name, node in zip(selection.names, self.start, strict=True):
            leaves, treedef = jax.tree.flatten(node)
            self.treedefs.append(treedef)
            # A constrained leaf holds one array; anything else gets a site per array.
            self.names.append(
                [name] if len(leaves) == 1 else [f"{name}.{i}" for i in range(len(leaves))]
            )

    def to_dict(self, params: tuple) -> dict[str, Array]:
        out = {}
        for names, node in zip(self.names, params, strict=True):
            out.update(zip(names, jax.tree.leaves(node), strict=True))
        return out

    def to_params(self, values: dict[str, Array]) -> tuple:
        return tuple(
            jax.tree.unflatten(treedef, [values[n] for n in names])
            for names, treedef in zip(self.names, self.treedefs, strict=True)
        )

    def rebuild(self, values: dict[str, Array]):
        return self.selection.rebuild(self.model, self.to_params(values))


def fit_vi(
    model,
    y,
    *,
    where: Callable,
    priors,
    key: Key,
    guide: str = "multivariate_normal",
    optimizer=None,
    num_steps: int = 2000,
    num_samples: int = 1000,
    num_particles: int = 1,
    engine=None,
    inputs=None,
    progress: bool = True,
    dims: dict | None = None,
    coords: dict | None = None,
) -> tuple[arviz.InferenceData, VIResult]:
    r"""Variational posterior of the leaves picked by `where`, by stochastic variational inference.

    A Gaussian $q(u)$ over the unconstrained arrays $u$ of the fitted leaves (so covariances
    stay valid) is fitted by maximising the ELBO
    $\mathbb{E}_q[\log p(y \mid \theta(u)) + \log p(\theta(u)) + \log|\det J(u)| - \log q(u)]$
    with numpyro's `SVI` and reparameterised gradients; $J$ is the Jacobian of the map from
    $u$ to the constrained values $\theta$. The log-likelihood enters through
    `bs.numpyro.SSMDistribution`, so the latent states are marginalised by the engine.

    Args:
        model: the model; its values start the guide's mean.
        y: observations (T, M) or (T,) with NaN for missing entries, or a batch (B, T, M).
        where: the leaves to fit, as in `equinox.tree_at`: `lambda m: (m.Q, m.R)`.
        priors: one distribution per leaf of `where` (numpyro or distrax), on its value.
        key: PRNG key.
        guide: `"multivariate_normal"` (numpyro's `AutoMultivariateNormal`: a full-covariance
            Gaussian, which captures correlations between parameters) or `"normal"`
            (`AutoNormal`: mean-field).
        optimizer: an optax transformation or a `numpyro.optim` optimiser; default
            `optax.adam(1e-2)`.
        num_steps: SVI steps.
        num_samples: draws from the fitted guide returned in the InferenceData.
        num_particles: draws from the guide per ELBO estimate.
        engine: engine with a differentiable log-likelihood (default: exact).
        inputs: control inputs (T, U).
        progress: show a progress bar with the loss.
        dims, coords: passed to `bs.to_arviz` to name the dimensions.

    Returns:
        `(idata, result)`: an `arviz.InferenceData` with groups posterior (one chain of
        `num_samples` draws from the guide, in the constrained space) and observed_data;
        and a `VIResult` with the loss per step, the guide and its parameters.

    Raises:
        ValueError: an unknown guide, a non-positive `num_steps`, `num_samples` or
            `num_particles`, a missing prior, bad data, or a start where the log density is
            not finite.

    References:
        Kucukelbir, A., Tran, D., Ranganath, R., Gelman, A. and Blei, D. M. (2017). Automatic
        differentiation variational inference. JMLR 18(14).
    """
    guide_class = _check_settings(guide, num_steps, num_samples, num_particles, key)
    selection = Selection(model, where, priors)
    selection.require_priors("fit_vi")
    objective = Objective(model, y, engine=engine, inputs=inputs)
    y_all = objective.device_y()
    sites = _Sites(selection, model)
    key, check_key, init_key, draw_key = jax.random.split(key, 4)

    obs_name, prior_name = _free_names(sites, ("y", "log_prior"))
    num_timesteps = y_all.shape[-2]
    random_engine = objective.engine.is_random

    @filter_jit  # one compiled call when numpyro runs the model eagerly while setting up
    def log_prior(params):
        return selection.log_prior(params) + selection.log_abs_det_jacobian(params)

    def numpyro_model(model, y):
        values = {
            name: numpyro.sample(
                name, dist.ImproperUniform(constraints.real, (), event_shape=jnp.shape(start))
            )
            for name, start in sites.to_dict(sites.start).items()
        }
        params = sites.to_params(values)
        numpyro.factor(prior_name, log_prior(params))
        likelihood = SSMDistribution(
            selection.rebuild(model, params),
            objective.engine,
            objective.inputs,
            num_timesteps=num_timesteps,
            key=numpyro.prng_key() if random_engine else None,
        )
        with numpyro.plate("series", y.shape[0]) if objective.batched else nullcontext():
            numpyro.sample(obs_name, likelihood, obs=y)

    auto_guide = guide_class(
        numpyro_model, init_loc_fn=init_to_value(values=sites.to_dict(sites.start))
    )
    svi = SVI(
        numpyro_model,
        auto_guide,
        optax.adam(1e-2) if optimizer is None else optimizer,
        Trace_ELBO(num_particles=num_particles),
    )
    _check_start(selection, objective, model, sites.start, y_all, check_key)
    state = svi.init(init_key, model, y_all)

    @filter_jit
    def run_chunk(state, model, y, size):
        # stable_update keeps the state when a draw gives a non-finite loss, instead of
        # letting one bad draw turn every parameter into NaN.
        return jax.lax.scan(lambda s, _: svi.stable_update(s, model, y), state, length=size)

    losses = []
    with progress_bar(num_steps, progress, "fit_vi", label="loss") as bar:
        done = 0
        while done < num_steps:
            size = min(_CHUNK, num_steps - done)
            state, chunk = run_chunk(state, model, y_all, size)
            chunk = np.asarray(chunk)
            losses.append(chunk)
            done += size
            finite = chunk[np.isfinite(chunk)]
            bar.update(size, float(np.mean(finite)) if finite.size else float("nan"))
    losses = np.concatenate(losses)
    bad = int(np.sum(~np.isfinite(losses)))
    if bad:
        warnings.warn(
            f"{bad} of {num_steps} SVI steps gave a non-finite loss and were skipped; if that "
            "is many, lower the learning rate or start closer to the posterior.",
            stacklevel=2,
        )
    params = svi.get_params(state)
    result = VIResult(jnp.asarray(losses), auto_guide, params, model, where)
    idata = _inference_data(
        sites, objective, auto_guide, params, draw_key, num_samples, dims, coords
    )
    return idata, result


def _inference_data(
    sites: _Sites, objective: Objective, guide, params, key, num_samples, dims, coords
):
    @filter_jit
    def draw(key):
        draws = guide.sample_posterior(key, params, sample_shape=(num_samples,))
        return jax.vmap(lambda d: sites.selection.values(sites.to_params(d)))(draws)

    values = draw(key)
    posterior = {
        name: np.asarray(v)[None] for name, v in zip(sites.selection.names, values, strict=True)
    }
    if objective.batched:
        dims = {"y": ("series", "time", "obs"), **(dims or {})}
    return to_arviz(
        posterior,
        observed_data={"y": objective.values()},
        dims=dims,
        coords=coords,
    )


def _free_names(sites: _Sites, wanted: tuple[str, ...]) -> list[str]:
    """`wanted` site names, with underscores prepended where a fitted leaf already has one."""
    taken = {name for names in sites.names for name in names}
    out = []
    for name in wanted:
        while name in taken:
            name = "_" + name
        out.append(name)
    return out


def _check_settings(guide, num_steps, num_samples, num_particles, key):
    if not isinstance(guide, str) or guide not in _GUIDES:
        raise ValueError(
            f"guide must be one of {', '.join(repr(g) for g in _GUIDES)}, got {guide!r}."
        )
    for name, value in (
        ("num_steps", num_steps),
        ("num_samples", num_samples),
        ("num_particles", num_particles),
    ):
        check_positive_int(name, value)
    if key is None:
        raise ValueError("fit_vi needs key=jax.random.key(...).")
    return _GUIDES[guide]


def _check_start(selection: Selection, objective: Objective, model, start, y, key) -> None:
    """A start where the log density is not finite is reported by name, before fitting."""
    bad = selection.non_finite(start)
    if bad:
        raise ValueError(
            f"The starting values of {', '.join(bad)} are not finite; give finite values."
        )

    @filter_jit
    def density(start, model, y, key):
        return log_posterior(objective, selection, model, start, y, key, jacobian=True)

    value = density(start, model, y, key if objective.engine.is_random else None)
    if not math.isfinite(float(value)):
        raise ValueError(
            "The log posterior is not finite at the starting model although every fitted value "
            "is: the data are impossible under it (for example a zero variance), or a prior "
            "excludes the start."
        )
