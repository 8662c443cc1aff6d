r"""Uniform and standard normal draws in bulk, for the particle filter's pre-drawn randomness.

`jax.random.normal` in float64 costs about 26 ns a value on CPU: Threefry-2x32 runs as a rolled
loop there, and the uniforms become normals through `erfinv`, whose three polynomial branches are
all evaluated. Here the same Threefry-2x32 block (20 rounds, Salmon et al. 2011; its words match
`jax.extend.random.threefry_2x32` exactly) is written out as integer arithmetic that XLA
vectorises, and each pair of normals is $\sqrt{-2 \log U_1}$ times the cosine and the sine of
$2 \pi U_2$ (Box and Muller 1958), with a logarithm (with no division, see `_reciprocal`) and a
cosine of our own built from exactly known series, so that every operation vectorises and a
block's radii and angles are one fused loop each (one Threefry block per normal).

The draws are exact in the sense `jax.random.normal`'s are: the uniforms carry 52 random bits in
float64 (23 in float32), and the transform is exact, reaching 8.5 standard deviations in
float64. The counters live in a domain (a fixed high word) that `jax.random`'s own counters do
not reach below 2^32 draws, so these draws do not repeat the words of keys split from the same
key. Keys of another implementation than Threefry (such as "rbg") fall back to `jax.random`.

References:
    Salmon, J. K., Moraes, M. A., Dror, R. O. and Shaw, D. E. (2011). Parallel random numbers:
    as easy as 1, 2, 3. SC '11.
    Box, G. E. P. and Muller, M. E. (1958). A note on the generation of random normal deviates.
    Annals of Mathematical Statistics 29(2).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import UInt32

from .._types import Array, Float, Key

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)
_RADIUS_DOMAIN = np.uint32(0x9E3779B9)
_ANGLE_DOMAIN = np.uint32(0x9E3779BA)
_UNIFORM_DOMAIN = np.uint32(0x9E3779BB)


def _rotate_left(x: Array, bits: int) -> Array:
    return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def threefry_2x32(
    key: UInt32[Array, " 2"], x0: UInt32[Array, " *S"], x1: UInt32[Array, " *S"]
) -> tuple[UInt32[Array, " *S"], UInt32[Array, " *S"]]:
    """The Threefry-2x32 block (20 rounds) of the counters (x0, x1) under `key`, unrolled."""
    k0, k1 = key[0], key[1]
    schedule = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0, x1 = x0 + k0, x1 + k1
    for block in range(5):
        for bits in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, bits) ^ x0
        x0 = x0 + schedule[(block + 1) % 3]
        x1 = x1 + schedule[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def _threefry_key(key: Key) -> UInt32[Array, " 2"] | None:
    """The two key words of a Threefry key (typed or raw), or None for another implementation."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        key = jax.random.key_data(key)
    return key.reshape(2) if key.size == 2 and key.dtype == jnp.uint32 else None


def _unit(key: UInt32[Array, " 2"], count: int, domain: np.uint32, dtype) -> Array:
    """`count` uniforms on [0, 1): the mantissa of a float in [1, 2) from the top random bits,
    minus 1 (52 bits in float64, 23 in float32)."""
    counters = jnp.arange(count, dtype=jnp.uint32)
    high, low = threefry_2x32(key, counters, jnp.full(count, domain, jnp.uint32))
    if dtype == jnp.float64:
        bits = (high.astype(jnp.uint64) << np.uint64(20)) | (low.astype(jnp.uint64) >> 12)
        one = np.uint64(0x3FF0000000000000)
        return jax.lax.bitcast_convert_type(bits | one, jnp.float64) - 1.0
    one = np.uint32(0x3F800000)
    unit = jax.lax.bitcast_convert_type((high >> np.uint32(9)) | one, jnp.float32) - 1.0
    return unit.astype(dtype)


def _series(x2: Array, first: int, terms: int) -> Array:
    """sum_{k < terms} c_k x2^k by Horner's rule, c_k = 1 / (2k + 1) for the logarithm's
    series (first = -1), else (-1)^k / (first + 2k)! (sine: first = 1; cosine: first = 0)."""

    def coefficient(k: int) -> float:
        if first < 0:
            return 1.0 / (2 * k + 1)
        return (-1) ** k / math.factorial(first + 2 * k)

    total = jnp.full_like(x2, coefficient(terms - 1))
    for k in range(terms - 2, -1, -1):
        total = coefficient(k) + x2 * total
    return total


# 1/d on [1 + sqrt(1/2), 1 + sqrt(2)] (log_unit's m + 1) to a relative error of E = 0.015 by
# the line a - b d that equioscillates at both ends and the middle: b = 2 / (lo hi + (lo + hi)^2
# / 4), a = b (lo + hi). Each Newton step squares the error: E^16 after four, below float64's
# rounding (E^8 after three, below float32's).
_LOW, _HIGH = 1.0 + math.sqrt(0.5), 1.0 + math.sqrt(2.0)
_SLOPE = 2.0 / (_LOW * _HIGH + (_LOW + _HIGH) ** 2 / 4)
_INTERCEPT = _SLOPE * (_LOW + _HIGH)


