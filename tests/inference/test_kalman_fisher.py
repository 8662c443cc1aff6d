"""Kalman(gradient="fisher"): derivatives by Fisher's identity equal those of reverse/forward
mode through the filter's recursion (an independent computation) to rounding."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayesssm as bs

D, M, T, U = 3, 2, 120, 2


def random_model(rng, time_varying=False, controls=False):
    def stable():
        return 0.9 * np.linalg.qr(rng.normal(size=(D, D)))[0]

    def covariance(n):
        L = rng.normal(size=(n, n))
        return 0.2 * L @ L.T + 0.1 * np.eye(n)

    A = np.stack([stable() for _ in range(T)]) if time_varying else stable()
    R = np.stack([covariance(M) for _ in range(T)]) if time_varying else covariance(M)
    return bs.LinearGaussianSSM(
        A=A,
        Q=covariance(D),
        H=rng.normal(size=(M, D)),
        R=R,
        m0=rng.normal(size=D),
        P0=covariance(D),
        b=0.1 * rng.normal(size=D),
        d=rng.normal(size=M),
        B=rng.normal(size=(D, U)) if controls else None,
        D=rng.normal(size=(M, U)) if controls else None,
    )


def data(rng, model, inputs=None, complete=False):
    y = np.array(model.sample(jax.random.key(0), T, inputs=inputs)[1])
    if complete:
        return y
    y[rng.random(y.shape) < 0.2] = np.nan
    y[40:44] = np.nan
    return y


def grads(model, y, gradient, parallel=False, inputs=None):
    engine = bs.Kalman(gradient=gradient, parallel=parallel)
    return eqx.filter_grad(lambda m: bs.log_marginal(m, y, engine=engine, inputs=inputs))(model)


def assert_trees_close(a, b, rtol=1e-8):
    for x, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        scale = np.max(np.abs(z)) + 1e-300
        np.testing.assert_allclose(x, z, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize(
    "case, parallel",
    [
        ("invariant", False),
        ("complete", False),
        ("time_varying", False),
        ("controls", False),
        ("invariant", True),
    ],
)
def test_parameter_gradients_match_the_recursion(case, parallel):
    # "complete" (no missing entries) takes the summed form of the expected log-joint for
    # time-invariant models with no per-step rows at all.
    rng = np.random.default_rng(1)
    model = random_model(rng, time_varying=case == "time_varying", controls=case == "controls")
    inputs = rng.normal(size=(T, U)) if case == "controls" else None
    y = data(rng, model, inputs, complete=case == "complete")
    # The reference is always the sequential recursion: the same function, differentiated
    # independently (and far cheaper to compile than the parallel one).
    assert_trees_close(
        grads(model, y, "fisher", parallel, inputs), grads(model, y, "autodiff", False, inputs)
    )


def test_values_are_unchanged():
    rng = np.random.default_rng(2)
    model = random_model(rng)
    y = data(rng, model)
    assert bs.log_marginal(model, y, engine=bs.Kalman(gradient="fisher")) == bs.log_marginal(
        model, y
    )


def test_gradient_with_respect_to_the_data():
    rng = np.random.default_rng(3)
    model = random_model(rng)
    y = jnp.asarray(model.sample(jax.random.key(1), T)[1])

    def score(gradient):
        engine = bs.Kalman(gradient=gradient)
        return jax.grad(lambda y: bs.log_marginal(model, y, engine=engine))(y)

    assert_trees_close(score("fisher"), score("autodiff"))


def test_second_derivatives_and_forward_mode():
    rng = np.random.default_rng(4)
    model = random_model(rng)
    y = data(rng, model)[:30]  # short: forward-over-reverse through the recursion compiles slowly

    def hessian_of_A(gradient):
        engine = bs.Kalman(gradient=gradient)

        def f(A):
            return bs.log_marginal(eqx.tree_at(lambda m: m.A, model, A), y, engine=engine)

        return jax.hessian(f)(model.A), jax.jacfwd(f)(model.A)

    (h_fisher, j_fisher), (h_auto, j_auto) = hessian_of_A("fisher"), hessian_of_A("autodiff")
    assert_trees_close(j_fisher, j_auto)
    assert_trees_close(h_fisher, h_auto, rtol=1e-7)


def test_bad_setting():
    with pytest.raises(ValueError, match="gradient"):
        bs.log_marginal(
            random_model(np.random.default_rng(0)),
            np.zeros((T, M)),
            engine=bs.Kalman(gradient="numerical"),
        )
