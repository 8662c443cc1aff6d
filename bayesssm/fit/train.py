"""`bs.train`: stochastic maximisation of a model's evidence lower bound over a batch of series,
with optax; with periodic evaluation on held-out series, and checkpoints to resume from."""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import check_positive_int
from .._jit import filter_jit
from .._types import Array, Float, Int, Key
from ..data import TimeSeries, model_dtype
from . import _checkpoint
from ._progress import progress_bar

# Steps in one compiled call (`jax.lax.scan`). Every call has this length, whatever the run's
# num_steps, so that all calls run the same compiled program (a shorter stretch of steps masks
# the rest off), and a step gives the same bits wherever it falls.
_CHUNK = 25
# Held-out series evaluated together (vmap) when batch_size is None.
_EVAL_BATCH = 256
_DEFAULT_EVERY = 100


class TrainHistory(NamedTuple):
    """What happened during `bs.train`.

    Attributes:
        elbo: (steps,) the ELBO estimate of each step, averaged over the series of the step's
            (mini)batch, at the parameters before that step's update; NaN where a step was
            skipped.
        num_skipped: steps whose ELBO or gradient was not finite; their update was not applied.
        eval_steps: (E,) the step counts after which the held-out ELBO was evaluated: the
            multiples of `eval_every` and the last step (empty without `eval_data`).
        eval_elbo: (E,) the held-out ELBO at those steps: the mean over the `eval_data` series
            of `model.elbo` at the parameters after that many steps (empty without
            `eval_data`).
    """

    elbo: Float[Array, " steps"]
    num_skipped: int
    eval_steps: Int[Array, " E"]
    eval_elbo: Float[Array, " E"]


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
    eval_data=None,
    eval_times=None,
    eval_every: int | None = None,
    eval_num_samples: int = 1,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
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
    compiled chunks of at most 25 (`jax.lax.scan`), with a progress bar between chunks; chunks
    end at every multiple of `eval_every` and `checkpoint_every`.

    The randomness of step s (counted from 0) depends on `key` and s only: with
    `train_key, eval_key = jax.random.split(key)`, step s uses
    `jax.random.fold_in(train_key, s)`. So a run resumed from a checkpoint gives bit for bit
    the result of the same run uninterrupted.

    Held-out evaluation: with `eval_data`, after every `eval_every` steps and after the last
    step, the held-out ELBO is the mean over the eval series of
    `model.elbo(series_i, key=eval_keys[i], num_samples=eval_num_samples)`, with
    `eval_keys = jax.random.split(eval_key, E)` the same at every evaluation (so that
    evaluations differ only by the parameters). The series are evaluated in one compiled call,
    `batch_size` (or 256) of them at a time.

    Checkpoints: with `checkpoint`, the state (trainable arrays, optimizer state, step count,
    history) is written to that file every `checkpoint_every` steps and after the last step
    (and at the start of a fresh run), each time to a temporary file in the same directory
    that then replaces the checkpoint (`os.replace`), so an interruption leaves the last
    checkpoint whole. With `resume=True` and an existing file, the run continues from the
    file's step count, and its history is kept; if the file already holds `num_steps` steps or
    more, its state is returned at once (with the history of all its steps); give a larger
    `num_steps` to run on. The file is one line of JSON (format, version, step count,
    `num_steps`, fingerprints of the trainable arrays, of the optimizer state and of the data's
    shape) followed by the arrays in `equinox.tree_serialise_leaves` form; see
    `bayesssm/fit/_checkpoint.py`. The held-out data, `key`, `batch_size` and sample counts
    are not checked on resuming: keep them as they were for a result equal to the
    uninterrupted run's.

    Args:
        model: a model with a method `elbo(series, *, key, num_samples) -> ()` (e.g.
            `bs.NCDSSM`).
        data: a list of B `bs.TimeSeries` of the same length T; a `bs.TimeSeries` from
            `bs.TimeSeries.stack` (times (B, T), values (B, T, M)); or an array of values
            (B, T, M) with `times`. NaN marks missing entries; pad shorter series with rows of
            NaN at later times.
        optimizer: an optax transformation; default Adam (learning rate 1e-2) after clipping
            the gradient's global norm to 10.
        num_steps: the number of optimiser steps (in all, counting those of a checkpoint
            resumed from).
        key: PRNG key for the minibatches, the ELBO's draws and the evaluation's draws.
        times: with an array `data`, the times (B, T) or (T,) (shared); default 0, 1, ..., T-1.
        batch_size: series per step (default: all).
        num_samples: draws per ELBO estimate.
        progress: show a progress bar (tqdm) with the ELBO (and the latest held-out ELBO).
        eval_data: held-out series, in any form `data` takes, all of one length (which may
            differ from that of `data`) and with as many columns M as `data`.
        eval_times: with an array `eval_data`, its times, as `times` for `data`.
        eval_every: evaluate on `eval_data` after every this many steps (and after the last);
            default 100. Only with `eval_data`.
        eval_num_samples: draws per held-out ELBO estimate.
        checkpoint: a file path (in an existing directory) for checkpoints.
        checkpoint_every: save a checkpoint after every this many steps (and after the last);
            default `eval_every` if evaluating, else 100. Only with `checkpoint`.
        resume: continue from `checkpoint` if the file exists; with False, start afresh and
            overwrite it.

    Returns:
        `(trained_model, history)`: the model after the last step and a `TrainHistory`.

    Raises:
        ValueError: series of different lengths or widths, bad times, bad settings, a checkpoint
            written for another model, optimizer or data shape, or a run in which no step had a
            finite ELBO.
        TypeError: a model without an `elbo` method.

    Example:
        >>> import jax
        >>> import bayesssm as bs
        >>> data = bs.datasets.damped_pendulum(jax.random.key(0), num_series=8, num_timesteps=20)
        >>> held_out = bs.datasets.damped_pendulum(jax.random.key(1), num_series=4)
        >>> model = bs.NCDSSM(obs_dim=2, state_dim=2, aux_dim=2, key=jax.random.key(2), hidden=8)
        >>> trained, history = bs.train(
        ...     model, data.series(), num_steps=60, key=jax.random.key(3), progress=False,
        ...     eval_data=held_out.series(), eval_every=20, checkpoint="pendulum.ckpt",
        ... )
        >>> history.eval_steps.tolist()
        [20, 40, 60]
        >>> # Run on to 100 steps from the checkpoint (the first 60 are not run again):
        >>> trained, history = bs.train(
        ...     model, data.series(), num_steps=100, key=jax.random.key(3), progress=False,
        ...     eval_data=held_out.series(), eval_every=20, checkpoint="pendulum.ckpt",
        ... )
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
    check_positive_int("eval_num_samples", eval_num_samples)
    for name, every in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        if every is not None:
            check_positive_int(name, every)
    if not isinstance(resume, bool | np.bool_):
        raise ValueError(f"resume must be True or False, got {resume!r}.")
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
    if eval_data is None:
        for name, value in (("eval_every", eval_every), ("eval_times", eval_times)):
            if value is not None:
                raise ValueError(
                    f"{name} is given but eval_data is None: pass the held-out series as "
                    f"eval_data=..., or drop {name}."
                )
    else:
        eval_every = _DEFAULT_EVERY if eval_every is None else int(eval_every)
        eval_t, eval_v = _batch(eval_data, eval_times, what="eval_data", times_name="eval_times")
        if eval_v.shape[2] != values.shape[2]:
            raise ValueError(
                f"eval_data must have as many columns M as data: data has {values.shape[2]}, "
                f"eval_data has {eval_v.shape[2]}."
            )
    if checkpoint is None:
        if checkpoint_every is not None:
            raise ValueError(
                "checkpoint_every is given but checkpoint is None: pass a file path as "
                "checkpoint=..., or drop checkpoint_every."
            )
        path = None
    else:
        path = _checkpoint.check_path(checkpoint)
        if checkpoint_every is None:
            checkpoint_every = _DEFAULT_EVERY if eval_every is None else eval_every
        checkpoint_every = int(checkpoint_every)
    scale = float(max(np.mean(np.sum(~np.isnan(values), axis=(1, 2))), 1.0))
    all_times, values = jnp.asarray(all_times, dtype), jnp.asarray(values, dtype)

    train_key, eval_key = jax.random.split(key)
    optimizer = _DEFAULT_OPTIMIZER if optimizer is None else optimizer
    params, static = eqx.partition(model, eqx.is_inexact_array)
    params = _strong(params)
    opt_state = _strong(optimizer.init(params))
    settings = _Settings(optimizer, None if batch_size is None else int(batch_size), num_samples)
    evaluate = None
    if eval_data is not None:
        evaluate = _Evaluator(
            eval_t, eval_v, eval_key, dtype, eval_num_samples, batch_size or _EVAL_BATCH
        )

    log = _Log()
    step = 0
    if path is not None:
        fingerprint = _checkpoint.fingerprint(params, opt_state, values.shape)
        info = {
            "batch_size": settings.batch_size,
            "num_samples": num_samples,
            "eval_every": eval_every,
            "eval_num_samples": eval_num_samples if eval_data is not None else None,
            "eval_data_shape": None if eval_data is None else list(eval_v.shape),
            "checkpoint_every": checkpoint_every,
        }

        def save():
            _checkpoint.save(
                path,
                step=step,
                num_steps=num_steps,
                fingerprint=fingerprint,
                settings=info,
                params=params,
                opt_state=opt_state,
                history=log.history(),
            )

        if resume and path.exists():
            stored = _checkpoint.load(path, params, opt_state, fingerprint)
            params, opt_state = stored.params, stored.opt_state
            log.add(*stored.history)
            step = int(stored.header["step"])
        else:
            save()  # a fresh run replaces an old file at once

    if step < num_steps:
        with progress_bar(num_steps, progress, "train", label="elbo") as bar:
            if step:
                bar.update(step, log.last_elbo, **log.shown())
            while step < num_steps:
                stop = _next_stop(step, num_steps, eval_every, checkpoint_every)
                active = np.arange(_CHUNK) < stop - step
                params, opt_state, (elbo, ok) = _run_chunk(
                    params,
                    static,
                    opt_state,
                    all_times,
                    values,
                    train_key,
                    jnp.asarray(step, jnp.int32),
                    jnp.asarray(active),
                    jnp.asarray(scale, dtype),
                    settings,
                )
                elbo, ok = np.asarray(elbo)[active], np.asarray(ok)[active]
                step = stop
                log.add(np.where(ok, elbo, np.nan), ok)
                if evaluate is not None and (step % eval_every == 0 or step == num_steps):
                    log.add_eval(step, evaluate(params, static))
                if path is not None and (step % checkpoint_every == 0 or step == num_steps):
                    save()
                bar.update(int(active.sum()), log.last_elbo, **log.shown())

    history = log.history()
    ok = history.ok
    if not ok.any():
        raise ValueError(
            "No step of bs.train had a finite ELBO and gradient: check the data (scale, NaN) and "
            "the model's starting values, or use a smaller learning rate."
        )
    skipped = int((~ok).sum())
    if skipped:
        warnings.warn(
            f"bs.train skipped {skipped} of {ok.size} steps whose ELBO or gradient was not finite.",
            RuntimeWarning,
            stacklevel=2,
        )
    result = TrainHistory(
        elbo=jnp.asarray(history.elbo.astype(dtype)),
        num_skipped=skipped,
        eval_steps=jnp.asarray(history.eval_steps),
        eval_elbo=jnp.asarray(history.eval_elbo.astype(dtype)),
    )
    return eqx.combine(params, static), result


