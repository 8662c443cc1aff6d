"""Gaussian approximate engines: exact on linear-Gaussian models, close to a long particle filter
on mildly nonlinear ones, parallel = sequential, jit / vmap / float32, fitting, bad input."""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bayesssm as bs

RULES = {
    "ekf": bs.Extended(),
    "ut": bs.Unscented(),
    "cub": bs.Cubature(),
    "gh": bs.GaussHermite(3),
}


class Pendulum(bs.AbstractSSM):
    """Noisy pendulum (Särkkä's example): x = (angle, rate), y = sin(angle) + noise."""

    dt: jax.Array
    g: jax.Array
    q: jax.Array
    r: jax.Array
    m0: jax.Array
    s0: jax.Array

    def initial(self, inputs=None):
        return distrax.MultivariateNormalDiag(self.m0, self.s0)

    def transition(self, x, inputs=None):
        dt = self.dt
        Q = self.q * jnp.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]], dt.dtype)
        mean = jnp.stack([x[0] + dt * x[1], x[1] - self.g * dt * jnp.sin(x[0])])
        return distrax.MultivariateNormalTri(mean, jnp.linalg.cholesky(Q))

    def emission(self, x, inputs=None):
        return distrax.Normal(jnp.sin(x[:1]), jnp.sqrt(self.r))


def pendulum(r=0.01, q=0.1, s0=0.1, dtype=jnp.float64):
    def a(v):
        return jnp.asarray(v, dtype)

    return Pendulum(a(0.1), a(9.81), a(q), a(r), a([1.0, 0.0]), a([s0, s0]))


def _linear_gaussian(singular_q: bool):
    rng = np.random.default_rng(0)
    A = 0.9 * np.eye(3) + 0.05 * rng.standard_normal((3, 3))
    Q = np.diag([0.0, 0.2, 0.0]) if singular_q else np.diag([0.1, 0.2, 0.05])
    H = rng.standard_normal((2, 3))
    lg = bs.LinearGaussianSSM(A=A, Q=Q, H=H, R=0.3 * np.eye(2) + 0.1, m0=np.zeros(3), P0=np.eye(3))
    _, y = lg.sample(jax.random.key(0), num_timesteps=25)
    y = np.array(y)
    y[5] = np.nan
    y[9, 1] = np.nan
    return lg, y


def _engines(slow: bool):
    """Every rule x {filter, iterated sequential, iterated parallel}; the default suite runs a
    subset that still covers every rule and both modes (the rest is marked slow)."""
    engines = {}
    for k, rule in RULES.items():
        engines[f"filter-{k}"] = bs.GaussianFilter(rule)
        for p in (False, True):
            name = f"iterated-{k}-{'par' if p else 'seq'}"
            engines[name] = bs.IteratedSmoother(rule, num_iterations=2, parallel=p)
    if slow:
        return engines
    fast = ("filter-ekf", "filter-cub", "iterated-ut-par", "iterated-gh-seq")
    return {k: engines[k] for k in fast}


def _check_linear_gaussian(engine):
    for singular in (False, True):  # same shapes: the compiled programs are shared
        lg, y = _linear_gaussian(singular)
        ref = bs.smooth(lg, y, engine=bs.Kalman(parallel=False))
        s = bs.smooth(lg, y, engine=engine)
        for got, want in [
            (s.means, ref.means),
            (s.covs, ref.covs),
            (s.filtered.means, ref.filtered.means),
            (s.filtered.covs, ref.filtered.covs),
        ]:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(s.log_marginal, ref.log_marginal, rtol=1e-10)
        np.testing.assert_allclose(
            bs.log_marginal(lg, y, engine=engine), ref.log_marginal, rtol=1e-10
        )


@pytest.mark.parametrize("name", list(_engines(False)))
def test_exact_on_linear_gaussian_models(name):
    # Every rule linearizes an affine-Gaussian model exactly, so only rounding separates the
    # engines from bs.Kalman (errors ~1e-14 at these sizes).
    _check_linear_gaussian(_engines(False)[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in _engines(True) if n not in _engines(False)])
def test_exact_on_linear_gaussian_models_all_rules(name):
    _check_linear_gaussian(_engines(True)[name])


