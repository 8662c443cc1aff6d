"""The linear-Gaussian state-space model, possibly time-varying, with optional control inputs."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._checks import check_covariance, check_finite, check_shape
from .._types import Array, ArrayLike, Float
from ..params import Covariance
from ..ssm import AbstractLinearGaussianSSM, StepInputs


class LinearGaussianSSM(AbstractLinearGaussianSSM):
    r"""Linear-Gaussian state-space model.

    $$x_0 \sim N(m_0, P_0),\quad x_{t+1} = A_t x_t + b_t + B u_t + w_t,\quad w_t \sim N(0, Q_t),$$
    $$y_t = H_t x_t + d_t + D u_t + v_t,\quad v_t \sim N(0, R_t).$$

    Any of A, b, Q, H, d, R may carry a leading T axis (time-varying). Following statsmodels and
    dynamax, index t of a transition array (A, b, Q) is the move *out of* step t, so its last entry
    is unused. Covariances are stored as `bs.Covariance` (a Cholesky factor with positive diagonal),
    so unconstrained optimisation keeps them valid; `bs.unwrap(model).Q` gives the matrix back.

    Args:
        A: transition matrix, (D, D) or (T, D, D).
        Q: transition noise covariance, (D, D) or (T, D, D), or a `bs.Covariance`.
        H: emission matrix, (M, D) or (T, M, D).
        R: emission noise covariance, (M, M) or (T, M, M), or a `bs.Covariance`.
        m0: initial mean, (D,).
        P0: initial covariance, (D, D) (singular allowed), or a `bs.Covariance`.
        b: transition offset, (D,) or (T, D); default zero.
        d: emission offset, (M,) or (T, M); default zero.
        B: control matrix of the transition, (D, U); needs `inputs=` (T, U) at inference.
        D: control matrix of the emission, (M, U).
    """

    A: Float[Array, "*T D D"]
    Q: Covariance
    H: Float[Array, "*T M D"]
    R: Covariance
    m0: Float[Array, " D"]
    P0: Covariance
    b: Float[Array, "*T D"]
    d: Float[Array, "*T M"]
    B: Float[Array, "D U"] | None
    D: Float[Array, "M U"] | None

    def __init__(
        self,
        A: ArrayLike,
        Q: ArrayLike | Covariance,
        H: ArrayLike,
        R: ArrayLike | Covariance,
        m0: ArrayLike,
        P0: ArrayLike | Covariance,
        b: ArrayLike | None = None,
        d: ArrayLike | None = None,
        B: ArrayLike | None = None,
        D: ArrayLike | None = None,
    ):
        dtype = _float_dtype(A, H, m0, b, d, B, D, *(x for x in (Q, R, P0) if not _is_cov(x)))
        A, H, m0 = (jnp.asarray(x, dtype) for x in (A, H, m0))
        check_shape("m0", m0, (None,), " (the state dimension D)")
        state_dim = m0.shape[0]
        if H.ndim not in (2, 3):
            raise ValueError(f"H must have shape (M, D) or (T, M, D), got {H.shape}.")
        obs_dim = H.shape[-2]
        lead = _leading_length("A", A, 2, None)
        lead = _leading_length("H", H, 2, lead)
        check_shape("A", A, A.shape[:-2] + (state_dim, state_dim), f" with D = {state_dim} from m0")
        check_shape("H", H, H.shape[:-2] + (obs_dim, state_dim), f" with D = {state_dim} from m0")

        b = jnp.zeros(state_dim, dtype) if b is None else jnp.asarray(b, dtype)
        d = jnp.zeros(obs_dim, dtype) if d is None else jnp.asarray(d, dtype)
        lead = _leading_length("b", b, 1, lead)
        lead = _leading_length("d", d, 1, lead)
        check_shape("b", b, b.shape[:-1] + (state_dim,), f" with D = {state_dim}")
        check_shape("d", d, d.shape[:-1] + (obs_dim,), f" with M = {obs_dim} from H")

        covs = {}
        for name, value, n, may_vary in (
            ("Q", Q, state_dim, True),
            ("R", R, obs_dim, True),
            ("P0", P0, state_dim, False),
        ):
            if _is_cov(value):
                check_finite(name, value.unconstrained)
                cov = value
            else:
                cov = _covariance(name, value, dtype)
            # A Covariance has .shape and .ndim like an array: the matrix's (its storage is packed).
            try:
                shape = cov.shape
            except ValueError as err:  # storage that is no packed triangle
                raise ValueError(f"{name}: {err}") from None
            if may_vary:
                lead = _leading_length(name, cov, 2, lead)
            what = f" with {'D' if n == state_dim and name != 'R' else 'M'} = {n}"
            check_shape(name, cov, shape[:-2] + (n, n) if may_vary else (n, n), what)
            covs[name] = cov

        controls_dim = None
        for name, value, rows in (("B", B, state_dim), ("D", D, obs_dim)):
            if value is None:
                continue
            value = jnp.asarray(value, dtype)
            check_shape(name, value, (rows, None), " (rows, control dimension U)")
            if controls_dim is not None and value.shape[1] != controls_dim:
                raise ValueError(
                    f"B and D must have the same number of columns U, got {controls_dim} and "
                    f"{value.shape[1]}."
                )
            controls_dim = value.shape[1]
            check_finite(name, value)
            if name == "B":
                B = value
            else:
                D = value
        for name, value in (("A", A), ("H", H), ("m0", m0), ("b", b), ("d", d)):
            check_finite(name, value)

        self.A, self.H, self.m0, self.b, self.d = A, H, m0, b, d
        self.Q, self.R, self.P0 = covs["Q"], covs["R"], covs["P0"]
        self.B, self.D = B, D

    # -- the capability ---------------------------------------------------------------------

    def initial_params(self, inputs: StepInputs):
        return self.m0, self.P0.cholesky

    def transition_params(self, inputs: StepInputs):
        t = inputs.index
        b = _at(self.b, t, 1)
        if self.B is not None:
            b = b + self.B @ inputs.control
        return _at(self.A, t, 2), b, _cov_at(self.Q, t)

    def emission_params(self, inputs: StepInputs):
        t = inputs.index
        d = _at(self.d, t, 1)
        if self.D is not None:
            d = d + self.D @ inputs.control
        return _at(self.H, t, 2), d, _cov_at(self.R, t)

    # -- facts about the model -------------------------------------------------------------

    @property
    def state_dim(self) -> int:
        return self.m0.shape[-1]

    @property
    def obs_dim(self) -> int:
        return self.H.shape[-2]

    @property
    def num_timesteps(self) -> int | None:
        """Length of the time axis of the time-varying arrays, or None if there are none."""
        for value, base in (
            (self.A, 2),
            (self.H, 2),
            (self.b, 1),
            (self.d, 1),
            (self.Q, 2),
            (self.R, 2),
        ):
            # Arrays and Covariance leaves both have .ndim and .shape (the matrix's, for a leaf).
            if value.ndim > base:
                return value.shape[0]
        return None

    @property
    def time_invariant_factors(self) -> bool:
        return self.A.ndim == 2 and self.H.ndim == 2 and self.Q.ndim == 2 and self.R.ndim == 2

    def check_data(self, num_timesteps: int, obs_dim: int | None, controls) -> None:
        if obs_dim is not None and obs_dim != self.obs_dim:
            raise ValueError(
                f"y must have M = {self.obs_dim} columns (the rows of H), got {obs_dim}."
            )
        length = self.num_timesteps
        if length is not None and length != num_timesteps:
            raise ValueError(
                f"The model's time-varying arrays have a leading axis of length {length}, but the "
                f"data have T = {num_timesteps} steps (num_timesteps); they must match."
            )
        uses_controls = self.B is not None or self.D is not None
        if uses_controls and controls is None:
            raise ValueError("The model has control matrices B or D: pass inputs= of shape (T, U).")
        if controls is not None:
            if not uses_controls:
                raise ValueError("inputs= was given but the model has no control matrix B or D.")
            width = (self.B if self.B is not None else self.D).shape[1]
            check_shape("inputs", controls, (num_timesteps, width), " (T, U)")
            check_finite("inputs", controls)


def _is_cov(x) -> bool:
    return isinstance(x, Covariance)


def _float_dtype(*values):
    arrays = [jnp.asarray(v) for v in values if v is not None]
    dtype = jnp.result_type(*arrays)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def _covariance(name: str, value, dtype) -> Covariance:
    value = jnp.asarray(value, dtype)
    check_covariance(name, value)
    return Covariance.from_matrix(value)


def _leading_length(name: str, value, base_ndim: int, length: int | None) -> int | None:
    extra = np.ndim(value) - base_ndim
    if extra < 0 or extra > 1:
        raise ValueError(
            f"{name} must have {base_ndim} axes, or {base_ndim + 1} with a leading time axis; "
            f"got shape {np.shape(value)}."
        )
    if extra == 0:
        return length
    here = np.shape(value)[0]
    if length is not None and here != length:
        raise ValueError(
            f"Time-varying arrays must share one leading length T: {name} has {here}, "
            f"another has {length}."
        )
    return here


def _at(value: Array, t, base_ndim: int) -> Array:
    return value[t] if value.ndim > base_ndim else value


def _cov_at(cov: Covariance, t) -> Array:
    # Pick the step before transforming, so a scan does not rebuild the whole T axis each step.
    # `unconstrained` is (k,) or (T, k), packed; `cov.ndim` counts the matrix's axes.
    return (Covariance(cov.unconstrained[t]) if cov.ndim > 2 else cov).cholesky
