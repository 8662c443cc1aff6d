"""DeepSSM: modes agree, step-by-step and resumed runs equal whole runs, causality, the
bidirectional variant, jit/vmap, gradients and input checks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.numerics import check_directional_derivatives

import bayesssm.nn as bnn

IN, OUT, WIDTH, DEPTH, N = 3, 2, 6, 2, 4
MODES = ("scan", "parallel", "conv")


def perturbed(module, seed, scale=0.2):
    """Every parameter moved at random, so tests do not rely on the initialisation."""
    # NumPy noise: drawing with jax.random would compile a kernel for every new shape
    rng = np.random.default_rng(seed)
    params, static = eqx.partition(module, eqx.is_inexact_array)
    params = jax.tree.map(
        lambda x: jnp.asarray(np.asarray(x) + scale * rng.normal(size=x.shape), x.dtype), params
    )
    return eqx.combine(params, static)


def make_net(seed=0, bidirectional=False, **kwargs):
    kwargs = {"width": WIDTH, "depth": DEPTH, "state_size": N, **kwargs}
    net = bnn.DeepSSM(
        IN,
        OUT,
        key=jax.random.key(seed),
        bidirectional=bidirectional,
        dt_min=0.05,
        dt_max=0.5,
        **kwargs,
    )
    return perturbed(net, seed + 50)


@eqx.filter_jit
def run(net, u, dt, state, mode):
    return net(u, dt=dt, state=state, mode=mode)


def random_states(seed, depth=DEPTH, width=WIDTH, n=N):
    rng = np.random.default_rng(seed)
    return tuple(
        jnp.asarray(rng.normal(size=(width, n)) + 1j * rng.normal(size=(width, n)))
        for _ in range(depth)
    )


def assert_close(a, b, tol=1e-9):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale)


def assert_states_close(s, t, tol=1e-9):
    assert len(s) == len(t)
    for a, b in zip(s, t, strict=True):
        assert a.shape == b.shape
        assert_close(a, b, tol)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_modes_agree(bidirectional):
    net = make_net(1, bidirectional)
    rng = np.random.default_rng(2)
    L = 16
    u = jnp.asarray(rng.normal(size=(L, IN)))
    start = None if bidirectional else random_states(3)
    ref_y, ref_s = run(net, u, None, start, "scan")
    assert ref_y.shape == (L, OUT)
    assert len(ref_s) == (0 if bidirectional else DEPTH)
    for mode in ("parallel", "conv"):
        y, s = run(net, u, None, start, mode)
        assert_close(y, ref_y)
        assert_states_close(s, ref_s)
    # irregular gaps: the two scans agree
    dt = jnp.asarray(rng.uniform(0.1, 2.0, L))
    y_scan, s_scan = run(net, u, dt, start, "scan")
    y_par, s_par = run(net, u, dt, start, "parallel")
    assert_close(y_par, y_scan)
    assert_states_close(s_par, s_scan)
    assert not np.allclose(y_scan, ref_y)  # the gaps matter
    with pytest.raises(ValueError, match="mode='conv' needs a constant step"):
        net(u, dt=dt, mode="conv")


def test_step_by_step_equals_call():
    net = make_net(4)
    rng = np.random.default_rng(5)
    L = 16
    u = jnp.asarray(rng.normal(size=(L, IN)))
    dt = jnp.asarray(rng.uniform(0.1, 2.0, L))
    y_all, s_all = run(net, u, dt, None, "parallel")
    step = eqx.filter_jit(lambda net, s, u, dt: net.step(s, u, dt))
    s, ys = net.init_state(), []
    assert len(s) == DEPTH and all(x.shape == (WIDTH, N) for x in s)
    for l in range(L):
        s, y = step(net, s, u[l], dt[l])
        ys.append(y)
    assert_close(jnp.stack(ys), y_all)
    assert_states_close(s, s_all)
    # the default gap is 1
    _, y0 = step(net, net.init_state(), u[0], None)
    assert_close(y0, run(net, u[:1], None, None, "scan")[0][0])


@pytest.mark.parametrize("mode", MODES)
def test_resumption(mode):
    net = make_net(6)
    rng = np.random.default_rng(7)
    L, L1 = 16, 5
    u = jnp.asarray(rng.normal(size=(L, IN)))
    y_all, s_all = run(net, u, None, None, mode)
    y1, s1 = run(net, u[:L1], None, None, mode)
    y2, s2 = run(net, u[L1:], None, s1, mode)
    assert_close(jnp.concatenate([y1, y2]), y_all)
    assert_states_close(s2, s_all)


@pytest.mark.parametrize("mode", MODES)
def test_causality(mode):
    rng = np.random.default_rng(8)
    L, at = 16, 9
    u = jnp.asarray(rng.normal(size=(L, IN)))
    moved = u.at[at].add(1.0)
    for bidirectional in (False, True):
        net = make_net(9, bidirectional)
        change = np.abs(
            np.asarray(run(net, moved, None, None, mode)[0] - run(net, u, None, None, mode)[0])
        )
        assert change[at:].max() > 1e-3
        if bidirectional:
            assert change[:at].max(axis=1).min() > 1e-8  # every earlier output sees u[at]
        else:
            assert change[:at].max() < 1e-12


def test_bidirectional_reads_gaps_backwards():
    """With each block's backward layer tied to its forward one, reading the series backwards
    (its gaps reversed too) must give the outputs backwards."""
    net = make_net(17, bidirectional=True)
    for i in range(DEPTH):
        net = eqx.tree_at(lambda m, i=i: m.blocks[i].ssm_back, net, net.blocks[i].ssm)
    rng = np.random.default_rng(18)
    L = 16
    u = jnp.asarray(rng.normal(size=(L, IN)))
    times = np.cumsum(rng.uniform(0.1, 2.0, L))
    dt = jnp.asarray(np.diff(times, prepend=0.0))
    # the reversed series has times -t[::-1]; its first gap (before any input) is kept as dt[0]
    dt_back = jnp.asarray(np.concatenate([[dt[0]], np.diff(-times[::-1])]))
    y, _ = run(net, u, dt, None, "parallel")
    y_back, _ = run(net, u[::-1], dt_back, None, "parallel")
    assert_close(y_back[::-1], y)


def test_bidirectional_has_no_state():
    net = make_net(10, bidirectional=True)
    u = jnp.ones((4, IN))
    with pytest.raises(ValueError, match="bidirectional"):
        net.init_state()
    with pytest.raises(ValueError, match="bidirectional"):
        net.step((), u[0])
    with pytest.raises(ValueError, match="bidirectional"):
        net(u, state=random_states(0))
    assert run(net, u, None, None, "parallel")[1] == ()


def test_jit_and_vmap_over_a_batch():
    net = make_net(11)
    rng = np.random.default_rng(12)
    U = jnp.asarray(rng.normal(size=(3, 16, IN)))
    DT = jnp.asarray(rng.uniform(0.1, 2.0, (3, 16)))
    batched = eqx.filter_jit(jax.vmap(lambda u, dt: net(u, dt=dt)))
    Y, S = batched(U, DT)
    assert Y.shape == (3, 16, OUT) and S[0].shape == (3, WIDTH, N)
    for b in range(3):
        y, s = run(net, U[b], DT[b], None, "parallel")
        assert_close(Y[b], y)
        assert_states_close(tuple(x[b] for x in S), s)
    # vmapped steps too
    step = eqx.filter_jit(jax.vmap(lambda s, u, dt: net.step(s, u, dt)))
    S0 = jax.tree.map(lambda x: jnp.broadcast_to(x, (3, *x.shape)), net.init_state())
    S1, Y0 = step(S0, U[:, 0], DT[:, 0])
    assert_close(Y0, Y[:, 0])


def test_gradient_matches_finite_differences():
    # bidirectional: both directions' layers, the norms, GLUs and linear maps get gradients
    net = make_net(13, bidirectional=True)
    rng = np.random.default_rng(14)
    u = jnp.asarray(rng.normal(size=(16, IN)))
    dt = jnp.asarray(rng.uniform(0.2, 2.0, 16))

    def loss(net):
        return jnp.sum(net(u, dt=dt)[0] ** 2)

    params, static = eqx.partition(net, eqx.is_inexact_array)
    f = jax.jit(lambda p: loss(eqx.combine(p, static)))
    grads = eqx.filter_jit(eqx.filter_grad(loss))(net)
    check_directional_derivatives(f, params, grads)


def test_float32_keeps_dtype():
    u = jnp.ones((5, IN), jnp.float32)
    net = make_net(15)
    y, _ = run(net, u, None, None, "parallel")
    assert y.dtype == jnp.float32
    # (the dtype= argument of the layers is tested in test_s4d.py; casting skips new compilations)
    net32 = jax.tree.map(lambda x: x.astype(jnp.float32) if eqx.is_inexact_array(x) else x, net)
    y, s = run(net32, u, None, None, "conv")
    assert y.dtype == jnp.float32 and s[0].dtype == jnp.complex64


def test_bad_inputs():
    net = make_net(16)
    with pytest.raises(ValueError, match=r"u must have shape \(\?, 3\).*in_size"):
        net(jnp.ones((5, IN + 1)))
    with pytest.raises(ValueError, match=r"u must have shape \(3\).*in_size"):
        net.step(net.init_state(), jnp.ones(IN + 1))
    with pytest.raises(ValueError, match="state must be a tuple of 2 arrays"):
        net(jnp.ones((5, IN)), state=random_states(0)[:1])
    with pytest.raises(ValueError, match="step sizes must be > 0"):
        net(jnp.ones((3, IN)), dt=jnp.asarray([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="unknown mode"):
        net(jnp.ones((3, IN)), mode="fft")
    with pytest.raises(ValueError, match="depth must be a positive int"):
        bnn.DeepSSM(IN, OUT, key=jax.random.key(0), depth=0)
    with pytest.raises(ValueError, match="unknown init"):
        bnn.DeepSSM(IN, OUT, key=jax.random.key(0), init="foo")
