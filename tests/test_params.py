"""Constrained leaves (`bs.Covariance`, `bs.Positive`, `bs.Correlation`, `bs.Simplex`,
`bs.Stable`) and `bs.unwrap`.

Expected values are built here with numpy (products, eigenvalues, singular values) or by
`jax.jacfwd` and quadrature, never read off the library.
"""

from __future__ import annotations

import re

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.distributions import constraints
from scipy import integrate

import bayesssm as bs


def random_spd(rng, n: int) -> np.ndarray:
    W = rng.normal(size=(n, n))
    return W @ W.T + 0.1 * np.eye(n)


def tri(n: int) -> int:
    return n * (n + 1) // 2


def packed_cholesky(u: np.ndarray, n: int) -> np.ndarray:
    """The documented parametrisation, in numpy: lower triangle row by row, log on the diagonal."""
    L = np.zeros(u.shape[:-1] + (n, n))
    rows, cols = np.tril_indices(n)
    L[..., rows, cols] = u
    idx = np.arange(n)
    L[..., idx, idx] = np.exp(L[..., idx, idx])
    return L


# -- Covariance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5])
def test_from_matrix_round_trips_spd(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        S = random_spd(rng, n)
        cov = bs.Covariance.from_matrix(S)
        assert cov.unconstrained.shape == (tri(n),)
        assert cov.shape == (n, n)
        np.testing.assert_allclose(np.asarray(cov.value()), S, rtol=0, atol=1e-12 * np.abs(S).max())
        # The factor is lower-triangular with a positive diagonal and reproduces S.
        L = np.asarray(cov.cholesky)
        np.testing.assert_array_equal(np.triu(L, 1), 0.0)
        assert np.all(np.diag(L) > 0)
        np.testing.assert_allclose(L, np.linalg.cholesky(S), rtol=0, atol=1e-12)


def test_from_cholesky_round_trips():
    rng = np.random.default_rng(0)
    n = 4
    L = np.tril(rng.normal(size=(n, n)), -1) + np.diag(rng.uniform(0.5, 2.0, size=n))
    cov = bs.Covariance.from_cholesky(L)
    np.testing.assert_allclose(np.asarray(cov.cholesky), L, rtol=1e-14, atol=0)
    np.testing.assert_allclose(np.asarray(cov.value()), L @ L.T, rtol=1e-13, atol=1e-13)
    # `unconstrained` is L's lower triangle row by row, with log L_ii on the diagonal.
    u = np.asarray(cov.unconstrained)
    expected = L.copy()
    expected[np.diag_indices(n)] = np.log(np.diag(L))
    np.testing.assert_allclose(u, expected[np.tril_indices(n)], rtol=1e-14)


def test_from_cholesky_flips_negative_pivots():
    """A factor with a negative pivot is still a factor of L L^T once its column is negated."""
    rng = np.random.default_rng(1)
    L = np.tril(rng.normal(size=(3, 3)), -1) + np.diag([1.5, -0.7, 0.9])
    cov = bs.Covariance.from_cholesky(L)
    np.testing.assert_allclose(np.asarray(cov.value()), L @ L.T, rtol=1e-13, atol=1e-13)
    assert np.all(np.diag(np.asarray(cov.cholesky)) > 0)


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_from_matrix_round_trips_singular_psd(rank):
    rng = np.random.default_rng(10 + rank)
    n = 4
    for _ in range(5):
        V = rng.normal(size=(n, rank))
        S = V @ V.T  # PSD with rank `rank` (all zeros for rank 0)
        for cov in (bs.Covariance.from_matrix(S), bs.Covariance.from_value(S)):
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
    assert np.isfinite(float(cov.log_abs_det_jacobian()))


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_any_unconstrained_gives_symmetric_psd(scale):
    rng = np.random.default_rng(3)
    n = 4
    for _ in range(20):
        u = scale * rng.normal(size=tri(n))
        value = np.asarray(bs.Covariance(jnp.asarray(u)).value())
        assert np.all(np.isfinite(value))
        np.testing.assert_array_equal(value, value.T)
        L = packed_cholesky(u, n)
        np.testing.assert_allclose(value, L @ L.T, rtol=1e-12, atol=0)
        eig = np.linalg.eigvalsh(value)
        assert eig.min() >= -1e-12 * np.abs(eig).max()


def test_covariance_storage_length_is_checked():
    with pytest.raises(ValueError, match=r"n\(n\+1\)/2"):
        _ = bs.Covariance(jnp.zeros(4)).shape
    # A model names the argument that holds the bad leaf.
    kwargs = dict(A=np.eye(2), H=np.ones((1, 2)), R=np.eye(1), m0=np.zeros(2), P0=np.eye(2))
    with pytest.raises(ValueError, match=r"\bQ\b"):
        bs.LinearGaussianSSM(Q=bs.Covariance(jnp.zeros(4)), **kwargs)
    # A valid packed vector of the wrong size is refused with the expected shape.
    with pytest.raises(ValueError, match=r"\bQ\b.*\(2, 2\)"):
        bs.LinearGaussianSSM(Q=bs.Covariance(jnp.zeros(6)), **kwargs)


def test_time_batched_covariance():
    rng = np.random.default_rng(5)
    T, n = 6, 3
    S = np.stack([random_spd(rng, n) for _ in range(T)])
    S[2] = np.diag([1.0, 0.0, 0.5])  # one singular member of the batch
    cov = bs.Covariance.from_matrix(S)
    assert cov.unconstrained.shape == (T, tri(n))
    assert cov.shape == (T, n, n) and cov.batch_shape == (T,) and cov.ndim == 3
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
    assert fixed.time_invariant_factors and fixed.num_timesteps is None
    assert not stacked.time_invariant_factors and stacked.num_timesteps == T
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


def test_unwrap_handles_every_leaf_kind():
    p = np.array([0.2, 0.8])
    tree = {
        "sigma": bs.Positive.from_value(2.5),
        "probs": bs.Simplex.from_value(p),
        "corr": bs.Correlation.from_value(np.array([[1.0, -0.4], [-0.4, 1.0]])),
        "A": bs.Stable.from_value(np.array([[0.3, 0.1], [0.0, -0.2]])),
    }
    out = bs.unwrap(tree)
    np.testing.assert_allclose(float(out["sigma"]), 2.5, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(out["probs"]), p, atol=1e-14)
    np.testing.assert_allclose(np.asarray(out["corr"])[1, 0], -0.4, atol=1e-14)
    np.testing.assert_allclose(np.asarray(out["A"]), [[0.3, 0.1], [0.0, -0.2]], atol=1e-14)


def test_covariance_keeps_float32():
    S = np.array([[2.0, 0.5], [0.5, 1.0]], dtype=np.float32)
    cov = bs.Covariance.from_matrix(jnp.asarray(S, dtype=jnp.float32))
    assert cov.unconstrained.dtype == jnp.float32
    assert cov.value().dtype == jnp.float32
    assert cov.log_abs_det_jacobian().dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(cov.value()), S, rtol=1e-6)
    singular = bs.Covariance.from_matrix(jnp.zeros((2, 2), jnp.float32))
    assert np.all(np.isfinite(np.asarray(singular.unconstrained)))
    np.testing.assert_array_equal(np.asarray(singular.value()), 0.0)


