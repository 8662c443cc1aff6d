"""Input validation of `bs.LinearGaussianSSM` and of the verbs on it.

Bad input must raise a ValueError (a TypeError for a model an engine cannot handle) whose message
names the offending argument and says what was expected, at construction or at the verb call,
before anything is traced. Nothing may be broadcast silently.
"""

from __future__ import annotations

import contextlib
import re

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayesssm as bs

D, M, U, T = 2, 3, 2, 6


def params(**overrides):
    rng = np.random.default_rng(0)
    base = dict(
        A=np.array([[0.9, 0.1], [0.0, 0.8]]),
        Q=np.array([[0.5, 0.1], [0.1, 0.3]]),
        H=rng.normal(size=(M, D)),
        R=np.diag([0.2, 0.3, 0.4]),
        m0=np.zeros(D),
        P0=np.eye(D),
    )
    base.update(overrides)
    return base


def good_y(T=T):
    return np.random.default_rng(1).normal(size=(T, M))


@contextlib.contextmanager
def raises_naming(name: str, *expected: str, error=ValueError):
    """pytest.raises(error) whose message names `name` (as a word) and each `expected` regex."""
    with pytest.raises(error) as info:
        yield info
    message = str(info.value)
    assert re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message), (
        f"message does not name {name!r}: {message!r}"
    )
    for pattern in expected:
        assert re.search(pattern, message, flags=re.IGNORECASE), (
            f"message lacks {pattern!r}: {message!r}"
        )


def shape_pattern(*dims) -> str:
    """Regex for a shape such as (2, 3) or (2,)/(2), tolerant of spacing."""
    inner = r",\s*".join(str(d) for d in dims)
    return r"\(\s*" + inner + r"\s*,?\s*\)"


VERBS = {
    "filter": lambda model, y, **kw: bs.filter(model, y, **kw),
    "smooth": lambda model, y, **kw: bs.smooth(model, y, **kw),
    "log_marginal": lambda model, y, **kw: bs.log_marginal(model, y, **kw),
    "sample_posterior": lambda model, y, **kw: bs.sample_posterior(
        model, y, key=jax.random.key(0), num_samples=2, **kw
    ),
}
verbs = pytest.mark.parametrize("verb", list(VERBS.values()), ids=list(VERBS))


# -- construction: shapes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value, dims",
    [
        ("A", np.eye(3), (D, D)),
        ("A", np.ones((D, D + 1)), (D, D)),
        ("A", np.ones(D), (D, D)),
        ("H", np.ones((M, D + 1)), (M, D)),
        ("H", np.ones((M, 1)), (M, D)),
        ("Q", np.eye(D + 1), (D, D)),
        ("P0", np.eye(D + 1), (D, D)),
        ("b", np.ones(D + 1), (D,)),
        ("b", np.ones((T, D + 1)), (D,)),
        ("d", np.ones(M + 1), (M,)),
        ("d", np.ones((T, M - 1)), (M,)),
    ],
)
def test_wrong_parameter_shape(name, value, dims):
    with raises_naming(name, str(dims[-1])):
        bs.LinearGaussianSSM(**params(**{name: value}))


def test_r_not_m_by_m():
    # M = 3 comes from H; an R of another size must not be broadcast or truncated.
    with raises_naming("R", shape_pattern(M, M)):
        bs.LinearGaussianSSM(**params(R=np.eye(M - 1)))
    with raises_naming("R", shape_pattern(M, M)):
        bs.LinearGaussianSSM(**params(R=np.eye(M + 1)))


def test_h_columns_must_equal_state_dim():
    with raises_naming("H", shape_pattern(M, D)):
        bs.LinearGaussianSSM(**params(H=np.ones((M, D + 1))))


def test_m0_must_be_a_vector():
    with raises_naming("m0"):
        bs.LinearGaussianSSM(**params(m0=np.zeros((D, 1))))
    with raises_naming("m0"):
        bs.LinearGaussianSSM(**params(m0=0.0))


