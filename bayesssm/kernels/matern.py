r"""Matérn kernels of half-integer smoothness $\nu = p + 1/2$, exact in state-space form.

The state is $(f, f', \dots, f^{(p)})$. With $\lambda = \sqrt{2\nu} / \ell$, $F$ is the companion
matrix of $(s + \lambda)^{p+1}$, $L = (0, \dots, 0, 1)^\top$,
$Q_c = \sigma^2\, 2\sqrt{\pi}\, \lambda^{2p+1}\, p! / \Gamma(p + 1/2)$, and $P_\infty$ holds the
spectral moments in closed form ($P_{\infty,ij} = (-1)^i k^{(i+j)}(0)$, not solved for). As
$F + \lambda I$ is nilpotent, $e^{F\,dt} = e^{-\lambda dt} \sum_{k \le p} ((F + \lambda I)
dt)^k / k!$ exactly, which stays finite for any $dt \ge 0$; `discretise` gives
$Q = P_\infty - A P_\infty A^\top$.

References:
    Hartikainen & Särkkä (2010), Kalman filtering and smoothing solutions to temporal Gaussian
    process regression models. IEEE MLSP.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from .._matmul import matmul
from .._types import Array, ArrayLike, Float
from ..params import Positive
from . import _checks
from ._base import AbstractStationaryKernel


@functools.cache
def _constants(p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Static constants of Matérn-(p + 1/2), in powers of lambda = sqrt(2p + 1) / lengthscale.

    Returns (binomial row of (s + lambda)^D for the drift, Pinf / (variance lambda^(i + j)),
    the polynomial of k(tau) in lambda tau, Qc / (variance lambda^(2p + 1))).
    """
    d = p + 1
    binom = np.array([math.comb(d, k) for k in range(d)], dtype=np.float64)
    # Pinf_ij = cov(f^(i), f^(j)) = (-1)^i k^(i+j)(0); the even derivatives of k at 0 are spectral
    # moments, k^(2m)(0) = (-1)^m variance lambda^(2m) mu_m with
    # mu_m = G(m + 1/2) G(p + 1/2 - m) / (G(1/2) G(p + 1/2)).
    pinf = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            if (i + j) % 2 == 0:
                m = (i + j) // 2
                moment = math.gamma(m + 0.5) * math.gamma(p + 0.5 - m)
                moment /= math.gamma(0.5) * math.gamma(p + 0.5)
                pinf[i, j] = (-1) ** (i + m) * moment
    # k(tau) = variance exp(-x) sum_i p! (p + i)! / ((2p)! i! (p - i)!) (2x)^(p - i), x = lam tau.
    poly = np.array(
        [
            math.factorial(p)
            * math.factorial(p + i)
            / (math.factorial(2 * p) * math.factorial(i) * math.factorial(p - i))
            * 2.0 ** (p - i)
            for i in range(p + 1)
        ]
    )[::-1].copy()  # coefficient of x^k at index k
    qc = 2.0 * math.sqrt(math.pi) * math.factorial(p) / math.gamma(p + 0.5)
    return binom, pinf, poly, qc


class _AbstractMatern(AbstractStationaryKernel):
    r"""Shared implementation of the Matérn kernels (construction in the module docstring).

    Args:
        variance: $\sigma^2 > 0$, a number or a `bs.Positive`.
        lengthscale: $\ell > 0$, a number or a `bs.Positive`.
    """

    variance: Positive
    lengthscale: Positive
    _p: ClassVar[int]

    def __init__(
        self, variance: ArrayLike | Positive = 1.0, lengthscale: ArrayLike | Positive = 1.0
    ):
        owner = type(self).__name__
        dtype = _checks.float_dtype(variance, lengthscale)
        self.variance = _checks.positive(owner, "variance", variance, dtype)
        self.lengthscale = _checks.positive(owner, "lengthscale", lengthscale, dtype)

    @property
    def state_dim(self) -> int:
        return self._p + 1

    def _rate(self) -> Array:
        return math.sqrt(2 * self._p + 1) / self.lengthscale.value()

    def _const(self, x: np.ndarray) -> Array:
        return jnp.asarray(x, self.variance.unconstrained.dtype)

    def feedback(self) -> Float[Array, "D D"]:
        binom = self._const(_constants(self._p)[0])
        d = self.state_dim
        lam = self._rate()
        last = -binom * lam ** jnp.arange(d, 0, -1, dtype=binom.dtype)
        return jnp.eye(d, k=1, dtype=binom.dtype).at[-1].set(last)

    def noise_effect(self) -> Float[Array, "D 1"]:
        return jnp.zeros((self.state_dim, 1), self.variance.unconstrained.dtype).at[-1].set(1.0)

    def noise_spectral_density(self) -> Float[Array, "1 1"]:
        qc = _constants(self._p)[3]
        return jnp.reshape(qc * self.variance.value() * self._rate() ** (2 * self._p + 1), (1, 1))

    def stationary_covariance(self) -> Float[Array, "D D"]:
        pinf = self._const(_constants(self._p)[1])
        powers = self._rate() ** jnp.arange(self.state_dim, dtype=pinf.dtype)
        return self.variance.value() * pinf * powers[:, None] * powers[None, :]

    def measurement(self) -> Float[Array, "1 D"]:
        return jnp.zeros((1, self.state_dim), self.variance.unconstrained.dtype).at[0, 0].set(1.0)

    def transition(self, dt: ArrayLike) -> Float[Array, "D D"]:
        F = self.feedback()
        dt = jnp.asarray(dt, F.dtype)
        lam = self._rate()
        nilpotent = (F + lam * jnp.eye(self.state_dim, dtype=F.dtype)) * dt
        term = jnp.eye(self.state_dim, dtype=F.dtype)
        total = term
        for k in range(1, self.state_dim):
            term = matmul(term, nilpotent) / k
            total = total + term
        return jnp.exp(-lam * dt) * total

    def _lag_covariance(self, tau: Array) -> Array:
        poly = self._const(_constants(self._p)[2])
        x = self._rate() * tau
        return self.variance.value() * jnp.exp(-x) * jnp.polyval(poly[::-1], x)


class Matern12(_AbstractMatern):
    r"""Matérn-1/2 (exponential, Ornstein–Uhlenbeck): $k(\tau) = \sigma^2 e^{-|\tau| / \ell}$.

    State dimension 1; arguments `variance`, `lengthscale` (numbers or `bs.Positive`).
    """

    _p: ClassVar[int] = 0


class Matern32(_AbstractMatern):
    r"""Matérn-3/2: $k(\tau) = \sigma^2 (1 + \sqrt{3}|\tau|/\ell) e^{-\sqrt{3}|\tau|/\ell}$.

    State $(f, f')$, dimension 2; arguments `variance`, `lengthscale`.
    """

    _p: ClassVar[int] = 1


class Matern52(_AbstractMatern):
    r"""Matérn-5/2: $k(\tau) = \sigma^2 (1 + \sqrt{5}r + 5r^2/3) e^{-\sqrt{5} r}$, $r =
    |\tau|/\ell$.

    State $(f, f', f'')$, dimension 3; arguments `variance`, `lengthscale`.
    """

    _p: ClassVar[int] = 2


class Matern72(_AbstractMatern):
    r"""Matérn-7/2: $k(\tau) = \sigma^2 (1 + \sqrt{7}r + 14r^2/5 + 7\sqrt{7}r^3/15)
    e^{-\sqrt{7} r}$, $r = |\tau|/\ell$.

    State $(f, \dots, f''')$, dimension 4; arguments `variance`, `lengthscale`.
    """

    _p: ClassVar[int] = 3
