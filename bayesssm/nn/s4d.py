r"""S4D: a layer of independent single-input single-output diagonal state-space models.

References:
    Gu, A., Gupta, A., Goel, K. and Ré, C. (2022). On the parameterization and initialization of
    diagonal state space models. NeurIPS.
    Smith, J. T. H., Warrington, A. and Linderman, S. W. (2023). Simplified state space layers for
    sequence modeling. ICLR.
    Gu, A., Dao, T., Ermon, S., Rudra, A. and Ré, C. (2020). HiPPO: recurrent memory with optimal
    polynomial projections. NeurIPS.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Complex

from .._checks import check_positive_int, check_shape, is_concrete
from .._types import Array, Float, Key
from ._discretise import DISCRETISATIONS, discretise, discretise_steps
from ._hippo import INITS, diagonal_init
from ._scan_adjoint import scan_layer

MODES = ("parallel", "scan", "conv")


def _combine(first, second):
    # x -> a x + b composed with x -> a' x + b' (first, then second)
    a1, b1 = first
    a2, b2 = second
    return a1 * a2, a2 * b1 + b2


def _check_steps(name: str, dt, shape: tuple) -> Array:
    dt = jnp.asarray(dt)
    check_shape(name, dt, shape)
    if is_concrete(dt):
        values = np.asarray(dt)
        bad = ~(values > 0) | ~np.isfinite(values)
        if np.any(bad):
            raise ValueError(
                f"step sizes must be > 0 and finite, but {name} has entries "
                f"{values[bad][:5].tolist()}."
            )
    return dt


def check_call(mode: str, dt, length: int) -> Array | None:
    """The checks of a sequence call that need no parameters (shared with `DeepSSM`, which runs
    them before any work): the mode, the gaps' shape and values, and a constant step for conv."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}.")
    if length < 1:
        raise ValueError("u must have at least one time step, got shape (0, ...).")
    if dt is None:
        return None
    dt = _check_steps("dt", dt, (length,))
    if mode == "conv" and is_concrete(dt):
        gaps = np.asarray(dt)
        if not np.allclose(gaps, gaps[0], rtol=1e-6, atol=0):
            raise ValueError(
                "mode='conv' needs a constant step (all dt equal); use mode='scan' or "
                "mode='parallel' for irregular steps."
            )
    return dt


