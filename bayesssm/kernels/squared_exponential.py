r"""The squared-exponential (RBF) kernel through a Taylor approximation of its spectral density."""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._types import Array, ArrayLike, Float, Scalar
from ..params import Positive
from . import _checks
from ._base import AbstractStationaryKernel

# Beyond this the roots of the Taylor polynomial (np.roots) and the Lyapunov solve lose accuracy
# faster than the approximation gains (its error is already ~1e-8 of the variance).
MAX_ORDER = 24


@functools.cache
def _constants(order: int) -> tuple[np.ndarray, float, np.ndarray, float]:
    """(b, rho, Pb, qb) for unit variance and length-scale, in balanced time t'' = rho t / l.

    b: coefficients b_0..b_{N-1} of the monic stable polynomial whose |.|^2 on the imaginary axis
    is proportional to the Taylor polynomial sum_n (u^2 / 2)^n / n!; rho = |b_0|^(1/N) makes its
    roots O(1), which keeps the Lyapunov solve well conditioned.
    """
    n = order
    taylor = np.zeros(2 * n + 1)  # coefficients in s (s = i u): sum_n (-s^2 / 2)^n / n!
    for k in range(n + 1):
        taylor[2 * k] = (-0.5) ** k / math.factorial(k)
    roots = np.roots(taylor[::-1])
    stable = roots[roots.real < 0]
    if len(stable) != n:  # pragma: no cover - guarded by MAX_ORDER
        raise ValueError(f"SquaredExponential: order {n} is too large for the root finder.")
    monic = np.real(np.poly(stable))[::-1]  # a_0, ..., a_N = 1
    rho = abs(monic[0]) ** (1.0 / n)
    b = monic * rho ** (np.arange(n + 1) - n)
    # White-noise density: sqrt(2 pi) N! 2^N in t' = t / l, times rho^(1 - 2N) in t''.
    qb = math.exp(
        0.5 * math.log(2 * math.pi)
        + math.lgamma(n + 1)
        + n * math.log(2.0)
        - (2 * n - 1) * math.log(rho)
    )
    companion = np.eye(n, k=1)
    companion[-1] = -b[:-1]
    noise = np.zeros((n, n))
    noise[-1, -1] = qb
    eye = np.eye(n)
    lyapunov = np.kron(eye, companion) + np.kron(companion, eye)
    pb = np.linalg.solve(lyapunov, -noise.reshape(-1)).reshape(n, n)
    return b[:-1].copy(), rho, 0.5 * (pb + pb.T), qb


