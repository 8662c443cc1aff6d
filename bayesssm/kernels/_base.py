r"""The kernel interface: a Gaussian process written as a linear time-invariant SDE.

A kernel describes the state-space model

$$\mathrm{d}x(t) = F x(t)\,\mathrm{d}t + L\,\mathrm{d}\beta(t),\quad
    \mathbb{E}[\mathrm{d}\beta\,\mathrm{d}\beta^\top] = Q_c\,\mathrm{d}t,\quad f(t) = H x(t),$$

whose output $f$ is the Gaussian process. For a stationary kernel $x(t) \sim N(0, P_\infty)$ at
every $t$, where $F P_\infty + P_\infty F^\top + L Q_c L^\top = 0$, and

$$k(\tau) = H e^{F\tau} P_\infty H^\top,\quad \tau \ge 0.$$

Conventions shared by every kernel:

- `measurement()` is $H$ with shape $(1, D)$ (one output, as a row of `bs.LinearGaussianSSM`'s H).
- `covariance(s, t)` is $k(s, t)$; `covariance(tau)` (one argument) is $k(\tau)$, stationary
  kernels only. Non-stationary kernels (`Wiener`, `IntegratedWiener`) start at time 0 from the
  initial covariance returned by `stationary_covariance()`, and take $s, t \ge 0$ from that start.
- `discretise(dt)` gives $(A, Q)$ for a step $dt \ge 0$: $x(t + dt) = A x(t) + w$,
  $w \sim N(0, Q)$.

References:
    Hartikainen & Särkkä (2010), Kalman filtering and smoothing solutions to temporal Gaussian
    process regression models. IEEE MLSP. Solin (2016), Stochastic differential equation methods
    for spatio-temporal Gaussian process regression. PhD thesis, Aalto University.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp

from .._matmul import matmul
from .._types import Array, ArrayLike, Float
from . import _linalg


class AbstractKernel(eqx.Module):
    """A Gaussian-process covariance kernel in state-space (linear SDE) form.

    Hyperparameters are `bs.Positive` leaves, so `bs.fit_mle(..., where=lambda m:
    m.kernel.lengthscale)` fits them on the log scale. Kernels combine with `+` (`Sum`) and `*`
    (`Product`).
    """

    @property
    @abc.abstractmethod
    def state_dim(self) -> int:
        """D, the dimension of the state (a static int)."""

    @property
    def is_stationary(self) -> bool:
        """Whether k(s, t) depends on t - s only (then x(t) ~ N(0, Pinf) at every t)."""
        return True

    @abc.abstractmethod
    def feedback(self) -> Float[Array, "D D"]:
        """F, the drift matrix of the SDE."""

    @abc.abstractmethod
    def noise_covariance(self) -> Float[Array, "D D"]:
        r"""$L Q_c L^\top$, the diffusion of the state."""

    @abc.abstractmethod
    def stationary_covariance(self) -> Float[Array, "D D"]:
        r"""$P_\infty$; for a non-stationary kernel, the covariance of the state at time 0."""

    @abc.abstractmethod
    def measurement(self) -> Float[Array, "1 D"]:
        """H, with f(t) = H x(t)."""

    @abc.abstractmethod
    def discretise(self, dt: ArrayLike) -> tuple[Float[Array, "D D"], Float[Array, "D D"]]:
        r"""$(A, Q)$ for a step of length `dt` $\ge 0$: $A = e^{F dt}$ and $Q$ the covariance
        the noise adds over the step (symmetric; PSD up to rounding). `dt = 0` gives $(I, 0)$."""

    def discretise_factors(self, dt: ArrayLike) -> tuple[Float[Array, "D D"], Float[Array, "D D"]]:
        r"""$(A, L)$ with $L L^\top = Q$ of `discretise(dt)`: the step in the square-root form the
        Kalman engine uses. $L$ is lower triangular; singular $Q$ (deterministic components,
        `dt = 0`) is fine."""
        A, Q = self.discretise(dt)
        return A, _linalg.semidefinite_cholesky(Q)

    @abc.abstractmethod
    def _covariance(self, s: Array, t: Array) -> Array:
        """k(s, t), elementwise."""

    def covariance(self, s: ArrayLike, t: ArrayLike | None = None) -> Float[Array, "*shape"]:
        r"""The exact kernel, elementwise: $k(s, t)$, or $k(\tau)$ when called with one argument.

        For approximated kernels (`Periodic`, `SquaredExponential`) this is the target kernel,
        not the state-space approximation.

        Args:
            s: first time, or the lag $\tau = t - s$ when `t` is omitted (stationary kernels only).
            t: second time, broadcast against `s`. Non-stationary kernels count times from the
                start of the process (time 0).
        """
        if t is None:
            if not self.is_stationary:
                raise ValueError(
                    f"{type(self).__name__} is not stationary: call covariance(s, t) with two "
                    "times counted from the start of the process, not covariance(tau)."
                )
            s, t = jnp.zeros_like(jnp.asarray(s)), s
        return self._covariance(jnp.asarray(s), jnp.asarray(t))

    def __add__(self, other: AbstractKernel) -> AbstractKernel:
        if not isinstance(other, AbstractKernel):
            return NotImplemented
        from .composite import Sum  # composite.py builds on this module

        return Sum(self, other)

    def __mul__(self, other: AbstractKernel) -> AbstractKernel:
        if not isinstance(other, AbstractKernel):
            return NotImplemented
        from .composite import Product

        return Product(self, other)


class AbstractSDEKernel(AbstractKernel):
    r"""A kernel given directly by $(F, L, Q_c, P_\infty, H)$ rather than built from others."""

    @abc.abstractmethod
    def noise_effect(self) -> Float[Array, "D S"]:
        """L, how the white noise enters the state."""

    @abc.abstractmethod
    def noise_spectral_density(self) -> Float[Array, "S S"]:
        r"""$Q_c$, the spectral density of the white noise $\mathrm{d}\beta / \mathrm{d}t$."""

    def noise_covariance(self) -> Float[Array, "D D"]:
        L = self.noise_effect()
        return matmul(matmul(L, self.noise_spectral_density()), L.T)


class AbstractStationaryKernel(AbstractSDEKernel):
    r"""A stationary base kernel: $k(s, t) = k(|t - s|)$.

    `discretise` comes from `transition` (default: `expm(F dt)`) as
    $Q = P_\infty - A P_\infty A^\top$, exact for the SDE.
    """

    @abc.abstractmethod
    def _lag_covariance(self, tau: Array) -> Array:
        """k(tau) for tau >= 0, elementwise."""

    def _covariance(self, s: Array, t: Array) -> Array:
        return self._lag_covariance(jnp.abs(t - s))

    def transition(self, dt: ArrayLike) -> Float[Array, "D D"]:
        """A = expm(F dt)."""
        F = self.feedback()
        return _linalg.expm(F * jnp.asarray(dt, F.dtype))

    def discretise(self, dt: ArrayLike) -> tuple[Float[Array, "D D"], Float[Array, "D D"]]:
        A = self.transition(dt)
        P = self.stationary_covariance()
        return A, _linalg.symmetrise(P - matmul(matmul(A, P), A.T))
