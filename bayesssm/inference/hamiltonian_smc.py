"""The Hamiltonian SMC engine: particles that follow the posterior's geometry by HMC moves."""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_positive_int
from .._types import Array, Float, Int, Key
from ..data import Observations
from ..ssm import AbstractLinearGaussianSSM, AbstractSSM, require_capability
from ._hmc_smc import HMCSettings, run_hmc_smc
from ._resampling import RESAMPLERS
from .gaussian import GaussianFilter
from .kalman import Kalman

_METRICS = ("auto", "gaussian", "particles", "identity")


class HamiltonianSMCResult(NamedTuple):
    """Filtering distributions p(x_t | y_{0:t}) as equally weighted particles after the moves.

    States of any event shape E are flattened to D = prod(E) entries.
    """

    means: Float[Array, "T D"]
    variances: Float[Array, "T D"]
    log_marginal: Float[Array, ""]  # estimate of log p(y_{0:T-1}); -inf after a dead step
    log_marginals: Float[Array, " T"]  # estimates of log p(y_t | y_{0:t-1})
    ess: Float[Array, " T"]  # smallest ESS of the incremental weights over the step's stages
    num_stages: Int[Array, " T"]  # tempering stages (1 without tempering)
    acceptance_rate: Float[Array, " T"]  # mean HMC acceptance probability at each step
    step_sizes: Float[Array, " T"]  # the HMC step size each step started with
    degenerate_step: Int[Array, ""]  # first step where all weights were zero or NaN; -1 if none
    particles: Float[Array, " N *E"]  # the last step's particles (equally weighted)
    log_weights: Float[Array, " N"]


class HamiltonianSmootherResult(NamedTuple):
    """Fixed-lag smoothing: `means[t]`, `variances[t]` estimate p(x_t | y_{0:min(t+L, T-1)})."""

    means: Float[Array, "T D"]
    variances: Float[Array, "T D"]
    log_marginal: Float[Array, ""]
    filtered: HamiltonianSMCResult


