r"""Non-stationary kernels for trends: the Wiener process and its integral, started at time 0."""

from __future__ import annotations

import jax.numpy as jnp

from .._types import Array, ArrayLike, Float
from ..params import Positive
from . import _checks
from ._base import AbstractSDEKernel


class Wiener(AbstractSDEKernel):
    r"""Wiener process (random walk) with a random start:
    $k(s, t) = \sigma_0^2 + \sigma^2 \min(s, t)$ for $s, t \ge 0$.

    State dimension 1: $F = 0$, $L = 1$, $Q_c = \sigma^2$, $H = 1$. Not stationary: the state at
    time 0 (the first time of the data, for a model) is $N(0, \sigma_0^2)$, and
    `stationary_covariance()` returns that $\sigma_0^2$. `discretise(dt)` is $(1, \sigma^2 dt)$.

    Args:
        variance: diffusion $\sigma^2 > 0$ (variance added per unit time).
        initial_variance: $\sigma_0^2 \ge 0$, variance of the level at time 0 (0 pins it to 0,
            stored as the smallest normal float).

    References:
        Särkkä & Solin (2019), Applied Stochastic Differential Equations. Cambridge University
        Press, chapter 6.
    """

    variance: Positive
    initial_variance: Positive

    def __init__(
        self, variance: ArrayLike | Positive = 1.0, initial_variance: ArrayLike | Positive = 1.0
    ):
        dtype = _checks.float_dtype(variance, initial_variance)
        self.variance = _checks.positive("Wiener", "variance", variance, dtype)
        self.initial_variance = _checks.positive(
            "Wiener", "initial_variance", initial_variance, dtype, allow_zero=True
        )

    @property
    def state_dim(self) -> int:
        return 1

    @property
    def is_stationary(self) -> bool:
        return False

    def _ones(self) -> Float[Array, "1 1"]:
        return jnp.ones((1, 1), self.variance.unconstrained.dtype)

    def feedback(self) -> Float[Array, "1 1"]:
        return 0.0 * self._ones()

    def noise_effect(self) -> Float[Array, "1 1"]:
        return self._ones()

    def noise_spectral_density(self) -> Float[Array, "1 1"]:
        return self.variance.value() * self._ones()

    def stationary_covariance(self) -> Float[Array, "1 1"]:
        return self.initial_variance.value() * self._ones()

    def measurement(self) -> Float[Array, "1 1"]:
        return self._ones()

    def discretise(self, dt: ArrayLike) -> tuple[Float[Array, "1 1"], Float[Array, "1 1"]]:
        dt = jnp.asarray(dt, self.variance.unconstrained.dtype)
        return self._ones(), self.variance.value() * dt * self._ones()

    def _covariance(self, s: Array, t: Array) -> Array:
        return self.initial_variance.value() + self.variance.value() * jnp.minimum(s, t)


class IntegratedWiener(AbstractSDEKernel):
    r"""Integrated Wiener process (a cubic smoothing spline prior, a local linear trend):
    $f'' = $ white noise, with state $(f, f')$ random at time 0.

    For $s, t \ge 0$, $m = \min(s, t)$, $M = \max(s, t)$:
    $$k(s, t) = \sigma_0^2 + \sigma_1^2 s t + \sigma^2 (m^2 M / 2 - m^3 / 6).$$

    $F = \begin{pmatrix} 0 & 1 \\ 0 & 0 \end{pmatrix}$, $L = (0, 1)^\top$, $Q_c = \sigma^2$,
    $H = (1, 0)$; `stationary_covariance()` is the covariance at time 0,
    $\mathrm{diag}(\sigma_0^2, \sigma_1^2)$. `discretise(dt)` is exact:
    $A = \begin{pmatrix} 1 & dt \\ 0 & 1 \end{pmatrix}$,
    $Q = \sigma^2 \begin{pmatrix} dt^3/3 & dt^2/2 \\ dt^2/2 & dt \end{pmatrix}$.

    Args:
        variance: diffusion $\sigma^2 > 0$ of the slope.
        initial_variance: $\sigma_0^2 \ge 0$, variance of the level at time 0.
        initial_slope_variance: $\sigma_1^2 \ge 0$, variance of the slope at time 0.

    References:
        Särkkä & Solin (2019), Applied Stochastic Differential Equations. Cambridge University
        Press, chapter 6; Wahba (1978), Improper priors, spline smoothing and the problem of
        guarding against model errors in regression. JRSS B 40(3).
    """

    variance: Positive
    initial_variance: Positive
    initial_slope_variance: Positive

    def __init__(
        self,
        variance: ArrayLike | Positive = 1.0,
        initial_variance: ArrayLike | Positive = 1.0,
        initial_slope_variance: ArrayLike | Positive = 1.0,
    ):
        owner = "IntegratedWiener"
        dtype = _checks.float_dtype(variance, initial_variance, initial_slope_variance)
        self.variance = _checks.positive(owner, "variance", variance, dtype)
        self.initial_variance = _checks.positive(
            owner, "initial_variance", initial_variance, dtype, allow_zero=True
        )
        self.initial_slope_variance = _checks.positive(
            owner, "initial_slope_variance", initial_slope_variance, dtype, allow_zero=True
        )

    @property
    def state_dim(self) -> int:
        return 2

    @property
    def is_stationary(self) -> bool:
        return False

    def _dtype(self):
        return self.variance.unconstrained.dtype

    def feedback(self) -> Float[Array, "2 2"]:
        return jnp.eye(2, k=1, dtype=self._dtype())

    def noise_effect(self) -> Float[Array, "2 1"]:
        return jnp.array([[0.0], [1.0]], self._dtype())

    def noise_spectral_density(self) -> Float[Array, "1 1"]:
        return jnp.reshape(self.variance.value(), (1, 1))

    def stationary_covariance(self) -> Float[Array, "2 2"]:
        return jnp.diag(
            jnp.stack([self.initial_variance.value(), self.initial_slope_variance.value()])
        )

    def measurement(self) -> Float[Array, "1 2"]:
        return jnp.array([[1.0, 0.0]], self._dtype())

    def discretise(self, dt: ArrayLike) -> tuple[Float[Array, "2 2"], Float[Array, "2 2"]]:
        dt = jnp.asarray(dt, self._dtype())
        one, zero = jnp.ones_like(dt), jnp.zeros_like(dt)
        A = jnp.stack([jnp.stack([one, dt]), jnp.stack([zero, one])])
        Q = self.variance.value() * jnp.stack(
            [jnp.stack([dt**3 / 3.0, dt**2 / 2.0]), jnp.stack([dt**2 / 2.0, dt])]
        )
        return A, Q

    def _covariance(self, s: Array, t: Array) -> Array:
        m, big = jnp.minimum(s, t), jnp.maximum(s, t)
        return (
            self.initial_variance.value()
            + self.initial_slope_variance.value() * s * t
            + self.variance.value() * (m**2 * big / 2.0 - m**3 / 6.0)
        )
