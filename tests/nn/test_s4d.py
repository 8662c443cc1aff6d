"""S4DLayer: the three modes against each other and against a NumPy loop of the recurrence,
irregular steps, step-by-step use, gradients, the HiPPO initialisations and input checks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.numerics import check_directional_derivatives

import bayesssm.nn as bnn

H, N = 4, 6
MODES = ("scan", "parallel", "conv")
FIELDS = ("lambda_log_neg_re", "lambda_im", "B_re", "B_im", "C_re", "C_im", "D", "log_step")


def perturbed(module, seed, scale=0.3):
    """The layer with every parameter moved at random, so tests do not rely on the init."""
    # NumPy noise: drawing with jax.random would compile a kernel for every new shape
    rng = np.random.default_rng(seed)
    params, static = eqx.partition(module, eqx.is_inexact_array)
    params = jax.tree.map(
        lambda x: jnp.asarray(np.asarray(x) + scale * rng.normal(size=x.shape), x.dtype), params
    )
    return eqx.combine(params, static)


def make_layer(init="legs", discretisation="zoh", seed=0, size=H, state_size=N, **kwargs):
    kwargs.setdefault("dt_min", 0.05)
    kwargs.setdefault("dt_max", 0.5)
    layer = bnn.S4DLayer(
        size,
        state_size,
        key=jax.random.key(seed),
        init=init,
        discretisation=discretisation,
        **kwargs,
    )
    return perturbed(layer, seed + 100)


def random_inputs(seed, L, size=H, state_size=N, with_state=True):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(L, size))
    x0 = None
    if with_state:
        x0 = rng.normal(size=(size, state_size)) + 1j * rng.normal(size=(size, state_size))
    return u, x0


def numpy_reference(layer, u, dt=None, state=None):
    """The recurrence x_l = exp-or-bilinear(Λ Δ_l) x_{l-1} + B̄_l u_l, y_l = 2 Re(C x_l) + D u_l,
    written out with NumPy's complex scalars (no JAX)."""
    p = {name: np.asarray(getattr(layer, name), dtype=np.float64) for name in FIELDS}
    lam = -np.exp(p["lambda_log_neg_re"]) + 1j * p["lambda_im"]
    B = p["B_re"] + 1j * p["B_im"]
    C = p["C_re"] + 1j * p["C_im"]
    L, size = u.shape
    x = np.zeros(lam.shape, complex) if state is None else np.array(state, complex)
    y = np.zeros((L, size))
    for l in range(L):
        gap = 1.0 if dt is None else float(dt[l])
        for h in range(size):
            delta = np.exp(p["log_step"][h]) * gap
            for n in range(lam.shape[1]):
                z = lam[h, n] * delta
                if layer.discretisation == "zoh":
                    a = np.exp(z)
                    b = (a - 1) / lam[h, n] * B[h, n]
                else:
                    a = (1 + z / 2) / (1 - z / 2)
                    b = delta / (1 - z / 2) * B[h, n]
                x[h, n] = a * x[h, n] + b * u[l, h]
            y[l, h] = 2 * np.sum(C[h] * x[h]).real + p["D"][h] * u[l, h]
    return y, x


def assert_close(a, b, tol=1e-10):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale)


