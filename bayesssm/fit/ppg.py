r"""Stochastic-approximation maximum likelihood with PaRIS particle Gibbs (PPG) or Markov score
climbing (MSC).

Fisher's identity writes the score as a smoothed additive functional,
$$\nabla_\theta \log p_\theta(y) = E_\theta\Big[\nabla_\theta \log p_\theta(x_0)
    + \sum_{t \ge 1} \nabla_\theta \log f_\theta(x_t \mid x_{t-1})
    + \sum_t \nabla_\theta \log g_\theta(y_t \mid x_t) \,\Big|\, y\Big].$$
Every step estimates it by one sweep of a Markov chain over latent paths that moves along with
$\theta$, and takes an optimiser step uphill: with "mle" the sweep is a PPG pass whose PaRIS
statistics carry the per-step gradients (the bias-reduced PPG estimate); with "msc" it is one
particle Gibbs move and the gradient of the complete-data log-density along the new path.
Step sizes decrease (Robbins-Monro) and the returned parameters are the average of the
iterates over the last part of the run (Polyak-Ruppert).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .._checks import check_positive_int
from .._jit import filter_jit
from .._types import Array, Float, Key
from ..data import model_dtype, observations
from ..inference._csmc import observation_rows, particle_gibbs_step
from ..inference._observed_log_prob import observed_log_likelihoods
from ..inference._ppg import ppg_sweep
from ..inference.particle_gibbs import METHODS, check_setup, starting_path
from ._selection import Selection

_FIT_METHODS = ("mle", "msc")


class PPGHistory(NamedTuple):
    """What happened during `bs.fit_ppg`.

    Attributes:
        values: one array per leaf of `where` (their natural, constrained values), each with a
            leading axis of length `num_steps`: the iterate after every step.
        score_norm: (num_steps,) largest absolute entry of the estimated score (with respect to
            the unconstrained arrays) divided by the number of observed entries.
        path: (T, *E) the chain's reference path after the last step.
        num_averaged: how many final iterates were averaged into the returned model.
    """

    values: tuple
    score_norm: Float[Array, " steps"]
    path: Float[Array, " T *E"]
    num_averaged: int


@functools.cache
def default_optimizer(step_size: float, decay: float) -> optax.GradientTransformation:
    r"""Adam with learning rate $\gamma_k = \gamma_0 (1 + k)^{-\alpha}$ (Robbins-Monro for
    $\alpha \in (1/2, 1]$); cached, so repeated fits reuse the compiled program."""
    return optax.adam(lambda k: step_size * (1.0 + k) ** (-decay))


def fit_ppg(
    model,
    y,
    *,
    where: Callable,
    key: Key,
    num_steps: int = 500,
    num_particles: int = 50,
    method: str = "mle",
    optimizer: optax.GradientTransformation | None = None,
    step_size: float = 0.2,
    decay: float = 0.6,
    num_backward: int = 2,
    sampler: str = "backward",
    average_fraction: float = 0.5,
    priors=None,
    initial_path=None,
    inputs=None,
):
    r"""Fit the leaves picked by `where` by stochastic-approximation maximum likelihood.

    Each step estimates the score $\nabla_\theta \log p_\theta(y)$ (Fisher's identity) along a
    particle Gibbs chain over latent paths, divides it by the number of observed entries (so
    step sizes do not depend on T) and hands its negative to the optax `optimizer`. Only the
    model's `initial`, `transition` and `emission` are used, so any `bs.AbstractSSM` can be
    fitted; constrained leaves (such as `bs.Covariance`) are moved in their unconstrained space.

    Args:
        model: the starting model.
        y: observations (T, M) or (T,), NaN for missing entries.
        where: the leaves to fit, as in `equinox.tree_at`: `lambda m: (m.Q, m.R)`.
        key: PRNG key.
        num_steps: optimiser steps, one sweep of the chain each.
        num_particles: N, particles of the conditional SMC (at least 2).
        method: "mle": the score by PaRIS particle Gibbs, K = `num_backward` backward draws per
            particle (bias-reduced, Rao-Blackwellised over the particles); "msc": Markov score
            climbing, the complete-data score along the chain's current path (one particle
            Gibbs move per step, `sampler` says which).
        optimizer: an optax transformation; default Adam with learning rate
            `step_size * (1 + k) ** -decay`.
        step_size: $\gamma_0$ of the default optimiser.
        decay: $\alpha$ of the default optimiser's schedule.
        num_backward: K for "mle".
        sampler: the particle Gibbs move for "msc": "backward" or "ancestor".
        average_fraction: the returned model averages the unconstrained arrays over this final
            fraction of the steps (Polyak-Ruppert); 0 returns the last iterate.
        priors: one distribution (or None) per leaf of `where`: adds the gradient of the log
            prior (MAP).
        initial_path: (T, *E) start of the chain; default a plain particle filter's path.
        inputs: control inputs (T, U).

    Returns:
        `(fitted_model, history)`: the averaged model and a `PPGHistory`.

    References:
        Cardoso, G., Janati El Idrissi, Y., Le Corff, S., Moulines, E. and Olsson, J. (2023).
        State and parameter learning with PaRIS particle Gibbs. ICML 2023.
        Naesseth, C. A., Lindsten, F. and Blei, D. (2020). Markovian score climbing: variational
        inference with KL(p||q). NeurIPS 2020.
        Polyak, B. T. and Juditsky, A. B. (1992). Acceleration of stochastic approximation by
        averaging. SIAM J. Control Optim. 30(4).
    """
    if method not in _FIT_METHODS:
        raise ValueError(f"method must be one of {_FIT_METHODS}, got {method!r}.")
    if sampler not in METHODS:
        raise ValueError(f"sampler must be one of {METHODS}, got {sampler!r}.")
    check_positive_int("num_steps", num_steps)
    check_positive_int("num_backward", num_backward)
    bad_fraction = isinstance(average_fraction, bool) or not isinstance(
        average_fraction, int | float
    )
    if bad_fraction or not 0.0 <= average_fraction < 1.0:
        raise ValueError(f"average_fraction must be in [0, 1), got {average_fraction!r}.")
    selection = Selection(model, where, priors)
    y, inputs = check_setup(model, y, key, inputs, initial_path, 1, 0, num_particles)
    bad = selection.non_finite(selection.params(model))
    if bad:
        raise ValueError(f"The starting values of {', '.join(bad)} are not finite.")
    if optimizer is None:
        optimizer = default_optimizer(float(step_size), float(decay))
    num_averaged = max(1, int(round(average_fraction * num_steps)))
    scale = jnp.asarray(max(np.sum(~np.isnan(np.asarray(_values_of(y), dtype=float))), 1))
    settings = _Settings(method, sampler, int(num_particles), int(num_backward))
    params, values, score_norm, path = _run(
        selection, settings, model, (y, inputs), key, initial_path, optimizer, num_steps,
        num_averaged, scale,
    )  # fmt: skip
    history = PPGHistory(values, score_norm, path, num_averaged)
    return selection.rebuild(model, params), history


def _values_of(y):
    return getattr(y, "values", y)


class _Settings(NamedTuple):
    method: str
    sampler: str
    num_particles: int
    num_backward: int


class _Score:
    """Per-step gradients of the complete-data log-density with respect to the flat vector of
    the fitted arrays, at a given flat vector."""

    def __init__(self, selection: Selection, model, data, flat, unravel):
        self.selection, self.model, self.data = selection, model, data
        self.rows = observation_rows(data)
        self.flat, self.unravel = flat, unravel

    def _model(self, flat):
        return self.selection.rebuild(self.model, self.unravel(flat))

    def _emission(self, model, x, t):
        row = jax.tree.map(lambda a: a[t], self.rows)
        return observed_log_likelihoods(
            lambda z: model.emission(z, row.step), x[None], row.y, row.observed
        )[0]

    def initial(self, x0):
        def log_density(flat):
            model = self._model(flat)
            return model.initial(self.data.step(0)).log_prob(x0) + self._emission(model, x0, 0)

        return jax.grad(log_density)(self.flat)

    def transition(self, x_prev, x, t):
        def log_density(flat):
            return self._model(flat).transition(x_prev, self.data.step(t - 1)).log_prob(x)

        return jax.grad(log_density)(self.flat)

    def emission(self, x, t):
        return jax.grad(lambda flat: self._emission(self._model(flat), x, t))(self.flat)

    def along(self, path):
        """The complete-data score along one path."""
        times = jnp.arange(1, path.shape[0])
        moves = jax.vmap(self.transition)(path[:-1], path[1:], times)
        emissions = jax.vmap(self.emission)(path[1:], times)
        return self.initial(path[0]) + jnp.sum(moves + emissions, axis=0)

    def log_prior(self):
        return jax.grad(lambda f: self.selection.log_prior(self.unravel(f)))(self.flat)


@filter_jit
def _run(selection, settings, model, raw, key, initial_path, optimizer, num_steps, num_avg, scale):
    y, inputs = raw
    data = observations(y, inputs, 0, model_dtype(model))
    dynamic, static = eqx.partition(selection.params(model), eqx.is_inexact_array)
    flat, unravel_dynamic = ravel_pytree(dynamic)

    def unravel(f):
        return eqx.combine(unravel_dynamic(f), static)

    key_start, key_chain = jax.random.split(key)
    path = starting_path(model, data, key_start, initial_path, settings.num_particles)

    def iterate(carry, key):
        flat, opt_state, path = carry
        score = _Score(selection, model, data, flat, unravel)
        if settings.method == "mle":
            total, new_path = ppg_sweep(
                score._model(flat),
                data,
                key,
                path,
                settings.num_particles,
                settings.num_backward,
                score.transition,
                score.initial,
                score.emission,
            )
        else:
            new_path = particle_gibbs_step(
                score._model(flat), data, key, path, settings.num_particles, settings.sampler
            )
            total = score.along(new_path)
        gradient = (total + score.log_prior()) / scale
        updates, opt_state = optimizer.update(-gradient, opt_state, flat)
        flat = optax.apply_updates(flat, updates)
        values = selection.values(unravel(flat))
        return (flat, opt_state, new_path), (flat, values, jnp.max(jnp.abs(gradient)))

    keys = jax.random.split(key_chain, num_steps)
    carry = (flat, optimizer.init(flat), path)
    (_, _, path), (flats, values, score_norm) = jax.lax.scan(iterate, carry, keys)
    averaged = jnp.mean(flats[num_steps - num_avg :], axis=0)
    return unravel(averaged), values, score_norm, path
