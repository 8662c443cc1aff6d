"""From posterior draws to `arviz.InferenceData`, and plots of states and predictive checks.

Conventions: C chains, S draws per chain, T time steps, D states, M observed dimensions. Posterior
arrays carry leading (C, S) axes and are in the constrained (natural) space, e.g. Q is a covariance
matrix, not its Cholesky factor. arviz and matplotlib are imported on first use, so that
`import bayesssm` stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Shaped

from ._types import ArrayLike, Float
from .inference.results import FilterResult, SmootherResult
from .params import unwrap

if TYPE_CHECKING:
    import arviz
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["draws_to_dict", "plot_posterior_predictive", "plot_states", "to_arviz"]

# Event dims of the linear-Gaussian parameters. Square matrices need two distinct dim names,
# because an xarray variable cannot repeat a dim.
_PARAMETER_DIMS: dict[str, tuple[str, ...]] = {
    "A": ("state", "state_prev"),
    "Q": ("state", "state_bis"),
    "H": ("obs", "state"),
    "R": ("obs", "obs_bis"),
    "m0": ("state",),
    "P0": ("state", "state_bis"),
    "b": ("state",),
    "d": ("obs",),
}
# Parameters that may carry a leading time axis (see `bs.LinearGaussianSSM`).
_TIME_VARYING = frozenset({"A", "Q", "H", "R", "b", "d"})
# Coords given for a dim also label its partner, so coords={"state": [...]} names both axes of Q.
_PARTNER_DIMS = {"state_prev": "state", "state_bis": "state", "obs_bis": "obs"}
# Sampler statistics under blackjax / numpyro names -> arviz's standard names.
_STAT_ALIASES = {
    "is_divergent": "diverging",
    "divergent": "diverging",
    "accept_prob": "acceptance_rate",
    "num_integration_steps": "n_steps",
    "num_steps": "n_steps",
    "num_trajectory_expansions": "tree_depth",
}
_SAMPLED_GROUPS = ("posterior", "sample_stats", "log_likelihood", "posterior_predictive")

Draws = Mapping[str, Shaped[ArrayLike, "C S *event"]]
Observed = Float[ArrayLike, " T *M"]


def draws_to_dict(tree: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Pick named leaves out of a pytree of draws, in the constrained space.

    Args:
        tree: a model (or any pytree, e.g. a dict) whose array leaves carry leading (C, S) axes,
            such as a `bs.LinearGaussianSSM` vmapped over chains and draws. Constrained leaves
            (`bs.Covariance`) are unwrapped to plain matrices first.
        names: the attribute (or key) names to keep, e.g. `["Q", "R"]`.

    Returns:
        A dict name -> numpy array (C, S, *event_shape), ready for `to_arviz`.

    Example:
        >>> idata = bs.to_arviz(bs.draws_to_dict(models, ["Q", "R"]))
    """
    if isinstance(names, str):
        names = [names]
    plain = unwrap(tree)
    out = {}
    for name in names:
        if isinstance(plain, Mapping):
            found = name in plain
            value = plain.get(name)
        else:
            found = hasattr(plain, name)
            value = getattr(plain, name, None)
        if not found:
            raise ValueError(f"{type(tree).__name__} has no leaf named {name!r}.")
        if value is None:
            raise ValueError(f"Leaf {name!r} of {type(tree).__name__} is None; it has no draws.")
        out[name] = np.asarray(value)
    return out


