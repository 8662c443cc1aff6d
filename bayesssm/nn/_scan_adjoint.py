r"""The S4D layer's sequential mode ("scan") with a hand-written reverse pass.

Forward, one channel h and state n at a time (all vectorised):
$x_l = \bar a_l x_{l-1} + \bar b_l u_l$, $y_l = 2\,\mathrm{Re}(\sum_n C_n x_l) + D u_l$, with
$(\bar a_l, \bar b_l)$ the discretisation of $(\Lambda, B)$ over the step $s_l = e^{s_h} dt_l$.

Reverse, with adjoints written as $g = \partial L / \partial \mathrm{Re}\,x + i\,\partial L /
\partial \mathrm{Im}\,x$ (the conjugate of JAX's complex cotangents): multiplying by a complex
number is adjoint to multiplying by its conjugate, so
$g_l = 2 \bar y_l \bar C + \overline{\bar a_{l+1}}\, g_{l+1}$ runs backwards like the forward
recurrence, and the step's adjoints are $g_l \overline{x_{l-1}}$ for $\bar a_l$, $g_l u_l$ for
$\bar b_l$ and $\mathrm{Re}(\overline{\bar b_l} g_l)$ for $u_l$; `discretise_adjoint` carries
them on to $\Lambda$, $B$ and the step.

Why: JAX's reverse mode of the same computation keeps every intermediate of the complex
discretisation and its derivatives as an (L, H, N) array and pulls each back in its own pass.
Here the backward scan carries only g; the adjoints of the discretisation follow in closed
form (`discretise_adjoint`), vectorised over all steps. One layer (8 series of 40 steps, width
32, 8 states, one CPU core, the library's compiler options): gradient 1.43 -> 0.90 ms in
float32; a LatentS4 training step 48.8 -> 20.1 ms in float64 and 13 -> 11.4 ms in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Complex

from .._types import Array, Float
from ._discretise import discretise, discretise_adjoint, discretise_steps, step_sizes


def _forward(method, lam, B, C, D, base, u, dt, x0):
    a, b = discretise_steps(lam, B, base, dt, method)
    bu = b * u[..., None]  # (L, H, N)

    def body(x, inputs):
        a_l, bu_l = inputs
        x = a_l * x + bu_l
        return x, x

    _, xs = jax.lax.scan(body, x0, (jnp.broadcast_to(a, bu.shape), bu))
    y = 2 * jnp.einsum("hn,lhn->lh", C, xs).real + D * u
    return y, xs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def scan_layer(
    method: str,
    lam: Complex[Array, "H N"],
    B: Complex[Array, "H N"],
    C: Complex[Array, "H N"],
    D: Float[Array, " H"],
    base: Float[Array, " H"],
    u: Float[Array, "L H"],
    dt: Float[Array, " L"] | None,
    x0: Complex[Array, "H N"],
) -> tuple[Float[Array, "L H"], Complex[Array, "H N"]]:
    """Outputs y (L, H) and the final state $x_{L-1}$ of the recurrence from $x_{-1}$ = x0, over
    steps `dt * base` (`base` alone when dt is None); `method` is the discretisation."""
    y, xs = _forward(method, lam, B, C, D, base, u, dt, x0)
    return y, xs[-1]


def _scan_layer_fwd(method, lam, B, C, D, base, u, dt, x0):
    y, xs = _forward(method, lam, B, C, D, base, u, dt, x0)
    return (y, xs[-1]), (lam, B, C, D, base, u, dt, x0, xs)


def _scan_layer_bwd(method, residuals, cotangents):
    lam, B, C, D, base, u, dt, x0, xs = residuals
    y_bar, last_ct = cotangents
    step = step_sizes(base, dt)
    a, b = discretise(lam, B, step, method)
    a = jnp.broadcast_to(a, xs.shape)
    direct = 2 * y_bar[..., None] * jnp.conj(C)  # (L, H, N)
    # a_{l+1} for l < L - 1; the adjoint of x_{L-1} enters as g_L with a_L = 1
    a_next = jnp.concatenate([a[1:], jnp.ones_like(a[:1])])

    def body(g_next, inputs):
        direct_l, a_next_l = inputs
        g = direct_l + jnp.conj(a_next_l) * g_next
        return g, g

    _, g = jax.lax.scan(body, jnp.conj(last_ct), (direct, a_next), reverse=True)
    x_prev = jnp.concatenate([x0[None], xs[:-1]])
    a_bar, b_bar = g * jnp.conj(x_prev), g * u[..., None]
    u_bar = jnp.sum(jnp.real(jnp.conj(b) * g), axis=-1) + D * y_bar
    if dt is None:  # one step for all: sum the adjoints first
        a_bar, b_bar = jnp.sum(a_bar, axis=0), jnp.sum(b_bar, axis=0)
    lam_bar, B_bar, s_bar = discretise_adjoint(lam, B, step, method, a_bar, b_bar)
    s_bar = jnp.sum(s_bar, axis=-1)  # (H,) or (L, H)
    if dt is None:
        base_ct, dt_ct = s_bar, None
    else:
        lam_bar, B_bar = jnp.sum(lam_bar, axis=0), jnp.sum(B_bar, axis=0)
        base_ct = jnp.sum(s_bar * dt[:, None], axis=0)
        dt_ct = jnp.sum(s_bar * base, axis=1)
    # JAX's cotangents of complex values are the conjugates of these adjoints
    C_ct = 2 * jnp.einsum("lh,lhn->hn", y_bar, xs)
    D_ct = jnp.sum(y_bar * u, axis=0)
    x0_ct = a[0] * jnp.conj(g[0])
    return jnp.conj(lam_bar), jnp.conj(B_bar), C_ct, D_ct, base_ct, u_bar, dt_ct, x0_ct


scan_layer.defvjp(_scan_layer_fwd, _scan_layer_bwd)
