"""Parallel-in-time square-root Kalman filter, smoother and path sampler (associative scans).

The filter combines the elements p(x_t | x_{t-1}, y_t) and p(y_t | x_{t-1}) in square-root form;
the smoother and sampler compose the affine backward kernels.

References:
    Särkkä, S. and García-Fernández, Á. F. (2021). Temporal parallelization of Bayesian smoothers.
    IEEE Transactions on Automatic Control.
    Yaghoobi, F., Corenflos, A., Hassan, S. and Särkkä, S. (2022). Parallel square-root
    statistical linear regression for inference in nonlinear state space models. arXiv:2207.00426.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._types import Array, Float, Key
from ..data import Observations
from ..ssm import AbstractLinearGaussianSSM
from ._associative_scan import associative_scan
from ._square_root import (
    BackwardKernel,
    predict,
    solve_lower,
    solve_lower_transposed,
    tria,
    update,
)


class FilterElement(NamedTuple):
    r"""p(x_j | x_i, y_{i+1:j}) = N(A x_i + b, U U^T) and p(y_{i+1:j} | x_i) \propto
    exp(-x^T Z Z^T x / 2 + eta^T x)."""

    A: Float[Array, "D D"]
    b: Float[Array, " D"]
    U: Float[Array, "D D"]
    eta: Float[Array, " D"]
    Z: Float[Array, "D D"]


def _element(model: AbstractLinearGaussianSSM, prev, here, y, observed) -> FilterElement:
    A, b, chol_Q = model.transition_params(prev)
    H, d, chol_R = model.emission_params(here)
    up = update(b, chol_Q, H, d, chol_R, y, observed)
    W = solve_lower(up.chol_S, (H * observed[:, None].astype(H.dtype)) @ A)  # (M, D)
    M, D = W.shape
    Z = tria(W.T) if M > D else jnp.concatenate([W.T, jnp.zeros((D, D - M), W.dtype)], axis=1)
    return FilterElement(A - up.gain_factor @ W, up.mean, up.chol, W.T @ up.whitened_residual, Z)


def _combine(first: FilterElement, second: FilterElement) -> FilterElement:
    A1, b1, U1, eta1, Z1 = first
    A2, b2, U2, eta2, Z2 = second
    D = b1.shape[0]
    eye, zero = jnp.eye(D, dtype=b1.dtype), jnp.zeros((D, D), b1.dtype)
    xi = tria(jnp.block([[U1.T @ Z2, eye], [Z2, zero]]))
    xi11, xi21, xi22 = xi[:D, :D], xi[D:, :D], xi[D:, D:]
    # T = (I + C1 J2)^{-1} = I - U1 xi11^{-T} xi21^T, never forming C1 or J2.
    T = eye - U1 @ solve_lower_transposed(xi11, xi21.T)
    A2T = A2 @ T
    b = A2T @ (b1 + U1 @ (U1.T @ eta2)) + b2
    U = tria(jnp.concatenate([A2 @ solve_lower(xi11, U1.T).T, U2], axis=1))
    eta = A1.T @ (T.T @ (eta2 - Z2 @ (Z2.T @ b1))) + eta1
    Z = tria(jnp.concatenate([A1.T @ xi22, Z1], axis=1))
    return FilterElement(A2T @ A1, b, U, eta, Z)


def filter_parallel(model: AbstractLinearGaussianSSM, data: Observations):
    """Same outputs as `filter_sequential`, in O(log T) span."""
    first_step = data.step(0)
    m0, chol_P0 = model.initial_params(first_step)
    H0, d0, chol_R0 = model.emission_params(first_step)
    first = update(m0, chol_P0, H0, d0, chol_R0, data.values[0], data.observed[0])
    D = m0.shape[0]
    zeros = jnp.zeros((D, D), m0.dtype)
    head = FilterElement(zeros, first.mean, first.chol, jnp.zeros_like(m0), zeros)

    prev = jax.tree.map(lambda a: a[:-1], data.steps)
    here = jax.tree.map(lambda a: a[1:], data.steps)
    rest = jax.vmap(lambda p, h, y, o: _element(model, p, h, y, o))(
        prev, here, data.values[1:], data.observed[1:]
    )
    elements = jax.tree.map(lambda h, r: jnp.concatenate([h[None], r]), head, rest)
    scanned = associative_scan(jax.vmap(_combine), elements)
    means, chols = scanned.b, scanned.U

    # Predicted moments and per-step likelihoods are independent across t given the filter.
    def predicted(mean, chol, p, h, y, o):
        mean_pred, chol_pred = predict(mean, chol, *model.transition_params(p))
        up = update(mean_pred, chol_pred, *model.emission_params(h), y, o)
        return mean_pred, chol_pred, up.log_likelihood

    mean_pred, chol_pred, lls = jax.vmap(predicted)(
        means[:-1], chols[:-1], prev, here, data.values[1:], data.observed[1:]
    )
    return (
        means,
        chols,
        jnp.concatenate([first.log_likelihood[None], lls]),
        jnp.concatenate([m0[None], mean_pred]),
        jnp.concatenate([chol_P0[None], chol_pred]),
    )


def _compose_kernels(later: BackwardKernel, earlier: BackwardKernel) -> BackwardKernel:
    """x_t = G_e (G_l x + g_l + L_l e) + g_e + L_e e'."""
    return BackwardKernel(
        earlier.gain @ later.gain,
        earlier.gain @ later.offset + earlier.offset,
        tria(jnp.concatenate([earlier.gain @ later.chol, earlier.chol], axis=1)),
    )


def _with_last(kernels: BackwardKernel, last_mean, last_chol) -> BackwardKernel:
    last = BackwardKernel(jnp.zeros_like(last_chol), last_mean, last_chol)
    return jax.tree.map(lambda k, l: jnp.concatenate([k, l[None]]), kernels, last)


def smooth_parallel(kernels: BackwardKernel, last_mean, last_chol):
    """Smoothed means and factors by a reverse associative scan over the backward kernels."""
    composed = associative_scan(
        jax.vmap(_compose_kernels), _with_last(kernels, last_mean, last_chol), reverse=True
    )
    return composed.offset, composed.chol


def sample_parallel(
    key: Key, kernels: BackwardKernel, last_mean, last_chol, num_samples: int
) -> Float[Array, "S T D"]:
    """Backward sampling as a reverse associative scan over affine maps x_t = G x_{t+1} + h_t."""
    full = _with_last(kernels, last_mean, last_chol)
    num_steps, D = full.offset.shape
    noise = jax.random.normal(key, (num_steps, num_samples, D), last_mean.dtype)
    shifts = full.offset[:, None, :] + jnp.einsum("tij,tsj->tsi", full.chol, noise)

    def compose(later, earlier):
        (gain_l, shift_l), (gain_e, shift_e) = later, earlier
        return gain_e @ gain_l, shift_l @ gain_e.T + shift_e

    _, paths = associative_scan(jax.vmap(compose), (full.gain, shifts), reverse=True)
    return jnp.swapaxes(paths, 0, 1)