def to_arviz(
    posterior: Draws,
    *,
    sample_stats: Draws | None = None,
    log_likelihood: Draws | Float[ArrayLike, "C S T"] | None = None,
    observed_data: Mapping[str, Observed] | Observed | None = None,
    posterior_predictive: Draws | Float[ArrayLike, "C S T *M"] | None = None,
    prior: Draws | None = None,
    coords: Mapping[str, Sequence] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
) -> arviz.InferenceData:
    """Gather posterior draws and their companions into an `arviz.InferenceData`.

    Dims are named by default: the linear-Gaussian parameters get
    A ("state", "state_prev"), Q and P0 ("state", "state_bis"), H ("obs", "state"),
    R ("obs", "obs_bis"), m0 and b ("state",), d ("obs",), with a leading "time" dim when A, Q, H,
    R, b or d is time-varying; any other parameter gets ("{name}_dim_0", ...). Observations,
    predictive draws and pointwise log-likelihoods get ("time", "obs") (or ("time",)).

    Args:
        posterior: dict name -> draws (C, S, *event_shape) in the constrained space. For a model
            pytree, use `draws_to_dict(models, names)`.
        sample_stats: dict of sampler statistics, each (C, S) or (C, S, ...), under arviz's
            names ("diverging", "step_size", "tree_depth", "acceptance_rate", "energy", "lp",
            ...); the blackjax/numpyro names "is_divergent", "accept_prob",
            "num_integration_steps" and "num_trajectory_expansions" are renamed. Others pass
            through unchanged.
        log_likelihood: dict name -> pointwise log-likelihoods (C, S, T), e.g.
            log p(y_t | y_{0:t-1}, theta) from `bs.filter(...).log_marginals`, so that `arviz.loo`
            works; an array is stored as "y".
        observed_data: dict name -> (T, M) or (T,), or an array stored as "y".
        posterior_predictive: dict name -> (C, S, T, M) or (C, S, T), or an array stored as "y".
        prior: dict name -> prior draws (C', S', *event_shape); C', S' may differ from the
            posterior's.
        coords: dim name -> labels, e.g. {"state": ["level", "slope"]}; overrides the default
            integer labels. Labels of "state" and "obs" also serve "state_prev"/"state_bis" and
            "obs_bis" unless those are given.
        dims: variable name -> event dim names (without "chain", "draw"); overrides the
            defaults. For a log-likelihood with fewer axes than its observation, the leading
            names are used, as arviz does.

    Returns:
        An `arviz.InferenceData` with the groups given.

    Raises:
        TypeError: `posterior` is not a dict.
        ValueError: arrays disagree on (C, S) or on the length of a named dim, a `dims` entry
            has the wrong number of names, or `coords` labels have the wrong length.
    """
    import arviz as az

    if not isinstance(posterior, Mapping):
        raise TypeError(
            f"posterior must be a dict name -> draws (C, S, ...), got {type(posterior).__name__}; "
            "for a model whose leaves carry (chains, draws) axes, pass "
            "bs.draws_to_dict(model, names)."
        )
    user_dims = {name: tuple(d) for name, d in (dims or {}).items()}
    coords = {dim: list(labels) for dim, labels in (coords or {}).items()}
    for partner, base in _PARTNER_DIMS.items():
        if base in coords and partner not in coords:
            coords[partner] = coords[base]

    groups = {
        "posterior": _as_dict("posterior", posterior),
        "sample_stats": _sample_stats(sample_stats),
        "log_likelihood": _as_dict("log_likelihood", log_likelihood),
        "posterior_predictive": _as_dict("posterior_predictive", posterior_predictive),
        "prior": _as_dict("prior", prior),
        "observed_data": _as_dict("observed_data", observed_data),
    }
    groups = {g: v for g, v in groups.items() if v}
    if "posterior" not in groups:
        raise ValueError("posterior is empty: give at least one variable.")

    # The prior may have its own (chains, draws); every other sampled group shares the posterior's.
    _check_chains_draws([(g, groups[g]) for g in _SAMPLED_GROUPS if g in groups])
    if "prior" in groups:
        _check_chains_draws([("prior", groups["prior"])])

    var_dims = {}  # (group, name) -> event dims
    sizes: dict[str, tuple[int, str]] = {}  # dim -> (length, "group 'name'") of its first user
    for group, data in groups.items():
        lead = 0 if group == "observed_data" else 2
        for name, value in data.items():
            if value.ndim < lead:
                raise ValueError(
                    f"{group} variable {name!r} must have leading (chains, draws) axes, "
                    f"got shape {value.shape}."
                )
            event = value.shape[lead:]
            names = _event_dims(group, name, event, user_dims)
            var_dims[group, name] = names
            for dim, length in zip(names, event, strict=True):
                where = f"{group} variable {name!r}"
                if dim in sizes and sizes[dim][0] != length:
                    raise ValueError(
                        f"Dim {dim!r} has length {length} in {where} but {sizes[dim][0]} in "
                        f"{sizes[dim][1]}; fix the shapes or name the dims apart with dims=."
                    )
                sizes.setdefault(dim, (length, where))
                if dim in coords and len(coords[dim]) != length:
                    raise ValueError(
                        f"coords[{dim!r}] has {len(coords[dim])} labels but dim {dim!r} of "
                        f"{where} has length {length}."
                    )

    datasets = {}
    for group, data in groups.items():
        datasets[group] = az.dict_to_dataset(
            data,
            coords=coords,
            dims={name: list(var_dims[group, name]) for name in data},
            default_dims=[] if group == "observed_data" else ["chain", "draw"],
            library=None,
        )
    return az.InferenceData(**datasets)


