r"""Proposals of the particle filter: how particles move, and the weight each move earns.

A proposal draws x_t for every particle and returns the log incremental weight
$\log g(y_t \mid x_t) + \log f(x_t \mid x_{t-1}) - \log q(x_t \mid x_{t-1}, y_t)$, over the observed
entries of y_t. `look_ahead` is the auxiliary filter's first-stage weight, an estimate of
$\log p(y_t \mid x_{t-1})$.

Draws use one key per particle under `jax.vmap`, which works for any distribution. A plain
`distrax.Normal` (the common scalar case) is instead built once for all particles and moved as
loc + scale z; such proposals report the shape of z (`noise_shape`), and the filter then draws z
for many steps at once (`run_particle_filter`) and passes each step's slice as `noise`.
"""

from __future__ import annotations

from collections.abc import Callable

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._types import Array, Bool, Float, Key
from ..ssm import StepInputs
from ._observed_log_prob import observed_log_likelihoods
from ._square_root import update


def normal_noise_shape(method: Callable, particle: Array) -> tuple[int, ...] | None:
    """The shape of z when every `method(x)` is a plain `distrax.Normal` (a draw is
    loc + scale z with z standard normal); None otherwise."""
    probe = jax.eval_shape(method, particle)
    if type(probe) is not distrax.Normal:
        return None
    return tuple(probe.batch_shape + probe.event_shape)


def sample_each(method: Callable, key: Key, particles: Array, noise: Array | None = None) -> Array:
    """One draw from `method(x)` for every particle x; with `noise` (standard normals of shape
    (N, *normal_noise_shape)) the draws are loc + scale * noise."""
    probe = jax.eval_shape(method, particles[0])
    if type(probe) is distrax.Normal:  # flat parameters: safe to batch by vmap
        dist = jax.vmap(method)(particles)
        if noise is not None:
            return dist.loc + dist.scale * noise
        return dist.sample(seed=key)
    if noise is not None:
        raise ValueError("pre-drawn noise needs a distrax.Normal; this is a bug in bayesssm.")
    keys = jax.random.split(key, particles.shape[0])
    return jax.vmap(lambda k, x: method(x).sample(seed=k))(keys, particles)


def log_prob_each(method: Callable, particles: Array, values: Array) -> Float[Array, " N"]:
    """log `method(x^i)`.log_prob(values^i) for every particle."""
    return jax.vmap(lambda x, v: method(x).log_prob(v))(particles, values)


def mean_each(method: Callable, particles: Array) -> Array:
    return jax.vmap(lambda x: method(x).mean())(particles)


def with_missing_as_nan(y: Float[Array, " M"], observed: Bool[Array, " M"]) -> Array:
    return jnp.where(observed, y, jnp.nan)


class Observation(eqx.Module):
    """One row of data with its step inputs: what a proposal conditions on."""

    y: Float[Array, " M"]  # missing entries hold 0
    observed: Bool[Array, " M"]
    step: StepInputs


def _log_likelihoods(model, particles: Array, obs: Observation) -> Float[Array, " N"]:
    return observed_log_likelihoods(
        lambda x: model.emission(x, obs.step), particles, obs.y, obs.observed
    )


def _check_event_shape(name: str, dist: distrax.Distribution, expected: tuple) -> None:
    if dist.event_shape != expected:
        raise ValueError(
            f"the {name} gives states of shape {dist.event_shape}, but the model's states have "
            f"shape {expected}; it must return a distribution over one state x_t."
        )


class Bootstrap(eqx.Module):
    """q = f: particles move by the model's transition; the weight is the likelihood."""

    def initial(self, model, key: Key, num: int, obs: Observation):
        particles = model.initial(obs.step).sample(seed=key, sample_shape=(num,))
        return particles, _log_likelihoods(model, particles, obs)

    def noise_shape(self, model, particle: Array, prev_step: StepInputs, obs: Observation):
        return normal_noise_shape(lambda x: model.transition(x, prev_step), particle)

    def move(
        self,
        model,
        key: Key,
        previous: Array,
        prev_step: StepInputs,
        obs: Observation,
        noise: Array | None = None,
    ):
        particles = sample_each(lambda x: model.transition(x, prev_step), key, previous, noise)
        return particles, _log_likelihoods(model, particles, obs)

    def look_ahead(self, model, previous: Array, prev_step: StepInputs, obs: Observation):
        """The likelihood at the transition's mean (Pitt and Shephard's choice)."""
        means = mean_each(lambda x: model.transition(x, prev_step), previous)
        return _log_likelihoods(model, means, obs)


