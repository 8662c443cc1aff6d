"""Pieces the deep latent models (`bs.models.VSSM`, `bs.models.LatentS4`) share: the observation
head that turns a decoder's outputs into p(y_t | ...), diagonal-Gaussian latents, masked inputs,
time gaps, a push-forward distribution for the model protocol, and series checks."""

from __future__ import annotations

from collections.abc import Callable

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_positive_int, is_concrete
from .._types import Array, Bool, Float, Key
from ..data import TimeSeries

LOG_2PI = float(np.log(2 * np.pi))
LIKELIHOODS = ("gaussian", "bernoulli", "categorical")


class ObservationHead(eqx.Module):
    r"""How a decoder's raw outputs parameterise $p(y_t \mid \cdot)$, independently over the M
    entries of $y_t$: "gaussian" (2M outputs: means and sds, $\sigma = \mathrm{softplus} +
    \sigma_{\min}$), "bernoulli" (M logits, y in {0, 1}) or "categorical" (M K logits, y in
    {0, ..., K-1} stored as floats). Holds no parameters."""

    likelihood: str = eqx.field(static=True)
    obs_dim: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    min_sd: float = eqx.field(static=True)

    def __init__(self, likelihood: str, obs_dim: int, num_classes: int | None, min_sd: float):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; use one of {LIKELIHOODS}.")
        if likelihood == "categorical":
            if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
                raise ValueError(
                    f"likelihood='categorical' needs num_classes, an int >= 2, got {num_classes!r}."
                )
            if num_classes < 2:
                raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        elif num_classes is not None:
            raise ValueError(f"num_classes is for likelihood='categorical', not {likelihood!r}.")
        if not min_sd >= 0:
            raise ValueError(f"min_sd must be >= 0, got {min_sd!r}.")
        self.likelihood, self.obs_dim = likelihood, int(obs_dim)
        self.num_classes = int(num_classes or 0)
        self.min_sd = float(min_sd)

    @property
    def num_params(self) -> int:
        """Raw outputs per step."""
        M = self.obs_dim
        return {"gaussian": 2 * M, "bernoulli": M, "categorical": M * self.num_classes}[
            self.likelihood
        ]

    def _gaussian(self, raw):
        M = self.obs_dim
        return raw[..., :M], jax.nn.softplus(raw[..., M:]) + self.min_sd

    def _logits(self, raw):
        return raw.reshape(raw.shape[:-1] + (self.obs_dim, self.num_classes))

    def log_prob(
        self,
        raw: Float[Array, "*batch P"],
        y: Float[Array, "*batch M"],
        observed: Bool[Array, "*batch M"],
    ) -> Float[Array, "*batch"]:
        """$\\sum_m \\log p(y_m)$ over the observed entries (missing ones add 0)."""
        y = jnp.where(observed, y, 0.0)
        if self.likelihood == "gaussian":
            mean, sd = self._gaussian(raw)
            z = (y - mean) / sd
            each = -0.5 * z**2 - jnp.log(sd) - 0.5 * LOG_2PI
        elif self.likelihood == "bernoulli":
            each = y * jax.nn.log_sigmoid(raw) + (1 - y) * jax.nn.log_sigmoid(-raw)
        else:
            log_p = jax.nn.log_softmax(self._logits(raw), axis=-1)
            index = jnp.clip(y.astype(jnp.int32), 0, self.num_classes - 1)
            each = jnp.take_along_axis(log_p, index[..., None], axis=-1)[..., 0]
        return jnp.sum(jnp.where(observed, each, 0.0), axis=-1)

    def moments(self, raw: Float[Array, "*batch P"]) -> tuple[Array, Array]:
        """Mean and variance of each entry, (*batch, M) each."""
        if self.likelihood == "gaussian":
            mean, sd = self._gaussian(raw)
            return mean, sd**2
        if self.likelihood == "bernoulli":
            p = jax.nn.sigmoid(raw)
            return p, p * (1 - p)
        p = jax.nn.softmax(self._logits(raw), axis=-1)
        k = jnp.arange(self.num_classes, dtype=raw.dtype)
        mean = p @ k
        return mean, p @ k**2 - mean**2

    def sample(self, raw: Float[Array, " P"], key: Key) -> Float[Array, " M"]:
        """One draw of y_t; the noise is a function of `key` alone (so that two evaluation orders
        that reach the same raw outputs draw the same y)."""
        M = self.obs_dim
        if self.likelihood == "gaussian":
            mean, sd = self._gaussian(raw)
            return mean + sd * jax.random.normal(key, (M,), raw.dtype)
        if self.likelihood == "bernoulli":
            u = jax.random.uniform(key, (M,), raw.dtype)
            return (u < jax.nn.sigmoid(raw)).astype(raw.dtype)
        g = jax.random.gumbel(key, (M, self.num_classes), raw.dtype)
        return jnp.argmax(self._logits(raw) + g, axis=-1).astype(raw.dtype)


def check_sizes(owner: str, **sizes) -> None:
    """Each size (obs_dim, width, ...) a positive int, or a ValueError naming it."""
    for name, value in sizes.items():
        check_positive_int(f"{owner}: {name}", value)


def diagonal_gaussian(
    raw: Float[Array, "*batch 2Z"], min_sd: float = 1e-4
) -> tuple[Float[Array, "*batch Z"], Float[Array, "*batch Z"]]:
    """(mean, sd) from a network's 2Z outputs."""
    Z = raw.shape[-1] // 2
    return raw[..., :Z], jax.nn.softplus(raw[..., Z:]) + min_sd


