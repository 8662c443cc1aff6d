"""jit, vmap over dt, gradients with respect to hyperparameters, float32, and extreme steps."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesssm import kernels as K


def all_kernels(dtype=np.float64):
    f = lambda x: np.asarray(x, dtype)  # noqa: E731
    return {
        "matern12": K.Matern12(f(1.3), f(0.7)),
        "matern32": K.Matern32(f(1.3), f(0.7)),
        "matern52": K.Matern52(f(2.0), f(0.4)),
        "matern72": K.Matern72(f(0.5), f(1.5)),
        "cosine": K.Cosine(f(1.2), f(3.0)),
        "constant": K.Constant(f(0.4)),
        "periodic": K.Periodic(f(1.0), f(0.8), f(2.0), order=5),
        "quasi_periodic": K.QuasiPeriodic(f(1.0), f(0.8), f(2.0), f(3.0), order=4),
        "squared_exponential": K.SquaredExponential(f(1.5), f(0.6), order=6),
        "wiener": K.Wiener(f(0.7), f(2.0)),
        "integrated_wiener": K.IntegratedWiener(f(0.4), f(1.0), f(0.5)),
        "sum": K.Matern32(f(1.0), f(0.5)) + K.Periodic(f(1.0), f(1.0), f(1.0), order=3),
        "product": K.Matern52(f(1.0), f(0.5)) * K.Cosine(f(0.3), f(2.0)),
        "trend": K.IntegratedWiener(f(0.1)) + K.Matern12(f(1.0), f(0.3)) * K.Constant(f(2.0)),
    }


NAMES = list(all_kernels())
# Kernels whose state forgets its past: A -> 0 and Q -> Pinf for a step of many length-scales.
DECAYING = ["matern12", "matern32", "matern52", "matern72", "squared_exponential", "product"]


def lengthscale_of(kernel):
    leaves = [getattr(kernel, "lengthscale", None), getattr(kernel, "period", None)]
    values = [float(x.value()) for x in leaves if x is not None]
    return max(values, default=1.0)


def outputs(kernel, dt):
    A, Q = kernel.discretise(dt)
    return (
        kernel.feedback(),
        kernel.noise_covariance(),
        kernel.stationary_covariance(),
        kernel.measurement(),
        A,
        Q,
        kernel.covariance(jnp.asarray(0.3, A.dtype), jnp.asarray(1.1, A.dtype)),
    )


@pytest.mark.parametrize("name", NAMES)
def test_zero_step_is_identity(name):
    kernel = all_kernels()[name]
    A, Q = kernel.discretise(0.0)
    scale = float(jnp.max(jnp.abs(kernel.stationary_covariance())))
    np.testing.assert_allclose(A, np.eye(kernel.state_dim), atol=1e-14)
    np.testing.assert_allclose(Q, 0.0, atol=1e-14 * scale)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", NAMES)
def test_huge_step_is_finite(name, dtype):
    kernel = all_kernels(dtype)[name]
    dt = 1e4 * lengthscale_of(kernel)
    A, Q = kernel.discretise(dt)
    assert A.dtype == Q.dtype == dtype
    assert np.all(np.isfinite(A)) and np.all(np.isfinite(Q))
    if name in DECAYING:
        P = np.asarray(kernel.stationary_covariance())
        np.testing.assert_allclose(A, 0.0, atol=1e-12)
        np.testing.assert_allclose(Q, P, rtol=1e-5, atol=1e-6 * np.max(np.abs(P)))


@pytest.mark.parametrize("name", NAMES)
def test_jit_and_vmap_over_dt(name):
    kernel = all_kernels()[name]
    dts = jnp.array([0.0, 0.01, 0.5, 2.0, 1e4])
    eager = [kernel.discretise(dt) for dt in dts]
    jitted = jax.jit(lambda k, dt: k.discretise(dt))
    batched = jax.jit(jax.vmap(lambda k, dt: k.discretise(dt), in_axes=(None, 0)))(kernel, dts)
    scale = float(jnp.max(jnp.abs(kernel.stationary_covariance())))
    for i, (A, Q) in enumerate(eager):
        A_jit, Q_jit = jitted(kernel, dts[i])
        # Compiled code may round differently: Q = Pinf - A Pinf A^T is exact to ~eps * |Pinf|.
        np.testing.assert_allclose(A_jit, A, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(Q_jit, Q, rtol=1e-12, atol=1e-14 * scale)
        np.testing.assert_allclose(batched[0][i], A, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(batched[1][i], Q, rtol=1e-12, atol=1e-14 * scale)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite(name):
    kernel = all_kernels()[name]
    dt_big = 1e4 * lengthscale_of(kernel)

    def loss(k):
        total = 0.0
        for dt in (0.0, 0.3, dt_big):
            A, Q = k.discretise(dt)
            total = total + jnp.sum(A**2) + jnp.sum(Q)
        total = total + jnp.sum(k.stationary_covariance()) + jnp.sum(k.noise_covariance())
        return total + k.covariance(0.2, 0.9)

    # Compiled: eager differentiation of every kernel would compile hundreds of single
    # operations; eager and compiled kernels are compared in test_jit_and_vmap_over_dt.
    leaves = jax.tree.leaves(eqx.filter_jit(eqx.filter_grad(loss))(kernel))
    assert leaves and all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert any(np.any(np.asarray(g) != 0) for g in leaves)


@pytest.mark.parametrize("name", ["matern72", "periodic", "squared_exponential", "product"])
def test_gradient_matches_finite_differences(name):
    kernel = all_kernels()[name]
    leaf = kernel.kernels[0].lengthscale if name == "product" else kernel.lengthscale

    def loss(log_lengthscale):
        where = (
            (lambda k: k.kernels[0].lengthscale) if name == "product" else (lambda k: k.lengthscale)
        )
        k = eqx.tree_at(lambda k: where(k).unconstrained, kernel, log_lengthscale)
        A, Q = k.discretise(0.37)
        return jnp.sum(A * jnp.arange(A.size).reshape(A.shape)) + jnp.sum(Q**2)

    u = leaf.unconstrained
    grad = jax.grad(loss)(u)
    h = 1e-6
    fd = (loss(u + h) - loss(u - h)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_float32_in_float32_out(name):
    k32, k64 = all_kernels(np.float32)[name], all_kernels()[name]
    dt = np.float32(0.4)
    # Compiled, for speed; the dtype rules are the same as when run eagerly.
    compiled = eqx.filter_jit(outputs)
    out32, out64 = compiled(k32, dt), compiled(k64, 0.4)
    for a, b in zip(out32, out64, strict=True):
        assert a.dtype == np.float32
        scale = max(1.0, float(jnp.max(jnp.abs(b))))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
    # A Python float step keeps float32.
    assert eqx.filter_jit(lambda k: k.discretise(0.4))(k32)[0].dtype == np.float32
    grads = eqx.filter_jit(eqx.filter_grad(lambda k: jnp.sum(k.discretise(dt)[1])))(k32)
    for g in jax.tree.leaves(grads):
        assert g.dtype == np.float32 and np.all(np.isfinite(np.asarray(g)))
