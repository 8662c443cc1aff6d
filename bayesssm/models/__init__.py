"""Model families. Models only describe; they never run inference."""

from .gp import GPStateSpace
from .growth import NonlinearGrowth
from .linear_gaussian import LinearGaussianSSM
from .poisson_ar import PoissonAR1
from .stochastic_volatility import StochasticVolatility

__all__ = [
    "GPStateSpace",
    "LinearGaussianSSM",
    "NonlinearGrowth",
    "PoissonAR1",
    "StochasticVolatility",
]