def kl_diagonal(m_q, s_q, m_p, s_p) -> Float[Array, "*batch"]:
    r"""$\mathrm{KL}(N(m_q, s_q^2) \,\|\, N(m_p, s_p^2))$ summed over the last axis."""
    ratio = (s_q / s_p) ** 2
    return 0.5 * jnp.sum(ratio + ((m_q - m_p) / s_p) ** 2 - 1.0 - jnp.log(ratio), axis=-1)


def masked_inputs(values: Float[Array, "T M"]) -> Float[Array, "T 2M"]:
    """What a network sees of a series with gaps: the values with NaN set to 0, and the mask."""
    observed = ~jnp.isnan(values)
    return jnp.concatenate([jnp.where(observed, values, 0.0), observed.astype(values.dtype)], -1)


def shift_right(u: Float[Array, "T K"]) -> Float[Array, "T K"]:
    """u_{t-1} at row t (zeros at row 0): the input of a causal network that predicts row t
    from the rows before it."""
    return jnp.concatenate([jnp.zeros_like(u[:1]), u[:-1]], axis=0)


def gaps(times: Float[Array, " T"]) -> Float[Array, " T"]:
    """dt_t = t_t - t_{t-1}, with dt_0 = dt_1 (1 for a single time): the step into the first
    observation has the series' own scale, and it is the gap the model protocol hands the first
    step (`StepInputs.dt` at t = 0 is t_1 - t_0)."""
    diffs = jnp.diff(times)
    first = diffs[:1] if times.shape[0] > 1 else jnp.ones((1,), times.dtype)
    return jnp.concatenate([first, diffs])


def series_arrays(owner: str, series, width: int, name: str, dtype) -> tuple[Array, Array]:
    """(times (T,), values (T, width)) of one series in `dtype`, after shape checks; a plain
    array (T, width) (or (T,) when width = 1) is at times 0, 1, ..., T-1."""
    if isinstance(series, TimeSeries):
        times, values = series.times, series.values
    else:
        values = series if hasattr(series, "shape") else np.asarray(series)
        if values.ndim == 1 and width == 1:
            values = values[:, None]
        if values.ndim != 2:
            raise ValueError(
                f"{owner}: {name} must be a bs.TimeSeries or an array (T, {width}), got shape "
                f"{tuple(values.shape)}."
            )
        times = jnp.arange(values.shape[0])
    if times.ndim != 1 or values.ndim != 2:
        raise ValueError(
            f"{owner}: one series at a time ({name} of shape (T, {width})); got times of "
            f"shape {tuple(times.shape)} and values {tuple(values.shape)}. For a batch, use "
            "jax.vmap or bs.train."
        )
    if values.shape[1] != width:
        raise ValueError(
            f"{owner}: {name} must have {width} columns, got {values.shape[1]} (shape "
            f"{tuple(values.shape)})."
        )
    if is_concrete(values) and np.all(np.isnan(np.asarray(values))):
        raise ValueError(f"{owner}: {name} is all NaN: there is nothing to condition on.")
    return jnp.asarray(times, dtype), jnp.asarray(values, dtype)


class PushForward(distrax.Distribution):
    """The law of `fn(z)`, z ~ N(0, I_Z): a state that is a deterministic function of fresh
    Gaussian noise (the recurrent states of a deep model). It can be sampled, which is all a
    bootstrap particle filter asks of a transition; it has no density."""

    def __init__(self, fn: Callable[[Array], Array], noise_size: int, event_size: int, dtype):
        self._fn, self._noise_size, self._event_size, self._dtype = (
            fn,
            noise_size,
            event_size,
            dtype,
        )

    @property
    def event_shape(self):
        return (self._event_size,)

    @property
    def batch_shape(self):
        return ()

    def _sample_n(self, key, n: int):
        z = jax.random.normal(key, (n, self._noise_size), self._dtype)
        return jax.vmap(self._fn)(z)

    def log_prob(self, value):
        raise NotImplementedError(
            "this state is a deterministic function of Gaussian noise and has no density: use an "
            "engine that only samples the transition (bs.ParticleFilter, bootstrap proposal)."
        )


def flatten_states(states: tuple) -> Float[Array, " S"]:
    """Complex recurrent states (a tuple of arrays) as one real vector."""
    parts = [jnp.concatenate([s.real.ravel(), s.imag.ravel()]) for s in states]
    return jnp.concatenate(parts) if parts else jnp.zeros((0,))


def unflatten_states(flat: Float[Array, " S"], like: tuple) -> tuple:
    """The inverse of `flatten_states`, shapes and dtypes taken from `like`."""
    out, start = [], 0
    for s in like:
        n = s.size
        re = flat[start : start + n].reshape(s.shape)
        im = flat[start + n : start + 2 * n].reshape(s.shape)
        out.append((re + 1j * im).astype(s.dtype))
        start += 2 * n
    return tuple(out)


class HeadDistribution(distrax.Distribution):
    """$p(y_t \\mid x_t)$ of a deep model for the particle engines: the head at given raw outputs;
    NaN entries of y are missing (add 0)."""

    def __init__(self, head: ObservationHead, raw):
        self._head, self._raw = head, raw

    @property
    def event_shape(self):
        return (self._head.obs_dim,)

    @property
    def batch_shape(self):
        return ()

    def _sample_n(self, key, n: int):
        return jax.vmap(lambda k: self._head.sample(self._raw, k))(jax.random.split(key, n))

    def log_prob(self, value):
        observed = ~jnp.isnan(value)
        return self._head.log_prob(self._raw, value, observed)