def test_broadcastable_parameters_are_not_broadcast():
    with raises_naming("b"):
        bs.LinearGaussianSSM(**params(b=1.0))
    with raises_naming("b"):
        bs.LinearGaussianSSM(**params(b=np.ones(1)))
    with raises_naming("d"):
        bs.LinearGaussianSSM(**params(d=np.ones(1)))
    with raises_naming("A"):
        bs.LinearGaussianSSM(**params(A=np.ones((1, 1))))
    with raises_naming("Q"):
        bs.LinearGaussianSSM(**params(Q=np.ones((1, 1))))
    with raises_naming("Q"):
        bs.LinearGaussianSSM(**params(Q=0.1))
    with raises_naming("Q"):
        bs.LinearGaussianSSM(**params(Q=np.ones(D)))  # variances as a vector: not a covariance
    with raises_naming("R"):
        bs.LinearGaussianSSM(**params(R=np.ones(M)))
    with raises_naming("H"):
        bs.LinearGaussianSSM(**params(H=np.ones(D)))


def test_p0_cannot_be_time_varying():
    with raises_naming("P0"):
        bs.LinearGaussianSSM(**params(P0=np.stack([np.eye(D)] * T)))


def test_too_many_axes():
    with raises_naming("A"):
        bs.LinearGaussianSSM(**params(A=np.ones((2, T, D, D))))
    with raises_naming("Q"):
        bs.LinearGaussianSSM(**params(Q=np.ones((2, T, D, D)) * np.eye(D)))


@pytest.mark.parametrize(
    "first, second",
    [
        (
            ("A", lambda n: np.stack([0.5 * np.eye(D)] * n)),
            ("Q", lambda n: np.stack([np.eye(D)] * n)),
        ),
        (("A", lambda n: np.stack([0.5 * np.eye(D)] * n)), ("H", lambda n: np.ones((n, M, D)))),
        (("H", lambda n: np.ones((n, M, D))), ("R", lambda n: np.stack([np.eye(M)] * n))),
        (("b", lambda n: np.zeros((n, D))), ("d", lambda n: np.zeros((n, M)))),
        (("Q", lambda n: np.stack([np.eye(D)] * n)), ("d", lambda n: np.zeros((n, M)))),
    ],
)
def test_time_varying_lengths_must_agree(first, second):
    (name1, make1), (name2, make2) = first, second
    with pytest.raises(ValueError) as info:
        bs.LinearGaussianSSM(**params(**{name1: make1(T), name2: make2(T + 1)}))
    message = str(info.value)
    named = [n for n in (name1, name2) if re.search(rf"\b{n}\b", message)]
    assert named, f"message names neither {name1} nor {name2}: {message!r}"
    assert str(T) in message and str(T + 1) in message, message


@verbs
def test_time_varying_length_must_match_data(verb):
    model = bs.LinearGaussianSSM(**params(A=np.stack([0.5 * np.eye(D)] * (T + 2))))
    with pytest.raises(ValueError) as info:
        verb(model, good_y(T))
    message = str(info.value)
    assert str(T) in message and str(T + 2) in message, message
    assert re.search(r"\bT\b|time", message), message


@verbs
def test_time_varying_length_one_is_not_broadcast(verb):
    # A leading axis of length 1 is a time axis of length 1, not a constant to broadcast.
    model = bs.LinearGaussianSSM(**params(A=np.stack([0.5 * np.eye(D)])))
    with pytest.raises(ValueError, match=str(T)):
        verb(model, good_y(T))


def test_time_varying_length_for_forecast_must_cover_horizon():
    # A time-varying model must cover T + num_steps for a forecast.
    model = bs.LinearGaussianSSM(**params(A=np.stack([0.5 * np.eye(D)] * T)))
    with pytest.raises(ValueError, match=str(T + 3)):
        bs.forecast(model, good_y(T), 3)
    longer = bs.LinearGaussianSSM(**params(A=np.stack([0.5 * np.eye(D)] * (T + 3))))
    out = bs.forecast(longer, good_y(T), 3)
    assert out.means.shape == (3, D)


# -- construction: covariances ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["Q", "R", "P0"])
def test_non_square_covariance(name):
    n = M if name == "R" else D
    with raises_naming(name, "square|shape"):
        bs.LinearGaussianSSM(**params(**{name: np.ones((n, n + 1))}))


@pytest.mark.parametrize("name", ["Q", "R", "P0"])
def test_non_psd_covariance(name):
    n = M if name == "R" else D
    bad = np.eye(n)
    bad[0, 1] = bad[1, 0] = 2.0  # eigenvalues include 1 - 2 = -1
    with raises_naming(name, "positive semi-definite|PSD"):
        bs.LinearGaussianSSM(**params(**{name: bad}))
    with raises_naming(name, "positive semi-definite|PSD"):
        bs.LinearGaussianSSM(**params(**{name: -np.eye(n)}))