def test_covariance_gradient_is_finite():
    """d value / d unconstrained exists everywhere (it is a smooth map)."""
    rng = np.random.default_rng(8)
    u = jnp.asarray(rng.normal(size=6))
    w = jnp.asarray(rng.normal(size=(3, 3)))
    g = jax.grad(lambda u: jnp.sum(w * bs.Covariance(u).value()))(u)
    assert np.all(np.isfinite(np.asarray(g)))
    # Finite-difference check of one diagonal (position 2 = entry (1, 1)) and one off-diagonal
    # (position 3 = entry (2, 0)) coordinate.
    for k in (2, 3):
        e = np.zeros(6)
        e[k] = 1e-6
        f = lambda v: float(jnp.sum(w * bs.Covariance(jnp.asarray(v)).value()))  # noqa: E731
        fd = (f(np.asarray(u) + e) - f(np.asarray(u) - e)) / 2e-6
        np.testing.assert_allclose(float(g[k]), fd, rtol=1e-6)


def test_psd_cholesky_differentiates_at_repeated_eigenvalues():
    """A positive-definite matrix with repeated eigenvalues (as a periodic kernel's stationary
    covariance has) gets the plain Cholesky derivative, not the NaN of the unused eigen
    fallback; a singular one still gets a finite factor."""
    from bayesssm.params import psd_cholesky

    def loss(scale):
        factor = psd_cholesky(jnp.diag(jnp.array([1.0, 2.0, 2.0, 3.0, 3.0])) * scale)
        return jnp.sum(factor * jnp.arange(25.0).reshape(5, 5))

    # chol(scale D) = sqrt(scale) chol(D), so the derivative at 1 is loss(1) / 2.
    np.testing.assert_allclose(jax.grad(loss)(1.0), 0.5 * loss(1.0), rtol=1e-12)
    singular = psd_cholesky(jnp.diag(jnp.array([1.0, 0.0])))
    np.testing.assert_allclose(singular @ singular.T, np.diag([1.0, 0.0]), atol=1e-12)


