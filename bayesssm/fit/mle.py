"""Maximum-likelihood (and MAP) fitting with optax."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import check_positive_int
from .._jit import filter_jit
from .._types import Array, Float, Key
from ._objective import Objective, log_posterior, num_in_batch, series_at
from ._progress import progress_bar
from ._selection import Selection, perturbed_starts

# Steps run inside one compiled call between progress-bar updates.
_CHUNK = 25


class MLEHistory(NamedTuple):
    """What happened during `bs.fit_mle`.

    Attributes:
        objective: (steps,) the objective per step of the best restart: the negative
            log-likelihood, minus the log prior when priors are given (MAP).
        grad_norm: (steps,) largest absolute gradient entry of the objective divided by the
            number of observed entries, per step of the best restart.
        converged: whether the best restart met both tolerances.
        num_steps: steps taken by the best restart.
        restart_objectives: (R,) the final objective of every restart (inf where one failed).
        best_restart: index of the restart returned.
    """

    objective: Float[Array, " steps"]
    grad_norm: Float[Array, " steps"]
    converged: bool
    num_steps: int
    restart_objectives: Float[Array, " R"]
    best_restart: int


class _State(eqx.Module):
    params: tuple
    opt_state: object
    value: Array  # scaled objective at params
    grad: tuple
    grad_norm: Array
    steps: Array
    converged: Array
    failed: Array
    culprit: Array  # the first fitted leaf whose value or gradient went non-finite (-1: none)


def fit_mle(
    model,
    y,
    *,
    where: Callable,
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = 1000,
    priors=None,
    engine=None,
    key: Key | None = None,
    inputs=None,
    num_restarts: int = 1,
    restart_scale: float = 0.5,
    batch_size: int | None = None,
    tol: float = 1e-10,
    gtol: float = 1e-6,
    progress: bool = True,
):
    r"""Fit the leaves picked by `where` by maximum likelihood (MAP when `priors` are given).

    Minimises $-\log p(y \mid \theta) - \log p(\theta)$ over the unconstrained arrays of the
    fitted leaves (constrained leaves such as `bs.Covariance` stay valid at every step), divided
    internally by the number of observed entries so that tolerances do not depend on T.

    Args:
        model: the starting model.
        y: one series (T, M) or (T,), or a batch of series whose log-likelihoods add: values
            (B, T, M), or irregularly sampled series as one `bs.TimeSeries.stack(...)`.
        where: the leaves to fit, as in `equinox.tree_at`: `lambda m: (m.Q, m.R)`.
        optimizer: any optax transformation. Default: L-BFGS with a zoom line search
            (`optax.lbfgs()`), or Adam (learning rate 1e-2) with `batch_size` or a random
            engine.
        num_steps: the most optimiser steps.
        priors: one distrax or numpyro distribution (or None) per leaf of `where`, on its value.
        engine: inference engine giving a differentiable log-likelihood (default: exact). A
            random engine (`bs.HamiltonianSMC`, whose gradient is its fixed-lag estimate of the
            score; `bs.ParticleFilter`, differentiated through its moves) gets a fresh key at
            every step: stochastic-gradient ascent, all `num_steps` run.
        key: PRNG key; needed for restarts, minibatches and random engines.
        inputs: control inputs (T, U).
        num_restarts: independent starts run together with `vmap`: the given model, and
            `num_restarts - 1` starts with its unconstrained arrays perturbed by
            `restart_scale` times a standard normal. The best one is returned.
        batch_size: with a batch of series, the number drawn (without replacement) per step.
            The objective is then stochastic: all `num_steps` are run.
        tol: stop when the objective changes by less than `tol` (relative) in a step...
        gtol: ...and every gradient entry of the scaled objective is below `gtol`.
        progress: show a progress bar (tqdm) with the objective.

    Returns:
        `(fitted_model, history)`: the model at the best restart's final point, and an
        `MLEHistory`.

    Raises:
        ValueError: bad `where`, priors or data; a start where the objective is not finite
            (naming the leaves whose values are not finite).
    """
    selection = Selection(model, where, priors)
    objective = Objective(model, y, engine=engine, inputs=inputs)
    _check_settings(num_steps, num_restarts, batch_size, objective, key)
    random_engine = objective.engine.is_random
    stochastic = batch_size is not None or random_engine
    optimizer = _with_extra_args(optimizer or (_DEFAULT_ADAM if stochastic else _DEFAULT_LBFGS))
    y_all = objective.device_y()
    if key is None:
        key = jax.random.key(0)  # only used by deterministic paths; never for randomness
    key, start_key = jax.random.split(key)
    loss = _Loss(selection, objective)
    scale = objective.scale
    if batch_size is not None:  # a minibatch stands for the whole batch
        scale = scale * batch_size / objective.num_series
    scale = jnp.asarray(scale, objective.dtype)

    start = selection.params(model)
    bad = selection.non_finite(start)
    if bad:
        raise ValueError(
            f"The starting values of {', '.join(bad)} are not finite; give finite values."
        )
    starts = perturbed_starts(start, num_restarts, restart_scale, start_key, keep_first=True)
    key, init_key = jax.random.split(key)
    state = _init(starts, model, y_all, scale, loss, optimizer, init_key if random_engine else None)
    _check_start(selection, state)
    values, grads = [], []
    with progress_bar(num_steps, progress, "fit_mle") as bar:
        done = 0
        while done < num_steps:
            size = min(_CHUNK, num_steps - done)
            key, chunk_key = jax.random.split(key)
            state, trace = _run_chunk(
                state,
                model,
                y_all,
                scale,
                chunk_key,
                size,
                loss,
                optimizer,
                tol,
                gtol,
                batch_size,
                random_engine,
            )
            values.append(trace[0])
            grads.append(trace[1])
            done += size
            # Host-side (NumPy) checks: eager jnp ops would each compile a small program.
            failed, value = np.asarray(state.failed), np.asarray(state.value)
            best = float(np.min(np.where(failed, np.inf, value)))
            bar.update(size, best * objective.scale)
            if not stochastic and bool(np.all(np.asarray(state.converged) | failed)):
                break
    return _finish(selection, objective, model, state, values, grads)


# Module-level defaults, so that repeated fits hit the compilation cache.
_DEFAULT_LBFGS = optax.lbfgs()
_DEFAULT_ADAM = optax.adam(1e-2)


@functools.cache
def _with_extra_args(optimizer):
    return optax.with_extra_args_support(optimizer)


@dataclasses.dataclass(frozen=True)
class _Loss:
    """Negative log posterior divided by `scale`; hashable, so compiled fits are reused."""

    selection: Selection
    objective: Objective

    def __call__(self, params, model, y, scale, key=None):
        return -log_posterior(self.objective, self.selection, model, params, y, key) / scale


@filter_jit
def _init(starts, model, y, scale, loss, optimizer, key) -> _State:
    def one(params):
        value, grad = jax.value_and_grad(loss)(params, model, y, scale, key)
        return _State(
            params,
            optimizer.init(params),
            value,
            grad,
            _max_abs(grad),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), bool),
            ~jnp.isfinite(value),
            jnp.asarray(-1),
        )

    # Strongly typed leaves: a chunk's output state then has the same types as its input, so the
    # chunk program compiles once (a weakly typed optax field would otherwise recompile it).
    return jax.tree.map(_strongly_typed, jax.vmap(one)(starts))


def _strongly_typed(x):
    return jnp.array(x, dtype=x.dtype) if eqx.is_array(x) else x


@filter_jit
def _run_chunk(
    state, model, y, scale, key, size, loss, optimizer, tol, gtol, batch_size, random_engine
):
    """`size` optimiser steps for every restart; finished restarts stand still. A minibatch or
    a random engine makes each step's objective a new draw."""
    stored = [optax.tree_utils.tree_get(state.opt_state, name) for name in ("value", "grad")]
    reuses_line_search = all(x is not None for x in stored)

    def one_restart(state, key):
        def step(state, key):
            key_batch, key_engine = jax.random.split(key)
            y_step = y if batch_size is None else _minibatch(y, key_batch, batch_size)
            engine_key = key_engine if random_engine else None

            def value_fn(params):
                return loss(params, model, y_step, scale, engine_key)

            if batch_size is None and not random_engine:
                value, grad = state.value, state.grad
            else:  # a new draw: the stored value and gradient were for another one
                value, grad = jax.value_and_grad(value_fn)(state.params)
            updates, opt_state = optimizer.update(
                grad, state.opt_state, state.params, value=value, grad=grad, value_fn=value_fn
            )
            params = optax.apply_updates(state.params, updates)
            if reuses_line_search:
                # L-BFGS's line search has evaluated the new point already. Read it directly:
                # `optax.value_and_grad_from_state` would add a third copy of the gradient
                # program to this one (in a `cond` for uninitialised states), which only costs
                # compile time.
                new_value = optax.tree_utils.tree_get(opt_state, "value")
                new_grad = optax.tree_utils.tree_get(opt_state, "grad")
            elif random_engine:  # a random objective: the next step draws anew anyway
                new_value, new_grad = value, grad
            else:
                new_value, new_grad = jax.value_and_grad(value_fn)(params)
            finite = jnp.isfinite(new_value) & _all_finite(new_grad)
            culprit = _first_non_finite(loss.selection, params, new_grad)
            change = jnp.abs(new_value - state.value)
            converged = (change <= tol * jnp.maximum(jnp.abs(new_value), 1.0)) & (
                _max_abs(new_grad) <= gtol
            )
            stop = state.converged | state.failed
            moved = _State(
                params,
                opt_state,
                new_value,
                new_grad,
                _max_abs(new_grad),
                state.steps + 1,
                converged & finite,
                ~finite,
                state.culprit,
            )
            # A step to a non-finite point is not taken: the restart stops where it was, and
            # remembers which leaf went bad.
            kept = eqx.tree_at(lambda s: (s.failed, s.culprit), state, (~finite, culprit))
            new_state = jax.tree.map(
                lambda s, m, k: jnp.where(stop, s, jnp.where(finite, m, k)), state, moved, kept
            )
            return new_state, (new_state.value, new_state.grad_norm)

        return jax.lax.scan(step, state, jax.random.split(key, size))

    keys = jax.random.split(key, state.value.shape[0])
    if state.value.shape[0] == 1:
        # One start: no vmap. Under vmap the line search's and optax's `lax.cond`s become
        # selects that evaluate both branches, which tripled the cost of a step.
        squeeze = lambda x: x[0]  # noqa: E731
        state, trace = one_restart(jax.tree.map(squeeze, state), keys[0])
        return jax.tree.map(lambda x: x[None], (state, trace))
    return jax.vmap(one_restart)(state, keys)


