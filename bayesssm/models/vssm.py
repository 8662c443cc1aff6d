r"""The variational state-space model (VSSM): a VAE whose encoder and decoder are deep SSMs.

$$z_t \sim p(z_t) \ \text{independently},\qquad y_t \mid z_{1:t} \sim p_\theta(y_t \mid
    g_\theta(z_{1:t})_t),\qquad q_\phi(z_{1:T} \mid y_{1:T}) = \prod_t N(z_t;
    \mu_\phi(y)_t, \sigma_\phi(y)_t^2),$$

$g_\theta$ a causal stack of diagonal SSM layers (`bs.nn.DeepSSM`) and $q_\phi$ a bidirectional
one. Because the latents are independent a priori and the decoder is a linear recurrence between
pointwise maps, generation samples every $z_t$ at once and decodes them with a parallel scan;
and the decoder's recurrent state after any prefix is all that later steps need, so generation
resumes from a stored state without reprocessing.

The autoregressive VSSM (`autoregressive=True`) replaces $p(z_t)$ by a learned
$p_\psi(z_t \mid y_{<t} \cap \text{prefix})$: a causal SSM over the observations of a prefix
of random length $c$ (the rows from $c$ on are hidden from it). Trained so, it can be
conditioned on a given prefix $y_{1:c}$ and still generates in parallel: past the prefix the
prior network's inputs are all hidden, so its outputs, the $z$'s and the decoder all run as
scans.

References:
    Lambrechts, G., Claes, Y., Geurts, P. and Ernst, D. (2024). Parallelizing autoregressive
    generation with variational state space models. arXiv:2407.08415.
    Kingma, D. P. and Welling, M. (2014). Auto-encoding variational Bayes. ICLR.
"""

from __future__ import annotations

from typing import NamedTuple

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_positive_int
from .._jit import filter_jit
from .._types import Array, Float, Int, Key
from ..nn import DeepSSM
from ..ssm import AbstractSSM, StepInputs
from ._deep import (
    HeadDistribution,
    ObservationHead,
    PushForward,
    check_sizes,
    diagonal_gaussian,
    flatten_states,
    kl_diagonal,
    masked_inputs,
    series_arrays,
    shift_right,
    unflatten_states,
)

_OWNER = "VSSM"
_MODES = ("conv", "parallel", "recurrent")
# Training sequences are equally spaced, so every layer runs as an FFT convolution: on CPU ~10x
# faster than the parallel scan, whose cost grows with the state size (the same numbers).
_LAYER_MODE = "conv"


class VSSMState(NamedTuple):
    """Where generation stands: the decoder's recurrent states, the prior network's (the
    autoregressive VSSM; () otherwise), and the number of steps generated or conditioned on.

    Attributes:
        decoder: one complex array (width, state_size) per decoder block.
        prior: the same for the prior network, or ().
        step: the index of the next step (an int scalar).
    """

    decoder: tuple
    prior: tuple
    step: Int[Array, ""]


class Generation(NamedTuple):
    """What `VSSM.generate` returns.

    Attributes:
        values: (L, M) the generated observations.
        latents: (L, Z) the latents they were decoded from.
        means: (L, M) the decoder's means of y at those latents.
        state: the `VSSMState` after the last step, to resume from.
    """

    values: Float[Array, "L M"]
    latents: Float[Array, "L Z"]
    means: Float[Array, "L M"]
    state: VSSMState