def test_from_cholesky_and_from_value_reject_bad_input():
    with pytest.raises(ValueError, match=r"\bchol\b.*lower-triangular"):
        bs.Covariance.from_cholesky(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"\bchol\b.*square"):
        bs.Covariance.from_cholesky(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\bmatrix\b.*square"):
        bs.Covariance.from_matrix(np.ones(3))


# -- every leaf kind ----------------------------------------------------------------------------


def random_contraction(rng, n: int, batch=()) -> np.ndarray:
    U, _, Vt = np.linalg.svd(rng.normal(size=batch + (n, n)))
    sigma = rng.uniform(0.0, 0.99, size=batch + (n,))
    return (U * sigma[..., None, :]) @ Vt


def random_correlation(rng, n: int, batch=()) -> np.ndarray:
    W = rng.normal(size=batch + (n, n + 2))
    S = W @ np.swapaxes(W, -1, -2)
    d = 1.0 / np.sqrt(np.diagonal(S, axis1=-2, axis2=-1))
    C = S * d[..., :, None] * d[..., None, :]
    C[..., np.arange(n), np.arange(n)] = 1.0
    return C


def random_psd(rng, n: int, batch=()) -> np.ndarray:
    W = rng.normal(size=batch + (n, n))
    return W @ np.swapaxes(W, -1, -2) + 0.1 * np.eye(n)


# name: (class, event shape of `unconstrained`, random valid value, free coordinates)
N, K = 3, 4
KINDS = {
    "Positive": (
        bs.Positive,
        (),
        lambda rng, batch: rng.lognormal(sigma=2.0, size=batch),
        lambda v: v.reshape(-1),
    ),
    "Covariance": (
        bs.Covariance,
        (tri(N),),
        lambda rng, batch: random_psd(rng, N, batch),
        lambda v: v[..., np.tril_indices(N)[0], np.tril_indices(N)[1]].reshape(-1),
    ),
    "Correlation": (
        bs.Correlation,
        (N * (N - 1) // 2,),
        lambda rng, batch: random_correlation(rng, N, batch),
        lambda v: v[..., np.tril_indices(N, -1)[0], np.tril_indices(N, -1)[1]].reshape(-1),
    ),
    "Simplex": (
        bs.Simplex,
        (K - 1,),
        lambda rng, batch: rng.dirichlet(np.ones(K), size=batch),
        lambda v: v[..., :-1].reshape(-1),
    ),
    "Stable": (
        bs.Stable,
        (N, N),
        lambda rng, batch: random_contraction(rng, N, batch),
        lambda v: v.reshape(-1),
    ),
}
kinds = pytest.mark.parametrize("kind", list(KINDS))


def check_constraint(kind: str, value: np.ndarray) -> None:
    """The constraint, checked with numpy on each member of the batch."""
    if kind == "Positive":
        assert np.all(value > 0)
        return
    if kind == "Simplex":
        assert np.all(value >= 0)
        np.testing.assert_allclose(value.sum(-1), 1.0, rtol=0, atol=1e-12)
        return
    for m in value.reshape((-1,) + value.shape[-2:]):
        if kind == "Stable":
            assert np.linalg.norm(m, 2) < 1.0
            assert np.max(np.abs(np.linalg.eigvals(m))) < 1.0
            continue
        np.testing.assert_array_equal(m, m.T)
        eig = np.linalg.eigvalsh(m)
        if kind == "Covariance":
            assert eig.min() > -1e-12 * eig.max()
        else:  # Correlation: unit diagonal, positive definite, so off-diagonals inside (-1, 1)
            np.testing.assert_allclose(np.diag(m), 1.0, rtol=0, atol=1e-12)
            assert eig.min() > 0
            assert np.all(np.abs(m[np.tril_indices(len(m), -1)]) < 1.0)


@kinds
@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
def test_value_round_trips(kind, batch):
    cls, _, draw, _ = KINDS[kind]
    rng = np.random.default_rng(20)
    for _ in range(5):
        value = draw(rng, batch)
        leaf = cls.from_value(value)
        np.testing.assert_allclose(np.asarray(leaf.value()), value, rtol=1e-10, atol=1e-10)
        assert leaf.shape == value.shape and leaf.ndim == value.ndim
        assert leaf.batch_shape == batch
        assert leaf.ndim - len(leaf.batch_shape) == leaf.event_ndim


@kinds
@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_unconstrained_round_trips_and_constraints_hold(kind, scale):
    """Any real array is a valid leaf; from_value inverts value() exactly."""
    cls, event, _, _ = KINDS[kind]
    rng = np.random.default_rng(21)
    for _ in range(10):
        u = scale * rng.normal(size=(2,) + event)
        leaf = cls(jnp.asarray(u))
        value = np.asarray(leaf.value())
        assert value.shape == leaf.shape
        assert np.all(np.isfinite(value))
        check_constraint(kind, value)
        if scale <= 1.0:  # numpyro's own check (its tolerances assume moderate conditioning)
            assert np.all(np.asarray(cls.support(leaf.value())))
        back = np.asarray(cls.from_value(value).unconstrained)
        np.testing.assert_allclose(back, u, rtol=0, atol=1e-8 * max(1.0, scale**2))


@kinds
def test_log_abs_det_jacobian_matches_autodiff(kind):
    """log|det J| of u -> free coordinates of the value, from jax.jacfwd and slogdet."""
    cls, event, _, free = KINDS[kind]
    rng = np.random.default_rng(22)
    for batch in ((), (2,)):
        shape = batch + event
        for scale in (0.5, 1.0, 2.0):
            u = scale * rng.normal(size=shape)
            leaf = cls(jnp.asarray(u))

            def free_coords(flat, shape=shape):
                return free(cls(flat.reshape(shape)).value())

            J = np.asarray(jax.jacfwd(free_coords)(jnp.asarray(u.reshape(-1))))
            assert J.shape == (u.size, u.size)  # minimal: as many numbers as free coordinates
            sign, expected = np.linalg.slogdet(J)
            assert sign != 0
            got = float(leaf.log_abs_det_jacobian())
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-8)
            # The bijector gives it per batch member, and the inverse's is its negative.
            per_member = leaf.bijector.forward_log_det_jacobian(leaf.unconstrained)
            assert per_member.shape == leaf.batch_shape
            inverse = leaf.bijector.inverse_log_det_jacobian(leaf.value())
            np.testing.assert_allclose(np.asarray(inverse), -np.asarray(per_member), atol=1e-8)


def test_change_of_variables_integrates_to_one():
    """exp(log prior(value(u)) + log_abs_det_jacobian(u)) is a density over u: 1-D cases whose
    value-space integrals are known exactly."""

    def integral(log_density):
        return integrate.quad(lambda u: float(np.exp(log_density(u))), -np.inf, np.inf)[0]

    def ladj(cls, u, event):
        return float(cls(jnp.full(event, u)).log_abs_det_jacobian())

    # Uniform on (-1, 1): a 2x2 correlation, a 1x1 contraction. Integral = length 2.
    np.testing.assert_allclose(integral(lambda u: ladj(bs.Correlation, u, (1,))), 2.0, rtol=1e-8)
    np.testing.assert_allclose(integral(lambda u: ladj(bs.Stable, u, (1, 1))), 2.0, rtol=1e-8)
    # Uniform on the 2-simplex, first coordinate in (0, 1).
    np.testing.assert_allclose(integral(lambda u: ladj(bs.Simplex, u, (1,))), 1.0, rtol=1e-8)

    # Exponential(1) prior on a positive number and on a 1x1 covariance.
    def exponential(cls, event):
        def log_density(u):
            leaf = cls(jnp.full(event, u))
            return -float(jnp.sum(leaf.value())) + float(leaf.log_abs_det_jacobian())

        return log_density

    np.testing.assert_allclose(integral(exponential(bs.Positive, ())), 1.0, rtol=1e-8)
    np.testing.assert_allclose(integral(exponential(bs.Covariance, (1,))), 1.0, rtol=1e-8)


@kinds
def test_bijector_is_a_distrax_bijector(kind):
    cls, event, draw, _ = KINDS[kind]
    rng = np.random.default_rng(23)
    leaf = cls.from_value(draw(rng, (2,)))
    bij = leaf.bijector
    assert isinstance(bij, distrax.Bijector)
    assert bij.event_ndims_in == len(event) and bij.event_ndims_out == cls.event_ndim
    assert bij.same_as(cls.from_value(draw(rng, ())).bijector)
    y, log_det = bij.forward_and_log_det(leaf.unconstrained)
    np.testing.assert_allclose(np.asarray(y), np.asarray(leaf.value()), atol=1e-14)
    np.testing.assert_allclose(float(jnp.sum(log_det)), float(leaf.log_abs_det_jacobian()))
    x, inv_log_det = bij.inverse_and_log_det(y)
    np.testing.assert_allclose(np.asarray(x), np.asarray(leaf.unconstrained), atol=1e-10)
    np.testing.assert_allclose(np.asarray(inv_log_det), -np.asarray(log_det), atol=1e-10)
    assert isinstance(cls.support, constraints.Constraint)
    assert cls.support.event_dim == cls.event_ndim


@kinds
def test_leaves_work_under_jit_vmap_and_grad(kind):
    cls, event, draw, _ = KINDS[kind]
    rng = np.random.default_rng(24)
    values = draw(rng, (3,))
    batched = cls.from_value(values)
    jitted = jax.jit(cls.from_value)(values)  # value checks are skipped while tracing
    np.testing.assert_allclose(
        np.asarray(jitted.unconstrained), np.asarray(batched.unconstrained), atol=1e-12
    )
    one_by_one = jax.vmap(lambda u: cls(u).value())(batched.unconstrained)
    np.testing.assert_allclose(np.asarray(one_by_one), values, atol=1e-10)
    ladj = jax.vmap(lambda u: cls(u).log_abs_det_jacobian())(batched.unconstrained)
    np.testing.assert_allclose(float(ladj.sum()), float(batched.log_abs_det_jacobian()))
    grad = jax.grad(lambda leaf: leaf.log_abs_det_jacobian() + jnp.sum(leaf.value()))(batched)
    assert type(grad) is cls and np.all(np.isfinite(np.asarray(grad.unconstrained)))


@kinds
def test_keeps_float32(kind):
    cls, _, draw, _ = KINDS[kind]
    value = jnp.asarray(draw(np.random.default_rng(25), ()), jnp.float32)
    leaf = cls.from_value(value)
    assert leaf.unconstrained.dtype == jnp.float32
    assert leaf.value().dtype == jnp.float32
    assert leaf.log_abs_det_jacobian().dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(leaf.value()), np.asarray(value), rtol=1e-4, atol=1e-5)


