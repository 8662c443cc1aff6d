"""`bs.train`: stochastic maximisation of a model's evidence lower bound over a batch of series,
with optax."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import check_positive_int
from .._jit import filter_jit
from .._types import Array, Float, Key
from ..data import TimeSeries, model_dtype
from ._progress import progress_bar

# Steps run inside one compiled call between progress-bar updates.
_CHUNK = 25


class TrainHistory(NamedTuple):
    """What happened during `bs.train`.

    Attributes:
        elbo: (steps,) the ELBO estimate of each step, averaged over the series of the step's
            (mini)batch, at the parameters before that step's update; NaN where a step was
            skipped.
        num_skipped: steps whose ELBO or gradient was not finite; their update was not applied.
    """

    elbo: Float[Array, " steps"]
    num_skipped: int


def train(
    model,
    data,
    *,
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = 1000,
    key: Key,
    times=None,
    batch_size: int | None = None,
    num_samples: int = 1,
    progress: bool = True,
):
    r"""Maximise `model.elbo` averaged over a batch of series of equal length, with optax.

    Every array leaf of the model that is a float (`equinox.is_inexact_array`) is trained;
    constrained leaves (`bs.Positive`, `bs.Covariance`) are trained through their unconstrained
    arrays, so they stay valid. Each step draws a minibatch of `batch_size` series (without
    replacement; all of them when None), one ELBO estimate per series with `num_samples`
    draws, and takes one optimiser step on

    $$-\frac{1}{B \bar n} \sum_{b} \widehat{\mathcal{L}}(y^{(b)}),$$

    $\bar n$ the mean number of observed entries per series (so that learning rates do not
    depend on T). A step whose value or gradient is not finite is skipped. Steps run in
    compiled chunks of 25 (`jax.lax.scan`), with a progress bar between chunks.

    Args:
        model: a model with a method `elbo(series, *, key, num_samples) -> ()` (e.g.
            `bs.NCDSSM`).
        data: a list of B `bs.TimeSeries` of the same length T; a `bs.TimeSeries` from
            `bs.TimeSeries.stack` (times (B, T), values (B, T, M)); or an array of values
            (B, T, M) with `times`. NaN marks missing entries; pad shorter series with rows of
            NaN at later times.
        optimizer: an optax transformation; default Adam (learning rate 1e-2) after clipping
            the gradient's global norm to 10.
        num_steps: the number of optimiser steps.
        key: PRNG key for the minibatches and the ELBO's draws.
        times: with an array `data`, the times (B, T) or (T,) (shared); default 0, 1, ..., T-1.
        batch_size: series per step (default: all).
        num_samples: draws per ELBO estimate.
        progress: show a progress bar (tqdm) with the ELBO.

    Returns:
        `(trained_model, history)`: the model after the last step and a `TrainHistory`.

    Raises:
        ValueError: series of different lengths or widths, bad times, bad settings, or a run in
            which no step had a finite ELBO.
        TypeError: a model without an `elbo` method.
    """
    if not callable(getattr(model, "elbo", None)):
        raise TypeError(
            f"bs.train needs a model with an elbo(series, *, key, num_samples) method (such as "
            f"bs.NCDSSM), got {type(model).__name__}."
        )
    if key is None:
        raise ValueError("bs.train needs key=jax.random.key(...) for its random draws.")
    check_positive_int("num_steps", num_steps)
    check_positive_int("num_samples", num_samples)
    dtype = model_dtype(model)
    all_times, values = _batch(data, times)
    B = values.shape[0]
    expected = getattr(model, "obs_dim", None)
    if expected is not None and values.shape[2] != expected:
        raise ValueError(
            f"the model has obs_dim = {expected} but the series have {values.shape[2]} columns."
        )
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or not 1 <= batch_size <= B
    ):
        raise ValueError(
            f"batch_size must be an int in [1, {B}] (the number of series), got {batch_size!r}."
        )
    scale = float(max(np.mean(np.sum(~np.isnan(values), axis=(1, 2))), 1.0))
    all_times, values = jnp.asarray(all_times, dtype), jnp.asarray(values, dtype)

    optimizer = _DEFAULT_OPTIMIZER if optimizer is None else optimizer
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    chunk = min(_CHUNK, num_steps)
    num_chunks = math.ceil(num_steps / chunk)
    settings = _Settings(optimizer, None if batch_size is None else int(batch_size), num_samples)
    elbos, oks = [], []
    with progress_bar(num_steps, progress, "train", label="elbo") as bar:
        for c in range(num_chunks):
            key, chunk_key = jax.random.split(key)
            active = np.arange(c * chunk, (c + 1) * chunk) < num_steps
            params, opt_state, (elbo, ok) = _run_chunk(
                params,
                static,
                opt_state,
                all_times,
                values,
                jax.random.split(chunk_key, chunk),
                jnp.asarray(active),
                jnp.asarray(scale, dtype),
                settings,
            )
            elbo, ok = np.asarray(elbo)[active], np.asarray(ok)[active]
            elbos.append(np.where(ok, elbo, np.nan))
            oks.append(ok)
            shown = elbo[ok]
            bar.update(int(active.sum()), float(shown[-1]) if shown.size else float("nan"))
    ok = np.concatenate(oks)
    if not ok.any():
        raise ValueError(
            "No step of bs.train had a finite ELBO and gradient: check the data (scale, NaN) and "
            "the model's starting values, or use a smaller learning rate."
        )
    skipped = int((~ok).sum())
    if skipped:
        warnings.warn(
            f"bs.train skipped {skipped} of {num_steps} steps whose ELBO or gradient was not "
            "finite.",
            RuntimeWarning,
            stacklevel=2,
        )
    history = TrainHistory(elbo=jnp.asarray(np.concatenate(elbos)), num_skipped=skipped)
    return eqx.combine(params, static), history


_DEFAULT_OPTIMIZER = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-2))


class _Settings(eqx.Module):
    """The static settings of a compiled chunk (hashable, so that runs with the same settings
    reuse the compiled program)."""

    optimizer: optax.GradientTransformation = eqx.field(static=True)
    batch_size: int | None = eqx.field(static=True)
    num_samples: int = eqx.field(static=True)


@filter_jit
def _run_chunk(params, static, opt_state, times, values, keys, active, scale, settings: _Settings):
    optimizer, batch_size, num_samples = (
        settings.optimizer,
        settings.batch_size,
        settings.num_samples,
    )
    B = values.shape[0]

    def loss(p, t, v, key):
        model = eqx.combine(p, static)
        keys = jax.random.split(key, t.shape[0])

        def one(t_b, v_b, k_b):
            return model.elbo(TimeSeries(t_b, v_b), key=k_b, num_samples=num_samples)

        elbo = jnp.mean(jax.vmap(one)(t, v, keys))
        return -elbo / scale, elbo

    def do_step(carry, key):
        params, opt_state = carry
        k_batch, k_elbo = jax.random.split(key)
        if batch_size is None:
            t, v = times, values
        else:
            index = jax.random.choice(k_batch, B, (batch_size,), replace=False)
            t, v = times[index], values[index]
        (value, elbo), grad = jax.value_and_grad(loss, has_aux=True)(params, t, v, k_elbo)
        updates, new_opt_state = optimizer.update(grad, opt_state, params)
        new_params = eqx.apply_updates(params, updates)
        leaves = jax.tree.leaves(grad)
        ok = jnp.isfinite(value) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves]))
        # A step to a non-finite point is not taken.
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        params = jax.tree.map(keep, new_params, params)
        opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        return (params, opt_state), (elbo, ok)

    def skip_step(carry, key):
        return carry, (jnp.zeros((), values.dtype), jnp.zeros((), bool))

    def step(carry, args):
        key, is_active = args
        return jax.lax.cond(is_active, do_step, skip_step, carry, key)

    (params, opt_state), trace = jax.lax.scan(step, (params, opt_state), (keys, active))
    return params, opt_state, trace


def _batch(data, times) -> tuple[np.ndarray, np.ndarray]:
    """(times (B, T), values (B, T, M)) as NumPy arrays, after checks."""
    if isinstance(data, TimeSeries):
        if times is not None:
            raise ValueError("times= is for an array of values; a TimeSeries has its own times.")
        t, v = np.asarray(data.times), np.asarray(data.values)
        if t.ndim == 1:  # one series
            t, v = t[None], v[None]
    elif isinstance(data, list | tuple):
        if not data:
            raise ValueError("bs.train needs at least one series.")
        if times is not None:
            raise ValueError("times= is for an array of values; give TimeSeries for a list.")
        series = [
            s if isinstance(s, TimeSeries) else _plain_series(s, k) for k, s in enumerate(data)
        ]
        first = series[0]
        for k, s in enumerate(series[1:], start=1):
            if s.num_timesteps != first.num_timesteps:
                raise ValueError(
                    f"bs.train needs series of the same length: series 0 has T = "
                    f"{first.num_timesteps} time steps, series {k} has T = {s.num_timesteps}. "
                    "Pad the shorter series with rows of NaN at later times (missing rows add "
                    "nothing to the ELBO)."
                )
            if s.obs_dim != first.obs_dim:
                raise ValueError(
                    f"all series must have the same number of columns M: series 0 has "
                    f"{first.obs_dim}, series {k} has {s.obs_dim}."
                )
        t = np.stack([np.asarray(s.times) for s in series])
        v = np.stack([np.asarray(s.values) for s in series])
    else:
        v = np.asarray(data)
        if v.ndim != 3:
            raise ValueError(
                f"an array of series must have shape (B, T, M), got {v.shape}; or give a list of "
                "bs.TimeSeries."
            )
        B, T = v.shape[:2]
        if times is None:
            t = np.broadcast_to(np.arange(T, dtype=float), (B, T))
        else:
            t = np.asarray(times, float)
            if t.shape == (T,):
                t = np.broadcast_to(t, (B, T))
            if t.shape != (B, T):
                raise ValueError(
                    f"times must have shape (B, T) = ({B}, {T}) or (T,) = ({T},) to go with "
                    f"values of shape {v.shape}, got {t.shape}."
                )
            if not np.all(np.isfinite(t)) or not np.all(np.diff(t, axis=1) > 0):
                raise ValueError("times must be finite and strictly increasing along each series.")
    v = np.asarray(v, float)
    empty = np.flatnonzero(np.all(np.isnan(v), axis=(1, 2)))
    if empty.size:
        raise ValueError(f"series {int(empty[0])} is all NaN: there is nothing to learn from it.")
    if np.isinf(v).any():
        raise ValueError("the values have infinite entries; mark missing values with NaN.")
    return np.asarray(t, float), v


def _plain_series(values, k: int) -> TimeSeries:
    values = np.asarray(values)
    if values.ndim not in (1, 2):
        raise ValueError(
            f"series {k} must be a bs.TimeSeries or an array (T, M), got shape {values.shape}."
        )
    return TimeSeries(np.arange(values.shape[0], dtype=float), values)


__all__ = ["TrainHistory", "train"]
