"""ContinuousDiscreteSSM: checks at construction, the exact path of a linear SDE (against
bs.GPStateSpace and closed forms), Euler-Maruyama transitions (against their own exact moments
and the SDE's), the particle filter, jit / vmap and float32."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sla

import bayesssm as bs
from bayesssm.inference._linearization import Cubature, Extended
from bayesssm.models import ContinuousDiscreteSSM, EulerMaruyama, LinearContinuousDiscreteSSM
from bayesssm.models.continuous_discrete import discretise_linear_sde
from bayesssm.ssm import StepInputs

H1, R1 = jnp.array([[1.0, 0.0]]), jnp.array([[0.1]])
F_OSC = jnp.array([[0.0, 1.0], [-4.0, -0.5]])
C_OSC = jnp.array([0.3, -0.1])
L_OSC = jnp.array([[0.0, 0.0], [0.0, 0.7]])


def _irregular_series(key, num=40, dtype=jnp.float64):
    k_gap, k_val = jax.random.split(key)
    times = jnp.cumsum(jax.random.uniform(k_gap, (num,), minval=0.02, maxval=0.6))
    values = jnp.sin(2.0 * times) + 0.3 * jax.random.normal(k_val, (num,))
    values = values.at[5].set(jnp.nan)  # a missing value
    return bs.TimeSeries(np.asarray(times, dtype), np.asarray(values, dtype))


# -- bad input --------------------------------------------------------------------------------


def _build(drift=lambda x, t: -x, diffusion=lambda x, t: jnp.eye(2), **kwargs):
    kwargs = {"m0": jnp.zeros(2), "P0": jnp.eye(2), "H": H1, "R": R1, **kwargs}
    return ContinuousDiscreteSSM(drift, diffusion, **kwargs)


def test_drift_of_the_wrong_shape_is_refused_naming_the_drift():
    with pytest.raises(ValueError, match=r"drift\(x, t\) must return an array of shape \(D,\)"):
        _build(drift=lambda x, t: jnp.concatenate([x, x]))
    with pytest.raises(ValueError, match=r"calling drift\(x, t\).*failed"):
        _build(drift=lambda x, t: jnp.ones((3, 3)) @ x)


def test_diffusion_that_is_not_square_or_not_of_the_state_size_is_refused():
    with pytest.raises(ValueError, match=r"diffusion\(x, t\) must be a square .*pad L with zero"):
        _build(diffusion=lambda x, t: jnp.ones((2, 1)))
    with pytest.raises(ValueError, match=r"diffusion\(x, t\) must be a square \(D, D\) = \(2, 2\)"):
        _build(diffusion=lambda x, t: jnp.eye(3))
    with pytest.raises(ValueError, match="constant diffusion matrix must be a square"):
        _build(diffusion=jnp.ones(2))


def test_other_bad_input_is_refused():
    with pytest.raises(TypeError, match=r"emission\(x\) must return a distrax distribution"):
        ContinuousDiscreteSSM(
            lambda x, t: -x, jnp.eye(2), lambda x: x, m0=jnp.zeros(2), P0=jnp.eye(2)
        )
    with pytest.raises(ValueError, match="H must have D = 2 columns"):
        _build(H=jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="positive semi-definite"):
        _build(P0=-jnp.eye(2))
    with pytest.raises(ValueError, match="num_substeps must be a positive int"):
        _build(num_substeps=0)
    with pytest.raises(ValueError, match="rtol must be a finite number > 0"):
        _build(rtol=-1.0)
    with pytest.raises(ValueError, match="y must have|y has 2 columns"):
        bs.filter(
            ContinuousDiscreteSSM.linear(F_OSC, L_OSC, m0=jnp.zeros(2), P0=jnp.eye(2), H=H1, R=R1),
            jnp.zeros((5, 2)),
        )


# -- the exact path of a linear SDE -----------------------------------------------------------


def test_exact_discretisation_matches_closed_forms():
    """b = F^{-1}(e^{F dt} - I) c and, F being stable, Q = P_inf - A P_inf A^T with
    F P_inf + P_inf F^T + L L^T = 0 (scipy); also over a gap of 2000 time constants, and the
    zero gap gives (I, 0, 0)."""
    F, c, L = np.asarray(F_OSC), np.asarray(C_OSC), np.asarray(L_OSC)
    P_inf = sla.solve_continuous_lyapunov(F, -L @ L.T)
    gaps = jnp.array([0.0, 0.01, 0.7, 3.0, 1e3])
    discretise = jax.jit(jax.vmap(lambda dt: discretise_linear_sde(F_OSC, C_OSC, L_OSC, dt)))
    for dt, A, b, chol_Q in zip(np.asarray(gaps), *discretise(gaps), strict=True):
        A_ex = sla.expm(F * dt)
        b_ex = np.linalg.solve(F, (A_ex - np.eye(2)) @ c)
        Q_ex = P_inf - A_ex @ P_inf @ A_ex.T
        np.testing.assert_allclose(A, A_ex, rtol=0, atol=1e-13)
        np.testing.assert_allclose(b, b_ex, rtol=0, atol=1e-13)
        np.testing.assert_allclose(chol_Q @ chol_Q.T, Q_ex, rtol=0, atol=1e-13)
    A, b, chol_Q = (a[0] for a in discretise(gaps))
    np.testing.assert_array_equal(A, np.eye(2))
    np.testing.assert_array_equal(chol_Q, 0.0)
    # differentiable at dt = 0 (the last step of a TimeSeries) and with singular L L^T
    total = jax.jit(jax.grad(lambda F, dt: jnp.sum(discretise_linear_sde(F, C_OSC, L_OSC, dt)[2])))
    for dt in (0.0, 0.7):
        assert np.all(np.isfinite(np.asarray(total(F_OSC, dt))))


def _matern32_sde(variance, lengthscale, noise):
    """The Matérn-3/2 GP as its SDE, written out (not taken from bs.kernels)."""
    lam = np.sqrt(3.0) / lengthscale
    F = jnp.array([[0.0, 1.0], [-(lam**2), -2.0 * lam]])
    L = jnp.array([[0.0, 0.0], [0.0, np.sqrt(4.0 * lam**3 * variance)]])
    P_inf = jnp.diag(jnp.array([variance, lam**2 * variance]))
    return ContinuousDiscreteSSM.linear(
        F, L, m0=jnp.zeros(2), P0=P_inf, H=jnp.array([[1.0, 0.0]]), R=jnp.array([[noise]])
    )


def test_linear_sde_equals_gp_state_space_on_irregular_times():
    """A Matérn-3/2 GP is an LTI SDE: the filter and log-likelihood of the SDE model
    (bs.Kalman by default: it is an AbstractLinearGaussianSSM) equal bs.GPStateSpace's on the
    same irregular series with a missing value, to 1e-8."""
    variance, lengthscale, noise = 1.3, 0.4, 0.05
    gp = bs.GPStateSpace(bs.kernels.Matern32(variance=variance, lengthscale=lengthscale), noise)
    sde = _matern32_sde(variance, lengthscale, noise)
    assert isinstance(sde, LinearContinuousDiscreteSSM)
    series = _irregular_series(jax.random.key(0))
    f_gp, f_sde = bs.filter(gp, series), bs.filter(sde, series)
    np.testing.assert_allclose(f_sde.log_marginal, f_gp.log_marginal, rtol=0, atol=1e-8)
    np.testing.assert_allclose(f_sde.means, f_gp.means, rtol=0, atol=1e-8)
    np.testing.assert_allclose(f_sde.covs, f_gp.covs, rtol=0, atol=1e-8)


@pytest.mark.parametrize(
    "rule",
    [Cubature(), pytest.param(Extended(), marks=pytest.mark.slow)],
    ids=["Cubature", "Extended"],
)
def test_gaussian_filter_on_a_linear_sde_equals_the_exact_filter(rule):
    """bs.GaussianFilter takes the exact path of a linear SDE, and runs the moment ODEs of the
    same SDE written as plain callables: both equal bs.Kalman's exact filter. The ODEs'
    per-gap error is below 100 (rtol + atol) ~ 1e-8 (see tests/inference/test_sde_moments.py);
    the filter passes each gap's error on with a factor of order one, over 19 gaps: 2e-7."""
    series = _irregular_series(jax.random.key(1), num=20)
    exact = _matern32_sde(1.3, 0.4, 0.05)
    expected = bs.filter(exact, series)
    ode = ContinuousDiscreteSSM(
        exact.drift_fn.__call__,
        lambda x, t: exact.diffusion_fn,
        m0=exact.m0,
        P0=exact.P0,
        H=exact.emission_fn.H,
        R=exact.emission_fn.R,
        rtol=1e-10,
        atol=1e-12,
    )
    for model, tol in ((exact, 1e-10), (ode, 2e-7)):
        got = bs.filter(model, series, engine=bs.GaussianFilter(linearization=rule))
        np.testing.assert_allclose(got.log_marginal, expected.log_marginal, rtol=0, atol=tol)
        np.testing.assert_allclose(got.means, expected.means, rtol=0, atol=tol)
        np.testing.assert_allclose(got.covs, expected.covs, rtol=0, atol=tol)


