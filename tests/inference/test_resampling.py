"""Resampling schemes: unbiased offspring counts, their variance, and the exact edge cases.

Every scheme maps normalised log-weights log W (N,) to N ancestor indices. With counts
$C_i = \\#\\{j : a_j = i\\}$, each scheme must have $E[C_i] = N W_i$. The checks average the counts
of K independent draws (one compiled `vmap` over keys per scheme serves every weight vector of
the same length) and accept within Z = 4 standard errors computed from the draws, per particle:
a correct scheme exceeds that with probability 6.3e-5 per entry, under 1e-3 over the ~100 entries
checked here (the keys are fixed, so the outcome is deterministic). An entry whose count is the
same in every draw (standard error 0) must equal N W_i to rounding.

Variance: the total $\\sum_i (C_i - N W_i)^2$ has expectation $\\sum_i Var(C_i)$, which is
$N (1 - \\sum_i W_i^2)$ for multinomial resampling and strictly smaller for systematic,
stratified and residual resampling (Douc, Cappé and Moulines 2005).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesssm.inference._resampling import (
    PREFIX_SUMS,
    RESAMPLERS,
    SEARCH_METHODS,
    cumulative_sum,
    draw_indices,
    effective_sample_size,
    search_sorted,
)

SCHEMES = sorted(RESAMPLERS)
LOW_VARIANCE = ["residual", "stratified", "systematic"]
N = 10
K = 4000  # draws per check: one standard error of a mean count is under 0.016 here
Z = 4.0


@functools.cache
def _draws(scheme: str):
    """Compiled: (keys (K,), log_weights (N,)) -> ancestor indices (K, N)."""
    resample = RESAMPLERS[scheme]
    return jax.jit(jax.vmap(resample, in_axes=(0, None)))


def _keys(seed: int, num: int = K):
    return jax.random.split(jax.random.key(seed), num)


def _counts(indices: np.ndarray, num: int) -> np.ndarray:
    """Offspring counts (K, N) from ancestor indices (K, N)."""
    return np.stack([np.bincount(row, minlength=num) for row in indices])


def _weights(seed: int = 0) -> np.ndarray:
    """Generic normalised weights of N particles, one of them exactly zero."""
    w = np.random.default_rng(seed).dirichlet(np.ones(N))
    w[3] = 0.0
    return w / w.sum()


def _log(w: np.ndarray) -> jax.Array:
    with np.errstate(divide="ignore"):
        return jnp.asarray(np.log(w))


def assert_mean_within(samples: np.ndarray, target: np.ndarray, what: str) -> None:
    """Mean of `samples` (K, ...) within Z standard errors (from the samples) of `target`."""
    mean = samples.mean(0)
    se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    err = np.abs(mean - target)
    bound = Z * se + 1e-9 * np.maximum(1.0, np.abs(target))  # rounding, for se = 0
    assert np.all(err <= bound), f"{what}: max |err| / se = {np.max(err / (se + 1e-300)):.2f}"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_counts_are_unbiased(scheme):
    w = _weights()
    indices = np.asarray(_draws(scheme)(_keys(1), _log(w)))
    counts = _counts(indices, N)
    assert np.all(counts.sum(1) == N)
    assert np.all(counts[:, 3] == 0), "a zero-weight particle was drawn"
    assert_mean_within(counts, N * w, f"{scheme} counts")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_indices_are_sorted_and_in_range(scheme):
    indices = np.asarray(_draws(scheme)(_keys(2), _log(_weights(1))))
    assert indices.dtype.kind == "i"
    assert np.all((indices >= 0) & (indices < N))
    assert np.all(np.diff(indices, axis=1) >= 0)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("position", [0, 4, N - 1])
def test_all_mass_on_one_particle(scheme, position):
    w = np.zeros(N)
    w[position] = 1.0
    indices = np.asarray(_draws(scheme)(_keys(3), _log(w)))
    np.testing.assert_array_equal(indices, position)


@pytest.mark.parametrize("scheme", LOW_VARIANCE)
@pytest.mark.parametrize("num", [N])
def test_uniform_weights_keep_every_particle_once(scheme, num):
    """N W_i = 1 for every i: a low-variance scheme returns each index exactly once (even when
    N exp(-log N) rounds to just below 1, as it does in float64 for N = 10)."""
    log_w = jnp.full(num, -jnp.log(num))
    indices = np.asarray(_draws(scheme)(_keys(4), log_w))
    np.testing.assert_array_equal(indices, np.broadcast_to(np.arange(num), indices.shape))


def test_residual_keeps_the_integer_part_of_every_count():
    w = _weights(2)
    w = 0.5 * w + 0.5 * np.eye(N)[0]  # N W_0 > 5: several deterministic copies
    indices = np.asarray(_draws("residual")(_keys(5), _log(w)))
    counts = _counts(indices, N)
    floors = np.floor(N * w)
    assert floors[0] >= 5
    assert np.all(counts >= floors)
    # The remainder is N - sum floor(N W) draws, so no count exceeds its floor by more.
    assert np.all(counts - floors <= N - floors.sum())
    assert_mean_within(counts, N * w, "residual counts")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_total_variance_of_counts(scheme):
    """Multinomial's total variance is N (1 - sum W^2); the other schemes stay clearly below."""
    w = _weights(3)
    indices = np.asarray(_draws(scheme)(_keys(6), _log(w)))
    per_draw = ((_counts(indices, N) - N * w) ** 2).sum(1)  # unbiased for the total variance
    mean = per_draw.mean()
    se = per_draw.std(ddof=1) / np.sqrt(K)
    multinomial_total = N * (1.0 - np.sum(w**2))
    if scheme == "multinomial":
        assert abs(mean - multinomial_total) <= Z * se, (mean, multinomial_total, se)
    else:
        assert mean + Z * se < multinomial_total, (mean, se, multinomial_total)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_single_particle(scheme):
    indices = np.asarray(_draws(scheme)(_keys(7), jnp.zeros(1)))
    np.testing.assert_array_equal(indices, 0)


