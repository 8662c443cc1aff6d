r"""Linearization rules: a model's conditional distribution as an affine-Gaussian map.

A conditional distribution $p(y \mid x)$ with mean $\mu(x)$ and covariance $\Sigma(x)$ is
replaced, around $x \sim N(m, P)$, by

$$y \approx A x + b + e,\qquad e \sim N(0, \Omega).$$

- `Extended` (first-order Taylor): $A = \partial \mu / \partial x$ at $m$, $b = \mu(m) - A m$,
  $\Omega = \Sigma(m)$.
- Sigma-point rules (`Unscented`, `Cubature`, `GaussHermite`): statistical linear regression
  (SLR) under $N(m, P)$, with the expectations taken by a quadrature rule on the points
  $x_i = m + L \epsilon_i$ ($L L^\top = P$):
  $$A = \mathrm{Cov}[\mu(x), x]\, P^{+},\quad b = E[\mu(x)] - A m,\quad
    \Omega = E[\Sigma(x)] + \mathrm{Cov}[\mu(x)] - A P A^\top.$$
  With $G = \sum_i w^c_i (\mu(x_i) - \bar\mu)\, \epsilon_i^\top$, $\mathrm{Cov}[\mu, x] = G L^\top$
  and $A = G L^{+}$ (a pseudo-inverse, so a singular $L$ is fine: $A$ is exact on the range of
  $P$, where $x - m$ lives). $\Omega$ is formed in square-root form, as the triangular factor of
  the weighted residuals $\sqrt{w^c_i}\,(\mu(x_i) - \bar\mu - A L \epsilon_i)$ next to the
  weighted factors $\sqrt{w_i}\, \Sigma(x_i)^{1/2}$, whenever all weights are non-negative;
  with negative weights it is summed and factored by a pivoted Cholesky.

Every covariance travels as a square root. Distributions of any shape are flattened (a state of
shape () is a vector of length 1).

References:
    Julier, S. J. and Uhlmann, J. K. (2004). Unscented filtering and nonlinear estimation.
    Proceedings of the IEEE 92(3).
    Arasaratnam, I. and Haykin, S. (2009). Cubature Kalman filters. IEEE Transactions on
    Automatic Control 54(6).
    Ito, K. and Xiong, K. (2000). Gaussian filters for nonlinear filtering problems. IEEE
    Transactions on Automatic Control 45(5).
    Arasaratnam, I., Haykin, S. and Elliott, R. J. (2007). Discrete-time nonlinear filtering
    algorithms using Gauss-Hermite quadrature. Proceedings of the IEEE 95(5).
    Särkkä, S. and Svensson, L. (2023). Bayesian Filtering and Smoothing, 2nd ed. Cambridge
    University Press, chapters 7-9 (statistical linear regression).
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from .._checks import is_concrete
from .._matmul import matmul, matvec, symmetrise
from .._types import Array, Float
from ..kernels._linalg import semidefinite_cholesky
from ..ssm import AbstractContinuousDiscreteSSM, StepInputs
from ._gaussian_moments import distribution_moments
from ._square_root import tria

__all__ = [
    "AbstractSigmaPointRule",
    "Affine",
    "Cubature",
    "Extended",
    "GaussHermite",
    "Unscented",
    "linearize_emission",
    "linearize_transition",
]


class Extended(eqx.Module):
    r"""First-order Taylor linearization (the extended Kalman filter's).

    $A = \partial \mu / \partial x\,(m)$ (by `jax.jacfwd`), $b = \mu(m) - A m$, and the noise
    factor is that of the distribution at $m$. The covariance of $x$ is not used.

    References:
        Jazwinski, A. H. (1970). Stochastic Processes and Filtering Theory. Academic Press.
    """

    def validate(self) -> None:
        """Nothing to check."""


class AbstractSigmaPointRule(eqx.Module):
    r"""A quadrature rule for Gaussian expectations: $E[f(x)] \approx \sum_i w_i f(x_i)$ with
    $x_i = m + L \epsilon_i$ for $x \sim N(m, L L^\top)$."""

    @abc.abstractmethod
    def unit_points(
        self, dim: int, dtype
    ) -> tuple[Float[Array, "n D"], Float[Array, " n"], Float[Array, " n"]]:
        """(unit points eps_i, mean weights, covariance weights): sigma points are m + L eps_i
        for x ~ N(m, L L^T).

        Args:
            dim: D, the dimension of x (static).
            dtype: the float dtype of the result.
        """

    def validate(self) -> None:
        """Raise a ValueError for settings that make no rule (default: accept)."""


def _constant(array: np.ndarray, dtype) -> Array:
    return jnp.asarray(np.asarray(array, np.float64), dtype)


class Unscented(AbstractSigmaPointRule):
    r"""The unscented transform: $2D + 1$ points.

    $\lambda = \alpha^2 (D + \kappa) - D$; $\epsilon_0 = 0$,
    $\epsilon_{\pm j} = \pm\sqrt{D + \lambda}\, e_j$; mean weights $w_0 = \lambda / (D + \lambda)$,
    $w_{\pm j} = 1 / (2 (D + \lambda))$; covariance weights the same except
    $w^c_0 = w_0 + 1 - \alpha^2 + \beta$.

    The defaults ($\alpha = 1$, $\beta = 0$, $\kappa = \max(3 - D, 0)$) give non-negative weights
    (with $D + \kappa = 3$, the fourth moments of a scalar Gaussian are exact, for $D \le 3$;
    for $D > 3$ it is the cubature rule). Other settings (say $\alpha = 10^{-3}$, $\beta = 2$)
    give a negative centre weight, which is handled correctly (the noise covariance is then
    summed and factored rather than formed in square-root form).

    Args:
        alpha: spread of the points, $> 0$.
        beta: prior knowledge of the distribution ($2$ is optimal for Gaussians in theory).
        kappa: secondary scaling; None for $\max(3 - D, 0)$. $D + \kappa$ must be positive.

    References:
        Julier, S. J. and Uhlmann, J. K. (2004). Unscented filtering and nonlinear estimation.
        Proceedings of the IEEE 92(3).
        Wan, E. A. and van der Merwe, R. (2000). The unscented Kalman filter for nonlinear
        estimation. IEEE AS-SPCC.
    """

    alpha: float = 1.0
    beta: float = 0.0
    kappa: float | None = None

    def __check_init__(self):
        self.validate()

    def validate(self) -> None:
        for name in ("alpha", "beta") + (() if self.kappa is None else ("kappa",)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
                raise ValueError(f"Unscented({name}=...) must be a number, got {value!r}.")
            if not np.isfinite(value):
                raise ValueError(f"Unscented({name}=...) must be finite, got {value!r}.")
        if self.alpha <= 0:
            raise ValueError(f"Unscented(alpha=...) must be positive, got {self.alpha!r}.")

    def _kappa(self, dim: int) -> float:
        return float(max(3 - dim, 0)) if self.kappa is None else float(self.kappa)

    def unit_points(self, dim: int, dtype):
        kappa = self._kappa(dim)
        if dim + kappa <= 0:
            raise ValueError(
                f"Unscented(kappa={self.kappa!r}) with D = {dim} gives D + kappa <= 0; pick "
                "kappa > -D."
            )
        alpha2 = float(self.alpha) ** 2
        spread = alpha2 * (dim + kappa)  # D + lambda
        lam = spread - dim
        eye = np.eye(dim)
        eps = np.concatenate([np.zeros((1, dim)), np.sqrt(spread) * eye, -np.sqrt(spread) * eye])
        wm = np.full(2 * dim + 1, 1.0 / (2.0 * spread))
        wm[0] = lam / spread
        wc = wm.copy()
        wc[0] = wm[0] + 1.0 - alpha2 + float(self.beta)
        return _constant(eps, dtype), _constant(wm, dtype), _constant(wc, dtype)


class Cubature(AbstractSigmaPointRule):
    r"""The spherical-radial cubature rule: $2D$ points $\pm\sqrt{D}\, e_j$, equal weights
    $1 / (2D)$; exact for polynomials of degree 3.

    References:
        Arasaratnam, I. and Haykin, S. (2009). Cubature Kalman filters. IEEE Transactions on
        Automatic Control 54(6).
    """

    def unit_points(self, dim: int, dtype):
        eye = np.eye(dim)
        eps = np.sqrt(dim) * np.concatenate([eye, -eye])
        w = np.full(2 * dim, 1.0 / (2 * dim))
        return _constant(eps, dtype), _constant(w, dtype), _constant(w, dtype)


class GaussHermite(AbstractSigmaPointRule):
    r"""The tensor-product Gauss-Hermite rule: `order`$^D$ points, exact for polynomials of
    degree up to $2\,\text{order} - 1$ in each coordinate.

    The one-dimensional nodes and weights are those of the probabilists' Hermite polynomials
    (weight $e^{-x^2/2}$), normalised to sum to one. The number of points grows as
    order$^D$: use it for small D.

    Args:
        order: points per dimension, at least 1 (1 is the extended filter's mean, at the mean).

    References:
        Ito, K. and Xiong, K. (2000). Gaussian filters for nonlinear filtering problems. IEEE
        Transactions on Automatic Control 45(5).
    """

    order: int = 3

    def __check_init__(self):
        self.validate()

    def validate(self) -> None:
        order = self.order
        if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1:
            raise ValueError(f"GaussHermite(order=...) must be a positive int, got {order!r}.")

    def unit_points(self, dim: int, dtype):
        nodes, weights = np.polynomial.hermite_e.hermegauss(int(self.order))
        weights = weights / weights.sum()
        eps = np.array(list(itertools.product(nodes, repeat=dim))).reshape(-1, dim)
        w = np.prod(np.array(list(itertools.product(weights, repeat=dim))).reshape(-1, dim), 1)
        return _constant(eps, dtype), _constant(w, dtype), _constant(w, dtype)


RULES = (Extended, AbstractSigmaPointRule)


def check_rule(rule, owner: str) -> None:
    """Raise a clear error for a linearization object that is not a rule, or a bad rule."""
    if not isinstance(rule, RULES):
        raise TypeError(
            f"{owner}(linearization=...) must be a linearization rule (bs.Extended(), "
            f"bs.Unscented(), bs.Cubature() or bs.GaussHermite(order)), got "
            f"{type(rule).__name__}: {rule!r}."
        )
    rule.validate()


class Affine(NamedTuple):
    """y ≈ matrix @ x + offset + e, e ~ N(0, chol chol^T)."""

    matrix: Float[Array, "K D"]
    offset: Float[Array, " K"]
    chol: Float[Array, "K K"]


def linearize(
    rule,
    moments: Callable[[Float[Array, " D"]], tuple[Float[Array, " K"], Float[Array, "K K"]]],
    mean: Float[Array, " D"],
    chol: Float[Array, "D D"],
) -> Affine:
    r"""Linearize a conditional distribution, given by `moments(x) -> (mu(x), Sigma(x)^{1/2})`,
    around $x \sim N(\text{mean}, \text{chol}\,\text{chol}^\top)$ by `rule`."""
    if isinstance(rule, Extended):

        def mean_and_aux(x):
            mu, noise = moments(x)
            return mu, (mu, noise)

        matrix, (mu, noise) = jax.jacfwd(mean_and_aux, has_aux=True)(mean)
        return Affine(matrix, mu - matvec(matrix, mean), noise)
    if isinstance(rule, AbstractSigmaPointRule):
        return _statistical_linear_regression(rule, moments, mean, chol)
    check_rule(rule, "linearize")  # raises
    raise AssertionError  # pragma: no cover


def _all_non_negative(*weights) -> bool:
    return all(is_concrete(w) and bool(np.all(np.asarray(w) >= 0)) for w in weights)


class SigmaPoints(NamedTuple):
    r"""A conditional distribution's moments evaluated at the sigma points of $N(m, L L^\top)$.

    `noise` is the shared factor (K, K) when the conditional covariance does not depend on x
    (`shared_noise`, decided when tracing), else one factor per point (n, K, K)."""

    eps: Float[Array, "n D"]
    mean_weights: Float[Array, " n"]
    cov_weights: Float[Array, " n"]
    mean: Float[Array, " K"]  # E[mu(x)]
    deviations: Float[Array, "n K"]  # mu(x_i) - E[mu(x)]
    noise: Array
    shared_noise: bool

    def noise_columns(self) -> Float[Array, "K k"]:
        """A factor of E[Sigma(x)] (not triangular): the shared factor, or the weighted
        per-point factors side by side."""
        if self.shared_noise:
            return self.noise
        K = self.mean.shape[0]
        weighted = jnp.sqrt(self.mean_weights)[:, None, None] * self.noise
        return jnp.transpose(weighted, (1, 0, 2)).reshape(K, -1)

    def weighted_deviations(self) -> Float[Array, "K n"]:
        """Columns sqrt(w^c_i) (mu(x_i) - E[mu]): a factor of Cov[mu(x)]."""
        return (jnp.sqrt(self.cov_weights)[:, None] * self.deviations).T


def sigma_points(rule, moments, mean: Float[Array, " D"], chol: Float[Array, "D D"]) -> SigmaPoints:
    """Evaluate `moments` at the rule's sigma points of N(mean, chol chol^T)."""
    eps, wm, wc = _unit_points(rule, mean.shape[0], mean.dtype)
    points = mean + matmul(eps, chol.T)  # (n, D)
    try:  # a covariance that does not depend on x is kept once (ValueError: it does)
        mus, noise = jax.vmap(moments, out_axes=(0, None))(points)
        shared = True
    except ValueError:
        mus, noise = jax.vmap(moments)(points)
        shared = False
    mu_bar = matvec(mus.T, wm)
    return SigmaPoints(eps, wm, wc, mu_bar, mus - mu_bar, noise, shared)


def _unit_points(rule, dim: int, dtype) -> tuple[Array, Array, Array]:
    """The rule's unit points and weights as concrete arrays, also under `jit` (where they would
    otherwise be staged out as tracers, and their signs unknown)."""
    with jax.ensure_compile_time_eval():
        return tuple(jnp.asarray(a, dtype) for a in rule.unit_points(dim, dtype))


def sigma_points_are_factors(rule, dim: int, dtype) -> bool:
    """Whether the rule's weights are all non-negative (known when tracing), so that weighted
    deviations are factors of the covariances they sum to."""
    _, wm, wc = _unit_points(rule, dim, dtype)
    return _all_non_negative(wm, wc)


def _right_divide_by_factor(G: Float[Array, "K D"], chol: Float[Array, "D D"]) -> Array:
    """G chol^+: a triangular solve when chol is lower triangular with pivots clear of zero
    (the usual case), the pseudo-inverse (an SVD) otherwise (a singular covariance)."""
    D = chol.shape[0]
    pivots = jnp.abs(jnp.diagonal(chol))
    tol = 10 * D * jnp.finfo(chol.dtype).eps * jnp.max(pivots)
    regular = (jnp.min(pivots) > tol) & jnp.all(jnp.triu(chol, 1) == 0)
    safe = jnp.where(regular, chol, jnp.eye(D, dtype=chol.dtype))
    return jax.lax.cond(
        regular,
        lambda: solve_triangular(safe, G.T, lower=True, trans="T").T,
        lambda: G @ jnp.linalg.pinv(chol),
    )


def _statistical_linear_regression(rule, moments, mean, chol) -> Affine:
    return slr_affine(sigma_points(rule, moments, mean, chol), mean, chol)


def slr_affine(sp: SigmaPoints, mean: Float[Array, " D"], chol: Float[Array, "D D"]) -> Affine:
    """The statistical linear regression of the sigma-point moments `sp` (taken at N(mean,
    chol chol^T))."""
    G = matmul(sp.deviations.T, sp.cov_weights[:, None] * sp.eps)  # Cov[mu, x] = G L^T
    matrix = _right_divide_by_factor(G, chol)
    spread = matmul(matrix, chol)  # = G on the range of L
    residuals = sp.deviations - matmul(sp.eps, spread.T)  # mu(x_i) - E[mu] - A (x_i - m)
    wm, wc = sp.mean_weights, sp.cov_weights
    if _all_non_negative(wm, wc):
        columns = jnp.concatenate(
            [(jnp.sqrt(wc)[:, None] * residuals).T, sp.noise_columns()], axis=1
        )
        noise = tria(columns)
    else:
        cov = residuals.T @ (wc[:, None] * residuals)
        if sp.shared_noise:
            cov = cov + sp.noise @ sp.noise.T
        else:
            cov = cov + jnp.einsum("n,nij,nkj->ik", wm, sp.noise, sp.noise)
        noise = tria(semidefinite_cholesky(symmetrise(cov)))
    return Affine(matrix, sp.mean - matvec(matrix, mean), noise)


def state_shape(model, step: StepInputs) -> tuple[int, ...]:
    """The shape of the model's state (that of a draw from p(x_0))."""
    initial = model.initial(step)
    return tuple(initial.batch_shape) + tuple(initial.event_shape)


def conditional_moments(
    method: Callable, shape: tuple[int, ...], step: StepInputs
) -> Callable[[Float[Array, " D"]], tuple[Float[Array, " K"], Float[Array, "K K"]]]:
    """x (D,) -> the flattened mean and factor of `method(x reshaped to shape, step)`."""

    def moments(x):
        mu, noise = distribution_moments(method(x.reshape(shape), step))
        return mu.astype(x.dtype), noise.astype(x.dtype)

    return moments


def linearize_transition(
    rule, model, mean: Float[Array, " D"], chol: Float[Array, "D D"], step: StepInputs
) -> Affine:
    r"""The model's transition out of `step`, $p(x_{t+1} \mid x_t)$, as an affine-Gaussian map
    around $x_t \sim N(\text{mean}, \text{chol}\,\text{chol}^\top)$.

    Continuous-discrete models (`bs.AbstractContinuousDiscreteSSM`) are linearized over the gap
    by their moment ODEs (see `bayesssm.inference._sde_moments`).

    Args:
        rule: `Extended()` or a sigma-point rule.
        model: any `bs.AbstractSSM` whose transition has a mean and covariance.
        mean: (D,) the flattened state mean.
        chol: (D, D) a square root of the state covariance (singular allowed).
        step: the `StepInputs` of the step moved from.

    Returns:
        `Affine(A (D, D), b (D,), chol Q (D, D))`.
    """
    if isinstance(model, AbstractContinuousDiscreteSSM):
        from ._sde_moments import linearize_sde_transition

        return Affine(*linearize_sde_transition(rule, model, mean, chol, step))
    shape = state_shape(model, step)
    return linearize(rule, conditional_moments(model.transition, shape, step), mean, chol)


def linearize_emission(
    rule, model, mean: Float[Array, " D"], chol: Float[Array, "D D"], step: StepInputs
) -> Affine:
    r"""The model's emission at `step`, $p(y_t \mid x_t)$, as an affine-Gaussian map around
    $x_t \sim N(\text{mean}, \text{chol}\,\text{chol}^\top)$.

    Args:
        rule: `Extended()` or a sigma-point rule.
        model: any `bs.AbstractSSM` whose emission has a mean and covariance (non-Gaussian
            emissions such as Poisson or Bernoulli through their mean and variance).
        mean: (D,) the flattened state mean.
        chol: (D, D) a square root of the state covariance (singular allowed).
        step: the `StepInputs` of the step.

    Returns:
        `Affine(H (M, D), d (M,), chol R (M, M))`, M the flattened emission size.
    """
    shape = state_shape(model, step)
    return linearize(rule, conditional_moments(model.emission, shape, step), mean, chol)