# -- Euler-Maruyama transitions ---------------------------------------------------------------


def _em_moments(F, c, L, x, dt, K):
    """The exact mean and covariance of K Euler-Maruyama substeps of a linear SDE:
    x_{j+1} = (I + F h) x_j + c h + L sqrt(h) z_j."""
    h = dt / K
    M = np.eye(len(x)) + F * h
    m, P = np.asarray(x, float), np.zeros((len(x), len(x)))
    for _ in range(K):
        m = M @ m + c * h
        P = M @ P @ M.T + h * L @ L.T
    return m, P


def test_euler_maruyama_samples_match_the_exact_transition():
    """Over a gap of 0.5 with 256 substeps: the sample mean and covariance of 10 000 draws
    match the scheme's own exact moments within 4 Monte Carlo standard errors; and the scheme's
    bias (its exact moments against the SDE's exact transition, O(h): 0.7 standard errors here,
    2.7 with 64 substeps) is below one standard error, so the draws match the SDE's transition
    within 5 standard errors."""
    K, dt, num = 256, 0.5, 10_000
    F, c, L = np.asarray(F_OSC), np.asarray(C_OSC), np.asarray(L_OSC)
    model = ContinuousDiscreteSSM(
        lambda x, t: F_OSC @ x + C_OSC,
        lambda x, t: L_OSC,
        m0=jnp.zeros(2),
        P0=jnp.eye(2),
        H=H1,
        R=R1,
        num_substeps=K,
    )
    x = jnp.array([0.8, -0.3])
    step = StepInputs(index=jnp.asarray(2), dt=jnp.asarray(dt), time=jnp.asarray(0.4))
    dist = model.transition(x, step)
    assert isinstance(dist, EulerMaruyama)
    draws = np.asarray(
        jax.jit(lambda k: dist.sample(seed=k, sample_shape=(num,)))(jax.random.key(7))
    )
    assert draws.shape == (num, 2)
    m, d = draws.mean(0), draws - draws.mean(0)
    prods = d[:, :, None] * d[:, None, :]
    P = prods.mean(0)
    se_m, se_P = d.std(0) / np.sqrt(num), prods.std(0) / np.sqrt(num)
    m_em, P_em = _em_moments(F, c, L, x, dt, K)
    np.testing.assert_array_less(np.abs(m - m_em), 4 * se_m)
    np.testing.assert_array_less(np.abs(P - P_em), 4 * se_P + 1e-12)
    A, b, chol_Q = discretise_linear_sde(F_OSC, C_OSC, L_OSC, dt)
    m_ex, P_ex = np.asarray(A @ x + b), np.asarray(chol_Q @ chol_Q.T)
    np.testing.assert_array_less(np.abs(m_em - m_ex), se_m)
    np.testing.assert_array_less(np.abs(P_em - P_ex), se_P + 1e-12)
    np.testing.assert_array_less(np.abs(m - m_ex), 5 * se_m)
    np.testing.assert_array_less(np.abs(P - P_ex), 5 * se_P + 1e-12)
    with pytest.raises(NotImplementedError, match="num_substeps=1"):
        dist.log_prob(m)