@pytest.mark.parametrize("name", ["Q", "R", "P0"])
def test_non_symmetric_covariance(name):
    n = M if name == "R" else D
    bad = 2.0 * np.eye(n)
    bad[0, 1] = 0.5  # PSD symmetric part, but not symmetric
    with raises_naming(name, "symmetric"):
        bs.LinearGaussianSSM(**params(**{name: bad}))


def test_time_varying_covariance_checked_at_every_step():
    Qs = np.stack([np.eye(D)] * T)
    Qs[4] = np.array([[1.0, 3.0], [3.0, 1.0]])  # one non-PSD member
    with raises_naming("Q", "positive semi-definite|PSD"):
        bs.LinearGaussianSSM(**params(Q=Qs))


def test_psd_singular_covariances_are_accepted():
    model = bs.LinearGaussianSSM(**params(P0=np.zeros((D, D)), Q=np.diag([1.0, 0.0])))
    np.testing.assert_allclose(np.asarray(bs.unwrap(model).P0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(bs.unwrap(model).Q), np.diag([1.0, 0.0]), atol=1e-12)


# -- construction: non-finite parameters -----------------------------------------------------


def _with_nonfinite(value, bad):
    value = np.array(value, dtype=float)
    value.flat[0] = bad
    return value


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["A", "H", "m0", "Q", "R", "P0"])
def test_non_finite_parameter(name, bad):
    with raises_naming(name, "finite|nan|inf"):
        bs.LinearGaussianSSM(**params(**{name: _with_nonfinite(params()[name], bad)}))


@pytest.mark.parametrize("name, shape", [("b", (D,)), ("d", (M,)), ("B", (D, U)), ("D", (M, U))])
def test_non_finite_optional_parameter(name, shape):
    with raises_naming(name, "finite|nan|inf"):
        bs.LinearGaussianSSM(**params(**{name: _with_nonfinite(np.zeros(shape), np.nan)}))