EXTREME = {
    # Unconstrained points far out, where the value is close to the boundary but valid.
    "Positive": [np.array([-700.0, 0.0, 700.0])],
    "Covariance": [
        np.array([-30.0, 50.0, 30.0, -40.0, 1e3, -30.0]),
        np.asarray(bs.Covariance.from_matrix(np.zeros((3, 3))).unconstrained),  # the log floor
        np.asarray(bs.Covariance.from_matrix(np.diag([1.0, 0.0, 2.0])).unconstrained),
    ],
    "Correlation": [np.array([1e4, -1e4, 1e4]), np.array([1e8, 0.0, -1e8])],
    "Simplex": [np.array([-700.0, 0.0, 700.0]), np.array([700.0, 700.0, 700.0])],
    "Stable": [1e4 * np.eye(3), 1e3 * np.arange(9.0).reshape(3, 3) - 4e3],
}


@kinds
def test_gradients_are_finite_at_extreme_points(kind):
    cls = KINDS[kind][0]
    w = jnp.asarray(np.random.default_rng(26).normal(size=9))
    for u in EXTREME[kind]:
        leaf = cls(jnp.asarray(u))
        value = np.asarray(leaf.value())
        assert np.all(np.isfinite(value)) and np.isfinite(float(leaf.log_abs_det_jacobian()))

        def objective(u):
            leaf = cls(u)
            v = leaf.value().reshape(-1)
            return jnp.sum(w[: v.size] * v) + leaf.log_abs_det_jacobian()

        g = np.asarray(jax.grad(objective)(jnp.asarray(u)))
        assert np.all(np.isfinite(g)), (u, g)