class SquaredExponential(AbstractStationaryKernel):
    r"""Squared-exponential kernel $k(\tau) = \sigma^2 \exp(-\tau^2 / (2\ell^2))$, approximated
    by a state-space model of dimension $N$ = `order`.

    The spectral density $S(\omega) = \sigma^2 \sqrt{2\pi}\,\ell\, e^{-\ell^2\omega^2/2}$ is
    replaced by $S_N(\omega) = \sigma^2 \sqrt{2\pi}\,\ell / T_N(\ell^2\omega^2/2)$ with $T_N(x) =
    \sum_{n \le N} x^n / n!$ the Taylor polynomial of $e^x$. $T_N$ has no root on $x \ge 0$, so
    $T_N(\ell^2\omega^2/2) \propto |a(i\omega)|^2$ with $a$ the monic polynomial of its $N$
    stable roots; $S_N$ is the spectrum of $a(\mathrm{d}/\mathrm{d}t) f = $ white noise, an SDE in
    companion form. The state is $(f, c^{-1} f', \dots, c^{-(N-1)} f^{(N-1)})$ with $c = \rho /
    \ell$ and $\rho$ the geometric mean of the roots' moduli of the dimensionless polynomial, so
    that $F = c\,F_1$, $P_\infty = \sigma^2 P_1$ are well scaled ($F_1$, $P_1$: constants of the
    order, computed once in float64). `discretise` uses `expm`.

    Approximation error: $T_N(x) \le e^x$, so $S_N \ge S$ and the error is largest at $\tau = 0$:
    $$\max_\tau |k_N(\tau) - k(\tau)| = k_N(0) - \sigma^2 = \sigma^2 \varepsilon_N,\quad
        \varepsilon_N = \frac{1}{\sqrt\pi}\int_{-\infty}^{\infty}
        \left(\frac{1}{T_N(u^2)} - e^{-u^2}\right) \mathrm{d}u
        \approx 0.4\, \frac{2^{-N}}{\sqrt N},$$
    a geometric rate of $1/2$ per order ($\varepsilon_2 = 0.14$, $\varepsilon_4 = 0.017$,
    $\varepsilon_6 = 3.0 \cdot 10^{-3}$, $\varepsilon_8 = 6.0 \cdot 10^{-4}$, $\varepsilon_{10} =
    1.3 \cdot 10^{-4}$). `approximation_error()` returns $\sigma^2\varepsilon_N$. The error is
    relative to the variance and independent of $\ell$. Orders up to `MAX_ORDER` (24).

    Args:
        variance: $\sigma^2 > 0$, a number or a `bs.Positive`.
        lengthscale: $\ell > 0$, a number or a `bs.Positive`.
        order: state dimension $N \ge 1$ (static).

    References:
        Hartikainen & Särkkä (2010), Kalman filtering and smoothing solutions to temporal Gaussian
        process regression models. IEEE MLSP. Särkkä, Solin & Hartikainen (2013), Spatiotemporal
        learning via infinite-dimensional Bayesian filtering and smoothing. IEEE Signal Processing
        Magazine 30(4).
    """

    variance: Positive
    lengthscale: Positive
    order: int = eqx.field(static=True)

    def __init__(
        self,
        variance: ArrayLike | Positive = 1.0,
        lengthscale: ArrayLike | Positive = 1.0,
        order: int = 6,
    ):
        owner = "SquaredExponential"
        dtype = _checks.float_dtype(variance, lengthscale)
        self.variance = _checks.positive(owner, "variance", variance, dtype)
        self.lengthscale = _checks.positive(owner, "lengthscale", lengthscale, dtype)
        self.order = _checks.order("SquaredExponential", order)
        if self.order > MAX_ORDER:
            raise ValueError(
                f"SquaredExponential: order must be at most {MAX_ORDER}, got {self.order} (the "
                f"approximation error at order {MAX_ORDER} is already ~1e-8 of the variance)."
            )

    @property
    def state_dim(self) -> int:
        return self.order

    def _dtype(self):
        return self.variance.unconstrained.dtype

    def _rate(self) -> Scalar:
        return float(_constants(self.order)[1]) / self.lengthscale.value()

    def feedback(self) -> Float[Array, "D D"]:
        b = jnp.asarray(_constants(self.order)[0], self._dtype())
        companion = jnp.eye(self.order, k=1, dtype=self._dtype()).at[-1].set(-b)
        return self._rate() * companion

    def noise_effect(self) -> Float[Array, "D 1"]:
        return jnp.zeros((self.order, 1), self._dtype()).at[-1].set(1.0)

    def noise_spectral_density(self) -> Float[Array, "1 1"]:
        qb = _constants(self.order)[3]
        return jnp.reshape(float(qb) * self.variance.value() * self._rate(), (1, 1))

    def stationary_covariance(self) -> Float[Array, "D D"]:
        pb = jnp.asarray(_constants(self.order)[2], self._dtype())
        return self.variance.value() * pb

    def measurement(self) -> Float[Array, "1 D"]:
        return jnp.zeros((1, self.order), self._dtype()).at[0, 0].set(1.0)

    def approximation_error(self) -> Scalar:
        r"""$\max_\tau |k_N(\tau) - k(\tau)| = k_N(0) - \sigma^2 = \sigma^2 \varepsilon_N$."""
        pb = _constants(self.order)[2]
        return self.variance.value() * float(pb[0, 0] - 1.0)

    def _lag_covariance(self, tau: Array) -> Array:
        return self.variance.value() * jnp.exp(-0.5 * (tau / self.lengthscale.value()) ** 2)
