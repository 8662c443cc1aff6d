"""The particle filter's bulk draws (bayesssm/inference/_random.py) against independent references.

- Threefry-2x32 against JAX's own implementation (`jax.extend.random.threefry_2x32`), word
  for word.
- The logarithm and the cosine against NumPy's, to float64 rounding (float32 rounding in float32).
- Normals: a chi-square test of binned counts (bins of equal probability, and the far tails in
  one bin each side), the first four moments, and the correlation between neighbouring draws,
  between the draws of a key and of a key split from it, and between the uniforms and normals
  of one key. Uniforms: a chi-square test of binned counts. With fixed keys these outcomes are
  deterministic; the levels say how unlikely a failure of a correct generator is for a key drawn
  at random (0.1% per check).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from jax.extend.random import threefry_2x32 as jax_threefry

from bayesssm.inference import _random as random

LEVEL = 1e-3
SIZE = 400_000


def test_threefry_matches_jax():
    for seed in range(3):
        words = jax.random.key_data(jax.random.key(seed))
        counters = jax.random.bits(jax.random.key(100 + seed), (2, 1000), jnp.uint32)
        ours = random.threefry_2x32(words, counters[0], counters[1])
        theirs = jax_threefry(words, counters.reshape(-1))
        np.testing.assert_array_equal(np.concatenate(ours), np.asarray(theirs))


def test_log_matches_numpy():
    grid = np.concatenate(
        [np.linspace(2.0**-52, 1.0, 200_001), 2.0 ** -np.arange(0, 60.0), [1.0 - 2.0**-52]]
    )
    grid = np.concatenate([grid, np.nextafter(grid, 0.0), np.nextafter(grid, 2.0)])
    ours = np.asarray(random.log_unit(jnp.asarray(grid)))
    np.testing.assert_allclose(ours, np.log(grid), rtol=4e-16, atol=2e-16)
    grid32 = grid.astype(np.float32)
    ours32 = np.asarray(random.log_unit(jnp.asarray(grid32)))
    np.testing.assert_allclose(ours32, np.log(grid32.astype(np.float64)), rtol=3e-7, atol=2e-7)


def test_cosine_of_quarter_turns_matches_numpy():
    # the range the filter uses (4 u - k for u in [0, 1), k = 0, 1), its ends and the quadrants
    u = np.concatenate([np.linspace(0.0, 1.0, 400_001)[:-1], np.arange(8) / 8, [1 - 2.0**-52]])
    v = np.concatenate([4 * u, 4 * u - 1])
    ours = np.asarray(random.cos_quarter_turns(jnp.asarray(v)))
    np.testing.assert_allclose(ours, np.cos(np.pi / 2 * v), rtol=0, atol=1e-15)
    # the quarter turns, where the reduction changes sign
    quarters = np.arange(-1.0, 4.0)
    np.testing.assert_allclose(
        random.cos_quarter_turns(jnp.asarray(quarters)), [0, 1, 0, -1, 0], rtol=0, atol=1e-16
    )
    v32 = v.astype(np.float32)
    ours32 = np.asarray(random.cos_quarter_turns(jnp.asarray(v32)))
    np.testing.assert_allclose(ours32, np.cos(np.pi / 2 * v32.astype(np.float64)), atol=3e-7)


def test_pairs_make_their_normals():
    radius, turns = random.polar(jax.random.key(6), (3, 5), jnp.float64)
    assert radius.shape == turns.shape == (3, 5)
    z = np.asarray(random.from_polar(radius, turns))
    r, t = np.asarray(radius), np.asarray(turns)
    # by rows: each row's cosines, then its sines; radii below 8.5 times the cosine's 1e-15
    expected = np.concatenate([r * np.cos(2 * np.pi * t), r * np.sin(2 * np.pi * t)], axis=1)
    np.testing.assert_allclose(z, expected, rtol=0, atol=1e-14)
    # odd sizes drop the last sine
    assert random.normal(jax.random.key(6), (7,), jnp.float64).shape == (7,)


def _chi_square_p(values: np.ndarray, edges: np.ndarray, cdf) -> float:
    counts = np.histogram(values, bins=edges)[0]
    expected = len(values) * np.diff(cdf(edges))
    return float(scipy.stats.chisquare(counts, expected).pvalue)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_normal_distribution(dtype):
    z = np.asarray(random.normal(jax.random.key(0), (SIZE // 100, 100), dtype), np.float64)
    assert z.shape == (SIZE // 100, 100)
    z = z.ravel()
    inner = scipy.stats.norm.ppf(np.linspace(0, 1, 101)[1:-1])
    edges = np.concatenate([[-np.inf, -4.0], inner, [4.0, np.inf]])
    assert _chi_square_p(z, edges, scipy.stats.norm.cdf) > LEVEL
    # moments: mean 0, variance 1, skewness 0, excess kurtosis 0; SEs 1, sqrt 2, sqrt 6, sqrt 24
    bound = 3.5 / np.sqrt(SIZE)
    assert abs(z.mean()) < bound
    assert abs(z.var() - 1.0) < bound * np.sqrt(2)
    assert abs(scipy.stats.skew(z)) < bound * np.sqrt(6)
    assert abs(scipy.stats.kurtosis(z)) < bound * np.sqrt(24)


def test_draws_are_uncorrelated():
    key = jax.random.key(1)
    z = np.asarray(random.normal(key, (SIZE,), jnp.float64))
    # the two normals of a pair (cosine and sine halves) are independent
    half = SIZE // 2
    assert abs(np.corrcoef(z[:half], z[half:])[0, 1]) < 3.5 / np.sqrt(half)
    assert abs(np.corrcoef(z[:half] ** 2, z[half:] ** 2)[0, 1]) < 3.5 / np.sqrt(half)
    child = np.asarray(random.normal(jax.random.split(key)[0], (SIZE,), jnp.float64))
    u = np.asarray(random.uniform(key, (SIZE,), jnp.float64))
    bound = 3.5 / np.sqrt(SIZE)
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < bound
    assert abs(np.corrcoef(z, child)[0, 1]) < bound
    assert abs(np.corrcoef(z, u)[0, 1]) < bound
    assert abs(np.corrcoef(z**2, np.roll(z, 1) ** 2)[0, 1]) < bound


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_uniform_distribution(dtype):
    u = np.asarray(random.uniform(jax.random.key(2), (SIZE,), dtype), np.float64)
    assert u.min() >= 0.0 and u.max() < 1.0
    edges = np.linspace(0.0, 1.0, 101)
    assert _chi_square_p(u, edges, lambda x: np.clip(x, 0, 1)) > LEVEL


def test_float64_uniforms_carry_52_bits():
    u = np.asarray(random.uniform(jax.random.key(3), (SIZE,), jnp.float64))
    scaled = u * 2.0**52
    np.testing.assert_array_equal(scaled, np.round(scaled))
    # bits below the 32nd are random too: a quarter of the draws have both of the last two set
    last_two = scaled.astype(np.int64) & 3
    assert abs(np.mean(last_two == 3) - 0.25) < 3.5 * np.sqrt(0.25 * 0.75 / SIZE)


def test_other_key_implementations_fall_back_to_jax_random():
    key = jax.random.key(4, impl="rbg")
    z = random.normal(key, (1000,), jnp.float64)
    np.testing.assert_array_equal(z, jax.random.normal(key, (1000,), jnp.float64))
    u = random.uniform(key, (10,), jnp.float32)
    np.testing.assert_array_equal(u, jax.random.uniform(key, (10,), jnp.float32))
    # pairs for the particle filter: from jax.random's uniforms, normal in law
    z = np.asarray(random.from_polar(*random.polar(key, (SIZE // 2,), jnp.float64)))
    inner = scipy.stats.norm.ppf(np.linspace(0, 1, 101)[1:-1])
    edges = np.concatenate([[-np.inf, -4.0], inner, [4.0, np.inf]])
    assert _chi_square_p(z, edges, scipy.stats.norm.cdf) > LEVEL


def test_raw_threefry_keys_are_accepted():
    raw = jax.random.PRNGKey(5)
    typed = jax.random.wrap_key_data(raw)
    np.testing.assert_array_equal(
        random.normal(raw, (100,), jnp.float64), random.normal(typed, (100,), jnp.float64)
    )


def test_reciprocal_without_division_matches_numpy():
    # the logarithm's 1 / (m + 1) over its whole range, ends included
    d = np.concatenate([np.linspace(1 + np.sqrt(0.5), 1 + np.sqrt(2.0), 100_001)])
    d = np.concatenate([d, np.nextafter(d, 0.0), np.nextafter(d, 4.0)])
    ours = np.asarray(random._reciprocal(jnp.asarray(d)))
    np.testing.assert_allclose(ours, 1 / d, rtol=3e-16, atol=0)
    ours32 = np.asarray(random._reciprocal(jnp.asarray(d, jnp.float32)))
    np.testing.assert_allclose(ours32, 1 / d.astype(np.float32).astype(np.float64), rtol=2e-7)
