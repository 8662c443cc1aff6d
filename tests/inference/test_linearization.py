"""Linearization rules: unit points, statistical linear regression against closed forms, singular
factors, distribution moments and bad input."""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayesssm as bs
from bayesssm.inference._gaussian_moments import distribution_moments
from bayesssm.inference._linearization import linearize

RULES = [bs.Unscented(), bs.Cubature(), bs.GaussHermite(3), bs.Unscented(alpha=0.5, beta=2.0)]


@pytest.mark.parametrize("rule", RULES, ids=["ut", "cubature", "gh3", "ut-negative"])
@pytest.mark.parametrize("dim", [1, 3])
def test_unit_points_have_zero_mean_and_unit_covariance(rule, dim):
    eps, wm, wc = (np.asarray(a) for a in rule.unit_points(dim, jnp.float64))
    np.testing.assert_allclose(wm.sum(), 1.0, atol=1e-14)
    np.testing.assert_allclose(wm @ eps, 0.0, atol=1e-14)
    np.testing.assert_allclose((wc[:, None] * eps).T @ eps, np.eye(dim), atol=1e-13)


def _square(x):
    return x**2, jnp.full((1, 1), 0.5, x.dtype)


@pytest.mark.parametrize("rule", [bs.GaussHermite(3), bs.Unscented()], ids=["gh3", "ut"])
def test_slr_of_a_square_is_exact_for_rules_exact_to_degree_four(rule):
    # x ~ N(m, P), y = x^2 + e, e ~ N(0, 0.25): E[y] = m^2 + P, A = 2m,
    # Omega = 0.25 + Var[x^2] - A^2 P = 0.25 + 2 P^2. GH(3) and the default 1-D unscented rule
    # (D + kappa = 3) integrate degree-4 polynomials exactly.
    m, P = 0.7, 0.3
    A, b, chol = linearize(rule, _square, jnp.array([m]), jnp.array([[np.sqrt(P)]]))
    np.testing.assert_allclose(A[0, 0], 2 * m, rtol=1e-12)
    np.testing.assert_allclose(b[0] + A[0, 0] * m, m**2 + P, rtol=1e-12)
    np.testing.assert_allclose(chol[0, 0] ** 2, 0.25 + 2 * P**2, rtol=1e-12)


def test_negative_weights_give_the_dense_slr():
    rule = bs.Unscented(alpha=0.5, beta=2.0)  # centre weight 1 - 4 < 0 for D = 2
    assert float(rule.unit_points(2, jnp.float64)[1][0]) < 0

    def fn(x):
        return jnp.stack([jnp.sin(x[0]) * x[1], x[0] ** 2]), jnp.diag(jnp.array([0.2, 0.1]))

    mean, chol = jnp.array([0.3, -0.5]), jnp.array([[0.4, 0.0], [0.1, 0.3]])
    A, b, noise = linearize(rule, fn, mean, chol)
    eps, wm, wc = (np.asarray(a) for a in rule.unit_points(2, jnp.float64))
    pts = np.asarray(mean) + eps @ np.asarray(chol).T
    mus = np.stack([np.asarray(fn(jnp.asarray(p))[0]) for p in pts])
    mbar = wm @ mus
    C = (wc[:, None] * (mus - mbar)).T @ (pts - np.asarray(mean))
    P = np.asarray(chol @ chol.T)
    A_ref = C @ np.linalg.inv(P)
    Om = (wc[:, None] * (mus - mbar)).T @ (mus - mbar) + np.diag([0.04, 0.01]) - A_ref @ P @ A_ref.T
    np.testing.assert_allclose(A, A_ref, rtol=1e-10, atol=1e-14)  # an exact-zero entry
    np.testing.assert_allclose(b, mbar - A_ref @ np.asarray(mean), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(noise @ noise.T, Om, rtol=1e-10, atol=1e-14)


SINGULAR = {
    "zero-column": jnp.array([[1.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.2, 0.0, 0.7]]),
    "zero-pivots": jnp.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
    "zero": jnp.zeros((3, 3)),
}


@pytest.mark.parametrize("rule", [bs.Extended(), *RULES[:3]], ids=["ekf", "ut", "cub", "gh"])
@pytest.mark.parametrize("name", list(SINGULAR))
def test_singular_factors_are_exact_for_linear_maps_and_finite(rule, name):
    chol = SINGULAR[name]
    F = jnp.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.1], [0.2, 0.0, 0.9]])
    Lq = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.1, 0.0]])  # singular noise

    def fn(x):
        return F @ x + 1.0, Lq

    mean = jnp.array([0.1, 0.2, 0.3])
    A, b, noise = linearize(rule, fn, mean, chol)
    # exact on the range of chol, where x - mean lives; noise exact
    np.testing.assert_allclose(A @ chol, F @ chol, atol=1e-13)
    np.testing.assert_allclose(A @ mean + b, F @ mean + 1.0, atol=1e-13)
    np.testing.assert_allclose(noise @ noise.T, Lq @ Lq.T, atol=1e-13)
    grad = jax.grad(lambda m: jnp.sum(linearize(rule, fn, m, chol).chol ** 2))(mean)
    assert np.all(np.isfinite(grad))


