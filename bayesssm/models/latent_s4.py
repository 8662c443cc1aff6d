r"""LS4-style deep latent state-space model: latents whose dynamics are deep SSM layers, on
regular or irregular times.

$$z_t \mid z_{<t} \sim N\big(\mu_\psi(z_{<t})_t, \sigma_\psi(z_{<t})_t^2\big),\qquad
    y_t \mid z_{\le t} \sim p_\theta\big(y_t \mid g_\theta(z_{\le t})_t\big),\qquad
    q_\phi(z \mid y) = \prod_t N\big(z_t; \mu_\phi(y)_t, \sigma_\phi(y)_t^2\big),$$

$\mu_\psi, \sigma_\psi$ a causal `bs.nn.DeepSSM` reading the latents one step behind, $g_\theta$ a
causal one reading them at the same step, $q_\phi$ a bidirectional one reading the observations
(with their missing-value mask). Every SSM layer is discretised over the series' own time gaps
$\Delta t_t = t_t - t_{t-1}$ (its learned step scales them), so irregular sampling is handled by
the layers' continuous-time dynamics rather than by padding. The bound is evaluated with the
layers' parallel scan (`mode="conv"` for equally spaced series gives the same numbers).

The decoder reads the latents only (not past observations, as LS4's can), which keeps the model
a state-space model in the library's sense: its state is the two causal stacks' recurrent states
and the current latent, a deterministic function of the previous state and fresh noise, so
bootstrap particle filters run on it (`bs.filter(model, series, engine=bs.ParticleFilter(...))`).

References:
    Zhou, L., Poli, M., Xu, W., Massaroli, S. and Ermon, S. (2023). Deep latent state space models
    for time-series generation. ICML.
    Gu, A., Gupta, A., Goel, K. and Ré, C. (2022). On the parameterization and initialization of
    diagonal state space models. NeurIPS.
"""

from __future__ import annotations

from typing import NamedTuple

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_positive_int
from .._jit import filter_jit
from .._types import Array, Float, Key
from ..nn import DeepSSM
from ..ssm import AbstractSSM, StepInputs
from ._deep import (
    HeadDistribution,
    ObservationHead,
    PushForward,
    check_sizes,
    diagonal_gaussian,
    flatten_states,
    gaps,
    kl_diagonal,
    masked_inputs,
    series_arrays,
    shift_right,
    unflatten_states,
)

_OWNER = "LatentS4"
# Irregular gaps rule out the FFT convolution; on CPU the sequential scan (forward and reverse
# mode) ran faster than the associative scan at these lengths.
_LAYER_MODE = "scan"


class LatentS4Sample(NamedTuple):
    """A draw from `LatentS4.generate`: values (T, M), latents (T, Z), decoder means (T, M)."""

    values: Float[Array, "T M"]
    latents: Float[Array, "T Z"]
    means: Float[Array, "T M"]


