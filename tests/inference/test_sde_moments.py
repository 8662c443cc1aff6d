"""Moment ODEs of a continuous-discrete model over one gap (`linearize_sde_transition`).

Oracles: the exact discretisation of a linear SDE (the moment ODEs are exact for it, so they
must agree to the ODE solver's tolerance), and Monte Carlo (Euler-Maruyama with many substeps
and samples) for a nonlinear SDE.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesssm.inference._linearization import Cubature, Extended, GaussHermite, Unscented
from bayesssm.inference._sde_moments import linearize_sde_transition
from bayesssm.models import ContinuousDiscreteSSM
from bayesssm.models.continuous_discrete import discretise_linear_sde
from bayesssm.ssm import StepInputs

RULES = [Extended(), Cubature()]
# the other rules of the Gaussian engines, under -m slow
SLOW_RULES = [pytest.param(r, marks=pytest.mark.slow) for r in (Unscented(), GaussHermite(3))]
RTOL, ATOL = 1e-10, 1e-12

# A damped oscillator with a constant input and noise on the velocity only (singular L L^T).
F = jnp.array([[0.0, 1.0], [-4.0, -0.5]])
C = jnp.array([0.3, -0.1])
L = jnp.array([[0.0, 0.0], [0.0, 0.7]])
GAPS = jnp.array([0.0, 0.05, 0.37, 1.3, 2.5])


def _oscillator(**settings):
    return ContinuousDiscreteSSM(
        lambda x, t: F @ x + C,  # a plain callable: no exact path, the ODEs run
        lambda x, t: L,
        m0=jnp.zeros(2),
        P0=jnp.eye(2),
        H=jnp.array([[1.0, 0.0]]),
        R=jnp.array([[0.1]]),
        **settings,
    )


def _steps(gaps, start=1.7):
    n = gaps.shape[0]
    return StepInputs(index=jnp.arange(n), dt=gaps, time=jnp.full(n, start, gaps.dtype))


@pytest.mark.parametrize("rule", RULES + SLOW_RULES, ids=lambda r: type(r).__name__)
def test_moment_odes_equal_exact_discretisation_of_a_linear_sde(rule):
    """For a linear SDE both forms of the moment ODEs are exact, so (A, b, Q) must equal the
    exact discretisation up to the solver's error, for gaps from 0 to 2.5 and from a regular or
    a singular start covariance. The solver keeps each step's local error below
    rtol |y| + atol; the ODE is stable (damped), so the global error is at most the sum over
    its steps, a few dozen here: 100 (rtol max|y| + atol) bounds it."""
    model = _oscillator(rtol=RTOL, atol=ATOL)
    mean = jnp.array([0.5, -0.2])
    chols = jnp.array([[[0.5, 0.0], [0.1, 0.3]], [[0.5, 0.0], [0.1, 0.0]]])  # 2nd: singular
    run = jax.jit(
        jax.vmap(
            jax.vmap(lambda c, s: linearize_sde_transition(rule, model, mean, c, s), (None, 0)),
            (0, None),
        )
    )
    A, b, chol_Q = run(chols, _steps(GAPS))
    A_ex, b_ex, chol_Q_ex = jax.vmap(lambda dt: discretise_linear_sde(F, C, L, dt))(GAPS)
    Q, Q_ex = chol_Q @ jnp.swapaxes(chol_Q, -1, -2), chol_Q_ex @ jnp.swapaxes(chol_Q_ex, -1, -2)
    scale = max(float(jnp.max(jnp.abs(A_ex))), float(jnp.max(jnp.abs(b_ex))), 1.0)
    tol = 100 * (RTOL * scale + ATOL)
    assert np.all(np.isfinite(np.asarray(chol_Q)))
    for k in range(chols.shape[0]):
        np.testing.assert_allclose(A[k], A_ex, rtol=0, atol=tol)
        np.testing.assert_allclose(b[k], b_ex, rtol=0, atol=tol)
        np.testing.assert_allclose(Q[k], Q_ex, rtol=0, atol=tol)
    np.testing.assert_array_equal(chol_Q, jnp.tril(chol_Q))  # lower-triangular factors
    # the zero gap (the last step of a TimeSeries) is exactly the identity with no noise
    np.testing.assert_array_equal(A[:, 0], jnp.broadcast_to(jnp.eye(2), (2, 2, 2)))
    np.testing.assert_array_equal(b[:, 0], 0.0)
    np.testing.assert_array_equal(chol_Q[:, 0], 0.0)


def test_exact_path_is_used_whatever_the_rule():
    model = ContinuousDiscreteSSM.linear(
        F, L, m0=jnp.zeros(2), P0=jnp.eye(2), c=C, H=jnp.array([[1.0, 0.0]]), R=[[0.1]]
    )
    step = StepInputs(index=jnp.asarray(0), dt=jnp.asarray(0.8), time=jnp.asarray(0.0))
    expected = discretise_linear_sde(F, C, L, 0.8)
    for rule in RULES + [p.values[0] for p in SLOW_RULES]:
        got = linearize_sde_transition(rule, model, jnp.ones(2), jnp.eye(2), step)
        for a, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, e)


def _van_der_pol(x, t):
    return jnp.array([x[1], 1.5 * (1.0 - x[0] ** 2) * x[1] - x[0]])


VDP_L = jnp.array([[0.0, 0.0], [0.0, 0.5]])


def _monte_carlo_moments(model, mean, chol, step, num, key):
    k_start, k_move = jax.random.split(key)
    x0 = mean + jax.random.normal(k_start, (num, 2)) @ chol.T
    keys = jax.random.split(k_move, num)
    move = jax.jit(jax.vmap(lambda k, x: model.transition(x, step).sample(seed=k)))
    xs = move(keys, x0)
    m = xs.mean(0)
    d = xs - m
    prods = d[:, :, None] * d[:, None, :]
    # standard errors of the sample mean and of the sample covariance's entries
    return m, prods.mean(0), d.std(0) / np.sqrt(num), prods.std(0) / np.sqrt(num)


def test_nonlinear_moment_odes_agree_with_monte_carlo():
    """Van der Pol over a short gap from a Gaussian start: the moment ODEs' mean and covariance
    against Euler-Maruyama (50 substeps: weak bias O(h) = O(4e-3 dt), far below the MC error)
    with 20 000 samples. Allowed: 4 Monte Carlo standard errors (each entry) plus the size of
    the Gaussian approximations' own error, estimated by how far the extended (first-order) and
    cubature (third-degree, exact for this cubic drift's expectation at each instant) forms
    differ; both see the same closure error, which is O(dt^2)."""
    model = ContinuousDiscreteSSM(
        _van_der_pol,
        lambda x, t: VDP_L,
        m0=jnp.zeros(2),
        P0=jnp.eye(2),
        H=jnp.array([[1.0, 0.0]]),
        R=jnp.array([[0.1]]),
        num_substeps=50,
        rtol=1e-9,
        atol=1e-11,
    )
    mean, chol = jnp.array([1.0, 0.5]), jnp.diag(jnp.array([0.2, 0.2]))
    step = StepInputs(index=jnp.asarray(0), dt=jnp.asarray(0.2), time=jnp.asarray(0.0))
    mc_m, mc_P, se_m, se_P = _monte_carlo_moments(
        model, mean, chol, step, 40_000, jax.random.key(3)
    )

    def moments(rule):
        A, b, chol_Q = linearize_sde_transition(rule, model, mean, chol, step)
        return A @ mean + b, A @ chol @ chol.T @ A.T + chol_Q @ chol_Q.T

    both = jax.jit(lambda: (moments(Extended()), moments(Cubature())))
    (m_ext, P_ext), (m_cub, P_cub) = both()
    gap_m, gap_P = jnp.abs(m_ext - m_cub), jnp.abs(P_ext - P_cub)
    for m, P in ((m_ext, P_ext), (m_cub, P_cub)):
        assert np.all(np.abs(m - mc_m) <= 4 * se_m + gap_m)
        assert np.all(np.abs(P - mc_P) <= 4 * se_P + gap_P)
    # The comparison has power: the moments moved far more than the allowance over the gap.
    assert np.all(np.abs(m_cub - mean) > 10 * (4 * se_m + gap_m))
    noise = jnp.abs(P_cub - chol @ chol.T)
    assert noise[1, 1] > 10 * (4 * se_P + gap_P)[1, 1]


@pytest.mark.parametrize(
    "rule",
    [Cubature(), pytest.param(Extended(), marks=pytest.mark.slow)],
    ids=["Cubature", "Extended"],
)
def test_nonlinear_transition_is_finite_under_vmap_and_float32(rule):
    """Lorenz-63 over irregular gaps, batched, in float32: finite, float32, and the predicted
    covariance A P0 A^T + Q is symmetric positive semi-definite."""

    def lorenz(x, t):
        return jnp.array(
            [10.0 * (x[1] - x[0]), x[0] * (28.0 - x[2]) - x[1], x[0] * x[1] - 8.0 / 3.0 * x[2]]
        )

    dtype = jnp.float32
    model = ContinuousDiscreteSSM(
        lorenz,
        jnp.eye(3, dtype=dtype),
        m0=jnp.ones(3, dtype),
        P0=jnp.eye(3, dtype=dtype),
        H=jnp.eye(3, dtype=dtype)[:1],
        R=jnp.eye(1, dtype=dtype),
        rtol=1e-5,
        atol=1e-6,
    )
    mean = jnp.array([1.0, 1.0, 20.0], dtype)
    chol = 0.5 * jnp.eye(3, dtype=dtype)
    steps = _steps(jnp.array([0.01, 0.05], dtype))
    run = jax.jit(jax.vmap(lambda s: linearize_sde_transition(rule, model, mean, chol, s)))
    A, b, chol_Q = run(steps)
    for a in (A, b, chol_Q):
        assert a.dtype == dtype
        assert np.all(np.isfinite(np.asarray(a)))
    P = A @ (chol @ chol.T) @ jnp.swapaxes(A, -1, -2) + chol_Q @ jnp.swapaxes(chol_Q, -1, -2)
    assert np.all(np.linalg.eigvalsh(np.asarray(P, np.float64)) > 0)


def test_a_negative_gap_is_refused():
    model = _oscillator()
    negative = StepInputs(index=jnp.asarray(0), dt=jnp.asarray(-0.1), time=jnp.asarray(0.0))
    with pytest.raises(Exception, match="time gap .* is negative"):
        jax.jit(lambda s: model.gap(s))(negative)