def test_one_euler_maruyama_substep_is_a_gaussian_with_a_density():
    model = _build(
        drift=lambda x, t: jnp.sin(x) * t,
        diffusion=lambda x, t: jnp.array([[1.0, 0.5], [0.0, 0.0]]) * (1.0 + x[0] ** 2),
        num_substeps=1,
    )
    x, t0, dt = jnp.array([0.3, -1.0]), 2.0, 0.25
    dist = model.transition(x, StepInputs(index=jnp.asarray(0), dt=dt, time=t0))
    assert isinstance(dist, distrax.MultivariateNormalTri)
    L = np.array([[1.0, 0.5], [0.0, 0.0]]) * (1.0 + 0.09)
    np.testing.assert_allclose(dist.mean(), x + np.sin(x) * t0 * dt, rtol=1e-14)
    np.testing.assert_allclose(dist.covariance(), dt * L @ L.T, rtol=0, atol=1e-14)
    # a plain array: step k is at time k * step_size and every gap is step_size
    plain = model.transition(x, StepInputs(index=jnp.asarray(3)))
    np.testing.assert_allclose(plain.mean(), x + np.sin(x) * 3.0, rtol=1e-14)


# -- particle filter, jit / vmap, float32 ----------------------------------------------------


def test_particle_filter_runs_on_a_nonlinear_sde():
    """bs.ParticleFilter on a Van der Pol SDE observed at irregular times (Euler-Maruyama
    substeps, sample-only transitions): finite log-likelihood and means."""
    series = _irregular_series(jax.random.key(2), num=15)
    vdp = ContinuousDiscreteSSM(
        lambda x, t: jnp.array([x[1], (1.0 - x[0] ** 2) * x[1] - x[0]]),
        jnp.diag(jnp.array([0.0, 0.5])),
        m0=jnp.zeros(2),
        P0=jnp.eye(2),
        H=H1,
        R=R1,
        num_substeps=4,
    )
    pf = bs.ParticleFilter(num_particles=500)
    result = bs.filter(vdp, series, engine=pf, key=jax.random.key(0))
    assert np.isfinite(result.log_marginal)
    assert result.means.shape == (15, 2)
    assert np.all(np.isfinite(np.asarray(result.means)))


