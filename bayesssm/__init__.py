"""bayesssm: probabilistic state-space models in JAX.

import bayesssm as bs
model = bs.LinearGaussianSSM(A=A, Q=Q, H=H, R=R, m0=m0, P0=P0)
smoothed = bs.smooth(model, y)
"""

from . import inference, models, params
from .inference import FilterResult, ForecastResult, Kalman, SmootherResult
from .models import LinearGaussianSSM
from .params import AbstractConstrained, Covariance, unwrap
from .ssm import AbstractLinearGaussianSSM, AbstractSSM, StepInputs
from .verbs import default_engine, filter, forecast, log_marginal, sample_posterior, smooth

__version__ = "0.1.0.dev0"

__all__ = [
    "AbstractConstrained",
    "AbstractLinearGaussianSSM",
    "AbstractSSM",
    "Covariance",
    "FilterResult",
    "ForecastResult",
    "Kalman",
    "LinearGaussianSSM",
    "SmootherResult",
    "StepInputs",
    "default_engine",
    "filter",
    "forecast",
    "inference",
    "log_marginal",
    "models",
    "params",
    "sample_posterior",
    "smooth",
    "unwrap",
]
