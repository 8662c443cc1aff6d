"""Inference engines. Engines only infer; they never know a model's class, only its capabilities."""

from .kalman import Kalman
from .results import FilterResult, ForecastResult, SmootherResult

__all__ = ["FilterResult", "ForecastResult", "Kalman", "SmootherResult"]
