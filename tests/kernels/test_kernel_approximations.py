"""Approximated kernels (Periodic, QuasiPeriodic, SquaredExponential) and the Bessel helper.

The approximation error is measured from the state-space matrices (H e^{F tau} Pinf H^T against
the exact kernel on a grid) and fitted against the order at the rate each docstring states.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.special

from bayesssm import kernels as K
from bayesssm.kernels import _bessel


@eqx.filter_jit
def _matrices(kernel, taus):
    # One compiled program per kernel: run eagerly, each new state size would compile every
    # operation on its own.
    return (
        kernel.feedback(),
        kernel.stationary_covariance(),
        kernel.measurement(),
        kernel.covariance(taus),
    )


def _from_matrices(F, P, H, taus):
    return np.array([(H @ scipy.linalg.expm(F * t) @ P @ H.T)[0, 0] for t in taus])


def state_space_kernel(kernel, taus):
    F, P, H, _ = (np.asarray(a) for a in _matrices(kernel, taus))
    return _from_matrices(F, P, H, taus)


def measured_error(kernel, taus):
    F, P, H, exact = (np.asarray(a) for a in _matrices(kernel, taus))
    return float(np.max(np.abs(_from_matrices(F, P, H, taus) - exact)))


# -- Bessel ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("z", [1e-4, 0.02, 0.5, 1.0, 4.0, 16.0, 60.0, 135.0])
def test_bessel_matches_scipy(z):
    n = 40
    ours = np.asarray(_bessel.ive(z, n))
    ref = scipy.special.ive(np.arange(n + 1), z)
    keep = ref > 1e-290  # below, scipy's own values are subnormal
    np.testing.assert_allclose(ours[keep], ref[keep], rtol=1e-12)


@pytest.mark.parametrize("z", [0.05, 1.0, 7.0, 50.0])
def test_bessel_derivative(z):
    # d/dz e^{-z} I_j(z) = (e^{-z} I_{j-1} + e^{-z} I_{j+1}) / 2 - e^{-z} I_j, with I_{-1} = I_1.
    n = 20
    ours = np.asarray(jax.jacfwd(lambda x: _bessel.ive(x, n))(z))
    rev = np.asarray(jax.jacrev(lambda x: _bessel.ive(x, n))(z))
    v = scipy.special.ive(np.arange(-1, n + 2), z)
    ref = 0.5 * (v[:-2] + v[2:]) - v[1:-1]
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(rev, ref, rtol=1e-10, atol=1e-300)


def test_bessel_float32():
    out = _bessel.ive(np.float32(3.0), 8)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, scipy.special.ive(np.arange(9), 3.0), rtol=2e-6)


# -- Periodic -------------------------------------------------------------------------------------


def test_periodic_coefficients_are_the_bessel_series():
    kernel = K.Periodic(variance=1.7, lengthscale=0.8, period=2.0, order=5)
    z = 0.8**-2
    expected = 1.7 * scipy.special.ive(np.arange(6), z) * np.array([1, 2, 2, 2, 2, 2])
    np.testing.assert_allclose(kernel.coefficients(), expected, rtol=1e-13)
    assert kernel.state_dim == 11


@pytest.mark.parametrize(("lengthscale", "orders"), [(1.0, range(1, 10)), (0.5, range(2, 16))])
def test_periodic_error_rate(lengthscale, orders):
    variance, period = 1.3, 2.0
    z = lengthscale**-2
    taus = np.linspace(0.0, period, 201)
    errors, leading = [], []
    for order in orders:
        kernel = K.Periodic(variance, lengthscale, period, order=order)
        err = measured_error(kernel, taus)
        # The error is the dropped tail, attained at tau = 0: approximation_error() is exact.
        np.testing.assert_allclose(err, kernel.approximation_error(), rtol=1e-6, atol=1e-15)
        first = 2 * variance * math.exp(-z) * (z / 2) ** (order + 1) / math.factorial(order + 1)
        if order + 2 > z / 2:
            bound = first * math.exp(z**2 / (4 * (order + 2))) / (1 - z / (2 * (order + 2)))
            assert first * (1 - 1e-9) <= err <= bound * (1 + 1e-9)
        errors.append(err)
        leading.append(first)
    # log error against log of the stated rate (z/2)^(J+1) / (J+1)!: slope 1.
    slope = np.polyfit(np.log(leading), np.log(errors), 1)[0]
    assert abs(slope - 1.0) < 0.05, slope
    # Faster than geometric: successive error ratios shrink.
    ratios = np.array(errors[1:]) / np.array(errors[:-1])
    assert np.all(np.diff(ratios) < 0)


def test_quasi_periodic_is_periodic_times_matern32():
    qp = K.QuasiPeriodic(variance=1.2, lengthscale=0.9, period=1.5, matern_lengthscale=4.0, order=5)
    ref = K.Periodic(1.2, 0.9, 1.5, order=5) * K.Matern32(1.0, 4.0)
    assert qp.state_dim == ref.state_dim == 22
    for method in ("feedback", "noise_covariance", "stationary_covariance", "measurement"):
        np.testing.assert_allclose(getattr(qp, method)(), getattr(ref, method)(), rtol=1e-14)
    for a, b in zip(qp.discretise(0.7), ref.discretise(0.7), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-16)
    taus = np.linspace(0.0, 6.0, 61)
    exact = 1.2 * np.exp(-2 * np.sin(np.pi * taus / 1.5) ** 2 / 0.81)
    r = np.sqrt(3) * taus / 4.0
    np.testing.assert_allclose(qp.covariance(taus), exact * (1 + r) * np.exp(-r), rtol=1e-13)
    np.testing.assert_allclose(measured_error(qp, taus), qp.approximation_error(), rtol=1e-8)


# -- Squared exponential --------------------------------------------------------------------------


def spectral_kernel(order, variance, lengthscale, tau):
    """k_N(tau) = int S_N(w) cos(w tau) dw / 2pi, S_N = variance sqrt(2 pi) l / T_N(l^2 w^2 / 2)."""

    def density(w):
        x = (lengthscale * w) ** 2 / 2
        return (
            variance
            * math.sqrt(2 * math.pi)
            * lengthscale
            / sum(x**n / math.factorial(n) for n in range(order + 1))
        )

    if tau == 0:
        value = scipy.integrate.quad(density, 0, np.inf, epsabs=0, epsrel=1e-13, limit=500)[0]
    else:
        value = scipy.integrate.quad(density, 0, np.inf, weight="cos", wvar=tau, limlst=200)[0]
    return value / math.pi


@pytest.mark.parametrize("order", [1, 3, 6])
def test_squared_exponential_realises_the_taylor_spectrum(order):
    kernel = K.SquaredExponential(variance=1.5, lengthscale=0.6, order=order)
    taus = [0.0, 0.2, 0.7, 1.5]
    expected = [spectral_kernel(order, 1.5, 0.6, t) for t in taus]
    np.testing.assert_allclose(state_space_kernel(kernel, taus), expected, rtol=1e-8, atol=1e-12)


def test_squared_exponential_error_rate():
    variance, lengthscale = 2.0, 0.3
    taus = np.linspace(0.0, 8 * lengthscale, 241)
    orders = np.arange(2, 15)
    errors = []
    for order in orders:
        kernel = K.SquaredExponential(variance, lengthscale, order=int(order))
        err = measured_error(kernel, taus)
        # S_N >= S, so the error is largest at tau = 0, where approximation_error() evaluates it.
        np.testing.assert_allclose(err, kernel.approximation_error(), rtol=1e-8)
        errors.append(err / variance)
    errors = np.array(errors)
    # Stated: eps_N ~ 0.4 * 2^-N / sqrt(N), a geometric rate of 1/2 per order.
    scaled = errors * 2.0**orders * np.sqrt(orders)
    assert np.all((scaled > 0.3) & (scaled < 0.85)), scaled
    late = orders >= 4
    slope = np.polyfit(orders[late], np.log(errors[late] * np.sqrt(orders[late])), 1)[0]
    assert abs(slope - math.log(0.5)) < 0.1, slope
    # The values quoted in the docstring.
    quoted = {2: 0.14, 4: 0.017, 6: 3.0e-3, 8: 6.0e-4, 10: 1.3e-4}
    for order, value in quoted.items():
        assert abs(errors[order - 2] / value - 1) < 0.05


def test_squared_exponential_error_does_not_depend_on_lengthscale():
    errs = [K.SquaredExponential(1.0, ell, order=5).approximation_error() for ell in (0.01, 1, 50)]
    np.testing.assert_allclose(errs, errs[0], rtol=1e-12)
