"""An inclusive associative scan that traces its combining function a few times, not 2 log2(T).

`jax.lax.associative_scan` recurses on the odd/even halves and calls the combining function at
every level with a new shape, so the program holds about 2 log2(T) copies of it. The Kalman
elements' combination holds several QR factorisations and triangular solves, and with its
derivatives those copies cost tens of seconds of compilation. Here the halving recursion stops
once at most `_BASE` elements remain; those are scanned by recursive doubling (Hillis-Steele)
inside one `fori_loop`, which traces the combination once. That base does O(B log B) combinations
instead of O(B) (B <= _BASE), a fixed cost of at most a thousand small products; the span stays
O(log T).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp

Elements = TypeVar("Elements")

# Largest length scanned by recursive doubling; a power of two.
_BASE = 128


def associative_scan(
    combine: Callable[[Elements, Elements], Elements], elements: Elements, reverse: bool = False
) -> Elements:
    """Inclusive scan of `elements` (a pytree of arrays with a common leading axis) by the
    batched associative `combine(earlier, later)`; `reverse` scans from the end, as in
    `jax.lax.associative_scan`."""
    if reverse:
        flipped = jax.tree.map(lambda a: jnp.flip(a, 0), elements)
        return jax.tree.map(lambda a: jnp.flip(a, 0), associative_scan(combine, flipped))
    length = _size(elements)
    if length <= _BASE:
        return _doubling_scan(combine, elements)
    # Combine neighbouring pairs, scan the pairs, then fill in the even positions.
    pairs = combine(_take(elements, 0, length - 1, 2), _take(elements, 1, length, 2))
    odd = associative_scan(combine, pairs)  # prefixes ending at 1, 3, 5, ...
    later = _take(elements, 2, length, 2)
    even = combine(_take(odd, 0, _size(later), 1), later)  # prefixes ending at 2, 4, ...
    first = jax.tree.map(lambda a: a[:1], elements)
    even = jax.tree.map(lambda f, e: jnp.concatenate([f, e]), first, even)
    return jax.tree.map(lambda e, o: _interleave(e, o, length), even, odd)


def _doubling_scan(combine, elements):
    length = _size(elements)
    if length == 1:
        return elements
    steps = (length - 1).bit_length()  # 2^steps >= length
    size = 1 << steps
    # Pad to a power of two with copies of the last element: positions past the end never feed
    # the prefixes before them.
    padded = jax.tree.map(
        lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], size - length, axis=0)]), elements
    )
    index = jnp.arange(size)

    def level(k, acc):
        shift = jnp.left_shift(1, k)
        combined = combine(jax.tree.map(lambda a: a[jnp.maximum(index - shift, 0)], acc), acc)
        keep = index < shift  # already complete prefixes
        return jax.tree.map(
            lambda c, a: jnp.where(keep.reshape((-1,) + (1,) * (a.ndim - 1)), a, c), combined, acc
        )

    scanned = jax.lax.fori_loop(0, steps, level, padded)
    return jax.tree.map(lambda a: a[:length], scanned)


def _take(elements, start: int, stop: int, step: int):
    return jax.tree.map(lambda a: a[start:stop:step], elements)


def _size(elements) -> int:
    return jax.tree.leaves(elements)[0].shape[0]


def _interleave(even, odd, length: int):
    """[even[0], odd[0], even[1], odd[1], ...] of total length `length`."""
    if even.shape[0] > odd.shape[0]:
        odd = jnp.concatenate([odd, jnp.zeros_like(odd[:1])])
    both = jnp.stack([even, odd], axis=1).reshape((-1,) + even.shape[1:])
    return both[:length]