BAD = {
    "Positive": [(np.array([1.0, -0.5]), "positive"), (np.array([np.nan]), "finite|nan")],
    "Covariance": [
        (np.array([[1.0, 2.0], [2.0, 1.0]]), "semi-definite"),
        (np.array([[1.0, 0.5], [0.0, 1.0]]), "symmetric"),
        (np.ones(3), "square"),
        (np.array([[1.0, np.inf], [np.inf, 1.0]]), "finite|nan|inf"),
    ],
    "Correlation": [
        (np.array([[2.0, 0.5], [0.5, 1.0]]), "unit diagonal"),
        (np.array([[1.0, 0.5], [0.2, 1.0]]), "symmetric"),
        (np.array([[1.0, 1.0], [1.0, 1.0]]), "positive definite"),
        (np.array([[1.0, 0.9, 0.9], [0.9, 1.0, -0.9], [0.9, -0.9, 1.0]]), "positive definite"),
        (np.ones((2, 3)), "square"),
    ],
    "Simplex": [
        (np.array([0.5, 0.6]), "sum to one"),
        (np.array([1.2, -0.2]), "non-negative"),
        (np.ones((2, 0)), "K >= 1"),
        (np.array(1.0), "K >= 1"),
    ],
    "Stable": [
        (np.eye(2), "spectral norm"),
        # Stable (eigenvalues 0.5) but not a contraction: outside what Stable represents.
        (np.array([[0.5, 2.0], [0.0, 0.5]]), "spectral norm"),
        (np.ones((2, 3)), "square"),
        (np.array([[np.nan, 0.0], [0.0, 0.1]]), "finite|nan"),
    ],
}


