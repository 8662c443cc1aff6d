r"""The constant (bias) kernel $k(\tau) = \sigma^2$: a random level that never changes."""

from __future__ import annotations

import jax.numpy as jnp

from .._types import Array, ArrayLike, Float
from ..params import Positive
from . import _checks
from ._base import AbstractStationaryKernel


class Constant(AbstractStationaryKernel):
    r"""Constant kernel $k(\tau) = \sigma^2$ (also exported as `Bias`).

    State dimension 1: $F = 0$, $L = 1$, $Q_c = 0$, $P_\infty = \sigma^2$, $H = 1$; the state is
    drawn once and kept, so `discretise(dt)` is $(1, 0)$ for every $dt$.

    Args:
        variance: $\sigma^2 > 0$, a number or a `bs.Positive`.

    References:
        Solin (2016), Stochastic differential equation methods for spatio-temporal Gaussian process
        regression. PhD thesis, Aalto University, section 4.
    """

    variance: Positive

    def __init__(self, variance: ArrayLike | Positive = 1.0):
        self.variance = _checks.positive(
            "Constant", "variance", variance, _checks.float_dtype(variance)
        )

    @property
    def state_dim(self) -> int:
        return 1

    def _ones(self) -> Float[Array, "1 1"]:
        return jnp.ones((1, 1), self.variance.unconstrained.dtype)

    def feedback(self) -> Float[Array, "1 1"]:
        return 0.0 * self._ones()

    def noise_effect(self) -> Float[Array, "1 1"]:
        return self._ones()

    def noise_spectral_density(self) -> Float[Array, "1 1"]:
        return 0.0 * self._ones()

    def stationary_covariance(self) -> Float[Array, "1 1"]:
        return self.variance.value() * self._ones()

    def measurement(self) -> Float[Array, "1 1"]:
        return self._ones()

    def transition(self, dt: ArrayLike) -> Float[Array, "1 1"]:
        return self._ones()

    def discretise(self, dt: ArrayLike) -> tuple[Float[Array, "1 1"], Float[Array, "1 1"]]:
        return self._ones(), 0.0 * self._ones()

    def discretise_factors(self, dt: ArrayLike) -> tuple[Array, Array]:
        return self.discretise(dt)  # Q = 0 is its own factor

    def _lag_covariance(self, tau: Array) -> Array:
        return jnp.broadcast_to(self.variance.value(), jnp.shape(tau))


Bias = Constant
