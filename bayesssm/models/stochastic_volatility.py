r"""The basic univariate stochastic volatility model: a latent AR(1) log-variance."""

from __future__ import annotations

import distrax
import jax.numpy as jnp

from .._types import Array, ArrayLike, Float
from ..params import Interval, Positive
from ..ssm import AbstractSSM, StepInputs
from ._scalar import check_scalar_data, coefficient, float_dtype, positive, real, stationary_sd


class StochasticVolatility(AbstractSSM):
    r"""Stochastic volatility: returns $y_t$ whose log-variance $x_t$ is a stationary AR(1).

    $$x_0 \sim N\!\left(\mu, \frac{\sigma^2}{1 - \rho^2}\right),\quad
        x_{t+1} = \mu + \rho\,(x_t - \mu) + \sigma \varepsilon_t,\quad
        \varepsilon_t \sim N(0, 1),$$
    $$y_t \mid x_t \sim N(0, e^{x_t}).$$

    $x_0$ is drawn from the stationary distribution, so the state process is stationary. The
    state and the observation are scalars (event shape ()); y may be given as (T,) or (T, 1).
    This is the model of `particles.state_space_models.StochVol(mu, rho, sigma)` (Chopin and
    Papaspiliopoulos 2020), with the same parameters, so log-likelihoods can be compared.
    The emission is not Gaussian in $x_t$, so Kalman engines do not apply: use a particle engine.

    $\rho$ is stored as a `bs.params.Interval` on $(-1, 1)$ and $\sigma$ as a `bs.Positive`, so
    unconstrained optimisation keeps the process stationary; `bs.unwrap(model).rho` is the
    number. Fit them with `where=lambda m: (m.mu, m.rho, m.sigma)`. The parameters keep their
    dtype (float32 or float64; Python numbers follow the arrays among them, or take JAX's default
    float when all are Python numbers).

    Args:
        mu: $\mu$, the mean log-variance, a finite scalar.
        rho: $\rho \in (-1, 1)$, the persistence, a scalar or an `Interval` with bounds within
            $[-1, 1]$.
        sigma: $\sigma > 0$, the standard deviation of the log-variance's innovations, a scalar
            or a `Positive`.

    Raises:
        ValueError: a parameter that is not a scalar, not finite, or out of its range.

    References:
        Kim, S., Shephard, N. and Chib, S. (1998). Stochastic volatility: likelihood inference
        and comparison with ARCH models. Review of Economic Studies 65(3).
        Chopin, N. and Papaspiliopoulos, O. (2020). An Introduction to Sequential Monte Carlo.
        Springer (the `particles` library's book).
    """

    mu: Float[Array, ""]
    rho: Interval
    sigma: Positive

    def __init__(
        self, mu: ArrayLike, rho: ArrayLike | Interval, sigma: ArrayLike | Positive
    ) -> None:
        dtype = float_dtype(mu, rho, sigma)
        owner = "StochasticVolatility"
        self.mu = real(owner, "mu", mu, dtype)
        self.rho = coefficient(owner, "rho", rho, dtype)
        self.sigma = positive(owner, "sigma", sigma, dtype)

    def initial(self, inputs: StepInputs | None = None) -> distrax.Distribution:
        r"""$N(\mu, \sigma^2 / (1 - \rho^2))$, the stationary distribution; event shape ()."""
        return distrax.Normal(self.mu, stationary_sd(self.rho.value(), self.sigma.value()))

    def transition(
        self, x: Float[Array, ""], inputs: StepInputs | None = None
    ) -> distrax.Distribution:
        r"""$N(\mu + \rho (x - \mu), \sigma^2)$, the same at every step; event shape ()."""
        return distrax.Normal(self.mu + self.rho.value() * (x - self.mu), self.sigma.value())

    def emission(
        self, x: Float[Array, ""], inputs: StepInputs | None = None
    ) -> distrax.Distribution:
        r"""$N(0, e^{x})$ (standard deviation $e^{x/2}$); event shape ()."""
        scale = jnp.exp(0.5 * jnp.asarray(x, jnp.result_type(x, self.mu)))
        return distrax.Normal(jnp.zeros_like(scale), scale)

    def check_data(self, num_timesteps: int, obs_dim: int | None, controls) -> None:
        check_scalar_data("StochasticVolatility", obs_dim, controls)
