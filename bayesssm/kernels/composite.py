r"""Sums and products of kernels, as state-space models built from their parts."""

from __future__ import annotations

import functools

import jax.numpy as jnp

from .._types import Array, ArrayLike, Float
from . import _linalg
from ._base import AbstractKernel


def _parts(cls, kernels: tuple) -> tuple[AbstractKernel, ...]:
    flat = []
    for k in kernels:
        if not isinstance(k, AbstractKernel):
            raise TypeError(
                f"{cls.__name__} combines kernels (bs.kernels.*), got {type(k).__name__}."
            )
        # (k1 + k2) + k3 is one Sum of three: the state stays block-diagonal, not nested.
        flat.extend(k.kernels if isinstance(k, cls) else (k,))
    if len(flat) < 2:
        raise ValueError(f"{cls.__name__} needs at least two kernels, got {len(flat)}.")
    return tuple(flat)


class Sum(AbstractKernel):
    r"""$k(s, t) = \sum_i k_i(s, t)$: independent processes added, `k1 + k2 + ...`.

    The state stacks the parts' states: $F$, $L Q_c L^\top$, $P_\infty$ and each step's $(A, Q)$
    are block-diagonal, and $H = (H_1, H_2, \dots)$. Non-stationary parts are allowed; the sum
    is then non-stationary.

    References:
        Solin (2016), Stochastic differential equation methods for spatio-temporal Gaussian process
        regression. PhD thesis, Aalto University, section 4.2.
    """

    kernels: tuple[AbstractKernel, ...]

    def __init__(self, *kernels: AbstractKernel):
        self.kernels = _parts(Sum, kernels)

    @property
    def state_dim(self) -> int:
        return sum(k.state_dim for k in self.kernels)

    @property
    def is_stationary(self) -> bool:
        return all(k.is_stationary for k in self.kernels)

    def feedback(self) -> Float[Array, "D D"]:
        return _linalg.block_diag(*(k.feedback() for k in self.kernels))

    def noise_covariance(self) -> Float[Array, "D D"]:
        return _linalg.block_diag(*(k.noise_covariance() for k in self.kernels))

    def stationary_covariance(self) -> Float[Array, "D D"]:
        return _linalg.block_diag(*(k.stationary_covariance() for k in self.kernels))

    def measurement(self) -> Float[Array, "1 D"]:
        return jnp.concatenate([k.measurement() for k in self.kernels], axis=1)

    def discretise(self, dt: ArrayLike) -> tuple[Float[Array, "D D"], Float[Array, "D D"]]:
        steps = [k.discretise(dt) for k in self.kernels]
        return _linalg.block_diag(*(a for a, _ in steps)), _linalg.block_diag(
            *(q for _, q in steps)
        )

    def discretise_factors(self, dt: ArrayLike) -> tuple[Float[Array, "D D"], Float[Array, "D D"]]:
        # Block by block: each part's factor is cheaper than one of the whole, and exact.
        steps = [k.discretise_factors(dt) for k in self.kernels]
        return _linalg.block_diag(*(a for a, _ in steps)), _linalg.block_diag(
            *(f for _, f in steps)
        )

    def _covariance(self, s: Array, t: Array) -> Array:
        return sum(k._covariance(s, t) for k in self.kernels)


class Product(AbstractKernel):
    r"""$k(\tau) = \prod_i k_i(\tau)$ of stationary kernels, `k1 * k2 * ...`.

    The state is the Kronecker product of the parts' states. For two parts:
    $F = F_1 \otimes I + I \otimes F_2$, $P_\infty = P_{\infty,1} \otimes P_{\infty,2}$,
    $H = H_1 \otimes H_2$, and the noise $L Q_c L^\top = Q_1 \otimes P_{\infty,2} +
    P_{\infty,1} \otimes Q_2$ (with $Q_i = L_i Q_{c,i} L_i^\top$), which is what makes
    $F P_\infty + P_\infty F^\top + L Q_c L^\top = 0$ hold. A step is
    $A = A_1 \otimes A_2$ (as $e^{F dt} = e^{F_1 dt} \otimes e^{F_2 dt}$) and
    $Q = P_\infty - A P_\infty A^\top$. More parts fold left to right; D is the product of the
    parts' dimensions.

    Only stationary parts: a product with `Wiener` would need time-varying noise.

    References:
        Solin (2016), Stochastic differential equation methods for spatio-temporal Gaussian process
        regression. PhD thesis, Aalto University, section 4.2.
    """

    kernels: tuple[AbstractKernel, ...]

    def __init__(self, *kernels: AbstractKernel):
        kernels = _parts(Product, kernels)
        for k in kernels:
            if not k.is_stationary:
                raise ValueError(
                    f"Product needs stationary kernels, but {type(k).__name__} is not stationary "
                    "(a product with it has no time-invariant state-space form). Add it instead."
                )
        self.kernels = kernels

    @property
    def state_dim(self) -> int:
        return functools.reduce(lambda n, k: n * k.state_dim, self.kernels, 1)

    def feedback(self) -> Float[Array, "D D"]:
        def kron_sum(a, b):
            eye_a = jnp.eye(a.shape[0], dtype=a.dtype)
            eye_b = jnp.eye(b.shape[0], dtype=b.dtype)
            return jnp.kron(a, eye_b) + jnp.kron(eye_a, b)

        return functools.reduce(kron_sum, (k.feedback() for k in self.kernels))

    def noise_covariance(self) -> Float[Array, "D D"]:
        def combine(a, b):
            (qa, pa), (qb, pb) = a, b
            return jnp.kron(qa, pb) + jnp.kron(pa, qb), jnp.kron(pa, pb)

        parts = ((k.noise_covariance(), k.stationary_covariance()) for k in self.kernels)
        return _linalg.symmetrise(functools.reduce(combine, parts)[0])

    def stationary_covariance(self) -> Float[Array, "D D"]:
        return functools.reduce(jnp.kron, (k.stationary_covariance() for k in self.kernels))

    def measurement(self) -> Float[Array, "1 D"]:
        return functools.reduce(jnp.kron, (k.measurement() for k in self.kernels))

    def discretise(self, dt: ArrayLike) -> tuple[Float[Array, "D D"], Float[Array, "D D"]]:
        transitions, propagated, stationary = [], [], []
        for k in self.kernels:
            a, q = k.discretise(dt)
            p = k.stationary_covariance()
            # A P A^T of each part is P - Q, so the parts' exact closed forms carry over.
            transitions.append(a)
            propagated.append(p - q)
            stationary.append(p)
        A = functools.reduce(jnp.kron, transitions)
        P = functools.reduce(jnp.kron, stationary)
        return A, _linalg.symmetrise(P - functools.reduce(jnp.kron, propagated))

    def _covariance(self, s: Array, t: Array) -> Array:
        return functools.reduce(
            lambda acc, k: acc * k._covariance(s, t),
            self.kernels[1:],
            self.kernels[0]._covariance(s, t),
        )