class Guided(Bootstrap):
    """A user's proposal q(x_t | x_{t-1}, y_t): `fn(x_prev, y, inputs)` returns a distrax
    distribution over x_t, with NaN in y where an entry is missing; `initial_fn(y, inputs)`
    likewise for x_0 (default: the model's p(x_0), then weighted by the likelihood)."""

    fn: Callable
    initial_fn: Callable | None = None

    def initial(self, model, key: Key, num: int, obs: Observation):
        if self.initial_fn is None:
            return super().initial(model, key, num, obs)
        prior = model.initial(obs.step)
        q = self.initial_fn(with_missing_as_nan(obs.y, obs.observed), obs.step)
        _check_event_shape("initial proposal", q, prior.event_shape)
        particles = q.sample(seed=key, sample_shape=(num,))
        log_ratio = prior.log_prob(particles) - q.log_prob(particles)
        return particles, _log_likelihoods(model, particles, obs) + log_ratio

    def _q(self, obs: Observation) -> Callable:
        y = with_missing_as_nan(obs.y, obs.observed)
        return lambda x: self.fn(x, y, obs.step)

    def noise_shape(self, model, particle: Array, prev_step: StepInputs, obs: Observation):
        return normal_noise_shape(self._q(obs), particle)

    def move(
        self,
        model,
        key: Key,
        previous: Array,
        prev_step: StepInputs,
        obs: Observation,
        noise: Array | None = None,
    ):
        q = self._q(obs)

        def f(x):
            return model.transition(x, prev_step)

        expected = jax.eval_shape(f, previous[0]).event_shape
        _check_event_shape("proposal", jax.eval_shape(q, previous[0]), expected)
        particles = sample_each(q, key, previous, noise)
        log_ratio = log_prob_each(f, previous, particles) - log_prob_each(q, previous, particles)
        return particles, _log_likelihoods(model, particles, obs) + log_ratio


def _gaussian_factor(dist: distrax.Distribution) -> tuple[Array, Array]:
    """(mean, lower factor of the covariance) of a Gaussian distrax distribution, as vectors."""
    if isinstance(dist, distrax.Normal) and dist.event_shape == ():
        return dist.loc.reshape(1), dist.scale.reshape(1, 1)
    if isinstance(dist, distrax.MultivariateNormalTri):
        return dist.loc, dist.scale_tri
    if isinstance(dist, distrax.MultivariateNormalDiag):
        return dist.loc, jnp.diag(dist.scale_diag)
    if hasattr(dist, "covariance") and isinstance(dist, distrax.MultivariateNormalLinearOperator):
        return dist.loc, jnp.linalg.cholesky(dist.covariance())
    raise TypeError(
        f"the locally optimal proposal needs Gaussian transitions (distrax Normal or a "
        f"multivariate normal), but the model's transition is a {type(dist).__name__}; use "
        "proposal='bootstrap' or pass your own proposal function."
    )


class LocallyOptimal(eqx.Module):
    r"""q = p(x_t | x_{t-1}, y_t) for Gaussian transitions and a linear-Gaussian emission
    (`emission_params(inputs) -> (H, d, chol R)`): a Kalman update per particle. The weight is
    $p(y_t \mid x_{t-1})$, the same for any draw of x_t."""

    def _condition(self, model, prior: distrax.Distribution, obs: Observation):
        mean, chol = _gaussian_factor(prior)
        H, d, chol_R = model.emission_params(obs.step)
        up = update(mean, chol, H, d, chol_R, obs.y, obs.observed)
        return up.mean, up.chol, up.log_likelihood

    def _draw(self, key: Key, means: Array, chols: Array, shape: tuple, noise=None) -> Array:
        if noise is None:
            noise = jax.random.normal(key, means.shape, means.dtype)
        noise = noise.reshape(means.shape)
        return (means + jnp.einsum("nij,nj->ni", chols, noise)).reshape((-1, *shape))

    def initial(self, model, key: Key, num: int, obs: Observation):
        prior = model.initial(obs.step)
        mean, chol, log_pred = self._condition(model, prior, obs)
        means = jnp.broadcast_to(mean, (num, *mean.shape))
        chols = jnp.broadcast_to(chol, (num, *chol.shape))
        return self._draw(key, means, chols, prior.event_shape), jnp.full(num, log_pred)

    def _posteriors(self, model, previous: Array, prev_step: StepInputs, obs: Observation):
        def one(x):
            return self._condition(model, model.transition(x, prev_step), obs)

        return jax.vmap(one)(previous)

    def noise_shape(self, model, particle: Array, prev_step: StepInputs, obs: Observation):
        return (particle.size,)

    def move(
        self,
        model,
        key: Key,
        previous: Array,
        prev_step: StepInputs,
        obs: Observation,
        noise: Array | None = None,
    ):
        means, chols, log_pred = self._posteriors(model, previous, prev_step, obs)
        return self._draw(key, means, chols, previous.shape[1:], noise), log_pred

    def look_ahead(self, model, previous: Array, prev_step: StepInputs, obs: Observation):
        """The exact predictive p(y_t | x_{t-1}): a fully adapted auxiliary filter."""
        return self._posteriors(model, previous, prev_step, obs)[2]


class LookAhead(eqx.Module):
    """A user's first-stage weight for the auxiliary filter: `fn(x_prev, y, inputs)` returns an
    estimate of log p(y_t | x_{t-1} = x_prev) (NaN in y where an entry is missing)."""

    fn: Callable

    def __call__(self, model, previous: Array, prev_step: StepInputs, obs: Observation):
        y = with_missing_as_nan(obs.y, obs.observed)
        return jax.vmap(lambda x: self.fn(x, y, obs.step))(previous)
