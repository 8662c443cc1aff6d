"""Exactness of `bs.LinearGaussianSSM` with the Kalman engines (sequential and parallel).

Two independent references:
- statsmodels' Kalman filter and smoother (long series, time-varying models, missing data);
- a dense oracle that conditions the joint Gaussian of all states and observations at once
  (small T: filter, smoother, likelihood and forecasts, with controls).

Everything runs in float64 (tests/conftest.py) with rtol = 1e-8. JIT compilation dominates the
run time (the parallel engine especially), so the tests share a few model *shapes*: programs
compiled for one shape are reused for every test whose model has the same shapes, whatever its
values. `reference` is importable because pytest puts tests/ (the directory of the rootmost
conftest.py, which has no __init__.py) on sys.path.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from reference import dense_gaussian as dense
from reference.statsmodels_kalman import statsmodels_kalman

import bayesssm as bs

RTOL = 1e-8

# On time-invariant models the default engines take the steady-state shortcut; the
# `full` ones run the square-root recursion at every step, so both code paths are checked.
ENGINES = {
    "sequential": bs.Kalman(parallel=False),
    "parallel": bs.Kalman(parallel=True),
    "sequential-full": bs.Kalman(parallel=False, steady_state=False),
    "parallel-full": bs.Kalman(parallel=True, steady_state=False),
}
engines = pytest.mark.parametrize("engine", list(ENGINES.values()), ids=list(ENGINES))
# Time-varying models never take the shortcut: the two default engines cover them.
tv_engines = pytest.mark.parametrize(
    "engine", [ENGINES["sequential"], ENGINES["parallel"]], ids=["sequential", "parallel"]
)


def assert_close(actual, expected, name: str = "", rtol: float = RTOL) -> None:
    """|actual - expected| <= rtol * |expected| + atol, elementwise, with a magnitude-scaled atol.

    atol = rtol * (largest |expected| entry of the same time step), i.e. of the same mean vector
    or covariance matrix; for a 1-D series of per-step scalars (log-likelihood terms), of the
    whole series. Why: the rounding errors of a Kalman recursion are relative to the magnitude of
    the vectors and matrices it combines, not to each entry; an entry that is ~0 by cancellation
    (a mean crossing zero, a near-zero off-diagonal covariance, a zero-variance direction of a
    singular P0, a per-step log-likelihood near 0) cannot be held to a relative error. Entries
    of ordinary size are still held to rtol = 1e-8 relative error. Scalars get no atol.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: non-finite entries"
    if expected.ndim == 0:
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0.0, err_msg=name)
        return
    if expected.ndim == 1:
        scale = np.max(np.abs(expected))
    else:
        scale = np.max(np.abs(expected), axis=tuple(range(1, expected.ndim)), keepdims=True)
    bound = rtol * (scale + np.abs(expected))
    err = np.abs(actual - expected)
    bad = err > bound
    if np.any(bad):
        ratio = err / np.maximum(bound, np.finfo(float).tiny)
        worst = np.unravel_index(np.argmax(ratio), err.shape)
        raise AssertionError(
            f"{name}: {np.sum(bad)} of {err.size} entries out of tolerance; worst at {worst}: "
            f"actual {actual[worst]!r}, expected {expected[worst]!r}, bound {bound[worst]!r}"
        )


def gram(chols) -> np.ndarray:
    chols = np.asarray(chols)
    return chols @ np.swapaxes(chols, -1, -2)


# -- random models --------------------------------------------------------------------------


def random_cov(rng, n: int, lead: tuple = ()) -> np.ndarray:
    """A well-conditioned SPD matrix (n, n) with correlations, or a stack (*lead, n, n)."""
    W = rng.normal(size=(*lead, n, n))
    return W @ np.swapaxes(W, -1, -2) / n + 0.5 * np.eye(n)


def stable_matrix(rng, n: int, lead: tuple = (), radius: float = 0.9) -> np.ndarray:
    A = rng.normal(size=(*lead, n, n))
    rho = np.max(np.abs(np.linalg.eigvals(A)), axis=-1)
    return A * (radius / rho)[..., None, None]


