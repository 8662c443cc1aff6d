r"""The next temperature of an adaptively tempered SMC: the shared step of `bs.HamiltonianSMC`
(tempering in each new likelihood) and `bs.sample_smc` (tempering in the whole likelihood).

References:
    Jasra, A., Stephens, D. A., Doucet, A. and Tsagaris, T. (2011). Inference for Lévy-driven
    stochastic volatility models via adaptive sequential Monte Carlo. Scand. J. Stat. 38(1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from .._types import Array, Float
from ._resampling import effective_sample_size

# Halvings of the increment's bracket: 2^-60 of its width, below float64's resolution.
_BISECTION_STEPS = 60


def increment_weights(log_likelihood: Float[Array, " N"], delta) -> Float[Array, " N"]:
    """delta * log-likelihood, with -inf (not NaN) where the likelihood is zero or NaN."""
    return jnp.where(jnp.isfinite(log_likelihood), delta * log_likelihood, -jnp.inf)


def next_increment(log_likelihood: Float[Array, " N"], remaining, target_ess) -> Array:
    r"""The $\delta \in (0, \text{remaining}]$ at which the ESS of the incremental weights
    $\exp(\delta \log p(y \mid x_i))$ is `target_ess` times the number of particles with a
    positive likelihood, or `remaining` when the ESS stays above that all the way.

    The ESS falls as $\delta$ grows from 0 (where it is the number of particles with a positive
    likelihood); bisection keeps the upper end of the bracket, so the increment is positive
    whatever the weights.
    """
    goal = target_ess * jnp.sum(jnp.isfinite(log_likelihood))

    def ess(delta):
        weights = increment_weights(log_likelihood, delta)
        return effective_sample_size(weights - logsumexp(weights))

    def halve(_, bracket):
        low, high = bracket
        middle = 0.5 * (low + high)
        above = ess(middle) >= goal
        return jnp.where(above, middle, low), jnp.where(above, high, middle)

    zero = jnp.zeros_like(remaining)
    _, high = jax.lax.fori_loop(0, _BISECTION_STEPS, halve, (zero, remaining))
    return jnp.where(ess(remaining) >= goal, remaining, high)
