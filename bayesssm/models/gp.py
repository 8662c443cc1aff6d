r"""A Gaussian process observed in Gaussian noise, as a linear-Gaussian state-space model."""

from __future__ import annotations

from collections.abc import Sequence

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete
from .._types import Array, ArrayLike, Float
from ..inference._square_root import tria
from ..kernels import AbstractKernel, Sum
from ..kernels._checks import positive
from ..kernels._linalg import block_diag
from ..params import Positive, _float_array, psd_cholesky
from ..ssm import AbstractLinearGaussianSSM, StepInputs


class GPStateSpace(AbstractLinearGaussianSSM):
    r"""$f \sim \mathcal{GP}(0, k)$ observed at the series' times: $y_t = f(t_t) + v_t$,
    $v_t \sim N(0, \sigma^2)$; or M outputs mixing Q latent GPs.

    The kernel's SDE gives a state $x(t)$ with $f(t) = H x(t)$ (`bs.kernels`). Over the gap
    $\Delta_t = t_{t+1} - t_t$ the state moves by $A = e^{F \Delta_t}$ with noise
    $Q = P_\infty - A P_\infty A^\top$ (`kernel.discretise`), computed for every gap, so the
    Kalman engine does exact GP regression in O(T). Give the data as a `bs.TimeSeries`; on a plain
    array the steps are one time unit apart.

    **Multi-output** (the linear model of coregionalisation): independent latent GPs
    $f_q \sim \mathcal{GP}(0, k_q)$, $q = 1, \dots, Q$, and M outputs

    $$y(t) = W f(t) + v(t),\quad v(t) \sim N(0, \operatorname{diag}(\sigma_1^2, \dots,
        \sigma_M^2)),$$

    so that $\operatorname{Cov}(y_i(s), y_j(t)) = \sum_q W_{iq} W_{jq} k_q(s, t)
    + \delta_{ij}\delta_{st}\sigma_i^2$. The state stacks the latent states (block-diagonal $A$
    and $Q$, as in `bs.kernels.Sum`) and $H = W \operatorname{blockdiag}(H_1, \dots, H_Q)$.
    Missing entries (NaN in some columns of a row) are handled by the Kalman engine. Pass a
    sequence of kernels for $Q$ latent GPs with their own hyperparameters; a single kernel with
    a `mixing` of Q columns means Q independent copies of that one GP that share its
    hyperparameters (the intrinsic coregionalisation model, $K = W W^\top \otimes k$).

    Args:
        kernel: a `bs.kernels` kernel (sums and products included), or a tuple or list of Q
            kernels, one per latent GP (stored as a tuple: fit with `where=lambda m:
            m.kernel[0].lengthscale`).
        noise_variance: $\sigma^2 > 0$, the observation noise variance: a scalar (the same for
            every output) or an (M,) vector, one per output.
        mixing: W of shape (M, Q), a plain array leaf (fit it with `where=lambda m: m.mixing`).
            None (default): with one kernel, a single output (M = Q = 1, `y` of shape (T,) or
            (T, 1)); with a sequence of Q kernels, the identity (M = Q independent outputs),
            stored as an array so that it can be fitted too.

    References:
        Hartikainen, J. and Särkkä, S. (2010). Kalman filtering and smoothing solutions to
        temporal Gaussian process regression models. IEEE MLSP.
        Álvarez, M. A., Rosasco, L. and Lawrence, N. D. (2012). Kernels for vector-valued
        functions: a review. Foundations and Trends in Machine Learning 4(3), section 4.2.
    """

    kernel: AbstractKernel | tuple[AbstractKernel, ...]
    noise_variance: Positive
    mixing: Float[Array, "M Q"] | None

    def __init__(
        self,
        kernel: AbstractKernel | Sequence[AbstractKernel],
        noise_variance: ArrayLike | Positive,
        mixing: ArrayLike | None = None,
    ):
        if isinstance(kernel, list | tuple):
            kernel = tuple(kernel)
            if not kernel:
                raise ValueError(
                    "GPStateSpace: kernel is an empty sequence; give one kernel or one per latent "
                    "GP."
                )
            for i, k in enumerate(kernel):
                _check_kernel(k, f"kernel[{i}]")
        else:
            _check_kernel(kernel, "kernel")
        self.kernel = kernel
        if mixing is None and isinstance(kernel, tuple):
            mixing = jnp.eye(len(kernel), dtype=_kernel_dtype(kernel))
        self.mixing = None if mixing is None else _check_mixing(kernel, mixing)
        num_outputs = 1 if self.mixing is None else self.mixing.shape[0]
        self.noise_variance = _check_noise(noise_variance, num_outputs)

    def initial_params(self, inputs: StepInputs):
        P = self._state_kernel.stationary_covariance()
        return jnp.zeros(P.shape[0], P.dtype), psd_cholesky(P)

    def transition_params(self, inputs: StepInputs):
        dt = 1.0 if inputs.dt is None else inputs.dt
        # Q is singular for deterministic components (Periodic, Cosine, Constant) and at dt = 0;
        # the kernels' factors handle that without an eigendecomposition per step.
        A, chol_Q = self._state_kernel.discretise_factors(dt)
        return A, jnp.zeros(A.shape[0], A.dtype), chol_Q

    def transition(self, x: Array, inputs: StepInputs | None = None) -> distrax.Distribution:
        # The kernels' factors are lower triangular only up to a permutation of their rows, and
        # distrax.MultivariateNormalTri reads only the lower triangle: re-triangularise (under a
        # vmap over particles this stays one QR a step, since the factor is not batched).
        inputs = StepInputs(index=jnp.asarray(0)) if inputs is None else inputs
        A, b, chol_Q = self.transition_params(inputs)
        return distrax.MultivariateNormalTri(A @ x + b, tria(chol_Q))

    def transition_covariance_params(self, inputs: StepInputs):
        dt = 1.0 if inputs.dt is None else inputs.dt
        A, Q = self._state_kernel.discretise(dt)
        return A, jnp.zeros(A.shape[0], A.dtype), Q

    def emission_params(self, inputs: StepInputs):
        H = self._measurement()
        noise = jnp.sqrt(self.noise_variance.value()).astype(H.dtype)
        noise = jnp.broadcast_to(noise, (H.shape[0],))
        return H, jnp.zeros(H.shape[0], H.dtype), jnp.diag(noise)

    @property
    def state_dim(self) -> int:
        return self._state_kernel.state_dim

    @property
    def obs_dim(self) -> int:
        return 1 if self.mixing is None else self.mixing.shape[0]

    @property
    def num_latent(self) -> int:
        """Q, the number of latent GPs (1 for a single-output model)."""
        if isinstance(self.kernel, tuple):
            return len(self.kernel)
        return 1 if self.mixing is None else self.mixing.shape[1]

    @property
    def _state_kernel(self) -> AbstractKernel:
        """The kernel whose state is the model's: the latent GPs' states stacked (a `Sum`, whose
        F, P_inf and (A, Q) are block-diagonal; its H is not the model's)."""
        kernels = self._latent_kernels()
        return kernels[0] if len(kernels) == 1 else Sum(*kernels)

    def _latent_kernels(self) -> tuple[AbstractKernel, ...]:
        if isinstance(self.kernel, tuple):
            return self.kernel
        return (self.kernel,) * self.num_latent

    def _measurement(self) -> Float[Array, "M D"]:
        r"""$H = W \operatorname{blockdiag}(H_1, \dots, H_Q)$ (the kernel's H for one output)."""
        blocks = block_diag(*(k.measurement() for k in self._latent_kernels()))
        if self.mixing is None:
            return blocks
        return self.mixing.astype(blocks.dtype) @ blocks

    def latent(self, states: Float[Array, "*T D"]) -> Float[Array, "*T"] | Float[Array, "*T M"]:
        """The noise-free outputs for states of shape (..., D): f(t) = H x(t) of shape (...,)
        for a single-output model (no `mixing`), W f(t) of shape (..., M) otherwise."""
        H = self._measurement()
        return states @ H[0] if self.mixing is None else states @ H.T

    def check_data(self, num_timesteps: int, obs_dim: int | None, controls) -> None:
        if obs_dim is not None and obs_dim != self.obs_dim:
            if self.mixing is None:
                raise ValueError(
                    f"GPStateSpace observes one output: y must have M = 1 column, got {obs_dim}. "
                    "For several outputs give mixing= (M, Q) and/or a sequence of kernels."
                )
            raise ValueError(
                f"GPStateSpace has M = {self.obs_dim} outputs (mixing has shape "
                f"{tuple(self.mixing.shape)}): y must have {self.obs_dim} columns, got {obs_dim}."
            )
        if controls is not None:
            raise ValueError("GPStateSpace takes no control inputs (inputs=).")