class HamiltonianSMC(eqx.Module):
    r"""Sequential Monte Carlo whose particles are rejuvenated by Hamiltonian Monte Carlo.

    At every step the particles move by the transition; the new likelihood enters in tempering
    stages (adaptive, so that the effective sample size stays at `target_ess` of N), and after
    each stage the particles are resampled and moved by HMC (blackjax) targeting the current
    distribution of the last `lag` + 1 states. Where the bootstrap filter's weights collapse
    (many state dimensions, informative observations), the stages keep them balanced and the
    moves put the particles where the posterior is. Runs on any `bs.AbstractSSM` whose
    log-densities are differentiable in the state (continuous states).

    Args:
        num_particles: N.
        num_hmc_steps: HMC steps per particle after each stage.
        num_integration_steps: leapfrog steps per HMC step.
        step_size: the first HMC step size (in units of the metric); adapted from there.
        target_acceptance: the mean acceptance probability the step size is adapted towards.
        adapt_step_size: adapt the step size from stage to stage (and step to step).
        lag: L, the states before x_t that the moves update too (fixed-lag smoothing; 0: x_t
            only). `bs.smooth` returns the fixed-lag smoother p(x_t | y_{0:t+L}).
        tempering: bring each likelihood in by adaptive stages; False: one stage (plain
            resample-move).
        target_ess: the effective sample size, as a fraction of N, each stage keeps.
        max_stages: the most stages a step may take (the last one goes to beta = 1).
        resampling: "systematic" (default), "stratified", "multinomial" or "residual".
        metric: the HMC inverse mass matrix. "gaussian": fixed at each step, the filtering
            covariances of the window's states from `bs.Kalman` (linear-Gaussian models) or
            `bs.GaussianFilter()`; "particles": each particle's is the variance per coordinate
            of the other particles right after the propagation, fixed over the step's stages
            (it adapts to any model, at the price of a bias of order 1/N in the estimates);
            "identity"; "auto" (default):
            "gaussian" when a Gaussian filter can run on the model, else "particles".

    References:
        Gilks, W. R. and Berzuini, C. (2001). Following a moving target: Monte Carlo inference
        for dynamic Bayesian models. JRSS B 63(1).
        Herbst, E. and Schorfheide, F. (2019). Tempered particle filtering. Journal of
        Econometrics 210(1).
        Xu, D. (2021). Learning nonlinear state space models with Hamiltonian sequential Monte
        Carlo sampler. arXiv:2102.00698.
    """

    num_particles: int = 256
    num_hmc_steps: int = 2
    num_integration_steps: int = 5
    step_size: float = 0.5
    target_acceptance: float = 0.8
    adapt_step_size: bool = True
    lag: int = 0
    tempering: bool = True
    target_ess: float = 0.5
    max_stages: int = 100
    resampling: str = "systematic"
    metric: str = "auto"

    is_random = True

    def __check_init__(self):
        for name in ("num_particles", "num_hmc_steps", "num_integration_steps", "max_stages"):
            check_positive_int(name, getattr(self, name))
        lag = self.lag
        if isinstance(lag, bool) or not isinstance(lag, int | np.integer) or lag < 0:
            raise ValueError(f"lag must be a non-negative int, got {lag!r}.")
        step = self.step_size
        if isinstance(step, bool) or not isinstance(step, int | float) or not step > 0:
            raise ValueError(f"step_size must be a positive number, got {step!r}.")
        for name in ("target_acceptance", "target_ess"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number in (0, 1), got {value!r}.")
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}.")
        if self.resampling not in RESAMPLERS:
            raise ValueError(
                f"unknown resampling scheme {self.resampling!r}; choose one of "
                f"{sorted(RESAMPLERS)}."
            )
        if self.metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {self.metric!r}.")

    def check(self, model) -> None:
        require_capability(model, AbstractSSM, "bs.HamiltonianSMC")
        if self.metric == "gaussian":
            _gaussian_engine(model).check(model)

    def _metric(self, model) -> str:
        if self.metric != "auto":
            return self.metric
        try:
            _gaussian_engine(model).check(model)
        except TypeError:
            return "particles"
        return "gaussian"

    def _settings(self, model) -> HMCSettings:
        return HMCSettings(
            self.num_particles,
            self.lag,
            bool(self.tempering),
            float(self.target_ess),
            self.max_stages,
            self.resampling,
            self.num_hmc_steps,
            self.num_integration_steps,
            float(self.target_acceptance),
            bool(self.adapt_step_size),
            self._metric(model),
        )

    def _check_lag(self, data: Observations) -> None:
        if self.lag > data.num_timesteps - 1:
            raise ValueError(
                f"lag = {self.lag} is longer than the series allows: with T = "
                f"{data.num_timesteps} steps the lag can be at most {data.num_timesteps - 1}."
            )

    def _fixed_metrics(self, model, data: Observations):
        """(T, K, K): at step t, block-diagonal filtering covariances of the window's times."""
        if self._metric(model) != "gaussian":
            return None
        # a setting of the sampler, not a function of the parameters (see `bs.fit_mle`)
        covs = jax.lax.stop_gradient(_gaussian_engine(model).filter(model, data).covs)
        lag = self.lag
        times = jnp.arange(data.num_timesteps)[:, None] - lag + jnp.arange(lag + 1)
        blocks = covs[jnp.clip(times, 0, data.num_timesteps - 1)]  # (T, W, D, D)
        eye = jnp.eye(lag + 1, dtype=covs.dtype)
        dense = jnp.einsum("ij,tiab->tiajb", eye, blocks)
        size = (lag + 1) * covs.shape[-1]
        return dense.reshape(data.num_timesteps, size, size)

    def _run(self, model, data: Observations, key: Key):
        self._check_lag(data)
        run = run_hmc_smc(
            model,
            data,
            key,
            self._settings(model),
            self.step_size,
            self._fixed_metrics(model, data),
        )
        out = run.outputs
        num = self.num_particles
        dead = ~out.alive
        first_dead = jnp.argmax(dead).astype(jnp.int32)
        log_marginals = out.log_marginal
        dtype = log_marginals.dtype
        # the value of the likelihood estimate, the gradient of the fixed-lag score estimate
        surrogate = run.score_surrogate
        log_marginal = jnp.sum(log_marginals) + (surrogate - jax.lax.stop_gradient(surrogate))
        filtered = HamiltonianSMCResult(
            means=out.filtered[0],
            variances=out.filtered[1],
            log_marginal=log_marginal,
            log_marginals=log_marginals,
            ess=out.ess,
            num_stages=out.num_stages,
            acceptance_rate=out.acceptance_rate,
            step_sizes=out.step_size,
            degenerate_step=jnp.where(jnp.any(dead), first_dead, -1),
            particles=run.states[:, -1],
            log_weights=jnp.full(num, -jnp.log(jnp.asarray(num, dtype))),
        )
        return filtered, out, run.states

    def filter(self, model, data: Observations, key: Key) -> HamiltonianSMCResult:
        return self._run(model, data, key)[0]

    def log_marginal(self, model, data: Observations, key: Key) -> Float[Array, ""]:
        return self._run(model, data, key)[0].log_marginal

    def smooth(self, model, data: Observations, key: Key) -> HamiltonianSmootherResult:
        """Fixed-lag smoothing moments: at step t >= L the window's oldest state is x_{t-L}
        given y_{0:t}; the last window gives the final L steps given all of y."""
        filtered, out, states = self._run(model, data, key)
        lag = self.lag
        last = states.reshape(*states.shape[:2], -1)
        tail_means, tail_vars = jnp.mean(last, 0)[1:], jnp.var(last, 0)[1:]
        means = jnp.concatenate([out.lagged[0][lag:], tail_means])
        variances = jnp.concatenate([out.lagged[1][lag:], tail_vars])
        return HamiltonianSmootherResult(means, variances, filtered.log_marginal, filtered)

    def sample_posterior(self, model, data: Observations, key: Key, num_samples: int = 1):
        raise TypeError(
            "bs.HamiltonianSMC gives filtering and fixed-lag smoothing moments, not joint path "
            "draws; use bs.ParticleFilter (backward sampling) or bs.particle_gibbs for those."
        )


def _gaussian_engine(model):
    """The Gaussian filter whose covariances give the "gaussian" metric."""
    return Kalman() if isinstance(model, AbstractLinearGaussianSSM) else GaussianFilter()
