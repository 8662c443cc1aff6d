r"""Expectation-maximisation for `bs.LinearGaussianSSM`: a Kalman E-step, closed-form M-steps.

E-step. The Kalman filter and RTS smoother give $\mu_t = E[x_t \mid y]$ and
$V_t = Cov(x_t \mid y)$; the smoother gains $G_t$ ($x_t$ given $x_{t+1}$ and $y_{0:t}$ is
$N(G_t x_{t+1} + f_t, C_t C_t^\top)$) give the lag-one covariance
$Cov(x_{t+1}, x_t \mid y) = V_{t+1} G_t^\top$. Missing entries of $y_t$ are treated as latent
too (Shumway and Stoffer, 2000): under the current parameters, $y_t^{mis}$ given $x_t$ and
$y_t^{obs}$ is Gaussian,
$$y^{mis} = H_m x + d_m + K (y^{obs} - H_o x - d_o) + \eta,\quad K = R_{mo} R_{oo}^{-1},\quad
\eta \sim N(0, R_{mm} - K R_{om}),$$
so the full $y_t = J_t x_t + k_t + \eta_t$ is affine in $x_t$ (on observed rows $J_t = 0$ and
$k_t = y_t$), and every second moment of $(x_t, y_t)$ given the data is in closed form.

M-step. The expected complete-data log-likelihood separates into three groups, each maximised in
closed form over the selected leaves (the others stay fixed):
- (m0, P0): $m_0 = \mu_0$, $P_0 = V_0 + (\mu_0 - m_0)(\mu_0 - m_0)^\top$;
- (A, b, Q): a regression of $x_{t+1}$ on $x_t$ (and 1, when b is fitted), then Q from the residual;
- (H, d, R): a regression of $y_t$ on $x_t$ (and 1, when d is fitted), then R from the residual.
The regression does not depend on the noise covariance when that covariance is time-invariant, so
fitting (A, b) with Q, or (H, d) with R, is the exact joint maximiser; each iteration is a true EM
step and never lowers the likelihood.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_positive_int, is_concrete
from .._jit import filter_jit
from .._types import Array, Float
from ..data import Observations, check_observations, model_dtype, observations
from ..inference._square_root import backward_kernel
from ..inference.kalman import Kalman
from ..models.linear_gaussian import LinearGaussianSSM
from ..params import Covariance
from ._progress import progress_bar

FITTABLE = ("A", "b", "Q", "H", "d", "R", "m0", "P0")
DEFAULT_WHERE = ("A", "Q", "H", "R", "m0", "P0")
_BASE_NDIM = {"A": 2, "b": 1, "Q": 2, "H": 2, "d": 1, "R": 2, "m0": 1, "P0": 2}
_ALLOWED = ", ".join(f"model.{name}" for name in FITTABLE)


class EMHistory(NamedTuple):
    """What `fit_em` did.

    Attributes:
        log_marginals: log p(y) of the model before each M-step, shape (steps,). (Inside
            `jax.jit` / `jax.vmap` the array has length `num_steps` as requested, padded with NaN.)
        converged: whether the relative change of log p(y) fell below `tol`.
        num_steps: the number of EM iterations run (E-step and M-step each).
    """

    log_marginals: Float[Array, " steps"]
    converged: bool
    num_steps: int


def fit_em(
    model: LinearGaussianSSM,
    y,
    *,
    where=None,
    num_steps: int = 100,
    tol: float = 1e-8,
    inputs=None,
    progress: bool = True,
) -> tuple[LinearGaussianSSM, EMHistory]:
    r"""Maximum-likelihood parameters of a linear-Gaussian model by expectation-maximisation.

    Each iteration runs the Kalman filter and RTS smoother under the current parameters (E-step),
    records $\log p(y)$, and sets the selected leaves to the maximisers of the expected
    complete-data log-likelihood (M-step, closed form):
    $$[A\ b] = \Big(\sum_t E[x_{t+1} z_t^\top]\Big)\Big(\sum_t E[z_t z_t^\top]\Big)^{-1},\quad
    Q = \frac{1}{T-1}\sum_{t=0}^{T-2} E[(x_{t+1} - A x_t - b)(x_{t+1} - A x_t - b)^\top],$$
    with $z_t = (x_t, 1)$ (or $x_t$ when b is fixed), likewise for (H, d, R) with $y_t$ in place
    of $x_{t+1}$ over all T steps, and $m_0 = E[x_0]$, $P_0 = E[(x_0 - m_0)(x_0 - m_0)^\top]$
    (from a single series the maximum-likelihood P0 is degenerate, and EM shrinks it towards 0).
    Missing entries (NaN) of y are latent variables of the complete data: for an entry missing at
    step t its conditional distribution given $x_t$ and the observed entries of $y_t$ under the
    current R is used, which is exact for a correlated R. The likelihood never decreases.

    Iterations stop when $|\ell_k - \ell_{k-1}| \le \text{tol}\,|\ell_{k-1}|$ or after `num_steps`;
    the model returned is the one after the last M-step (its likelihood is at least the last
    entry of the history). If log p(y) turns non-finite, EM stops with a warning and returns the
    last model whose likelihood was finite.

    Args:
        model: the model to start from; its values are the initial parameters.
        y: observations (T, M), or (T,) when M = 1; NaN marks a missing entry or a missing row.
        where: the leaves to fit, as in `equinox.tree_at`: a function of the model returning one
            leaf or a tuple among `model.A`, `model.b`, `model.Q`, `model.H`, `model.d`,
            `model.R`, `model.m0`, `model.P0`. Default: (A, Q, H, R, m0, P0). Fitted leaves must
            be time-invariant; fitting A or b needs a time-invariant Q, fitting H or d a
            time-invariant R. Leaves that are not fitted may vary in time.
        num_steps: the maximum number of EM iterations.
        tol: relative tolerance on the change of log p(y) between iterations.
        inputs: control inputs (T, U), for models with control matrices B or D (kept fixed).
        progress: show a tqdm progress bar with log p(y). With `progress=False` the whole loop is
            one compiled `lax.while_loop`, which also runs under `jax.jit` and `jax.vmap`.

    Returns:
        The fitted model, and an `EMHistory` with `log_marginals` (steps,), `converged`,
        `num_steps`.

    Raises:
        TypeError: the model is not a `bs.LinearGaussianSSM`.
        ValueError: `where` selects something other than the leaves above, a selected leaf is
            time-varying, y does not fit the model, or T < 2 while transition leaves are fitted.

    Example:
        >>> fitted, history = bs.fit_em(model, y, where=lambda m: (m.A, m.Q, m.R))
        >>> Q_hat = bs.unwrap(fitted).Q

    References:
        Shumway, R. H. and Stoffer, D. S. (1982). An approach to time series smoothing and
        forecasting using the EM algorithm. Journal of Time Series Analysis 3(4).
        Ghahramani, Z. and Hinton, G. E. (1996). Parameter estimation for linear dynamical
        systems. Technical report CRG-TR-96-2, University of Toronto.
        Shumway, R. H. and Stoffer, D. S. (2000). Time Series Analysis and Its Applications,
        section 6.4 (missing data).
    """
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(f"fit_em needs a bs.LinearGaussianSSM, got {type(model).__name__}.")
    names = _selected(model, where)
    check_positive_int("num_steps", num_steps)
    num_steps = int(num_steps)
    if not isinstance(tol, int | float | np.floating) or not tol >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}.")
    tol = float(tol)
    _check_time_invariance(model, names)
    y, inputs = check_observations(model, y, inputs)
    if np.shape(y)[0] < 2 and {"A", "b", "Q"} & set(names):
        raise ValueError(
            "Fitting A, b or Q needs at least two time steps (T >= 2); y has T = 1. "
            "Fit only emission or initial leaves (e.g. where=lambda m: m.R)."
        )
    data = observations(y, inputs, 0, model_dtype(model))
    engine = Kalman()
    if progress and not _traced(model, data):
        return _python_loop(model, data, names, engine, num_steps, tol)
    fitted, lls, steps_done, converged = _while_loop(model, data, names, engine, num_steps, tol)
    if not is_concrete(steps_done):
        return fitted, EMHistory(lls[..., :num_steps], converged, steps_done)
    steps_done = int(steps_done)
    lls = lls[:steps_done]
    if not np.isfinite(float(lls[-1])):
        _warn_non_finite(steps_done - 1)
    return fitted, EMHistory(lls, bool(converged), steps_done)


def _traced(*trees) -> bool:
    """True under a transformation (jit, vmap, grad): then no Python loop can read the values."""
    # Inside jit even an operation on constants is staged, so its result is a tracer.
    probe = jnp.zeros((), jnp.int32) + 1
    return not all(is_concrete(x) for x in (probe, *jax.tree.leaves(trees)))


# -- which leaves -----------------------------------------------------------------------------


class _Marker:
    """Stands in for one fittable leaf while `where` is called, so aliased leaves stay distinct."""

    def __init__(self, name: str):
        self.name = name


def _selected(model: LinearGaussianSSM, where) -> tuple[str, ...]:
    if where is None:
        return DEFAULT_WHERE
    if not callable(where):
        raise ValueError(
            f"where must be a function of the model returning leaves among {_ALLOWED}, as in "
            f"equinox.tree_at (for example where=lambda m: (m.Q, m.R)); got {where!r}."
        )
    marked = eqx.tree_at(
        lambda m: tuple(getattr(m, name) for name in FITTABLE),
        model,
        replace=tuple(_Marker(name) for name in FITTABLE),
    )
    try:
        picked = where(marked)
    except Exception as error:
        raise ValueError(
            f"where must return leaves of the model among {_ALLOWED}, as in equinox.tree_at "
            f"(for example where=lambda m: (m.Q, m.R)); calling it failed with "
            f"{type(error).__name__}: {error}"
        ) from error
    items = tuple(picked) if isinstance(picked, tuple | list) else (picked,)
    if not items:
        raise ValueError(f"where selected nothing to fit; pick some of {_ALLOWED}.")
    names = set()
    for item in items:
        if isinstance(item, _Marker):
            names.add(item.name)
            continue
        what = next(
            (f"model.{name}" for name in ("B", "D") if item is getattr(model, name, None)), None
        )
        if what is None:
            what = f"an object that is not one of these leaves ({type(item).__name__})"
        raise ValueError(f"fit_em can fit only {_ALLOWED}; where selected {what}.")
    return tuple(name for name in FITTABLE if name in names)


def _leaf_ndim(model: LinearGaussianSSM, name: str) -> int:
    leaf = getattr(model, name)
    return (leaf.cholesky if isinstance(leaf, Covariance) else leaf).ndim


def _check_time_invariance(model: LinearGaussianSSM, names: tuple[str, ...]) -> None:
    varying = {name for name in FITTABLE if _leaf_ndim(model, name) > _BASE_NDIM[name]}
    for name in names:
        if name in varying:
            raise ValueError(
                f"model.{name} is time-varying (it has a leading T axis); fit_em's closed-form "
                f"M-step fits time-invariant parameters only. Leave {name} out of where, or give "
                f"the model a constant {name}."
            )
    for group, noise in ((("A", "b"), "Q"), (("H", "d"), "R")):
        fitted = [name for name in group if name in names]
        if fitted and noise in varying:
            raise ValueError(
                f"Fitting {' and '.join(fitted)} in closed form needs a time-invariant {noise}, "
                f"but model.{noise} is time-varying. Leave {', '.join(fitted)} out of where."
            )


# -- one iteration ----------------------------------------------------------------------------


def _outer_sum(a: Array, b: Array) -> Array:
    return jnp.einsum("ti,tj->ij", a, b)


def _gram_sum(factors: Array) -> Array:
    return jnp.einsum("tik,tjk->ij", factors, factors)


def _right_solve(rhs: Array, gram: Array) -> Array:
    """rhs gram^{-1} for a symmetric positive-definite gram."""
    return jnp.linalg.solve(gram, rhs.T).T


def _augmented_gram(second_sum: Array, mean_sum: Array, count: int) -> Array:
    """sum_t E[z z^T] for z = (x, 1)."""
    count = jnp.asarray(count, second_sum.dtype)
    top = jnp.concatenate([second_sum, mean_sum[:, None]], axis=1)
    bottom = jnp.concatenate([mean_sum, count[None]])[None, :]
    return jnp.concatenate([top, bottom], axis=0)


def _regression(
    names, pair, cross_sum, second_sum, regressors, targets, control, slope_t, offset_t, count
) -> dict:
    """M-step for `targets = slope regressors + offset + control + noise` (transition: x_{t+1}
    on x_t; emission: y_t on x_t), over whichever of `pair` = (slope, offset) names is fitted;
    the other stays at its current per-step value (`slope_t`, `offset_t`, which includes the
    control term). `cross_sum` = sum_t E[target regressor^T], `second_sum` = sum_t E[regressor
    regressor^T]; with a time-invariant noise covariance the regression does not depend on it."""
    slope, offset = pair
    if slope in names and offset in names:
        rhs = jnp.concatenate(
            [
                cross_sum - _outer_sum(control, regressors),
                jnp.sum(targets - control, axis=0)[:, None],
            ],
            axis=1,
        )
        coef = _right_solve(rhs, _augmented_gram(second_sum, jnp.sum(regressors, axis=0), count))
        return {slope: coef[:, :-1], offset: coef[:, -1]}
    if slope in names:
        return {slope: _right_solve(cross_sum - _outer_sum(offset_t, regressors), second_sum)}
    if offset in names:
        fitted = targets - jnp.einsum("tij,tj->ti", slope_t, regressors) - control
        return {offset: jnp.mean(fitted, axis=0)}
    return {}


def _covariance(matrix: Array) -> Covariance:
    return Covariance.from_matrix(0.5 * (matrix + matrix.T))


def _control_offsets(matrix: Array | None, data: Observations, rows: int, dtype) -> Array:
    """B u_t (or D u_t) for every step, shape (T, rows); zero without controls."""
    if matrix is None:
        return jnp.zeros((data.num_timesteps, rows), dtype)
    return data.steps.control @ matrix.T


def _em_update(model: LinearGaussianSSM, data: Observations, names, engine):
    """One E-step and M-step: (model after the M-step, log p(y) of `model`)."""
    dtype = model_dtype(model)
    smoothed = engine.smooth(model, data)
    means, covs = smoothed.means, smoothed.covs
    second = covs + means[:, :, None] * means[:, None, :]  # E[x_t x_t^T]
    updates = {}
    if "m0" in names:
        updates["m0"] = means[0]
    if "P0" in names:
        diff = means[0] - updates.get("m0", model.m0)
        updates["P0"] = _covariance(covs[0] + jnp.outer(diff, diff))
    if {"A", "b", "Q"} & set(names):
        updates.update(_transition_update(model, data, names, smoothed, second, dtype))
    if {"H", "d", "R"} & set(names):
        updates.update(_emission_update(model, data, names, smoothed, second, dtype))
    fitted = eqx.tree_at(
        lambda m: tuple(getattr(m, name) for name in updates),
        model,
        replace=tuple(updates.values()),
    )
    return fitted, smoothed.log_marginal


def _transition_update(model, data, names, smoothed, second, dtype) -> dict:
    means, chols, covs, filtered = smoothed.means, smoothed.chols, smoothed.covs, smoothed.filtered
    count = data.num_timesteps - 1
    state_dim = means.shape[1]
    A_t, b_t, chol_Q = jax.vmap(model.transition_params)(data.steps)  # b_t includes B u_t
    A_t, b_t, chol_Q = A_t[:-1], b_t[:-1], chol_Q[:-1]
    control = _control_offsets(model.B, data, state_dim, dtype)[:-1]
    kernels = jax.vmap(backward_kernel)(filtered.means[:-1], filtered.chols[:-1], A_t, b_t, chol_Q)
    prev, nxt = means[:-1], means[1:]
    # E[x_{t+1} x_t^T] = V_{t+1} G_t^T + mu_{t+1} mu_t^T, summed over t = 0..T-2.
    cross_sum = jnp.einsum("tij,tkj->ik", covs[1:], kernels.gain) + _outer_sum(nxt, prev)
    second_sum = jnp.sum(second[:-1], axis=0)
    updates = _regression(
        names, ("A", "b"), cross_sum, second_sum, prev, nxt, control, A_t, b_t, count
    )
    if "Q" in names:
        A_new = jnp.broadcast_to(updates["A"], A_t.shape) if "A" in names else A_t
        b_new = updates["b"] + control if "b" in names else b_t
        # x_{t+1} - A x_t = (I - A G_t) x_{t+1} - A (f_t + C_t e): a sum of PSD terms.
        eye = jnp.eye(state_dim, dtype=dtype)
        left = (eye - A_new @ kernels.gain) @ chols[1:]
        noise = A_new @ kernels.chol
        residual = nxt - jnp.einsum("tij,tj->ti", A_new, prev) - b_new
        total = _gram_sum(left) + _gram_sum(noise) + _outer_sum(residual, residual)
        updates["Q"] = _covariance(total / count)
    return updates


def _complete_observation(y, observed, H, d, chol_R, mean):
    """y_t = J x_t + k + eta given the observed entries, under the current (H, d, R).

    Returns E[y_t | data] (M,), J (M, D) and Cov(eta) (M, M); observed rows of J and eta are zero.
    """
    o = observed.astype(y.dtype)
    u = 1.0 - o
    R = chol_R @ chol_R.T
    R_tilde = o[:, None] * R * o[None, :] + jnp.diag(u)  # blockdiag(R_oo, I)
    R_om = o[:, None] * R * u[None, :]  # the (observed, missing) block of R
    K = jnp.linalg.solve(R_tilde, R_om).T  # R_mo R_oo^{-1} in the (missing, observed) block
    J = (jnp.diag(u) - K) @ H
    k = o * y + u * d + K @ (o * (y - d))
    omega = u[:, None] * R * u[None, :] - K @ R_om
    return J @ mean + k, J, 0.5 * (omega + omega.T)


def _emission_update(model, data, names, smoothed, second, dtype) -> dict:
    means, chols, covs = smoothed.means, smoothed.chols, smoothed.covs
    count = data.num_timesteps
    H_t, d_t, chol_R = jax.vmap(model.emission_params)(data.steps)  # d_t includes D u_t
    control = _control_offsets(model.D, data, H_t.shape[1], dtype)
    y_bar, J, omega = jax.vmap(_complete_observation)(
        data.values, data.observed, H_t, d_t, chol_R, means
    )
    # E[y_t x_t^T] = J_t V_t + E[y_t] mu_t^T, summed over t.
    cross_sum = jnp.einsum("tij,tjk->ik", J, covs) + _outer_sum(y_bar, means)
    second_sum = jnp.sum(second, axis=0)
    updates = _regression(
        names, ("H", "d"), cross_sum, second_sum, means, y_bar, control, H_t, d_t, count
    )
    if "R" in names:
        H_new = jnp.broadcast_to(updates["H"], H_t.shape) if "H" in names else H_t
        d_new = updates["d"] + control if "d" in names else d_t
        left = (J - H_new) @ chols
        residual = y_bar - jnp.einsum("tij,tj->ti", H_new, means) - d_new
        total = _gram_sum(left) + jnp.sum(omega, axis=0) + _outer_sum(residual, residual)
        updates["R"] = _covariance(total / count)
    return updates


# -- the loop ---------------------------------------------------------------------------------


def _select(keep_first, first, second):
    return jax.tree.map(
        lambda a, b: jnp.where(keep_first, a, b) if eqx.is_array(a) else a, first, second
    )


def _warn_non_finite(step: int) -> None:
    warnings.warn(
        f"fit_em stopped: log p(y) is not finite at iteration {step}; returning the last model "
        "with a finite likelihood. Check the data's scale and the starting parameters.",
        RuntimeWarning,
        stacklevel=3,
    )


def _relative_change_small(ll, last, tol):
    return jnp.abs(ll - last) <= tol * jnp.abs(last)


def _buffer_length(num_steps: int) -> int:
    """A power of two >= num_steps: nearby step counts share one compiled loop."""
    return max(16, 1 << (num_steps - 1).bit_length())


def _while_loop(model, data, names, engine, num_steps: int, tol: float):
    dtype = model_dtype(model)
    return _compiled_loop(
        model,
        data,
        names,
        engine,
        _buffer_length(num_steps),
        jnp.asarray(num_steps),
        jnp.asarray(tol, dtype),
    )


@filter_jit
def _compiled_loop(model, data, names, engine, buffer_length: int, num_steps, tol):
    lls = jnp.full((buffer_length,), jnp.nan, model_dtype(model))

    def cond(carry):
        step, _, _, _, stop, _ = carry
        return (step < num_steps) & ~stop

    def body(carry):
        step, current, previous, lls, _, _ = carry
        fitted, ll = _em_update(current, data, names, engine)
        lls = lls.at[step].set(ll)
        finite = jnp.isfinite(ll)
        converged = (step > 0) & _relative_change_small(ll, lls[jnp.maximum(step - 1, 0)], tol)
        model_out = _select(finite, fitted, previous)
        return step + 1, model_out, current, lls, converged | ~finite, converged & finite

    start = (jnp.asarray(0), model, model, lls, jnp.asarray(False), jnp.asarray(False))
    steps_done, fitted, _, lls, _, converged = jax.lax.while_loop(cond, body, start)
    return fitted, lls, steps_done, converged


def _python_loop(model, data, names, engine, num_steps: int, tol: float):
    lls, values, converged, previous = [], [], False, model
    with progress_bar(num_steps, True, "fit_em", "log_marginal") as bar:
        for step in range(num_steps):
            # One compiled iteration: the same program as the while loop's, reused at each step.
            fitted, buffer, _, _ = _while_loop(model, data, names, engine, 1, tol)
            ll = buffer[0]
            lls.append(ll)
            values.append(float(ll))
            if not np.isfinite(values[-1]):
                _warn_non_finite(step)
                model = previous
                break
            previous, model = model, fitted
            bar.update(1, values[-1])
            if step > 0 and abs(values[-1] - values[-2]) <= tol * abs(values[-2]):
                converged = True
                break
    return model, EMHistory(jnp.stack(lls), converged, len(lls))
