"""A state-space model as a numpyro distribution over whole series, for use in numpyro models.

`SSMDistribution(model)` is the distribution of y_{0:T-1} under `model`, with the latent states
marginalised out by an engine (Kalman by default), so a numpyro model can put priors on the
model's parameters and observe a series:

    def numpyro_model(y):
        r = numpyro.sample("r", dist.InverseGamma(3.0, 1.0))
        ssm = bs.LinearGaussianSSM(A=[[0.9]], Q=[[0.2]], H=[[1.0]], R=r[None, None],
                                   m0=[0.0], P0=[[1.0]])
        numpyro.sample("y", bs.numpyro.SSMDistribution(ssm), obs=y)

Any numpyro inference algorithm (NUTS, SVI) then works on that model.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Distribution, constraints

from ._checks import check_positive_int, is_concrete
from ._jit import filter_jit
from ._types import Array, Float, Key
from .data import check_observations, model_dtype, observations
from .ssm import AbstractSSM
from .verbs import default_engine

__all__ = ["SSMDistribution"]


class SSMDistribution(Distribution):
    r"""$p(y_{0:T-1})$ under a state-space model: a numpyro distribution over a whole series.

    `log_prob(y)` is the engine's log-likelihood $\log p(y_{0:T-1})$ (the latent states are
    marginalised out), differentiable in the model's parameters for exact engines. NaN entries
    of y mark missing values and are left out of the likelihood, as in every bayesssm verb;
    the support is nevertheless reported as the reals, since numpyro has no constraint for
    "real or missing" (so leave numpyro's argument validation off for series with gaps).
    `sample(key, sample_shape)` draws series from `model.sample`.

    The event shape is (T, M). T is `num_timesteps`, or the length of `inputs`; when neither
    is given, the distribution reports an empty event shape and `log_prob` reads (T, M) off the
    value (leading axes of the value beyond (T, M) are then batch axes). Give `num_timesteps`
    to sample, to put the distribution inside a `numpyro.plate`, or to have numpyro check shapes.

    Args:
        model: the state-space model, whose leaves may be numpyro sample sites (traced).
        engine: inference engine for the log-likelihood (default: the best exact one).
        inputs: control inputs (T, U) of the model, if it has any.
        num_timesteps: T, the length of the series (optional, see above).
        key: PRNG key for a random engine (a particle filter); inside a numpyro model use
            `numpyro.prng_key()`. Not used by exact engines.
        validate_args: numpyro's argument validation.

    Raises:
        TypeError: `model` is not a `bs.AbstractSSM`, or the engine cannot handle it.
        ValueError: a random engine without `key`, bad `num_timesteps`, or a model whose
            observations per step are neither scalars nor vectors.

    Example:
        >>> numpyro.sample("y", bs.numpyro.SSMDistribution(ssm), obs=y)   # y: (T, M), NaN = missing
    """

    pytree_data_fields = ("model", "inputs", "key")
    pytree_aux_fields = ("engine", "num_timesteps")

    def __init__(
        self,
        model: AbstractSSM,
        engine=None,
        inputs: Float[Array, "T U"] | None = None,
        *,
        num_timesteps: int | None = None,
        key: Key | None = None,
        validate_args: bool | None = None,
    ):
        if not isinstance(model, AbstractSSM):
            raise TypeError(f"model must be a bs.AbstractSSM, got {type(model).__name__}.")
        engine = default_engine(model) if engine is None else engine
        engine.check(model)
        if engine.is_random and key is None:
            raise ValueError(
                f"{type(engine).__name__} is random: pass key= (numpyro.prng_key() inside a "
                "numpyro model)."
            )
        if inputs is not None:
            inputs = jnp.asarray(inputs)
            if inputs.ndim != 2:
                raise ValueError(f"inputs must have shape (T, U), got {inputs.shape}.")
            if num_timesteps is None:
                num_timesteps = int(inputs.shape[0])
        if num_timesteps is not None:
            check_positive_int("num_timesteps", num_timesteps)
        self.model = model
        self.engine = engine
        self.inputs = inputs
        self.key = key
        self.num_timesteps = None if num_timesteps is None else int(num_timesteps)
        event_shape = () if num_timesteps is None else _event_shape(model, num_timesteps, inputs)
        super().__init__(batch_shape=(), event_shape=event_shape, validate_args=validate_args)

    @property
    def support(self) -> constraints.Constraint:
        # numpyro expects the support's event dims to match the event shape's.
        return constraints.real_matrix if self.event_shape else constraints.real

    def log_prob(self, value: Float[Array, "*batch T M"]) -> Float[Array, "*batch"]:
        r"""$\log p(y)$ of one series (T, M) (or (T,) when M = 1), or of each of a batch.

        Args:
            value: observations (*batch, T, M); NaN marks a missing entry.

        Returns:
            The log-likelihood, shape `batch` (a scalar for one series).
        """
        value = jnp.asarray(value)
        value = self._as_series(value)
        batch, event = value.shape[:-2], value.shape[-2:]
        # Shape (and, for concrete values, inf / all-NaN) checks, in Python, before tracing on.
        flat = value.reshape((-1, *event))
        for series in np.asarray(flat) if is_concrete(flat) else flat[:1]:
            check_observations(self.model, series, self.inputs)
        keys = None if self.key is None else jax.random.split(self.key, flat.shape[0])
        return _log_marginals(self.engine, self.model, flat, self.inputs, keys).reshape(batch)

    def sample(self, key: Key, sample_shape: tuple[int, ...] = ()) -> Float[Array, "*sample T M"]:
        """Series drawn from `model.sample`, shape `sample_shape + (T, M)`.

        Args:
            key: PRNG key.
            sample_shape: leading axes of independent draws.

        Raises:
            ValueError: the distribution was built without `num_timesteps` (or `inputs`).
        """
        if self.num_timesteps is None:
            raise ValueError(
                "SSMDistribution needs num_timesteps= (or inputs=) to sample: the length of the "
                "series is otherwise only known from an observed value."
            )
        sample_shape = tuple(sample_shape)
        count = math.prod(sample_shape)

        def one(k):
            return self.model.sample(k, self.num_timesteps, self.inputs)[1].reshape(
                self.event_shape
            )

        ys = jax.vmap(one)(jax.random.split(key, count))
        return ys.reshape(sample_shape + self.batch_shape + self.event_shape)

    def _as_series(self, value: Array) -> Array:
        """value with its last two axes (T, M); a 1-D value is one scalar series (T,)."""
        if self.event_shape:
            if value.shape[-2:] == self.event_shape:
                return value
            if self.event_shape[1] == 1 and value.shape[-1:] == self.event_shape[:1]:
                return value[..., None]
            raise ValueError(
                f"SSMDistribution has event shape (T, M) = {self.event_shape}, but the value "
                f"has shape {value.shape}."
            )
        if value.ndim == 0:
            raise ValueError("SSMDistribution needs a series (T, M) or (T,), got a scalar.")
        return value[:, None] if value.ndim == 1 else value


@filter_jit
def _log_marginals(engine, model, ys, inputs, keys) -> Float[Array, " N"]:
    """log p(y) for each of ys (N, T, M). Compiled once per model structure when called
    eagerly (numpyro runs a model eagerly while it sets up); inlined under an outer trace."""
    dtype = model_dtype(model)

    def one(y, key):
        return engine.log_marginal(model, observations(y, inputs, 0, dtype), key)

    if ys.shape[0] == 1:  # one series: no vmap, so engines see unbatched arrays
        return one(ys[0], None if keys is None else keys[0])[None]
    return jax.vmap(one)(ys, keys)


def _event_shape(model: AbstractSSM, num_timesteps: int, inputs) -> tuple[int, int]:
    """(T, M) of the model's observations, found by tracing `model.sample` (nothing runs)."""
    y = jax.eval_shape(lambda: model.sample(jax.random.key(0), num_timesteps, inputs)[1])
    if len(y.shape) == 1:
        return (num_timesteps, 1)
    if len(y.shape) == 2:
        return tuple(y.shape)
    raise ValueError(
        f"SSMDistribution needs scalar or vector observations per step; {type(model).__name__} "
        f"gives observations of shape {y.shape[1:]}."
    )