def _as_dict(group: str, value) -> dict[str, np.ndarray]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        if group in ("posterior", "prior"):
            raise TypeError(
                f"{group} must be a dict name -> draws, got {type(value).__name__}; for a model "
                "whose leaves carry (chains, draws) axes, use bs.draws_to_dict(model, names)."
            )
        value = {"y": value}
    return {str(name): np.asarray(v) for name, v in value.items()}


def _sample_stats(stats) -> dict[str, np.ndarray]:
    out = {}
    for name, value in _as_dict("sample_stats", stats or {}).items():
        standard = _STAT_ALIASES.get(name, name)
        if standard in out:
            raise ValueError(
                f"sample_stats gives {standard!r} twice (as {name!r} and under another name)."
            )
        # arviz counts divergences by summing a boolean.
        out[standard] = value.astype(bool) if standard == "diverging" else value
    return out


def _check_chains_draws(groups) -> None:
    first = None
    for group, data in groups:
        for name, value in data.items():
            if value.ndim < 2:
                raise ValueError(
                    f"{group} variable {name!r} must have leading (chains, draws) axes, got "
                    f"shape {value.shape}; add a chain axis with x[None] for a single chain."
                )
            if first is None:
                first = (value.shape[:2], group, name)
            elif value.shape[:2] != first[0]:
                raise ValueError(
                    f"{group} variable {name!r} has (chains, draws) = {value.shape[:2]}, but "
                    f"{first[1]} variable {first[2]!r} has {first[0]}; all arrays must share the "
                    "leading (chains, draws) axes."
                )


def _event_dims(group: str, name: str, event: tuple, user_dims) -> tuple[str, ...]:
    ndim = len(event)
    if name in user_dims:
        names = user_dims[name]
        # A pointwise log-likelihood may reduce its observation's trailing axes (arviz does so).
        if group == "log_likelihood" and len(names) > ndim:
            names = names[:ndim]
        if len(names) != ndim:
            raise ValueError(
                f"dims[{name!r}] = {names} has {len(names)} names, but {group} variable "
                f"{name!r} has {ndim} event axes (shape {event} after chain, draw)."
            )
    elif group in ("posterior", "prior") and name in _PARAMETER_DIMS:
        names = _PARAMETER_DIMS[name]
        if ndim == len(names) + 1 and name in _TIME_VARYING:
            names = ("time", *names)
        elif ndim != len(names):
            names = _generic_dims(name, ndim)
    elif group in ("log_likelihood", "observed_data", "posterior_predictive") and ndim <= 2:
        names = ("time", "obs")[:ndim]
    else:
        names = _generic_dims(name, ndim)
    if len(set(names)) != len(names):
        raise ValueError(f"dims of {group} variable {name!r} repeat a name: {names}.")
    return tuple(names)


