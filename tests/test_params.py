"""`bs.Covariance` (a covariance stored as an unconstrained Cholesky factor) and `bs.unwrap`.

Expected values are built here with numpy (products, eigenvalues), never read off the library.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayesssm as bs


def random_spd(rng, n: int) -> np.ndarray:
    W = rng.normal(size=(n, n))
    return W @ W.T + 0.1 * np.eye(n)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_from_matrix_round_trips_spd(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        S = random_spd(rng, n)
        cov = bs.Covariance.from_matrix(S)
        assert cov.unconstrained.shape == (n, n)
        np.testing.assert_allclose(np.asarray(cov.value()), S, rtol=0, atol=1e-12 * np.abs(S).max())
        # The factor is lower-triangular with a positive diagonal and reproduces S.
        L = np.asarray(cov.cholesky)
        np.testing.assert_array_equal(np.triu(L, 1), 0.0)
        assert np.all(np.diag(L) > 0)
        np.testing.assert_allclose(L, np.linalg.cholesky(S), rtol=0, atol=1e-12)


def test_from_cholesky_round_trips():
    rng = np.random.default_rng(0)
    L = np.tril(rng.normal(size=(4, 4)), -1) + np.diag(rng.uniform(0.5, 2.0, size=4))
    cov = bs.Covariance.from_cholesky(L)
    np.testing.assert_allclose(np.asarray(cov.cholesky), L, rtol=1e-14, atol=0)
    np.testing.assert_allclose(np.asarray(cov.value()), L @ L.T, rtol=1e-13, atol=1e-13)
    # Diagonal of `unconstrained` is log L_ii, its strict lower triangle is L's.
    u = np.asarray(cov.unconstrained)
    np.testing.assert_allclose(np.diag(u), np.log(np.diag(L)), rtol=1e-14)
    np.testing.assert_array_equal(np.tril(u, -1), np.tril(L, -1))


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_from_matrix_round_trips_singular_psd(rank):
    rng = np.random.default_rng(10 + rank)
    n = 4
    for _ in range(5):
        V = rng.normal(size=(n, rank))
        S = V @ V.T  # PSD with rank `rank` (all zeros for rank 0)
        cov = bs.Covariance.from_matrix(S)
        u = np.asarray(cov.unconstrained)
        assert np.all(np.isfinite(u)), u
        value = np.asarray(cov.value())
        assert np.all(np.isfinite(value))
        np.testing.assert_allclose(value, S, rtol=0, atol=1e-12 * max(1.0, np.abs(S).max()))


def test_from_matrix_singular_diagonal():
    S = np.diag([2.0, 0.0, 3.0])
    cov = bs.Covariance.from_matrix(S)
    assert np.all(np.isfinite(np.asarray(cov.unconstrained)))
    np.testing.assert_allclose(np.asarray(cov.value()), S, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_any_unconstrained_gives_symmetric_psd(scale):
    rng = np.random.default_rng(3)
    n = 4
    for _ in range(20):
        u = scale * rng.normal(size=(n, n))  # the upper triangle is arbitrary too
        value = np.asarray(bs.Covariance(jnp.asarray(u)).value())
        assert np.all(np.isfinite(value))
        np.testing.assert_array_equal(value, value.T)
        # Expected from the documented parametrisation, built with numpy.
        L = np.tril(u, -1) + np.diag(np.exp(np.diag(u)))
        np.testing.assert_allclose(value, L @ L.T, rtol=1e-12, atol=0)
        eig = np.linalg.eigvalsh(value)
        assert eig.min() >= -1e-12 * np.abs(eig).max()


def test_upper_triangle_of_unconstrained_is_ignored():
    rng = np.random.default_rng(4)
    u = rng.normal(size=(3, 3))
    other = u + np.triu(rng.normal(size=(3, 3)), 1)
    np.testing.assert_array_equal(
        np.asarray(bs.Covariance(jnp.asarray(u)).value()),
        np.asarray(bs.Covariance(jnp.asarray(other)).value()),
    )


def test_time_batched_covariance():
    rng = np.random.default_rng(5)
    T, n = 6, 3
    S = np.stack([random_spd(rng, n) for _ in range(T)])
    S[2] = np.diag([1.0, 0.0, 0.5])  # one singular member of the batch
    cov = bs.Covariance.from_matrix(S)
    assert cov.unconstrained.shape == (T, n, n)
    assert np.all(np.isfinite(np.asarray(cov.unconstrained)))
    np.testing.assert_allclose(np.asarray(cov.value()), S, rtol=0, atol=1e-12 * np.abs(S).max())
    for t in range(T):
        single = bs.Covariance.from_matrix(S[t]).value()
        np.testing.assert_allclose(np.asarray(cov.value()[t]), np.asarray(single), atol=1e-12)


def test_time_batched_covariance_in_a_model():
    """A (T, D, D) Covariance for Q with every member equal gives the time-invariant filter;
    with one member changed, the filter changes from that step on only."""
    rng = np.random.default_rng(6)
    T, D, M = 7, 2, 1
    A = np.array([[0.9, 0.2], [0.0, 0.7]])
    Q = random_spd(rng, D)
    H = rng.normal(size=(M, D))
    R = np.eye(M)
    y = rng.normal(size=(T, M))
    kwargs = dict(A=A, H=H, R=R, m0=np.zeros(D), P0=np.eye(D))
    fixed = bs.LinearGaussianSSM(Q=Q, **kwargs)
    stacked = bs.LinearGaussianSSM(Q=bs.Covariance.from_matrix(np.stack([Q] * T)), **kwargs)
    f_fixed = bs.filter(fixed, y, engine=bs.Kalman(parallel=False))
    f_stacked = bs.filter(stacked, y, engine=bs.Kalman(parallel=False))
    np.testing.assert_allclose(np.asarray(f_stacked.means), np.asarray(f_fixed.means), atol=1e-12)
    np.testing.assert_allclose(np.asarray(f_stacked.covs), np.asarray(f_fixed.covs), atol=1e-12)

    Qs = np.stack([Q] * T)
    Qs[3] = 10.0 * Q  # Q_3 is the move out of step 3: steps 0..3 are unchanged, 4.. change
    changed = bs.LinearGaussianSSM(Q=bs.Covariance.from_matrix(Qs), **kwargs)
    f_changed = bs.filter(changed, y, engine=bs.Kalman(parallel=False))
    np.testing.assert_allclose(
        np.asarray(f_changed.covs[:4]), np.asarray(f_fixed.covs[:4]), atol=1e-12
    )
    assert not np.allclose(np.asarray(f_changed.covs[4]), np.asarray(f_fixed.covs[4]))


def test_unwrap_replaces_covariances_and_keeps_other_leaves():
    rng = np.random.default_rng(7)
    Q, R, P0 = random_spd(rng, 2), random_spd(rng, 1), random_spd(rng, 2)
    A = np.array([[0.5, 0.1], [0.0, 0.3]])
    H = np.array([[1.0, -1.0]])
    model = bs.LinearGaussianSSM(A=A, Q=Q, H=H, R=R, m0=np.ones(2), P0=P0)
    assert isinstance(model.Q, bs.Covariance)
    plain = bs.unwrap(model)
    assert type(plain) is type(model)
    for name, expected in (("Q", Q), ("R", R), ("P0", P0)):
        leaf = getattr(plain, name)
        assert isinstance(leaf, jax.Array) and not isinstance(leaf, bs.Covariance), name
        np.testing.assert_allclose(np.asarray(leaf), expected, rtol=1e-12, atol=1e-12)
    # Other leaves are untouched (the very same objects), and None stays None.
    assert plain.A is model.A and plain.H is model.H and plain.m0 is model.m0
    assert plain.B is None and plain.D is None
    # The original model still holds Covariance leaves.
    assert isinstance(model.Q, bs.Covariance)

    cov = bs.Covariance.from_matrix(Q)
    x = jnp.arange(3.0)
    tree = {"cov": cov, "x": x, "nested": [cov, None, 2.5]}
    out = bs.unwrap(tree)
    np.testing.assert_allclose(np.asarray(out["cov"]), Q, atol=1e-12)
    np.testing.assert_allclose(np.asarray(out["nested"][0]), Q, atol=1e-12)
    assert out["x"] is x
    assert out["nested"][1] is None and out["nested"][2] == 2.5
    # A bare Covariance unwraps to its value; a tree without one is returned as is.
    np.testing.assert_allclose(np.asarray(bs.unwrap(cov)), Q, atol=1e-12)
    assert bs.unwrap({"x": x})["x"] is x


def test_covariance_keeps_float32():
    S = np.array([[2.0, 0.5], [0.5, 1.0]], dtype=np.float32)
    cov = bs.Covariance.from_matrix(jnp.asarray(S, dtype=jnp.float32))
    assert cov.unconstrained.dtype == jnp.float32
    assert cov.value().dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(cov.value()), S, rtol=1e-6)
    singular = bs.Covariance.from_matrix(jnp.zeros((2, 2), jnp.float32))
    assert np.all(np.isfinite(np.asarray(singular.unconstrained)))
    np.testing.assert_array_equal(np.asarray(singular.value()), 0.0)


def test_covariance_gradient_is_finite():
    """d value / d unconstrained exists everywhere (it is a smooth map)."""
    rng = np.random.default_rng(8)
    u = jnp.asarray(rng.normal(size=(3, 3)))
    w = jnp.asarray(rng.normal(size=(3, 3)))
    g = jax.grad(lambda u: jnp.sum(w * bs.Covariance(u).value()))(u)
    assert np.all(np.isfinite(np.asarray(g)))
    # Finite-difference check of one diagonal and one off-diagonal entry.
    for i, j in ((1, 1), (2, 0)):
        e = np.zeros((3, 3))
        e[i, j] = 1e-6
        f = lambda v: float(jnp.sum(w * bs.Covariance(jnp.asarray(v)).value()))  # noqa: E731
        fd = (f(np.asarray(u) + e) - f(np.asarray(u) - e)) / 2e-6
        np.testing.assert_allclose(float(g[i, j]), fd, rtol=1e-6)
