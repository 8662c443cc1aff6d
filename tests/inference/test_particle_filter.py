r"""The particle filter against exact answers: Kalman on linear-Gaussian models, `particles`.

Monte Carlo tolerances. Each check runs R independent filters (one compiled `vmap` over keys per
engine, reused by every test and data set of the same shape) and compares an average over the
runs with the exact value within Z standard errors, the standard error computed from the R runs.
Measured on these data (systematic resampling, 2048-4096 runs per N): N Var($\hat\ell$) is
23, 23, 23, 22 on the complete data and 17, 18, 17, 16 on the data with missing values at
N = 64, 128, 256, 512; the largest bias of a filtering mean is ~5 sd / N (sd: the filtering
standard deviation; all steps and entries), and a run's variance is kappa sd^2 / N, kappa ~ 2.
- Likelihood: $\hat Z = \hat p(y)$ is unbiased for every proposal, resampling scheme and
  threshold, so $E[\exp(\hat\ell - \ell)] = 1$ with $\ell$ the exact (Kalman) log-likelihood;
  Z = 3. N = 256 keeps sd($\hat\ell$) at 0.3 or below, where $\exp(\hat\ell - \ell)$ is
  nearly Gaussian and its sample standard error reliable (at sd ~0.5 its right tail is heavy
  and a few dozen runs underestimate the mean and its standard error).
- Its variance falls like 1/N (N Var is flat above from N = 64 on): for R runs at N = 64 and
  at 4N = 256 (sd 0.5 and 0.3: their exponentials are skewed, the logs nearly Gaussian), the
  ratio of the sample variances of $\hat\ell$, divided by 4, is F(R - 1, R - 1)-distributed
  for Gaussian $\hat\ell$ (asymptotically so, by the CLT for particle filters); it must lie
  between the 0.1% and 99.9% F quantiles.
- Filtering means and second moments, default suite: the self-normalised estimates
  $\hat\pi_t(\phi)$ are biased by O(1/N), but $E[\hat Z_{0:t}\, \hat\pi_t(\phi)] =
  Z_{0:t}\, \pi_t(\phi)$ exactly for any N (the unnormalised particle measure is unbiased,
  with adaptive resampling and for auxiliary filters too), so
  $(\hat Z_{0:t} / Z_{0:t}) (\hat\pi_t(\phi) - \pi_t(\phi))$, with $\phi = x$ and
  $\phi = x^2$, has mean exactly zero: no bias to account for.
- Filtering means and variances, slow suite: the plain average of R runs against Kalman. With
  the bias and kappa above, bias / SE <= 5 sqrt(R / (kappa N)) = 0.31 at the worst entry for
  N = 8192 and R = 64: far below the tolerance.
Many entries: a check of the means and the second moments at every step compares 2 T D = 120
entries, and at Z = 4 a correct filter would fail one of them with probability 1-2% (t tails
of R - 1 degrees of freedom: 1.3e-4 per entry at R = 64), about 25% over the slow suite's 16
such checks (it happened: a 4.08 SE entry at R = 64, which 1024 fresh runs put at -0.7 SE). So
these checks take Z = max(4, the Bonferroni t quantile for a family-wise rate of 1e-3 over
their entries): 4.55 at R = 256 and 4.85 at R = 64 for 120 entries (`z_entries`). The keys are
fixed, so every outcome is deterministic; the rates say how unlikely a failure of a correct
filter is for a key drawn at random.
"""

from __future__ import annotations

import functools
import warnings

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import particles
import pytest
import scipy.stats
from particles import state_space_models as pssm

import bayesssm as bs
from bayesssm.inference._observed_log_prob import observed_log_likelihoods
from bayesssm.models import StochasticVolatility

