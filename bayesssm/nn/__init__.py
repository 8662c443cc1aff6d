"""Deep structured state-space layers: `S4DLayer` (diagonal SSMs, S4D) and `DeepSSM` (a stack).

References:
    Gu, A., Gupta, A., Goel, K. and Ré, C. (2022). On the parameterization and initialization of
    diagonal state space models. NeurIPS.
    Smith, J. T. H., Warrington, A. and Linderman, S. W. (2023). Simplified state space layers for
    sequence modeling. ICLR.
"""

from ._discretise import DISCRETISATIONS, discretise
from ._hippo import INITS, diagonal_init, hippo_legs
from .s4d import MODES, S4DLayer
from .stack import DeepSSM

__all__ = [
    "DISCRETISATIONS",
    "INITS",
    "MODES",
    "DeepSSM",
    "S4DLayer",
    "diagonal_init",
    "discretise",
    "hippo_legs",
]
