"""Posterior path sampling (`bs.sample_posterior`) with the Kalman engines.

The draws must be *joint* draws of x_{0:T-1} given y: their empirical means and covariances per
step must match the smoother's, and their lag-1 cross-covariances Cov(x_t, x_{t+1} | y) (which
the smoother's marginals cannot give) must match a dense joint-Gaussian computation written
below, independent of the library.

Monte Carlo tolerances. With S independent draws, an empirical mean has standard error
sd / sqrt(S), and an empirical (co)variance C_hat_ij of a Gaussian vector has variance
(C_ii C_jj + C_ij^2) / S (Isserlis' theorem; estimating the mean changes this only at O(1/S^2)).
Every entry is checked against |estimate - truth| <= Z * standard error with Z = 4.5, for which
a correct sampler exceeds the bound with probability 6.8e-6 per entry (two-sided normal tail).
A Bonferroni union bound over all checked entries (under 200 per engine and model, < 1000 in
the file) keeps the chance of a spurious failure below 1% for a random key; the keys are fixed,
so the outcome is deterministic. S = 20,000 makes one standard error < 1% of a standard
deviation, so a sampler that ignores the cross-time dependence (lag-1 correlations here are
0.3 - 0.8) or draws from the filter instead of the smoother fails by many standard errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayesssm as bs

T, D, M, U = 8, 2, 2, 1
NUM_SAMPLES = 20_000
Z = 4.5

ENGINES = {"sequential": bs.Kalman(parallel=False), "parallel": bs.Kalman(parallel=True)}
engines = pytest.mark.parametrize("engine", list(ENGINES.values()), ids=list(ENGINES))


# -- the problems ----------------------------------------------------------------------------


def _spd(rng, n, scale):
    W = rng.normal(size=(n, n))
    return scale * (W @ W.T / n + 0.3 * np.eye(n))


def make_problem(kind: str):
    """Model arguments, per-step arrays for the oracle, y (with missing entries) and inputs."""
    rng = np.random.default_rng({"invariant": 0, "time_varying": 1}[kind])
    A = np.array([[0.95, 0.25], [-0.15, 0.8]])
    Q = _spd(rng, D, 0.3)
    H = np.array([[1.0, 0.5], [0.0, 1.0]])
    R = _spd(rng, M, 0.8)
    m0 = np.array([0.5, -1.0])
    P0 = _spd(rng, D, 1.0)
    b = np.array([0.1, -0.2])
    d = np.array([0.3, 0.0])
    B = np.array([[0.5], [-1.0]])
    Dm = np.array([[0.2], [0.4]])
    u = rng.normal(size=(T, U))
    if kind == "time_varying":
        scale = 1.0 + 0.1 * np.sin(np.arange(T))
        As = A[None] * scale[:, None, None] * 0.9
        Qs = np.stack([_spd(rng, D, 0.3) for _ in range(T)])
        Hs = H[None] + 0.2 * rng.normal(size=(T, M, D))
        Rs = np.stack([_spd(rng, M, 0.8) for _ in range(T)])
        bs_ = rng.normal(size=(T, D)) * 0.2
        ds_ = rng.normal(size=(T, M)) * 0.2
        kwargs = dict(A=As, Q=Qs, H=Hs, R=Rs, m0=m0, P0=P0, b=bs_, d=ds_, B=B, D=Dm)
    else:
        As, Qs, Hs, Rs = (np.stack([x] * T) for x in (A, Q, H, R))
        bs_, ds_ = np.stack([b] * T), np.stack([d] * T)
        kwargs = dict(A=A, Q=Q, H=H, R=R, m0=m0, P0=P0, b=b, d=d, B=B, D=Dm)
    y = rng.normal(size=(T, M)) + np.arange(T)[:, None] * 0.2
    y[2, 0] = np.nan  # one missing entry
    y[5] = np.nan  # one missing row
    oracle = dict(A=As, Q=Qs, H=Hs, R=Rs, m0=m0, P0=P0, b=bs_ + u @ B.T, d=ds_ + u @ Dm.T)
    return kwargs, oracle, y, u


def dense_posterior(A, Q, H, R, m0, P0, b, d, y):
    """Mean (T*D,) and covariance (T*D, T*D) of x_{0:T-1} | y, by conditioning the joint Gaussian.

    x = K (c + e) with K = (I - S)^{-1}, S the block sub-diagonal of A_0..A_{T-2},
    c = (m0, b_0, ..., b_{T-2}), e ~ N(0, blockdiag(P0, Q_0, ..., Q_{T-2}));
    y_t = H_t x_t + d_t + v_t.
    """
    n = T * D
    S = np.zeros((n, n))
    for t in range(T - 1):
        S[(t + 1) * D : (t + 2) * D, t * D : (t + 1) * D] = A[t]
    K = np.linalg.inv(np.eye(n) - S)
    c = np.concatenate([m0, *b[: T - 1]])
    noise = np.zeros((n, n))
    noise[:D, :D] = P0
    for t in range(T - 1):
        noise[(t + 1) * D : (t + 2) * D, (t + 1) * D : (t + 2) * D] = Q[t]
    mean_x = K @ c
    cov_x = K @ noise @ K.T
    Hbig = np.zeros((T * M, n))
    Rbig = np.zeros((T * M, T * M))
    for t in range(T):
        Hbig[t * M : (t + 1) * M, t * D : (t + 1) * D] = H[t]
        Rbig[t * M : (t + 1) * M, t * M : (t + 1) * M] = R[t]
    mean_y = Hbig @ mean_x + d.reshape(-1)
    cov_y = Hbig @ cov_x @ Hbig.T + Rbig
    cross = cov_x @ Hbig.T
    obs = ~np.isnan(y.reshape(-1))
    gain = np.linalg.solve(cov_y[np.ix_(obs, obs)], cross[:, obs].T).T
    mean = mean_x + gain @ (y.reshape(-1)[obs] - mean_y[obs])
    cov = cov_x - gain @ cross[:, obs].T
    return mean, 0.5 * (cov + cov.T)


def cov_standard_error(cov: np.ndarray, rows, cols) -> np.ndarray:
    """Standard error of the empirical covariance entries cov[rows][:, cols] (see the top)."""
    var = np.diag(cov)
    return np.sqrt((np.outer(var[rows], var[cols]) + cov[np.ix_(rows, cols)] ** 2) / NUM_SAMPLES)


def assert_within(estimate, truth, standard_error, what: str):
    z = np.abs(np.asarray(estimate) - np.asarray(truth)) / standard_error
    worst = np.unravel_index(np.argmax(z), z.shape)
    assert np.all(z <= Z), (
        f"{what}: {np.sum(z > Z)} entries beyond {Z} standard errors; worst at {worst}: "
        f"estimate {np.asarray(estimate)[worst]!r}, truth {np.asarray(truth)[worst]!r}, "
        f"z = {z[worst]:.2f}"
    )


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["invariant", "time_varying"])
def test_oracle_agrees_with_smoother(kind):
    """Guards the dense oracle used below (exactness itself is tested elsewhere)."""
    kwargs, oracle, y, u = make_problem(kind)
    model = bs.LinearGaussianSSM(**kwargs)
    smoothed = bs.smooth(model, y, inputs=u, engine=bs.Kalman(parallel=False))
    mean, cov = dense_posterior(**oracle, y=y)
    np.testing.assert_allclose(np.asarray(smoothed.means).reshape(-1), mean, atol=1e-9)
    for t in range(T):
        block = cov[t * D : (t + 1) * D, t * D : (t + 1) * D]
        np.testing.assert_allclose(np.asarray(smoothed.covs[t]), block, atol=1e-9)


@pytest.mark.parametrize("kind", ["invariant", "time_varying"])
@engines
def test_samples_match_posterior(kind, engine):
    kwargs, oracle, y, u = make_problem(kind)
    model = bs.LinearGaussianSSM(**kwargs)
    key = jax.random.key(1234)
    paths = bs.sample_posterior(model, y, key=key, num_samples=NUM_SAMPLES, engine=engine, inputs=u)
    assert paths.shape == (NUM_SAMPLES, T, D)
    assert paths.dtype == jnp.float64
    paths = np.asarray(paths)
    assert np.all(np.isfinite(paths))

    smoothed = bs.smooth(model, y, inputs=u, engine=engine)
    s_means, s_covs = np.asarray(smoothed.means), np.asarray(smoothed.covs)

    # Per step: mean and covariance against the smoother's.
    sample_means = paths.mean(axis=0)
    sds = np.sqrt(np.diagonal(s_covs, axis1=1, axis2=2))
    assert_within(sample_means, s_means, sds / np.sqrt(NUM_SAMPLES), "per-step means")
    centred = paths - sample_means
    for t in range(T):
        sample_cov = centred[:, t].T @ centred[:, t] / (NUM_SAMPLES - 1)
        se = cov_standard_error(s_covs[t], range(D), range(D))
        assert_within(sample_cov, s_covs[t], se, f"covariance at step {t}")

    # Jointness: lag-1 cross-covariances Cov(x_t, x_{t+1} | y) against the dense oracle.
    _, cov = dense_posterior(**oracle, y=y)
    for t in range(T - 1):
        now, nxt = range(t * D, (t + 1) * D), range((t + 1) * D, (t + 2) * D)
        truth = cov[np.ix_(now, nxt)]
        sample_cross = centred[:, t].T @ centred[:, t + 1] / (NUM_SAMPLES - 1)
        assert_within(sample_cross, truth, cov_standard_error(cov, now, nxt), f"lag-1 at {t}")
        # The test has power: these cross-covariances are far from zero.
        assert np.max(np.abs(truth) / cov_standard_error(cov, now, nxt)) > 20

    # The whole joint covariance of the path (all lags) against the oracle.
    flat = centred.reshape(NUM_SAMPLES, T * D)
    joint = flat.T @ flat / (NUM_SAMPLES - 1)
    n = T * D
    assert_within(joint, cov, cov_standard_error(cov, range(n), range(n)), "joint covariance")


@engines
def test_same_key_same_draws_other_key_other_draws(engine):
    kwargs, _, y, u = make_problem("invariant")
    model = bs.LinearGaussianSSM(**kwargs)

    def draw(seed, num_samples=16):
        return np.asarray(
            bs.sample_posterior(
                model, y, key=jax.random.key(seed), num_samples=num_samples, engine=engine, inputs=u
            )
        )

    first, again, other = draw(7), draw(7), draw(8)
    np.testing.assert_array_equal(first, again)
    assert not np.any(np.isclose(first, other, rtol=0, atol=1e-12)), "different keys, equal draws"
    # Within one call the draws differ from each other too.
    assert not np.any(np.isclose(first[0], first[1], rtol=0, atol=1e-12))
    one = draw(7, num_samples=1)
    assert one.shape == (1, T, D) and np.all(np.isfinite(one))


def test_sampling_under_jit_and_vmap_over_keys():
    kwargs, _, y, u = make_problem("invariant")
    model = bs.LinearGaussianSSM(**kwargs)
    engine = bs.Kalman(parallel=False)

    def draw(key):
        return bs.sample_posterior(model, y, key=key, num_samples=3, engine=engine, inputs=u)

    keys = jax.random.split(jax.random.key(5), 4)
    batched = np.asarray(jax.vmap(draw)(keys))
    looped = np.stack([np.asarray(draw(k)) for k in keys])
    assert batched.shape == (4, 3, T, D)
    np.testing.assert_allclose(batched, looped, rtol=1e-10, atol=1e-10)
    jitted = np.asarray(jax.jit(draw)(keys[0]))
    np.testing.assert_allclose(jitted, looped[0], rtol=1e-10, atol=1e-10)
