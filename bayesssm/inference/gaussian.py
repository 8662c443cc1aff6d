r"""Gaussian approximate engines for nonlinear models: extended / sigma-point Kalman filters and
smoothers, and iterated smoothers (Gauss-Newton and iterated posterior linearisation).

Both engines run on any `bs.AbstractSSM` whose distributions have a conditional mean and
covariance (see `bayesssm.inference._gaussian_moments`). Each step's transition and emission are
replaced by affine-Gaussian maps (`bayesssm.inference._linearization`) and the square-root
Kalman recursions of `bayesssm.inference._square_root` do the rest. States of any shape are
flattened: results have D = the state's size (1 for a scalar state).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._types import Array, Float, Key
from ..data import Observations
from ..ssm import (
    AbstractContinuousDiscreteSSM,
    AbstractLinearGaussianSSM,
    AbstractSSM,
    StepInputs,
    require_capability,
)
from ._gaussian_moments import UnsupportedDistributionError, distribution_moments
from ._kalman_sequential import sample_sequential, smooth_sequential
from ._linearization import (
    AbstractSigmaPointRule,
    Affine,
    Extended,
    check_rule,
    conditional_moments,
    linearize_emission,
    linearize_transition,
    sigma_points,
    sigma_points_are_factors,
    slr_affine,
    state_shape,
)
from ._sigma_point_filter import sigma_predict, sigma_update
from ._square_root import backward_kernel, predict, tria, update
from .kalman import Kalman
from .results import FilterResult, ForecastResult, SmootherResult


def _gram(chols: Float[Array, "... D D"]) -> Float[Array, "... D D"]:
    return chols @ jnp.swapaxes(chols, -1, -2)


def _initial_moments(model, step: StepInputs, dtype):
    mean, chol = distribution_moments(model.initial(step))
    return mean.astype(dtype), chol.astype(dtype)


def _observed_emission(affine: Affine, observed) -> Affine:
    """Zero the rows of missing entries, so that non-finite values there cannot leak."""
    keep = observed[:, None]
    chol = jnp.where(keep & observed[None, :], affine.chol, 0.0)
    return Affine(
        jnp.where(keep, affine.matrix, 0.0), jnp.where(observed, affine.offset, 0.0), chol
    )


def _check_emission_size(offset: Array, data: Observations, model) -> None:
    size, obs_dim = offset.shape[0], data.values.shape[1]
    if size != obs_dim:
        raise ValueError(
            f"{type(model).__name__}'s emission has {size} entries but y has {obs_dim} columns."
        )


# Models (by structure: pytree definition, array shapes and dtypes, other leaves) whose
# distributions have passed `_probe`. Probing traces the model's methods, which costs far more
# than a compiled filter run on a short series, so each structure is probed once.
_PROBED: dict = {}
_PROBED_MAX = 256


def _leaf_signature(leaf):
    if eqx.is_array(leaf):
        return ("array", tuple(leaf.shape), str(leaf.dtype))
    try:
        hash(leaf)
    except TypeError:
        return ("object", id(leaf))
    return leaf


def _probe(model, rule) -> None:
    """Raise UnsupportedDistributionError now (before tracing) if the model's distributions
    have no moments; anything else (a model that needs inputs, say) is left for the run."""
    leaves, treedef = jax.tree.flatten((model, rule))
    signature = (treedef, tuple(_leaf_signature(leaf) for leaf in leaves))
    try:
        if signature in _PROBED:
            return
    except TypeError:  # unhashable static fields: probe every time
        _probe_now(model, rule)
        return
    _probe_now(model, rule)
    if len(_PROBED) >= _PROBED_MAX:
        _PROBED.clear()
    _PROBED[signature] = True


def _probe_now(model, rule) -> None:
    step = StepInputs(index=jnp.asarray(0))

    def run():
        mean, chol = distribution_moments(model.initial(step))
        linearize_transition(Extended(), model, mean, chol, step)
        linearize_emission(Extended(), model, mean, chol, step)

    try:
        jax.eval_shape(run)
    except UnsupportedDistributionError:
        raise
    except Exception:  # noqa: BLE001 - only the moments question is answered here
        pass


class _Pass(NamedTuple):
    """A Gaussian filter pass and the transitions it linearized (T - 1 of them; None when
    not kept)."""

    filtered: FilterResult
    transitions: Affine | None


def _filter_pass(rule, model, data: Observations, keep_transitions: bool = True) -> _Pass:
    dtype = data.values.dtype
    first = data.step(0)
    m0, chol0 = _initial_moments(model, first, dtype)

    # Sigma-point rules with non-negative weights predict and update from the sigma points
    # directly (one QR each, `_sigma_point_filter`); the transition's regression is still
    # formed for the smoother (and dropped by XLA when only the filter is asked for).
    direct = isinstance(rule, AbstractSigmaPointRule) and sigma_points_are_factors(
        rule, m0.shape[0], dtype
    )
    shape = state_shape(model, first)

    def observe(mean, chol, step, y, observed):
        if direct:
            sp = sigma_points(rule, conditional_moments(model.emission, shape, step), mean, chol)
            _check_emission_size(sp.mean, data, model)
            return sigma_update(sp, mean, chol, y, observed)
        emission = linearize_emission(rule, model, mean, chol, step)
        _check_emission_size(emission.offset, data, model)
        return update(mean, chol, *_observed_emission(emission, observed), y, observed)

    up0 = observe(m0, chol0, first, data.values[0], data.observed[0])

    def step(carry, args):
        mean, chol = carry
        prev, here, y, observed = args
        if direct and not isinstance(model, AbstractContinuousDiscreteSSM):
            moments = conditional_moments(model.transition, shape, prev)
            sp = sigma_points(rule, moments, mean, chol)
            # XLA does not drop unused stacked outputs of a loop: form it only when kept
            transition = slr_affine(sp, mean, chol) if keep_transitions else None
            mean_pred, chol_pred = sigma_predict(sp)
        else:
            transition = linearize_transition(rule, model, mean, chol, prev)
            mean_pred, chol_pred = predict(mean, chol, *transition)
        up = observe(mean_pred, chol_pred, here, y, observed)
        out = (up.mean, up.chol, up.log_likelihood, mean_pred, chol_pred)
        return (up.mean, up.chol), (out, transition if keep_transitions else None)

    prev = jax.tree.map(lambda a: a[:-1], data.steps)
    here = jax.tree.map(lambda a: a[1:], data.steps)
    _, (rest, transitions) = jax.lax.scan(
        step, (up0.mean, up0.chol), (prev, here, data.values[1:], data.observed[1:])
    )
    head = (up0.mean, up0.chol, up0.log_likelihood, m0, chol0)
    means, chols, lls, pred_means, pred_chols = (
        jnp.concatenate([h[None], r]) for h, r in zip(head, rest, strict=True)
    )
    filtered = FilterResult(means, _gram(chols), chols, jnp.sum(lls), lls, pred_means, pred_chols)
    return _Pass(filtered, None if transitions is None else Affine(*transitions))


def _kernels(filtered: FilterResult, transitions: Affine):
    return jax.vmap(backward_kernel)(filtered.means[:-1], filtered.chols[:-1], *transitions)


def _rts(filtered: FilterResult, transitions: Affine) -> SmootherResult:
    kernels = _kernels(filtered, transitions)
    means, chols = smooth_sequential(kernels, filtered.means[-1], filtered.chols[-1])
    return SmootherResult(means, _gram(chols), chols, filtered.log_marginal, filtered)


def _observation_forecast(rule, model, data, means, chols, num_steps: int) -> ForecastResult:
    steps = jax.tree.map(lambda a: a[-num_steps:], data.steps)

    def observe(mean, chol, step):
        H, d, chol_R = linearize_emission(rule, model, mean, chol, step)
        return H @ mean + d, tria(jnp.concatenate([H @ chol, chol_R], axis=1))

    obs_means, obs_chols = jax.vmap(observe)(means, chols, steps)
    return ForecastResult(means, _gram(chols), obs_means, _gram(obs_chols))


def _check_engine(engine, model, owner: str) -> None:
    require_capability(model, AbstractSSM, owner)
    check_rule(engine.linearization, owner)
    _probe(model, engine.linearization)


class GaussianFilter(eqx.Module):
    r"""Extended and sigma-point Kalman filters and Rauch-Tung-Striebel smoothers.

    Runs on any `bs.AbstractSSM` whose transition and emission distributions have a
    conditional mean and covariance: Gaussian ones (distrax `Normal`,
    `MultivariateNormal{Tri,Diag,FullCovariance}`, `Independent` of `Normal`) and, by
    statistical linear regression on their mean and variance, non-Gaussian emissions
    (`bs.distributions.Poisson`, distrax `Bernoulli`, Student-t). At each step the transition is
    linearized at the filtering distribution $N(m_{t-1}, P_{t-1})$ and the emission at the
    predicted one $N(m_t^-, P_t^-)$, by `linearization`:

    $$x_t \approx A_t x_{t-1} + b_t + w_t,\ w_t \sim N(0, Q_t),\qquad
      y_t \approx H_t x_t + d_t + v_t,\ v_t \sim N(0, R_t),$$

    and the square-root Kalman predict and update follow. With `bs.Extended()` this is the
    extended Kalman filter; with `bs.Unscented()`, `bs.Cubature()` or `bs.GaussHermite(order)`
    the unscented, cubature or Gauss-Hermite Kalman filter. `bs.smooth` runs the RTS smoother
    with the transitions linearized in the filter pass (the extended / unscented RTS smoother),
    `bs.sample_posterior` samples that linearized model backwards, and `bs.log_marginal` gives
    the approximate log-likelihood $\sum_t \log N(y_t; H_t m_t^- + d_t, H_t P_t^- H_t^\top + R_t)$,
    which is differentiable (so `bs.fit_mle(..., engine=bs.GaussianFilter(...))` works). On a
    linear-Gaussian model every rule is exact and equals `bs.Kalman`.

    States of shape () are treated as D = 1: results are always flattened to (T, D).

    Args:
        linearization: `bs.Extended()` (default), `bs.Unscented(...)`, `bs.Cubature()` or
            `bs.GaussHermite(order)`.

    References:
        Jazwinski, A. H. (1970). Stochastic Processes and Filtering Theory. Academic Press.
        Julier, S. J. and Uhlmann, J. K. (2004). Unscented filtering and nonlinear estimation.
        Proceedings of the IEEE 92(3).
        Särkkä, S. (2008). Unscented Rauch-Tung-Striebel smoother. IEEE Transactions on
        Automatic Control 53(3).
        Arasaratnam, I. and Haykin, S. (2009). Cubature Kalman filters. IEEE Transactions on
        Automatic Control 54(6).
        Särkkä, S. and Svensson, L. (2023). Bayesian Filtering and Smoothing, 2nd ed. Cambridge
        University Press.
    """

    linearization: eqx.Module = eqx.field(default_factory=Extended)

    is_random = False

    def __check_init__(self):
        check_rule(self.linearization, "GaussianFilter")

    def check(self, model) -> None:
        _check_engine(self, model, "bs.GaussianFilter")

    def _pass(self, model, data: Observations) -> _Pass:
        return _filter_pass(self.linearization, model, data)

    def filter(self, model, data: Observations, key: Key | None = None) -> FilterResult:
        return _filter_pass(self.linearization, model, data, keep_transitions=False).filtered

    def smooth(self, model, data: Observations, key: Key | None = None) -> SmootherResult:
        run = self._pass(model, data)
        return _rts(run.filtered, run.transitions)

    def log_marginal(self, model, data: Observations, key: Key | None = None) -> Float[Array, ""]:
        return self.filter(model, data).log_marginal

    def sample_posterior(
        self, model, data: Observations, key: Key, num_samples: int = 1
    ) -> Float[Array, "S T D"]:
        run = self._pass(model, data)
        kernels = _kernels(run.filtered, run.transitions)
        last_mean, last_chol = run.filtered.means[-1], run.filtered.chols[-1]
        return sample_sequential(key, kernels, last_mean, last_chol, num_samples)

    def forecast(
        self, model, data: Observations, key: Key | None, num_steps: int
    ) -> ForecastResult:
        """`data` ends with `num_steps` unobserved steps; their filter is the forecast."""
        filtered = self.filter(model, data)
        means, chols = filtered.means[-num_steps:], filtered.chols[-num_steps:]
        return _observation_forecast(self.linearization, model, data, means, chols, num_steps)


class _LinearizedParams(NamedTuple):
    """An affine-Gaussian time-varying model: arrays with a leading T axis."""

    m0: Float[Array, " D"]
    chol0: Float[Array, "D D"]
    A: Float[Array, "T D D"]
    b: Float[Array, "T D"]
    chol_Q: Float[Array, "T D D"]
    H: Float[Array, "T M D"]
    d: Float[Array, "T M"]
    chol_R: Float[Array, "T M M"]


class _LinearizedSSM(AbstractLinearGaussianSSM):
    """The model linearized at every step, indexed by `inputs.index`."""

    params: _LinearizedParams

    def initial_params(self, inputs: StepInputs):
        return self.params.m0, self.params.chol0

    def transition_params(self, inputs: StepInputs):
        t = inputs.index
        return self.params.A[t], self.params.b[t], self.params.chol_Q[t]

    def emission_params(self, inputs: StepInputs):
        t = inputs.index
        return self.params.H[t], self.params.d[t], self.params.chol_R[t]


def _linearize_all(rule, model, data: Observations, m0, chol0, means, chols) -> _LinearizedParams:
    """Every step's transition and emission linearized at the marginals N(means[t], chols[t])."""

    def one(mean, chol, step, observed):
        A, b, chol_Q = linearize_transition(rule, model, mean, chol, step)
        emission = linearize_emission(rule, model, mean, chol, step)
        _check_emission_size(emission.offset, data, model)
        H, d, chol_R = _observed_emission(emission, observed)
        return A, b, chol_Q, H, d, chol_R

    return _LinearizedParams(m0, chol0, *jax.vmap(one)(means, chols, data.steps, data.observed))


