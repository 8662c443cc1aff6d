"""A dense, obviously-correct oracle for linear-Gaussian state-space models (plain numpy).

The whole model is one Gaussian vector z = (x_0, ..., x_{T-1}, y_0, ..., y_{T-1}). We build its
mean and covariance explicitly, then answer every question (filtering, smoothing, likelihood,
forecasting) by conditioning that one Gaussian on the observed (non-NaN) entries of y. Cost is
cubic in T * (D + M), so keep T small (<= 30).

Conventions are those of `bs.LinearGaussianSSM`:
    x_0 ~ N(m0, P0),  x_{t+1} = A_t x_t + b_t + B u_t + w_t,  w_t ~ N(0, Q_t),
    y_t = H_t x_t + d_t + D u_t + v_t,  v_t ~ N(0, R_t).
Any of A, b, Q, H, d, R may carry a leading time axis; index t of A, b, Q is the move out of
step t. Every function takes the model as keyword arguments with those names, plus `inputs`
(T, U) when B or D is given.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import multivariate_normal


class Joint(NamedTuple):
    """Mean and covariance of z = (x_0..x_{T-1}, y_0..y_{T-1}), states first."""

    mean: np.ndarray  # (T * (D + M),)
    cov: np.ndarray  # (T * (D + M), T * (D + M))
    num_timesteps: int
    state_dim: int
    obs_dim: int

    def state_index(self, t: int) -> np.ndarray:
        return np.arange(t * self.state_dim, (t + 1) * self.state_dim)

    def obs_index(self, t: int) -> np.ndarray:
        start = self.num_timesteps * self.state_dim + t * self.obs_dim
        return np.arange(start, start + self.obs_dim)


def _per_step(value, num_timesteps: int, base_ndim: int) -> np.ndarray:
    """Broadcast a constant array to a leading time axis of length num_timesteps."""
    value = np.asarray(value, dtype=np.float64)
    if value.ndim == base_ndim:
        return np.broadcast_to(value, (num_timesteps, *value.shape))
    assert value.shape[0] >= num_timesteps, "time-varying array shorter than the horizon"
    return value[:num_timesteps]


def joint_gaussian(
    num_timesteps: int,
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
) -> Joint:
    """The joint Gaussian of all states and observations over `num_timesteps` steps."""
    T = num_timesteps
    m0 = np.asarray(m0, dtype=np.float64)
    P0 = np.asarray(P0, dtype=np.float64)
    nx = m0.shape[0]
    A = _per_step(A, T, 2)
    Q = _per_step(Q, T, 2)
    H = _per_step(H, T, 2)
    R = _per_step(R, T, 2)
    ny = H.shape[1]
    b = _per_step(np.zeros(nx) if b is None else b, T, 1).copy()
    d = _per_step(np.zeros(ny) if d is None else d, T, 1).copy()
    if B is not None or D is not None:
        u = np.asarray(inputs, dtype=np.float64)[:T]
        if B is not None:
            b = b + u @ np.asarray(B, dtype=np.float64).T
        if D is not None:
            d = d + u @ np.asarray(D, dtype=np.float64).T

    # State means by the recursion.
    mean_x = np.zeros((T, nx))
    mean_x[0] = m0
    for t in range(T - 1):
        mean_x[t + 1] = A[t] @ mean_x[t] + b[t]

    # x = G e with e = (x_0 - m0, w_0, ..., w_{T-2}); block (t, s) of G is A_{t-1} ... A_s
    # (identity when t = s, zero when s > t). Cov(e) = blockdiag(P0, Q_0, ..., Q_{T-2}).
    G = np.zeros((T * nx, T * nx))
    for s in range(T):
        block = np.eye(nx)
        for t in range(s, T):
            G[t * nx : (t + 1) * nx, s * nx : (s + 1) * nx] = block
            block = A[t] @ block
    noise = np.zeros((T * nx, T * nx))
    noise[:nx, :nx] = P0
    for s in range(1, T):
        noise[s * nx : (s + 1) * nx, s * nx : (s + 1) * nx] = Q[s - 1]
    cov_x = G @ noise @ G.T

    # y = Hbig x + d + v, with Hbig = blockdiag(H_0, ..., H_{T-1}), Cov(v) = blockdiag(R_t).
    Hbig = np.zeros((T * ny, T * nx))
    Rbig = np.zeros((T * ny, T * ny))
    for t in range(T):
        Hbig[t * ny : (t + 1) * ny, t * nx : (t + 1) * nx] = H[t]
        Rbig[t * ny : (t + 1) * ny, t * ny : (t + 1) * ny] = R[t]
    mean_y = Hbig @ mean_x.reshape(-1) + d.reshape(-1)
    cov_xy = cov_x @ Hbig.T
    cov_y = Hbig @ cov_x @ Hbig.T + Rbig

    mean = np.concatenate([mean_x.reshape(-1), mean_y])
    cov = np.block([[cov_x, cov_xy], [cov_xy.T, cov_y]])
    return Joint(mean, cov, T, nx, ny)


class Conditional(NamedTuple):
    """z | (observed entries of y) and the log-density of those entries."""

    mean: np.ndarray
    cov: np.ndarray
    log_likelihood: float


def condition(joint: Joint, y, up_to: int | None = None) -> Conditional:
    """Condition on the non-NaN entries of y[:up_to] (all rows by default).

    y has shape (T', M) with T' <= joint.num_timesteps; rows past T' count as unobserved.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1, joint.obs_dim)
    rows = y.shape[0] if up_to is None else up_to
    index, values = [np.zeros(0, int)], [np.zeros(0)]
    for t in range(rows):
        seen = ~np.isnan(y[t])
        index.append(joint.obs_index(t)[seen])
        values.append(y[t][seen])
    obs = np.concatenate(index)
    if obs.size == 0:
        return Conditional(joint.mean, joint.cov, 0.0)
    value = np.concatenate(values)
    mu_o = joint.mean[obs]
    S_oo = joint.cov[np.ix_(obs, obs)]
    S_zo = joint.cov[:, obs]
    gain = np.linalg.solve(S_oo, S_zo.T).T  # S_zo S_oo^{-1}
    mean = joint.mean + gain @ (value - mu_o)
    cov = joint.cov - gain @ S_zo.T
    cov = 0.5 * (cov + cov.T)
    log_likelihood = float(multivariate_normal(mu_o, S_oo).logpdf(value))
    return Conditional(mean, cov, log_likelihood)


def _states(joint: Joint, cond: Conditional, t: int) -> tuple[np.ndarray, np.ndarray]:
    i = joint.state_index(t)
    return cond.mean[i], cond.cov[np.ix_(i, i)]


def _observations(joint: Joint, cond: Conditional, t: int) -> tuple[np.ndarray, np.ndarray]:
    i = joint.obs_index(t)
    return cond.mean[i], cond.cov[np.ix_(i, i)]


def _reshape_y(y, model) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    H = np.asarray(model["H"])
    return y.reshape(y.shape[0], H.shape[-2])


class Smoothed(NamedTuple):
    means: np.ndarray  # (T, D)  E[x_t | y_{0:T-1}]
    covs: np.ndarray  # (T, D, D)
    log_likelihood: float  # log p(observed entries of y_{0:T-1})


def smooth(y, **model) -> Smoothed:
    """Smoothing moments and the log-likelihood."""
    y = _reshape_y(y, model)
    T = y.shape[0]
    joint = joint_gaussian(T, **model)
    cond = condition(joint, y)
    moments = [_states(joint, cond, t) for t in range(T)]
    return Smoothed(
        np.stack([m for m, _ in moments]), np.stack([c for _, c in moments]), cond.log_likelihood
    )


class Filtered(NamedTuple):
    means: np.ndarray  # (T, D)  E[x_t | y_{0:t}]
    covs: np.ndarray  # (T, D, D)
    log_marginals: np.ndarray  # (T,)  log p(y_t | y_{0:t-1})
    predicted_means: np.ndarray  # (T, D)  E[x_t | y_{0:t-1}]; index 0 is m0
    predicted_covs: np.ndarray  # (T, D, D)


def filter(y, **model) -> Filtered:
    """Filtering and one-step predictive moments, each by conditioning on a prefix of y."""
    y = _reshape_y(y, model)
    T = y.shape[0]
    joint = joint_gaussian(T, **model)
    prefixes = [condition(joint, y, up_to=k) for k in range(T + 1)]  # prefixes[k]: y_{0:k-1}
    filt = [_states(joint, prefixes[t + 1], t) for t in range(T)]
    pred = [_states(joint, prefixes[t], t) for t in range(T)]
    lls = np.array([prefixes[t + 1].log_likelihood - prefixes[t].log_likelihood for t in range(T)])
    return Filtered(
        np.stack([m for m, _ in filt]),
        np.stack([c for _, c in filt]),
        lls,
        np.stack([m for m, _ in pred]),
        np.stack([c for _, c in pred]),
    )


class Forecast(NamedTuple):
    means: np.ndarray  # (K, D)  E[x_{T+k} | y_{0:T-1}]
    covs: np.ndarray  # (K, D, D)
    obs_means: np.ndarray  # (K, M)  E[y_{T+k} | y_{0:T-1}]
    obs_covs: np.ndarray  # (K, M, M)


def forecast(y, num_steps: int, **model) -> Forecast:
    """Predictive moments of steps T..T+K-1 given y_{0:T-1}.

    Time-varying arrays and `inputs` must cover T + num_steps steps.
    """
    y = _reshape_y(y, model)
    T = y.shape[0]
    joint = joint_gaussian(T + num_steps, **model)
    cond = condition(joint, y)
    states = [_states(joint, cond, t) for t in range(T, T + num_steps)]
    obs = [_observations(joint, cond, t) for t in range(T, T + num_steps)]
    return Forecast(
        np.stack([m for m, _ in states]),
        np.stack([c for _, c in states]),
        np.stack([m for m, _ in obs]),
        np.stack([c for _, c in obs]),
    )
