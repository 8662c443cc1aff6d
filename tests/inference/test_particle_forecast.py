"""Particle forecasts against the Kalman engine's exact predictive moments."""

import jax
import jax.numpy as jnp
import numpy as np

import bayesssm as bs


def _model():
    return bs.LinearGaussianSSM(
        A=np.array([[0.9, 0.1], [0.0, 0.8]]),
        Q=0.3 * np.eye(2),
        H=np.array([[1.0, 0.5], [0.2, 1.0]]),
        R=0.5 * np.eye(2),
        m0=np.zeros(2),
        P0=np.eye(2),
    )


def test_forecast_moments_match_kalman_within_monte_carlo_error():
    model = _model()
    _, y = model.sample(jax.random.key(0), num_timesteps=30)
    exact = bs.forecast(model, y, 4)
    engine = bs.ParticleFilter(num_particles=2000)
    keys = jax.random.split(jax.random.key(1), 48)
    runs = jax.jit(jax.vmap(lambda k: bs.forecast(model, y, 4, engine=engine, key=k)))(keys)
    # Each run's moments are self-normalised estimates (bias O(1/N), far below the spread of
    # the R runs at N = 2000); the mean over runs is compared within 4 standard errors.
    for name in ("means", "covs", "obs_means", "obs_covs"):
        draws = np.asarray(getattr(runs, name))
        se = draws.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])
        error = np.abs(draws.mean(axis=0) - np.asarray(getattr(exact, name)))
        assert np.all(error <= 4 * se + 1e-12), (name, np.max(error / (se + 1e-300)))


def test_forecast_shapes_for_a_scalar_state_model():
    model = bs.LinearGaussianSSM(A=[[0.5]], Q=[[1.0]], H=[[1.0]], R=[[0.1]], m0=[0.0], P0=[[1.0]])
    _, y = model.sample(jax.random.key(0), num_timesteps=10)
    fc = bs.forecast(model, y, 3, engine=bs.ParticleFilter(num_particles=50), key=jax.random.key(2))
    assert fc.means.shape == (3, 1) and fc.covs.shape == (3, 1, 1)
    assert fc.obs_means.shape == (3, 1) and fc.obs_covs.shape == (3, 1, 1)
    assert jnp.all(jnp.isfinite(fc.obs_covs))