def test_draw_indices_are_iid_from_the_weights():
    w = _weights(4)
    num_draws = 7
    draw = jax.jit(jax.vmap(lambda k, lw: draw_indices(k, lw, num_draws), in_axes=(0, None)))
    indices = np.asarray(draw(_keys(8), _log(w)))
    assert indices.shape == (K, num_draws)
    counts = _counts(indices, N)
    assert np.all(counts[:, 3] == 0)
    assert_mean_within(counts, num_draws * w, "draw_indices counts")
    # iid draws: multinomial variance num_draws W (1 - W) per particle
    per_draw = ((counts - num_draws * w) ** 2).sum(1)
    se = per_draw.std(ddof=1) / np.sqrt(K)
    assert abs(per_draw.mean() - num_draws * (1 - np.sum(w**2))) <= Z * se


def test_effective_sample_size():
    w = _weights(5)
    np.testing.assert_allclose(effective_sample_size(_log(w)), 1.0 / np.sum(w**2), rtol=1e-12)
    np.testing.assert_allclose(effective_sample_size(jnp.full(N, -jnp.log(N))), N, rtol=1e-12)
    np.testing.assert_allclose(effective_sample_size(_log(np.eye(N)[2])), 1.0, rtol=1e-12)


@pytest.mark.parametrize("form", ["chosen", *PREFIX_SUMS])
@pytest.mark.parametrize("dtype", [np.float64, np.int32])
@pytest.mark.parametrize("size", [1, 7, 8, 9, 64, 1000, 4099])
def test_cumulative_sum_matches_numpy(form, dtype, size):
    """The prefix sum this platform uses, and each platform's form (GPUs use "default"), at
    sizes below, at and across the CPU form's blocks of 8 and their levels."""
    prefix_sum = cumulative_sum if form == "chosen" else jax.jit(PREFIX_SUMS[form])
    values = np.random.default_rng(3).integers(0, 50, size=(size, 3)).astype(dtype)
    got = np.asarray(prefix_sum(jnp.asarray(values)))
    np.testing.assert_array_equal(got, np.cumsum(values, axis=0))


@pytest.mark.parametrize("method", [None, *SEARCH_METHODS.values()])
@pytest.mark.parametrize("side", ["left", "right"])
def test_search_sorted_matches_numpy(side, method):
    """The search this platform uses (None), and each platform's method."""
    rng = np.random.default_rng(4)
    weights = rng.exponential(size=200) * (rng.uniform(size=200) < 0.7)  # zero weights: ties
    cumulative = np.cumsum(weights)
    u = np.concatenate([rng.uniform(0, cumulative[-1], 500), cumulative[:20], [cumulative[-1]]])
    if method is None:
        got = search_sorted(jnp.asarray(cumulative), jnp.asarray(u), side=side)
    else:
        index = jnp.searchsorted(jnp.asarray(cumulative), jnp.asarray(u), side=side, method=method)
        got = jnp.minimum(index, 199)
    got = np.asarray(got)
    expected = np.minimum(np.searchsorted(cumulative, u, side=side), 199)
    np.testing.assert_array_equal(got, expected)
