"""The example models for particle methods (`StochasticVolatility`, `NonlinearGrowth`,
`PoissonAR1`), the `Interval` parameter and the `Poisson` distribution.

Expected densities come from scipy.stats and from the `particles` library's own models (where
installed); moments of sampled paths are checked against the stationary AR(1)'s, to four standard
errors estimated from the draws; derivatives against central finite differences of scipy's
densities or `jax.jacfwd`. Nothing expected is read off the code under test.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
import scipy.optimize
from scipy import stats

import bayesssm as bs
from bayesssm.distributions import Poisson
from bayesssm.models import NonlinearGrowth, PoissonAR1, StochasticVolatility
from bayesssm.params import Interval
from bayesssm.ssm import StepInputs

X_GRID = np.array([-3.1, -1.02, -0.2, 0.0, 0.7, 2.5])
SV = {"mu": -1.02, "rho": 0.9702, "sigma": 0.178}  # Pitt and Shephard's values
COX = {"mu": 0.4, "phi": 0.8, "sigma": 0.5}


def at(t: int) -> StepInputs:
    return StepInputs(index=jnp.asarray(t))


def central_difference(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for i in range(x.size):
        step = np.zeros_like(x)
        step.flat[i] = h
        out.flat[i] = (f(x + step) - f(x - step)) / (2 * h)
    return out


# -- Interval -----------------------------------------------------------------------------------


@jax.jit
def interval_maps(leaf: Interval):
    """value, elementwise log|d value / du|, their sum, and the inverse map at the value."""
    value = leaf.value()
    return (
        value,
        leaf.bijector.forward_log_det_jacobian(leaf.unconstrained),
        leaf.log_abs_det_jacobian(),
        leaf.bijector.inverse(value),
        leaf.bijector.inverse_log_det_jacobian(value),
    )


@pytest.mark.parametrize("low, high", [(-1.0, 1.0), (0.0, 1.0), (-3.0, 7.5), (2.0, 2.5)])
def test_interval_round_trips_and_stores_the_log_ratio(low, high):
    rng = np.random.default_rng(0)
    value = low + (high - low) * rng.uniform(0.001, 0.999, size=(3, 4))
    leaf = Interval.from_value(value, low=low, high=high)
    assert leaf.unconstrained.shape == (3, 4) and leaf.shape == (3, 4)
    np.testing.assert_allclose(leaf.unconstrained, np.log((value - low) / (high - value)), 1e-12)
    np.testing.assert_allclose(interval_maps(leaf)[0], value, rtol=1e-14, atol=1e-14 * (high - low))
    # The documented map, in numpy: a + (b - a) / (1 + exp(-u)); and back.
    u = rng.normal(scale=3.0, size=(3, 4))
    got, _, _, back, _ = interval_maps(Interval(jnp.asarray(u), low, high))
    np.testing.assert_allclose(got, low + (high - low) / (1.0 + np.exp(-u)), rtol=1e-14)
    np.testing.assert_allclose(back, u, rtol=1e-9, atol=1e-9)


def test_interval_default_bounds_are_tanh_of_half():
    u = np.linspace(-6.0, 6.0, 12).reshape(3, 4)
    leaf = Interval(jnp.asarray(u))
    assert (leaf.low, leaf.high) == (-1.0, 1.0)
    np.testing.assert_allclose(interval_maps(leaf)[0], np.tanh(u / 2), rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_interval_values_stay_inside_for_huge_unconstrained_values(dtype):
    u = jnp.asarray([-1e4, -200.0, -40.0, -18.0, 18.0, 40.0, 200.0, 1e4, -12.0, 12.0], dtype)
    value, log_det, _, _, _ = interval_maps(Interval(u, low=-1.0, high=1.0))
    value = np.asarray(value)
    assert value.dtype == dtype
    assert np.all(value > -1.0) and np.all(value < 1.0)
    # Near a bound the value is the exact one, rounded once (to within one unit in the last place).
    exact = (1.0 - 2.0 / (1.0 + np.exp(12.0))) * np.array([-1.0, 1.0])
    np.testing.assert_array_less(np.abs(value[-2:] - exact), np.spacing(np.ones(2, dtype)))
    assert np.all(np.isfinite(log_det))
    np.testing.assert_allclose(log_det[:8], np.log(2.0) - np.abs(np.asarray(u[:8], float)), 1e-6)


@pytest.mark.parametrize("low, high", [(-1.0, 1.0), (0.5, 4.0)])
def test_interval_log_det_matches_jacfwd(low, high):
    u = jnp.asarray(np.random.default_rng(1).normal(scale=2.0, size=(3, 4)))
    flat_jacobian = jax.jit(jax.jacfwd(lambda v: Interval(v, low, high).value().ravel()))
    jacobian = np.asarray(flat_jacobian(u.ravel()))
    np.testing.assert_allclose(jacobian, np.diag(np.diag(jacobian)), atol=0)  # elementwise
    expected = np.log(np.abs(np.diag(jacobian))).reshape(3, 4)
    _, log_det, total, _, inverse_log_det = interval_maps(Interval(u, low, high))
    np.testing.assert_allclose(log_det, expected, rtol=1e-12)
    np.testing.assert_allclose(total, expected.sum(), rtol=1e-12)
    np.testing.assert_allclose(inverse_log_det, -expected, rtol=1e-10)  # at the value


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: Interval.from_value(1.0), r"strictly inside \(-1.0, 1.0\).*1.0"),
        (lambda: Interval.from_value([0.2, -1.5]), r"strictly inside.*-1.5"),
        (lambda: Interval.from_value(3.0, low=0.0, high=2.0), r"strictly inside \(0.0, 2.0\)"),
        (lambda: Interval.from_value(np.nan), "non-finite"),
        (lambda: Interval.from_value(0.0, low=1.0, high=-1.0), "low must be smaller"),
        (lambda: Interval.from_value(0.0, low=0.0, high=0.0), "low must be smaller"),
        (lambda: Interval(jnp.zeros(()), low=2.0, high=1.0), "low must be smaller"),
        (lambda: Interval.from_value(0.0, high=np.inf), "finite"),
        (lambda: Interval(jnp.zeros(()), low=[0.0, 1.0]), "scalars"),
    ],
)
def test_interval_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_interval_is_one_array_leaf_with_static_bounds():
    leaf = Interval.from_value(jnp.asarray([0.3, 1.9]), low=0.0, high=2.0)
    leaves, treedef = jax.tree.flatten(leaf)
    assert len(leaves) == 1 and leaves[0] is leaf.unconstrained
    rebuilt = jax.tree.unflatten(treedef, [leaves[0] + 1.0])
    assert (rebuilt.low, rebuilt.high) == (0.0, 2.0)
    # Traced under jit and vmap (here over a leading axis of 4), with the bounds intact.
    batch = Interval(jnp.zeros((4, 2)), 0.0, 2.0)
    value, batch_values = jax.jit(lambda p, b: (p.value(), jax.vmap(Interval.value)(b)))(
        leaf, batch
    )
    np.testing.assert_allclose(value, [0.3, 1.9], rtol=1e-14)
    np.testing.assert_allclose(batch_values, np.ones((4, 2)), rtol=1e-14)
    assert jax.tree.structure(leaf) != jax.tree.structure(Interval(leaf.unconstrained))
    # unwrap (under jit) and the numpyro support.
    np.testing.assert_allclose(jax.jit(bs.unwrap)({"p": leaf})["p"], [0.3, 1.9], rtol=1e-14)
    support = leaf.support
    assert isinstance(support, type(nd.constraints.interval(0.0, 2.0)))
    assert (support.lower_bound, support.upper_bound) == (0.0, 2.0)
    assert leaf.event_ndim == 0 and leaf.batch_shape == (2,)


def test_interval_prior_support_is_checked():
    model = StochasticVolatility(**SV)
    where = lambda m: (m.mu, m.rho)  # noqa: E731
    with pytest.raises(ValueError, match="support Real.*Interval parameter.*lie in Interval"):
        bs.fit_mle(model, np.zeros(5), where=where, priors=(None, nd.Normal()), progress=False)
    # A prior on (-1, 1) passes the check (the missing engine is what stops this fit).
    from bayesssm.fit._selection import Selection

    selection = Selection(model, where, priors=(nd.Normal(), nd.Uniform(-1.0, 1.0)))
    assert selection.names == ("mu", "rho")
    params = selection.params(model)
    np.testing.assert_allclose(selection.values(params)[1], SV["rho"], rtol=1e-14)
    u = float(params[1].unconstrained)
    np.testing.assert_allclose(
        selection.log_abs_det_jacobian(params),
        np.log(2.0) - np.log1p(np.exp(u)) - np.log1p(np.exp(-u)),
        rtol=1e-12,
    )


class _AR1Plus(bs.AbstractLinearGaussianSSM):
    """x_{t+1} = rho x_t + N(0, q), y_t = x_t + N(0, r), x_0 stationary: rho as an Interval."""

    rho: Interval
    q: jax.Array
    r: jax.Array

    def initial_params(self, inputs):
        rho = self.rho.value()
        return jnp.zeros(1), jnp.sqrt(self.q / (1 - rho**2))[None, None]

    def transition_params(self, inputs):
        return self.rho.value()[None, None], jnp.zeros(1), jnp.sqrt(self.q)[None, None]

    def emission_params(self, inputs):
        return jnp.ones((1, 1)), jnp.zeros(1), jnp.sqrt(self.r)[None, None]


def test_fit_mle_of_an_interval_leaf_matches_the_dense_likelihood():
    q, r, T = 0.3, 0.2, 80
    rng = np.random.default_rng(0)
    x = np.empty(T)
    x[0] = rng.normal(scale=np.sqrt(q / (1 - 0.85**2)))
    for t in range(1, T):
        x[t] = 0.85 * x[t - 1] + rng.normal(scale=np.sqrt(q))
    y = x + rng.normal(scale=np.sqrt(r), size=T)
    model = _AR1Plus(Interval.from_value(0.5), jnp.asarray(q), jnp.asarray(r))
    lags = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))

    def negative_log_likelihood(rho):
        cov = q / (1 - rho**2) * rho**lags + r * np.eye(T)
        return -stats.multivariate_normal(np.zeros(T), cov).logpdf(y)

    best = scipy.optimize.minimize_scalar(
        negative_log_likelihood,
        bounds=(-0.999, 0.999),
        method="bounded",
        options={"xatol": 1e-10},
    )
    fitted, history = bs.fit_mle(model, y, where=lambda m: m.rho, progress=False)
    assert isinstance(fitted.rho, Interval) and (fitted.rho.low, fitted.rho.high) == (-1, 1)
    np.testing.assert_allclose(bs.unwrap(fitted).rho, best.x, rtol=1e-5)
    np.testing.assert_allclose(history.objective[-1], best.fun, rtol=1e-9)


# -- Poisson ------------------------------------------------------------------------------------


@jax.jit
def _poisson_summary(log_rate, counts):
    dist = Poisson(log_rate)
    return dist.log_prob(counts), dist.mean(), dist.variance(), dist.stddev(), dist.mode()


def test_poisson_log_prob_matches_scipy():
    rates = np.array([1e-6, 0.03, 0.5, 1.0, 3.7, 40.2, 2500.0])
    counts = np.array([0.0, 1.0, 2.0, 5.0, 17.0, 40.0, 2433.0])
    dist = Poisson(np.log(rates)[:, None])
    assert dist.batch_shape == (7, 1) and dist.event_shape == ()
    assert dist[2:].batch_shape == (5, 1)
    log_p, mean, var, sd, mode = _poisson_summary(np.log(rates)[:, None], counts[None, :])
    expected = stats.poisson.logpmf(counts[None, :], rates[:, None])
    np.testing.assert_allclose(log_p, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean[:, 0], rates, rtol=1e-14)
    np.testing.assert_allclose(var[:, 0], rates, rtol=1e-14)
    np.testing.assert_allclose(sd[:, 0], np.sqrt(rates), rtol=1e-14)
    np.testing.assert_allclose(
        mode[:-1, 0], [0, 0, 0, 1, 3, 40]
    )  # (2499 and 2500 are both modes of 2500)
    # Integer counts are accepted too.
    np.testing.assert_allclose(
        _poisson_summary(np.log([3.7]), np.asarray([4]))[0], stats.poisson.logpmf(4, 3.7)
    )


def test_poisson_off_support_and_missing_values():
    values = jnp.asarray([-1.0, 2.5, np.inf, -np.inf, np.nan, 0.0, 0.0, 1.0])
    log_rates = jnp.asarray([0.3] * 6 + [-np.inf] * 2)  # the last two: a zero rate
    got = np.asarray(_poisson_summary(log_rates, values)[0])
    np.testing.assert_array_equal(got[:4], -np.inf)
    assert np.isnan(got[4])
    np.testing.assert_allclose(got[5], -np.exp(0.3), rtol=1e-14)
    np.testing.assert_allclose(got[6], 0.0, atol=1e-15)  # a zero rate: all mass at zero
    assert got[7] == -np.inf


@jax.jit
def _poisson_gradients(eta, counts):
    grad = jax.vmap(jax.grad(lambda e, y: Poisson(e).log_prob(y)), (None, 0))(eta, counts)

    def masked(e, y):  # how an engine drops a missing count
        return jnp.where(jnp.isnan(y), 0.0, Poisson(e).log_prob(y))

    return grad, jax.grad(masked)(eta, jnp.nan)


def test_poisson_gradient_is_y_minus_rate_and_finite_under_masking():
    eta, counts = 0.7, jnp.asarray([0.0, 1.0, 4.0])
    grad, masked = _poisson_gradients(eta, counts)
    np.testing.assert_allclose(grad, counts - np.exp(eta), rtol=1e-14)
    assert masked == 0.0


@pytest.mark.parametrize("dtype", [jnp.float32])  # float64 counts: test_sampled_paths_...
def test_poisson_samples_have_the_right_moments_and_dtype(dtype):
    rates = np.array([0.2, 3.0, 50.0])  # jax.random.poisson switches algorithm at 10
    log_rate = jnp.log(jnp.asarray(rates, dtype))
    draws = jax.jit(lambda key: Poisson(log_rate).sample(seed=key, sample_shape=(20_000,)))(
        jax.random.key(5)
    )
    assert draws.shape == (20_000, 3) and draws.dtype == dtype
    draws = np.asarray(draws, np.float64)
    assert np.all(draws == np.floor(draws)) and np.all(draws >= 0)
    n = draws.shape[0]
    np.testing.assert_array_less(np.abs(draws.mean(0) - rates), 4 * np.sqrt(rates / n))
    # Var of the sample variance of a Poisson: (mu_4 - sigma^4) / n, mu_4 = l(1 + 3l).
    se_var = np.sqrt((rates * (1 + 3 * rates) - rates**2) / n)
    np.testing.assert_array_less(np.abs(draws.var(0) - rates), 4 * se_var)


# -- the models' densities ------------------------------------------------------------------------


@jax.jit
def grid_log_probs(model, t, xp, x, y):
    """log p(x_0 = x) (X,), log p(x_{t+1} = x | x_t = xp) (P, X) and log p(y_t = y | x_t = xp)
    (P, Y), in one compiled program (under jit and vmap)."""
    inputs = StepInputs(index=t)
    initial = jax.vmap(model.initial(inputs).log_prob)(x)
    move = jax.vmap(lambda a: jax.vmap(model.transition(a, inputs).log_prob)(x))(xp)
    emit = jax.vmap(lambda a: jax.vmap(model.emission(a, inputs).log_prob)(y))(xp)
    return initial, move, emit


def _norm(x, loc, scale):
    return -0.5 * np.log(2 * np.pi) - np.log(scale) - 0.5 * ((x - loc) / scale) ** 2


def test_stochastic_volatility_densities_match_scipy():
    mu, rho, sigma = SV["mu"], SV["rho"], SV["sigma"]
    y = np.array([-2.0, -0.1, 0.0, 0.4, 3.0])
    initial, move, emit = grid_log_probs(StochasticVolatility(mu, rho, sigma), 3, X_GRID, X_GRID, y)
    sd0 = sigma / math.sqrt(1 - rho**2)
    np.testing.assert_allclose(initial, stats.norm.logpdf(X_GRID, mu, sd0), rtol=1e-13)
    np.testing.assert_allclose(initial, _norm(X_GRID, mu, sd0), rtol=1e-13)
    xp = X_GRID[:, None]
    np.testing.assert_allclose(
        move, stats.norm.logpdf(X_GRID, mu + rho * (xp - mu), sigma), rtol=1e-13
    )
    np.testing.assert_allclose(emit, stats.norm.logpdf(y, 0.0, np.exp(xp / 2)), rtol=1e-13)
    np.testing.assert_allclose(emit, -0.5 * np.log(2 * np.pi) - xp / 2 - 0.5 * y**2 * np.exp(-xp))


def test_stochastic_volatility_is_particles_stochvol():
    import particles.state_space_models as ssms

    y = np.linspace(-3.0, 3.0, 5)
    for mu, rho, sigma in ((SV["mu"], SV["rho"], SV["sigma"]), (-0.5, -0.6, 0.9)):
        theirs = ssms.StochVol(mu=mu, rho=rho, sigma=sigma)
        ours = StochasticVolatility(mu, rho, sigma)
        for t in (1, 7):  # particles' PX(t, xp) is the move into step t: ours out of t - 1
            initial, move, _ = grid_log_probs(ours, t - 1, X_GRID, X_GRID, y)
            _, _, emit = grid_log_probs(ours, t, X_GRID, X_GRID, y)
            np.testing.assert_allclose(initial, theirs.PX0().logpdf(X_GRID), rtol=1e-13)
            for i, xp in enumerate(X_GRID):
                expected = theirs.PX(t, np.full_like(X_GRID, xp)).logpdf(X_GRID)
                np.testing.assert_allclose(move[i], expected, rtol=1e-13)
                x_t = np.full_like(y, xp)
                np.testing.assert_allclose(emit[i], theirs.PY(t, x_t, x_t).logpdf(y), rtol=1e-13)


def test_poisson_ar1_densities_match_scipy_and_particles():
    mu, phi, sigma = COX["mu"], COX["phi"], COX["sigma"]
    counts = np.array([0.0, 1.0, 3.0, 8.0, 20.0])
    initial, move, emit = grid_log_probs(PoissonAR1(mu, phi, sigma), 2, X_GRID, X_GRID, counts)
    sd0 = sigma / math.sqrt(1 - phi**2)
    np.testing.assert_allclose(initial, _norm(X_GRID, mu, sd0), rtol=1e-13)
    xp = X_GRID[:, None]
    np.testing.assert_allclose(move, _norm(X_GRID, mu + phi * (xp - mu), sigma), rtol=1e-13)
    log_factorial = np.array([math.lgamma(c + 1) for c in counts])
    np.testing.assert_allclose(emit, counts * xp - np.exp(xp) - log_factorial, rtol=1e-13)
    np.testing.assert_allclose(emit, stats.poisson.logpmf(counts, np.exp(xp)), rtol=1e-12)

    import particles.state_space_models as ssms

    theirs = ssms.DiscreteCox(mu=mu, phi=phi, sigma=sigma)
    np.testing.assert_allclose(initial, theirs.PX0().logpdf(X_GRID), rtol=1e-13)
    for i, x_prev in enumerate(X_GRID):
        expected = theirs.PX(3, np.full_like(X_GRID, x_prev)).logpdf(X_GRID)
        np.testing.assert_allclose(move[i], expected, rtol=1e-13)
        x_t = np.full_like(counts, x_prev)
        np.testing.assert_allclose(emit[i], theirs.PY(2, x_t, x_t).logpdf(counts), rtol=1e-12)


# x, t (the step moved from) and 0.5 x + 25 x / (1 + x^2) + 8 cos(1.2 (t + 1)), worked out by
# hand: cos(1.2) = 0.362357754476674, cos(3.6) = -0.896758416334147, cos(12.0) = 0.843853958732492
GROWTH_MEANS = [
    (0.0, 0, 8 * 0.362357754476674),
    (1.0, 0, 0.5 + 12.5 + 8 * 0.362357754476674),
    (-2.0, 2, -1.0 - 10.0 + 8 * -0.896758416334147),
    (10.0, 9, 5.0 + 250.0 / 101.0 + 8 * 0.843853958732492),
]


@pytest.mark.parametrize("x, t, expected", GROWTH_MEANS)
def test_nonlinear_growth_transition_mean_by_hand(x, t, expected):
    model = NonlinearGrowth()
    np.testing.assert_allclose(model.transition(jnp.asarray(x), at(t)).mean(), expected, 1e-14)
    np.testing.assert_allclose(model.transition_mean(x, t), expected, rtol=1e-14)
    if t == 0:  # no inputs: the move out of step 0
        np.testing.assert_allclose(model.transition(jnp.asarray(x)).mean(), expected, 1e-14)


def test_nonlinear_growth_densities_match_scipy():
    q, r, p0 = 7.0, 0.6, 2.5
    model = NonlinearGrowth(transition_variance=q, observation_variance=r, initial_variance=p0)
    y = np.linspace(-1.0, 4.0, 5)
    xp = X_GRID[:, None]
    for t in (0, 5, 31):
        initial, move, emit = grid_log_probs(model, t, X_GRID, X_GRID, y)
        np.testing.assert_allclose(initial, stats.norm.logpdf(X_GRID, 0.0, np.sqrt(p0)), 1e-13)
        loc = xp / 2 + 25 * xp / (1 + xp**2) + 8 * np.cos(1.2 * (t + 1))
        np.testing.assert_allclose(move, stats.norm.logpdf(X_GRID, loc, np.sqrt(q)), rtol=1e-13)
        np.testing.assert_allclose(emit, stats.norm.logpdf(y, xp**2 / 20, np.sqrt(r)), 1e-13)
    defaults = bs.unwrap(NonlinearGrowth())
    np.testing.assert_allclose(
        [defaults.transition_variance, defaults.observation_variance, defaults.initial_variance],
        [10.0, 1.0, 5.0],
        rtol=1e-14,
    )


# -- sampled paths ------------------------------------------------------------------------------

NUM_PATHS, LENGTH = 4000, 12


def _paths(model, key):
    keys = jax.random.split(key, NUM_PATHS)
    return jax.jit(jax.vmap(lambda k: model.sample(k, LENGTH)))(keys)


def _within(per_path: np.ndarray, expected: float, what: str) -> None:
    """The mean of independent per-path statistics equals `expected` to 4 standard errors."""
    estimate = per_path.mean()
    se = per_path.std(ddof=1) / np.sqrt(per_path.size)
    assert abs(estimate - expected) < 4 * se, f"{what}: {estimate} vs {expected} (se {se})"


# Each model is sampled in one dtype only (a compile is costly): together they cover both.
@pytest.mark.parametrize(
    "cls, mu, rho, sigma, dtype",
    [
        (StochasticVolatility, -1.0, 0.9, 0.3, jnp.float32),
        (PoissonAR1, 0.4, 0.8, 0.5, jnp.float64),
    ],
    ids=["stochastic_volatility", "poisson_ar1"],
)
def test_sampled_paths_are_a_stationary_ar1(cls, mu, rho, sigma, dtype):
    x, y = _paths(cls(jnp.asarray(mu, dtype), rho, sigma), jax.random.key(11))
    assert x.dtype == y.dtype == dtype
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape == (NUM_PATHS, LENGTH)
    var = sigma**2 / (1 - rho**2)
    # Stationary: the same mean, variance and lag-1 and lag-3 autocovariances at every step.
    for t in (0, LENGTH // 2, LENGTH - 1):
        _within(x[:, t], mu, f"E x_{t}")
        _within((x[:, t] - mu) ** 2, var, f"Var x_{t}")
    _within((x[:, 0] - mu) * (x[:, 1] - mu), rho * var, "Cov(x_0, x_1)")
    _within((x[:, 5] - mu) * (x[:, 8] - mu), rho**3 * var, "Cov(x_5, x_8)")
    lognormal_mean = np.exp(mu + var / 2)  # E exp(x_t)
    if cls is StochasticVolatility:
        _within(y[:, 3], 0.0, "E y")
        _within(y[:, 3] ** 2, lognormal_mean, "E y^2 = E exp(x)")
    else:
        assert np.all(y == np.floor(y)) and np.all(y >= 0)
        _within(y[:, 3], lognormal_mean, "E y = E exp(x)")
        # Given the path, y_t - exp(x_t) has mean 0 and variance exp(x_t).
        _within(y[:, 3] - np.exp(x[:, 3]), 0.0, "E(y - rate)")
        _within((y[:, 3] - np.exp(x[:, 3])) ** 2 - np.exp(x[:, 3]), 0.0, "Var(y | x)")


def test_sampled_growth_paths_follow_the_documented_time_index():
    q, r = 2.0, 0.5
    x, y = _paths(NonlinearGrowth(jnp.float32(q), r, 5.0), jax.random.key(12))
    assert x.dtype == y.dtype == jnp.float32
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    _within(x[:, 0] ** 2, 5.0, "Var x_0")
    t = np.arange(LENGTH - 1)
    mean = x[:, :-1] / 2 + 25 * x[:, :-1] / (1 + x[:, :-1] ** 2) + 8 * np.cos(1.2 * (t + 1))
    residual = x[:, 1:] - mean
    for s in (0, 4, LENGTH - 2):
        _within(residual[:, s], 0.0, f"E w_{s}")
        _within(residual[:, s] ** 2, q, f"Var w_{s}")
    noise = y - x**2 / 20
    _within(noise[:, 7], 0.0, "E v")
    _within(noise[:, 7] ** 2, r, "Var v")


# -- dtypes, jit, vmap, gradients ------------------------------------------------------------------

MODELS = {
    "stochastic_volatility": lambda dtype: StochasticVolatility(
        jnp.asarray(SV["mu"], dtype), SV["rho"], SV["sigma"]
    ),
    "growth": lambda dtype: NonlinearGrowth(jnp.asarray(10.0, dtype), 1.0, 5.0),
    "poisson_ar1": lambda dtype: PoissonAR1(jnp.asarray(COX["mu"], dtype), 0.8, 0.5),
}


@pytest.mark.parametrize("name", MODELS)
def test_float32_and_float64_are_kept(name):
    low, high = MODELS[name](jnp.float32), MODELS[name](jnp.float64)
    for leaf in jax.tree.leaves(low):
        assert leaf.dtype == jnp.float32
    for leaf in jax.tree.leaves(high):
        assert leaf.dtype == jnp.float64
    # (the dtypes of draws: the tests of sampled paths)

    def terms(model, x, y):
        return (
            model.initial().log_prob(x),
            model.transition(x, at(4)).log_prob(x[::-1]),
            model.emission(x, at(4)).log_prob(y),
        )

    x, y = np.array([0.3, 1.1, 2.0]), np.array([1.0, 0.0, 2.0])
    reference = jax.jit(terms)(high, jnp.asarray(x), jnp.asarray(y))
    for model, dtype, rtol in ((low, jnp.float32, 1e-5), (high, jnp.float64, 1e-13)):
        got = jax.jit(terms)(model, jnp.asarray(x, dtype), jnp.asarray(y, dtype))
        assert all(term.dtype == dtype for term in got)
        np.testing.assert_allclose(got, reference, rtol=rtol)


@pytest.mark.parametrize("name", MODELS)
def test_models_work_under_jit_and_vmap(name):
    model = MODELS[name](jnp.float64)

    @jax.jit
    def log_joint(m, x, y):
        steps = jnp.arange(x.shape[0] - 1)
        moves = jax.vmap(lambda t, a, b: m.transition(a, at(t)).log_prob(b))(steps, x[:-1], x[1:])
        emits = jax.vmap(lambda a, b: m.emission(a).log_prob(b))(x, y)
        return m.initial().log_prob(x[0]) + moves.sum() + emits.sum()

    x = jnp.asarray([0.3, -1.2, 0.8, 2.1, 1.7, -0.4, 0.0, 0.9])
    y = jnp.asarray([1.0, 0.0, 2.0, 7.0, 4.0, 0.0, 1.0, 3.0])  # counts, for the Poisson model
    eager = model.initial().log_prob(x[0])
    for t in range(7):
        eager += model.transition(x[t], at(t)).log_prob(x[t + 1])
    for t in range(8):
        eager += model.emission(x[t]).log_prob(y[t])
    np.testing.assert_allclose(log_joint(model, x, y), eager, rtol=1e-12)
    # A batch of models, built from a batch of parameters inside vmap.
    params = jnp.asarray([0.1, 0.5, 0.9])
    if name == "growth":
        batch = jax.vmap(lambda p: log_joint(NonlinearGrowth(10.0 * p, 1.0, 5.0), x, y))(params)
        single = [log_joint(NonlinearGrowth(10.0 * p, 1.0, 5.0), x, y) for p in params]
    else:
        cls = type(model)
        batch = jax.vmap(lambda p: log_joint(cls(-0.3, p, 0.4), x, y))(params)
        single = [log_joint(cls(-0.3, p, 0.4), x, y) for p in params]
    np.testing.assert_allclose(batch, single, rtol=1e-12)


def _sv_log_density(theta, x0, x1, y1):
    """log N(x0; stationary) + log N(x1; AR(1) from x0) + log N(y1; 0, e^x1), with scipy."""
    mu, rho, sigma = theta
    return (
        stats.norm.logpdf(x0, mu, sigma / np.sqrt(1 - rho**2))
        + stats.norm.logpdf(x1, mu + rho * (x0 - mu), sigma)
        + stats.norm.logpdf(y1, 0.0, np.exp(x1 / 2))
    )


def _cox_log_density(theta, x0, x1, y1):
    mu, phi, sigma = theta
    return (
        stats.norm.logpdf(x0, mu, sigma / np.sqrt(1 - phi**2))
        + stats.norm.logpdf(x1, mu + phi * (x0 - mu), sigma)
        + stats.poisson.logpmf(y1, np.exp(x1))
    )


def _growth_log_density(theta, x0, x1, y1):
    q, r, p0 = theta
    mean = x0 / 2 + 25 * x0 / (1 + x0**2) + 8 * np.cos(1.2 * 4)  # the move out of step 3
    return (
        stats.norm.logpdf(x0, 0.0, np.sqrt(p0))
        + stats.norm.logpdf(x1, mean, np.sqrt(q))
        + stats.norm.logpdf(y1, x1**2 / 20, np.sqrt(r))
    )


@pytest.mark.parametrize(
    "cls, theta, reference, y1",
    [
        (StochasticVolatility, (-0.8, 0.93, 0.3), _sv_log_density, 0.7),
        (PoissonAR1, (0.4, -0.7, 0.5), _cox_log_density, 3.0),
        (NonlinearGrowth, (3.0, 0.8, 2.0), _growth_log_density, 1.5),
    ],
    ids=["stochastic_volatility", "poisson_ar1", "growth"],
)
def test_gradients_match_finite_differences(cls, theta, reference, y1):
    x0, x1 = 0.4, -0.3

    def log_density(model):
        return (
            model.initial().log_prob(x0)
            + model.transition(x0, at(3)).log_prob(x1)
            + model.emission(x1, at(4)).log_prob(y1)
        )

    @jax.jit
    def value_and_grads(params):
        value, grad = jax.value_and_grad(lambda p: log_density(cls(*p)))(params)
        return value, grad, eqx.filter_grad(log_density)(cls(*params))

    value, grad, leaf_grads = value_and_grads(jnp.asarray(theta))
    theta = np.asarray(theta)
    np.testing.assert_allclose(value, reference(theta, x0, x1, y1), rtol=1e-13)
    expected = central_difference(lambda p: reference(p, x0, x1, y1), theta)
    np.testing.assert_allclose(grad, expected, rtol=1e-7, atol=1e-9)
    # With respect to the stored leaves (mu; u = logit((rho + 1) / 2); log sigma), by the chain
    # rule: d rho / du = (1 - rho^2) / 2 and d sigma / d log sigma = sigma.
    stored = jax.tree.leaves(leaf_grads)
    for g, leaf, value, d in zip(
        stored, jax.tree.leaves(cls(*theta), is_leaf=_is_param), theta, expected, strict=True
    ):
        if isinstance(leaf, Interval):
            d = d * (1 - value**2) / 2
        elif isinstance(leaf, bs.Positive):
            d = d * value
        np.testing.assert_allclose(g, d, rtol=1e-7, atol=1e-9)


def _is_param(x):
    return isinstance(x, bs.AbstractConstrained)


# -- checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: StochasticVolatility(-1.0, 1.0, 0.2), "rho must lie strictly between -1 and 1"),
        (lambda: StochasticVolatility(-1.0, -1.3, 0.2), "rho must lie strictly"),
        (lambda: StochasticVolatility(-1.0, 0.9, 0.0), "sigma must be a finite positive"),
        (lambda: StochasticVolatility(-1.0, 0.9, -0.2), "sigma must be a finite positive"),
        (lambda: StochasticVolatility(np.nan, 0.9, 0.2), "mu must be a finite number"),
        (lambda: StochasticVolatility([0.0, 1.0], 0.9, 0.2), r"mu must be a scalar.*\(2,\)"),
        (lambda: StochasticVolatility(0.0, [0.9], 0.2), "rho must be a scalar"),
        (
            lambda: StochasticVolatility(0.0, Interval.from_value(0.9, -2.0, 2.0), 0.2),
            r"Interval on \(-2.0, 2.0\).*outside \(-1, 1\)",
        ),
        (lambda: StochasticVolatility(0.0, 0.9, np.inf), "sigma must be a finite positive"),
        (lambda: PoissonAR1(0.0, 1.5, 0.2), "phi must lie strictly between -1 and 1"),
        (lambda: PoissonAR1(0.0, 0.5, np.zeros(3)), "sigma must be a scalar"),
        (lambda: PoissonAR1(np.inf, 0.5, 0.1), "mu must be a finite number"),
        (lambda: NonlinearGrowth(transition_variance=-1.0), "transition_variance must be a"),
        (lambda: NonlinearGrowth(observation_variance=0.0), "observation_variance must be a"),
        (lambda: NonlinearGrowth(initial_variance=np.nan), "initial_variance must be a"),
        (lambda: NonlinearGrowth(initial_variance=[1.0, 2.0]), "initial_variance must be a sca"),
        (
            lambda: NonlinearGrowth(bs.Positive(jnp.asarray(np.nan))),
            "transition_variance has a non-finite unconstrained",
        ),
    ],
)
def test_bad_parameters_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_constrained_leaves_are_accepted_and_kept():
    rho = Interval.from_value(jnp.asarray(0.2, jnp.float32), low=0.0, high=1.0)
    sigma = bs.Positive.from_value(jnp.asarray(0.5, jnp.float32))
    model = StochasticVolatility(1.0, rho, sigma)
    assert (model.rho.low, model.rho.high) == (0.0, 1.0)
    assert model.mu.dtype == jnp.float32  # Python numbers follow the arrays among the parameters
    values = bs.unwrap(model)
    np.testing.assert_allclose([values.mu, values.rho, values.sigma], [1.0, 0.2, 0.5], rtol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_check_data_wants_one_column_and_no_controls(name):
    model = MODELS[name](jnp.float64)
    model.check_data(10, None, None)
    model.check_data(10, 1, None)
    with pytest.raises(ValueError, match=r"y must have shape \(T,\) or \(T, 1\), got M = 2"):
        model.check_data(10, 2, None)
    with pytest.raises(ValueError, match="no control inputs"):
        model.check_data(10, 1, jnp.ones((10, 1)))
    with pytest.raises(ValueError, match="no control inputs"):
        model.sample(jax.random.key(0), 10, inputs=jnp.ones((10, 1)))
