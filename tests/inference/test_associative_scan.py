"""Our associative scan equals a plain left-to-right loop, on a non-commutative combination."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesssm.inference._associative_scan import associative_scan


def compose(earlier, later):
    """Affine maps x -> A x + c, `later` applied after `earlier` (batched)."""
    (A1, c1), (A2, c2) = earlier, later
    return A2 @ A1, jnp.einsum("...ij,...j->...i", A2, c1) + c2


def loop(elements, reverse):
    A, c = (np.asarray(a) for a in elements)
    order = range(len(c) - 1, -1, -1) if reverse else range(len(c))
    out_A, out_c = np.empty_like(A), np.empty_like(c)
    acc = None
    for i in order:
        acc = (A[i], c[i]) if acc is None else (A[i] @ acc[0], A[i] @ acc[1] + c[i])
        out_A[i], out_c[i] = acc
    return out_A, out_c


# Lengths around the switch from halving to doubling (128) and odd ones at every level.
@pytest.mark.parametrize("length", [1, 2, 3, 5, 127, 128, 129, 257, 1001])
@pytest.mark.parametrize("reverse", [False, True])
def test_equals_the_loop(length, reverse):
    rng = np.random.default_rng(length)
    elements = (0.5 * rng.normal(size=(length, 3, 3)), rng.normal(size=(length, 3)))
    ours = jax.jit(lambda e: associative_scan(compose, e, reverse=reverse))(elements)
    for a, b in zip(ours, loop(elements, reverse), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
