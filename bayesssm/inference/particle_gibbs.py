r"""Particle Gibbs: a Markov chain over whole latent paths, moved by conditional SMC.

`bs.particle_gibbs` draws paths from $p(x_{0:T-1} \mid y)$; `bs.paris_particle_gibbs` estimates
the smoothed expectation of an additive functional $\sum_t h_t$ with the PaRIS particle Gibbs
sampler (a PaRIS pass on every conditional SMC sweep, averaged over the sweeps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_positive_int, is_concrete
from .._jit import filter_jit
from .._types import Array, Float, Key
from ..data import TimeSeries, check_observations, model_dtype, observations
from ..ssm import AbstractSSM
from ._csmc import particle_gibbs_step
from ._ppg import ppg_sweep
from .smc import ParticleFilter

METHODS = ("ancestor", "backward")


class ParticleGibbsResult(NamedTuple):
    """Draws of the particle Gibbs chain after warm-up.

    Attributes:
        paths: (S, T, *E) the chain's paths, one per iteration, E the state's event shape.
        update_rate: (T,) fraction of the S iterations in which $x_t$ changed: how well the
            chain mixes at each step (near 1 everywhere with ancestor or backward sampling and
            enough particles; with plain tracing it falls towards t = 0).
    """

    paths: Float[Array, "S T *E"]
    update_rate: Float[Array, " T"]


class PPGResult(NamedTuple):
    """The PaRIS particle Gibbs estimate of $E[\\sum_t h_t \\mid y]$.

    Attributes:
        estimate: the average of the per-sweep estimates after burn-in (the functional's
            pytree structure).
        estimates: the per-sweep estimates, with a leading axis of length `num_samples`.
        path: (T, *E) the reference path after the last sweep (to continue the chain).
    """

    estimate: object
    estimates: object
    path: Float[Array, " T *E"]


def _check_counts(num_samples, num_warmup, num_particles) -> None:
    check_positive_int("num_samples", num_samples)
    if isinstance(num_warmup, bool) or not isinstance(num_warmup, int | np.integer):
        raise ValueError(f"num_warmup must be a non-negative int, got {num_warmup!r}.")
    if num_warmup < 0:
        raise ValueError(f"num_warmup must be a non-negative int, got {num_warmup!r}.")
    bad = isinstance(num_particles, bool) or not isinstance(num_particles, int | np.integer)
    if bad or num_particles < 2:
        raise ValueError(
            f"num_particles must be an int of at least 2 (conditional SMC keeps one particle "
            f"for the reference path), got {num_particles!r}."
        )


def check_setup(model, y, key, inputs, initial_path, num_samples, num_warmup, num_particles):
    """Checks shared by the particle Gibbs entry points, in Python; returns checked (y, inputs)."""
    if not isinstance(model, AbstractSSM):
        raise TypeError(f"model must be a bs.AbstractSSM, got {type(model).__name__}.")
    if key is None:
        raise ValueError("particle Gibbs is random: pass key=jax.random.key(...).")
    _check_counts(num_samples, num_warmup, num_particles)
    y, inputs = check_observations(model, y, inputs)
    if initial_path is not None:
        _check_path(model, y, inputs, initial_path)
    return y, inputs


def _check_path(model, y, inputs, path) -> None:
    num_timesteps = y.num_timesteps if isinstance(y, TimeSeries) else np.shape(y)[0]

    def draw():
        data = observations(y, inputs, 0, model_dtype(model))
        return model.initial(data.step(0)).sample(seed=jax.random.key(0))

    event_shape = tuple(jax.eval_shape(draw).shape)
    expected = (num_timesteps, *event_shape)
    if tuple(np.shape(path)) != expected:
        raise ValueError(
            f"initial_path must have shape (T, *E) = {expected} (T time steps of the data, E the "
            f"state's event shape), got {tuple(np.shape(path))}."
        )
    if is_concrete(path) and not np.all(np.isfinite(np.asarray(path))):
        raise ValueError("initial_path has non-finite entries.")


def starting_path(model, data, key, initial_path, num_particles):
    """The given path, or the genealogy path of one plain particle filter."""
    if initial_path is not None:
        return jnp.asarray(initial_path, data.values.dtype)
    pf = ParticleFilter(num_particles, smoother="genealogy")
    return pf.sample_posterior(model, data, key, 1)[0]


def particle_gibbs(
    model: AbstractSSM,
    y,
    *,
    key: Key,
    num_samples: int,
    num_particles: int = 50,
    method: str = "ancestor",
    initial_path=None,
    num_warmup: int = 0,
    inputs=None,
) -> ParticleGibbsResult:
    r"""Draw latent paths from $p(x_{0:T-1} \mid y)$ by particle Gibbs.

    Each iteration runs a conditional bootstrap particle filter (multinomial resampling at every
    step) that keeps the current path as its reference particle, then draws the next path from
    the particle system. The chain leaves the smoothing distribution invariant for any number
    of particles; a few dozen usually mix well with either method. Several chains: `jax.vmap`
    over keys.

    Args:
        model: any `bs.AbstractSSM` (only `initial`, `transition`, `emission` are used).
        y: observations (T, M), or (T,); NaN marks a missing entry or row.
        key: PRNG key.
        num_samples: S, the paths kept after warm-up.
        num_particles: N, at least 2 (one is the reference).
        method: "ancestor": ancestor sampling, the reference's ancestor at step t drawn with
            probability $\propto W_{t-1}^j f(x^*_t \mid x_{t-1}^j)$, then the ancestry of a
            final particle; "backward": backward simulation through the conditional filter's
            particles.
        initial_path: (T, *E) the chain's start; default the ancestry path of one draw from a
            plain particle filter with `num_particles` particles.
        num_warmup: iterations run before the S kept ones.
        inputs: control inputs (T, U).

    Returns:
        A `ParticleGibbsResult`: `paths` (S, T, *E) and `update_rate` (T,).

    References:
        Andrieu, C., Doucet, A. and Holenstein, R. (2010). Particle Markov chain Monte Carlo
        methods. JRSS B 72(3).
        Whiteley, N. (2010). Discussion of "Particle Markov chain Monte Carlo methods". JRSS B.
        Lindsten, F., Jordan, M. I. and Schön, T. B. (2014). Particle Gibbs with ancestor
        sampling. JMLR 15.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    y, inputs = check_setup(
        model, y, key, inputs, initial_path, num_samples, num_warmup, num_particles
    )
    return _run_particle_gibbs(
        model, (y, inputs), key, initial_path, int(num_particles), method, num_samples, num_warmup
    )