class LatentS4(AbstractSSM):
    r"""Deep latent SSM with S4-layer latent dynamics (LS4-style), for irregular time series.

    Args:
        obs_dim: M, the number of columns of y.
        latent_dim: Z, the size of each $z_t$.
        key: PRNG key for the initial weights.
        width, depth, state_size: of each `bs.nn.DeepSSM` (prior, decoder, encoder).
        likelihood: "gaussian", "bernoulli" or "categorical" (with `num_classes`).
        num_classes: K for the categorical likelihood.
        min_sd: the smallest sd of a Gaussian likelihood.
        dt_min, dt_max: the range of the layers' initial step sizes, in the series' time unit.
        discretisation: of the SSM layers, "bilinear" (default) or "zoh". Irregular gaps make
            every step's discretisation different; the bilinear one takes no transcendental
            functions and trained about 2.5x faster on CPU than zero-order hold.
        dtype: of the parameters.

    Example:
        ```python
        import jax, numpy as np, bayesssm as bs
        times = np.cumsum(np.random.default_rng(0).uniform(0.1, 0.5, 40))
        series = bs.TimeSeries(times, np.sin(times))
        model = bs.models.LatentS4(obs_dim=1, latent_dim=2, key=jax.random.key(0), width=16)
        fitted, history = bs.train(model, [series], num_steps=10, key=jax.random.key(1))
        filled = bs.impute(fitted, series, at=np.linspace(0, times[-1], 100))
        ```
    """

    prior_net: DeepSSM
    decoder: DeepSSM
    encoder: DeepSSM
    head: ObservationHead
    obs_dim: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int = 4,
        *,
        key: Key,
        width: int = 32,
        depth: int = 2,
        state_size: int = 32,
        likelihood: str = "gaussian",
        num_classes: int | None = None,
        min_sd: float = 1e-3,
        dt_min: float = 1e-2,
        dt_max: float = 1.0,
        discretisation: str = "bilinear",
        dtype=None,
    ):
        check_sizes(
            _OWNER,
            obs_dim=obs_dim,
            latent_dim=latent_dim,
            width=width,
            depth=depth,
            state_size=state_size,
        )
        head = ObservationHead(likelihood, obs_dim, num_classes, min_sd)
        k_prior, k_dec, k_enc = jax.random.split(key, 3)
        net = dict(
            width=width,
            depth=depth,
            state_size=state_size,
            dt_min=dt_min,
            dt_max=dt_max,
            discretisation=discretisation,
            dtype=dtype,
        )
        self.prior_net = DeepSSM(latent_dim, 2 * latent_dim, key=k_prior, **net)
        self.decoder = DeepSSM(latent_dim, head.num_params, key=k_dec, **net)
        self.encoder = DeepSSM(2 * obs_dim, 2 * latent_dim, key=k_enc, bidirectional=True, **net)
        self.head = head
        self.obs_dim, self.latent_dim = int(obs_dim), int(latent_dim)

    @property
    def dtype(self):
        """The float dtype of the parameters."""
        return jax.tree.leaves(eqx.filter(self.decoder, eqx.is_inexact_array))[0].dtype

    # -- the pieces -----------------------------------------------------------------------------

    def encode(
        self, values: Float[Array, "T M"], dt: Float[Array, " T"]
    ) -> tuple[Float[Array, "T Z"], Float[Array, "T Z"]]:
        """$q(z_t \\mid y)$: means and sds (T, Z), given the gaps `dt` (T,)."""
        raw, _ = self.encoder(masked_inputs(values), dt=dt, mode=_LAYER_MODE)
        return diagonal_gaussian(raw)

    def prior(
        self, z: Float[Array, "T Z"], dt: Float[Array, " T"]
    ) -> tuple[Float[Array, "T Z"], Float[Array, "T Z"]]:
        """$p(z_t \\mid z_{<t})$ for every t: means and sds (T, Z), given a latent path."""
        raw, _ = self.prior_net(shift_right(z), dt=dt, mode=_LAYER_MODE)
        return diagonal_gaussian(raw)

    def decode(self, z: Float[Array, "T Z"], dt: Float[Array, " T"]) -> Float[Array, "T P"]:
        """The decoder's raw outputs, the parameters of $p(y_t \\mid z_{\\le t})$."""
        raw, _ = self.decoder(z, dt=dt, mode=_LAYER_MODE)
        return raw

    # -- the bound ------------------------------------------------------------------------------

    def elbo(self, series, *, key: Key, num_samples: int = 1) -> Float[Array, ""]:
        r"""A reparameterised estimate of the evidence lower bound of one series,

        $$\mathcal{L} = E_q\Big[\sum_t \log p(y_t \mid z_{\le t})
            - \sum_t \mathrm{KL}\big(q(z_t \mid y) \,\|\, p(z_t \mid z_{<t})\big)\Big]
            \le \log p(y),$$

        each KL in closed form given the drawn $z_{<t}$ (valid because $q$ factorises over t),
        the expectation by `num_samples` draws. Missing entries (NaN) add nothing to the
        likelihood; a series padded with NaN rows at later times gives the bound of its
        observed part.

        Args:
            series: a `bs.TimeSeries` (irregular times allowed) or an array (T, M) at times
                0, 1, ..., T-1.
            key: PRNG key for the draws.
            num_samples: draws of $z$.

        Returns:
            The estimate, a scalar.
        """
        check_positive_int("num_samples", num_samples)
        times, values = series_arrays(_OWNER, series, self.obs_dim, "y", self.dtype)
        return _elbo(self, times, values, key, num_samples)

    # -- generation and imputation --------------------------------------------------------------

    def generate(self, key: Key, times: Float[Array, " T"]) -> LatentS4Sample:
        r"""Draw a series at the given times (T,): the latents one step at a time from their
        prior (each $z_t$ depends on the earlier ones), decoded by the decoder's recurrence."""
        times = jnp.asarray(times, self.dtype)
        if times.ndim != 1 or times.shape[0] < 1:
            raise ValueError(f"{_OWNER}: times must be a non-empty 1-D array, got {times.shape}.")
        return _generate(self, key, times)

    def posterior_predictive(
        self,
        series,
        rows,
        *,
        key: Key | None = None,
        num_samples: int | None = None,
        engine=None,
    ) -> tuple[Float[Array, "Q M"], Float[Array, "Q M"], Float[Array, "Q M"]]:
        r"""Mean, variance of y and variance of its mean at the rows `rows` of `series` (the hook
        `bs.impute` uses): the decoder's moments under the encoder's $q(z \mid y)$. With
        `key=None` the latents are the encoder's means (one deterministic pass); with a key,
        `num_samples` (default 32) draws from $q$ give the moments of the mixture.

        Args:
            series: the series with the query times merged in as missing rows, (T, M).
            rows: (Q,) indices of the query rows.
            key: PRNG key for draws from the encoder, or None.
            num_samples: draws with a key.
            engine: not used (the encoder is the inference here); accepted for `bs.impute`.
        """
        if key is None and num_samples is not None:
            raise ValueError("num_samples needs key=jax.random.key(...).")
        if engine is not None:
            raise ValueError(
                f"{_OWNER}: imputation uses the model's own encoder; engine= is not used."
            )
        times, values = series_arrays(_OWNER, series, self.obs_dim, "y", self.dtype)
        num = 1 if key is None else (32 if num_samples is None else num_samples)
        check_positive_int("num_samples", num)
        return _predictive(self, times, values, jnp.asarray(rows), key, num)

    # -- the model protocol ---------------------------------------------------------------------
    # x_t = (prior-network states after reading z_t, decoder states, z_t, decoder outputs at t)
    # as one real vector; `inputs.dt` (time to the next step) discretises the layers.

    def _layout(self):
        prior_like, dec_like = self.prior_net.init_state(), self.decoder.init_state()
        sizes = (
            2 * sum(s.size for s in prior_like),
            2 * sum(s.size for s in dec_like),
            self.latent_dim,
            self.head.num_params,
        )
        return prior_like, dec_like, sizes

    def _split(self, x):
        prior_like, dec_like, sizes = self._layout()
        a, b, c = sizes[0], sizes[0] + sizes[1], sizes[0] + sizes[1] + sizes[2]
        return (
            unflatten_states(x[:a], prior_like),
            unflatten_states(x[a:b], dec_like),
            x[b:c],
            x[c:],
        )

    def _step(self, prior_states, dec_states, z_prev, dt, noise):
        """One step of the generative recurrence: z_t from the prior network (which reads
        z_{t-1}), then the decoder; returns the new states, z_t and the decoder's outputs."""
        prior_states, raw_p = self.prior_net.step(prior_states, z_prev, dt)
        p_mean, p_sd = diagonal_gaussian(raw_p)
        z = p_mean + p_sd * noise
        dec_states, raw = self.decoder.step(dec_states, z, dt)
        return prior_states, dec_states, z, raw

    def _advance(self, prior_states, dec_states, z_prev, dt, noise):
        prior_states, dec_states, z, raw = self._step(prior_states, dec_states, z_prev, dt, noise)
        return jnp.concatenate([flatten_states(prior_states), flatten_states(dec_states), z, raw])

    def _size(self) -> int:
        return sum(self._layout()[2])

    def initial(self, inputs: StepInputs | None = None) -> distrax.Distribution:
        prior_like, dec_like, _ = self._layout()
        dt = _first_gap(inputs, self.dtype)
        z0 = jnp.zeros((self.latent_dim,), self.dtype)
        return PushForward(
            lambda e: self._advance(prior_like, dec_like, z0, dt, e),
            self.latent_dim,
            self._size(),
            self.dtype,
        )

    def transition(self, x: Array, inputs: StepInputs | None = None) -> distrax.Distribution:
        prior_states, dec_states, z, _ = self._split(x)
        dt = jnp.ones((), self.dtype) if inputs is None or inputs.dt is None else inputs.dt
        return PushForward(
            lambda e: self._advance(prior_states, dec_states, z, dt, e),
            self.latent_dim,
            self._size(),
            self.dtype,
        )

    def emission(self, x: Array, inputs: StepInputs | None = None) -> distrax.Distribution:
        return HeadDistribution(self.head, self._split(x)[3])

    def check_data(self, num_timesteps, obs_dim, controls) -> None:
        if obs_dim is not None and obs_dim != self.obs_dim:
            raise ValueError(f"{_OWNER}: y must have {self.obs_dim} columns, got {obs_dim}.")