def _reciprocal(d: Float[Array, " *S"]) -> Float[Array, " *S"]:
    """1 / d for d in [1 + sqrt(1/2), 1 + sqrt(2)], by multiplications only.

    XLA's CPU fusion keeps an expensive operation (a division) whose result has several users in
    a loop of its own, and recomputes the cheap integer work feeding it (here the Threefry bits)
    in every loop that needs them; without a division the uniforms' bits and the logarithm fuse
    into one vectorised loop (1e6 normals in the filter's blocks: 9.7 against 12.3 ms on one
    core, before the normals came in pairs).
    """
    r = _INTERCEPT - _SLOPE * d
    for _ in range(4 if d.dtype == jnp.float64 else 3):
        r = r + r * (1.0 - d * r)
    return r


def log_unit(v: Float[Array, " *S"]) -> Float[Array, " *S"]:
    """log v for normal floats v > 0: v = 2^e m with m in [sqrt(1/2), sqrt(2)), and
    log m = 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.172, by its odd series."""
    wide = v.dtype == jnp.float64
    uint, mantissa_bits, bias = (jnp.uint64, 52, 1023) if wide else (jnp.uint32, 23, 127)
    bits = jax.lax.bitcast_convert_type(v, uint)
    exponent = (bits >> mantissa_bits).astype(jnp.int32) - bias
    mantissa = (bits & uint((1 << mantissa_bits) - 1)) | uint(bias << mantissa_bits)
    m = jax.lax.bitcast_convert_type(mantissa, v.dtype)  # in [1, 2)
    upper = m > math.sqrt(2.0)
    m = jnp.where(upper, 0.5 * m, m)
    exponent = exponent + upper.astype(jnp.int32)
    s = (m - 1.0) * _reciprocal(m + 1.0)
    # the series' tail after `terms` terms is below s^(2 terms) < 0.0295^terms
    series = _series(s * s, -1, 12 if wide else 5)
    return exponent.astype(v.dtype) * math.log(2.0) + 2.0 * s * series


def cos_quarter_turns(v: Float[Array, " *S"]) -> Float[Array, " *S"]:
    """cos(pi v / 2) for |v| < 2^30.

    v splits exactly into 2 j + f with j = round(v / 2) and f in [-1, 1], and
    cos(pi v / 2) = (-1)^j cos(pi f / 2), where 12 Taylor terms (7 in float32) leave an error
    below 1e-19 (1e-8). One series per value: the sine of a Box-Muller pair is the cosine a
    quarter turn earlier (`from_polar`).
    """
    j = jnp.round(0.5 * v)
    x = (v - 2.0 * j) * (math.pi / 2)
    cosine = _series(x * x, 0, 12 if v.dtype == jnp.float64 else 7)
    odd = (j.astype(jnp.int32) & 1) == 1
    return jnp.where(odd, -cosine, cosine)


def uniform(key: Key, shape: tuple[int, ...], dtype) -> Float[Array, " *S"]:
    """Uniforms on [0, 1) of the given shape and float dtype."""
    words = _threefry_key(key)
    if words is None:
        return jax.random.uniform(key, shape, dtype)
    return _unit(words, math.prod(shape), _UNIFORM_DOMAIN, dtype).reshape(shape)


def polar(
    key: Key, shape: tuple[int, ...], dtype
) -> tuple[Float[Array, " *S"], Float[Array, " *S"]]:
    """Box-Muller pairs of the given shape: radii sqrt(-2 log U1) and angles U2 in turns.

    `from_polar` makes two independent standard normals of each pair. The radii and the angles
    are each one vectorised loop; XLA's CPU backend has no multi-output fusion, so the normals
    should be formed from materialised pairs (the particle filter draws them a block ahead),
    or a pair's bits are computed once for each of its two normals.
    """
    count = math.prod(shape)
    words = _threefry_key(key)
    if words is None:
        key_radius, key_angle = jax.random.split(key)
        u_radius = jax.random.uniform(key_radius, (count,), dtype)
        u_angle = jax.random.uniform(key_angle, (count,), dtype)
    else:
        u_radius = _unit(words, count, _RADIUS_DOMAIN, dtype)
        u_angle = _unit(words, count, _ANGLE_DOMAIN, dtype)
    radius = jnp.sqrt(-2.0 * log_unit(1.0 - u_radius))  # 1 - u is exact and in (0, 1]
    return radius.reshape(shape), u_angle.reshape(shape)


def from_polar(radius: Float[Array, "*B P"], turns: Float[Array, "*B P"]) -> Float[Array, "*B 2P"]:
    """The two normals of each pair, by rows: each row's r cos(2 pi t), then its r sin(2 pi t).

    Both are cosines, cos(2 pi t - k pi / 2) for k = 0, 1, so every normal is one series over
    a (2, P) grid, with no concatenation (which XLA's CPU backend does not vectorise).
    """
    quarter = jnp.arange(2, dtype=turns.dtype)[:, None]
    z = radius[..., None, :] * cos_quarter_turns(4.0 * turns[..., None, :] - quarter)
    return z.reshape(*radius.shape[:-1], 2 * radius.shape[-1])


def normal(key: Key, shape: tuple[int, ...], dtype) -> Float[Array, " *S"]:
    """Standard normals of the given shape and float dtype, from ceil(size / 2) pairs."""
    if _threefry_key(key) is None:
        return jax.random.normal(key, shape, dtype)
    count = math.prod(shape)
    return from_polar(*polar(key, (-(-count // 2),), dtype))[:count].reshape(shape)
