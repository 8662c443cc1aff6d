r"""The sigma-point Kalman filter's predict and update straight from the sigma points.

With non-negative weights, the weighted deviations $\sqrt{w^c_i}\,(\mu(x_i) - \bar\mu)$ are a
factor of the covariance of $\mu(x)$, so each step needs one QR and no regression matrix:

- predict: $P^- = \operatorname{tria}[\sqrt{w^c_i}(f(x_i) - \bar f),\ Q^{1/2}]$;
- update: one QR of the joint factor of $(y, x)$,
  $\begin{bmatrix} \sqrt{w^c_i}(h(x_i) - \bar h) & R^{1/2} \\ \sqrt{w^c_i} L \epsilon_i & 0
  \end{bmatrix}$, whose triangular form holds $S^{1/2}$, the gain factor and the posterior
  factor (the square-root unscented filter of van der Merwe and Wan, by QR).

Both equal the statistical linear regression followed by the affine square-root Kalman step
(`_linearization.slr_affine`, `_square_root.predict` / `update`) in exact arithmetic; the
regression matrices are still formed when a smoother needs them.

References:
    van der Merwe, R. and Wan, E. A. (2001). The square-root unscented Kalman filter for state
    and parameter-estimation. ICASSP.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._matmul import matmul, matvec
from .._types import Array, Bool, Float
from ._linearization import SigmaPoints
from ._square_root import Update, innovation_log_likelihood, log_abs_det, solve_lower, tria


def sigma_predict(sp: SigmaPoints) -> tuple[Float[Array, " D"], Float[Array, "D D"]]:
    """Mean and factor of x_{t+1} from the transition's sigma-point moments at x_t."""
    return sp.mean, tria(jnp.concatenate([sp.weighted_deviations(), sp.noise_columns()], axis=1))


def sigma_update(
    sp: SigmaPoints,
    mean: Float[Array, " D"],
    chol: Float[Array, "D D"],
    y: Float[Array, " M"],
    observed: Bool[Array, " M"],
) -> Update:
    """Condition N(mean, chol chol^T) on the observed entries of y, from the emission's
    sigma-point moments `sp` taken at that distribution. Missing entries get zero rows and a
    unit noise row (as in `_square_root.update_factors`), so nothing non-finite there leaks."""
    M, D = sp.mean.shape[0], mean.shape[0]
    keep = observed[:, None]
    dev_y = jnp.where(keep, sp.weighted_deviations(), 0.0)
    noise = jnp.where(keep, sp.noise_columns(), 0.0)
    unit = jnp.diag(jnp.where(observed, 0.0, 1.0).astype(mean.dtype))
    dev_x = matmul(chol, (jnp.sqrt(sp.cov_weights)[:, None] * sp.eps).T)  # (D, n)
    top = jnp.concatenate([dev_y, noise, unit], axis=1)
    bottom = jnp.concatenate([dev_x, jnp.zeros((D, noise.shape[1] + M), mean.dtype)], axis=1)
    joint = tria(jnp.concatenate([top, bottom], axis=0))
    chol_S, gain_factor, chol_post = joint[:M, :M], joint[M:, :M], joint[M:, M:]
    residual = jnp.where(observed, y - sp.mean, 0.0)
    z = solve_lower(chol_S, residual)
    log_likelihood = innovation_log_likelihood(z, log_abs_det(chol_S), observed)
    return Update(mean + matvec(gain_factor, z), chol_post, chol_S, gain_factor, z, log_likelihood)
