"""The Kalman engine: exact inference for linear-Gaussian models, in square-root form."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._types import Array, Float, Key
from ..data import Observations
from ..ssm import AbstractLinearGaussianSSM, require_capability
from ._kalman_adjoint import adjoint_log_marginal
from ._kalman_parallel import filter_parallel, sample_parallel, smooth_parallel
from ._kalman_score import Moments, fisher_log_marginal
from ._kalman_sequential import filter_sequential, sample_sequential, smooth_sequential
from ._kalman_steady import steady_filter, with_plain_derivatives
from ._kalman_steady_smoother import steady_backward
from ._square_root import backward_kernel, tria
from .results import FilterResult, ForecastResult, SmootherResult

_GRADIENTS = (None, "autodiff", "adjoint", "fisher")


def _gram(chols: Float[Array, "T D D"]) -> Float[Array, "T D D"]:
    return chols @ jnp.swapaxes(chols, -1, -2)


class Kalman(eqx.Module):
    """Exact filtering, smoothing and path sampling for `bs.AbstractLinearGaussianSSM` models.

    Filtering, smoothing and sampling are in square-root (QR) form. `parallel=True` runs the
    associative-scan (parallel-in-time) algorithms, O(log T) span on GPU/TPU; `False` runs
    `lax.scan`; `None` picks sequential on CPU and parallel elsewhere.

    `steady_state=True` (the default) speeds up filtering of models whose A, Q, H, R do not depend
    on t: the data-free covariance recursion runs once, until it has converged to rounding and
    every later row is fully observed, and the data then flow through the stored gains (in
    parallel: an associative scan over affine maps). Smoothing and sampling likewise run the
    backward covariance recursion only where it changes. Results equal the full recursion's to a
    few ulps; derivatives are always those of the full recursion. `False` runs the full
    square-root recursion at every step.

    `gradient` says how `log_marginal` is computed and differentiated: "autodiff" through the
    square-root filter's recursion; "adjoint" by a covariance-form filter (no factorisation per
    step for scalar observations) differentiated by its adjoint (Bryson-Frazier) recursion, always
    sequential, the fastest on CPU for time-varying models such as GPs on irregular times (see
    `bayesssm.inference._kalman_adjoint`); "fisher" by Fisher's identity from one smoothing pass
    (exact to rounding, any order, forward or reverse; needs non-singular P0, Q and R; O(log T)
    span with `parallel=True`, see `bayesssm.inference._kalman_score`). None (the default) picks
    "adjoint" on the sequential path for models whose factors change with t (or with
    `steady_state=False`), "autodiff" otherwise. Filtering, smoothing and sampling are
    square-root whatever this says.

    References:
        Särkkä, S. and García-Fernández, Á. F. (2021). Temporal parallelization of Bayesian
        smoothers. IEEE Transactions on Automatic Control 66(1).
        Yaghoobi, F., Corenflos, A., Hassan, S. and Särkkä, S. (2022). Parallel square-root
        statistical linear regression for inference in nonlinear state space models.
    """

    parallel: bool | None = None
    steady_state: bool = True
    gradient: str | None = None

    is_random = False

    def check(self, model) -> None:
        require_capability(model, AbstractLinearGaussianSSM, "bs.Kalman")
        if self.parallel not in (None, True, False):
            raise ValueError(
                f"Kalman(parallel=...) must be None, True or False, got {self.parallel!r}."
            )
        if self.gradient not in _GRADIENTS:
            raise ValueError(
                f"Kalman(gradient=...) must be one of {_GRADIENTS}, got {self.gradient!r}."
            )

    def _use_parallel(self) -> bool:
        if self.parallel is None:
            return jax.default_backend() != "cpu"
        return self.parallel

    def filter(
        self, model: AbstractLinearGaussianSSM, data: Observations, key: Key | None = None
    ) -> FilterResult:
        return self._filter(model, data)

    def _filter(self, model, data: Observations, share_under_vmap: bool = True) -> FilterResult:
        parallel = self._use_parallel()
        full = filter_parallel if parallel else filter_sequential
        if self.steady_state and model.time_invariant_factors:
            outputs = steady_filter(full, model, data, parallel, share_under_vmap)
        else:
            outputs = full(model, data)
        means, chols, lls, pred_means, pred_chols = outputs
        return FilterResult(means, _gram(chols), chols, jnp.sum(lls), lls, pred_means, pred_chols)

    def _kernels(self, model, data: Observations, filtered: FilterResult):
        steps = jax.tree.map(lambda a: a[:-1], data.steps)

        def kernel(mean, chol, step):
            return backward_kernel(mean, chol, *model.transition_params(step))

        return jax.vmap(kernel)(filtered.means[:-1], filtered.chols[:-1], steps)

    def _steady_backward(self, model, data: Observations) -> bool:
        return self.steady_state and model.time_invariant_factors and data.num_timesteps > 1

    def _backward(self, model, data: Observations, filtered: FilterResult):
        """The backward kernels and the smoothed means and factors."""
        parallel = self._use_parallel()

        def plain(model, data, filtered):
            kernels = self._kernels(model, data, filtered)
            run = smooth_parallel if parallel else smooth_sequential
            return kernels, *run(kernels, filtered.means[-1], filtered.chols[-1])

        if not self._steady_backward(model, data):
            return plain(model, data, filtered)

        def fast(model, data, filtered):
            return steady_backward(model, data, filtered.means, filtered.chols, parallel)

        return with_plain_derivatives(fast, plain, model, data, filtered)

    def smooth(self, model, data: Observations, key: Key | None = None) -> SmootherResult:
        filtered = self.filter(model, data)
        _, means, chols = self._backward(model, data, filtered)
        return SmootherResult(means, _gram(chols), chols, filtered.log_marginal, filtered)

    def sample_posterior(
        self, model, data: Observations, key: Key, num_samples: int = 1
    ) -> Float[Array, "S T D"]:
        filtered = self.filter(model, data)
        if self._steady_backward(model, data):  # its kernels come with the smoothed factors
            kernels, _, _ = self._backward(model, data, filtered)
        else:  # only the kernels: no smoothing pass
            kernels = self._kernels(model, data, filtered)
        run = sample_parallel if self._use_parallel() else sample_sequential
        return run(key, kernels, filtered.means[-1], filtered.chols[-1], num_samples)

    def _gradient_method(self, model) -> str:
        if self.gradient is not None:
            return self.gradient
        steady = self.steady_state and model.time_invariant_factors
        return "autodiff" if self._use_parallel() or steady else "adjoint"

    def log_marginal(self, model, data: Observations, key: Key | None = None) -> Float[Array, ""]:
        method = self._gradient_method(model)
        if method == "adjoint":
            return adjoint_log_marginal(model, data)
        if method == "autodiff":
            return self.filter(model, data).log_marginal
        plain = eqx.tree_at(lambda e: e.gradient, self, "autodiff")

        def value(model, data):
            return plain.filter(model, data).log_marginal

        return fisher_log_marginal(value, plain._moments, model, data)

    def _moments(self, model, data: Observations) -> tuple[Float[Array, ""], Moments]:
        """log p(y) and the smoothed moments Fisher's identity needs."""
        filtered = self._filter(model, data, share_under_vmap=False)
        kernels, means, chols = self._backward(model, data, filtered)
        covs = _gram(chols)
        cross = covs[1:] @ jnp.swapaxes(kernels.gain, -1, -2)
        return filtered.log_marginal, Moments(means, covs, cross)

    def forecast(
        self, model, data: Observations, key: Key | None, num_steps: int
    ) -> ForecastResult:
        """`data` ends with `num_steps` unobserved steps; their filter is the forecast."""
        filtered = self.filter(model, data)
        means, chols = filtered.means[-num_steps:], filtered.chols[-num_steps:]
        steps = jax.tree.map(lambda a: a[-num_steps:], data.steps)

        def observe(mean, chol, step):
            H, d, chol_R = model.emission_params(step)
            return H @ mean + d, tria(jnp.concatenate([H @ chol, chol_R], axis=1))

        obs_means, obs_chols = jax.vmap(observe)(means, chols, steps)
        return ForecastResult(means, _gram(chols), obs_means, _gram(obs_chols))