def simulate(params: dict, num_timesteps: int, seed: int, inputs=None) -> np.ndarray:
    """Draw y (T, M) from the model, in plain numpy (same conventions as the library)."""
    rng = np.random.default_rng(seed)

    def at(name, t, base_ndim):
        value = np.asarray(params[name])
        return value[t] if value.ndim > base_ndim else value

    m0, P0 = params["m0"], params["P0"]
    x = rng.multivariate_normal(m0, P0)
    ys = []
    for t in range(num_timesteps):
        u = None if inputs is None else inputs[t]
        d = at("d", t, 1) if "d" in params else 0.0
        if params.get("D") is not None:
            d = d + params["D"] @ u
        ys.append(rng.multivariate_normal(at("H", t, 2) @ x + d, at("R", t, 2)))
        b = at("b", t, 1) if "b" in params else 0.0
        if params.get("B") is not None:
            b = b + params["B"] @ u
        x = rng.multivariate_normal(at("A", t, 2) @ x + b, at("Q", t, 2))
    return np.array(ys)


def first_steps(params: dict, num_timesteps: int) -> dict:
    """The same model over its first num_timesteps steps (slices the time-varying arrays)."""
    base = {"A": 2, "Q": 2, "H": 2, "R": 2, "b": 1, "d": 1}
    return {
        k: (v[:num_timesteps] if k in base and np.ndim(v) > base[k] else v)
        for k, v in params.items()
    }


# The shapes shared by several tests (see the module docstring).
T_LONG, D_LONG, M_LONG = 500, 4, 2  # time-invariant, with offsets and a correlated R
T_SMALL, D_SMALL, M_SMALL, U_SMALL, K_SMALL = 30, 3, 2, 2, 4  # time-varying, with controls


@pytest.fixture(scope="module")
def long_params() -> dict:
    rng = np.random.default_rng(0)
    return dict(
        A=stable_matrix(rng, D_LONG),
        Q=random_cov(rng, D_LONG),
        H=rng.normal(size=(M_LONG, D_LONG)),
        R=random_cov(rng, M_LONG),
        m0=rng.normal(size=D_LONG),
        P0=random_cov(rng, D_LONG),
        b=rng.normal(size=D_LONG),
        d=rng.normal(size=M_LONG),
    )


@pytest.fixture(scope="module")
def long_y(long_params) -> np.ndarray:
    return simulate(long_params, T_LONG, seed=1)


@pytest.fixture(scope="module")
def tv_params() -> dict:
    """Time-varying A, Q, H, R, b, d and controls B, D, over T_SMALL + K_SMALL steps."""
    rng = np.random.default_rng(2)
    n = T_SMALL + K_SMALL
    return dict(
        A=stable_matrix(rng, D_SMALL, (n,), radius=0.95),
        Q=random_cov(rng, D_SMALL, (n,)),
        H=rng.normal(size=(n, M_SMALL, D_SMALL)),
        R=random_cov(rng, M_SMALL, (n,)),
        m0=rng.normal(size=D_SMALL),
        P0=random_cov(rng, D_SMALL),
        b=rng.normal(size=(n, D_SMALL)),
        d=rng.normal(size=(n, M_SMALL)),
        B=rng.normal(size=(D_SMALL, U_SMALL)),
        D=rng.normal(size=(M_SMALL, U_SMALL)),
    )


@pytest.fixture(scope="module")
def tv_inputs() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(T_SMALL + K_SMALL, U_SMALL))


@pytest.fixture(scope="module")
def tv_y(tv_params, tv_inputs) -> np.ndarray:
    """T_SMALL steps, with single missing entries and whole missing rows (first, middle, last)."""
    y = simulate(tv_params, T_SMALL + K_SMALL, seed=4, inputs=tv_inputs)[:T_SMALL].copy()
    y[[3, 8, 20], 0] = np.nan
    y[[5, 21], 1] = np.nan
    y[[0, 12, 13, T_SMALL - 1]] = np.nan
    return y


def with_missing(y: np.ndarray, seed: int, rows: list[int]) -> np.ndarray:
    """20% of the entries missing at random, plus the given whole rows."""
    rng = np.random.default_rng(seed)
    y = y.copy()
    y[rng.random(y.shape) < 0.2] = np.nan
    y[rows] = np.nan
    return y