def _chunks(length: int) -> tuple[int, int]:
    """(A, c) with A c >= length and c about sqrt(length): l = a c + b splits the powers."""
    c = max(1, math.isqrt(length - 1) + 1) if length > 1 else 1
    return -(-length // c), c


def _powers(base: Complex[Array, "H N"], count: int) -> tuple[Array, Array]:
    """Real and imaginary parts (each (count, H, N)) of base^k for k < count, by doubling in
    real arithmetic: log2(count) vectorised products, where `exp(k log base)` costs a complex
    exponential per entry. The rounding error grows like log2(count) ulps instead of k."""
    levels = max(1, (count - 1).bit_length())

    def square(p, _):
        p_re, p_im = p
        return (p_re * p_re - p_im * p_im, 2 * p_re * p_im), p

    # base^(2^j) for j < levels, as the outputs of a scan: XLA materialises them, where it
    # would otherwise recompute `base` (a discretisation) inside every entry of every table
    _, (p_re, p_im) = jax.lax.scan(square, (base.real, base.imag), None, length=levels)
    re = jnp.ones((1, *base.shape), p_re.dtype)
    im = jnp.zeros((1, *base.shape), p_re.dtype)
    for j in range(levels):
        re, im = (
            jnp.concatenate([re, re * p_re[j] - im * p_im[j]]),
            jnp.concatenate([im, re * p_im[j] + im * p_re[j]]),
        )
    return re[:count], im[:count]


class _PowerTables(NamedTuple):
    """Real and imaginary parts of $\bar\\Lambda^{ac}$ (A, H, N) and $\bar\\Lambda^b$ (c, H, N),
    a < A, b < c, for the split $l = a c + b$ of the powers below L = A c (`_chunks`)."""

    outer_re: Float[Array, "A H N"]
    outer_im: Float[Array, "A H N"]
    inner_re: Float[Array, "c H N"]
    inner_im: Float[Array, "c H N"]


def _power_tables(lam_bar: Complex[Array, "H N"], length: int) -> _PowerTables:
    A, c = _chunks(length)
    return _PowerTables(*_powers(lam_bar**c, A), *_powers(lam_bar, c))


def _real_power_sums(
    w: Complex[Array, "H N"], tables: _PowerTables, length: int
) -> Float[Array, "L H"]:
    r"""$S_{l,h} = \mathrm{Re} \sum_n w_{hn} \bar\Lambda_{hn}^l$, $l < L$ (a Vandermonde product).

    With $l = a c + b$, $\bar\Lambda^l = \bar\Lambda^{ac} \bar\Lambda^{b}$: two tables of about
    $\sqrt L$ powers each and batched matrix products over n. Only the real part is needed:
    $\mathrm{Re}(p q) = p_r q_r - p_i q_i$, two real products, half the work of a complex one."""
    o_re, o_im = tables.outer_re, tables.outer_im
    o_re, o_im = o_re * w.real - o_im * w.imag, o_re * w.imag + o_im * w.real
    sums = jnp.einsum("ahn,bhn->abh", o_re, tables.inner_re) - jnp.einsum(
        "ahn,bhn->abh", o_im, tables.inner_im
    )  # (A, c, H)
    return sums.reshape(-1, sums.shape[-1])[:length]


def _weighted_powers(v: Float[Array, "L H"], tables: _PowerTables) -> Complex[Array, "H N"]:
    r"""$\sum_l v_{lh} \bar\Lambda_{hn}^l$ for real v, by the same split of the powers as
    `_real_power_sums`."""
    length = v.shape[0]
    A, c = tables.outer_re.shape[0], tables.inner_re.shape[0]
    v = jnp.pad(v, ((0, A * c - length), (0, 0))).reshape(A, c, -1)  # (A, c, H)
    p_re = jnp.einsum("abh,bhn->ahn", v, tables.inner_re)
    p_im = jnp.einsum("abh,bhn->ahn", v, tables.inner_im)
    o_re, o_im = tables.outer_re, tables.outer_im
    return jax.lax.complex(
        jnp.sum(o_re * p_re - o_im * p_im, axis=0), jnp.sum(o_re * p_im + o_im * p_re, axis=0)
    )


class S4DLayer(eqx.Module):
    r"""H independent diagonal SSMs, one per channel, each with N complex states (S4D).

    Channel h runs the continuous-time system $\dot x = \Lambda x + B u$, $y = 2\,\mathrm{Re}(C x)
    + D u$ with diagonal $\Lambda \in \mathbb{C}^N$ ($\mathrm{Re}\,\Lambda < 0$); the N states stand
    for conjugate pairs of a real 2N-state system, hence the $2\,\mathrm{Re}$. Over the gap
    $\Delta_{l} = e^{s_h}\,\mathrm{dt}_l$ before input $l$ (learned step $e^{s_h}$ times the
    time gap, 1 by default) it is discretised ("zoh" or "bilinear", see `discretise`) into

    $$x_l = \bar\Lambda_l x_{l-1} + \bar B_l u_l,\qquad y_l = 2\,\mathrm{Re}(C x_l) + D u_l,$$

    from $x_{-1}$ = `state` (zeros by default). The layer is causal and $y_l$ depends on $u_l$.

    All parameters are real arrays: `lambda_log_neg_re` ($\log(-\mathrm{Re}\,\Lambda)$, which keeps
    every mode stable), `lambda_im`, `B_re`, `B_im`, `C_re`, `C_im` (H, N), `D` and `log_step`
    (H,).

    Args:
        size: H, the number of channels.
        state_size: N, complex states per channel.
        key: PRNG key for C, D and the step sizes.
        init: "legs" (S4D-LegS: eigenvalues $-\tfrac12 + i\omega$ of the normal part of HiPPO-LegS,
            B projected onto its eigenvectors), "lin" ($\Lambda_n = -\tfrac12 + i\pi n$, $B = 1$) or
            "inv" ($\Lambda_n = -\tfrac12 + i\frac{N}{\pi}(\frac{N}{2n+1} - 1)$, $B = 1$).
        discretisation: "zoh" or "bilinear".
        dt_min, dt_max: the learned steps $e^{s_h}$ start log-uniform in [dt_min, dt_max].
        dtype: real dtype of the parameters (default: JAX's default float).

    Calls keep the input's dtype (float32 inputs run in complex64, float64 in complex128).

    Example:
        ```python
        import jax, bayesssm as bs
        layer = bs.nn.S4DLayer(8, 16, key=jax.random.key(0))
        y, state = layer(jax.numpy.ones((100, 8)))
        ```

    References:
        Gu, Gupta, Goel and Ré (2022), "On the parameterization and initialization of diagonal
        state space models" (S4D); Smith, Warrington and Linderman (2023), "Simplified state space
        layers for sequence modeling" (S5); Gu et al. (2020), "HiPPO".
    """

    lambda_log_neg_re: Float[Array, "H N"]
    lambda_im: Float[Array, "H N"]
    B_re: Float[Array, "H N"]
    B_im: Float[Array, "H N"]
    C_re: Float[Array, "H N"]
    C_im: Float[Array, "H N"]
    D: Float[Array, " H"]
    log_step: Float[Array, " H"]
    discretisation: str = eqx.field(static=True)

    def __init__(
        self,
        size: int,
        state_size: int = 64,
        *,
        key: Key,
        init: str = "legs",
        discretisation: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dtype=None,
    ):
        check_positive_int("size", size)
        check_positive_int("state_size", state_size)
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; use one of {INITS}.")
        if discretisation not in DISCRETISATIONS:
            raise ValueError(
                f"unknown discretisation {discretisation!r}; use one of {DISCRETISATIONS}."
            )
        if not (math.isfinite(dt_min) and dt_min > 0):
            raise ValueError(f"dt_min must be > 0 (step sizes must be > 0), got {dt_min!r}.")
        if not (math.isfinite(dt_max) and dt_max >= dt_min):
            raise ValueError(f"dt_max must be finite and >= dt_min={dt_min!r}, got {dt_max!r}.")
        dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"dtype must be a real floating dtype, got {dtype}.")
        H, N = size, state_size
        lam, B = diagonal_init(init, N)
        tile = lambda v: jnp.asarray(np.broadcast_to(v, (H, N)), dtype)  # noqa: E731
        k_c, k_d, k_s = jax.random.split(key, 3)
        C = jax.random.normal(k_c, (2, H, N), dtype) * math.sqrt(0.5)
        self.lambda_log_neg_re = tile(np.log(-lam.real))
        self.lambda_im = tile(lam.imag)
        self.B_re, self.B_im = tile(B.real), tile(B.imag)
        self.C_re, self.C_im = C[0], C[1]
        self.D = jax.random.normal(k_d, (H,), dtype)
        self.log_step = jax.random.uniform(k_s, (H,), dtype, math.log(dt_min), math.log(dt_max))
        self.discretisation = discretisation

    @property
    def size(self) -> int:
        """H, the number of channels."""
        return self.D.shape[0]

    @property
    def state_size(self) -> int:
        """N, the complex states per channel."""
        return self.lambda_im.shape[1]

    @property
    def eigenvalues(self) -> Complex[Array, "H N"]:
        r"""$\Lambda$, continuous-time."""
        return self._continuous(self.D.dtype)[0]

    @property
    def step_sizes(self) -> Float[Array, " H"]:
        r"""The learned steps $e^{s_h}$ (multiplied by `dt` in calls)."""
        return jnp.exp(self.log_step)

    def init_state(self) -> Complex[Array, "H N"]:
        """Zeros, complex, of the parameters' precision."""
        cplx = jnp.result_type(self.D.dtype, jnp.complex64)
        return jnp.zeros((self.size, self.state_size), cplx)

    def _dtypes(self, u):
        real = u.dtype if jnp.issubdtype(u.dtype, jnp.floating) else self.D.dtype
        return real, jnp.result_type(real, jnp.complex64)

    def _continuous(self, real):
        """Λ, B, C (H, N) complex; D, learned step (H,) real; all in the working precision."""
        p = lambda a: a.astype(real)  # noqa: E731
        lam = jax.lax.complex(-jnp.exp(p(self.lambda_log_neg_re)), p(self.lambda_im))
        B = jax.lax.complex(p(self.B_re), p(self.B_im))
        C = jax.lax.complex(p(self.C_re), p(self.C_im))
        return lam, B, C, p(self.D), jnp.exp(p(self.log_step))

    def _check_state(self, state, cplx):
        if state is None:
            return jnp.zeros((self.size, self.state_size), cplx)
        state = jnp.asarray(state)
        check_shape("state", state, (self.size, self.state_size), " (size, state_size)")
        return state.astype(cplx)

    def __call__(
        self,
        u: Float[Array, "L H"],
        *,
        dt: Float[Array, " L"] | None = None,
        state: Complex[Array, "H N"] | None = None,
        mode: str = "parallel",
    ) -> tuple[Float[Array, "L H"], Complex[Array, "H N"]]:
        r"""Run the layer over a sequence.

        Args:
            u: inputs (L, H).
            dt: (L,) time gaps, `dt[l]` from the previous input to input l (irregular sampling);
                default all ones.
            state: $x_{-1}$ (H, N) complex, e.g. the final state of an earlier call; zeros if
                None.
            mode: "parallel" (`jax.lax.associative_scan`, O(log L) depth), "scan" (sequential
                `jax.lax.scan`) or "conv" (FFT convolution with the kernel of `kernel`; needs a
                constant step. Under tracing, where dt cannot be checked, it uses `dt[0]`).
                All three give the same numbers. "scan" has a hand-written reverse pass
                (`jax.custom_vjp`), so it takes reverse-mode derivatives only; for `jax.jvp` or
                `jax.jacfwd` use "parallel" or "conv".

        Returns:
            outputs y (L, H) in u's dtype, and the final state $x_{L-1}$ (H, N).
        """
        u = jnp.asarray(u)
        check_shape("u", u, (None, self.size), " (L time steps by size channels)")
        dt = check_call(mode, dt, u.shape[0])
        real, cplx = self._dtypes(u)
        u = u.astype(real)
        dt = None if dt is None else dt.astype(real)
        x0 = self._check_state(state, cplx)
        lam, B, C, D, base = self._continuous(real)

        if mode == "conv":
            step = base if dt is None else base * dt[0]
            # with no initial state, skip its (zero) contribution: a third of the work
            return self._conv(u, None if state is None else x0, lam, B, C, D, step)

        if mode == "scan":
            y, final = scan_layer(self.discretisation, lam, B, C, D, base, u, dt, x0)
            return y.astype(real), final

        lam_bar, B_bar = discretise_steps(lam, B, base, dt, self.discretisation)
        bu = B_bar * u[..., None]  # (L, H, N)
        lam_bar = jnp.broadcast_to(lam_bar, bu.shape)
        # the initial state enters as an extra input to the first step
        bu = bu.at[0].add(lam_bar[0] * x0)
        _, xs = jax.lax.associative_scan(_combine, (lam_bar, bu))
        y = 2 * jnp.einsum("hn,lhn->lh", C, xs).real + D * u
        return y.astype(real), xs[-1]

    def _conv(self, u, x0, lam, B, C, D, step):
        L = u.shape[0]
        lam_bar, B_bar = discretise(lam, B, step[:, None], self.discretisation)
        tables = _power_tables(lam_bar, L)  # shared by the kernel, the final state, x0's term
        K = 2 * _real_power_sums(C * B_bar, tables, L)  # (L, H)
        # zero-padding to 2L makes the FFT's circular convolution the causal one
        spectrum = jnp.fft.rfft(u, n=2 * L, axis=0) * jnp.fft.rfft(K, n=2 * L, axis=0)
        y = jnp.fft.irfft(spectrum, n=2 * L, axis=0)[:L] + D * u
        # x_{L-1} = sum_k Λ̄^{L-1-k} B̄ u_k + Λ̄^L x_{-1}
        final = B_bar * _weighted_powers(u[::-1], tables)
        if x0 is not None:
            y = y + 2 * _real_power_sums(C * lam_bar * x0, tables, L)
            final = final + jnp.exp(L * jnp.log(lam_bar)) * x0
        return y.astype(u.dtype), final

    def kernel(self, length: int, dt: float | None = None) -> Float[Array, "L H"]:
        r"""The convolution kernel $K_l = 2\,\mathrm{Re}\big(\sum_n C_n \bar\Lambda_n^l \bar B_n
        \big)$, $l = 0, \dots, L-1$ (without the feed-through D), for a constant gap `dt`
        (default 1).

        Args:
            length: L.
            dt: the time gap between inputs, > 0.

        Returns:
            K (L, H): the zero-state output is $y_l = \sum_{k \le l} K_{l-k} u_k + D u_l$.
        """
        check_positive_int("length", length)
        real = self.D.dtype
        lam, B, C, _, step = self._continuous(real)
        if dt is not None:
            step = step * _check_steps("dt", dt, ()).astype(real)
        lam_bar, B_bar = discretise(lam, B, step[:, None], self.discretisation)
        return 2 * _real_power_sums(C * B_bar, _power_tables(lam_bar, length), length)

    def step(
        self,
        state: Complex[Array, "H N"],
        u: Float[Array, " H"],
        dt: Float[Array, ""] | float | None = None,
    ) -> tuple[Complex[Array, "H N"], Float[Array, " H"]]:
        r"""One step of the recurrence, for step-by-step generation (agrees with `__call__`).

        Args:
            state: $x_{l-1}$ (H, N).
            u: the input $u_l$ (H,).
            dt: the gap before $u_l$ (a scalar, > 0); default 1.

        Returns:
            the new state $x_l$ (H, N) and the output $y_l$ (H,) in u's dtype.
        """
        u = jnp.asarray(u)
        check_shape("u", u, (self.size,), " (size,)")
        real, cplx = self._dtypes(u)
        u = u.astype(real)
        x = self._check_state(state, cplx)
        lam, B, C, D, step = self._continuous(real)
        if dt is not None:
            step = step * _check_steps("dt", dt, ()).astype(real)
        lam_bar, B_bar = discretise(lam, B, step[:, None], self.discretisation)
        x = lam_bar * x + B_bar * u[:, None]
        y = 2 * jnp.einsum("hn,hn->h", C, x).real + D * u
        return x, y.astype(real)