def _generic_dims(name: str, ndim: int) -> tuple[str, ...]:
    return tuple(f"{name}_dim_{i}" for i in range(ndim))


# -- plots -------------------------------------------------------------------------------------


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}.")


def _times(times, num_timesteps: int) -> np.ndarray:
    if times is None:
        return np.arange(num_timesteps)
    times = np.asarray(times)
    if times.shape != (num_timesteps,):
        raise ValueError(f"times must have shape ({num_timesteps},) (T,), got {times.shape}.")
    return times


def _axes(ax, count: int, what: str) -> tuple[Figure, list[Axes]]:
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(
            count, 1, sharex=True, squeeze=False, figsize=(8.0, 1.0 + 1.8 * count)
        )
        return fig, list(axes[:, 0])
    axes = list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) != count:
        raise ValueError(f"ax must hold one Axes per {what} ({count}), got {len(axes)}.")
    return axes[0].figure, axes


def _names(names, count: int, default: str, arg: str) -> list[str]:
    if names is None:
        return [f"{default} {i}" for i in range(count)]
    names = list(names)
    if len(names) != count:
        raise ValueError(f"{arg} must have {count} entries, got {len(names)}.")
    return [str(n) for n in names]


def _percent(level: float) -> str:
    return f"{100 * level:g}%"


def plot_states(
    result: FilterResult | SmootherResult,
    *,
    times: Float[ArrayLike, " T"] | None = None,
    truth: Float[ArrayLike, "T D"] | None = None,
    y: Float[ArrayLike, " T *M"] | None = None,
    state_names: Sequence[str] | None = None,
    level: float = 0.95,
    ax: Axes | Sequence[Axes] | None = None,
    obs_states: Sequence[int] | None = None,
) -> Figure:
    r"""Filtered or smoothed states with central bands, one panel per state dimension.

    The band of state $i$ is $\mu_{t,i} \pm z\,\sigma_{t,i}$ with $\sigma_{t,i}^2$ = covs[t, i, i]
    and $z = \Phi^{-1}((1 + \text{level})/2)$: the central `level` interval of the marginal normal.

    Args:
        result: a filter or smoother result, with `means` (T, D) and `covs` (T, D, D).
        times: x-axis values (T,); default 0, ..., T - 1.
        truth: true states (T, D), drawn dashed.
        y: observations (T, M) or (T,); NaN entries are skipped. Column j is drawn on the panel
            of state `obs_states[j]`.
        state_names: panel labels (D,).
        level: probability mass of the band, in (0, 1).
        ax: D Axes to draw on; default a new figure.
        obs_states: the state panel of each column of y (M,); default column j on panel j, the
            usual layout when H picks the first M states (as with positions and velocities).

    Returns:
        The matplotlib Figure.
    """
    _check_level(level)
    if not (hasattr(result, "means") and hasattr(result, "covs")):
        raise TypeError(
            f"result must have .means (T, D) and .covs (T, D, D), got {type(result).__name__}."
        )
    means, covs = np.asarray(result.means), np.asarray(result.covs)
    if means.ndim != 2:
        raise ValueError(f"result.means must have shape (T, D), got {means.shape}.")
    T, D = means.shape
    if covs.shape != (T, D, D):
        raise ValueError(f"result.covs must have shape ({T}, {D}, {D}), got {covs.shape}.")
    times = _times(times, T)
    if truth is not None:
        truth = np.asarray(truth)
        if truth.shape != (T, D):
            raise ValueError(f"truth must have shape ({T}, {D}) (T, D), got {truth.shape}.")
    if y is not None:
        y = np.asarray(y, dtype=float)
        y = y[:, None] if y.ndim == 1 else y
        if y.ndim != 2 or y.shape[0] != T:
            raise ValueError(f"y must have shape ({T}, M) or ({T},), got {np.shape(y)}.")
        if obs_states is None:
            if y.shape[1] > D:
                raise ValueError(
                    f"y has {y.shape[1]} columns but there are only {D} states: pass "
                    "obs_states= (the state panel of each column)."
                )
            obs_states = range(y.shape[1])
        obs_states = [int(i) for i in obs_states]
        if len(obs_states) != y.shape[1] or not all(0 <= i < D for i in obs_states):
            raise ValueError(
                f"obs_states must give one state index in [0, {D}) per column of y "
                f"({y.shape[1]}), got {obs_states}."
            )
    state_names = _names(state_names, D, "state", "state_names")
    fig, axes = _axes(ax, D, "state dimension")

    z = NormalDist().inv_cdf(0.5 + level / 2)
    # Clip round-off negatives on the diagonal so a degenerate state gives a zero-width band.
    sds = np.sqrt(np.clip(np.diagonal(covs, axis1=1, axis2=2), 0.0, None))
    for i, a in enumerate(axes):
        mean, sd = means[:, i], sds[:, i]
        a.fill_between(
            times,
            mean - z * sd,
            mean + z * sd,
            color="C0",
            alpha=0.3,
            lw=0,
            label=f"{_percent(level)} band",
        )
        a.plot(times, mean, color="C0", label="mean")
        if truth is not None:
            a.plot(times, truth[:, i], "k--", lw=1, label="true state")
        if y is not None:
            for j in (j for j, k in enumerate(obs_states) if k == i):
                seen = np.isfinite(y[:, j])
                a.plot(times[seen], y[seen, j], ".", ms=3, color="C3", label="observed")
        a.set_ylabel(state_names[i])
    axes[0].legend(loc="best", fontsize=8)
    axes[-1].set_xlabel("time")
    return fig


