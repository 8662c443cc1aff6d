"""Observations as engines see them: values with NaN replaced, a mask of what was observed, and
the per-step inputs. Checks run here, in Python, before any tracing."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_finite, is_concrete
from ._types import Array, Bool, Float
from .ssm import AbstractSSM, StepInputs, step_inputs


class Observations(eqx.Module):
    """y with NaN replaced by zero, the mask of observed entries, and the `StepInputs` per step."""

    values: Float[Array, "T M"]
    observed: Bool[Array, "T M"]
    steps: StepInputs

    @property
    def num_timesteps(self) -> int:
        return self.values.shape[0]

    def step(self, t) -> StepInputs:
        return jax.tree.map(lambda a: a[t], self.steps)


def prepare(
    model: AbstractSSM,
    y,
    inputs=None,
    extra_steps: int = 0,
    dtype=None,
) -> Observations:
    """Validate y (T, M) or (T,) against `model` and build `Observations`.

    `extra_steps` appends that many unobserved steps (for forecasting); `inputs` must then cover
    them too.
    """
    y = jnp.asarray(y) if dtype is None else jnp.asarray(y, dtype)
    if not jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(jnp.result_type(float))
    if y.ndim == 1:
        y = y[:, None]
    elif y.ndim != 2:
        raise ValueError(
            f"y must have shape (T, M), or (T,) for scalar observations; got {tuple(y.shape)}."
        )
    if y.shape[0] < 1:
        raise ValueError("y must have at least one time step.")
    if is_concrete(y):
        values = np.asarray(y)
        if np.any(np.isinf(values)):
            raise ValueError("y has infinite entries; mark missing values with NaN instead.")
        if np.all(np.isnan(values)):
            raise ValueError("y is all NaN: there is nothing to condition on.")
    total = y.shape[0] + extra_steps
    if inputs is not None:
        inputs = jnp.asarray(inputs, y.dtype)
        if inputs.ndim == 1:
            raise ValueError(
                f"inputs must have shape (T, U) with T = {total}, got {tuple(inputs.shape)}."
            )
        check_finite("inputs", inputs)
    model.check_data(total, y.shape[1], inputs)
    if extra_steps:
        y = jnp.concatenate([y, jnp.full((extra_steps, y.shape[1]), jnp.nan, y.dtype)])
    observed = ~jnp.isnan(y)
    return Observations(jnp.where(observed, y, 0.0), observed, step_inputs(total, inputs))