def test_extended_takes_the_distributions_own_factor():
    cov = jnp.array([[1.0, 1.0], [1.0, 1.0]])  # singular
    for dist in (
        distrax.MultivariateNormalFullCovariance(jnp.zeros(2), cov),
        distrax.MultivariateNormalTri(jnp.zeros(2), jnp.array([[1.0, 0.0], [1.0, 0.0]])),
    ):
        mean, chol = distribution_moments(dist)
        assert np.all(np.isfinite(chol))
        np.testing.assert_allclose(chol @ chol.T, cov, atol=1e-12)


def test_moments_of_supported_distributions():
    from tensorflow_probability.substrates import jax as tfp

    eta = jnp.array([0.2, -1.0])
    m, s = distribution_moments(bs.distributions.Poisson(eta))
    np.testing.assert_allclose(m, jnp.exp(eta))
    np.testing.assert_allclose(s @ s.T, jnp.diag(jnp.exp(eta)))
    m, s = distribution_moments(distrax.Bernoulli(probs=jnp.array(0.3)))
    np.testing.assert_allclose([m[0], s[0, 0] ** 2], [0.3, 0.21])
    m, s = distribution_moments(tfp.distributions.StudentT(df=5.0, loc=1.0, scale=2.0))
    np.testing.assert_allclose([m[0], s[0, 0] ** 2], [1.0, 4.0 * 5 / 3])
    indep = distrax.Independent(distrax.Normal(jnp.zeros(3), jnp.arange(1.0, 4.0)), 1)
    m, s = distribution_moments(indep)
    np.testing.assert_allclose(s, jnp.diag(jnp.arange(1.0, 4.0)))
    m, s = distribution_moments(distrax.MultivariateNormalDiag(jnp.ones(2), jnp.array([2.0, 3.0])))
    np.testing.assert_allclose(s, jnp.diag(jnp.array([2.0, 3.0])))


def test_unsupported_distribution_names_its_type():
    with pytest.raises(TypeError, match="Categorical"):
        distribution_moments(distrax.Categorical(probs=jnp.array([0.3, 0.7])))


def test_scalar_state_model_is_linearized_as_d_equals_one():
    from bayesssm.inference._linearization import linearize_transition

    model = bs.models.NonlinearGrowth()
    step = bs.StepInputs(index=jnp.asarray(0))
    A, b, chol = linearize_transition(bs.Extended(), model, jnp.array([2.0]), jnp.eye(1), step)
    slope = jax.grad(lambda x: model.transition_mean(x, 0))(2.0)
    np.testing.assert_allclose(A, [[slope]], rtol=1e-12)
    np.testing.assert_allclose(chol, [[np.sqrt(10.0)]], rtol=1e-12)


def test_bad_rules():
    with pytest.raises(ValueError, match="order"):
        bs.GaussHermite(order=0)
    with pytest.raises(ValueError, match="alpha"):
        bs.Unscented(alpha=0.0)
    with pytest.raises(ValueError, match="kappa"):
        bs.Unscented(kappa=-5.0).unit_points(2, jnp.float64)
