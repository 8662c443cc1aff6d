r"""Counts from a Poisson distribution whose log-intensity is a latent stationary AR(1)."""

from __future__ import annotations

import distrax
import jax.numpy as jnp

from .._types import Array, ArrayLike, Float
from ..distributions import Poisson
from ..params import Interval, Positive
from ..ssm import AbstractSSM, StepInputs
from ._scalar import check_scalar_data, coefficient, float_dtype, positive, real, stationary_sd


class PoissonAR1(AbstractSSM):
    r"""Poisson counts with a latent AR(1) log-intensity (a discrete-time Cox process).

    $$x_0 \sim N\!\left(\mu, \frac{\sigma^2}{1 - \phi^2}\right),\quad
        x_{t+1} = \mu + \phi\,(x_t - \mu) + \sigma \varepsilon_t,\quad
        \varepsilon_t \sim N(0, 1),$$
    $$y_t \mid x_t \sim \mathrm{Poisson}(e^{x_t}).$$

    $x_0$ is drawn from the stationary distribution. The state and the count are scalars (event
    shape ()); y may be given as (T,) or (T, 1), as floats (NaN marks a missing count). The
    emission is a `bs.distributions.Poisson` parameterised by its log rate $x_t$. This is the
    model of `particles.state_space_models.DiscreteCox(mu=mu, sigma=sigma, phi=phi)`.

    $\phi$ is stored as a `bs.params.Interval` on $(-1, 1)$ and $\sigma$ as a `bs.Positive`;
    fit them with `where=lambda m: (m.mu, m.phi, m.sigma)`. The parameters keep their dtype
    (float32 or float64).

    Args:
        mu: $\mu$, the mean log-intensity, a finite scalar.
        phi: $\phi \in (-1, 1)$, the persistence, a scalar or an `Interval` with bounds within
            $[-1, 1]$.
        sigma: $\sigma > 0$, the innovations' standard deviation, a scalar or a `Positive`.

    Raises:
        ValueError: a parameter that is not a scalar, not finite, or out of its range.

    References:
        Zeger, S. L. (1988). A regression model for time series of counts. Biometrika 75(4).
        Chopin, N. and Papaspiliopoulos, O. (2020). An Introduction to Sequential Monte Carlo.
        Springer.
    """

    mu: Float[Array, ""]
    phi: Interval
    sigma: Positive

    def __init__(
        self, mu: ArrayLike, phi: ArrayLike | Interval, sigma: ArrayLike | Positive
    ) -> None:
        dtype = float_dtype(mu, phi, sigma)
        owner = "PoissonAR1"
        self.mu = real(owner, "mu", mu, dtype)
        self.phi = coefficient(owner, "phi", phi, dtype)
        self.sigma = positive(owner, "sigma", sigma, dtype)

    def initial(self, inputs: StepInputs | None = None) -> distrax.Distribution:
        r"""$N(\mu, \sigma^2 / (1 - \phi^2))$, the stationary distribution; event shape ()."""
        return distrax.Normal(self.mu, stationary_sd(self.phi.value(), self.sigma.value()))

    def transition(
        self, x: Float[Array, ""], inputs: StepInputs | None = None
    ) -> distrax.Distribution:
        r"""$N(\mu + \phi (x - \mu), \sigma^2)$, the same at every step; event shape ()."""
        return distrax.Normal(self.mu + self.phi.value() * (x - self.mu), self.sigma.value())

    def emission(
        self, x: Float[Array, ""], inputs: StepInputs | None = None
    ) -> distrax.Distribution:
        r"""$\mathrm{Poisson}(e^{x})$, given by its log rate $x$; event shape ()."""
        return Poisson(jnp.asarray(x, jnp.result_type(x, self.mu)))

    def check_data(self, num_timesteps: int, obs_dim: int | None, controls) -> None:
        check_scalar_data("PoissonAR1", obs_dim, controls)
