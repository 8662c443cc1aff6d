"""Run statsmodels' Kalman filter and smoother on a `bs.LinearGaussianSSM`-style model.

statsmodels writes the model as
    y_t = Z_t alpha_t + d_t + eps_t,               eps_t ~ N(0, H_t),
    alpha_{t+1} = T_t alpha_t + c_t + R_t eta_t,   eta_t ~ N(0, Q_t),
with Z, d, H, T, c, R, Q named design, obs_intercept, obs_cov, transition, state_intercept,
selection and state_cov,
with alpha_0 ~ N(a, P) the state of the first observation (`initialize_known`). Time-varying
matrices carry a *trailing* time axis there, and `transition[:, :, t]` maps alpha_t to
alpha_{t+1}: the same timing as our leading axis. Control inputs are folded into the intercepts.
NaN entries of y (single entries or whole rows) are handled by statsmodels itself.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from statsmodels.tsa.statespace.kalman_smoother import KalmanSmoother


class StatsmodelsResult(NamedTuple):
    filtered_means: np.ndarray  # (T, D)
    filtered_covs: np.ndarray  # (T, D, D)
    predicted_means: np.ndarray  # (T, D)  E[x_t | y_{0:t-1}]; index 0 is m0
    predicted_covs: np.ndarray  # (T, D, D)
    smoothed_means: np.ndarray  # (T, D)
    smoothed_covs: np.ndarray  # (T, D, D)
    log_likelihood: float
    log_likelihoods: np.ndarray  # (T,)  log p(y_t | y_{0:t-1})


def _trailing_time(value, base_ndim: int) -> np.ndarray:
    """Our (T, ...) layout -> statsmodels' (..., T); constant arrays unchanged."""
    value = np.asarray(value, dtype=np.float64)
    if value.ndim == base_ndim:
        return value
    return np.ascontiguousarray(np.moveaxis(value, 0, -1))


def statsmodels_kalman(
    y,
    *,
    A,
    Q,
    H,
    R,
    m0,
    P0,
    b=None,
    d=None,
    B=None,
    D=None,
    inputs=None,
) -> StatsmodelsResult:
    """Filtered, predicted and smoothed moments and the log-likelihood, from statsmodels."""
    H = np.asarray(H, dtype=np.float64)
    m0 = np.asarray(m0, dtype=np.float64)
    nx, ny = m0.shape[0], H.shape[-2]
    y = np.asarray(y, dtype=np.float64).reshape(-1, ny)
    T = y.shape[0]

    b = np.zeros(nx) if b is None else np.asarray(b, dtype=np.float64)
    d = np.zeros(ny) if d is None else np.asarray(d, dtype=np.float64)
    if B is not None or D is not None:
        u = np.asarray(inputs, dtype=np.float64)[:T]
        if B is not None:
            b = np.broadcast_to(b, (T, nx)) + u @ np.asarray(B, dtype=np.float64).T
        if D is not None:
            d = np.broadcast_to(d, (T, ny)) + u @ np.asarray(D, dtype=np.float64).T

    # tolerance=0: never switch to the steady-state (converged) gain, which statsmodels otherwise
    # does once P_t stops changing and which costs it ~1e-11 of accuracy over long series.
    ks = KalmanSmoother(k_endog=ny, k_states=nx, k_posdef=nx, tolerance=0.0)
    ks.bind(np.ascontiguousarray(y))  # (T, M), C-ordered; NaN = missing
    ks["design"] = _trailing_time(H, 2)
    ks["obs_intercept"] = _trailing_time(d, 1)
    ks["obs_cov"] = _trailing_time(R, 2)
    ks["transition"] = _trailing_time(A, 2)
    ks["state_intercept"] = _trailing_time(b, 1)
    ks["selection"] = np.eye(nx)
    ks["state_cov"] = _trailing_time(Q, 2)
    ks.initialize_known(m0, np.asarray(P0, dtype=np.float64))
    res = ks.smooth()

    def means(x):  # (D, T) -> (T, D)
        return np.asarray(x).T[:T].copy()

    def covs(x):  # (D, D, T) -> (T, D, D)
        return np.moveaxis(np.asarray(x), -1, 0)[:T].copy()

    return StatsmodelsResult(
        filtered_means=means(res.filtered_state),
        filtered_covs=covs(res.filtered_state_cov),
        predicted_means=means(res.predicted_state),
        predicted_covs=covs(res.predicted_state_cov),
        smoothed_means=means(res.smoothed_state),
        smoothed_covs=covs(res.smoothed_state_cov),
        log_likelihood=float(np.sum(res.llf_obs)),
        log_likelihoods=np.asarray(res.llf_obs).copy(),
    )
