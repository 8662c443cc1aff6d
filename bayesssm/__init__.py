"""bayesssm: probabilistic state-space models in JAX.

import bayesssm as bs
model = bs.LinearGaussianSSM(A=A, Q=Q, H=H, R=R, m0=m0, P0=P0)
smoothed = bs.smooth(model, y)
"""

from . import (
    datasets,
    diagnostics,
    distributions,
    fit,
    inference,
    kernels,
    models,
    nn,
    numpyro,
    params,
)
from .data import TimeSeries
from .diagnostics import plot_posterior_predictive, plot_states, to_arviz
from .fit import EMHistory, MLEHistory, VIResult, fit_em, fit_mle, fit_vi, sample_nuts, sample_pmmh
from .fit.ppg import PPGHistory, fit_ppg
from .fit.smc_sampler import SMCSamplerResult, sample_smc
from .fit.train import TrainHistory, train
from .impute import ImputeResult, impute
from .inference import (
    AbstractSigmaPointRule,
    Cubature,
    Extended,
    FilterResult,
    ForecastResult,
    GaussHermite,
    GaussianFilter,
    HamiltonianSMC,
    HamiltonianSMCResult,
    HamiltonianSmootherResult,
    IteratedSmoother,
    Kalman,
    ParticleFilter,
    ParticleFilterResult,
    ParticleSmootherResult,
    SmootherResult,
    Unscented,
)
from .inference.paris import PaRISResult, paris
from .inference.particle_gibbs import (
    ParticleGibbsResult,
    PPGResult,
    paris_particle_gibbs,
    particle_gibbs,
)
from .models import (
    NCDSSM,
    AffineDrift,
    ContinuousDiscreteSSM,
    GPStateSpace,
    LinearContinuousDiscreteSSM,
    LinearGaussianEmission,
    LinearGaussianSSM,
)
from .params import (
    AbstractConstrained,
    Correlation,
    Covariance,
    Interval,
    Positive,
    Simplex,
    Stable,
    unwrap,
)
from .ssm import (
    AbstractContinuousDiscreteSSM,
    AbstractLinearGaussianEmission,
    AbstractLinearGaussianSSM,
    AbstractSSM,
    StepInputs,
)
from .verbs import default_engine, filter, forecast, log_marginal, sample_posterior, smooth

__version__ = "0.1.0.dev0"

__all__ = [
    "AbstractContinuousDiscreteSSM",
    "AffineDrift",
    "ContinuousDiscreteSSM",
    "LinearContinuousDiscreteSSM",
    "LinearGaussianEmission",
    "NCDSSM",
    "TrainHistory",
    "datasets",
    "train",
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
    "ImputeResult",
    "impute",
    "GPStateSpace",
    "kernels",
    "TimeSeries",
    "to_arviz",
    "plot_states",
    "plot_posterior_predictive",
    "fit",
    "diagnostics",
    "fit_mle",
    "fit_em",
    "fit_vi",
    "VIResult",
    "numpyro",
    "MLEHistory",
    "EMHistory",
    "AbstractConstrained",
    "AbstractLinearGaussianEmission",
    "AbstractLinearGaussianSSM",
    "ParticleFilter",
    "ParticleGibbsResult",
    "PPGResult",
    "PPGHistory",
    "PaRISResult",
    "distributions",
    "fit_ppg",
    "paris",
    "paris_particle_gibbs",
    "particle_gibbs",
    "sample_pmmh",
    "sample_smc",
    "SMCSamplerResult",
    "ParticleFilterResult",
    "ParticleSmootherResult",
    "AbstractSSM",
    "Correlation",
    "Interval",
    "Covariance",
    "FilterResult",
    "ForecastResult",
    "Kalman",
    "LinearGaussianSSM",
    "Positive",
    "Simplex",
    "SmootherResult",
    "Stable",
    "StepInputs",
    "default_engine",
    "filter",
    "forecast",
    "inference",
    "log_marginal",
    "models",
    "nn",
    "params",
    "sample_nuts",
    "sample_posterior",
    "smooth",
    "unwrap",
]
