"""Model families. Models only describe; they never run inference."""

from .linear_gaussian import LinearGaussianSSM

__all__ = ["LinearGaussianSSM"]
