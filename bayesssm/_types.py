"""Shape-typed aliases used in signatures (jaxtyping)."""

from typing import TypeAlias

import jax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

Scalar: TypeAlias = Float[Array, ""]
Key: TypeAlias = PRNGKeyArray
Observations: TypeAlias = Float[Array, "T M"]
ObservationMask: TypeAlias = Bool[Array, "T M"]
Controls: TypeAlias = Float[Array, "T U"]
ArrayLike: TypeAlias = jax.typing.ArrayLike

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Controls",
    "Float",
    "Int",
    "Key",
    "ObservationMask",
    "Observations",
    "Scalar",
]