# -- comparisons ----------------------------------------------------------------------------


def check_against_statsmodels(smoothed: bs.SmootherResult, ref) -> None:
    f = smoothed.filtered
    assert_close(f.means, ref.filtered_means, "filtered means")
    assert_close(f.covs, ref.filtered_covs, "filtered covs")
    assert_close(f.predicted_means, ref.predicted_means, "predicted means")
    assert_close(gram(f.predicted_chols), ref.predicted_covs, "predicted covs")
    assert_close(f.log_marginals, ref.log_likelihoods, "per-step log-likelihoods")
    assert_close(f.log_marginal, ref.log_likelihood, "filter log-likelihood")
    assert_close(smoothed.means, ref.smoothed_means, "smoothed means")
    assert_close(smoothed.covs, ref.smoothed_covs, "smoothed covs")
    assert_close(smoothed.log_marginal, ref.log_likelihood, "smoother log-likelihood")


def check_factors(result) -> None:
    """`chols` are lower-triangular factors of `covs`."""
    chols = np.asarray(result.chols)
    np.testing.assert_array_equal(np.triu(chols, 1), 0.0)
    assert_close(gram(chols), result.covs, "chols @ chols.T")


# -- a long time-invariant model: sequential, parallel and statsmodels ---------------------


@engines
def test_long_model_matches_statsmodels(engine, long_params, long_y):
    model = bs.LinearGaussianSSM(**long_params)
    smoothed = bs.smooth(model, long_y, engine=engine)
    check_against_statsmodels(smoothed, statsmodels_kalman(long_y, **long_params))
    check_factors(smoothed)
    check_factors(smoothed.filtered)


def test_long_model_filter_and_log_marginal_verbs(long_params, long_y):
    """bs.filter and bs.log_marginal give what bs.smooth's filter pass gives (and statsmodels)."""
    model = bs.LinearGaussianSSM(**long_params)
    engine = ENGINES["sequential"]
    ref = statsmodels_kalman(long_y, **long_params)
    filtered = bs.filter(model, long_y, engine=engine)
    assert_close(filtered.means, ref.filtered_means, "filtered means")
    assert_close(filtered.covs, ref.filtered_covs, "filtered covs")
    assert_close(filtered.log_marginal, ref.log_likelihood, "filter log-likelihood")
    assert_close(bs.log_marginal(model, long_y, engine=engine), ref.log_likelihood, "log_marginal")


def test_sequential_and_parallel_agree(long_params, long_y):
    model = bs.LinearGaussianSSM(**long_params)
    seq = bs.smooth(model, long_y, engine=ENGINES["sequential"])
    par = bs.smooth(model, long_y, engine=ENGINES["parallel"])
    for name in ("means", "covs", "log_marginals", "predicted_means", "log_marginal"):
        assert_close(getattr(par.filtered, name), getattr(seq.filtered, name), f"filtered {name}")
    assert_close(
        gram(par.filtered.predicted_chols), gram(seq.filtered.predicted_chols), "predicted covs"
    )
    for name in ("means", "covs", "log_marginal"):
        assert_close(getattr(par, name), getattr(seq, name), f"smoothed {name}")


# -- missing data, correlated R ----------------------------------------------------------------


@engines
def test_missing_data_matches_statsmodels(engine, long_params, long_y):
    assert np.count_nonzero(long_params["R"] - np.diag(np.diag(long_params["R"]))) > 0
    y = with_missing(long_y, seed=5, rows=[0, 1, 100, 101, 102, 377, T_LONG - 1])
    model = bs.LinearGaussianSSM(**long_params)
    smoothed = bs.smooth(model, y, engine=engine)
    check_against_statsmodels(smoothed, statsmodels_kalman(y, **long_params))
    # A step with nothing observed contributes nothing to the likelihood.
    np.testing.assert_array_equal(np.asarray(smoothed.filtered.log_marginals)[[0, 100]], 0.0)


# -- time-varying model (A, Q, H, R, b, d with a leading T axis, and controls) -----------------


