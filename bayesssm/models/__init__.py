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
from .latent_s4 import LatentS4, LatentS4Sample
from .linear_gaussian import LinearGaussianSSM
from .neural_cd import NCDSSM, GaussianDecoder, GaussianEncoder, LocallyLinearDrift, MLPDrift
from .poisson_ar import PoissonAR1
from .stochastic_volatility import StochasticVolatility
from .vssm import VSSM, Generation, VSSMState

__all__ = [
    "AffineDrift",
    "ContinuousDiscreteSSM",
    "EulerMaruyama",
    "GPStateSpace",
    "GaussianDecoder",
    "GaussianEncoder",
    "Generation",
    "LinearContinuousDiscreteSSM",
    "LinearGaussianEmission",
    "LatentS4",
    "LatentS4Sample",
    "LinearGaussianSSM",
    "LocallyLinearDrift",
    "MLPDrift",
    "NCDSSM",
    "NonlinearGrowth",
    "PoissonAR1",
    "StochasticVolatility",
    "VSSM",
    "VSSMState",
]
