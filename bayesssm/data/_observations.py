"""Observations as engines see them: values with NaN replaced, a mask of what was observed, and
the per-step inputs. Checks run here, in Python, before any tracing."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_finite, is_concrete
from .._types import Array, Bool, Float
from ..ssm import AbstractSSM, StepInputs, step_inputs
from ._timeseries import TimeSeries


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


def check_observations(model: AbstractSSM, y, inputs=None, extra_steps: int = 0):
    """Validate y (T, M) or (T,) or a `TimeSeries`, and control inputs, against `model`, in
    Python, before tracing.

    Returns y as a 2-D array (unchanged otherwise) and the inputs. Value checks (inf, all-NaN) run
    when y holds values; under a transformation they are skipped, shapes are still checked.
    """
    if isinstance(y, TimeSeries):
        return _check_series(model, y, inputs, extra_steps)
    shape = tuple(np.shape(y))
    if len(shape) == 1:
        y = y[:, None] if hasattr(y, "ndim") else np.asarray(y)[:, None]
    elif len(shape) != 2:
        raise ValueError(f"y must have shape (T, M), or (T,) for scalar observations; got {shape}.")
    if np.shape(y)[0] < 1:
        raise ValueError("y must have at least one time step.")
    if is_concrete(y):
        values = np.asarray(y)
        if not np.issubdtype(values.dtype, np.number):
            raise ValueError(f"y must hold numbers, got dtype {values.dtype}.")
        if np.issubdtype(values.dtype, np.floating):
            if np.isinf(values).any():
                raise ValueError("y has infinite entries; mark missing values with NaN instead.")
            if np.isnan(values).all():
                raise ValueError("y is all NaN: there is nothing to condition on.")
    _check_inputs(model, np.shape(y)[0] + extra_steps, np.shape(y)[1], inputs)
    return y, inputs


def _check_series(model: AbstractSSM, series: TimeSeries, inputs, extra_steps: int):
    """A TimeSeries validated itself when built; what is left is how it fits the model."""
    if extra_steps:
        raise ValueError(
            "forecasting past a TimeSeries needs the future times: use "
            "bs.impute(model, series, at=future_times)."
        )
    _check_inputs(model, series.num_timesteps, series.obs_dim, inputs)
    return series, inputs


def _check_inputs(model: AbstractSSM, total: int, obs_dim: int, inputs) -> None:
    if inputs is not None:
        if np.ndim(inputs) != 2:
            raise ValueError(
                f"inputs must have shape (T, U) with T = {total}, got {tuple(np.shape(inputs))}."
            )
        check_finite("inputs", inputs)
    model.check_data(total, obs_dim, inputs)


def observations(y, inputs=None, extra_steps: int = 0, dtype=None) -> Observations:
    """`Observations` from checked y (T, M) and inputs; runs inside jit.

    `extra_steps` appends that many unobserved steps (for forecasting). A `TimeSeries` gives its
    values, as each step's `dt` the time to the next step (0 after the last), and as each step's
    `time` its own time. For a plain array both stay None: models choose (most take steps one
    time unit apart, t_t = t).
    """
    dts = times = None
    if isinstance(y, TimeSeries):  # checked: no extra steps
        times, y = y.times, jnp.asarray(y.values, dtype)
        times = jnp.asarray(times, y.dtype)
        dts = jnp.concatenate([jnp.diff(times), jnp.zeros((1,), y.dtype)])
    y = jnp.asarray(y, dtype)
    if extra_steps:
        y = jnp.concatenate([y, jnp.full((extra_steps, y.shape[1]), jnp.nan, y.dtype)])
    observed = ~jnp.isnan(y)
    controls = None if inputs is None else jnp.asarray(inputs, y.dtype)
    steps = step_inputs(y.shape[0], controls, dts, times)
    return Observations(jnp.where(observed, y, 0.0), observed, steps)


def model_dtype(model) -> jnp.dtype:
    """The floating dtype of the model's parameters (the default float if it has none)."""
    for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)):
        return leaf.dtype
    return jnp.result_type(float)
