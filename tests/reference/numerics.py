"""Plain numerical checks shared by tests: directional derivatives against central differences,
and the imputation error of a model on held-out rows."""

import jax
import jax.numpy as jnp
import numpy as np


def check_directional_derivatives(f, params, grads, eps=1e-6, rtol=1e-6):
    """<grad, d> against central differences of f along a few random directions d."""
    rng = np.random.default_rng(0)
    for _ in range(3):
        d = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), params)
        plus = jax.tree.map(lambda p, v: p + eps * v, params, d)
        minus = jax.tree.map(lambda p, v: p - eps * v, params, d)
        fd = (f(plus) - f(minus)) / (2 * eps)
        pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(d), strict=True)
        g = sum(jnp.vdot(a, b) for a, b in pairs)
        np.testing.assert_allclose(float(g), float(fd), rtol=rtol)


def imputation_mse(predict, data) -> float:
    """Mean squared error of `predict(series, times)` at each series' missing rows against the
    noisy targets there (a `bs.datasets.PendulumData`)."""
    errors = []
    for series, target in zip(data.series(), np.asarray(data.targets), strict=True):
        gone = np.isnan(np.asarray(series.values)[:, 0])
        mean = predict(series, np.asarray(series.times)[gone])
        errors.append((np.asarray(mean) - target[gone]) ** 2)
    return float(np.mean(np.concatenate(errors)))
