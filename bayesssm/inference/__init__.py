"""Inference engines. Engines only infer; they never know a model's class, only its capabilities."""

from ._particle_filter import ParticleFilterResult, ParticleHistory
from ._smoothing import ParticleSmootherResult
from .kalman import Kalman
from .results import FilterResult, ForecastResult, SmootherResult
from .smc import ParticleFilter

__all__ = [
    "FilterResult",
    "ForecastResult",
    "Kalman",
    "ParticleFilter",
    "ParticleFilterResult",
    "ParticleHistory",
    "ParticleSmootherResult",
    "SmootherResult",
]