@pytest.mark.parametrize("name", ["Q", "R", "P0"])
def test_non_finite_covariance_object(name):
    # A covariance passed already wrapped is a parameter like any other: NaN must be refused.
    n = M if name == "R" else D
    u = np.zeros(n * (n + 1) // 2)  # the packed log-Cholesky storage
    u[1] = np.nan
    with raises_naming(name, "finite|nan|inf"):
        bs.LinearGaussianSSM(**params(**{name: bs.Covariance(jnp.asarray(u))}))


def test_control_matrix_shapes():
    with raises_naming("B", shape_pattern(D, r"\?")):
        bs.LinearGaussianSSM(**params(B=np.ones((D + 1, U))))
    with raises_naming("D"):
        bs.LinearGaussianSSM(**params(D=np.ones((M + 1, U))))
    with raises_naming("B"):
        bs.LinearGaussianSSM(**params(B=np.ones(D)))
    with pytest.raises(ValueError, match=r"\bB\b.*\bD\b|columns"):
        bs.LinearGaussianSSM(**params(B=np.ones((D, U)), D=np.ones((M, U + 1))))


# -- verb calls: data ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return bs.LinearGaussianSSM(**params())


@verbs
def test_y_of_rank_three(model, verb):
    with raises_naming("y", r"\(T, M\)"):
        verb(model, np.ones((T, M, 1)))


@verbs
def test_y_wrong_number_of_columns(model, verb):
    with raises_naming("y", str(M)):
        verb(model, np.ones((T, M + 1)))
    with raises_naming("y", str(M)):
        verb(model, np.ones((T, M - 1)))


@verbs
def test_y_vector_is_not_broadcast_to_m_columns(model, verb):
    # (T,) and (T, 1) mean M = 1; with M = 3 they must be refused, not broadcast.
    with raises_naming("y", str(M)):
        verb(model, np.ones(T))
    with raises_naming("y", str(M)):
        verb(model, np.ones((T, 1)))


def test_y_vector_for_scalar_observations():
    model = bs.LinearGaussianSSM(**params(H=np.ones((1, D)), R=np.eye(1)))
    y = np.random.default_rng(2).normal(size=T)
    as_vector = bs.filter(model, y)
    as_column = bs.filter(model, y[:, None])
    np.testing.assert_array_equal(np.asarray(as_vector.means), np.asarray(as_column.means))
    assert as_vector.means.shape == (T, D)


@verbs
def test_y_transposed_is_refused(model, verb):
    with raises_naming("y", str(M)):
        verb(model, good_y(T).T)


@verbs
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_y_with_inf(model, verb, bad):
    y = good_y()
    y[2, 1] = bad
    with raises_naming("y", "inf"):
        verb(model, y)


@verbs
def test_y_all_nan(model, verb):
    with raises_naming("y", "NaN"):
        verb(model, np.full((T, M), np.nan))


def test_y_empty(model):
    with raises_naming("y"):
        bs.filter(model, np.ones((0, M)))


def test_partly_missing_y_is_fine(model):
    y = good_y()
    y[0] = np.nan
    y[3, 1] = np.nan
    result = bs.filter(model, y)
    assert np.all(np.isfinite(np.asarray(result.means)))


@pytest.fixture(scope="module")
def controlled():
    return bs.LinearGaussianSSM(**params(B=np.ones((D, U)), D=np.ones((M, U))))


@verbs
def test_inputs_missing_when_model_has_controls(controlled, verb):
    with raises_naming("inputs", r"\(T, U\)|B|D"):
        verb(controlled, good_y())


@pytest.mark.parametrize("which", ["B", "D"])
def test_inputs_missing_when_only_one_control_matrix(which):
    shape = (D, U) if which == "B" else (M, U)
    model = bs.LinearGaussianSSM(**params(**{which: np.ones(shape)}))
    with raises_naming("inputs"):
        bs.filter(model, good_y())


@verbs
def test_inputs_given_without_control_matrices(model, verb):
    with raises_naming("inputs", r"\bB\b|\bD\b|control"):
        verb(model, good_y(), inputs=np.ones((T, U)))


@pytest.mark.parametrize(
    "inputs",
    [
        np.ones((T, U + 1)),
        np.ones((T, 1)),
        np.ones((T - 1, U)),
        np.ones((T + 1, U)),
        np.ones(T),
        np.ones((T, U, 1)),
    ],
    ids=["more_columns", "one_column", "short", "long", "vector", "rank3"],
)
def test_inputs_wrong_shape(controlled, inputs):
    with raises_naming("inputs"):
        bs.filter(controlled, good_y(), inputs=inputs)


def test_inputs_non_finite(controlled):
    inputs = np.ones((T, U))
    inputs[1, 0] = np.nan
    with raises_naming("inputs", "finite|nan"):
        bs.filter(controlled, good_y(), inputs=inputs)


def test_forecast_inputs_must_cover_horizon(controlled):
    with raises_naming("inputs"):
        bs.forecast(controlled, good_y(), 2, inputs=np.ones((T, U)))
    out = bs.forecast(controlled, good_y(), 2, inputs=np.ones((T + 2, U)))
    assert out.obs_means.shape == (2, M)


@pytest.mark.parametrize("num_samples", [0, -1, 2.0, None])
def test_bad_num_samples(model, num_samples):
    with raises_naming("num_samples"):
        bs.sample_posterior(model, good_y(), key=jax.random.key(0), num_samples=num_samples)


@pytest.mark.parametrize("num_steps", [0, -2, 1.5])
def test_bad_forecast_steps(model, num_steps):
    with raises_naming("num_steps"):
        bs.forecast(model, good_y(), num_steps)


def test_bad_engine_setting(model):
    with raises_naming("parallel"):
        bs.filter(model, good_y(), engine=bs.Kalman(parallel="yes"))


# -- engines and capabilities ----------------------------------------------------------------


class RandomWalk(bs.AbstractSSM):
    """A scalar model with no linear-Gaussian capability (it only gives distributions)."""

    sigma: jax.Array

    def initial(self, inputs=None):
        return distrax.Normal(0.0, 1.0)

    def transition(self, x, inputs=None):
        return distrax.Normal(x, self.sigma)

    def emission(self, x, inputs=None):
        return distrax.Normal(x, 1.0)


@pytest.mark.parametrize("verb", ["filter", "smooth", "log_marginal", "sample_posterior"])
def test_kalman_on_a_model_without_the_capability(verb):
    model = RandomWalk(jnp.asarray(0.5))
    kwargs = dict(engine=bs.Kalman())
    if verb == "sample_posterior":
        kwargs["key"] = jax.random.key(0)
    with raises_naming("AbstractLinearGaussianSSM", error=TypeError):
        getattr(bs, verb)(model, np.zeros(5), **kwargs)


def test_no_exact_engine_for_a_general_model():
    with raises_naming("AbstractLinearGaussianSSM", error=TypeError):
        bs.filter(RandomWalk(jnp.asarray(0.5)), np.zeros(5))


def test_not_a_model():
    with pytest.raises(TypeError, match="model"):
        bs.filter({"A": np.eye(2)}, np.zeros((5, 2)))


# -- sampling from the model -----------------------------------------------------------------


def test_sample_shapes(model):
    x, y = model.sample(jax.random.key(0), num_timesteps=100)
    assert x.shape == (100, D) and y.shape == (100, M)
    assert x.dtype == jnp.float64 and y.dtype == jnp.float64
    assert np.all(np.isfinite(np.asarray(x))) and np.all(np.isfinite(np.asarray(y)))
    x1, y1 = model.sample(jax.random.key(0), num_timesteps=1)
    assert x1.shape == (1, D) and y1.shape == (1, M)
    # Same key, same draw; another key, another draw.
    x_again, _ = model.sample(jax.random.key(0), num_timesteps=100)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x_again))
    x_other, _ = model.sample(jax.random.key(1), num_timesteps=100)
    assert not np.allclose(np.asarray(x), np.asarray(x_other))


