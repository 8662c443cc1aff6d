"""Exact GP regression with the dense T x T kernel matrix (plain numpy): the oracle for
`bs.GPStateSpace`. Cost is cubic in T; fine for T up to about 1000.

y_i = f(t_i) + v_i with f ~ GP(0, k) and v_i ~ N(0, noise_variance); NaN in y marks a missing
entry. `k(s, t)` is any elementwise kernel function of two time arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.linalg import cho_factor, cho_solve


class DenseGP(NamedTuple):
    log_marginal: float
    mean: np.ndarray  # (T,) posterior mean of f at every time
    var: np.ndarray  # (T,) posterior variance of f at every time


def dense_gp(k, times: np.ndarray, y: np.ndarray, noise_variance: float) -> DenseGP:
    times = np.asarray(times, float)
    y = np.asarray(y, float).reshape(-1)
    observed = ~np.isnan(y)
    K = np.asarray(k(times[:, None], times[None, :]), float)
    K_oo = K[np.ix_(observed, observed)] + noise_variance * np.eye(observed.sum())
    factor = cho_factor(K_oo, lower=True)
    alpha = cho_solve(factor, y[observed])
    log_det = 2.0 * np.sum(np.log(np.diag(factor[0])))
    n = observed.sum()
    log_marginal = -0.5 * y[observed] @ alpha - 0.5 * log_det - 0.5 * n * np.log(2 * np.pi)
    K_to = K[:, observed]
    mean = K_to @ alpha
    var = np.diag(K) - np.einsum("ij,ji->i", K_to, cho_solve(factor, K_to.T))
    return DenseGP(float(log_marginal), mean, var)


def dense_gp_predict(k, times, y, noise_variance: float, query) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and variance of f at the query times, given y at `times`."""
    times, query = np.asarray(times, float), np.asarray(query, float)
    y = np.asarray(y, float).reshape(-1)
    observed = ~np.isnan(y)
    t_obs = times[observed]
    K_oo = k(t_obs[:, None], t_obs[None, :]) + noise_variance * np.eye(t_obs.size)
    K_qo = np.asarray(k(query[:, None], t_obs[None, :]), float)
    factor = cho_factor(np.asarray(K_oo, float), lower=True)
    mean = K_qo @ cho_solve(factor, y[observed])
    prior = np.asarray(k(query, query), float)
    var = prior - np.einsum("ij,ji->i", K_qo, cho_solve(factor, K_qo.T))
    return mean, var


def dense_multi_output_gp(
    ks, mixing, times, y, noise_variance, query=None
) -> tuple[float, np.ndarray, np.ndarray]:
    """The linear model of coregionalisation, densely: y_i(t) = sum_q W_iq f_q(t) + v_i(t), with
    f_q ~ GP(0, k_q) independent and v_i ~ N(0, noise_variance_i).

    The joint covariance of the entries (t, i), ordered time-major, is
    K[(s, i), (t, j)] = sum_q W_iq W_jq k_q(s, t) + [s = t, i = j] noise_variance_i.

    Args:
        ks: Q elementwise kernel functions k_q(s, t).
        mixing: W, (M, Q).
        times: (T,); y: (T, M) with NaN = missing; noise_variance: scalar or (M,).
        query: times (N,) at which to predict (default: `times`).

    Returns:
        (log marginal, posterior mean (N, M), posterior variance (N, M)) of the noise-free
        outputs W f at the query times.
    """
    W = np.asarray(mixing, float)
    M = W.shape[0]
    times = np.asarray(times, float)
    query = times if query is None else np.asarray(query, float)
    y = np.asarray(y, float).reshape(times.size, M)
    noise = np.broadcast_to(np.asarray(noise_variance, float), (M,))

    def cov(a, b):
        return sum(
            np.kron(np.asarray(k(a[:, None], b[None, :]), float), np.outer(W[:, q], W[:, q]))
            for q, k in enumerate(ks)
        )

    flat = y.reshape(-1)
    observed = ~np.isnan(flat)
    K_oo = cov(times, times)[np.ix_(observed, observed)]
    K_oo = K_oo + np.diag(np.tile(noise, times.size)[observed])
    factor = cho_factor(K_oo, lower=True)
    alpha = cho_solve(factor, flat[observed])
    log_det = 2.0 * np.sum(np.log(np.diag(factor[0])))
    log_marginal = -0.5 * flat[observed] @ alpha - 0.5 * log_det
    log_marginal -= 0.5 * observed.sum() * np.log(2 * np.pi)
    K_qo = cov(query, times)[:, observed]
    mean = K_qo @ alpha
    prior = np.diag(cov(query, query))
    var = prior - np.einsum("ij,ji->i", K_qo, cho_solve(factor, K_qo.T))
    return float(log_marginal), mean.reshape(query.size, M), var.reshape(query.size, M)
