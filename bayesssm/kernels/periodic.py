r"""Periodic and quasi-periodic kernels as truncated cosine series (Solin & Särkkä 2014)."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp

from .._types import Array, ArrayLike, Float, Scalar
from ..params import Positive
from . import _bessel, _checks, _linalg
from ._base import AbstractKernel, AbstractStationaryKernel
from .composite import Product
from .matern import Matern32

# Terms of the Bessel tail summed by `approximation_error` beyond the order.
_TAIL_TERMS = 100


class Periodic(AbstractStationaryKernel):
    r"""Periodic kernel $k(\tau) = \sigma^2 \exp(-2 \sin^2(\pi\tau/p) / \ell^2)$, approximated by
    $J$ = `order` harmonics.

    With $z = \ell^{-2}$ and $\omega_0 = 2\pi/p$, $k(\tau) = \sigma^2 e^{-z} e^{z\cos\omega_0\tau}
    = \sum_{j \ge 0} q_j^2 \cos(j\omega_0\tau)$ with $q_0^2 = \sigma^2 e^{-z} I_0(z)$ and $q_j^2 =
    2\sigma^2 e^{-z} I_j(z)$ (modified Bessel functions). The series is cut after $j = J$; each
    harmonic is a noise-free oscillator, so the state has dimension $2J + 1$ (one for the constant
    term, two per harmonic): $F = \mathrm{blockdiag}(0, j\omega_0 \begin{pmatrix} 0 & -1 \\ 1 & 0
    \end{pmatrix})$, $L = I$, $Q_c = 0$, $P_\infty = \mathrm{diag}(q_0^2, q_1^2, q_1^2, \dots)$,
    $H = (1, 1, 0, 1, 0, \dots)$, and `discretise(dt)` is (block rotations, 0) exactly.

    Approximation error: all dropped terms are non-negative, so
    $$\max_\tau |k_J(\tau) - k(\tau)| = 2\sigma^2 \sum_{j > J} e^{-z} I_j(z)
        \le 2\sigma^2 e^{-z} \frac{(z/2)^{J+1}}{(J+1)!}
        \frac{e^{z^2 / (4(J+2))}}{1 - z / (2(J+2))}\quad (J + 2 > z/2),$$
    attained at $\tau = 0$ and returned by `approximation_error()`. It falls like
    $(z/2)^{J+1} / (J+1)!$, faster than any geometric rate once $J \gtrsim z/2$: with $\ell = 1$,
    $J = 6$ gives $1.1 \cdot 10^{-6} \sigma^2$. Small length-scales need $J \gtrsim 4/\ell$.
    The coefficients use a differentiable Bessel recurrence accurate to float64 rounding for
    $\ell \ge 0.086$ (`_bessel.ive`).

    Args:
        variance: $\sigma^2 > 0$, a number or a `bs.Positive`.
        lengthscale: $\ell > 0$, a number or a `bs.Positive`.
        period: $p > 0$, a number or a `bs.Positive`.
        order: number of harmonics $J \ge 1$ (static).

    References:
        Solin & Särkkä (2014), Explicit link between periodic covariance functions and state space
        models. AISTATS.
    """

    variance: Positive
    lengthscale: Positive
    period: Positive
    order: int = eqx.field(static=True)

    def __init__(
        self,
        variance: ArrayLike | Positive = 1.0,
        lengthscale: ArrayLike | Positive = 1.0,
        period: ArrayLike | Positive = 1.0,
        order: int = 6,
    ):
        dtype = _checks.float_dtype(variance, lengthscale, period)
        self.variance = _checks.positive("Periodic", "variance", variance, dtype)
        self.lengthscale = _checks.positive("Periodic", "lengthscale", lengthscale, dtype)
        self.period = _checks.positive("Periodic", "period", period, dtype)
        self.order = _checks.order("Periodic", order)

    @property
    def state_dim(self) -> int:
        return 2 * self.order + 1

    def _dtype(self):
        return self.variance.unconstrained.dtype

    def _frequencies(self) -> Float[Array, " J"]:
        harmonics = jnp.arange(1, self.order + 1, dtype=self._dtype())
        return harmonics * (2.0 * math.pi / self.period.value())

    def coefficients(self) -> Float[Array, " J+1"]:
        r"""$q_0^2, \dots, q_J^2$, the variances of the constant term and of each harmonic."""
        z = self.lengthscale.value() ** -2
        scaled = _bessel.ive(z, self.order)
        return self.variance.value() * scaled.at[1:].multiply(2.0)

    def approximation_error(self) -> Scalar:
        r"""$\max_\tau |k_J(\tau) - k(\tau)| = 2\sigma^2 \sum_{j > J} e^{-z} I_j(z)$ (the
        next 100 terms)."""
        z = self.lengthscale.value() ** -2
        tail = _bessel.ive(z, self.order + _TAIL_TERMS)[self.order + 1 :]
        return 2.0 * self.variance.value() * jnp.sum(tail)

    def feedback(self) -> Float[Array, "D D"]:
        generator = jnp.array([[0.0, -1.0], [1.0, 0.0]], self._dtype())
        harmonics = jnp.kron(jnp.diag(self._frequencies()), generator)
        return _linalg.block_diag(jnp.zeros((1, 1), self._dtype()), harmonics)

    def noise_effect(self) -> Float[Array, "D D"]:
        return jnp.eye(self.state_dim, dtype=self._dtype())

    def noise_spectral_density(self) -> Float[Array, "D D"]:
        return jnp.zeros((self.state_dim, self.state_dim), self._dtype())

    def stationary_covariance(self) -> Float[Array, "D D"]:
        q = self.coefficients()
        return jnp.diag(jnp.concatenate([q[:1], jnp.repeat(q[1:], 2)]))

    def measurement(self) -> Float[Array, "1 D"]:
        row = jnp.concatenate([jnp.ones(1), jnp.tile(jnp.array([1.0, 0.0]), self.order)])
        return row.astype(self._dtype())[None, :]

    def transition(self, dt: ArrayLike) -> Float[Array, "D D"]:
        angle = (2.0 * math.pi / self.period.value()) * jnp.asarray(dt, self._dtype())
        rotations = _linalg.harmonic_rotations(angle, self.order)
        return _linalg.block_diag(jnp.ones((1, 1), self._dtype()), rotations)

    def discretise(self, dt: ArrayLike) -> tuple[Float[Array, "D D"], Float[Array, "D D"]]:
        # Each harmonic keeps its variance under a rotation: the step adds no noise.
        zero = jnp.zeros((self.state_dim, self.state_dim), self._dtype())
        return self.transition(dt), zero

    def discretise_factors(self, dt: ArrayLike) -> tuple[Array, Array]:
        return self.discretise(dt)  # Q = 0 is its own factor

    def _lag_covariance(self, tau: Array) -> Array:
        s = jnp.sin(math.pi * tau / self.period.value())
        return self.variance.value() * jnp.exp(-2.0 * s**2 / self.lengthscale.value() ** 2)


class QuasiPeriodic(AbstractKernel):
    r"""Quasi-periodic kernel: `Periodic` times a Matérn-3/2 envelope,

    $$k(\tau) = \sigma^2 \exp\left(-\frac{2\sin^2(\pi\tau/p)}{\ell^2}\right)
        \left(1 + \frac{\sqrt{3}|\tau|}{\ell_m}\right) e^{-\sqrt{3}|\tau|/\ell_m},$$

    a periodic pattern whose shape drifts over a time scale $\ell_m$. It is
    `Product(Periodic(variance, lengthscale, period, order), Matern32(1, matern_lengthscale))`
    (state dimension $2(2J + 1)$); the approximation error is `Periodic`'s, as the envelope is at
    most 1.

    Args:
        variance: $\sigma^2 > 0$.
        lengthscale: $\ell > 0$ of the periodic part.
        period: $p > 0$.
        matern_lengthscale: $\ell_m > 0$ of the Matérn-3/2 envelope.
        order: number of harmonics $J \ge 1$ (static).

    References:
        Solin & Särkkä (2014), Explicit link between periodic covariance functions and state space
        models. AISTATS.
    """

    variance: Positive
    lengthscale: Positive
    period: Positive
    matern_lengthscale: Positive
    order: int = eqx.field(static=True)

    def __init__(
        self,
        variance: ArrayLike | Positive = 1.0,
        lengthscale: ArrayLike | Positive = 1.0,
        period: ArrayLike | Positive = 1.0,
        matern_lengthscale: ArrayLike | Positive = 10.0,
        order: int = 6,
    ):
        owner = "QuasiPeriodic"
        dtype = _checks.float_dtype(variance, lengthscale, period, matern_lengthscale)
        self.variance = _checks.positive(owner, "variance", variance, dtype)
        self.lengthscale = _checks.positive(owner, "lengthscale", lengthscale, dtype)
        self.period = _checks.positive(owner, "period", period, dtype)
        self.matern_lengthscale = _checks.positive(
            owner, "matern_lengthscale", matern_lengthscale, dtype
        )
        self.order = _checks.order(owner, order)

    def as_product(self) -> Product:
        """The same kernel as `Periodic(...) * Matern32(1, matern_lengthscale)`."""
        unit = Positive(jnp.zeros((), self.variance.unconstrained.dtype))  # variance 1
        periodic = Periodic(self.variance, self.lengthscale, self.period, order=self.order)
        return Product(periodic, Matern32(unit, self.matern_lengthscale))

    @property
    def state_dim(self) -> int:
        return 2 * (2 * self.order + 1)

    def approximation_error(self) -> Scalar:
        """max over tau of |k_approx(tau) - k(tau)|, as for `Periodic`."""
        return self.as_product().kernels[0].approximation_error()

    def feedback(self) -> Float[Array, "D D"]:
        return self.as_product().feedback()

    def noise_covariance(self) -> Float[Array, "D D"]:
        return self.as_product().noise_covariance()

    def stationary_covariance(self) -> Float[Array, "D D"]:
        return self.as_product().stationary_covariance()

    def measurement(self) -> Float[Array, "1 D"]:
        return self.as_product().measurement()

    def discretise(self, dt: ArrayLike) -> tuple[Float[Array, "D D"], Float[Array, "D D"]]:
        return self.as_product().discretise(dt)

    def discretise_factors(self, dt: ArrayLike) -> tuple[Array, Array]:
        return self.as_product().discretise_factors(dt)

    def _covariance(self, s: Array, t: Array) -> Array:
        return self.as_product()._covariance(s, t)