@tv_engines
def test_time_varying_matches_statsmodels(engine, tv_params, tv_inputs, tv_y):
    params = first_steps(tv_params, T_SMALL)
    inputs = tv_inputs[:T_SMALL]
    model = bs.LinearGaussianSSM(**params)
    smoothed = bs.smooth(model, tv_y, engine=engine, inputs=inputs)
    check_against_statsmodels(smoothed, statsmodels_kalman(tv_y, **params, inputs=inputs))


def test_time_varying_uses_the_transition_out_of_each_step(tv_params, tv_inputs, tv_y):
    """A model whose transition arrays are shifted by one step is a different model.

    Guards the timing convention: index t of A, b, Q is the move out of step t, so the last
    entry is unused and changing it changes nothing, while changing the first entry does.
    """
    params = first_steps(tv_params, T_SMALL)
    inputs = tv_inputs[:T_SMALL]
    engine = ENGINES["sequential"]
    base = bs.smooth(bs.LinearGaussianSSM(**params), tv_y, engine=engine, inputs=inputs)
    for key in ("A", "b", "Q"):
        bump = np.eye(D_SMALL) if key == "Q" else 0.0  # keeps 3 Q + I positive definite
        last = dict(params)
        last[key] = params[key].copy()
        last[key][-1] = 3.0 * params[key][-1] + bump
        moved = bs.smooth(bs.LinearGaussianSSM(**last), tv_y, engine=engine, inputs=inputs)
        np.testing.assert_array_equal(moved.means, base.means, err_msg=f"last {key} was used")
        first = dict(params)
        first[key] = params[key].copy()
        first[key][0] = 3.0 * params[key][0] + bump
        moved = bs.smooth(bs.LinearGaussianSSM(**first), tv_y, engine=engine, inputs=inputs)
        assert not np.allclose(moved.means, base.means), f"first {key} was not used"


# -- the dense oracle: small T, time-varying, controls, missing entries -----------------------


@tv_engines
def test_dense_oracle_filter_smoother_likelihood(engine, tv_params, tv_inputs, tv_y):
    params = first_steps(tv_params, T_SMALL)
    inputs = tv_inputs[:T_SMALL]
    model = bs.LinearGaussianSSM(**params)
    smoothed = bs.smooth(model, tv_y, engine=engine, inputs=inputs)

    ref = dense.smooth(tv_y, **params, inputs=inputs)
    assert_close(smoothed.means, ref.means, "smoothed means")
    assert_close(smoothed.covs, ref.covs, "smoothed covs")
    assert_close(smoothed.log_marginal, ref.log_likelihood, "log-likelihood")

    ref = dense.filter(tv_y, **params, inputs=inputs)
    f = smoothed.filtered
    assert_close(f.means, ref.means, "filtered means")
    assert_close(f.covs, ref.covs, "filtered covs")
    assert_close(f.log_marginals, ref.log_marginals, "per-step log-likelihoods")
    assert_close(f.predicted_means, ref.predicted_means, "predicted means")
    assert_close(gram(f.predicted_chols), ref.predicted_covs, "predicted covs")


def test_dense_oracle_log_marginal_verb(tv_params, tv_inputs, tv_y):
    params = first_steps(tv_params, T_SMALL)
    inputs = tv_inputs[:T_SMALL]
    ll = bs.log_marginal(
        bs.LinearGaussianSSM(**params), tv_y, engine=ENGINES["sequential"], inputs=inputs
    )
    assert_close(ll, dense.smooth(tv_y, **params, inputs=inputs).log_likelihood, "log_marginal")


@tv_engines
def test_dense_oracle_forecast(engine, tv_params, tv_inputs, tv_y):
    """Forecast K steps past T with a time-varying model and inputs that cover T + K steps."""
    model = bs.LinearGaussianSSM(**tv_params)
    fc = bs.forecast(model, tv_y, K_SMALL, engine=engine, inputs=tv_inputs)
    ref = dense.forecast(tv_y, K_SMALL, **tv_params, inputs=tv_inputs)
    assert_close(fc.means, ref.means, "forecast state means")
    assert_close(fc.covs, ref.covs, "forecast state covs")
    assert_close(fc.obs_means, ref.obs_means, "forecast observation means")
    assert_close(fc.obs_covs, ref.obs_covs, "forecast observation covs")


# -- scalar observations -------------------------------------------------------------------


