r"""The cosine kernel $k(\tau) = \sigma^2 \cos(\omega \tau)$: a sinusoid of random phase and
amplitude."""

from __future__ import annotations

import jax.numpy as jnp

from .._types import Array, ArrayLike, Float
from ..params import Positive
from . import _checks, _linalg
from ._base import AbstractStationaryKernel


class Cosine(AbstractStationaryKernel):
    r"""Cosine kernel $k(\tau) = \sigma^2 \cos(\omega \tau)$, $\omega$ = `frequency` in radians per
    unit time (a period of $2\pi / \omega$).

    State dimension 2: $F = \begin{pmatrix} 0 & -\omega \\ \omega & 0 \end{pmatrix}$, $L = I$,
    $Q_c = 0$, $P_\infty = \sigma^2 I$, $H = (1, 0)$. The state rotates without noise, so
    `discretise(dt)` is (the rotation by $\omega\,dt$, 0), exactly.

    Args:
        variance: $\sigma^2 > 0$, a number or a `bs.Positive`.
        frequency: angular frequency $\omega > 0$, a number or a `bs.Positive`.

    References:
        Solin (2016), Stochastic differential equation methods for spatio-temporal Gaussian process
        regression. PhD thesis, Aalto University, section 4.
    """

    variance: Positive
    frequency: Positive

    def __init__(self, variance: ArrayLike | Positive = 1.0, frequency: ArrayLike | Positive = 1.0):
        dtype = _checks.float_dtype(variance, frequency)
        self.variance = _checks.positive("Cosine", "variance", variance, dtype)
        self.frequency = _checks.positive("Cosine", "frequency", frequency, dtype)

    @property
    def state_dim(self) -> int:
        return 2

    def _eye(self) -> Float[Array, "2 2"]:
        return jnp.eye(2, dtype=self.variance.unconstrained.dtype)

    def feedback(self) -> Float[Array, "2 2"]:
        w = self.frequency.value()
        return w * jnp.array([[0.0, -1.0], [1.0, 0.0]], self.variance.unconstrained.dtype)

    def noise_effect(self) -> Float[Array, "2 2"]:
        return self._eye()

    def noise_spectral_density(self) -> Float[Array, "2 2"]:
        return 0.0 * self._eye()

    def stationary_covariance(self) -> Float[Array, "2 2"]:
        return self.variance.value() * self._eye()

    def measurement(self) -> Float[Array, "1 2"]:
        return self._eye()[:1]

    def transition(self, dt: ArrayLike) -> Float[Array, "2 2"]:
        w = self.frequency.value()
        return _linalg.rotations(jnp.reshape(w * jnp.asarray(dt, w.dtype), (1,)))

    def discretise(self, dt: ArrayLike) -> tuple[Float[Array, "2 2"], Float[Array, "2 2"]]:
        return self.transition(dt), 0.0 * self._eye()

    def discretise_factors(self, dt: ArrayLike) -> tuple[Array, Array]:
        return self.discretise(dt)  # Q = 0 is its own factor

    def _lag_covariance(self, tau: Array) -> Array:
        return self.variance.value() * jnp.cos(self.frequency.value() * tau)