@pytest.mark.parametrize("discretisation", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", ["legs", "lin", "inv"])
def test_modes_agree_with_each_other_and_numpy(init, discretisation):
    layer = make_layer(init, discretisation, seed=len(init))
    for L in (1, 7, 64):
        for with_state in (False, True):
            u, x0 = random_inputs(L + with_state, L, with_state=with_state)
            ref_y, ref_x = numpy_reference(layer, u, state=x0)
            for mode in MODES:
                y, x = layer(jnp.asarray(u), state=x0, mode=mode)
                assert y.shape == (L, H) and x.shape == (H, N)
                assert_close(y, ref_y)
                assert_close(x, ref_x)


@pytest.mark.parametrize("discretisation", ["zoh", "bilinear"])
def test_irregular_steps(discretisation):
    layer = make_layer("legs", discretisation, seed=3)
    L = 7  # shapes shared with other tests: JAX's eager kernels are then reused
    u, x0 = random_inputs(5, L)
    dt = np.random.default_rng(6).uniform(0.1, 3.0, L)
    ref_y, ref_x = numpy_reference(layer, u, dt=dt, state=x0)
    for mode in ("scan", "parallel"):
        y, x = layer(jnp.asarray(u), dt=jnp.asarray(dt), state=x0, mode=mode)
        assert_close(y, ref_y)
        assert_close(x, ref_x)
    with pytest.raises(ValueError, match="mode='conv' needs a constant step"):
        layer(jnp.asarray(u), dt=jnp.asarray(dt), mode="conv")
    # a constant gap other than 1 is fine for conv
    const = np.full(L, 0.7)
    ref_y, ref_x = numpy_reference(layer, u, dt=const, state=x0)
    y, x = layer(jnp.asarray(u), dt=jnp.asarray(const), state=x0, mode="conv")
    assert_close(y, ref_y)
    assert_close(x, ref_x)


def test_step_by_step_equals_call():
    layer = make_layer("lin", "zoh", seed=7)
    L = 7
    u, x0 = random_inputs(8, L)
    dt = np.random.default_rng(9).uniform(0.2, 2.0, L)
    y_all, x_all = layer(jnp.asarray(u), dt=jnp.asarray(dt), state=x0)
    step = eqx.filter_jit(layer.step)
    x, ys = jnp.asarray(x0), []
    for l in range(L):
        x, y = step(x, jnp.asarray(u[l]), jnp.asarray(dt[l]))
        ys.append(y)
    assert_close(jnp.stack(ys), y_all)
    assert_close(x, x_all)
    # the default gap is 1, from the zero state
    state, y0 = layer.step(layer.init_state(), jnp.asarray(u[0]))
    assert_close(y0, layer(jnp.asarray(u[:1]))[0][0])
    assert layer.init_state().shape == (H, N) and not np.any(np.asarray(layer.init_state()))


def test_kernel_is_the_zero_state_impulse_response():
    layer = make_layer("inv", "bilinear", seed=10)
    L = 7
    u, _ = random_inputs(11, L, with_state=False)
    for gap in (None, 0.4):
        dt = None if gap is None else np.full(L, gap)
        ref_y, _ = numpy_reference(layer, u, dt=dt)
        K = np.asarray(layer.kernel(L, dt=gap))
        assert K.shape == (L, H)
        D = np.asarray(layer.D)
        conv = np.stack([sum(K[l - k] * u[k] for k in range(l + 1)) + D * u[l] for l in range(L)])
        assert_close(conv, ref_y)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_matches_finite_differences(mode):
    layer = make_layer("legs", "zoh", seed=12)
    u, x0 = random_inputs(13, 7)
    u = jnp.asarray(u)

    def loss(layer):
        y, x = layer(u, state=x0, mode=mode)
        return jnp.sum(y**2) + jnp.sum(jnp.abs(x) ** 2)

    params, static = eqx.partition(layer, eqx.is_inexact_array)
    # jitted: one compilation is far cheaper than dispatching every op of the VJP eagerly
    f = jax.jit(lambda p: loss(eqx.combine(p, static)))
    grads = eqx.filter_jit(eqx.filter_grad(loss))(layer)
    check_directional_derivatives(f, params, grads)


def hippo_legs_normal_in_test(n):
    A = np.zeros((n, n))
    for j in range(n):
        for k in range(n):
            if j > k:
                A[j, k] = -np.sqrt((2 * j + 1) * (2 * k + 1))
            elif j == k:
                A[j, k] = -(j + 1)
    P = np.sqrt(np.arange(n) + 0.5)
    return A + np.outer(P, P), np.sqrt(2 * np.arange(n) + 1.0)


def test_legs_init_matches_numpy_eig():
    n = N
    A_normal, B_full = hippo_legs_normal_in_test(2 * n)
    w, V = np.linalg.eig(A_normal)
    keep = w.imag > 0
    assert keep.sum() == n
    order = np.argsort(w[keep].imag)
    expected_lam = w[keep][order]
    expected_B = np.abs(V[:, keep].conj().T @ B_full)[order]

    layer = bnn.S4DLayer(H, n, key=jax.random.key(0), init="legs")
    lam = np.asarray(layer.eigenvalues)
    B = np.asarray(layer.B_re) + 1j * np.asarray(layer.B_im)
    for h in range(H):
        got = np.argsort(lam[h].imag)
        np.testing.assert_allclose(lam[h][got], expected_lam, atol=1e-10)
        # eigenvectors are unique up to phase: compare magnitudes of the projected B
        np.testing.assert_allclose(np.abs(B[h][got]), expected_B, atol=1e-10)
    np.testing.assert_allclose(expected_lam.real, -0.5, atol=1e-10)


def test_lin_and_inv_inits():
    n = N
    k = np.arange(n)
    lin = bnn.S4DLayer(H, n, key=jax.random.key(0), init="lin")
    inv = bnn.S4DLayer(H, n, key=jax.random.key(0), init="inv")
    np.testing.assert_allclose(lin.eigenvalues, np.broadcast_to(-0.5 + 1j * np.pi * k, (H, n)))
    expected = -0.5 + 1j * n / np.pi * (n / (2 * k + 1) - 1)
    np.testing.assert_allclose(inv.eigenvalues, np.broadcast_to(expected, (H, n)))
    for layer in (lin, inv):
        np.testing.assert_allclose(layer.B_re, 1.0)
        np.testing.assert_allclose(layer.B_im, 0.0)
        steps = np.asarray(layer.step_sizes)
        assert np.all((steps >= 1e-3) & (steps <= 1e-1))
        assert layer.size == H and layer.state_size == n


def test_real_part_stays_negative_under_any_parameters():
    layer = make_layer("lin", seed=14)
    layer = eqx.tree_at(lambda m: m.lambda_log_neg_re, layer, layer.lambda_log_neg_re + 20.0)
    assert np.all(np.asarray(layer.eigenvalues).real < 0)
    layer = eqx.tree_at(lambda m: m.lambda_log_neg_re, layer, layer.lambda_log_neg_re - 60.0)
    assert np.all(np.asarray(layer.eigenvalues).real < 0)


def test_jit_with_traced_steps():
    layer = make_layer("legs", "bilinear", seed=15)
    u, x0 = random_inputs(16, 7)
    dt = jnp.full(7, 0.3)
    eager = layer(jnp.asarray(u), dt=dt, state=x0, mode="parallel")
    for mode in MODES:
        run = eqx.filter_jit(lambda m, u, dt, x0, mode=mode: m(u, dt=dt, state=x0, mode=mode))
        y, x = run(layer, jnp.asarray(u), dt, jnp.asarray(x0))
        assert_close(y, eager[0])
        assert_close(x, eager[1])


def test_float32_keeps_dtype():
    layer = make_layer("legs", seed=17)
    u, x0 = random_inputs(18, 7)
    ref_y, _ = numpy_reference(layer, u, state=x0)
    run = eqx.filter_jit(lambda m, u, x0, mode: m(u, state=x0, mode=mode))
    for mode in MODES:
        y, x = run(layer, jnp.asarray(u, jnp.float32), x0, mode)
        assert y.dtype == jnp.float32 and x.dtype == jnp.complex64
        assert_close(y, ref_y, tol=1e-4)
    layer32 = bnn.S4DLayer(H, N, key=jax.random.key(0), dtype=jnp.float32)
    assert layer32.D.dtype == jnp.float32 and layer32.init_state().dtype == jnp.complex64
    y, x = run(layer32, jnp.asarray(u, jnp.float32), None, "conv")
    assert y.dtype == jnp.float32 and x.dtype == jnp.complex64


def test_bad_inputs():
    key = jax.random.key(0)
    layer = bnn.S4DLayer(H, N, key=key)
    u = jnp.ones((5, H))
    for bad in ([1.0, 0.0, 1.0, 1.0, 1.0], [1.0, 1.0, -0.5, 1.0, 1.0]):
        for mode in MODES:
            with pytest.raises(ValueError, match="step sizes must be > 0"):
                layer(u, dt=jnp.asarray(bad), mode=mode)
    with pytest.raises(ValueError, match="step sizes must be > 0"):
        layer.step(layer.init_state(), u[0], dt=0.0)
    with pytest.raises(ValueError, match="step sizes must be > 0"):
        layer.kernel(5, dt=-1.0)
    with pytest.raises(ValueError, match="dt_min must be > 0"):
        bnn.S4DLayer(H, N, key=key, dt_min=0.0)
    with pytest.raises(ValueError, match="dt_max must be"):
        bnn.S4DLayer(H, N, key=key, dt_min=0.1, dt_max=0.01)
    with pytest.raises(ValueError, match="unknown init 'legt'.*'legs', 'lin', 'inv'"):
        bnn.S4DLayer(H, N, key=key, init="legt")
    with pytest.raises(ValueError, match="unknown discretisation 'euler'.*'zoh', 'bilinear'"):
        bnn.S4DLayer(H, N, key=key, discretisation="euler")
    with pytest.raises(ValueError, match="size must be a positive int"):
        bnn.S4DLayer(0, N, key=key)
    with pytest.raises(ValueError, match="state_size must be a positive int"):
        bnn.S4DLayer(H, 0, key=key)
    with pytest.raises(ValueError, match="unknown mode 'fft'.*'parallel', 'scan', 'conv'"):
        layer(u, mode="fft")
    with pytest.raises(ValueError, match=r"u must have shape \(\?, 4\)"):
        layer(jnp.ones((5, H + 1)))
    with pytest.raises(ValueError, match=r"u must have shape \(\?, 4\)"):
        layer(jnp.ones(5))
    with pytest.raises(ValueError, match=r"u must have shape \(4\)"):
        layer.step(layer.init_state(), jnp.ones(H + 1))
    with pytest.raises(ValueError, match=r"dt must have shape \(5\)"):
        layer(u, dt=jnp.ones(4))
    with pytest.raises(ValueError, match=r"state must have shape \(4, 6\)"):
        layer(u, state=jnp.zeros((H, N + 1), complex))
    with pytest.raises(ValueError, match="at least one time step"):
        layer(jnp.ones((0, H)))
