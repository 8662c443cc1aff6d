"""The particle filter engine: sequential Monte Carlo for any model of the protocol."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np

from .._types import Array, Float, Key
from ..data import Observations
from ..ssm import AbstractLinearGaussianEmission, AbstractSSM, require_capability
from ._particle_filter import ParticleFilterResult, Settings, run_particle_filter
from ._particle_forecast import particle_forecast
from ._proposals import Bootstrap, Guided, LocallyOptimal, LookAhead
from ._resampling import RESAMPLERS
from ._smoothing import (
    ParticleSmootherResult,
    backward_paths,
    genealogy_paths,
    smoothed_moments,
)
from .results import ForecastResult

_PROPOSALS = ("bootstrap", "optimal")
_SMOOTHERS = ("ffbs", "ffbs_rejection", "genealogy")


class ParticleFilter(eqx.Module):
    r"""Sequential Monte Carlo: bootstrap, guided and auxiliary particle filters.

    Runs on any `bs.AbstractSSM` (only `initial`, `transition`, `emission` are used). Weights
    stay in log-space; missing entries of y (NaN) drop out of the weighting (a fully missing row
    is a pure prediction step).

    Args:
        num_particles: N, the number of particles (at least 1).
        resampling: "systematic" (default), "stratified", "multinomial" or "residual".
        ess_threshold: resample when the effective sample size falls below this fraction of N;
            1.0 resamples at every step, 0.0 never.
        proposal: "bootstrap" (move by the transition); "optimal", the locally optimal
            $p(x_t \mid x_{t-1}, y_t)$, for Gaussian transitions and a linear-Gaussian emission
            (a `bs.AbstractLinearGaussianEmission`); or a function `q(x_prev, y, inputs)`
            returning a distrax distribution over $x_t$, with NaN in `y` where an entry is
            missing (a guided filter).
        initial_proposal: with a proposal function, `q0(y, inputs)` for $x_0$; default the
            model's $p(x_0)$.
        auxiliary: False; True for an auxiliary particle filter whose first-stage weights are
            the likelihood at the transition's mean (with proposal="optimal": the exact
            predictive, a fully adapted filter); or a function `eta(x_prev, y, inputs)` giving
            the log first-stage weight.
        store_history: keep every step's particles, weights and ancestors in the filter result
            (O(T N) memory); smoothing always keeps them.
        smoother: how `bs.smooth` and `bs.sample_posterior` draw paths. "ffbs" (default):
            forward-filtering backward-sampling with the exact backward kernel, O(N) per path
            and step (O(N^2 T) for `bs.smooth`'s N paths); paths do not degenerate, so early
            steps are as well represented as late ones. "ffbs_rejection": the same law by
            rejection sampling with an exact fallback, expected O(1) per path and step when
            the transition density's bound (its value at the mode) is not loose; "genealogy":
            the ancestry of the final particles, O(T) per path but degenerate at early steps
            (few distinct ancestors), good only near the end.
        num_smoothing_paths: paths that `bs.smooth` averages (default N).

    References:
        Gordon, N. J., Salmond, D. J. and Smith, A. F. M. (1993). Novel approach to nonlinear/
        non-Gaussian Bayesian state estimation. IEE Proceedings F 140(2).
        Pitt, M. K. and Shephard, N. (1999). Filtering via simulation: auxiliary particle
        filters. JASA 94(446).
        Doucet, A., Godsill, S. and Andrieu, C. (2000). On sequential Monte Carlo sampling
        methods for Bayesian filtering. Statistics and Computing 10.
    """

    num_particles: int = 1000
    resampling: str = "systematic"
    ess_threshold: float = 0.5
    proposal: str | Callable = "bootstrap"
    initial_proposal: Callable | None = None
    auxiliary: bool | Callable = False
    store_history: bool = False
    smoother: str = "ffbs"
    num_smoothing_paths: int | None = None

    is_random = True

    def __check_init__(self):
        num = self.num_particles
        if isinstance(num, bool) or not isinstance(num, int | np.integer) or num < 1:
            raise ValueError(f"num_particles must be a positive int, got {num!r}.")
        if self.resampling not in RESAMPLERS:
            raise ValueError(
                f"unknown resampling scheme {self.resampling!r}; choose one of "
                f"{sorted(RESAMPLERS)}."
            )
        threshold = self.ess_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError(f"ess_threshold must be a number in [0, 1], got {threshold!r}.")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"ess_threshold must be in [0, 1] (1.0 = always), got {threshold}.")
        if not callable(self.proposal) and self.proposal not in _PROPOSALS:
            raise ValueError(
                f"proposal must be one of {_PROPOSALS} or a function q(x_prev, y, inputs) "
                f"returning a distribution, got {self.proposal!r}."
            )
        if self.initial_proposal is not None and not callable(self.proposal):
            raise ValueError("initial_proposal goes with a proposal function (a guided filter).")
        if not (isinstance(self.auxiliary, bool) or callable(self.auxiliary)):
            raise ValueError(
                f"auxiliary must be True, False or a function eta(x_prev, y, inputs), got "
                f"{self.auxiliary!r}."
            )
        if self.smoother not in _SMOOTHERS:
            raise ValueError(f"smoother must be one of {_SMOOTHERS}, got {self.smoother!r}.")
        paths = self.num_smoothing_paths
        bad_paths = isinstance(paths, bool) or not isinstance(paths, int) or paths < 1
        if paths is not None and bad_paths:
            raise ValueError(f"num_smoothing_paths must be a positive int, got {paths!r}.")

    def check(self, model) -> None:
        require_capability(model, AbstractSSM, "bs.ParticleFilter")
        if self.proposal == "optimal":
            require_capability(
                model, AbstractLinearGaussianEmission, "ParticleFilter(proposal='optimal')"
            )

    def _proposal(self):
        if callable(self.proposal):
            return Guided(self.proposal, self.initial_proposal)
        return LocallyOptimal() if self.proposal == "optimal" else Bootstrap()

    def _settings(self, store_history: bool) -> Settings:
        proposal = self._proposal()
        if callable(self.auxiliary):
            look_ahead = LookAhead(self.auxiliary)
        else:
            look_ahead = proposal.look_ahead if self.auxiliary else None
        return Settings(
            self.num_particles,
            self.resampling,
            float(self.ess_threshold),
            proposal,
            look_ahead,
            store_history,
        )

    def run(self, model, data: Observations, key: Key, store_history: bool | None = None):
        """The filter on checked `Observations` (the verbs call this)."""
        store = self.store_history if store_history is None else store_history
        return run_particle_filter(model, data, key, self._settings(store))

    def filter(self, model, data: Observations, key: Key) -> ParticleFilterResult:
        return self.run(model, data, key)

    def log_marginal(self, model, data: Observations, key: Key) -> Float[Array, ""]:
        return self.run(model, data, key, store_history=False).log_marginal

    def _paths(self, model, data: Observations, key: Key, num_paths: int):
        key_filter, key_paths = jax.random.split(key)
        filtered = self.run(model, data, key_filter, store_history=True)
        if self.smoother == "genealogy":
            return filtered, genealogy_paths(key_paths, filtered.history, num_paths)
        paths = backward_paths(
            key_paths, model, filtered.history, data.steps, num_paths, self.smoother
        )
        return filtered, paths

    def smooth(self, model, data: Observations, key: Key) -> ParticleSmootherResult:
        num_paths = self.num_smoothing_paths or self.num_particles
        filtered, paths = self._paths(model, data, key, num_paths)
        means, variances = smoothed_moments(paths)
        return ParticleSmootherResult(means, variances, filtered.log_marginal, paths, filtered)

    def sample_posterior(
        self, model, data: Observations, key: Key, num_samples: int = 1
    ) -> Float[Array, "S T *E"]:
        return self._paths(model, data, key, num_samples)[1]

    def forecast(self, model, data: Observations, key: Key, num_steps: int) -> ForecastResult:
        """Predictive moments: the filter runs on through the `num_steps` unobserved steps that
        end `data`."""
        history = self.run(model, data, key, store_history=True).history
        return particle_forecast(model, history, data, num_steps)