_INITIALIZATIONS = ("filter", "prior")


class IteratedSmoother(eqx.Module):
    r"""Iterated extended smoother (Gauss-Newton) and iterated posterior linearisation.

    Each iteration linearizes every step of the model at the current smoothing marginals
    $N(m_t^{(k)}, P_t^{(k)})$ (the transition out of $x_t$ and the emission of $y_t$ both at
    $x_t$'s marginal), which gives a time-varying affine-Gaussian model, and smooths that model
    exactly with `bs.Kalman` (square-root; sequential, or parallel in time by associative scans):

    $$p(x_{t+1} \mid x_t) \approx N(A_t^{(k)} x_t + b_t^{(k)}, Q_t^{(k)}),\quad
      p(y_t \mid x_t) \approx N(H_t^{(k)} x_t + d_t^{(k)}, R_t^{(k)}),\quad
      N(m_t^{(k+1)}, P_t^{(k+1)}) = p^{(k)}(x_t \mid y_{0:T-1}).$$

    With `bs.Extended()` the means are the Gauss-Newton iterates for the MAP path (the iterated
    extended Kalman smoother); with a sigma-point rule it is iterated posterior linearisation
    (IPLS), whose linearizations use the whole marginal (statistical linear regression).

    The iterations start from one `bs.GaussianFilter` + RTS pass with the same rule
    (`initialization="filter"`, sequential), or from the initial distribution $p(x_0)$'s
    moments at every step (`"prior"`, fully parallel in time); the parallel and sequential
    modes start from the same point and differ only by rounding. The iterations are a
    `lax.scan`, `num_iterations` long (no convergence test, so everything stays
    differentiable). `bs.filter` gives the last linearized model's filter, `bs.smooth` its
    smoother, `bs.log_marginal` its log-likelihood, and `bs.sample_posterior` samples it.

    Args:
        linearization: `bs.Extended()` (default), `bs.Unscented(...)`, `bs.Cubature()` or
            `bs.GaussHermite(order)`.
        num_iterations: relinearizations after the start (at least 1).
        parallel: None (sequential on CPU, parallel on GPU/TPU), True or False: how the
            Kalman smoother of each linearized model runs.
        initialization: "filter" (default) or "prior", see above.

    References:
        Bell, B. M. (1994). The iterated Kalman smoother as a Gauss-Newton method. SIAM Journal
        on Optimization 4(3).
        García-Fernández, Á. F., Svensson, L., Morelande, M. R. and Särkkä, S. (2017). Posterior
        linearization filter: principles and implementation using sigma points / Iterated
        posterior linearization smoother. IEEE Transactions on Automatic Control 62(10).
        Yaghoobi, F., Corenflos, A., Hassan, S. and Särkkä, S. (2021). Parallel iterated
        extended and sigma-point Kalman smoothers. ICASSP 2021.
        Yaghoobi, F., Corenflos, A., Hassan, S. and Särkkä, S. (2022). Parallel square-root
        statistical linear regression for inference in nonlinear state space models.
        arXiv:2207.00426.
    """

    linearization: eqx.Module = eqx.field(default_factory=Extended)
    num_iterations: int = 10
    parallel: bool | None = None
    initialization: str = "filter"

    is_random = False

    def __check_init__(self):
        self._validate()

    def _validate(self) -> None:
        check_rule(self.linearization, "IteratedSmoother")
        num = self.num_iterations
        if isinstance(num, bool) or not isinstance(num, int | np.integer) or num < 1:
            raise ValueError(
                f"IteratedSmoother(num_iterations=...) must be a positive int, got {num!r}."
            )
        if self.parallel not in (None, True, False):
            raise ValueError(
                f"IteratedSmoother(parallel=...) must be None, True or False, got "
                f"{self.parallel!r}."
            )
        if self.initialization not in _INITIALIZATIONS:
            raise ValueError(
                f"IteratedSmoother(initialization=...) must be one of {_INITIALIZATIONS}, got "
                f"{self.initialization!r}."
            )

    def check(self, model) -> None:
        self._validate()
        _check_engine(self, model, "bs.IteratedSmoother")

    def _kalman(self) -> Kalman:
        return Kalman(parallel=self.parallel, steady_state=False, gradient="autodiff")

    def _start(self, model, data: Observations):
        """The marginals of the first linearization."""
        rule = self.linearization
        if self.initialization == "filter":
            run = _filter_pass(rule, model, data)
            smoothed = _rts(run.filtered, run.transitions)
            return smoothed.means, smoothed.chols
        m0, chol0 = _initial_moments(model, data.step(0), data.values.dtype)
        T = data.num_timesteps
        return jnp.broadcast_to(m0, (T,) + m0.shape), jnp.broadcast_to(chol0, (T,) + chol0.shape)

    def _run(self, model, data: Observations) -> tuple[_LinearizedSSM, SmootherResult]:
        """The last linearized model and its smoother."""
        rule = self.linearization
        m0, chol0 = _initial_moments(model, data.step(0), data.values.dtype)
        kalman = self._kalman()

        def iterate(means, chols):
            params = _linearize_all(rule, model, data, m0, chol0, means, chols)
            return params, kalman.smooth(_LinearizedSSM(params), data)

        def body(carry, _):
            means, chols, _ = carry
            params, smoothed = iterate(means, chols)
            return (smoothed.means, smoothed.chols, (params, smoothed)), None

        # One scan over all iterations, the last one's model and smoother carried along (so
        # the Kalman smoother is compiled once); the carry starts as zeros of their shapes.
        means, chols = self._start(model, data)
        shapes = jax.eval_shape(iterate, means, chols)
        empty = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        (_, _, (params, smoothed)), _ = jax.lax.scan(
            body, (means, chols, empty), None, length=self.num_iterations
        )
        return _LinearizedSSM(params), smoothed

    def filter(self, model, data: Observations, key: Key | None = None) -> FilterResult:
        return self._run(model, data)[1].filtered

    def smooth(self, model, data: Observations, key: Key | None = None) -> SmootherResult:
        return self._run(model, data)[1]

    def log_marginal(self, model, data: Observations, key: Key | None = None) -> Float[Array, ""]:
        return self._run(model, data)[1].log_marginal

    def sample_posterior(
        self, model, data: Observations, key: Key, num_samples: int = 1
    ) -> Float[Array, "S T D"]:
        linearized, _ = self._run(model, data)
        return self._kalman().sample_posterior(linearized, data, key, num_samples)

    def forecast(
        self, model, data: Observations, key: Key | None, num_steps: int
    ) -> ForecastResult:
        """`data` ends with `num_steps` unobserved steps: the last linearized model's filter
        there, with the observations' moments by `linearization` at each forecast state."""
        filtered = self.filter(model, data)
        means, chols = filtered.means[-num_steps:], filtered.chols[-num_steps:]
        return _observation_forecast(self.linearization, model, data, means, chols, num_steps)