@pytest.fixture(scope="module")
def scalar_params() -> dict:
    rng = np.random.default_rng(6)
    return dict(
        A=stable_matrix(rng, 2),
        Q=random_cov(rng, 2),
        H=rng.normal(size=(1, 2)),
        R=np.array([[0.3]]),
        m0=rng.normal(size=2),
        P0=random_cov(rng, 2),
        d=np.array([0.7]),
    )


def test_scalar_observations(scalar_params):
    """y of shape (T,) is y of shape (T, 1); both match the dense oracle (a time-invariant
    model, so this also covers forecasting without time-varying arrays).

    Sequential engine only: (T,) becomes (T, 1) in `prepare`, before any engine runs, and a
    parallel compile for one more shape would cost ~8 s of this file's budget.
    """
    engine = ENGINES["sequential"]
    y = simulate(scalar_params, 25, seed=7)[:, 0]
    y[[4, 10, 11]] = np.nan
    assert y.shape == (25,)
    model = bs.LinearGaussianSSM(**scalar_params)

    flat = bs.smooth(model, y, engine=engine)
    column = bs.smooth(model, y[:, None], engine=engine)
    for a, b in zip(jax.tree.leaves(flat), jax.tree.leaves(column), strict=True):
        np.testing.assert_array_equal(a, b)
    ref = dense.smooth(y, **scalar_params)
    assert_close(flat.means, ref.means, "smoothed means")
    assert_close(flat.covs, ref.covs, "smoothed covs")
    assert_close(flat.log_marginal, ref.log_likelihood, "log-likelihood")
    ref = dense.filter(y, **scalar_params)
    assert_close(flat.filtered.means, ref.means, "filtered means")
    assert_close(flat.filtered.covs, ref.covs, "filtered covs")

    fc_flat = bs.forecast(model, y, 3, engine=engine)
    fc_column = bs.forecast(model, y[:, None], 3, engine=engine)
    for a, b in zip(fc_flat, fc_column, strict=True):
        np.testing.assert_array_equal(a, b)
    ref = dense.forecast(y, 3, **scalar_params)
    assert fc_flat.obs_means.shape == (3, 1) and fc_flat.obs_covs.shape == (3, 1, 1)
    assert_close(fc_flat.means, ref.means, "forecast state means")
    assert_close(fc_flat.covs, ref.covs, "forecast state covs")
    assert_close(fc_flat.obs_means, ref.obs_means, "forecast observation means")
    assert_close(fc_flat.obs_covs, ref.obs_covs, "forecast observation covs")


# -- singular initial covariance -------------------------------------------------------------


@engines
def test_singular_P0_matches_statsmodels(engine, long_params, long_y):
    params = dict(long_params, P0=np.diag([1.0, 1.0, 0.0, 0.0]))
    y = with_missing(long_y, seed=8, rows=[1, 2])
    smoothed = bs.smooth(bs.LinearGaussianSSM(**params), y, engine=engine)
    check_against_statsmodels(smoothed, statsmodels_kalman(y, **params))


@tv_engines
def test_singular_P0_matches_dense_oracle(engine, tv_params, tv_inputs, tv_y):
    """A rank-one P0 that is not axis-aligned, on the time-varying model with controls."""
    v = np.array([1.0, -2.0, 0.5])
    params = dict(first_steps(tv_params, T_SMALL), P0=np.outer(v, v))
    inputs = tv_inputs[:T_SMALL]
    y = tv_y.copy()
    y[0] = [0.3, -1.2]  # observe step 0, where the singular P0 matters most
    smoothed = bs.smooth(bs.LinearGaussianSSM(**params), y, engine=engine, inputs=inputs)
    ref = dense.smooth(y, **params, inputs=inputs)
    assert_close(smoothed.means, ref.means, "smoothed means")
    assert_close(smoothed.covs, ref.covs, "smoothed covs")
    assert_close(smoothed.log_marginal, ref.log_likelihood, "log-likelihood")
    ref = dense.filter(y, **params, inputs=inputs)
    assert_close(smoothed.filtered.means, ref.means, "filtered means")
    assert_close(smoothed.filtered.covs, ref.covs, "filtered covs")
    assert_close(smoothed.filtered.log_marginals, ref.log_marginals, "per-step log-likelihoods")