def _first_gap(inputs: StepInputs | None, dtype):
    """The gap into the first step: t_1 - t_0, as in `gaps` (1 without times)."""
    if inputs is None or inputs.dt is None:
        return jnp.ones((), dtype)
    return jnp.asarray(inputs.dt, dtype)


@filter_jit
def _elbo(model: LatentS4, times, values, key, num_samples: int) -> Float[Array, ""]:
    observed = ~jnp.isnan(values)
    dt = gaps(times)
    mean, sd = model.encode(values, dt)
    eps = jax.random.normal(key, (num_samples,) + mean.shape, mean.dtype)

    def one(e):
        z = mean + sd * e
        p_mean, p_sd = model.prior(z, dt)
        kl = jnp.sum(kl_diagonal(mean, sd, p_mean, p_sd))
        log_lik = jnp.sum(model.head.log_prob(model.decode(z, dt), values, observed))
        return log_lik - kl

    return jnp.mean(jax.vmap(one)(eps))


@filter_jit
def _generate(model: LatentS4, key, times) -> LatentS4Sample:
    dt = gaps(times)
    T = times.shape[0]
    k_z, k_y = jax.random.split(key)
    noise = jax.random.normal(k_z, (T, model.latent_dim), model.dtype)

    def one(carry, args):
        e, dt_t = args
        prior_states, dec_states, z, raw = model._step(*carry, dt_t, e)
        return (prior_states, dec_states, z), (z, raw)

    start = (
        model.prior_net.init_state(),
        model.decoder.init_state(),
        jnp.zeros((model.latent_dim,), model.dtype),
    )
    _, (z, raw) = jax.lax.scan(one, start, (noise, dt))
    values = jax.vmap(model.head.sample)(raw, jax.random.split(k_y, T))
    means, _ = model.head.moments(raw)
    return LatentS4Sample(values, z, means)


@filter_jit
def _predictive(model: LatentS4, times, values, rows, key, num: int):
    dt = gaps(times)
    mean, sd = model.encode(values, dt)
    if key is None:
        z = mean[None]
    else:
        z = mean + sd * jax.random.normal(key, (num,) + mean.shape, mean.dtype)
    raw = jax.vmap(lambda z_s: model.decode(z_s, dt))(z)  # (S, T, P)
    m, v = model.head.moments(raw[:, rows])
    centre = jnp.mean(m, axis=0)
    signal = jnp.mean((m - centre) ** 2, axis=0)
    return centre, jnp.mean(v, axis=0) + signal, signal
