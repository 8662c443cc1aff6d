"""A faster exact sequential filter for models whose A, chol Q, H, chol R do not depend on t.

The covariance recursion of a Kalman filter does not look at the data, only at which entries are
observed. So it runs first, on its own, and stops once the factors have converged (to a few ulps)
and every later row is fully observed; the data then pass through a cheap affine recursion with
the stored gains. Under `jax.vmap` over series that share a model and a missingness pattern, the
covariance recursion runs once for the whole batch. Results equal the plain filter's to rounding.

Both shortcuts are for evaluation only: derivatives are those of the plain `lax.scan` filter
(`jax.custom_jvp`), which is differentiable end to end.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

from .._types import Array, Bool
from ..data import Observations
from ..ssm import AbstractLinearGaussianSSM
from ._associative_scan import associative_scan
from ._square_root import (
    innovation_log_likelihood,
    log_abs_det,
    solve_lower,
    tria,
    update_factors,
)

# Factors count as converged when a step changes them by less than this many ulps of their scale.
CONVERGED_ULPS = 64


def _covariance_pass(
    model: AbstractLinearGaussianSSM, data: Observations, observed: Bool[Array, "T M"]
):
    """Per-step filter factors, computed until they stop changing, then held."""
    T, M = observed.shape
    step = data.step(0)
    m0, chol_P0 = model.initial_params(step)
    A, _, chol_Q = model.transition_params(step)
    H, _, chol_R = model.emission_params(step)
    D = m0.shape[0]
    dtype = m0.dtype
    eye_M = jnp.eye(M, dtype=dtype)

    def factors(chol_pred, observed_t):
        f = update_factors(chol_pred, H, chol_R, observed_t)
        return f.chol, solve_lower(f.chol_S, eye_M), f.gain_factor, log_abs_det(f.chol_S)

    def write(buffers, t, values):
        return tuple(b.at[t].set(v) for b, v in zip(buffers, values, strict=True))

    buffers = (
        jnp.zeros((T, D, D), dtype),  # filtered factor
        jnp.zeros((T, D, D), dtype),  # predicted factor
        jnp.zeros((T, M, M), dtype),  # chol_S^{-1}
        jnp.zeros((T, D, M), dtype),  # gain factor
        jnp.zeros((T,), dtype),  # log det chol_S
    )
    chol0, whiten0, gain0, log_det0 = factors(chol_P0, observed[0])
    buffers = write(buffers, 0, (chol0, chol_P0, whiten0, gain0, log_det0))
    missing_rows = ~jnp.all(observed, axis=1)
    last_missing = jnp.max(jnp.where(missing_rows, jnp.arange(T), -1))
    tol = CONVERGED_ULPS * jnp.finfo(dtype).eps

    def keep_going(state):
        t, _, done, _ = state
        return (t < T) & ~done

    def step_once(state):
        t, chol_prev, _, buffers = state
        chol_pred = tria(jnp.concatenate([A @ chol_prev, chol_Q], axis=1))
        chol, whiten, gain, log_det = factors(chol_pred, observed[t])
        buffers = write(buffers, t, (chol, chol_pred, whiten, gain, log_det))
        change = jnp.max(jnp.abs(chol - chol_prev))
        converged = change <= tol * jnp.max(jnp.abs(chol))
        return t + 1, chol, converged & (t > last_missing), buffers

    t_end, _, _, buffers = jax.lax.while_loop(
        keep_going, step_once, (jnp.asarray(1), chol0, jnp.asarray(False), buffers)
    )
    # Steps after the last computed one repeat its (converged) factors.
    held = jnp.minimum(jnp.arange(T), t_end - 1)
    return tuple(b[held] for b in buffers)


def _gain_matrices(model, data: Observations, observed, whiten, gain):
    """The data-free matrices of the mean recursion, for every step: K_t, H_t with missing rows
    zeroed, A_t, P_t = I - K_t H_t and F_t = P_t A_t (the last two for t >= 1)."""
    prev, _ = _shifted_steps(data)

    def at_step(step, observed_t, whiten_t, gain_t):
        H, _, _ = model.emission_params(step)
        return gain_t @ whiten_t, H * observed_t[:, None]

    K, H = jax.vmap(at_step)(data.steps, observed, whiten, gain)
    A = jax.vmap(lambda step: model.transition_params(step)[0])(prev)
    P = jnp.eye(A.shape[-1], dtype=A.dtype) - K[1:] @ H[1:]
    return K, H, A, P, P @ A


def _mean_pass(model, data: Observations, matrices, whiten, log_det, parallel: bool):
    """The data-dependent part. With the gains fixed, the filtered means solve the affine
    recursion m_t = F_t m_{t-1} + P_t b_t + K_t (y_t - d_t): a `lax.scan` (sequential) or an
    associative scan over affine maps (parallel, O(log T) span). Everything else is computed for
    all steps at once, and under `vmap` over series with shared gains it is a batched product."""
    K, H, A, P, F = matrices
    prev, _ = _shifted_steps(data)
    b = jax.vmap(lambda step: model.transition_params(step)[1])(prev)
    d = jax.vmap(lambda step: model.emission_params(step)[1])(data.steps)
    y = jnp.where(data.observed, data.values - d, 0.0)
    m0, _ = model.initial_params(data.step(0))
    mean0 = m0 + K[0] @ (y[0] - H[0] @ m0)
    c = jnp.einsum("tij,tj->ti", P, b) + jnp.einsum("tij,tj->ti", K[1:], y[1:])
    if parallel:

        def compose(earlier, later):
            return later[0] @ earlier[0], later[0] @ earlier[1] + later[1]

        elements = (_cat(jnp.zeros(F.shape[1:], F.dtype), F), _cat(mean0, c))
        _, means = associative_scan(jax.vmap(compose), elements)
    else:

        def step(mean, affine):
            mean = affine[0] @ mean + affine[1]
            return mean, mean

        _, rest = jax.lax.scan(step, mean0, (F, c))
        means = _cat(mean0, rest)
    mean_preds = _cat(m0, jnp.einsum("tij,tj->ti", A, means[:-1]) + b)
    z = jnp.einsum("tij,tj->ti", whiten, y - jnp.einsum("tij,tj->ti", H, mean_preds))
    lls = jax.vmap(innovation_log_likelihood)(z, log_det, data.observed)
    return means, lls, mean_preds


def _shifted_steps(data: Observations):
    """The inputs of steps 0..T-2 (transitions out of them) and of steps 1..T-1."""
    return (
        jax.tree.map(lambda a: a[:-1], data.steps),
        jax.tree.map(lambda a: a[1:], data.steps),
    )


def _cat(head, rest):
    return jnp.concatenate([head[None], rest])


def _two_pass(model, data: Observations, parallel: bool):
    chols, chol_preds, whiten, gain, log_det = _covariance_pass(model, data, data.observed)
    matrices = _gain_matrices(model, data, data.observed, whiten, gain)
    means, lls, mean_preds = _mean_pass(model, data, matrices, whiten, log_det, parallel)
    return means, chols, lls, mean_preds, chol_preds


def _shared_covariance_batch(
    model, data: Observations, data_axes: Observations, parallel: bool, batch: int
):
    """A batch of series on one model and one missingness pattern: one covariance pass."""
    first = jax.tree.map(lambda a, axis: a if axis is None else a[0], data, data_axes)
    chols, chol_preds, whiten, gain, log_det = _covariance_pass(model, first, first.observed)
    if parallel:
        matrices = _gain_matrices(model, first, first.observed, whiten, gain)
        means, lls, mean_preds = jax.vmap(
            lambda d: _mean_pass(model, d, matrices, whiten, log_det, parallel),
            in_axes=(data_axes,),
        )(data)
    else:
        means, lls, mean_preds = _batch_mean_scan(
            model, data, data_axes, whiten, gain, log_det, batch
        )
    spread = lambda x: jnp.broadcast_to(x, (batch, *x.shape))  # noqa: E731
    return means, spread(chols), lls, mean_preds, spread(chol_preds)


def _batch_mean_scan(
    model, data: Observations, data_axes: Observations, whiten, gain, log_det, batch: int
):
    """The sequential mean pass for a whole batch in one `lax.scan`, the batch on the last axis:
    each step is then a few (D, D) x (D, B) products, which XLA runs far faster on CPU than B tiny
    matrix-vector products."""
    first = jax.tree.map(lambda a, axis: a if axis is None else a[0], data, data_axes)
    observed = first.observed
    prev, _ = _shifted_steps(first)
    m0, _ = model.initial_params(first.step(0))
    A = jax.vmap(lambda step: model.transition_params(step)[0])(prev)
    H = jax.vmap(lambda step: model.emission_params(step)[0])(first.steps) * observed[..., None]
    # Offsets may vary per series (controls); they enter as (T, n, B) or (T, n, 1).
    steps_axes = data_axes.steps

    def offsets(steps):
        prev, _ = _shifted_steps(Observations(first.values, first.observed, steps))
        b = jax.vmap(lambda step: model.transition_params(step)[1])(prev)
        d = jax.vmap(lambda step: model.emission_params(step)[1])(steps)
        return b, d

    if any(axis == 0 for axis in jax.tree.leaves(steps_axes)):
        b, d = jax.vmap(offsets, in_axes=(steps_axes,), out_axes=-1)(data.steps)
    else:
        b, d = (x[..., None] for x in offsets(first.steps))
    values = data.values if data_axes.values == 0 else data.values[None]
    y = jnp.where(observed[..., None], jnp.moveaxis(values, 0, -1) - d, 0.0)  # (T, M, B)
    # Step 0 predicts with A = 0 and offset m0, so one step function serves every t.
    A = _cat(jnp.zeros(A.shape[1:], A.dtype), A)
    b = jnp.concatenate([jnp.broadcast_to(m0[None, :, None], (1, m0.shape[0], b.shape[-1])), b])
    constant = jax.vmap(innovation_log_likelihood)(
        jnp.zeros_like(observed, dtype=log_det.dtype), log_det, observed
    )

    def step(mean, xs):
        A_t, b_t, H_t, whiten_t, gain_t, y_t, constant_t = xs
        mean_pred = A_t @ mean + b_t
        z = whiten_t @ (y_t - H_t @ mean_pred)
        mean = mean_pred + gain_t @ z
        return mean, (mean, constant_t - 0.5 * jnp.sum(z * z, axis=0), mean_pred)

    start = jnp.zeros((m0.shape[0], batch), m0.dtype)
    xs = (A, b, H, whiten, gain, y, constant)
    _, (means, lls, mean_preds) = jax.lax.scan(step, start, xs)
    return jnp.moveaxis(means, -1, 0), jnp.moveaxis(lls, -1, 0), jnp.moveaxis(mean_preds, -1, 0)


def steady_filter(
    plain: Callable,
    model,
    data: Observations,
    parallel: bool = False,
    share_under_vmap: bool = True,
):
    """`plain(model, data)`'s outputs by the two-pass shortcut; derivatives are `plain`'s.

    With `share_under_vmap`, a `jax.vmap` over series that share the model runs one covariance
    pass for the batch (`custom_vmap`). Without it, a plain `vmap` batches everything: for
    callers inside other custom rules, where `custom_vmap` can fail on batched residuals."""
    dynamic, static = eqx.partition((model, data), eqx.is_array)

    def call(fn, dyn):
        return fn(*eqx.combine(dyn, static))

    def two_pass(model, data):
        return _two_pass(model, data, parallel)

    @custom_vmap
    def fast(dyn):
        return call(two_pass, dyn)

    @fast.def_vmap
    def fast_batched(axis_size, in_batched, dyn):
        (axes,) = jax.tree.map(lambda b: 0 if b else None, in_batched)
        model_axes, data_axes = axes
        out_batched = (True,) * 5

        def everywhere(dyn):
            return jax.vmap(lambda d: call(two_pass, d), in_axes=(axes,))(dyn)

        if any(a == 0 for a in jax.tree.leaves(model_axes)):
            return everywhere(dyn), out_batched

        def shared(dyn):
            model, data = eqx.combine(dyn, static)
            return _shared_covariance_batch(model, data, data_axes, parallel, axis_size)

        if data_axes.observed is None:
            return shared(dyn), out_batched
        observed = dyn[1].observed
        same_pattern = jnp.all(observed == observed[:1])
        return jax.lax.cond(same_pattern, shared, everywhere, dyn), out_batched

    def fast_call(model, data):
        if not share_under_vmap:
            return two_pass(model, data)
        return fast(eqx.partition((model, data), eqx.is_array)[0])

    return with_plain_derivatives(fast_call, plain, model, data)


def with_plain_derivatives(fast: Callable, plain: Callable, *args):
    """`fast(*args)`, differentiated as `plain(*args)` (any order, forward or reverse): for
    shortcuts that equal an exact recursion to rounding but cannot be differentiated themselves
    (their while loops have no reverse mode)."""
    dynamic, static = eqx.partition(args, eqx.is_array)

    @jax.custom_jvp
    def evaluate(dyn):
        return fast(*eqx.combine(dyn, static))

    @evaluate.defjvp
    def evaluate_jvp(primals, tangents):
        return jax.jvp(lambda d: plain(*eqx.combine(d, static)), primals, tangents)

    return evaluate(dynamic)