def _check_kernel(kernel, name: str) -> None:
    if not isinstance(kernel, AbstractKernel):
        raise TypeError(
            f"GPStateSpace: {name} must be a bs.kernels kernel (e.g. bs.kernels.Matern32()), got "
            f"{type(kernel).__name__}."
        )


def _kernel_dtype(kernels: tuple[AbstractKernel, ...]):
    """The float dtype of the kernels' leaves (the default float if they have none)."""
    leaves = jax.tree.leaves(eqx.filter(kernels, eqx.is_inexact_array))
    return leaves[0].dtype if leaves else jnp.result_type(float)


def _check_mixing(kernel, mixing: ArrayLike) -> Array:
    """W as a float (M, Q) array, Q matching the number of kernels when several are given."""
    mixing = _float_array(mixing)
    if mixing.ndim != 2 or 0 in mixing.shape:
        raise ValueError(
            f"GPStateSpace: mixing must be a 2-D array (M, Q): M outputs by Q latent GPs, got "
            f"shape {mixing.shape}. For M outputs of one latent GP use shape (M, 1)."
        )
    if isinstance(kernel, tuple) and mixing.shape[1] != len(kernel):
        raise ValueError(
            f"GPStateSpace: mixing has {mixing.shape[1]} columns but {len(kernel)} kernels were "
            f"given: it must have one column per kernel, shape (M, {len(kernel)})."
        )
    if is_concrete(mixing) and not np.all(np.isfinite(np.asarray(mixing))):
        raise ValueError("GPStateSpace: mixing has non-finite entries (NaN or inf).")
    return mixing


def _check_noise(noise_variance: ArrayLike | Positive, num_outputs: int) -> Positive:
    """A scalar `Positive`, or one of shape (M,) with a variance per output."""
    shape = np.shape(
        noise_variance.unconstrained if isinstance(noise_variance, Positive) else noise_variance
    )
    if shape == ():
        return positive("GPStateSpace", "noise_variance", noise_variance)
    if shape != (num_outputs,):
        raise ValueError(
            f"GPStateSpace: noise_variance must be a scalar or have shape ({num_outputs},), one "
            f"variance per output (M = {num_outputs}), got shape {shape}."
        )
    if isinstance(noise_variance, Positive):
        raw = noise_variance.unconstrained
        if is_concrete(raw) and not np.all(np.isfinite(np.asarray(raw))):
            raise ValueError("GPStateSpace: noise_variance has non-finite unconstrained values.")
        return noise_variance
    value = _float_array(noise_variance)
    if is_concrete(value):
        v = np.asarray(value)
        if not np.all(np.isfinite(v) & (v > 0)):
            raise ValueError(
                f"GPStateSpace: noise_variance must be finite positive numbers, got {v!r}."
            )
    return Positive.from_value(value)
