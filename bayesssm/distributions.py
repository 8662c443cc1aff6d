r"""Distributions that distrax lacks, written as `distrax.Distribution`s for use in models."""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp

from ._types import Array, ArrayLike, Float, Key
from .params import _float_array

__all__ = ["Poisson"]


class Poisson(distrax.Distribution):
    r"""Poisson distribution with rate $\lambda = e^{\eta}$, parameterised by the log rate $\eta$.

    $$\log p(y) = y \eta - e^{\eta} - \log \Gamma(y + 1),\quad y \in \{0, 1, 2, \dots\}.$$

    The log rate is the natural parameter of the Poisson family and what a latent Gaussian state
    gives (a log-intensity), so no `exp` has to be undone and a large negative $\eta$ (a tiny
    rate) stays exact. The event shape is (); the batch shape is that of `log_rate`.

    Counts are floats, of `log_rate`'s dtype, so that they can sit in an observation array where
    NaN marks a missing value. `log_prob` of a value that is not a non-negative integer is
    $-\infty$ (as in `scipy.stats.poisson.logpmf`); of NaN it is NaN. Its gradient with respect
    to `log_rate` is finite for every value (NaN included: the formula is evaluated at a
    harmless stand-in there), so an engine may mask missing entries with `jnp.where`.

    Args:
        log_rate: $\eta = \log \lambda$, a float array of any shape (the batch shape).

    Example:
        >>> Poisson(jnp.log(3.0)).log_prob(2.0)     # log(3^2 e^-3 / 2!)
    """

    def __init__(self, log_rate: Float[ArrayLike, "*batch"]):
        super().__init__()
        self._log_rate = _float_array(log_rate)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return ()

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self._log_rate.shape)

    @property
    def log_rate(self) -> Float[Array, "*batch"]:
        r"""$\eta = \log \lambda$."""
        return self._log_rate

    @property
    def rate(self) -> Float[Array, "*batch"]:
        r"""$\lambda = e^{\eta}$."""
        return jnp.exp(self._log_rate)

    def log_prob(self, value: Float[ArrayLike, "*batch"]) -> Float[Array, "*batch"]:
        r"""$y \eta - e^{\eta} - \log \Gamma(y + 1)$; $-\infty$ off the non-negative integers,
        NaN at NaN.

        Args:
            value: counts $y$, broadcastable against the batch shape (floats or integers).

        Returns:
            The log probabilities, of the broadcast shape.
        """
        value = jnp.asarray(value)
        dtype = jnp.result_type(self._log_rate, value)
        value = value.astype(dtype)
        missing = jnp.isnan(value)
        valid = jnp.isfinite(value) & (value >= 0) & (value == jnp.floor(value))
        y = jnp.where(valid, value, jnp.zeros((), dtype))
        # At y = 0, y * eta must be 0 even where eta = -inf (a zero rate): xlogy-style guard.
        term = jnp.where(y == 0, jnp.zeros((), dtype), y * self._log_rate)
        log_p = term - jnp.exp(self._log_rate) - jax.scipy.special.gammaln(y + 1)
        log_p = jnp.where(valid, log_p, -jnp.inf)
        return jnp.where(missing, jnp.nan, log_p)

    def _sample_n(self, key: Key, n: int) -> Float[Array, " n *batch"]:
        shape = (n,) + self.batch_shape
        counts = jax.random.poisson(key, self.rate, shape=shape)
        return counts.astype(self._log_rate.dtype)

    def mean(self) -> Float[Array, "*batch"]:
        r"""$\lambda$."""
        return self.rate

    def variance(self) -> Float[Array, "*batch"]:
        r"""$\lambda$."""
        return self.rate

    def mode(self) -> Float[Array, "*batch"]:
        r"""$\lfloor \lambda \rfloor$ (for an integer $\lambda$, $\lambda - 1$ is a mode too)."""
        return jnp.floor(self.rate)

    def __getitem__(self, index) -> Poisson:
        # The event shape is (), so indexing the batch is indexing the log rate.
        return Poisson(self._log_rate[index])
