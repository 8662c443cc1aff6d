r"""Gaussian transitions of a continuous-discrete model over one observation gap: moment ODEs.

Over a gap $[t_0, t_0 + \Delta]$ the SDE $\mathrm{d}x = f(x, t)\,\mathrm{d}t + L(x, t)\,
\mathrm{d}W$, started from $x(t_0) \sim N(m_0, P_0)$, is replaced by an affine-Gaussian step
$x(t_0 + \Delta) \approx A x(t_0) + b + w$, $w \sim N(0, Q)$, whose joint moments with the start
match those of the approximate (assumed-density) moment ODEs. The ODE state is
$(m, \Phi, Q)$ with $m(t_0) = m_0$, $\Phi(t_0) = I$, $Q(t_0) = 0$:

$$\dot m = \bar f,\qquad \dot\Phi = \hat F \Phi,\qquad
    \dot Q = \hat F Q + Q \hat F^\top + \overline{L L^\top},$$

so that $P = \Phi P_0 \Phi^\top + Q$ is the covariance of $x(t)$ and $C = \Phi P_0$ its
cross-covariance with the start. Then $A = \Phi(t_0 + \Delta)$ ($= C^\top P_0^{-1}$ without any
inverse, so singular $P_0$ is fine), $b = m - A m_0$, and $Q$ is integrated directly (no
cancellation in $P - A P_0 A^\top$; factored by a pivoted Cholesky, so singular $L$ is fine).

- **Extended** (first order): $\bar f = f(m, t)$, $\hat F = \partial f / \partial x$ at $m$,
  $\overline{L L^\top} = L(m, t) L(m, t)^\top$.
- **Sigma points** $x_i = m + S \epsilon_i$, $S S^\top = P$: $\bar f = \sum_i w_i f(x_i)$,
  $\overline{L L^\top} = \sum_i w_i L(x_i) L(x_i)^\top$ and $\hat F = G S^{+}$ with
  $G = \sum_i w^c_i (f(x_i) - \bar f)\,\epsilon_i^\top$, so that
  $\hat F P = E[f(x)(x - m)^\top]$ and $\dot P = E[f (x - m)^\top] + E[(x - m) f^\top]
  + E[L L^\top]$, the Gaussian assumed-density moment equations.

The ODEs are solved by diffrax (the model's solver, Tsit5 by default, with a PID step-size
controller and the model's tolerances). A linear SDE (`model.exact_transition`) is discretised
exactly whatever the rule.

References:
    Jazwinski, A. H. (1970). Stochastic Processes and Filtering Theory. Academic Press.
    Särkkä, S. and Solin, A. (2019). Applied Stochastic Differential Equations. Cambridge
    University Press, chapters 9 and 10 (Gaussian assumed-density approximations).
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp

from .._matmul import symmetrise
from .._types import Array, Float
from ..kernels._linalg import semidefinite_cholesky
from ..ssm import AbstractContinuousDiscreteSSM, StepInputs
from ._square_root import tria


def linearize_sde_transition(
    rule,
    model: AbstractContinuousDiscreteSSM,
    mean: Float[Array, " D"],
    chol: Float[Array, "D D"],
    step: StepInputs,
) -> tuple[Float[Array, "D D"], Float[Array, " D"], Float[Array, "D D"]]:
    r"""(A, b, chol_Q) of the model's transition over the gap step.dt, starting from
    $x \sim N(\text{mean}, \text{chol}\,\text{chol}^\top)$.

    Args:
        rule: `Extended()` (Jacobians), or a sigma-point rule with
            `unit_points(dim, dtype) -> (eps (n, D), mean_weights (n,), cov_weights (n,))`
            (unit points of zero mean and identity covariance; sigma points are
            $m + S \epsilon_i$).
        model: an `AbstractContinuousDiscreteSSM`: its `gap(step) -> (t0, dt)`,
            `ode_settings() -> (solver, rtol, atol, max_steps)` and
            `exact_transition(step) -> (A, b, chol_Q) | None` (used when not None, whatever
            the rule).
        mean: (D,) the mean at the start of the gap.
        chol: (D, D) a square root of the covariance at the start (singular allowed).
        step: the `StepInputs` of the step the transition moves from.

    Returns:
        A (D, D), b (D,) and a lower-triangular chol_Q (D, D), in the dtype of `mean`.
    """
    params = model.exact_transition(step)
    if params is not None:
        return params
    t0, dt = (jnp.asarray(a, mean.dtype) for a in model.gap(step))
    unit_points = getattr(rule, "unit_points", None)
    if unit_points is None:
        field = _extended_field(model)
    else:
        eps, wm, wc = (jnp.asarray(a, mean.dtype) for a in unit_points(mean.shape[0], mean.dtype))
        field = _sigma_point_field(model, chol, eps, wm, wc)
    m, Phi, Q = solve_moments(model, field, mean, t0, dt)
    return Phi, m - Phi @ mean, tria(semidefinite_cholesky(symmetrise(Q)))


def solve_moments(model, field, mean: Float[Array, " D"], t0, dt):
    r"""Integrate the moment ODE `field(t, (m, Phi, Q))` from $(m_0, I, 0)$ over
    $[t_0, t_0 + \Delta]$; returns $(m, \Phi, Q)$ at the end.

    The state travels as one flat vector (one array through the solver's stages and error
    norm, which keeps the compiled program small)."""
    solver, rtol, atol, max_steps = _settings(model, mean.dtype)
    D = mean.shape[0]

    def unpack(y):
        return y[:D], y[D : D + D * D].reshape(D, D), y[D + D * D :].reshape(D, D)

    def flat_field(t, y, args):
        return jnp.concatenate([a.reshape(-1) for a in field(t, unpack(y))])

    y0 = jnp.concatenate(
        [mean, jnp.eye(D, dtype=mean.dtype).reshape(-1), jnp.zeros(D * D, mean.dtype)]
    )
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(flat_field),
        solver,
        t0,
        t0 + dt,
        None,
        y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps,
    )
    return unpack(solution.ys[-1])


def _extended_field(model):
    def field(t, state):
        m, Phi, Q = state
        F = jax.jacfwd(model.drift)(m, t)
        L = model.diffusion(m, t)
        FQ = F @ Q
        return model.drift(m, t), F @ Phi, FQ + FQ.T + L @ L.T

    return field


def _sigma_point_field(model, chol0, eps, wm, wc):
    root0 = chol0

    def field(t, state):
        m, Phi, Q = state
        PhiS = Phi @ root0
        S = semidefinite_cholesky(PhiS @ PhiS.T + Q)
        points = m + eps @ S.T  # (n, D)
        fs = jax.vmap(model.drift, in_axes=(0, None))(points, t)
        Ls = jax.vmap(model.diffusion, in_axes=(0, None))(points, t)
        f_mean = wm @ fs
        G = (wc[:, None] * (fs - f_mean)).T @ eps  # E[f (x - m)^T] = G S^T
        F = G @ jnp.linalg.pinv(S)
        LL = jnp.einsum("n,nij,nkj->ik", wm, Ls, Ls)
        FQ = F @ Q
        return f_mean, F @ Phi, FQ + FQ.T + symmetrise(LL)

    return field


def _settings(model, dtype):
    """The model's ODE settings, tolerances raised to at least 100 eps of the dtype."""
    solver, rtol, atol, max_steps = model.ode_settings()
    floor = 100 * float(jnp.finfo(dtype).eps)
    return solver, max(rtol, floor), max(atol, floor), max_steps