def plot_posterior_predictive(
    y: Float[ArrayLike, " T *M"],
    predictive: Float[ArrayLike, "*CS T *M"],
    *,
    times: Float[ArrayLike, " T"] | None = None,
    level: float = 0.9,
    obs_names: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Observed series against the posterior predictive median and central band.

    Args:
        y: observations (T, M), or (T,) when M = 1; NaN entries are skipped.
        predictive: predictive draws (S, T, M) or (C, S, T, M); when y is (T,), also (S, T) or
            (C, S, T). Chains are pooled.
        times: x-axis values (T,); default 0, ..., T - 1.
        level: probability mass of the band (between empirical quantiles), in (0, 1).
        obs_names: panel labels (M,).
        ax: M Axes to draw on; default a new figure.

    Returns:
        The matplotlib Figure.
    """
    _check_level(level)
    y = np.asarray(y, dtype=float)
    pred = np.asarray(predictive, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
        # Draws of a scalar series may come as (..., T) or, like sample_nuts's, (..., T, 1).
        if pred.shape[-2:] != (y.shape[0], 1):
            pred = pred[..., None]
    if y.ndim != 2:
        raise ValueError(f"y must have shape (T, M) or (T,), got {y.shape}.")
    T, M = y.shape
    if pred.ndim not in (3, 4) or pred.shape[-2:] != (T, M):
        raise ValueError(
            f"predictive must have shape (S, {T}, {M}) or (C, S, {T}, {M}) to match y "
            f"{np.shape(y)}, got {np.shape(predictive)}."
        )
    draws = pred.reshape(-1, T, M)
    times = _times(times, T)
    obs_names = _names(obs_names, M, "obs", "obs_names")
    fig, axes = _axes(ax, M, "observed dimension")

    low, median, high = np.quantile(draws, [(1 - level) / 2, 0.5, (1 + level) / 2], axis=0)
    for j, a in enumerate(axes):
        band = f"{_percent(level)} predictive"
        a.fill_between(times, low[:, j], high[:, j], color="C0", alpha=0.3, lw=0, label=band)
        a.plot(times, median[:, j], color="C0", label="predictive median")
        seen = np.isfinite(y[:, j])
        a.plot(times[seen], y[seen, j], ".", ms=3, color="k", label="observed")
        a.set_ylabel(obs_names[j])
    axes[0].legend(loc="best", fontsize=8)
    axes[-1].set_xlabel("time")
    return fig