_DEFAULT_OPTIMIZER = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-2))


def _strong(tree):
    """The same arrays without weak types, so that a fresh run and a run resumed from a file
    (whose arrays are never weakly typed) call the same compiled program."""
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype), tree)


def _next_stop(step: int, num_steps: int, *intervals: int | None) -> int:
    """The end of the chunk that starts at `step`: at most `_CHUNK` steps on, and never past
    a multiple of an interval or `num_steps`."""
    stop = min(step + _CHUNK, num_steps)
    for every in intervals:
        if every is not None:
            stop = min(stop, (step // every + 1) * every)
    return stop


class _Log:
    """The history of a run, kept as a list of pieces (joined when saved and at the end)."""

    def __init__(self):
        self._pieces = []
        self.last_elbo = float("nan")  # the latest finite ELBO
        self.last_eval = None

    def add(self, elbo, ok, eval_steps=(), eval_elbo=()):
        piece = _checkpoint.History(elbo, ok, eval_steps, eval_elbo).normalised()
        self._pieces.append(piece)
        if piece.ok.any():
            self.last_elbo = float(piece.elbo[piece.ok][-1])
        if piece.eval_elbo.size:
            self.last_eval = float(piece.eval_elbo[-1])

    def add_eval(self, step: int, value: float):
        self.add(np.zeros(0), np.zeros(0, bool), [step], [value])

    def history(self) -> _checkpoint.History:
        pieces = self._pieces or [_checkpoint.History.empty()]
        joined = _checkpoint.History(
            *(np.concatenate(parts) for parts in zip(*pieces, strict=True))
        )
        self._pieces = [joined]
        return joined

    def shown(self) -> dict:
        """Extra values for the progress bar: the latest held-out ELBO."""
        return {} if self.last_eval is None else {"eval_elbo": self.last_eval}


class _Settings(eqx.Module):
    """The static settings of a compiled chunk (hashable, so that runs with the same settings
    reuse the compiled program)."""

    optimizer: optax.GradientTransformation = eqx.field(static=True)
    batch_size: int | None = eqx.field(static=True)
    num_samples: int = eqx.field(static=True)


@filter_jit
def _run_chunk(
    params, static, opt_state, times, values, key, start, active, scale, settings: _Settings
):
    """`len(active)` steps from step `start` (those with `active` False change nothing)."""
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

    # Step s's key depends on (key, s) only, not on where the chunks begin.
    steps = start + jnp.arange(active.shape[0], dtype=start.dtype)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, steps)
    (params, opt_state), trace = jax.lax.scan(step, (params, opt_state), (keys, active))
    return params, opt_state, trace


class _Evaluator:
    """The held-out ELBO of a model: the mean of `model.elbo` over the eval series, each with its
    own fixed key, `batch` series at a time (vmap) in one compiled call (`jax.lax.map`)."""

    def __init__(self, times, values, key, dtype, num_samples: int, batch: int):
        E = values.shape[0]
        batch = min(int(batch), E)
        num_batches = -(-E // batch)
        # Pad to whole batches with copies of the first series; their terms are masked off.
        index = np.arange(num_batches * batch) % E
        keys = jax.random.split(key, E)[index]
        shape = (num_batches, batch)
        self.times = jnp.asarray(times[index], dtype).reshape(shape + times.shape[1:])
        self.values = jnp.asarray(values[index], dtype).reshape(shape + values.shape[1:])
        self.keys = keys.reshape(shape + keys.shape[1:])
        self.mask = jnp.asarray(np.arange(num_batches * batch) < E).reshape(shape)
        self.num_samples = num_samples

    def __call__(self, params, static) -> float:
        value = _evaluate(
            params, static, self.times, self.values, self.keys, self.mask, self.num_samples
        )
        return float(value)


@filter_jit
def _evaluate(params, static, times, values, keys, mask, num_samples: int):
    model = eqx.combine(params, static)

    def one(t, v, k):
        return model.elbo(TimeSeries(t, v), key=k, num_samples=num_samples)

    elbos = jax.lax.map(lambda args: jax.vmap(one)(*args), (times, values, keys))
    return jnp.sum(jnp.where(mask, elbos, 0.0)) / jnp.sum(mask)


def _batch(
    data, times, what: str = "data", times_name: str = "times"
) -> tuple[np.ndarray, np.ndarray]:
    """(times (B, T), values (B, T, M)) as NumPy arrays, after checks. `what` and `times_name`
    name the arguments in messages (the messages about `data` name no argument)."""
    pre = "" if what == "data" else f"{what}: "
    if isinstance(data, TimeSeries):
        if times is not None:
            raise ValueError(
                f"{times_name}= is for an array of values; a TimeSeries has its own times."
            )
        t, v = np.asarray(data.times), np.asarray(data.values)
        if t.ndim == 1:  # one series
            t, v = t[None], v[None]
    elif isinstance(data, list | tuple):
        if not data:
            raise ValueError(f"{pre}bs.train needs at least one series.")
        if times is not None:
            raise ValueError(
                f"{times_name}= is for an array of values; give TimeSeries for a list."
            )
        series = [
            s if isinstance(s, TimeSeries) else _plain_series(s, k, pre) for k, s in enumerate(data)
        ]
        first = series[0]
        for k, s in enumerate(series[1:], start=1):
            if s.num_timesteps != first.num_timesteps:
                raise ValueError(
                    f"{pre}bs.train needs series of the same length: series 0 has T = "
                    f"{first.num_timesteps} time steps, series {k} has T = {s.num_timesteps}. "
                    "Pad the shorter series with rows of NaN at later times (missing rows add "
                    "nothing to the ELBO)."
                )
            if s.obs_dim != first.obs_dim:
                raise ValueError(
                    f"{pre}all series must have the same number of columns M: series 0 has "
                    f"{first.obs_dim}, series {k} has {s.obs_dim}."
                )
        t = np.stack([np.asarray(s.times) for s in series])
        v = np.stack([np.asarray(s.values) for s in series])
    else:
        v = np.asarray(data)
        if v.ndim != 3:
            raise ValueError(
                f"{pre}an array of series must have shape (B, T, M), got {v.shape}; or give a "
                "list of bs.TimeSeries."
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
                    f"{times_name} must have shape (B, T) = ({B}, {T}) or (T,) = ({T},) to go with "
                    f"values of shape {v.shape}, got {t.shape}."
                )
            if not np.all(np.isfinite(t)) or not np.all(np.diff(t, axis=1) > 0):
                raise ValueError(
                    f"{times_name} must be finite and strictly increasing along each series."
                )
    v = np.asarray(v, float)
    empty = np.flatnonzero(np.all(np.isnan(v), axis=(1, 2)))
    if empty.size:
        raise ValueError(
            f"{pre}series {int(empty[0])} is all NaN: there is nothing to learn from it."
        )
    if np.isinf(v).any():
        raise ValueError(f"{pre}the values have infinite entries; mark missing values with NaN.")
    return np.asarray(t, float), v


def _plain_series(values, k: int, pre: str = "") -> TimeSeries:
    values = np.asarray(values)
    if values.ndim not in (1, 2):
        raise ValueError(
            f"{pre}series {k} must be a bs.TimeSeries or an array (T, M), got shape {values.shape}."
        )
    return TimeSeries(np.arange(values.shape[0], dtype=float), values)


__all__ = ["TrainHistory", "train"]
