"""Fitting the parameters of a model to data."""

from .em import EMHistory, fit_em
from .mcmc import sample_nuts
from .mle import MLEHistory, fit_mle
from .pmmh import sample_pmmh
from .smc_sampler import SMCSamplerResult, sample_smc
from .train import TrainHistory, train
from .vi import VIResult, fit_vi

__all__ = [
    "EMHistory",
    "MLEHistory",
    "fit_em",
    "fit_mle",
    "sample_nuts",
    "sample_pmmh",
    "sample_smc",
    "SMCSamplerResult",
    "TrainHistory",
    "train",
    "VIResult",
    "fit_vi",
]