T, D, M = 30, 2, 2
A = np.array([[0.9, 0.2], [-0.1, 0.8]])
Q = np.array([[0.3, 0.05], [0.05, 0.2]])
H = np.array([[1.0, 0.0], [0.5, 1.0]])
R = np.array([[3.0, 0.9], [0.9, 3.9]])
M0 = np.array([0.5, -0.5])
P0 = np.array([[1.0, 0.2], [0.2, 0.5]])
MODEL = bs.LinearGaussianSSM(A=A, Q=Q, H=H, R=R, m0=M0, P0=P0)

# Whole rows missing at 7, 12 and 13 (pure prediction steps, two in a row), single entries
# missing at 0, 4, 20 and 25.
MISSING_ROWS = (7, 12, 13)
MISSING_ENTRIES = ((0, 1), (4, 0), (20, 1), (25, 0))

Z_MEAN = 4.0
Z_LIKELIHOOD = 3.0


def z_entries(num_runs: int, num_entries: int, rate: float = 1e-3) -> float:
    """Z for `num_entries` comparisons of means of `num_runs` runs: at least Z_MEAN, and wide
    enough that a correct filter fails any of them with probability at most `rate`."""
    bonferroni = scipy.stats.t.ppf(1 - rate / (2 * num_entries), num_runs - 1)
    return max(Z_MEAN, float(bonferroni))


def simulate_linear_gaussian(rng, length, A, Q, H, R, m0, P0):
    """x (T, D), y (T, M) from x_0 ~ N(m0, P0), x_t = A x_{t-1} + N(0, Q), y_t = H x_t + N(0, R),
    in NumPy (no compilation)."""
    x = [rng.multivariate_normal(m0, P0)]
    for _ in range(length - 1):
        x.append(rng.multivariate_normal(A @ x[-1], Q))
    x = np.asarray(x)
    return x, x @ H.T + rng.multivariate_normal(np.zeros(len(R)), R, size=length)


@functools.cache
def data() -> dict[str, jax.Array]:
    _, y = simulate_linear_gaussian(np.random.default_rng(0), T, A, Q, H, R, M0, P0)
    missing = y.copy()
    missing[list(MISSING_ROWS)] = np.nan
    for t, i in MISSING_ENTRIES:
        missing[t, i] = np.nan
    return {"complete": jnp.asarray(y), "missing": jnp.asarray(missing)}


@functools.cache
def kalman(name: str):
    return bs.filter(MODEL, data()[name])


def _chol(matrix: np.ndarray) -> jax.Array:
    return jnp.asarray(np.linalg.cholesky(matrix))


# A guided proposal: the transition's mean moved half-way by a fixed gain towards the observed
# entries of y (NaN where missing), with covariance 2.25 Q, which dominates both the
# transition's and the locally optimal covariance, so the weights stay bounded.
GAIN = Q @ H.T @ np.linalg.inv(H @ Q @ H.T + R)


def guided(x_prev, y, inputs):
    predicted = jnp.asarray(A) @ x_prev
    residual = jnp.where(jnp.isnan(y), 0.0, y - jnp.asarray(H) @ predicted)
    return distrax.MultivariateNormalTri(
        predicted + 0.5 * jnp.asarray(GAIN) @ residual, 1.5 * _chol(Q)
    )


def guided_initial(y, inputs):
    return distrax.MultivariateNormalTri(jnp.asarray(M0), 1.5 * _chol(P0))


def _engines(num: int) -> dict[str, bs.ParticleFilter]:
    return {
        "systematic": bs.ParticleFilter(num, "systematic"),
        "stratified": bs.ParticleFilter(num, "stratified", ess_threshold=1.0),
        "multinomial": bs.ParticleFilter(num, "multinomial"),
        "residual": bs.ParticleFilter(num, "residual", ess_threshold=1.0),
        "guided": bs.ParticleFilter(num, proposal=guided, initial_proposal=guided_initial),
        "optimal": bs.ParticleFilter(num, proposal="optimal"),
        "auxiliary": bs.ParticleFilter(num, auxiliary=True),
        "auxiliary_optimal": bs.ParticleFilter(
            num, proposal="optimal", auxiliary=True, ess_threshold=1.0
        ),
    }