def _minibatch(y, key, batch_size):
    index = jax.random.choice(key, num_in_batch(y), (batch_size,), replace=False)
    return series_at(y, index)


def _max_abs(tree) -> Array:
    leaves = jax.tree.leaves(tree)
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))


def _first_non_finite(selection: Selection, params: tuple, grad: tuple) -> Array:
    """Index of the first fitted leaf whose value or gradient has a NaN or inf (-1: none)."""
    bad = jnp.stack(
        [
            ~(_all_finite(value) & _all_finite(g))
            for value, g in zip(selection.values(params), grad, strict=True)
        ]
    )
    return jnp.where(jnp.any(bad), jnp.argmax(bad), -1)


def _all_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_settings(num_steps, num_restarts, batch_size, objective: Objective, key) -> None:
    check_positive_int("num_steps", num_steps)
    check_positive_int("num_restarts", num_restarts)
    needs_key = num_restarts > 1 or batch_size is not None or objective.engine.is_random
    if needs_key and key is None:
        raise ValueError(
            "fit_mle needs key=jax.random.key(...) for restarts, minibatches or random engines."
        )
    if batch_size is not None:
        if not objective.batched:
            raise ValueError("batch_size needs a batch of series y of shape (B, T, M).")
        if not isinstance(batch_size, int) or not 1 <= batch_size <= objective.num_series:
            raise ValueError(
                f"batch_size must be an int in [1, {objective.num_series}] (the number of "
                f"series), got {batch_size!r}."
            )


