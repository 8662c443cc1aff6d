"""The sequential mode's hand-written reverse pass (bayesssm/nn/_scan_adjoint.py) against JAX's
own reverse mode of the parallel mode (an associative scan over the same discretisation), for
every parameter, the inputs, the gaps and the initial state, with the final state in the loss;
and against central finite differences of the loss along random directions. float64."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_s4d import make_layer

L = 17


def _loss(mode):
    def loss(layer, u, dt, x0):
        y, x = layer(u, dt=dt, state=x0, mode=mode)
        # a nonlinear readout of both outputs, so every cotangent is generic
        return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(x.real) * x.imag)

    return loss


def _inputs(layer, seed, irregular):
    rng = np.random.default_rng(seed)
    u = jnp.asarray(rng.normal(size=(L, layer.size)))
    dt = jnp.asarray(rng.uniform(0.2, 2.0, size=L)) if irregular else None
    shape = (layer.size, layer.state_size)
    x0 = jnp.asarray(rng.normal(size=shape) + 1j * rng.normal(size=shape))
    return u, dt, x0


@pytest.mark.parametrize("discretisation", ["zoh", "bilinear"])
@pytest.mark.parametrize("irregular", [False, True])
def test_gradient_equals_reverse_mode_of_the_parallel_mode(discretisation, irregular):
    layer = make_layer(discretisation=discretisation, seed=3)
    u, dt, x0 = _inputs(layer, 4, irregular)
    argnums = (0, 1, 2, 3) if irregular else (0, 1, 3)

    def grads(mode):
        def f(*args):
            full = list(args)
            if not irregular:
                full.insert(2, None)
            return _loss(mode)(*full)

        wrt = [layer, u, dt, x0] if irregular else [layer, u, x0]
        return eqx.filter_grad(lambda a: f(*a))(wrt)

    ours, reference = grads("scan"), grads("parallel")
    leaves_ours, leaves_reference = jax.tree.leaves(ours), jax.tree.leaves(reference)
    assert len(leaves_ours) == len(leaves_reference) == 8 + len(argnums) - 1
    for a, b in zip(leaves_ours, leaves_reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


def test_gradient_matches_finite_differences_along_random_directions():
    layer = make_layer(discretisation="bilinear", seed=5)
    u, dt, x0 = _inputs(layer, 6, True)
    params, static = eqx.partition(layer, eqx.is_inexact_array)

    def f(p):
        return _loss("scan")(eqx.combine(p, static), u, dt, x0)

    grad = eqx.filter_grad(f)(params)
    rng = np.random.default_rng(7)
    h = 1e-6
    for _ in range(3):
        direction = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), params)
        plus = f(jax.tree.map(lambda x, d: x + h * d, params, direction))
        minus = f(jax.tree.map(lambda x, d: x - h * d, params, direction))
        numeric = (plus - minus) / (2 * h)
        pairs = zip(jax.tree.leaves(grad), jax.tree.leaves(direction), strict=True)
        analytic = sum(jnp.vdot(g, d) for g, d in pairs)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


def test_vmap_and_jit():
    layer = make_layer(discretisation="zoh", seed=8)
    rng = np.random.default_rng(9)
    u = jnp.asarray(rng.normal(size=(3, L, layer.size)))
    dt = jnp.asarray(rng.uniform(0.2, 2.0, size=(3, L)))

    def total(mode):
        def f(m):
            y = jax.vmap(lambda u, d: m(u, dt=d, mode=mode)[0])(u, dt)
            return jnp.sum(y**2)

        return eqx.filter_jit(eqx.filter_grad(f))(layer)

    pairs = zip(jax.tree.leaves(total("scan")), jax.tree.leaves(total("parallel")), strict=True)
    for a, b in pairs:
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


def test_forward_mode_is_refused_in_scan_mode_and_served_by_the_parallel_mode():
    layer = make_layer(discretisation="bilinear", seed=10)
    u, dt, x0 = _inputs(layer, 11, True)
    tangent = jnp.ones_like(u)

    def f(mode):
        return lambda u: layer(u, dt=dt, state=x0, mode=mode)[0]

    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(f("scan"), (u,), (tangent,))
    _, forward = jax.jvp(f("parallel"), (u,), (tangent,))
    _, pullback = jax.vjp(f("scan"), u)
    # <J t, w> = <t, J^T w> for a random w
    w = jnp.asarray(np.random.default_rng(12).normal(size=forward.shape))
    np.testing.assert_allclose(jnp.vdot(forward, w), jnp.vdot(tangent, pullback(w)[0]), rtol=1e-10)
