"""Bad hyperparameters and bad combinations raise a clear error at construction, before tracing."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest

from bayesssm import kernels as K
from bayesssm.params import Positive

# (constructor, names of its positive hyperparameters)
POSITIVE = [
    (K.Matern12, ("variance", "lengthscale")),
    (K.Matern32, ("variance", "lengthscale")),
    (K.Matern52, ("variance", "lengthscale")),
    (K.Matern72, ("variance", "lengthscale")),
    (K.Periodic, ("variance", "lengthscale", "period")),
    (K.QuasiPeriodic, ("variance", "lengthscale", "period", "matern_lengthscale")),
    (K.SquaredExponential, ("variance", "lengthscale")),
    (K.Cosine, ("variance", "frequency")),
    (K.Constant, ("variance",)),
    (K.Wiener, ("variance",)),
    (K.IntegratedWiener, ("variance",)),
]
CASES = [(cls, name) for cls, names in POSITIVE for name in names]


@pytest.mark.parametrize(("cls", "name"), CASES, ids=lambda x: getattr(x, "__name__", x))
@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_non_positive_or_non_finite_hyperparameter(cls, name, bad):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: {name} must be a finite positive"):
        cls(**{name: bad})


@pytest.mark.parametrize(("cls", "name"), CASES, ids=lambda x: getattr(x, "__name__", x))
def test_hyperparameter_must_be_scalar(cls, name):
    with pytest.raises(ValueError, match=rf"{name} must be a scalar"):
        cls(**{name: jnp.ones(2)})


@pytest.mark.parametrize("cls", [K.Periodic, K.QuasiPeriodic, K.SquaredExponential])
@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_bad_order(cls, bad):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: order must be a positive int"):
        cls(order=bad)


def test_squared_exponential_order_limit():
    with pytest.raises(ValueError, match="order must be at most"):
        K.SquaredExponential(order=K.squared_exponential.MAX_ORDER + 1)


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (K.Wiener, "initial_variance"),
        (K.IntegratedWiener, "initial_variance"),
        (K.IntegratedWiener, "initial_slope_variance"),
    ],
)
def test_initial_variances_may_be_zero_not_negative(cls, name):
    kernel = cls(**{name: 0.0})
    assert np.all(np.isfinite(np.asarray(kernel.stationary_covariance())))
    for bad in (-1.0, np.nan):
        with pytest.raises(ValueError, match=rf"{name} must be a finite non-negative"):
            cls(**{name: bad})


def test_positive_leaves_are_accepted_as_they_are():
    lengthscale = Positive.from_value(0.3)
    kernel = K.Matern32(variance=2.0, lengthscale=lengthscale)
    assert kernel.lengthscale is lengthscale
    np.testing.assert_allclose(kernel.lengthscale.value(), 0.3, rtol=1e-14)
    bad = Positive(jnp.asarray(np.nan))
    with pytest.raises(ValueError, match="lengthscale has a non-finite unconstrained value"):
        K.Matern32(lengthscale=bad)


def test_product_needs_stationary_kernels():
    with pytest.raises(ValueError, match="Product needs stationary kernels, but Wiener"):
        K.Matern32() * K.Wiener()
    with pytest.raises(ValueError, match="but Sum is not stationary"):
        K.Cosine() * (K.Matern12() + K.IntegratedWiener())


def test_combining_with_a_non_kernel():
    with pytest.raises(TypeError):
        K.Matern32() + 1.0
    with pytest.raises(TypeError):
        K.Matern32() * np.ones(2)
    with pytest.raises(TypeError, match="Sum combines kernels"):
        K.Sum(K.Matern32(), "rbf")
    with pytest.raises(ValueError, match="at least two kernels"):
        K.Product(K.Matern32())


def test_one_argument_covariance_needs_stationarity():
    with pytest.raises(ValueError, match=re.escape("call covariance(s, t)")):
        K.Wiener().covariance(0.5)
    with pytest.raises(ValueError, match="Sum is not stationary"):
        (K.Matern12() + K.Wiener()).covariance(0.5)