def _pendulum_data(T=30, key=1, **kw):
    model = pendulum(**kw)
    x, y = model.sample(jax.random.key(key), num_timesteps=T)
    return model, np.asarray(x), np.asarray(y)


def test_parallel_equals_sequential_on_a_nonlinear_model():
    model, _, y = _pendulum_data(r=0.1, q=0.5, s0=0.3)
    for rule in (bs.Extended(), bs.Cubature()):
        seq = bs.smooth(model, y, engine=bs.IteratedSmoother(rule, parallel=False))
        par = bs.smooth(model, y, engine=bs.IteratedSmoother(rule, parallel=True))
        np.testing.assert_allclose(par.means, seq.means, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(par.covs, seq.covs, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(par.log_marginal, seq.log_marginal, rtol=1e-8)


# Tolerance against the particle filter, in units of the particle posterior's sd: 0.5.
# Monte Carlo: with N = 10^4 particles the smallest ESS is ~2400, so a filter mean's error is
# below 4 / sqrt(2400) ~ 0.08 sd; 400 smoothing paths give at most 4 / sqrt(400) = 0.2 sd.
# Approximation: on this pendulum (angle sd <= 0.2, so sin is nearly linear over the
# posterior: the second-order term 0.5 |sin''| P / sd <= 0.5 * 0.2 = 0.1 sd per step, which the
# dynamics partly carry over) the Gaussian engines' mean error stays near 0.1-0.45 sd (measured:
# EKF 0.36, UKF 0.21, iterated filters 0.44; smoothers 0.11-0.34). 0.5 covers both sums.
PF_TOL = 0.5


def test_filters_agree_with_a_long_particle_filter():
    model, _, y = _pendulum_data()
    pf = bs.filter(model, y, engine=bs.ParticleFilter(num_particles=10_000), key=jax.random.key(2))
    sd = np.sqrt(pf.variances)
    for engine in [
        bs.GaussianFilter(),
        bs.GaussianFilter(bs.Unscented()),
        bs.IteratedSmoother(),
        bs.IteratedSmoother(bs.Cubature()),
    ]:
        f = bs.filter(model, y, engine=engine)
        assert np.max(np.abs(f.means - pf.means) / sd) < PF_TOL, engine


@pytest.mark.slow
def test_smoothers_agree_with_a_particle_smoother():
    model, _, y = _pendulum_data()
    pfe = bs.ParticleFilter(
        num_particles=10_000, num_smoothing_paths=400, smoother="ffbs_rejection"
    )
    ps = bs.smooth(model, y, engine=pfe, key=jax.random.key(3))
    sd = np.sqrt(ps.variances)
    for engine in [
        bs.GaussianFilter(),
        bs.GaussianFilter(bs.Unscented()),
        bs.IteratedSmoother(),
        bs.IteratedSmoother(bs.Cubature()),
    ]:
        s = bs.smooth(model, y, engine=engine)
        assert np.max(np.abs(s.means - ps.means) / sd) < PF_TOL, engine


def test_iterated_smoother_is_no_worse_than_the_extended_smoother():
    # A vague start and noisy measurements of sin(angle): the EKS linearizes at poor filtered
    # means, the Gauss-Newton iterations at the smoothed ones. RMSE over 8 series, fixed seeds.
    model = pendulum(r=0.1, q=0.5, s0=0.5)
    keys = jax.random.split(jax.random.key(7), 8)
    xs, ys = jax.vmap(lambda k: model.sample(k, num_timesteps=40))(keys)

    def rmse(engine):
        means = jax.vmap(lambda y: bs.smooth(model, y, engine=engine).means)(ys)
        return float(jnp.sqrt(jnp.mean((means - xs) ** 2)))

    eks, ieks = rmse(bs.GaussianFilter()), rmse(bs.IteratedSmoother())
    assert ieks <= eks, (ieks, eks)


def test_poisson_counts_by_statistical_linear_regression():
    model = bs.models.PoissonAR1(mu=1.0, phi=0.8, sigma=0.4)
    _, y = model.sample(jax.random.key(4), num_timesteps=40)
    pf = bs.filter(model, y, engine=bs.ParticleFilter(num_particles=10_000), key=jax.random.key(5))
    sd = np.sqrt(pf.variances)
    # SLR rules only: the extended rule linearizes exp at the mean and measured 0.57 sd off.
    for rule in (bs.GaussHermite(5), bs.Unscented()):
        f = bs.filter(model, y, engine=bs.GaussianFilter(rule))
        assert f.means.shape == (40, 1)
        # A log-rate of sd ~0.3 given counts ~e^1: Gaussian posteriors are good; same 0.5 sd
        # budget as above (MC error <= 0.08 sd).
        assert np.max(np.abs(f.means - pf.means) / sd) < PF_TOL, rule


def test_jit_vmap_and_float32():
    model, _, y = _pendulum_data()
    engine = bs.IteratedSmoother(num_iterations=3)
    ys = jnp.stack([y, y[::-1]])
    batch = jax.jit(jax.vmap(lambda y: bs.smooth(model, y, engine=engine).means))(ys)
    np.testing.assert_allclose(batch[0], bs.smooth(model, y, engine=engine).means, rtol=1e-12)
    m32 = pendulum(dtype=jnp.float32)
    for engine in (bs.GaussianFilter(bs.Cubature()), bs.IteratedSmoother(num_iterations=3)):
        s = bs.smooth(m32, y.astype(np.float32), engine=engine)
        assert s.means.dtype == jnp.float32 and s.log_marginal.dtype == jnp.float32
        s64 = bs.smooth(model, y, engine=engine)
        np.testing.assert_allclose(s.means, s64.means, atol=1e-3)


def test_scalar_state_sampling_and_forecast():
    model = bs.models.NonlinearGrowth()
    _, y = model.sample(jax.random.key(0), num_timesteps=20)
    engine = bs.GaussianFilter(bs.Unscented())
    s = bs.smooth(model, y, engine=engine)
    assert s.means.shape == (20, 1) and s.covs.shape == (20, 1, 1)
    paths = bs.sample_posterior(model, y, engine=engine, key=jax.random.key(1), num_samples=4000)
    assert paths.shape == (4000, 20, 1)
    # the linearized model's paths have the smoother's marginals: 5 sd of the sample mean
    err = np.abs(paths.mean(0) - s.means) / np.sqrt(np.diagonal(s.covs, axis1=1, axis2=2))
    assert err.max() < 5 / np.sqrt(4000) * 1.5
    fc = bs.forecast(model, y, 3, engine=engine)
    assert fc.means.shape == (3, 1) and fc.obs_covs.shape == (3, 1, 1)
    assert np.all(np.isfinite(fc.obs_covs))


def test_fit_mle_improves_the_approximate_likelihood():
    truth = bs.models.PoissonAR1(mu=1.0, phi=0.8, sigma=0.4)
    _, y = truth.sample(jax.random.key(11), num_timesteps=50)
    start = bs.models.PoissonAR1(mu=0.0, phi=0.3, sigma=1.0)
    engine = bs.GaussianFilter(bs.GaussHermite(5))
    fitted, history = bs.fit_mle(
        start,
        y,
        where=lambda m: (m.mu, m.phi, m.sigma),
        engine=engine,
        optimizer=optax.adam(5e-2),
        num_steps=100,
        progress=False,
    )
    before = bs.log_marginal(start, y, engine=engine)
    after = bs.log_marginal(fitted, y, engine=engine)
    assert np.isfinite(after) and after > before + 1.0


def test_bad_input():
    model, _, y = _pendulum_data(T=5)
    with pytest.raises(TypeError, match="linearization"):
        bs.GaussianFilter(linearization="ekf")
    with pytest.raises(ValueError, match="num_iterations"):
        bs.IteratedSmoother(num_iterations=0)
    with pytest.raises(ValueError, match="order"):
        bs.IteratedSmoother(bs.GaussHermite(order=0))

    class Categorical(bs.AbstractSSM):
        def initial(self, inputs=None):
            return distrax.Normal(0.0, 1.0)

        def transition(self, x, inputs=None):
            return distrax.Normal(x, 1.0)

        def emission(self, x, inputs=None):
            return distrax.Categorical(logits=jnp.stack([x, -x]))

    with pytest.raises(TypeError, match="Categorical"):
        bs.filter(Categorical(), np.zeros(5), engine=bs.GaussianFilter())
