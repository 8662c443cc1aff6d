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
from .neural_cd import NCDSSM, GaussianDecoder, GaussianEncoder, LocallyLinearDrift, MLPDrift
from .poisson_ar import PoissonAR1
from .stochastic_volatility import StochasticVolatility

__all__ = [
    "AffineDrift",
    "ContinuousDiscreteSSM",
    "EulerMaruyama",
    "GPStateSpace",
    "GaussianDecoder",
    "GaussianEncoder",
    "LinearContinuousDiscreteSSM",
    "LinearGaussianEmission",
    "LinearGaussianSSM",
    "LocallyLinearDrift",
    "MLPDrift",
    "NCDSSM",
    "NonlinearGrowth",
    "PoissonAR1",
    "StochasticVolatility",
]
