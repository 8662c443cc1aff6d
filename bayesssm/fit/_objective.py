"""The log-likelihood (plus log prior) of the fitted leaves, shared by MLE, NUTS and VI.

Checks y once in Python, then builds the engine's differentiable log-likelihood as a function of
the fitted leaves. `y` may be one series (T, M) / (T,) or a batch (B, T, M), whose
log-likelihoods add up.

With no engine given, a linear-Gaussian model whose A, Q, H, R do not depend on t is fitted with
`Kalman(gradient="fisher")` when its P0, Q and R are well conditioned at the start: the same
log-likelihood, with the gradient from one steady-state smoothing pass (Fisher's identity) in
place of reverse mode through the filter's recursion, several times cheaper. Elsewhere (singular
or nearly singular covariances, time-varying models) the default engine's autodiff is used.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete
from .._types import Scalar
from ..data import TimeSeries, check_observations, model_dtype, observations
from ..inference.kalman import Kalman
from ..ssm import AbstractLinearGaussianSSM, AbstractSSM
from ..verbs import default_engine
from ._selection import Selection

# Fisher's identity divides by P0, Q and R: with a factor's smallest pivot below this fraction
# of its largest (condition number above 1e12), its gradient would lose more than about 4 of 16
# digits, and reverse mode through the square-root recursion is used instead.
_FISHER_MIN_PIVOT_RATIO = 1e-6


def series_at(y, index):
    """Series `index` (an int or an index array) of a batch: an array (B, T, M) or a stacked
    `TimeSeries`."""
    if isinstance(y, TimeSeries):
        return jax.tree.map(lambda a: a[index], y)
    return y[index]


def num_in_batch(y) -> int:
    return (y.times if isinstance(y, TimeSeries) else y).shape[0]


class Objective:
    """log p(y | fitted leaves) for one model, engine and data set."""

    def __init__(self, model, y, *, engine=None, inputs=None, batched: bool | None = None):
        if not isinstance(model, AbstractSSM):
            raise TypeError(f"model must be a bs.AbstractSSM, got {type(model).__name__}.")
        is_series = isinstance(y, TimeSeries)
        y = y if is_series or hasattr(y, "shape") else np.asarray(y)
        # a batch: values (B, T, M), or a TimeSeries from TimeSeries.stack (times (B, T))
        stacked = is_series and np.ndim(y.times) == 2
        if batched is None:
            batched = stacked or (not is_series and np.ndim(y) == 3)
        self.batched = batched
        self.engine = default_engine(model) if engine is None else engine
        self.engine.check(model)
        if self.batched:
            if not stacked and np.ndim(y) != 3:
                raise ValueError(
                    f"A batch of series must have shape (B, T, M) or be a bs.TimeSeries.stack of "
                    f"series; got {np.shape(y)}."
                )
            self.num_series = np.shape(y.times if stacked else y)[0]
            for b in range(self.num_series):
                check_observations(model, series_at(y, b), inputs)
        else:
            y, inputs = check_observations(model, y, inputs)
            self.num_series = 1
        self.y = y
        self.inputs = inputs
        observed = ~np.isnan(self.values())
        # Objectives are divided by this so that tolerances mean the same for any T.
        self.scale = float(max(observed.sum(), 1))
        self.dtype = model_dtype(model)
        if engine is None and _fisher_is_safe(
            model, series_at(y, 0) if self.batched else y, inputs
        ):
            self.engine = Kalman(gradient="fisher")

    def values(self) -> np.ndarray:
        """The observations as a NumPy array, (T, M) or (B, T, M), NaN where missing."""
        y = self.y.values if isinstance(self.y, TimeSeries) else self.y
        return np.asarray(y, dtype=float)

    def device_y(self):
        """The data as the compiled fits take them: an array in the model's dtype, or the
        `TimeSeries` itself (its times travel with it)."""
        if isinstance(self.y, TimeSeries):
            return self.y
        return jnp.asarray(self.y, self.dtype)

    # An Objective is a static argument of the compiled fits; the data are not part of it (they
    # are passed to every method), so fits of new data with the same settings compile once.
    def _key(self):
        return (
            self.engine,
            self.batched,
            self.dtype,
            None if self.inputs is None else id(self.inputs),
        )

    def __eq__(self, other) -> bool:
        return isinstance(other, Objective) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def series_log_marginal(self, model, y, key=None) -> Scalar:
        data = observations(y, self.inputs, 0, self.dtype)
        return self.engine.log_marginal(model, data, key)

    def log_likelihood(self, model, y, key=None) -> Scalar:
        """Total over the series in `y` (a batch when `self.batched`)."""
        if not self.batched:
            return self.series_log_marginal(model, y, key)
        keys = None if key is None else jax.random.split(key, num_in_batch(y))
        lls = jax.vmap(lambda y_b, k: self.series_log_marginal(model, y_b, k))(y, keys)
        return jnp.sum(lls)

    def log_likelihood_per_step(self, model, y, key=None):
        """(T,) for one series, (B, T) for a batch: for pointwise diagnostics (LOO)."""

        def one(y_b, k):
            data = observations(y_b, self.inputs, 0, self.dtype)
            return self.engine.filter(model, data, k).log_marginals

        if not self.batched:
            return one(y, key)
        keys = None if key is None else jax.random.split(key, num_in_batch(y))
        return jax.vmap(one)(y, keys)


def _fisher_is_safe(model, y, inputs) -> bool:
    """Whether `model` has time-invariant factors and well-conditioned P0, Q and R (checked on
    concrete values; under a transformation the answer is no)."""
    if not (isinstance(model, AbstractLinearGaussianSSM) and model.time_invariant_factors):
        return False
    if not all(is_concrete(leaf) for leaf in jax.tree.leaves(model)):
        return False
    for chol in _start_factors(model, y, inputs):
        if not is_concrete(chol):
            return False
        pivots = np.abs(np.diagonal(np.asarray(chol)))
        well_conditioned = pivots.min() > _FISHER_MIN_PIVOT_RATIO * pivots.max()
        if not (np.all(np.isfinite(pivots)) and well_conditioned):
            return False
    return True


@eqx.filter_jit
def _start_factors(model, y, inputs) -> tuple:
    """chol P0, chol Q_0 and chol R_0, as one compiled program."""
    step = observations(y, inputs, 0, model_dtype(model)).step(0)
    return (
        model.initial_params(step)[1],
        model.transition_params(step)[2],
        model.emission_params(step)[2],
    )


def log_posterior(
    objective: Objective, selection: Selection, model, params, y, key=None, jacobian=False
) -> Scalar:
    """log p(y | params) + log prior(values) (+ the log-Jacobian, for densities over the
    unconstrained arrays)."""
    fitted = selection.rebuild(model, params)
    total = objective.log_likelihood(fitted, y, key) + selection.log_prior(params)
    if jacobian:
        total = total + selection.log_abs_det_jacobian(params)
    return total
