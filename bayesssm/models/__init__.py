"""Model families. Models only describe; they never run inference."""

from .continuous_discrete import (
    AffineDrift,
    ContinuousDiscreteSSM,
    EulerMaruyama,
    LinearContinuousDiscreteSSM,
    LinearGaussianEmission,
)
from .gp import GPStateSpace
from .growth import NonlinearGrowth
from .linear_gaussian import LinearGaussianSSM
from .poisson_ar import PoissonAR1
from .stochastic_volatility import StochasticVolatility

__all__ = [
    "AffineDrift",
    "ContinuousDiscreteSSM",
    "EulerMaruyama",
    "GPStateSpace",
    "LinearContinuousDiscreteSSM",
    "LinearGaussianEmission",
    "LinearGaussianSSM",
    "NonlinearGrowth",
    "PoissonAR1",
    "StochasticVolatility",
]
