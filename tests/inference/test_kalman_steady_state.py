"""The steady-state shortcut and its batched forms equal the full square-root recursion.

The full recursion is itself checked against statsmodels and a dense oracle in
test_kalman_exact.py; here every shortcut path is compared with it: single series, a batch under
`jax.vmap` sharing one missingness pattern (one covariance pass), a batch with different patterns,
batched control inputs, and derivatives (which always come from the full recursion). The same
for the steady smoother (backward kernels held once the filter's factors are constant, the
smoothed factors' recursion skipped where it has converged): smoothed moments, paths drawn with
the same key, and derivatives.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayesssm as bs

RTOL = 1e-10  # both sides are exact; they differ by rounding only
FULL = bs.Kalman(parallel=False, steady_state=False)


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(3)
    D, M, U = 3, 2, 2
    return bs.LinearGaussianSSM(
        A=0.9 * np.linalg.qr(rng.normal(size=(D, D)))[0],
        Q=np.diag([0.2, 0.1, 0.3]),
        H=rng.normal(size=(M, D)),
        R=np.array([[0.5, 0.2], [0.2, 0.4]]),
        m0=np.ones(D),
        P0=np.eye(D),
        b=0.1 * np.ones(D),
        B=rng.normal(size=(D, U)),
        D=rng.normal(size=(M, U)),
    )


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(4)
    B, T, M, U = 5, 120, 2, 2
    y = rng.normal(size=(B, T, M))
    y[:, 7, 0] = np.nan  # the same pattern in every series
    y[:, 50] = np.nan
    return jnp.asarray(y), jnp.asarray(rng.normal(size=(B, T, U)))


def full_log_marginals(model, ys, us):
    return np.array(
        [bs.log_marginal(model, y, inputs=u, engine=FULL) for y, u in zip(ys, us, strict=True)]
    )


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * np.max(np.abs(expected)))


@pytest.mark.parametrize("parallel", [False, True])
def test_single_series_equals_full_recursion(model, batch, parallel):
    y, u = batch[0][0], batch[1][0]
    fast = bs.filter(model, y, inputs=u, engine=bs.Kalman(parallel=parallel))
    full = bs.filter(model, y, inputs=u, engine=FULL)
    for name in ("means", "covs", "log_marginals", "predicted_means", "predicted_chols"):
        assert_close(getattr(fast, name), getattr(full, name))


@pytest.mark.parametrize("parallel", [False, True])
def test_vmap_shared_pattern(model, batch, parallel):
    ys, us = batch
    engine = bs.Kalman(parallel=parallel)
    got = jax.jit(jax.vmap(lambda y, u: bs.log_marginal(model, y, inputs=u, engine=engine)))(ys, us)
    assert_close(got, full_log_marginals(model, ys, us))
    means = jax.vmap(lambda y, u: bs.filter(model, y, inputs=u, engine=engine).means)(ys, us)
    full = np.stack(
        [bs.filter(model, y, inputs=v, engine=FULL).means for y, v in zip(ys, us, strict=True)]
    )
    assert_close(means, full)


def test_vmap_over_controls_only(model, batch):
    ys, us = batch
    got = jax.vmap(lambda u: bs.log_marginal(model, ys[0], inputs=u))(us)
    assert_close(got, full_log_marginals(model, [ys[0]] * len(us), us))


def test_vmap_different_patterns(model, batch):
    ys, us = batch
    ys = ys.at[2, 90, 1].set(jnp.nan)  # series 2 now has its own pattern
    got = jax.vmap(lambda y, u: bs.log_marginal(model, y, inputs=u))(ys, us)
    assert_close(got, full_log_marginals(model, ys, us))


def test_derivatives_are_the_full_recursions(model, batch):
    y, u = batch[0][0], batch[1][0]

    def loss(engine):
        def of_A(A):
            return bs.log_marginal(eqx.tree_at(lambda m: m.A, model, A), y, inputs=u, engine=engine)

        return of_A

    fast = jax.grad(loss(bs.Kalman(parallel=False)))(model.A)
    full = jax.grad(loss(FULL))(model.A)
    assert_close(fast, full)
    tangent = jnp.ones_like(model.A)
    assert_close(
        jax.jvp(loss(bs.Kalman(parallel=False)), (model.A,), (tangent,))[1],
        jax.jvp(loss(FULL), (model.A,), (tangent,))[1],
    )


def smoother_cases(batch):
    """Series whose missing rows sit early (a long constant stretch for the smoother to skip),
    late (the filter converges only at the end), on the last step, and nowhere."""
    y, u = np.array(batch[0][0]), batch[1][0]
    late, last, complete = y.copy(), y.copy(), y.copy()
    late[110] = np.nan
    last[-1, 1] = np.nan
    complete[np.isnan(complete)] = 0.3
    return {"early": (y, u), "late": (late, u), "last": (last, u), "complete": (complete, u)}


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("case", ["early", "late", "last", "complete"])
def test_smoother_equals_full_recursion(model, batch, parallel, case):
    y, u = smoother_cases(batch)[case]
    engine = bs.Kalman(parallel=parallel)
    fast = bs.smooth(model, y, inputs=u, engine=engine)
    full = bs.smooth(model, y, inputs=u, engine=FULL)
    for name in ("means", "covs"):
        assert_close(getattr(fast, name), getattr(full, name))
    key = jax.random.key(5)
    assert_close(
        bs.sample_posterior(model, y, key=key, num_samples=3, inputs=u, engine=engine),
        bs.sample_posterior(model, y, key=key, num_samples=3, inputs=u, engine=FULL),
    )


def test_smoother_under_vmap(model, batch):
    ys, us = batch
    means = jax.vmap(lambda y, u: bs.smooth(model, y, inputs=u).means)(ys, us)
    full = np.stack(
        [bs.smooth(model, y, inputs=v, engine=FULL).means for y, v in zip(ys, us, strict=True)]
    )
    assert_close(means, full)


def test_smoother_derivatives_are_the_full_recursions(model, batch):
    y, u = batch[0][0], batch[1][0]

    def loss(engine):
        def of_A(A):
            smoothed = bs.smooth(eqx.tree_at(lambda m: m.A, model, A), y, inputs=u, engine=engine)
            return jnp.sum(smoothed.means**2) + jnp.sum(smoothed.covs)

        return of_A

    assert_close(jax.grad(loss(bs.Kalman(parallel=False)))(model.A), jax.grad(loss(FULL))(model.A))