def _check_start(selection: Selection, state: _State) -> None:
    """A start (restart 0, the model as given) where the objective or its gradient is not
    finite is reported by name, before optimising."""
    if not np.isfinite(np.asarray(state.value)[0]):
        raise ValueError(
            "The objective is not finite at the starting model although every fitted value is: "
            "the data are impossible under it (for example a zero variance), or a prior excludes "
            "the start."
        )
    first = jax.tree.map(lambda g: np.asarray(g)[0], state.grad)
    bad = [
        n
        for n, g in zip(selection.names, first, strict=True)
        if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))
    ]
    if bad:
        raise ValueError(
            f"The gradient with respect to {', '.join(bad)} is not finite at the start."
        )


def _describe_failure(selection: Selection, restart: int, culprit: int, steps: int) -> str:
    where = f"restart {restart} stopped after step {steps}"
    if culprit < 0:
        return f"{where}: the objective went non-finite"
    return f"{where}: the value or gradient of {selection.names[culprit]} went non-finite"


def _finish(selection: Selection, objective: Objective, model, state: _State, values, grads):
    final = np.where(np.asarray(state.failed), np.inf, np.asarray(state.value))
    failures = [
        _describe_failure(selection, r, int(c), int(k))
        for r, (f, c, k) in enumerate(
            zip(
                np.asarray(state.failed),
                np.asarray(state.culprit),
                np.asarray(state.steps),
                strict=True,
            )
        )
        if f
    ]
    if not np.any(np.isfinite(final)):
        raise ValueError(
            "Every restart stopped at a non-finite objective: "
            + "; ".join(failures)
            + ". Try another start or a smaller learning rate."
        )
    if failures:
        warnings.warn("; ".join(failures) + ".", RuntimeWarning, stacklevel=3)
    best = int(np.argmin(final))
    steps = int(np.asarray(state.steps)[best])
    value_trace = np.concatenate([np.asarray(v) for v in values], axis=1)[best, :steps]
    grad_trace = np.concatenate([np.asarray(g) for g in grads], axis=1)[best, :steps]
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[best]), state.params)
    converged = bool(np.asarray(state.converged)[best])
    history = MLEHistory(
        objective=jnp.asarray(value_trace * objective.scale),
        grad_norm=jnp.asarray(grad_trace),
        converged=converged,
        num_steps=steps,
        restart_objectives=jnp.asarray(final * objective.scale),
        best_restart=best,
    )
    return selection.rebuild(model, params), history
