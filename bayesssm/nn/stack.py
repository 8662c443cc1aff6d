r"""A deep sequence model: residual blocks of S4D layers with per-step mixing.

References:
    Gu, A., Gupta, A., Goel, K. and Ré, C. (2022). On the parameterization and initialization of
    diagonal state space models. NeurIPS.
    Smith, J. T. H., Warrington, A. and Linderman, S. W. (2023). Simplified state space layers for
    sequence modeling. ICLR.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_positive_int, check_shape
from .._types import Array, Float, Key
from .s4d import S4DLayer, check_call


def _per_step(f, x):
    """Apply a vector map to every time step of (L, C)."""
    return jax.vmap(f)(x)


def _reversed_gaps(dt):
    # reading the sequence backwards, the gap before element L-1-j is dt[L-j]; the first one
    # keeps dt[0] so both directions discretise their first input alike
    return None if dt is None else jnp.concatenate([dt[:1], dt[1:][::-1]])


class _Block(eqx.Module):
    """Pre-norm residual block: x + GLU(GELU(SSM(LayerNorm(x))))."""

    norm: eqx.nn.LayerNorm
    ssm: S4DLayer
    ssm_back: S4DLayer | None
    mix: eqx.nn.Linear

    def __init__(self, width, *, key, bidirectional, dtype, **ssm_kwargs):
        k_f, k_b, k_m = jax.random.split(key, 3)
        self.norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.ssm = S4DLayer(width, key=k_f, dtype=dtype, **ssm_kwargs)
        self.ssm_back = (
            S4DLayer(width, key=k_b, dtype=dtype, **ssm_kwargs) if bidirectional else None
        )
        self.mix = eqx.nn.Linear(width, 2 * width, dtype=dtype, key=k_m)

    def _glu(self, v):
        a, b = jnp.split(self.mix(jax.nn.gelu(v)), 2, axis=-1)
        return a * jax.nn.sigmoid(b)

    def __call__(self, x, dt, state, mode):
        v = _per_step(self.norm, x)
        out, state = self.ssm(v, dt=dt, state=state, mode=mode)
        if self.ssm_back is not None:
            back, _ = self.ssm_back(v[::-1], dt=_reversed_gaps(dt), mode=mode)
            out = out + back[::-1]
        return x + _per_step(self._glu, out), state

    def step(self, state, x, dt):
        state, out = self.ssm.step(state, self.norm(x), dt)
        return state, x + self._glu(out)


class DeepSSM(eqx.Module):
    r"""A deep stack of S4D layers: a sequence-to-sequence map (L, in) -> (L, out).

    $$x^{(0)} = W_{\mathrm{in}} u,\qquad v = \mathrm{GELU}\big(\mathrm{SSM}_k(\mathrm{LN}(x^{(k)})
        )\big),\qquad x^{(k+1)} = x^{(k)} + a \odot \sigma(b),\ (a, b) = W_k v + c_k,$$
    $$y = W_{\mathrm{out}}\,\mathrm{LN}(x^{(\mathrm{depth})}).$$

    Everything but the SSM layers acts per time step, so the stack is causal and its recurrent
    state is the tuple of its blocks' SSM states ((width, state_size) complex each), which `step`
    advances one input at a time. With `bidirectional=True` every block adds a second SSM run on
    the time-reversed sequence, so each output sees the whole sequence; such a stack has no state.

    Args:
        in_size: input channels.
        out_size: output channels.
        key: PRNG key for the initial weights.
        width: channels inside the stack (H of each `S4DLayer`).
        depth: the number of residual blocks.
        state_size: N of each `S4DLayer`.
        bidirectional: add a backward SSM to every block.
        init, discretisation, dt_min, dt_max: of each `S4DLayer`.
        dtype: real dtype of the parameters.

    Example:
        ```python
        import jax, bayesssm as bs
        net = bs.nn.DeepSSM(3, 2, key=jax.random.key(0), width=16, depth=2)
        y, states = net(jax.numpy.ones((50, 3)))
        ```

    References:
        Gu, Gupta, Goel and Ré (2022), "On the parameterization and initialization of diagonal
        state space models" (S4D); Smith, Warrington and Linderman (2023), "Simplified state space
        layers for sequence modeling" (S5).
    """

    encoder: eqx.nn.Linear
    blocks: tuple[_Block, ...]
    norm: eqx.nn.LayerNorm
    decoder: eqx.nn.Linear
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    bidirectional: bool = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        *,
        key: Key,
        width: int = 64,
        depth: int = 4,
        state_size: int = 64,
        bidirectional: bool = False,
        init: str = "legs",
        discretisation: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dtype=None,
    ):
        for name, value in (
            ("in_size", in_size),
            ("out_size", out_size),
            ("width", width),
            ("depth", depth),
        ):
            check_positive_int(name, value)
        k_in, k_out, *k_blocks = jax.random.split(key, depth + 2)
        dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
        self.encoder = eqx.nn.Linear(in_size, width, dtype=dtype, key=k_in)
        self.blocks = tuple(
            _Block(
                width,
                key=k,
                bidirectional=bool(bidirectional),
                dtype=dtype,
                state_size=state_size,
                init=init,
                discretisation=discretisation,
                dt_min=dt_min,
                dt_max=dt_max,
            )
            for k in k_blocks
        )
        self.norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.decoder = eqx.nn.Linear(width, out_size, dtype=dtype, key=k_out)
        self.in_size, self.out_size = int(in_size), int(out_size)
        self.bidirectional = bool(bidirectional)

    @property
    def width(self) -> int:
        return self.norm.shape[0]

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def _no_state(self, what: str):
        if self.bidirectional:
            raise ValueError(
                f"a bidirectional DeepSSM reads the whole sequence and has no recurrent state, "
                f"so {what} is not available; build it with bidirectional=False."
            )

    def _check_states(self, state: tuple) -> tuple:
        if not isinstance(state, tuple | list) or len(state) != self.depth:
            raise ValueError(
                f"state must be a tuple of {self.depth} arrays (one per block, as returned by "
                f"init_state or a call), got {type(state).__name__}"
                + (f" of length {len(state)}." if isinstance(state, tuple | list) else ".")
            )
        return tuple(state)

    def init_state(self) -> tuple:
        """Zero states: a tuple of `depth` complex (width, state_size) arrays."""
        self._no_state("init_state")
        return tuple(block.ssm.init_state() for block in self.blocks)

    def __call__(
        self,
        u: Float[Array, "L in"],
        *,
        dt: Float[Array, " L"] | None = None,
        state: tuple | None = None,
        mode: str = "parallel",
    ) -> tuple[Float[Array, "L out"], tuple]:
        """Run the stack over a sequence.

        Args:
            u: inputs (L, in_size).
            dt: (L,) time gaps before each input (see `S4DLayer`); default all ones.
            state: the blocks' states to start from (a tuple as returned by a call or
                `init_state`); zeros if None. Not for bidirectional stacks.
            mode: "parallel", "scan" or "conv" (see `S4DLayer`).

        Returns:
            outputs (L, out_size) in u's dtype, and the final states (a tuple with one
            (width, state_size) complex array per block; () when bidirectional).
        """
        u = jnp.asarray(u)
        check_shape("u", u, (None, self.in_size), " (L time steps by in_size channels)")
        dt = check_call(mode, dt, u.shape[0])  # before any work
        if state is None:
            states = (None,) * self.depth
        else:
            self._no_state("state=")
            states = self._check_states(state)
        x = _per_step(self.encoder, u)
        finals = []
        for block, s in zip(self.blocks, states, strict=True):
            x, s = block(x, dt, s, mode)
            finals.append(s)
        y = _per_step(lambda v: self.decoder(self.norm(v)), x)
        return y.astype(_out_dtype(u, y)), () if self.bidirectional else tuple(finals)

    def step(
        self,
        state: tuple,
        u: Float[Array, " in"],
        dt: Float[Array, ""] | float | None = None,
    ) -> tuple[tuple, Float[Array, " out"]]:
        """One time step (agrees with `__call__`), for step-by-step generation.

        Args:
            state: the blocks' states (from `init_state`, a call or an earlier step).
            u: the input (in_size,).
            dt: the gap before u (a scalar > 0); default 1.

        Returns:
            the new states and the output (out_size,) in u's dtype.
        """
        self._no_state("step")
        u = jnp.asarray(u)
        check_shape("u", u, (self.in_size,), " (in_size,)")
        states = self._check_states(state)
        x = self.encoder(u)
        finals = []
        for block, s in zip(self.blocks, states, strict=True):
            s, x = block.step(s, x, dt)
            finals.append(s)
        y = self.decoder(self.norm(x))
        return tuple(finals), y.astype(_out_dtype(u, y))


def _out_dtype(u, y):
    return u.dtype if jnp.issubdtype(u.dtype, jnp.floating) else y.dtype
