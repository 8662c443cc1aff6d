"""Result types of the Gaussian (Kalman) engines. Shapes: T steps, D states, M observations."""

from __future__ import annotations

from typing import NamedTuple

from .._types import Array, Float


class FilterResult(NamedTuple):
    """Filtering distributions p(x_t | y_{0:t}) = N(means[t], covs[t]) and the log-likelihood."""

    means: Float[Array, "T D"]
    covs: Float[Array, "T D D"]
    chols: Float[Array, "T D D"]  # lower-triangular factors of covs
    log_marginal: Float[Array, ""]  # log p(y_{0:T-1})
    log_marginals: Float[Array, " T"]  # log p(y_t | y_{0:t-1}), per step
    predicted_means: Float[Array, "T D"]  # p(x_t | y_{0:t-1}); index 0 is p(x_0)
    predicted_chols: Float[Array, "T D D"]


class SmootherResult(NamedTuple):
    """Smoothing distributions p(x_t | y_{0:T-1}) = N(means[t], covs[t])."""

    means: Float[Array, "T D"]
    covs: Float[Array, "T D D"]
    chols: Float[Array, "T D D"]
    log_marginal: Float[Array, ""]
    filtered: FilterResult


class ForecastResult(NamedTuple):
    """k-step-ahead predictive distributions of the states and of the observations."""

    means: Float[Array, "K D"]
    covs: Float[Array, "K D D"]
    obs_means: Float[Array, "K M"]
    obs_covs: Float[Array, "K M M"]