@pytest.mark.slow
def test_particle_filter_matches_kalman_on_a_linear_sde():
    """On a linear SDE (exact Gaussian transitions) the particle filter's log-likelihood, as a
    mean over 4 independent runs of 2000 particles, agrees with bs.Kalman's within 5 standard
    errors of that mean (plus the known downward bias of a log-likelihood estimate)."""
    series = _irregular_series(jax.random.key(2), num=25)
    pf = bs.ParticleFilter(num_particles=2000)
    exact = _matern32_sde(1.3, 0.4, 0.05)
    expected = bs.log_marginal(exact, series)
    keys = jax.random.split(jax.random.key(5), 4)
    lls = jax.vmap(lambda k: bs.log_marginal(exact, series, engine=pf, key=k))(keys)
    # the log of an unbiased likelihood estimate is biased low by about sd^2 / 2
    sd = float(np.std(np.asarray(lls), ddof=1))
    assert abs(float(np.mean(lls)) - float(expected)) < 5 * sd / np.sqrt(len(keys)) + sd**2 / 2


def test_jit_vmap_and_float32():
    """log_marginal under jax.jit and jax.vmap over a batch of series equals the one-by-one
    values; float32 parameters and data give float32 results (Kalman on the exact path, and
    Euler-Maruyama draws)."""
    sde = _matern32_sde(1.3, 0.4, 0.05)
    batch = [_irregular_series(jax.random.key(k), num=15) for k in range(3)]
    batched = jax.jit(jax.vmap(lambda s: bs.log_marginal(sde, s)))(bs.TimeSeries.stack(batch))
    one_by_one = jnp.stack([bs.log_marginal(sde, s) for s in batch])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-12)

    f32 = jnp.float32
    sde32 = ContinuousDiscreteSSM.linear(
        F_OSC.astype(f32),
        L_OSC.astype(f32),
        m0=jnp.zeros(2, f32),
        P0=jnp.eye(2, dtype=f32),
        H=H1.astype(f32),
        R=R1.astype(f32),
    )
    result = bs.filter(sde32, _irregular_series(jax.random.key(0), num=15, dtype=np.float32))
    assert result.means.dtype == f32 and result.log_marginal.dtype == f32
    assert np.isfinite(result.log_marginal)
    em32 = ContinuousDiscreteSSM(
        lambda x, t: -x,
        jnp.eye(2, dtype=f32),
        m0=jnp.zeros(2, f32),
        P0=jnp.eye(2, dtype=f32),
        H=H1.astype(f32),
        R=R1.astype(f32),
        num_substeps=3,
    )
    step = StepInputs(index=jnp.asarray(0), dt=jnp.asarray(0.5, f32), time=jnp.asarray(1.0, f32))
    draw = em32.transition(jnp.ones(2, f32), step).sample(seed=jax.random.key(1))
    assert draw.dtype == f32 and draw.shape == (2,)