class VSSM(AbstractSSM):
    r"""Variational state-space model: deep SSM encoder and decoder, independent latents.

    Args:
        obs_dim: M, the number of columns of y.
        latent_dim: Z, the size of each $z_t$.
        key: PRNG key for the initial weights.
        width, depth, state_size: of each `bs.nn.DeepSSM` (encoder, decoder, prior network).
        likelihood: "gaussian", "bernoulli" or "categorical" (with `num_classes`): the law of
            each entry of $y_t$ given the decoder's output.
        num_classes: K for the categorical likelihood (y in {0, ..., K-1}).
        autoregressive: learn $p(z_t \mid y_{<t} \cap \text{prefix})$ (see the module's
            docstring) so that generation can be conditioned on a prefix.
        min_sd: the smallest sd of a Gaussian likelihood.
        dtype: of the parameters (default JAX's float).

    Example:
        ```python
        import jax, bayesssm as bs
        vssm = bs.models.VSSM(obs_dim=1, latent_dim=4, key=jax.random.key(0), width=16)
        y = jax.random.normal(jax.random.key(1), (32, 1))
        bound = vssm.elbo(y, key=jax.random.key(2))
        fitted, history = bs.train(vssm, y[None], num_steps=10, key=jax.random.key(3))
        sample = fitted.generate(jax.random.key(4), 64)      # parallel
        more = fitted.generate(jax.random.key(4), 64, state=sample.state)   # resumed
        ```
    """

    encoder: DeepSSM
    decoder: DeepSSM
    prior_net: DeepSSM | None
    head: ObservationHead
    obs_dim: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int = 8,
        *,
        key: Key,
        width: int = 64,
        depth: int = 2,
        state_size: int = 32,
        likelihood: str = "gaussian",
        num_classes: int | None = None,
        autoregressive: bool = False,
        min_sd: float = 1e-3,
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
        k_enc, k_dec, k_prior = jax.random.split(key, 3)
        net = dict(width=width, depth=depth, state_size=state_size, dtype=dtype)
        self.encoder = DeepSSM(2 * obs_dim, 2 * latent_dim, key=k_enc, bidirectional=True, **net)
        self.decoder = DeepSSM(latent_dim, head.num_params, key=k_dec, **net)
        self.prior_net = (
            DeepSSM(2 * obs_dim, 2 * latent_dim, key=k_prior, **net) if autoregressive else None
        )
        self.head = head
        self.obs_dim, self.latent_dim = int(obs_dim), int(latent_dim)

    @property
    def autoregressive(self) -> bool:
        return self.prior_net is not None

    @property
    def dtype(self):
        """The float dtype of the parameters."""
        return jax.tree.leaves(eqx.filter(self.decoder, eqx.is_inexact_array))[0].dtype

    # -- the pieces -----------------------------------------------------------------------------

    def encode(
        self, values: Float[Array, "T M"]
    ) -> tuple[Float[Array, "T Z"], Float[Array, "T Z"]]:
        """$q(z_t \\mid y_{1:T})$: means and sds (T, Z). NaN marks missing entries."""
        raw, _ = self.encoder(masked_inputs(values), mode=_LAYER_MODE)
        return diagonal_gaussian(raw)

    def prior(
        self, values: Float[Array, "T M"], prefix_length=None
    ) -> tuple[Float[Array, "T Z"], Float[Array, "T Z"]]:
        r"""$p(z_t \mid \cdot)$ for every row t of `values`: N(0, I), or for the autoregressive
        VSSM the prior network's law given the rows before `prefix_length`."""
        T = values.shape[0]
        if self.prior_net is None:
            shape = (T, self.latent_dim)
            return jnp.zeros(shape, self.dtype), jnp.ones(shape, self.dtype)
        rows = jnp.arange(T)[:, None]
        inputs = masked_inputs(jnp.where(rows < prefix_length, values, jnp.nan))
        raw, _ = self.prior_net(shift_right(inputs), mode=_LAYER_MODE)
        return diagonal_gaussian(raw)

    def decode(self, z: Float[Array, "T Z"]) -> Float[Array, "T P"]:
        """The decoder's raw outputs (the head's parameters of $p(y_t \\mid z_{1:t})$)."""
        raw, _ = self.decoder(z, mode=_LAYER_MODE)
        return raw

    # -- the bound ------------------------------------------------------------------------------

    def elbo(
        self,
        series,
        *,
        key: Key,
        num_samples: int = 1,
        prefix_length: int | Int[Array, ""] | None = None,
    ) -> Float[Array, ""]:
        r"""A reparameterised estimate of the evidence lower bound of one series,

        $$\mathcal{L} = E_q\Big[\sum_t \log p(y_t \mid z_{1:t})\Big]
            - \sum_t \mathrm{KL}\big(q(z_t \mid y) \,\|\, p(z_t \mid \cdot)\big)
            \le \log p(y),$$

        the KL terms in closed form, the expectation by `num_samples` draws. Missing entries
        (NaN) add nothing to the first sum. For the autoregressive VSSM the prior sees the rows
        before `prefix_length` (default: a length drawn uniformly from 0..T with `key`, which
        is how it learns to be conditioned on any prefix).

        Args:
            series: a `bs.TimeSeries` or an array (T, M) (rows equally spaced; the times of a
                TimeSeries are not used).
            key: PRNG key for the draws.
            num_samples: draws of $z_{1:T}$.
            prefix_length: the autoregressive prior's prefix (ignored otherwise).

        Returns:
            The estimate, a scalar.
        """
        check_positive_int("num_samples", num_samples)
        _, values = series_arrays(_OWNER, series, self.obs_dim, "y", self.dtype)
        return _elbo(self, values, key, num_samples, prefix_length)

    # -- generation -----------------------------------------------------------------------------

    def init_state(self) -> VSSMState:
        """The state before any step."""
        prior = ()
        if self.prior_net is not None:
            prior = (self.prior_net.init_state(), jnp.zeros((2 * self.obs_dim,), self.dtype))
        return VSSMState(self.decoder.init_state(), prior, jnp.zeros((), jnp.int32))

    def condition(self, prefix, *, key: Key) -> VSSMState:
        r"""The state after a given prefix $y_{1:c}$, to `generate` a continuation from.

        The prefix's latents are drawn from the encoder, $z_{1:c} \sim q(z \mid y_{1:c})$, and
        decoded; the autoregressive VSSM's prior network also reads the prefix, so that the
        latents generated after it follow $p(z_t \mid y_{1:c})$.

        Args:
            prefix: (c, M) array or `bs.TimeSeries`; NaN marks missing entries.
            key: PRNG key for the prefix's latents.
        """
        _, values = series_arrays(_OWNER, prefix, self.obs_dim, "prefix", self.dtype)
        mean, sd = self.encode(values)
        z = mean + sd * jax.random.normal(key, mean.shape, mean.dtype)
        _, decoder_state = self.decoder(z, mode=_LAYER_MODE)
        prior_state = ()
        if self.prior_net is not None:
            # The prior network reads y_{t-1} at step t: after c steps it has read y_{1:c-1};
            # y_c enters at the first generated step.
            _, prior_state = self.prior_net(shift_right(masked_inputs(values)), mode=_LAYER_MODE)
            prior_state = (prior_state, masked_inputs(values)[-1])
        return VSSMState(decoder_state, prior_state, jnp.asarray(values.shape[0], jnp.int32))

    def generate(
        self, key: Key, num_steps: int, *, state: VSSMState | None = None, mode: str = "conv"
    ) -> Generation:
        r"""Draw `num_steps` observations from the model, continuing from `state`.

        "conv" and "parallel" generate every step at once: all latents drawn together, then
        the decoder's SSM layers run as FFT convolutions ("conv", the fastest on CPU) or as
        parallel scans ("parallel", `jax.lax.associative_scan`); "recurrent" runs the decoder's
        recurrence one step at a time. The draws at the overall step $s$ use the key
        `jax.random.fold_in(key, s)` only, so the three modes give the same samples, and
        generation resumed from a returned `state` equals generation without the interruption.

        Args:
            key: PRNG key.
            num_steps: L, how many steps to draw.
            state: where to continue from: a `Generation.state`, `condition(prefix)`, or None
                (the start).
            mode: "conv", "parallel" or "recurrent".

        Returns:
            A `Generation` (values (L, M), latents (L, Z), means (L, M), state).
        """
        check_positive_int("num_steps", num_steps)
        if mode not in _MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {_MODES}.")
        # From the start, the layers skip the zero initial state's term (a third of the FFT
        # path's work)
        fresh = state is None
        state = self.init_state() if fresh else state
        return _generate(self, key, state, num_steps, mode, fresh)

    # -- the model protocol ---------------------------------------------------------------------
    # The state x_t is (the decoder's recurrent states after step t, its raw outputs at t) as one
    # real vector: x_t is a deterministic function of x_{t-1} and fresh noise z_t, so the
    # transition can be sampled but has no density (bootstrap particle filters only).

    def _protocol_check(self):
        if self.prior_net is not None:
            raise TypeError(
                "the autoregressive VSSM's latents depend on past observations, so it is not a "
                "state-space model in the sense of initial / transition / emission; use "
                "VSSM(autoregressive=False) for particle engines."
            )

    def _state_size(self) -> int:
        like = self.decoder.init_state()
        return 2 * sum(s.size for s in like) + self.head.num_params

    def _advance(self, flat_states, z):
        like = self.decoder.init_state()
        states = unflatten_states(flat_states, like)
        states, raw = self.decoder.step(states, z)
        return jnp.concatenate([flatten_states(states), raw])

    def initial(self, inputs: StepInputs | None = None) -> distrax.Distribution:
        self._protocol_check()
        start = flatten_states(self.decoder.init_state()).astype(self.dtype)
        return PushForward(
            lambda z: self._advance(start, z), self.latent_dim, self._state_size(), self.dtype
        )

    def transition(self, x: Array, inputs: StepInputs | None = None) -> distrax.Distribution:
        self._protocol_check()
        flat = x[: x.shape[0] - self.head.num_params]
        return PushForward(
            lambda z: self._advance(flat, z), self.latent_dim, self._state_size(), self.dtype
        )

    def emission(self, x: Array, inputs: StepInputs | None = None) -> distrax.Distribution:
        self._protocol_check()
        raw = x[x.shape[0] - self.head.num_params :]
        return HeadDistribution(self.head, raw)

    def check_data(self, num_timesteps, obs_dim, controls) -> None:
        self._protocol_check()
        if obs_dim is not None and obs_dim != self.obs_dim:
            raise ValueError(f"{_OWNER}: y must have {self.obs_dim} columns, got {obs_dim}.")