@kinds
def test_from_value_rejects_bad_input(kind):
    cls = KINDS[kind][0]
    for bad, why in BAD[kind]:
        with pytest.raises(ValueError, match=r"\bvalue\b") as info:
            cls.from_value(bad)
        assert re.search(why, str(info.value), flags=re.IGNORECASE), (str(info.value), why)


def test_boundary_values_are_accepted_where_sensible():
    # A zero variance and a zero probability are stored finitely and come back (to rounding).
    positive = bs.Positive.from_value(np.array([0.0, 1.0]))
    assert np.all(np.isfinite(np.asarray(positive.unconstrained)))
    np.testing.assert_allclose(np.asarray(positive.value()), [0.0, 1.0], rtol=0, atol=1e-300)
    simplex = bs.Simplex.from_value(np.array([0.0, 0.25, 0.75, 0.0]))
    assert np.all(np.isfinite(np.asarray(simplex.unconstrained)))
    np.testing.assert_allclose(np.asarray(simplex.value()), [0.0, 0.25, 0.75, 0.0], atol=1e-300)
    assert np.isfinite(float(simplex.log_abs_det_jacobian()))
    # Sizes that hold a single value: a 1x1 correlation and a one-outcome simplex.
    corr = bs.Correlation.from_value(np.eye(1))
    assert corr.unconstrained.shape == (0,) and corr.shape == (1, 1)
    np.testing.assert_array_equal(np.asarray(corr.value()), [[1.0]])
    one = bs.Simplex.from_value(np.array([1.0]))
    assert one.unconstrained.shape == (0,) and one.shape == (1,)
    np.testing.assert_array_equal(np.asarray(one.value()), [1.0])
    assert float(corr.log_abs_det_jacobian()) == 0.0 == float(one.log_abs_det_jacobian())


