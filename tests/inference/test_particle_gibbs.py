"""Particle Gibbs (ancestor and backward sampling) and PaRIS particle Gibbs against exact answers.

A linear-Gaussian model with a 2-D state, one observation a step and missing entries: the
chains' smoothing means and variances must match the Kalman (RTS) smoother, and the PPG estimate
of an additive functional the dense Gaussian oracle. Chains are autocorrelated, so standard
errors come from the spread across independent chains (one `vmap`, one compilation), and the
tolerance is 4.5 of them; chains start from a fixed path (a poor one, the zero path, or a
particle filter's path), so they must also forget their start during warm-up. PaRIS particle
Gibbs runs on a user's scalar-state model (states of shape ()).
"""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import dense_gaussian as dense

import bayesssm as bs

T = 25
CHAINS = 24
MODEL = dict(
    A=[[0.9, 0.2], [0.0, 0.7]],
    Q=[[0.4, 0.1], [0.1, 0.3]],
    H=[[1.0, 0.5]],
    R=[[0.5]],
    m0=[0.0, 0.5],
    P0=[[1.0, 0.0], [0.0, 0.5]],
)


def simulate(rng, A, Q, H, R, m0, P0, num_timesteps):
    """y from a linear-Gaussian model, in NumPy (no program to compile)."""
    A, Q, H, R, m0, P0 = (np.asarray(v, float) for v in (A, Q, H, R, m0, P0))
    x = rng.multivariate_normal(m0, P0)
    ys = []
    for _ in range(num_timesteps):
        ys.append(H @ x + rng.multivariate_normal(np.zeros(len(R)), R))
        x = A @ x + rng.multivariate_normal(np.zeros(len(Q)), Q)
    return np.stack(ys)


@pytest.fixture(scope="module")
def problem():
    model = bs.LinearGaussianSSM(**MODEL)
    y = simulate(np.random.default_rng(0), *MODEL.values(), T)
    y[[4, 11, 12, 20]] = np.nan  # whole rows missing: pure prediction steps
    return model, y


def _z_scores(per_chain: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """(chain average - exact) / its standard error from the spread across chains."""
    error = per_chain.std(axis=0, ddof=1) / np.sqrt(per_chain.shape[0])
    return (per_chain.mean(axis=0) - exact) / error


@pytest.mark.parametrize("method", ["ancestor", "backward"])
def test_particle_gibbs_matches_the_rts_smoother(problem, method):
    model, y = problem
    smoothed = bs.smooth(model, y)
    # ancestor: the default start (a particle filter's path); backward: the zero path
    start = None if method == "ancestor" else np.zeros((T, 2))

    def chain(key):
        return bs.particle_gibbs(
            model,
            y,
            key=key,
            num_samples=150,
            num_particles=20,
            method=method,
            initial_path=start,
            num_warmup=20,
        )

    result = jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(1), CHAINS))
    paths = np.asarray(result.paths)  # (C, S, T, 2)
    assert paths.shape == (CHAINS, 150, T, 2)
    means = np.asarray(smoothed.means)
    variances = np.diagonal(np.asarray(smoothed.covs), axis1=1, axis2=2)
    # Per chain: the mean, and the mean square about the exact mean (unbiased for the variance).
    chain_means = paths.mean(axis=1)
    chain_squares = ((paths - means) ** 2).mean(axis=1)
    assert np.max(np.abs(_z_scores(chain_means, means))) < 4.5
    assert np.max(np.abs(_z_scores(chain_squares, variances))) < 4.5
    # Both moves renew the path at every step in most iterations with 20 particles.
    rate = np.asarray(result.update_rate)
    assert rate.shape == (CHAINS, T)
    assert np.all(rate.mean(axis=0) > 0.5)


class ScalarAR(bs.AbstractSSM):
    """x_t = a x_{t-1} + N(0, q), y_t = x_t + N(0, r): scalar states, a user's own model."""

    a: jax.Array
    q: jax.Array
    r: jax.Array

    def initial(self, inputs=None):
        return distrax.Normal(jnp.zeros_like(self.a), jnp.ones_like(self.a))

    def transition(self, x, inputs=None):
        return distrax.Normal(self.a * x, jnp.sqrt(self.q))

    def emission(self, x, inputs=None):
        return distrax.Normal(x, jnp.sqrt(self.r))


def test_paris_particle_gibbs_matches_the_dense_oracle():
    a, q, r = 0.8, 0.5, 0.4
    model = ScalarAR(jnp.asarray(a), jnp.asarray(q), jnp.asarray(r))
    y = simulate(np.random.default_rng(5), [[a]], [[q]], [[1.0]], [[r]], [0.0], [[1.0]], T)
    y[[3, 15]] = np.nan
    spec = dict(A=[[a]], Q=[[q]], H=[[1.0]], R=[[r]], m0=[0.0], P0=[[1.0]])
    cond = dense.condition(dense.joint_gaussian(T, **spec), y)
    mean, cov = cond.mean[:T], cond.cov[:T, :T]
    # sum_t E[x_{t-1} x_t] plus E[x_0^2]; and sum_t E[x_t].
    cross = np.trace(cov, offset=1) + mean[:-1] @ mean[1:] + cov[0, 0] + mean[0] ** 2
    exact = {"cross": cross, "sum": mean.sum()}

    def h(x_prev, x, t):
        return {"cross": x_prev * x, "sum": x}

    def h0(x0):
        return {"cross": x0**2, "sum": x0}

    def chain(key):
        return bs.paris_particle_gibbs(
            model,
            y,
            h,
            key=key,
            num_samples=60,
            num_particles=20,
            num_backward=2,
            initial_functional=h0,
            initial_path=jnp.zeros(T),
            num_warmup=10,
        )

    result = jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(2), CHAINS))
    assert result.estimates["sum"].shape == (CHAINS, 60)
    assert result.path.shape == (CHAINS, T)
    for name in ("cross", "sum"):
        per_chain = np.asarray(result.estimate[name])
        assert np.abs(_z_scores(per_chain, exact[name])) < 4.5, name


def test_bad_input_is_reported_before_tracing(problem):
    model, y = problem
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_particles must be an int of at least 2"):
        bs.particle_gibbs(model, y, key=key, num_samples=10, num_particles=1)
    with pytest.raises(ValueError, match="method must be one of"):
        bs.particle_gibbs(model, y, key=key, num_samples=10, method="trace")
    with pytest.raises(ValueError, match=r"initial_path must have shape \(T, \*E\) = \(25, 2\)"):
        bs.particle_gibbs(model, y, key=key, num_samples=10, initial_path=np.zeros((25,)))
    with pytest.raises(ValueError, match="num_warmup must be a non-negative int"):
        bs.particle_gibbs(model, y, key=key, num_samples=10, num_warmup=-1)
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        bs.particle_gibbs(model, y, key=key, num_samples=0)
    with pytest.raises(ValueError, match="pass key="):
        bs.particle_gibbs(model, y, key=None, num_samples=10)
    with pytest.raises(TypeError, match="functional must be a function"):
        bs.paris_particle_gibbs(model, y, 3.0, key=key, num_samples=10)
    with pytest.raises(ValueError, match="num_backward must be a positive int"):
        bs.paris_particle_gibbs(
            model, y, lambda a, b, t: a, key=key, num_samples=10, num_backward=0
        )