N_FAST, N_SLOW = 256, 8192
ENGINES = {(name, num): e for num in (N_FAST, N_SLOW) for name, e in _engines(num).items()}
ENGINES["systematic", N_FAST // 4] = bs.ParticleFilter(N_FAST // 4)  # the 1/N check
# Every engine runs on both data sets in the slow suite. The default suite leaves out three
# resampling schemes (tests/inference/test_resampling.py checks them; the filter only looks
# them up by name) to save their compilation, and runs the others on the data with missing
# values (whose observed rows are the complete data's).
FAST = [
    ("systematic", "complete"),
    ("systematic", "missing"),
    ("guided", "missing"),
    ("optimal", "missing"),
    ("auxiliary", "missing"),
    ("auxiliary_optimal", "missing"),
]


@functools.cache
def _runner(name: str, num: int):
    engine = ENGINES[name, num]

    def one(key, y):
        result = bs.filter(MODEL, y, engine=engine, key=key)
        return result.means, result.variances, result.log_marginal, result.log_marginals

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def runs(name: str, num: int, data_name: str, num_runs: int, seed: int):
    keys = jax.random.split(jax.random.key(seed), num_runs)
    return tuple(np.asarray(a) for a in _runner(name, num)(keys, data()[data_name]))


def assert_within(samples: np.ndarray, target, z: float, what: str) -> None:
    """The mean of `samples` (R, ...) within z standard errors (from the samples) of `target`."""
    mean = samples.mean(0)
    se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    score = np.abs(mean - target) / se
    assert np.all(np.isfinite(score)), f"{what}: non-finite scores"
    worst = np.unravel_index(np.argmax(score), score.shape)
    assert np.all(score <= z), f"{what}: |error| = {score[worst]:.2f} se at {worst}"


def assert_unbiased_likelihood(log_liks: np.ndarray, exact, z: float, what: str):
    assert np.all(np.isfinite(log_liks)), what
    assert_within(np.exp(log_liks - exact), 1.0, z, what)


def f_band(num_a: int, num_b: int, level: float = 1e-3) -> tuple[float, float]:
    """Central (1 - 2 level) interval of F(num_a - 1, num_b - 1): a ratio of sample variances."""
    dist = scipy.stats.f(num_a - 1, num_b - 1)
    return float(dist.ppf(level)), float(dist.ppf(1 - level))


def _exact_moments(data_name: str):
    exact = kalman(data_name)
    means = np.asarray(exact.means)
    return means, np.diagonal(np.asarray(exact.covs), axis1=1, axis2=2), exact


# -- linear-Gaussian model against Kalman -------------------------------------------------------


@pytest.mark.parametrize(("name", "data_name"), FAST)
def test_filtering_moments_match_kalman(name, data_name):
    """Exact identity E[Z_hat_{0:t} / Z_{0:t} (pi_hat_t(phi) - pi_t(phi))] = 0, any N."""
    out = runs(name, N_FAST, data_name, 256, seed=1)
    assert_moments_identity(*out, data_name, name)


def assert_moments_identity(means, variances, log_liks, log_marginals, data_name, name):
    exact_means, exact_vars, exact = _exact_moments(data_name)
    ratio = np.exp(np.cumsum(log_marginals, 1) - np.cumsum(np.asarray(exact.log_marginals)))
    ratio = ratio[:, :, None]  # (R, T, 1)
    what = f"{name} on {data_name} data"
    z = z_entries(means.shape[0], 2 * means[0].size)
    assert_within(ratio * (means - exact_means), 0.0, z, f"{what}: means")
    second = variances + means**2 - (exact_vars + exact_means**2)
    assert_within(ratio * second, 0.0, z, f"{what}: second moments")
    # every engine's likelihood estimate is unbiased (Z = 4 here: one check per engine)
    assert_unbiased_likelihood(log_liks, float(exact.log_marginal), Z_MEAN, f"{what}: p(y)")


@pytest.mark.parametrize("name", ["systematic", "optimal"])
def test_draws_in_padded_blocks(name, monkeypatch):
    """Randomness drawn for blocks of 5 steps: 29 moves make 6 blocks, the last one padded.
    The padding must leave the carry (the last particles and weights) as the last real step
    left it, and the filter must stay exact in the sense of the identity above."""
    from bayesssm.inference import _particle_filter

    engine = ENGINES[name, N_FAST]
    noise = N_FAST * D if name == "optimal" else 0  # the bootstrap moves of MODEL draw by key
    monkeypatch.setattr(_particle_filter, "DRAWS_PER_BLOCK", 5 * (1 + noise))
    assert _particle_filter._blocks(T - 1, 1 + noise) == (6, 5)

    def one(key, y):
        r = bs.filter(MODEL, y, engine=engine, key=key)
        return r.means, r.variances, r.log_marginal, r.log_marginals, r.particles, r.log_weights

    keys = jax.random.split(jax.random.key(5), 256)
    run = jax.jit(jax.vmap(one, in_axes=(0, None)))
    out = [np.asarray(a) for a in run(keys, data()["missing"])]
    means, _, _, _, particles, log_weights = out
    last_means = np.sum(np.exp(log_weights)[..., None] * particles, axis=1)
    np.testing.assert_allclose(last_means, means[:, -1], rtol=1e-12, atol=1e-12)
    assert_moments_identity(*out[:4], "missing", f"{name} in blocks")


@pytest.mark.slow
@pytest.mark.parametrize("data_name", ["complete", "missing"])
@pytest.mark.parametrize("name", list(_engines(1)))
def test_filtering_moments_match_kalman_plain_average(name, data_name):
    """The plain average of R runs; N large enough that the O(1/N) bias is far below the SE."""
    means, variances, log_liks, _ = runs(name, N_SLOW, data_name, 64, seed=2)
    exact_means, exact_vars, exact = _exact_moments(data_name)
    what = f"{name} on {data_name} data"
    z = z_entries(means.shape[0], 2 * means[0].size)
    assert_within(means, exact_means, z, f"{what}: means")
    assert_within(variances, exact_vars, z, f"{what}: variances")
    assert_unbiased_likelihood(log_liks, float(exact.log_marginal), Z_MEAN, f"{what}: p(y)")


def _check_likelihood(data_name: str, num_runs: int, seed: int):
    exact = kalman(data_name)
    small = runs("systematic", N_FAST // 4, data_name, num_runs, seed)
    large = runs("systematic", N_FAST, data_name, num_runs, seed + 1)
    what = f"N={N_FAST} on {data_name} data"
    assert_unbiased_likelihood(large[2], float(exact.log_marginal), Z_LIKELIHOOD, what)
    # a fully missing row is a pure prediction: it adds exactly nothing
    if data_name == "missing":
        for _, _, _, log_marginals in (small, large):
            np.testing.assert_allclose(log_marginals[:, MISSING_ROWS], 0.0, atol=1e-12)
    ratio = np.var(small[2], ddof=1) / np.var(large[2], ddof=1)
    low, high = f_band(num_runs, num_runs)
    assert 4 * low <= ratio <= 4 * high, (ratio, 4 * low, 4 * high)
    return ratio


def test_log_likelihood_unbiased_and_variance_falls_as_one_over_n():
    _check_likelihood("missing", num_runs=256, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("data_name", ["complete", "missing"])
def test_log_likelihood_unbiased_and_variance_falls_as_one_over_n_many_runs(data_name):
    _check_likelihood(data_name, num_runs=2048, seed=4)


# -- a scalar-state model, under jit and vmap over a batch of series, in float32 -------------


class ScalarAR(bs.AbstractSSM):
    """x_0 ~ N(0, 1), x_t = a x_{t-1} + N(0, 0.6^2), y_t = x_t + N(0, 0.5^2): event shape ()."""

    a: jax.Array  # its dtype is the model's

    def initial(self, inputs=None):
        return distrax.Normal(jnp.zeros((), self.a.dtype), jnp.ones((), self.a.dtype))

    def transition(self, x, inputs=None):
        return distrax.Normal(self.a * x, 0.6)

    def emission(self, x, inputs=None):
        return distrax.Normal(x, 0.5)


SCALAR_LG = bs.LinearGaussianSSM(A=[[0.8]], Q=[[0.36]], H=[[1.0]], R=[[0.25]], m0=[0.0], P0=[[1.0]])
SCALAR_ENGINE = bs.ParticleFilter(256)


def scalar_kalman_log_lik(y: np.ndarray, a=0.8, q=0.36, r=0.25, m=0.0, p=1.0) -> float:
    """log p(y) of the scalar model by the textbook Kalman recursion, in NumPy."""
    total = 0.0
    for t, value in enumerate(y):
        if t > 0:
            m, p = a * m, a * a * p + q
        s = p + r
        total += scipy.stats.norm(m, np.sqrt(s)).logpdf(value)
        m, p = m + p / s * (value - m), p - p * p / s
    return total


@functools.cache
def _scalar_series(num_series: int = 128, length: int = 20):
    rng = np.random.default_rng(5)
    args = (np.array([[0.8]]), np.array([[0.36]]), np.eye(1), np.array([[0.25]]))
    ys = np.stack(
        [
            simulate_linear_gaussian(rng, length, *args, np.zeros(1), np.eye(1))[1]
            for _ in range(num_series)
        ]
    )
    exact = np.array([scalar_kalman_log_lik(y[:, 0]) for y in ys])
    return jnp.asarray(ys), exact, jax.random.split(jax.random.key(6), num_series)


def test_float32_scalar_state_under_jit_and_vmap_over_series():
    """One compiled call filters a batch of float32 series (states of event shape ()), each
    estimate unbiased for its exact (float64) likelihood."""
    ys, exact, keys = _scalar_series()
    model = ScalarAR(jnp.asarray(0.8, jnp.float32))
    ys32 = ys.astype(jnp.float32)

    def log_lik(y, key):
        return bs.log_marginal(model, y, engine=SCALAR_ENGINE, key=key)

    batched = jax.jit(jax.vmap(log_lik))(ys32, keys)
    assert batched.shape == (ys.shape[0],) and batched.dtype == jnp.float32
    # independent runs on independent series, each with E[exp(ll_hat - ll)] = 1
    error = np.asarray(batched, np.float64) - exact
    assert_unbiased_likelihood(error, 0.0, Z_LIKELIHOOD, "float32 scalar batch")
    shapes = jax.eval_shape(lambda: bs.filter(model, ys32[0], engine=SCALAR_ENGINE, key=keys[0]))
    assert shapes.means.shape == shapes.variances.shape == (ys.shape[1], 1)
    assert shapes.means.dtype == shapes.variances.dtype == shapes.log_marginal.dtype == jnp.float32
    assert shapes.particles.shape == (SCALAR_ENGINE.num_particles,)


@pytest.mark.slow
def test_vmap_over_series_equals_separate_runs():
    ys, _, keys = _scalar_series()
    model = ScalarAR(jnp.asarray(0.8))

    def log_lik(y, key):
        return bs.log_marginal(model, y, engine=SCALAR_ENGINE, key=key)

    batched = jax.jit(jax.vmap(log_lik))(ys[:4], keys[:4])
    for i in range(4):
        alone = bs.log_marginal(model, ys[i], engine=SCALAR_ENGINE, key=keys[i])
        np.testing.assert_allclose(alone, batched[i], rtol=1e-10)


@pytest.mark.slow
def test_scalar_state_filtering_moments():
    """Plain averages. The bias measured here is at most ~5.5 sd / N (32,768 runs at N = 32,
    16,384 at N = 128) with kappa ~ 1.4, so bias / SE <= 5.5 sqrt(R / (kappa N)) = 0.3 at
    N = 16,384 and R = 64."""
    args = (np.array([[0.8]]), np.array([[0.36]]), np.eye(1), np.array([[0.25]]))
    _, y = simulate_linear_gaussian(np.random.default_rng(7), T, *args, np.zeros(1), np.eye(1))
    engine = bs.ParticleFilter(16_384)
    model = ScalarAR(jnp.asarray(0.8))

    def one(key):
        result = bs.filter(model, y[:, 0], engine=engine, key=key)
        return result.means, result.variances

    means, variances = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(8), 64))
    assert means.shape == (64, T, 1)
    exact = bs.filter(SCALAR_LG, y)
    z = z_entries(64, 2 * T)
    assert_within(np.asarray(means), np.asarray(exact.means), z, "scalar means")
    assert_within(np.asarray(variances), np.asarray(exact.covs[:, :, 0]), z, "scalar vars")


# -- degenerate steps ----------------------------------------------------------------------


class UniformNoise(bs.AbstractSSM):
    """y_t ~ Uniform(x_t - 1, x_t + 1): a y_t far from every particle has zero likelihood."""

    def initial(self, inputs=None):
        return distrax.Normal(jnp.zeros(()), 1.0)

    def transition(self, x, inputs=None):
        return distrax.Normal(0.9 * x, 0.5)

    def emission(self, x, inputs=None):
        return distrax.Uniform(x - 1.0, x + 1.0)


@functools.cache
def _uniform_data():
    return UniformNoise().sample(jax.random.key(10), num_timesteps=12)[1]


@pytest.mark.parametrize("step", [0, 5])
def test_degenerate_step_is_reported(step):
    y = _uniform_data().at[step].set(1e3)  # 2000 sd beyond any particle
    engine = bs.ParticleFilter(128)
    with pytest.warns(RuntimeWarning, match=f"at step {step}:"):
        result = bs.filter(UniformNoise(), y, engine=engine, key=jax.random.key(11))
    assert int(result.degenerate_step) == step
    assert float(result.log_marginal) == -np.inf
    assert np.all(np.isfinite(np.asarray(result.log_marginals[:step])))
    assert float(result.log_marginals[step]) == -np.inf
    # the weights restart uniformly: later steps are weighted normally again
    assert np.all(np.isfinite(np.asarray(result.log_marginals[step + 1 :])))
    assert result.means.shape == (y.shape[0], 1)  # a scalar state, as D = 1
    assert np.all(np.isfinite(np.asarray(result.means)))
    assert np.all(np.isfinite(np.asarray(result.variances)))
    np.testing.assert_allclose(jax.scipy.special.logsumexp(result.log_weights), 0.0, atol=1e-12)


def test_no_degenerate_step_no_warning():
    engine = bs.ParticleFilter(128)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = bs.filter(UniformNoise(), _uniform_data(), engine=engine, key=jax.random.key(11))
    assert int(result.degenerate_step) == -1
    assert np.isfinite(float(result.log_marginal))


def test_single_observation():
    """T = 1 (no moves): the estimate is the mean of N likelihoods at prior draws, within 4
    of its standard errors (from the same weights) of p(y_0) by quadrature."""
    model, y0 = StochasticVolatility(-1.0, 0.9, 0.3), 0.4
    result = bs.filter(
        model, jnp.array([y0]), engine=bs.ParticleFilter(4096), key=jax.random.key(12)
    )
    assert result.means.shape == (1, 1) and result.particles.shape == (4096,)
    x = np.linspace(-8.0, 6.0, 20_001)
    sd0 = 0.3 / np.sqrt(1 - 0.9**2)
    density = scipy.stats.norm.pdf(x, -1.0, sd0) * scipy.stats.norm.pdf(y0, 0.0, np.exp(x / 2))
    exact = np.log(np.trapezoid(density, x))
    likelihoods = scipy.stats.norm.pdf(y0, 0.0, np.exp(np.asarray(result.particles) / 2))
    se = likelihoods.std(ddof=1) / np.sqrt(likelihoods.size) / likelihoods.mean()
    assert abs(float(result.log_marginal) - exact) < 4 * se
    np.testing.assert_allclose(float(result.log_marginal), np.log(likelihoods.mean()), rtol=1e-12)


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("num", [0, -1, 2.5, True])
def test_bad_num_particles(num):
    with pytest.raises(ValueError, match="num_particles"):
        bs.ParticleFilter(num)


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown resampling scheme 'bogus'"):
        bs.ParticleFilter(10, resampling="bogus")
    for threshold in (-0.1, 1.5, "0.5"):
        with pytest.raises(ValueError, match="ess_threshold"):
            bs.ParticleFilter(10, ess_threshold=threshold)
    with pytest.raises(ValueError, match="proposal"):
        bs.ParticleFilter(10, proposal="bogus")


def test_proposal_with_wrong_event_shape():
    def wrong(x_prev, y, inputs):
        return distrax.MultivariateNormalDiag(jnp.zeros(3), jnp.ones(3))

    def wrong_initial(y, inputs):
        return distrax.Normal(jnp.zeros(()), 1.0)

    y = data()["complete"]
    engine = bs.ParticleFilter(8, proposal=wrong)
    with pytest.raises(ValueError, match=r"shape \(3,\).*shape \(2,\)"):
        bs.filter(MODEL, y, engine=engine, key=jax.random.key(0))
    engine = bs.ParticleFilter(8, proposal=guided, initial_proposal=wrong_initial)
    with pytest.raises(ValueError, match=r"initial proposal gives states of shape \(\)"):
        bs.filter(MODEL, y, engine=engine, key=jax.random.key(0))


def test_optimal_proposal_needs_a_linear_gaussian_emission():
    engine = bs.ParticleFilter(8, proposal="optimal")
    with pytest.raises(TypeError, match="AbstractLinearGaussianEmission"):
        bs.filter(UniformNoise(), _uniform_data(), engine=engine, key=jax.random.key(0))


def test_missing_key():
    with pytest.raises(ValueError, match="key"):
        bs.filter(MODEL, data()["complete"], engine=bs.ParticleFilter(8))
    with pytest.raises(ValueError, match="key"):
        bs.log_marginal(MODEL, data()["complete"], engine=bs.ParticleFilter(8))


# -- emission log-likelihoods over the observed entries of a row ---------------------------

_ROWS = {  # observed mask of a row of M = 3
    "all": np.array([True, True, True]),
    "some": np.array([True, False, True]),
    "one": np.array([False, True, False]),
    "none": np.array([False, False, False]),
}


_LOADINGS = np.array([[1.0, 0.0], [0.5, 1.0], [-1.0, 2.0]])
_SCALE = np.array([0.5, 1.0, 2.0])
_COV = np.diag(_SCALE**2) + 0.3  # correlated, for the multivariate normal
_EMISSIONS = {
    "batched": lambda x: distrax.Normal(jnp.asarray(_LOADINGS) @ x, jnp.asarray(_SCALE)),
    "independent": lambda x: distrax.Independent(
        distrax.Normal(jnp.asarray(_LOADINGS) @ x, jnp.asarray(_SCALE)), 1
    ),
    "multivariate": lambda x: distrax.MultivariateNormalFullCovariance(
        jnp.asarray(_LOADINGS) @ x, jnp.asarray(_COV)
    ),
}


@functools.cache
def _observed_log_likelihoods(kind: str):
    return jax.jit(functools.partial(observed_log_likelihoods, _EMISSIONS[kind]))


@pytest.mark.parametrize("row", list(_ROWS))
@pytest.mark.parametrize("kind", list(_EMISSIONS))
def test_observed_log_likelihoods(kind, row):
    """log p(y_obs | x) for particles x (4, 2) against scipy on the observed sub-vector; the
    batched emission has batch shape (3,) and event shape ()."""
    observed = _ROWS[row]
    x = np.array([[0.3, -1.0], [1.2, 0.4], [-0.7, 0.1], [2.0, -2.0]])
    y = np.array([0.2, -0.4, 1.5])
    got = _observed_log_likelihoods(kind)(jnp.asarray(x), jnp.asarray(y), jnp.asarray(observed))
    assert got.shape == (4,)
    sub = np.ix_(observed, observed)
    for i, xi in enumerate(x):
        loc = _LOADINGS @ xi
        if not observed.any():
            expected = 0.0
        elif kind == "multivariate":
            expected = scipy.stats.multivariate_normal(loc[observed], _COV[sub]).logpdf(y[observed])
        else:
            expected = scipy.stats.norm(loc, _SCALE).logpdf(y)[observed].sum()
        np.testing.assert_allclose(got[i], expected, rtol=1e-12, atol=1e-12)


# -- stochastic volatility against the `particles` library ---------------------------------

SV_PARAMS = {"mu": -1.0, "rho": 0.95, "sigma": 0.3}


def simulate_stochastic_volatility(rng, length: int, mu: float, rho: float, sigma: float):
    x = mu + sigma / np.sqrt(1 - rho**2) * rng.normal()
    y = []
    for _ in range(length):
        y.append(np.exp(x / 2) * rng.normal())
        x = mu + rho * (x - mu) + sigma * rng.normal()
    return np.asarray(y)


def _compare_with_particles(length: int, num_runs: int, num_reference_runs: int):
    """Our bootstrap filter and `particles`' (the same algorithm: systematic resampling when the
    ESS falls below N / 2) estimate the same p(y): compare the means of exp(ll - c) (and of ll)
    within 4 combined standard errors, and the variances of ll by their F-distributed ratio."""
    num = 1000
    sv = StochasticVolatility(**SV_PARAMS)
    y = simulate_stochastic_volatility(np.random.default_rng(12), length, **SV_PARAMS)
    engine = bs.ParticleFilter(num, "systematic", ess_threshold=0.5)
    keys = jax.random.split(jax.random.key(13), num_runs)
    ours = np.asarray(
        jax.jit(jax.vmap(lambda k: bs.log_marginal(sv, y, engine=engine, key=k)))(keys)
    )
    reference_model = pssm.StochVol(**SV_PARAMS)
    theirs = []
    for seed in range(num_reference_runs):
        np.random.seed(seed)  # noqa: NPY002 (particles draws from NumPy's global generator)
        fk = pssm.Bootstrap(ssm=reference_model, data=y)
        smc = particles.SMC(
            fk=fk, N=num, resampling="systematic", ESSrmin=0.5, store_history=False, collect=None
        )
        smc.run()
        theirs.append(smc.logLt)
    theirs = np.asarray(theirs)
    c = np.mean(ours)
    a, b = np.exp(ours - c), np.exp(theirs - c)
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert abs(a.mean() - b.mean()) <= 4 * se, (a.mean(), b.mean(), se)
    # the same algorithm: the log-likelihood estimates have the same distribution, mean too
    se_log = np.sqrt(ours.var(ddof=1) / ours.size + theirs.var(ddof=1) / theirs.size)
    assert abs(ours.mean() - theirs.mean()) <= 4 * se_log, (ours.mean(), theirs.mean(), se_log)
    low, high = f_band(num_runs, num_reference_runs)
    ratio = np.var(ours, ddof=1) / np.var(theirs, ddof=1)
    assert low <= ratio <= high, (ratio, low, high)
    return a.mean(), b.mean(), se, ratio


def test_stochastic_volatility_matches_particles():
    _compare_with_particles(length=100, num_runs=128, num_reference_runs=16)


@pytest.mark.slow
def test_stochastic_volatility_matches_particles_many_runs():
    _compare_with_particles(length=200, num_runs=1024, num_reference_runs=100)
