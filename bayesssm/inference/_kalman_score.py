r"""The log-likelihood's derivatives by Fisher's identity, from one smoothing pass.

$$\nabla_\theta \log p_\theta(y) = E_\theta\big[\nabla_{\theta'} \log p_{\theta'}(x, y)
\big|_{\theta' = \theta} \,\big|\, y\big],$$

and for a linear-Gaussian model the expected complete-data log-likelihood is a closed form in the
smoothed means, covariances and lag-one cross-covariances. Its gradient needs no reverse pass
through the filter's recursion (which on CPU costs about 30 filter evaluations): the smoother runs
forward-only and the expectation is a sum over steps, vectorised. The same identity holds for y.

It needs densities: P0, Q_t and R_t (observed block) must be non-singular, which is why it is an
option of `Kalman` (`gradient="fisher"`) rather than the default. On CPU it is about 1.3 to 2
times faster than reverse mode through the recursion at T = 1000; with `parallel=True` its span
is O(log T) (parallel smoother, vectorised expectation) where reverse mode through a scan is
sequential.

References:
    Segal, M. and Weinstein, E. (1989). A new method for evaluating the log-likelihood gradient,
    the Hessian, and the Fisher information matrix for linear dynamic systems. IEEE Transactions
    on Information Theory 35(3).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._types import Array, Float, Scalar
from ..data import Observations
from ..ssm import AbstractLinearGaussianSSM
from ._square_root import log_abs_det, solve_lower, tria

_LOG_2PI = 1.8378770664093453


class Moments(eqx.Module):
    """Smoothed moments: E[x_t], Cov(x_t), and Cov(x_{t+1}, x_t) for t < T-1."""

    means: Float[Array, "T D"]
    covs: Float[Array, "T D D"]
    cross: Float[Array, "T-1 D D"]


def _expected_log_density(
    residual: Float[Array, " n"], spread: Float[Array, "n n"], chol: Float[Array, "n n"]
) -> Scalar:
    """E[log N(r; 0, L L^T)] for r with mean `residual` and covariance `spread`, without the
    -n/2 log 2 pi (added by the caller, which knows how many entries are real)."""
    whitened = solve_lower(chol, residual)
    half = solve_lower(chol, spread)
    trace = jnp.trace(solve_lower(chol, half.T))
    return -0.5 * (whitened @ whitened + trace) - log_abs_det(chol)


def expected_log_joint(
    model: AbstractLinearGaussianSSM, data: Observations, moments: Moments
) -> Scalar:
    r"""$E[\log p_\theta(x_{0:T-1}, y^{obs}_{0:T-1})]$ under `moments` (held fixed)."""
    means, covs = moments.means, moments.covs
    T, D = means.shape
    m0, chol_P0 = model.initial_params(data.step(0))
    total = _expected_log_density(means[0] - m0, covs[0], chol_P0)
    constant = -0.5 * (D * T + jnp.sum(data.observed)) * _LOG_2PI
    if model.time_invariant_factors:
        return total + _summed_terms(model, data, moments) + constant
    prev = jax.tree.map(lambda a: a[:-1], data.steps)
    terms = jax.vmap(_transition_term, in_axes=(None, 0, 0, 0, 0, 0, 0))(
        model, prev, means[:-1], covs[:-1], means[1:], covs[1:], moments.cross
    )
    total = total + jnp.sum(terms)
    terms = jax.vmap(_emission_term, in_axes=(None, 0, 0, 0, 0, 0))(
        model, data.steps, means, covs, data.values, data.observed
    )
    return total + jnp.sum(terms) + constant


def _transition_term(model, step, mean, cov, mean_next, cov_next, cross) -> Scalar:
    A, b, chol_Q = model.transition_params(step)
    residual = mean_next - A @ mean - b
    coupling = A @ cross.T
    spread = cov_next - coupling - coupling.T + A @ cov @ A.T
    # A time-varying model's factor may be any square root (GP kernels pivot theirs).
    return _expected_log_density(residual, spread, tria(chol_Q))


def _emission_term(model, step, mean, cov, y, observed) -> Scalar:
    H, d, chol_R = model.emission_params(step)
    # Missing entries: the factor of blockdiag(R_observed, I) and a zero residual row, as in the
    # filter's update; they add nothing but a constant.
    weight = observed.astype(mean.dtype)
    chol = tria(jnp.concatenate([chol_R * weight[:, None], jnp.diag(1.0 - weight)], axis=1))
    H_obs = H * weight[:, None]
    residual = weight * (y - H @ mean - d)
    return _expected_log_density(residual, H_obs @ cov @ H_obs.T, chol)


def _summed_terms(model, data: Observations, moments: Moments) -> Scalar:
    """The transition and emission terms when A, Q, H, R do not depend on t: each is one
    Gaussian expectation with summed second moments, so the cost per step is a few products
    instead of triangular solves. Rows with missing entries (if any) take the per-step form."""
    means, covs, cross = moments.means, moments.covs, moments.cross
    T = means.shape[0]
    first = data.step(0)
    A, _, chol_Q = model.transition_params(first)
    H, _, chol_R = model.emission_params(first)
    prev = jax.tree.map(lambda a: a[:-1], data.steps)
    b = jax.vmap(lambda step: model.transition_params(step)[1])(prev)
    d = jax.vmap(lambda step: model.emission_params(step)[1])(data.steps)

    residual = means[1:] - means[:-1] @ A.T - b
    summed_cross = jnp.sum(cross, axis=0)
    coupling = A @ summed_cross.T
    spread = (
        jnp.sum(covs[1:], axis=0) - coupling - coupling.T + A @ jnp.sum(covs[:-1], axis=0) @ A.T
    )
    transition = _expected_log_sum(residual.T @ residual + spread, chol_Q, T - 1)

    full = jnp.all(data.observed, axis=1)
    weight = full.astype(means.dtype)
    residual = (data.values - means @ H.T - d) * weight[:, None]
    spread = H @ jnp.einsum("t,tij->ij", weight, covs) @ H.T
    emission = _expected_log_sum(residual.T @ residual + spread, chol_R, jnp.sum(weight))

    def partial_rows():
        terms = jax.vmap(_emission_term, in_axes=(None, 0, 0, 0, 0, 0))(
            model, data.steps, means, covs, data.values, data.observed
        )
        return jnp.sum(jnp.where(full, 0.0, terms))

    partial = jax.lax.cond(jnp.all(full), lambda: jnp.zeros((), means.dtype), partial_rows)
    return transition + emission + partial


def _expected_log_sum(second_moment: Float[Array, "n n"], chol: Float[Array, "n n"], count):
    """Sum over `count` terms of E[log N(r; 0, L L^T)] (without 2 pi) from sum E[r r^T]."""
    half = solve_lower(chol, second_moment)
    return -0.5 * jnp.trace(solve_lower(chol, half.T)) - count * log_abs_det(chol)


def fisher_log_marginal(
    log_marginal: Callable, moments: Callable, model, data: Observations
) -> Scalar:
    """`log_marginal(model, data)` whose derivatives (any order, forward or reverse) come from
    Fisher's identity, with `moments(model, data) -> (log_marginal, Moments)` the smoother's."""
    dynamic, static = eqx.partition((model, data), eqx.is_array)

    def combine(dyn):
        return eqx.combine(dyn, static)

    @jax.custom_jvp
    def value(dyn):
        return log_marginal(*combine(dyn))

    # Derivatives are taken with respect to the floating leaves only (tangents of integer and
    # boolean leaves are float0).
    def by_identity(dyn, tangent):
        value, fixed = moments(*combine(dyn))
        inexact, other = eqx.partition(dyn, eqx.is_inexact_array)

        def expected(inexact):
            return expected_log_joint(*combine(eqx.combine(inexact, other)), fixed)

        score = jax.grad(expected)(inexact)
        pairs = zip(jax.tree.leaves(score), jax.tree.leaves(tangent), strict=True)
        return value, jnp.asarray(sum(jnp.sum(s * t) for s, t in pairs), value.dtype)

    @value.defjvp
    def value_jvp(primals, tangents):
        (dyn,), (tangent,) = primals, tangents
        return by_identity(dyn, eqx.filter(tangent, eqx.is_inexact_array))

    return value(dynamic)