@filter_jit
def _elbo(model: VSSM, values, key, num_samples: int, prefix_length) -> Float[Array, ""]:
    T = values.shape[0]
    observed = ~jnp.isnan(values)
    k_z, k_prefix = jax.random.split(key)
    mean, sd = model.encode(values)
    if model.prior_net is not None and prefix_length is None:
        prefix_length = jax.random.randint(k_prefix, (), 0, T + 1)
    p_mean, p_sd = model.prior(values, prefix_length)
    kl = jnp.sum(kl_diagonal(mean, sd, p_mean, p_sd))
    eps = jax.random.normal(k_z, (num_samples,) + mean.shape, mean.dtype)
    raw = jax.vmap(model.decode)(mean + sd * eps)  # (S, T, P)
    log_lik = jnp.sum(model.head.log_prob(raw, values, observed), axis=-1)
    return jnp.mean(log_lik) - kl


def _step_keys(key, start, num_steps):
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(start + jnp.arange(num_steps))
    both = jax.vmap(jax.random.split)(keys)
    return both[:, 0], both[:, 1]


@filter_jit
def _generate(
    model: VSSM, key, state: VSSMState, num_steps: int, mode: str, fresh: bool
) -> Generation:
    dtype = model.dtype
    k_z, k_y = _step_keys(key, state.step, num_steps)
    eps = jax.vmap(lambda k: jax.random.normal(k, (model.latent_dim,), dtype))(k_z)
    hidden = jnp.zeros((num_steps, 2 * model.obs_dim), dtype)

    if mode != "recurrent":
        if model.prior_net is None:
            z, prior_state = eps, ()
        else:
            prior_carry, last_input = _prior_start(model, state)
            inputs = jnp.concatenate([last_input[None], hidden[:-1]])
            raw_p, prior_carry = model.prior_net(
                inputs, state=None if fresh else prior_carry, mode=mode
            )
            p_mean, p_sd = diagonal_gaussian(raw_p)
            z = p_mean + p_sd * eps
            prior_state = (prior_carry, hidden[-1])
        raw, decoder_state = model.decoder(z, state=None if fresh else state.decoder, mode=mode)
    else:

        def one(carry, args):
            dec, prior = carry
            e = args
            if model.prior_net is None:
                z_t, new_prior = e, prior
            else:
                prior_carry, last_input = prior
                prior_carry, raw_p = model.prior_net.step(prior_carry, last_input)
                p_mean, p_sd = diagonal_gaussian(raw_p)
                z_t = p_mean + p_sd * e
                new_prior = (prior_carry, jnp.zeros_like(last_input))
            dec, raw_t = model.decoder.step(dec, z_t)
            return (dec, new_prior), (z_t, raw_t)

        prior0 = () if model.prior_net is None else _prior_start(model, state)
        (decoder_state, prior_state), (z, raw) = jax.lax.scan(one, (state.decoder, prior0), eps)
    values = jax.vmap(model.head.sample)(raw, k_y)
    means, _ = model.head.moments(raw)
    new_state = VSSMState(decoder_state, prior_state, state.step + num_steps)
    return Generation(values, z, means, new_state)


def _prior_start(model: VSSM, state: VSSMState):
    """(prior network states, the input it reads at the next step) of a `VSSMState`."""
    if len(state.prior) != 2:
        raise ValueError(
            "this state has no prior-network part: it comes from a VSSM with "
            "autoregressive=False; use the same model's init_state, condition or generate."
        )
    return state.prior
