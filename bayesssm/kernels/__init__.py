r"""Gaussian-process kernels as linear SDEs (state-space form), for `bs.GPStateSpace`.

Every kernel gives the matrices of $\mathrm{d}x = F x\,\mathrm{d}t + L\,\mathrm{d}\beta$,
$f = H x$ (`feedback`, `noise_covariance`, `stationary_covariance`, `measurement`), its exact
covariance function (`covariance`) and the exact discretisation of a step (`discretise`).
Kernels combine with `+` and `*`. See `_base` for the conventions.
"""

from ._base import AbstractKernel, AbstractSDEKernel, AbstractStationaryKernel
from .composite import Product, Sum
from .constant import Bias, Constant
from .cosine import Cosine
from .matern import Matern12, Matern32, Matern52, Matern72
from .periodic import Periodic, QuasiPeriodic
from .squared_exponential import SquaredExponential
from .wiener import IntegratedWiener, Wiener

__all__ = [
    "AbstractKernel",
    "AbstractSDEKernel",
    "AbstractStationaryKernel",
    "Bias",
    "Constant",
    "Cosine",
    "IntegratedWiener",
    "Matern12",
    "Matern32",
    "Matern52",
    "Matern72",
    "Periodic",
    "Product",
    "QuasiPeriodic",
    "SquaredExponential",
    "Sum",
    "Wiener",
]
