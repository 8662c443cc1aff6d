"""Data as users give it (`TimeSeries`) and as engines see it (`Observations`)."""

from ._observations import Observations, check_observations, model_dtype, observations
from ._timeseries import TimeSeries

__all__ = ["Observations", "TimeSeries", "check_observations", "model_dtype", "observations"]