@filter_jit
def _run_particle_gibbs(model, raw, key, initial_path, num_particles, method, num, num_warmup):
    y, inputs = raw
    data = observations(y, inputs, 0, model_dtype(model))
    key_start, key_chain = jax.random.split(key)
    path = starting_path(model, data, key_start, initial_path, num_particles)

    def iterate(path, key):
        new = particle_gibbs_step(model, data, key, path, num_particles, method)
        changed = jnp.any((new != path).reshape(new.shape[0], -1), axis=1)
        return new, (new, changed)

    keys = jax.random.split(key_chain, num_warmup + num)
    if num_warmup:
        path = jax.lax.scan(lambda p, k: (iterate(p, k)[0], None), path, keys[:num_warmup])[0]
    _, (paths, changed) = jax.lax.scan(iterate, path, keys[num_warmup:])
    return ParticleGibbsResult(paths, jnp.mean(changed.astype(paths.dtype), axis=0))


def paris_particle_gibbs(
    model: AbstractSSM,
    y,
    functional: Callable,
    *,
    key: Key,
    num_samples: int,
    num_particles: int = 50,
    num_backward: int = 2,
    initial_functional: Callable | None = None,
    initial_path=None,
    num_warmup: int = 0,
    inputs=None,
) -> PPGResult:
    r"""Estimate $E[\sum_{t=0}^{T-1} h_t \mid y]$ with the PaRIS particle Gibbs (PPG) sampler.

    Each sweep is a conditional bootstrap particle filter with the current path as reference.
    Every particle (the reference's too) carries a PaRIS statistic $\tau_t^i$: at each step
    `num_backward` = K predecessors $J^{i,k}$ are drawn from the backward kernel
    $\propto W_{t-1}^j f(x_t^i \mid x_{t-1}^j)$ and
    $\tau_t^i = K^{-1} \sum_k [\tau_{t-1}^{J^{i,k}} + h_t(x_{t-1}^{J^{i,k}}, x_t^i)]$. The
    sweep's estimate is $\sum_i W_{T-1}^i \tau_{T-1}^i$; the next reference follows a final
    particle drawn by weight back through uniformly chosen backward indices (a backward-sampling
    draw). Averaging the sweeps after `num_warmup` reduces the bias of a single PaRIS pass, which
    vanishes as the chain reaches stationarity.

    Args:
        model: any `bs.AbstractSSM`.
        y: observations (T, M) or (T,), NaN for missing entries.
        functional: `h(x_prev, x, t)` for t = 1..T-1, a pytree of arrays (the same structure
            at every t); `t` is a traced integer, so index data with it.
        key: PRNG key.
        num_samples: sweeps averaged after warm-up.
        num_particles: N, at least 2.
        num_backward: K, backward draws per particle and step (K = 2 is the usual choice).
        initial_functional: `h_0(x_0)` (same structure); default zero.
        initial_path: (T, *E) start of the chain; default a plain particle filter's path.
        num_warmup: sweeps run (and discarded) first.
        inputs: control inputs (T, U).

    Returns:
        A `PPGResult` with `estimate`, the per-sweep `estimates` and the final `path`.

    References:
        Olsson, J. and Westerborn, J. (2017). Efficient particle-based online smoothing in
        general hidden Markov models: the PaRIS algorithm. Bernoulli 23(3).
        Cardoso, G., Janati El Idrissi, Y., Le Corff, S., Moulines, E. and Olsson, J. (2023).
        State and parameter learning with PaRIS particle Gibbs. ICML 2023.
    """
    if not callable(functional):
        raise TypeError("functional must be a function h(x_prev, x, t) returning a pytree.")
    if initial_functional is not None and not callable(initial_functional):
        raise TypeError("initial_functional must be a function h0(x0) or None.")
    check_positive_int("num_backward", num_backward)
    y, inputs = check_setup(
        model, y, key, inputs, initial_path, num_samples, num_warmup, num_particles
    )
    return _run_ppg(
        model,
        (y, inputs),
        key,
        functional,
        initial_functional,
        initial_path,
        int(num_particles),
        int(num_backward),
        num_samples,
        num_warmup,
    )


@filter_jit
def _run_ppg(model, raw, key, h, h0, initial_path, num_particles, num_backward, num, num_warmup):
    y, inputs = raw
    data = observations(y, inputs, 0, model_dtype(model))
    key_start, key_chain = jax.random.split(key)
    path = starting_path(model, data, key_start, initial_path, num_particles)

    def iterate(path, key):
        estimate, new = ppg_sweep(model, data, key, path, num_particles, num_backward, h, h0)
        return new, estimate

    keys = jax.random.split(key_chain, num_warmup + num)
    if num_warmup:
        path = jax.lax.scan(lambda p, k: (iterate(p, k)[0], None), path, keys[:num_warmup])[0]
    path, estimates = jax.lax.scan(iterate, path, keys[num_warmup:])
    estimate = jax.tree.map(lambda e: jnp.mean(e, axis=0), estimates)
    return PPGResult(estimate, estimates, path)
