r"""Discretisation of the diagonal system $\dot x = \Lambda x + B u$ over a step $\Delta$.

References:
    Gu, A., Gupta, A., Goel, K. and Ré, C. (2022). On the parameterization and initialization of
    diagonal state space models. NeurIPS.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Complex

from .._types import Array, Float

DISCRETISATIONS = ("zoh", "bilinear")


def discretise(
    lam: Complex[Array, "*batch N"],
    B: Complex[Array, "*batch N"],
    step: Float[Array, "*batch 1"],
    method: str,
) -> tuple[Complex[Array, "*batch N"], Complex[Array, "*batch N"]]:
    r"""The discrete transition and input vectors (broadcast over the leading axes).

    "zoh" (input held constant over the step):
    $$\bar\Lambda = e^{\Lambda\Delta},\qquad \bar B = \frac{\bar\Lambda - 1}{\Lambda} B;$$
    "bilinear" (trapezoidal rule):
    $$\bar\Lambda = \frac{1 + \Lambda\Delta/2}{1 - \Lambda\Delta/2},\qquad
        \bar B = \frac{\Delta}{1 - \Lambda\Delta/2} B.$$

    Args:
        lam: eigenvalues $\Lambda$, Re < 0.
        B: input vectors.
        step: step sizes $\Delta > 0$, broadcastable against `lam`.
        method: "zoh" or "bilinear".

    Returns:
        $(\bar\Lambda, \bar B)$.
    """
    z = lam * step
    if method == "zoh":
        # expm1 keeps the digits that exp(z) - 1 loses when |z| is small (small steps)
        return jnp.exp(z), jnp.expm1(z) / lam * B
    if method == "bilinear":
        denom = 1 - z / 2
        return (1 + z / 2) / denom, step / denom * B
    raise ValueError(f"unknown discretisation {method!r}; use one of {DISCRETISATIONS}.")
