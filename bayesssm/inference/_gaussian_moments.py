r"""The conditional mean and a square root of the conditional covariance of a distribution.

Gaussian approximate engines see a model's distributions only through these two moments,
flattened to vectors: $\mu$ of shape (K,) and a factor $S$ of shape (K, K) with
$S S^\top = \mathrm{Cov}$. Gaussian distributions give their own scale factor (so a singular
covariance never goes through a Cholesky factorisation); non-Gaussian ones give their mean and
variance, which is what statistical linear regression needs:

- `distrax.Normal`, `distrax.MultivariateNormalTri`, `...Diag`, `...DiagPlusLowRank` (any
  `distrax.MultivariateNormalFromBijector`): loc and the scale matrix;
  `distrax.MultivariateNormalFullCovariance`: loc and a pivoted Cholesky factor of the stored
  covariance (singular allowed);
- `bs.distributions.Poisson`: mean = variance = rate; `distrax.Bernoulli`: $p$, $p(1 - p)$;
  a Student-t (TFP's `StudentT`, or any distribution with `df`, `loc`, `scale`):
  loc, $\text{scale}^2\, \nu / (\nu - 2)$ (infinite for $\nu \le 2$);
- `distrax.Independent` of any of the above with scalar events: the flattened entries, with a
  diagonal factor;
- anything else with working `mean()` and `variance()` (scalar events) or `mean()` and
  `covariance()` (vector events).

Anything else raises `UnsupportedDistributionError` (a TypeError) naming the distribution type.
"""

from __future__ import annotations

import distrax
import jax.numpy as jnp

from .._matmul import symmetrise
from .._types import Array, Float
from ..distributions import Poisson
from ..kernels._linalg import semidefinite_cholesky
from ._square_root import tria


class UnsupportedDistributionError(TypeError):
    """A distribution whose conditional mean and covariance the Gaussian engines cannot get."""


def _unsupported(dist, why: str = "") -> UnsupportedDistributionError:
    return UnsupportedDistributionError(
        f"Gaussian approximate engines (bs.GaussianFilter, bs.IteratedSmoother) need the mean "
        f"and covariance of the model's distributions, but got a {type(dist).__name__}{why}. "
        "Supported: distrax Normal, MultivariateNormal{Tri,Diag,FullCovariance}, Independent of "
        "scalar distributions, bs.distributions.Poisson, distrax Bernoulli, Student-t, or any "
        "distribution with mean() and variance() (or covariance()). Otherwise use "
        "bs.ParticleFilter."
    )


def _shape(dist) -> tuple[int, ...]:
    return tuple(dist.batch_shape) + tuple(dist.event_shape)


def _diagonal(mean: Array, sd: Array, shape) -> tuple[Array, Array]:
    mean = jnp.broadcast_to(mean, shape).reshape(-1)
    sd = jnp.broadcast_to(sd, shape).reshape(-1).astype(mean.dtype)
    return mean, jnp.diag(sd)


def _scalar_moments(dist, shape) -> tuple[Array, Array] | None:
    """Mean and standard deviation of a distribution with scalar events, or None."""
    if isinstance(dist, distrax.Normal):
        return dist.loc, dist.scale
    if isinstance(dist, Poisson):
        rate = dist.rate
        return rate, jnp.sqrt(rate)
    if isinstance(dist, distrax.Bernoulli):
        p = dist.probs
        return p, jnp.sqrt(p * (1.0 - p))
    if all(hasattr(dist, name) for name in ("df", "loc", "scale")):  # Student-t
        df = jnp.asarray(dist.df)
        scale = jnp.asarray(dist.scale)
        sd = jnp.where(df > 2.0, scale * jnp.sqrt(df / jnp.where(df > 2.0, df - 2.0, 1.0)), jnp.inf)
        return jnp.asarray(dist.loc), sd
    try:
        return dist.mean(), jnp.sqrt(dist.variance())
    except (NotImplementedError, AttributeError):
        return None


def distribution_moments(dist) -> tuple[Float[Array, " K"], Float[Array, "K K"]]:
    """The flattened mean (K,) and a lower-triangular factor (K, K) of the covariance.

    Args:
        dist: a distrax (or TFP) distribution; K is the product of its batch and event shapes.

    Returns:
        (mean, factor) with factor @ factor.T the covariance.

    Raises:
        UnsupportedDistributionError: moments of this distribution type are not available.
    """
    shape = _shape(dist)
    if tuple(dist.event_shape) == ():
        moments = _scalar_moments(dist, shape)
        if moments is None:
            raise _unsupported(dist, " (it has no mean() and variance())")
        return _diagonal(*moments, shape)
    if isinstance(dist, distrax.Independent):
        base = dist.distribution
        if tuple(base.event_shape) != ():
            raise _unsupported(dist, f" of {type(base).__name__} with non-scalar events")
        moments = _scalar_moments(base, _shape(base))
        if moments is None:
            raise _unsupported(base, " (it has no mean() and variance())")
        return _diagonal(*moments, _shape(base))
    if dist.batch_shape != ():
        raise _unsupported(dist, f" with batch shape {tuple(dist.batch_shape)}")
    if isinstance(dist, distrax.MultivariateNormalFullCovariance):
        return dist.loc, tria(semidefinite_cholesky(symmetrise(dist.covariance_matrix)))
    if isinstance(dist, distrax.MultivariateNormalFromBijector):
        scale = dist.scale
        if isinstance(scale, distrax.DiagLinear):
            return dist.loc, jnp.diag(scale.diag)
        if isinstance(scale, distrax.TriangularLinear) and scale.is_lower:
            return dist.loc, scale.matrix
        return dist.loc, tria(scale.matrix)
    if len(dist.event_shape) != 1:
        raise _unsupported(dist, f" with event shape {tuple(dist.event_shape)}")
    try:
        mean, cov = dist.mean(), dist.covariance()
    except (NotImplementedError, AttributeError):
        raise _unsupported(dist, " (it has no mean() and covariance())") from None
    return mean, tria(semidefinite_cholesky(symmetrise(cov)))
