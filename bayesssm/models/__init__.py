"""Model families. Models only describe; they never run inference."""

from .gp import GPStateSpace
from .linear_gaussian import LinearGaussianSSM

__all__ = ["GPStateSpace", "LinearGaussianSSM"]