def test_sample_follows_the_recursions_when_noise_free():
    """With Q = R = P0 = 0 a draw is the deterministic recursion, written out here:
    x_0 = m0, x_{t+1} = A_t x_t + b_t + B u_t, y_t = H_t x_t + d_t + D u_t."""
    rng = np.random.default_rng(2)
    n = 7
    A = np.stack([np.array([[0.9, 0.2], [-0.1, 0.8]]) * (1 + 0.01 * t) for t in range(n)])
    b = rng.normal(size=(n, D))
    H, d = rng.normal(size=(M, D)), rng.normal(size=M)
    B, Dm = rng.normal(size=(D, U)), rng.normal(size=(M, U))
    u = rng.normal(size=(n, U))
    m0 = np.array([1.0, -2.0])
    zero = lambda k: np.zeros((k, k))  # noqa: E731
    model = bs.LinearGaussianSSM(
        A=A, Q=zero(D), H=H, R=zero(M), m0=m0, P0=zero(D), b=b, d=d, B=B, D=Dm
    )
    x, y = model.sample(jax.random.key(3), num_timesteps=n, inputs=u)
    expected_x = [m0]
    for t in range(n - 1):
        expected_x.append(A[t] @ expected_x[-1] + b[t] + B @ u[t])
    expected_x = np.stack(expected_x)
    expected_y = expected_x @ H.T + d + u @ Dm.T
    np.testing.assert_allclose(np.asarray(x), expected_x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(y), expected_y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("num_timesteps", [0, -3, 2.5, None, "100"])
def test_sample_bad_num_timesteps(model, num_timesteps):
    with raises_naming("num_timesteps"):
        model.sample(jax.random.key(0), num_timesteps=num_timesteps)


def test_sample_num_timesteps_must_match_time_varying_model():
    # A[t] for t beyond the model's time axis does not exist; it must not be clamped silently.
    model = bs.LinearGaussianSSM(**params(A=np.stack([0.5 * np.eye(D)] * T)))
    with raises_naming("num_timesteps", str(T)):
        model.sample(jax.random.key(0), num_timesteps=T + 4)
    x, y = model.sample(jax.random.key(0), num_timesteps=T)
    assert x.shape == (T, D) and y.shape == (T, M)


def test_sample_needs_inputs_when_model_has_controls(controlled):
    with raises_naming("inputs"):
        controlled.sample(jax.random.key(0), num_timesteps=T)
    with raises_naming("inputs"):
        controlled.sample(jax.random.key(0), num_timesteps=T, inputs=np.ones((T - 1, U)))
    x, y = controlled.sample(jax.random.key(0), num_timesteps=T, inputs=np.ones((T, U)))
    assert x.shape == (T, D) and y.shape == (T, M)