# -- each parametrisation against a numpy oracle ------------------------------------------------


def test_stable_matches_numpy_oracle():
    rng = np.random.default_rng(30)
    for n in (1, 2, 4):
        S = rng.normal(size=(n, n)) * 2.0
        L = np.linalg.cholesky(np.eye(n) + S @ S.T)
        expected = np.linalg.solve(L, S)
        np.testing.assert_allclose(
            np.asarray(bs.Stable(jnp.asarray(S)).value()), expected, rtol=1e-12, atol=1e-14
        )
    # from_value inverts any contraction, including nearly-singular and nearly-unit norms.
    for sigma in ([0.0, 0.0, 0.5], [0.999999, 0.5, 0.0], [0.9, 0.9, 0.9]):
        U, _, Vt = np.linalg.svd(rng.normal(size=(3, 3)))
        A = U @ np.diag(sigma) @ Vt
        np.testing.assert_allclose(
            np.asarray(bs.Stable.from_value(A).value()), A, rtol=0, atol=1e-10
        )


def test_correlation_matches_numpy_oracle():
    rng = np.random.default_rng(31)
    n = 4
    x = rng.normal(size=n * (n - 1) // 2)
    Z = np.eye(n)
    Z[np.tril_indices(n, -1)] = x
    L = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    np.testing.assert_allclose(
        np.asarray(bs.Correlation(jnp.asarray(x)).value()), L @ L.T, rtol=0, atol=1e-14
    )
    np.testing.assert_allclose(
        np.asarray(bs.Correlation(jnp.asarray(x)).cholesky), L, rtol=0, atol=1e-15
    )
    # Zero is the identity.
    np.testing.assert_array_equal(np.asarray(bs.Correlation(jnp.zeros(6)).value()), np.eye(4))


def test_simplex_and_positive_match_numpy_oracles():
    x = np.array([0.3, -1.2, 2.0])
    e = np.exp(np.append(x, 0.0))
    np.testing.assert_allclose(
        np.asarray(bs.Simplex(jnp.asarray(x)).value()), e / e.sum(), rtol=1e-14
    )
    np.testing.assert_allclose(np.asarray(bs.Simplex(jnp.zeros(3)).value()), 0.25, rtol=1e-15)
    np.testing.assert_allclose(
        np.asarray(bs.Positive(jnp.asarray(x)).value()), np.exp(x), rtol=1e-15
    )
