"""bs.fit_ppg: stochastic-approximation MLE by PaRIS particle Gibbs and Markov score climbing.

A user's scalar AR(1)-plus-noise model (distrax, `bs.Positive` variances) is fitted to data; the
exact maximum-likelihood estimate comes from `bs.fit_mle` with the Kalman filter on the same
model written as a `bs.LinearGaussianSSM`. The default suite runs short fits (a smoke test: both
methods get within 10% of the MLE from a start 40-100% off); the slow test runs longer fits that
must reach 2% per parameter.
"""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bayesssm as bs

A, Q, R = 0.8, 0.5, 1.0


class ScalarAR(bs.AbstractSSM):
    a: jax.Array
    q: bs.Positive
    r: bs.Positive

    def initial(self, inputs=None):
        return distrax.Normal(jnp.zeros_like(self.a), jnp.ones_like(self.a))

    def transition(self, x, inputs=None):
        return distrax.Normal(self.a * x, jnp.sqrt(self.q.value()))

    def emission(self, x, inputs=None):
        return distrax.Normal(x, jnp.sqrt(self.r.value()))


def simulate(num_timesteps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, ys = rng.normal(), []
    for _ in range(num_timesteps):
        ys.append(x + np.sqrt(R) * rng.normal())
        x = A * x + np.sqrt(Q) * rng.normal()
    return np.asarray(ys)[:, None]


def exact_mle(y) -> np.ndarray:
    start = bs.LinearGaussianSSM(A=[[A]], Q=[[1.0]], H=[[1.0]], R=[[0.5]], m0=[0.0], P0=[[1.0]])
    fitted, history = bs.fit_mle(start, y, where=lambda m: (m.Q, m.R), progress=False)
    assert history.converged
    values = bs.unwrap(fitted)
    return np.array([values.Q[0, 0], values.R[0, 0]])


START = ScalarAR(jnp.asarray(A), bs.Positive.from_value(1.0), bs.Positive.from_value(0.5))


def fitted_values(model) -> np.ndarray:
    return np.array([model.q.value(), model.r.value()])


@pytest.fixture(scope="module")
def short_data():
    y = simulate(100, seed=0)
    return y, exact_mle(y)


# A smoke test of the learning loop; the 2% requirement is the slow test's. Over seeds, the fitted
# values after 400 "mle" steps scatter by about 5% around the exact MLE (measured over keys 0-2:
# up to 7%), so 4 such deviations are allowed. MSC's score follows one path (no average over
# particles): noisier, cheaper steps.
@pytest.mark.parametrize("method, num_steps, rtol", [("mle", 400, 0.2), ("msc", 500, 0.1)])
def test_short_fit_approaches_the_exact_mle(short_data, method, num_steps, rtol):
    y, exact = short_data
    fitted, history = bs.fit_ppg(
        START,
        y,
        where=lambda m: (m.q, m.r),
        key=jax.random.key(0),
        num_steps=num_steps,
        num_particles=20,
        method=method,
    )
    np.testing.assert_allclose(fitted_values(fitted), exact, rtol=rtol)
    # The history holds every iterate's values; the model is the average of the last half.
    half = num_steps // 2
    assert history.values[0].shape == (num_steps,) and history.score_norm.shape == (num_steps,)
    assert history.num_averaged == half
    assert history.path.shape == (100,)
    log_q = np.log(np.asarray(history.values[0][half:]))
    np.testing.assert_allclose(np.log(fitted.q.value()), log_q.mean(), rtol=1e-10)


# Markov score climbing's averaged iterate is the noisier: over keys 0-5 its q scattered by
# 2.3% (sd) around the MLE after 1000 steps, 1.2% after 2000 and 0.8% after 6000 (keys 0-3:
# +1.77, +0.26, +0.04, +0.57%), so it runs 6000 steps; "mle" reaches 2% in 1000.
@pytest.mark.slow
@pytest.mark.parametrize(("method", "num_steps"), [("mle", 1000), ("msc", 6000)])
def test_long_fit_reaches_the_exact_mle(method, num_steps):
    y = simulate(300, seed=1)
    exact = exact_mle(y)
    fitted, _ = bs.fit_ppg(
        START,
        y,
        where=lambda m: (m.q, m.r),
        key=jax.random.key(1),
        num_steps=num_steps,
        num_particles=40,
        method=method,
    )
    np.testing.assert_allclose(fitted_values(fitted), exact, rtol=0.02)


def test_bad_input_is_reported():
    y = simulate(10, seed=2)
    where = lambda m: (m.q, m.r)  # noqa: E731
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="method must be one of"):
        bs.fit_ppg(START, y, where=where, key=key, method="em")
    with pytest.raises(ValueError, match="sampler must be one of"):
        bs.fit_ppg(START, y, where=where, key=key, method="msc", sampler="trace")
    with pytest.raises(ValueError, match="num_particles must be an int of at least 2"):
        bs.fit_ppg(START, y, where=where, key=key, num_particles=1)
    with pytest.raises(ValueError, match="average_fraction must be in"):
        bs.fit_ppg(START, y, where=where, key=key, average_fraction=1.0)
    with pytest.raises(ValueError, match="not a fittable leaf"):
        bs.fit_ppg(START, y, where=lambda m: (m.q, 1.0), key=key)
    with pytest.raises(ValueError, match="pass key="):
        bs.fit_ppg(START, y, where=where, key=None, optimizer=optax.sgd(0.1))
