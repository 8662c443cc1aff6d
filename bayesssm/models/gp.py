r"""A Gaussian process observed in Gaussian noise, as a linear-Gaussian state-space model."""

from __future__ import annotations

import jax.numpy as jnp

from .._types import Array, ArrayLike, Float
from ..kernels import AbstractKernel
from ..kernels._checks import positive
from ..params import Positive, psd_cholesky
from ..ssm import AbstractLinearGaussianSSM, StepInputs


class GPStateSpace(AbstractLinearGaussianSSM):
    r"""$f \sim \mathcal{GP}(0, k)$ observed at the series' times: $y_t = f(t_t) + v_t$,
    $v_t \sim N(0, \sigma^2)$.

    The kernel's SDE gives a state $x(t)$ with $f(t) = H x(t)$ (`bs.kernels`). Over the gap
    $\Delta_t = t_{t+1} - t_t$ the state moves by $A = e^{F \Delta_t}$ with noise
    $Q = P_\infty - A P_\infty A^\top$ (`kernel.discretise`), computed for every gap, so the
    Kalman engine does exact GP regression in O(T). Give the data as a `bs.TimeSeries`; on a plain
    array the steps are one time unit apart.

    Args:
        kernel: a `bs.kernels` kernel (sums and products included).
        noise_variance: $\sigma^2 > 0$, the observation noise variance.

    References:
        Hartikainen, J. and Särkkä, S. (2010). Kalman filtering and smoothing solutions to
        temporal Gaussian process regression models. IEEE MLSP.
    """

    kernel: AbstractKernel
    noise_variance: Positive

    def __init__(self, kernel: AbstractKernel, noise_variance: ArrayLike | Positive):
        if not isinstance(kernel, AbstractKernel):
            raise TypeError(
                f"kernel must be a bs.kernels kernel (e.g. bs.kernels.Matern32()), got "
                f"{type(kernel).__name__}."
            )
        self.kernel = kernel
        self.noise_variance = positive("GPStateSpace", "noise_variance", noise_variance)

    def initial_params(self, inputs: StepInputs):
        P = self.kernel.stationary_covariance()
        return jnp.zeros(P.shape[0], P.dtype), psd_cholesky(P)

    def transition_params(self, inputs: StepInputs):
        dt = 1.0 if inputs.dt is None else inputs.dt
        A, Q = self.kernel.discretise(dt)
        # Q is singular for deterministic components (Periodic, Cosine, Constant) and at dt = 0.
        return A, jnp.zeros(A.shape[0], A.dtype), psd_cholesky(Q)

    def emission_params(self, inputs: StepInputs):
        H = self.kernel.measurement()
        noise = jnp.sqrt(self.noise_variance.value()).astype(H.dtype)
        return H, jnp.zeros(1, H.dtype), jnp.reshape(noise, (1, 1))

    @property
    def state_dim(self) -> int:
        return self.kernel.state_dim

    @property
    def obs_dim(self) -> int:
        return 1

    def latent(self, states: Float[Array, "*T D"]) -> Float[Array, "*T"]:
        """f(t) = H x(t) for states of shape (..., D)."""
        return states @ self.kernel.measurement()[0]

    def check_data(self, num_timesteps: int, obs_dim: int | None, controls) -> None:
        if obs_dim is not None and obs_dim != 1:
            raise ValueError(
                f"GPStateSpace observes one output: y must have M = 1 column, got {obs_dim}."
            )
        if controls is not None:
            raise ValueError("GPStateSpace takes no control inputs (inputs=).")
