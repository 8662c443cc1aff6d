"""Inference engines. Engines only infer; they never know a model's class, only its capabilities."""

from ._linearization import (
    AbstractSigmaPointRule,
    Cubature,
    Extended,
    GaussHermite,
    Unscented,
)
from ._particle_filter import ParticleFilterResult, ParticleHistory
from ._smoothing import ParticleSmootherResult
from .gaussian import GaussianFilter, IteratedSmoother
from .hamiltonian_smc import HamiltonianSMC, HamiltonianSMCResult, HamiltonianSmootherResult
from .kalman import Kalman
from .results import FilterResult, ForecastResult, SmootherResult
from .smc import ParticleFilter

__all__ = [
    "AbstractSigmaPointRule",
    "Cubature",
    "Extended",
    "GaussHermite",
    "GaussianFilter",
    "HamiltonianSMC",
    "HamiltonianSMCResult",
    "HamiltonianSmootherResult",
    "IteratedSmoother",
    "Unscented",
    "FilterResult",
    "ForecastResult",
    "Kalman",
    "ParticleFilter",
    "ParticleFilterResult",
    "ParticleHistory",
    "ParticleSmootherResult",
    "SmootherResult",
]
