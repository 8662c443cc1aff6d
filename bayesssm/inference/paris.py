r"""`bs.paris`: online smoothed expectations of additive functionals by the PaRIS algorithm."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from .._checks import check_positive_int, is_concrete
from .._jit import filter_jit
from .._types import Key
from ..data import check_observations, model_dtype, observations
from ..ssm import AbstractSSM
from ._paris import BACKWARD_KERNELS, PaRISResult, run_paris
from .smc import ParticleFilter

__all__ = ["PaRISResult", "paris"]


@filter_jit
def _run(engine, model, raw, key, functional, initial, num_backward, backward):
    y, inputs = raw
    data = observations(y, inputs, 0, model_dtype(model))
    settings = engine._settings(False)
    return run_paris(model, data, key, settings, functional, initial, num_backward, backward)


def paris(
    model: AbstractSSM,
    y,
    functional: Callable,
    *,
    key: Key,
    engine: ParticleFilter | None = None,
    num_backward: int = 2,
    initial: Callable | None = None,
    backward: str = "rejection",
    inputs=None,
) -> PaRISResult:
    r"""Online particle estimates of $E[S_t \mid y_{0:t}]$ for an additive functional, every t.

    $S_t = h_0(x_0) + \sum_{s=1}^{t} h(x_{s-1}, x_s, s)$. The particle filter of `engine` runs
    with every particle carrying a running statistic, updated at each step from K draws of
    the backward kernel $\propto W_{t-1}^j f(x_t^i \mid x_{t-1}^j)$; cost O(N K) a step with
    rejection sampling and memory O(N) (no particle history), so long series and sufficient
    statistics for EM or score estimates (Fisher's identity) are cheap.

    Args:
        model: the state-space model.
        y: observations (T, M), or (T,) when M = 1; NaN marks a missing entry or row.
        functional: `h(x_prev, x, t)`, for one pair of states of the model's event shape and
            the step t = 1..T-1; returns an array or a pytree of arrays (any shapes). Define it
            once and reuse it: a new function object compiles anew.
        key: PRNG key.
        engine: a `bs.ParticleFilter` (its particles, resampling, proposal and auxiliary
            weights are used; its smoother settings are not); default `bs.ParticleFilter()`.
        num_backward: K, backward draws per particle and step; K = 1 is allowed but its
            estimates degenerate over time like the genealogy's, K >= 2 keeps them stable.
        initial: `h0(x_0)`, the term at step 0, with the same structure as `functional`'s
            value; default zero.
        backward: "rejection" (expected O(1) a draw, bound from the transition's mode, exact
            fallback after 64 trials) or "exact" (O(N) a draw); both draw from the same kernel.
        inputs: control inputs (T, U), for models with control matrices.

    Returns:
        A `PaRISResult`: `estimates` (leaves (T, ...), index t the estimate of
        $E[S_t \mid y_{0:t}]$; the last is the smoothed $E[S_{T-1} \mid y_{0:T-1}]$),
        `log_marginal`, `log_marginals`, `ess`, `degenerate_step`, filtering `means`, and the
        last step's `particles`, `log_weights` and per-particle `statistics`.

    References:
        Olsson, J. and Westerborn, J. (2017). Efficient particle-based online smoothing in
        general hidden Markov models: the PaRIS algorithm. Bernoulli 23(3).
    """
    engine = ParticleFilter() if engine is None else engine
    if not isinstance(engine, ParticleFilter):
        raise TypeError(f"bs.paris runs a bs.ParticleFilter engine, got {type(engine).__name__}.")
    if not isinstance(model, AbstractSSM):
        raise TypeError(f"model must be a bs.AbstractSSM, got {type(model).__name__}.")
    engine.check(model)
    if key is None:
        raise ValueError("bs.paris is random: pass key=jax.random.key(...).")
    if not callable(functional):
        raise TypeError(
            f"functional must be a function h(x_prev, x, t), got {type(functional).__name__}."
        )
    if initial is not None and not callable(initial):
        raise TypeError(f"initial must be a function h0(x0) or None, got {initial!r}.")
    check_positive_int("num_backward", num_backward)
    if backward not in BACKWARD_KERNELS:
        raise ValueError(f"backward must be one of {sorted(BACKWARD_KERNELS)}, got {backward!r}.")
    raw = check_observations(model, y, inputs)
    result = _run(engine, model, raw, key, functional, initial, int(num_backward), backward)
    step = result.degenerate_step
    if is_concrete(step) and np.ndim(step) == 0 and int(step) >= 0:
        warnings.warn(
            f"every particle weight was zero or NaN at step {int(step)}: log_marginal is -inf "
            "and the estimates after it restart from uniform weights.",
            RuntimeWarning,
            stacklevel=2,
        )
    return result
