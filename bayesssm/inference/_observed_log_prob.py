"""log p(y_obs | x) for a row whose entries may be partly missing, from a distrax emission.

A fully observed row is the distribution's own `log_prob`; a fully missing one contributes 0. A
partly observed row needs the marginal of the observed entries: it is exact for factorised
emissions (`distrax.Independent`, or batched scalar distributions) and for multivariate normals
(the missing rows and columns of the covariance are replaced by the identity and the residual
there by zero, which adds a known constant). Other emissions raise at run time, naming the step.
"""

from __future__ import annotations

from collections.abc import Callable

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp

from .._types import Array, Bool, Float

_LOG_2PI = float(jnp.log(2 * jnp.pi))


def emission_value(dist: distrax.Distribution, y: Float[Array, " M"]) -> Array:
    """The row y in the emission's event shape: a scalar for event shape ()."""
    return y.reshape(dist.event_shape)


def full_log_prob(dist: distrax.Distribution, y: Float[Array, " M"]) -> Array:
    """log p(y | x) of a fully observed row; a batch of scalar distributions over the M
    entries (event shape (), batch shape (M,)) is summed over them."""
    if dist.event_shape == () and dist.batch_shape == y.shape:
        return jnp.sum(dist.log_prob(y))
    return dist.log_prob(emission_value(dist, y))


def _normal_marginal(dist, y: Float[Array, " M"], observed: Bool[Array, " M"]) -> Array:
    weight = observed.astype(y.dtype)
    cov = dist.covariance()
    masked = cov * weight[:, None] * weight[None, :] + jnp.diag(1.0 - weight)
    residual = jnp.where(observed, y - dist.loc, 0.0)
    chol = jnp.linalg.cholesky(masked)
    z = jax.scipy.linalg.solve_triangular(chol, residual, lower=True)
    log_det = jnp.sum(jnp.log(jnp.diagonal(chol)))
    return -0.5 * (z @ z) - log_det - 0.5 * jnp.sum(weight) * _LOG_2PI


def partial_log_prob(dist: distrax.Distribution, y: Float[Array, " M"], observed) -> Array | None:
    """The observed entries' log-density, or None if `dist` cannot be marginalised here."""
    if isinstance(dist, distrax.Independent):
        base = dist.distribution
        per_entry = base.log_prob(y.reshape(base.batch_shape + base.event_shape))
        if base.event_shape == ():
            return jnp.sum(jnp.where(observed.reshape(per_entry.shape), per_entry, 0.0))
        return None
    if dist.event_shape == () and dist.batch_shape == y.shape:
        return jnp.sum(jnp.where(observed, dist.log_prob(y), 0.0))
    if hasattr(dist, "covariance") and hasattr(dist, "loc") and dist.event_shape == y.shape:
        return _normal_marginal(dist, y, observed)
    return None


def observed_log_likelihoods(
    emission: Callable[[Array], distrax.Distribution],
    particles: Float[Array, " N ..."],
    y: Float[Array, " M"],
    observed: Bool[Array, " M"],
) -> Float[Array, " N"]:
    """log p(y_obs | x^i) for every particle; `emission(x)` is p(y | x) at this step.

    The branch (all, none or some entries observed) is taken once per step, not per particle.
    """
    num_observed = jnp.sum(observed)
    num = particles.shape[0]

    def full(particles):
        return jax.vmap(lambda x: full_log_prob(emission(x), y))(particles)

    def none(particles):
        return jnp.zeros(num, y.dtype)

    def some(particles):
        def one(x):
            dist = emission(x)
            value = partial_log_prob(dist, y, observed)
            if value is None:
                value = eqx.error_if(
                    dist.log_prob(emission_value(dist, y)),
                    (num_observed > 0) & (num_observed < y.shape[0]),
                    f"a row of y is partly missing, but the emission ({type(dist).__name__}) "
                    "cannot be marginalised over its missing entries; return a "
                    "distrax.Independent of scalar distributions or a multivariate normal, or "
                    "mark the whole row missing.",
                )
            return value

        return jax.vmap(one)(particles)

    if y.shape[0] == 1:
        return jax.lax.cond(num_observed == 1, full, none, particles)
    branch = jnp.where(num_observed == y.shape[0], 2, jnp.where(num_observed == 0, 0, 1))
    return jax.lax.switch(branch, [none, some, full], particles)
