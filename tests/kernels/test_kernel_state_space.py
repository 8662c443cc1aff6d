"""Exact kernels: the state-space matrices reproduce the kernel, and `discretise` is exact.

The oracles are written plainly with SciPy (matrix exponentials of the SDE and Van Loan's block
matrix), independent of the library's own `discretise`.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from bayesssm import kernels as K

STATIONARY = {
    "matern12": lambda: K.Matern12(variance=1.3, lengthscale=0.7),
    "matern32": lambda: K.Matern32(variance=1.3, lengthscale=0.7),
    "matern52": lambda: K.Matern52(variance=2.0, lengthscale=0.4),
    "matern72": lambda: K.Matern72(variance=0.5, lengthscale=1.5),
    "matern72_short": lambda: K.Matern72(variance=3.0, lengthscale=0.05),
    "cosine": lambda: K.Cosine(variance=1.2, frequency=3.0),
    "constant": lambda: K.Constant(variance=0.4),
    "bias_alias": lambda: K.Bias(variance=2.5),
    "sum": lambda: K.Matern32(1.0, 0.5) + K.Cosine(0.3, 2.0) + K.Constant(0.2),
    "product": lambda: K.Matern52(1.0, 0.5) * K.Cosine(0.3, 2.0),
    "triple_product": lambda: K.Matern12(1.0, 2.0) * K.Matern32(0.5, 0.8) * K.Cosine(1.5, 4.0),
    "product_of_sums": lambda: (
        (K.Matern12(1.0, 0.6) + K.Constant(0.5)) * (K.Cosine(1.0, 2.0) + K.Matern32(0.7, 1.1))
    ),
    "sum_of_products": lambda: (
        K.Matern32(2.0, 0.9) * K.Cosine(1.0, 5.0)
        + K.Matern52(0.3, 0.2) * K.Constant(2.0)
        + K.Matern72(1.0, 3.0)
    ),
}

# Approximations of another kernel, but exact linear SDEs all the same: their matrices must be
# consistent (Lyapunov) and `discretise` exact.
APPROXIMATED = {
    "periodic": lambda: K.Periodic(variance=1.1, lengthscale=0.7, period=1.3, order=6),
    "quasi_periodic": lambda: K.QuasiPeriodic(1.1, 0.7, 1.3, matern_lengthscale=2.0, order=4),
    "squared_exponential": lambda: K.SquaredExponential(variance=0.8, lengthscale=0.3, order=7),
    "se_times_periodic_plus_matern": lambda: (
        K.SquaredExponential(1.0, 2.0, order=4) * K.Periodic(1.0, 1.0, 0.5, order=3)
        + K.Matern12(0.1, 0.2)
    ),
}
SDES = {**STATIONARY, **APPROXIMATED}

NONSTATIONARY = {
    "wiener": lambda: K.Wiener(variance=0.7, initial_variance=2.0),
    "wiener_pinned": lambda: K.Wiener(variance=1.5, initial_variance=0.0),
    "integrated_wiener": lambda: K.IntegratedWiener(
        0.4, initial_variance=1.5, initial_slope_variance=0.3
    ),
    "trend_plus_noise": lambda: K.IntegratedWiener(0.4) + K.Matern32(1.0, 0.5) + K.Wiener(0.1),
}

TAUS = np.array([0.0, 0.05, 0.3, 0.7, 1.0, 1.9, 3.0])
STEPS = [0.0, 0.01, 0.25, 1.0, 3.7]


def matrices(kernel):
    return tuple(
        np.asarray(m)
        for m in (
            kernel.feedback(),
            kernel.noise_covariance(),
            kernel.stationary_covariance(),
            kernel.measurement(),
        )
    )


def van_loan(F, noise, dt):
    """A = e^{F dt}, Q = int_0^dt e^{F s} noise e^{F^T s} ds.

    Van Loan's block exponential on a step h = dt / 2^k short enough to be well conditioned
    (its -F^T block grows like e^{|F| h}), then k doublings A(2h) = A(h)^2,
    Q(2h) = A(h) Q(h) A(h)^T + Q(h). A itself comes from one plain expm (more accurate).
    """
    d = F.shape[0]
    k = max(0, int(np.ceil(np.log2(max(np.linalg.norm(F, 1) * dt, 1e-300) / 0.25))))
    h = dt / 2**k
    m = scipy.linalg.expm(np.block([[F, noise], [np.zeros((d, d)), -F.T]]) * h)
    A = m[:d, :d]
    Q = m[:d, d:] @ A.T
    for _ in range(k):
        Q = A @ Q @ A.T + Q
        A = A @ A
    return scipy.linalg.expm(F * dt), 0.5 * (Q + Q.T)


@pytest.mark.parametrize("name", SDES)
def test_shapes_and_state_dim(name):
    kernel = SDES[name]()
    F, noise, P, H = matrices(kernel)
    d = kernel.state_dim
    assert isinstance(d, int)
    assert F.shape == noise.shape == P.shape == (d, d)
    assert H.shape == (1, d)
    A, Q = kernel.discretise(0.3)
    assert A.shape == Q.shape == (d, d)
    assert kernel.is_stationary


@pytest.mark.parametrize("name", STATIONARY)
def test_state_space_reproduces_kernel(name):
    kernel = STATIONARY[name]()
    F, _, P, H = matrices(kernel)
    from_sde = np.array([(H @ scipy.linalg.expm(F * tau) @ P @ H.T)[0, 0] for tau in TAUS])
    exact = np.asarray(kernel.covariance(TAUS))
    scale = float(exact[0])
    np.testing.assert_allclose(from_sde, exact, rtol=1e-10, atol=1e-13 * scale)
    # k(s, t) = k(t - s), symmetric in its arguments.
    np.testing.assert_allclose(kernel.covariance(2.0 + TAUS, 2.0), exact, rtol=1e-12)
    np.testing.assert_allclose(kernel.covariance(2.0, 2.0 + TAUS), exact, rtol=1e-12)


@pytest.mark.parametrize("name", SDES)
def test_lyapunov_equation(name):
    F, noise, P, _ = matrices(SDES[name]())
    residual = F @ P + P @ F.T + noise
    scale = max(np.max(np.abs(F @ P)), np.max(np.abs(noise)), 1e-300)
    assert np.max(np.abs(residual)) <= 1e-12 * scale
    np.testing.assert_array_equal(P, P.T)
    assert np.min(np.linalg.eigvalsh(P)) >= -1e-12 * np.max(np.abs(P))


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("dt", STEPS)
def test_discretise_matches_van_loan(name, dt):
    kernel = SDES[name]()
    F, noise, P, _ = matrices(kernel)
    A_ref, Q_ref = van_loan(F, noise, dt)
    A, Q = (np.asarray(m) for m in kernel.discretise(dt))
    np.testing.assert_allclose(A, A_ref, rtol=1e-10, atol=1e-10 * max(1.0, np.max(np.abs(A_ref))))
    np.testing.assert_allclose(Q, Q_ref, rtol=1e-10, atol=1e-10 * np.max(np.abs(P)))
    np.testing.assert_array_equal(Q, Q.T)
    assert np.min(np.linalg.eigvalsh(Q)) >= -1e-12 * np.max(np.abs(P))


@pytest.mark.parametrize("name", NONSTATIONARY)
@pytest.mark.parametrize("dt", STEPS)
def test_nonstationary_discretise_matches_van_loan(name, dt):
    kernel = NONSTATIONARY[name]()
    assert not kernel.is_stationary
    F, noise, _, _ = matrices(kernel)
    A_ref, Q_ref = van_loan(F, noise, dt)
    A, Q = (np.asarray(m) for m in kernel.discretise(dt))
    np.testing.assert_allclose(A, A_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(Q, Q_ref, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(Q, Q.T)


@pytest.mark.parametrize("name", NONSTATIONARY)
def test_nonstationary_covariance_from_the_initial_state(name):
    # k(s, t) = H e^{F (t - s)} P(s) H^T for t >= s, with P(s) = A(s) P0 A(s)^T + Q(s).
    kernel = NONSTATIONARY[name]()
    F, noise, P0, H = matrices(kernel)
    for s in (0.0, 0.4, 2.5):
        A, Q = van_loan(F, noise, s)
        Ps = A @ P0 @ A.T + Q
        for t in (s, s + 0.3, s + 1.7):
            expected = (H @ scipy.linalg.expm(F * (t - s)) @ Ps @ H.T)[0, 0]
            np.testing.assert_allclose(kernel.covariance(s, t), expected, rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(kernel.covariance(t, s), expected, rtol=1e-10, atol=1e-14)


def test_pinned_wiener_is_brownian_motion():
    kernel = K.Wiener(variance=2.0, initial_variance=0.0)
    s, t = np.array([0.5, 1.0, 3.0]), np.array([2.0, 0.25, 3.0])
    np.testing.assert_allclose(kernel.covariance(s, t), 2.0 * np.minimum(s, t), rtol=1e-14)


def test_sum_and_product_structure():
    a, b, c = K.Matern32(1.0, 0.5), K.Cosine(0.5, 2.0), K.Matern12(0.3, 1.0)
    total = a + b + c
    assert isinstance(total, K.Sum) and len(total.kernels) == 3  # flattened, not nested
    assert total.state_dim == 5
    H = np.asarray(total.measurement())
    np.testing.assert_array_equal(
        H, np.concatenate([np.asarray(k.measurement()) for k in (a, b, c)], axis=1)
    )
    product = a * b * c
    assert isinstance(product, K.Product) and len(product.kernels) == 3
    assert product.state_dim == 4
    P = np.asarray(product.stationary_covariance())
    expected = np.kron(
        np.kron(np.asarray(a.stationary_covariance()), np.asarray(b.stationary_covariance())),
        np.asarray(c.stationary_covariance()),
    )
    np.testing.assert_allclose(P, expected, rtol=1e-14)
    taus = np.linspace(0.0, 3.0, 7)
    np.testing.assert_allclose(
        product.covariance(taus),
        np.asarray(a.covariance(taus)) * np.asarray(b.covariance(taus)) * c.covariance(taus),
        rtol=1e-14,
    )
