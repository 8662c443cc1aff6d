"""Kalman(gradient="adjoint"), the default for time-varying models on the sequential path: the
covariance-form filter's log-likelihood equals the dense joint Gaussian (tests/reference), and its
adjoint derivatives (first and second order, reverse and forward) equal those of the square-root
recursion differentiated by JAX, an independent computation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import dense_gaussian as dense

import bayesssm as bs

D, T, U = 3, 40, 2
ADJOINT, AUTODIFF = bs.Kalman(gradient="adjoint"), bs.Kalman(gradient="autodiff")


def random_model(rng, M, controls=False, singular_Q=False, steps=T):
    """Every array time-varying; M = 1 takes the scalar update, M > 1 the factorised one."""

    def covariance(n):
        L = rng.normal(size=(n, n))
        return 0.2 * L @ L.T + 0.1 * np.eye(n)

    Q = np.stack([covariance(D) for _ in range(steps)])
    if singular_Q:  # deterministic in one direction, as a GP's periodic part is
        Q[:, 0, :] = Q[:, :, 0] = 0.0
    return bs.LinearGaussianSSM(
        A=np.stack([0.9 * np.linalg.qr(rng.normal(size=(D, D)))[0] for _ in range(steps)]),
        Q=Q,
        H=rng.normal(size=(steps, M, D)),
        R=np.stack([covariance(M) for _ in range(steps)]),
        m0=rng.normal(size=D),
        P0=covariance(D),
        b=0.1 * rng.normal(size=(steps, D)),
        d=rng.normal(size=(steps, M)),
        B=rng.normal(size=(D, U)) if controls else None,
        D=rng.normal(size=(M, U)) if controls else None,
    )


def observations(rng, model, inputs=None, steps=T):
    y = np.array(model.sample(jax.random.key(0), steps, inputs=inputs)[1])
    y[rng.random(y.shape) < 0.2] = np.nan  # single entries
    y[10:13] = np.nan  # whole rows
    y[-1] = np.nan  # the last row
    return y


def dense_arrays(model, controls=None) -> dict:
    plain = bs.unwrap(model)
    names = ["A", "Q", "H", "R", "m0", "P0", "b", "d", "B", "D"]
    arrays = {n: np.asarray(getattr(plain, n)) for n in names if getattr(plain, n) is not None}
    return arrays | ({} if controls is None else {"inputs": controls})


def assert_trees_close(a, b, rtol=1e-8):
    for x, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        scale = np.max(np.abs(z)) + 1e-300
        np.testing.assert_allclose(x, z, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("M, controls", [(1, False), (2, False), (1, True)])
def test_value_equals_the_dense_gaussian(M, controls):
    rng = np.random.default_rng(M)
    model = random_model(rng, M, controls=controls)
    inputs = rng.normal(size=(T, U)) if controls else None
    y = observations(rng, model, inputs)
    expected = dense.smooth(y, **dense_arrays(model, inputs)).log_likelihood
    value = bs.log_marginal(model, y, engine=ADJOINT, inputs=inputs)
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    assert bs.log_marginal(model, y, inputs=inputs) == value  # the default on this path


@pytest.mark.parametrize("M, singular_Q", [(1, False), (2, False), (1, True)])
def test_gradients_equal_reverse_mode_through_the_recursion(M, singular_Q):
    rng = np.random.default_rng(10 + M)
    model = random_model(rng, M, singular_Q=singular_Q)
    y = observations(rng, model)

    def grads(engine):
        return eqx.filter_grad(lambda m: bs.log_marginal(m, y, engine=engine))(model)

    assert_trees_close(grads(ADJOINT), grads(AUTODIFF))


@pytest.mark.parametrize("M", [1, 2])
def test_gradient_with_respect_to_the_data(M):
    rng = np.random.default_rng(20 + M)
    model = random_model(rng, M)
    y = jnp.asarray(observations(rng, model))

    def score(engine):
        return jax.grad(lambda y: bs.log_marginal(model, y, engine=engine))(y)

    assert_trees_close(score(ADJOINT), score(AUTODIFF))


def test_second_derivatives_and_forward_mode():
    rng = np.random.default_rng(30)
    model = random_model(rng, 1, steps=15)
    y = observations(rng, model, steps=15)

    def derivatives(engine):
        def f(scale):  # scale the transition and the noise, as a GP's hyperparameters do
            moved = eqx.tree_at(lambda m: m.A, model, model.A * scale[0])
            return bs.log_marginal(moved, y, engine=engine) * scale[1]

        point = jnp.array([1.1, 0.9])
        return jax.hessian(f)(point), jax.jacfwd(f)(point), jax.jvp(f, (point,), (point,))[1]

    for ours, reference in zip(derivatives(ADJOINT), derivatives(AUTODIFF), strict=True):
        assert_trees_close(ours, reference, rtol=1e-7)


def test_a_gaussian_process_on_irregular_times():
    """The GP state-space model's hyperparameter gradient, with a singular Q (the periodic
    part adds no noise) and a large gap."""
    rng = np.random.default_rng(40)
    times = np.cumsum(rng.exponential(0.3, size=80))
    times[50:] += 300.0
    y = np.sin(times) + 0.1 * rng.normal(size=80)
    y[rng.random(80) < 0.2] = np.nan
    series = bs.TimeSeries(times, y)
    kernel = bs.kernels.Matern32(1.0, 2.0) + bs.kernels.Periodic(0.5, 1.0, 6.0, order=3)
    model = bs.GPStateSpace(kernel, 0.05)

    def grads(engine):
        return eqx.filter_value_and_grad(lambda m: bs.log_marginal(m, series, engine=engine))(model)

    (value, gradient), (expected, reference) = grads(ADJOINT), grads(AUTODIFF)
    np.testing.assert_allclose(value, expected, rtol=1e-11)
    assert_trees_close(gradient, reference)


def test_single_step_and_batches():
    rng = np.random.default_rng(50)
    one = random_model(rng, 2, steps=1)
    single = np.array(one.sample(jax.random.key(1), 1)[1])
    single[0, 1] = np.nan
    np.testing.assert_allclose(
        bs.log_marginal(one, single, engine=ADJOINT),
        dense.smooth(single, **dense_arrays(one)).log_likelihood,
        rtol=1e-10,
    )
    model = random_model(rng, 2)
    y = observations(rng, model)
    batch = jnp.stack([jnp.asarray(y), jnp.asarray(observations(rng, model))])
    values = jax.vmap(lambda y: bs.log_marginal(model, y, engine=ADJOINT))(batch)
    for value, y_i in zip(values, batch, strict=True):
        np.testing.assert_allclose(value, bs.log_marginal(model, y_i, engine=AUTODIFF), rtol=1e-10)
    grads = jax.vmap(eqx.filter_grad(lambda m, y: bs.log_marginal(m, y, engine=ADJOINT)), (None, 0))
    assert jax.tree.leaves(grads(model, batch))[0].shape[0] == 2


def test_float32():
    rng = np.random.default_rng(60)
    model64 = random_model(rng, 1)
    y = observations(rng, model64)
    model32 = jax.tree.map(
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, model64
    )
    value = bs.log_marginal(model32, y.astype(np.float32), engine=ADJOINT)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, bs.log_marginal(model64, y), rtol=1e-4)
