"""TimeSeries: values observed at (possibly irregular) times, with NaN for missing entries."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import is_concrete
from .._types import Array, Bool, Float
from ._time_index import (
    _TICKS_PER_SECOND,
    _UNIT_NAMES,
    _UNIT_SECONDS,
    _canonical_unit,
    _check_numeric,
    _check_times_values,
    _datetimes_to_times,
    _float_dtype_of,
    _IndexInfo,
    _is_datetime_like,
)


class TimeSeries(eqx.Module):
    r"""Values observed at strictly increasing, possibly irregular, times.

    `values[t]` is observed at `times[t]`; NaN marks a missing entry (a whole row or single
    entries). A model that works in continuous time (a Gaussian process in state-space form)
    builds one transition per gap `times[t + 1] - times[t]`; the Kalman engines condition on the
    non-NaN entries of `values`.

    A `TimeSeries` is a pytree: `times` and `values` are its array leaves, everything else is
    static metadata, so series go through `jax.jit` and `jax.vmap` (see `TimeSeries.stack` for a
    batch of series with the same length).

    Checks run in Python on concrete inputs, before any tracing. Under a JAX transformation
    (`times` or `values` are tracers) only the shapes are checked.

    Args:
        times: (T,) strictly increasing finite times, numbers or datetimes (`np.datetime64`,
            `pd.DatetimeIndex`); datetimes become float offsets from `origin` in `unit`.
        values: (T, M), or (T,) for a scalar series (kept as (T, 1); outputs for a series built
            from 1-D values come back 1-D, see `match_input_shape`). NaN = missing.
        unit: for datetime times, the unit of the float offsets (default days): "ns", "us",
            "ms", "s", "min", "h", "D", "W" or "Y" (365.25 days), or a spelled-out name such as
            "hours". For numeric times it is kept as a label only.
        origin: for datetime times, the datetime at time 0 (default: the first time).
        columns: names of the M columns (default: none).

    Raises:
        ValueError: when the shapes do not match, times are non-finite, unsorted or repeated,
            values hold infinities or non-numbers, the series is empty or all NaN.

    Example:
        ```python
        series = bs.TimeSeries([0.0, 0.5, 2.0], [1.2, np.nan, 0.7])
        series.values.shape    # (3, 1)
        series.gaps            # [0.5, 1.5]
        ```
    """

    times: Float[Array, " T"]
    values: Float[Array, "T M"]
    unit: str | None = eqx.field(static=True)
    origin: object = eqx.field(static=True)
    columns: tuple | None = eqx.field(static=True)
    squeeze: bool = eqx.field(static=True)
    index_info: _IndexInfo | None = eqx.field(static=True)

    def __init__(
        self,
        times,
        values,
        *,
        unit: str | None = None,
        origin=None,
        columns=None,
        _index_info: _IndexInfo | None = None,
    ):
        # Datetime-like times go through the same conversion as `from_pandas`.
        if is_concrete(times) and _is_datetime_like(times):
            times, unit, origin, _index_info = _datetimes_to_times(times, unit, origin)

        times_shape = tuple(np.shape(times))
        values_shape = tuple(np.shape(values))
        if len(times_shape) != 1:
            raise ValueError(
                f"times must be a 1-D array of shape (T,), got shape {times_shape}; pass one time "
                "per row of values."
            )
        if times_shape[0] < 1:
            raise ValueError("times is empty: a TimeSeries needs at least one time step (T >= 1).")
        if len(values_shape) not in (1, 2):
            raise ValueError(
                f"values must have shape (T, M), or (T,) for a scalar series; got {values_shape}."
            )
        if values_shape[0] != times_shape[0]:
            raise ValueError(
                f"times and values must have the same length T, got {times_shape[0]} times and "
                f"{values_shape[0]} rows of values (values shape {values_shape})."
            )
        if len(values_shape) == 2 and values_shape[1] < 1:
            raise ValueError(f"values must have at least one column, got shape {values_shape}.")
        squeeze = len(values_shape) == 1
        obs_dim = 1 if squeeze else values_shape[1]
        if columns is not None:
            columns = tuple(columns)
            if len(columns) != obs_dim:
                raise ValueError(
                    f"columns must name the {obs_dim} column(s) of values, got {len(columns)} "
                    f"names: {columns!r}."
                )
        if unit is not None:
            unit = _canonical_unit(unit)
        if _index_info is None and origin is not None:
            if isinstance(origin, int | float | np.integer | np.floating):
                _index_info = _IndexInfo("numeric", "float64", "", 0)
            else:  # float offsets from a datetime origin, in `unit` (default days)
                import pandas as pd

                origin = pd.Timestamp(origin)
                unit = "D" if unit is None else unit
                _index_info = _IndexInfo("datetime", "", "ns", 0)

        _check_numeric("times", times)
        _check_numeric("values", values)
        times_dtype, values_dtype = _float_dtype_of(times), _float_dtype_of(values)

        if is_concrete(times):
            raw = np.asarray(times)
            _check_times_values(raw.astype(np.float64))
            cast = np.asarray(raw, times_dtype)
            if not np.all(np.diff(cast) > 0):
                raise ValueError(
                    f"times are strictly increasing but not after conversion to {times_dtype}: "
                    "two times become equal. Enable float64 "
                    '(jax.config.update("jax_enable_x64", True)), or use a coarser unit or a later '
                    "origin so that the times are smaller."
                )
        if is_concrete(values):
            raw = np.asarray(values)
            if raw.dtype.kind == "f":
                inf = np.argwhere(np.isinf(raw.reshape(raw.shape[0], -1)))
                if inf.size:
                    row, col = (int(k) for k in inf[0])
                    raise ValueError(
                        f"values has {len(inf)} infinite entr{'y' if len(inf) == 1 else 'ies'} "
                        f"(first at row {row}, column {col}); mark missing values with NaN instead."
                    )
                if np.isnan(raw).all():
                    raise ValueError(
                        "values is all NaN: there is nothing to condition on. NaN marks missing "
                        "entries; at least one entry must be observed."
                    )

        values = jnp.asarray(values, values_dtype)
        self.times = jnp.asarray(times, times_dtype)
        self.values = values[:, None] if squeeze else values
        self.unit = unit
        self.origin = origin
        self.columns = columns
        self.squeeze = squeeze
        self.index_info = _index_info

    # -- construction from / conversion to pandas ----------------------------------------------

    @classmethod
    def from_pandas(cls, obj, unit: str | None = None, origin=None) -> TimeSeries:
        """A series from a pandas Series (M = 1) or DataFrame (M = number of columns).

        The index gives the times: a `DatetimeIndex` (or `TimedeltaIndex`) becomes float offsets
        from `origin` (default: the first timestamp) in `unit` (default days); a numeric index is
        used as it is (minus `origin` when one is given). NaN (or `pd.NA`) marks missing values.
        `to_pandas` gives the object back with the same index type, name and columns.

        Args:
            obj: a `pd.Series` or `pd.DataFrame` with numeric columns.
            unit: time unit for a datetime index: "s", "min", "h", "D" (default), "W", "Y"
                (365.25 days), "ms", "us", "ns", or spelled out ("hours"). Kept as a label for a
                numeric index.
            origin: the time 0; a timestamp (or string) for a datetime index, a number for a
                numeric index. Default: the first index entry for datetimes, 0 for numbers.

        Raises:
            TypeError: when `obj` is no pandas Series or DataFrame.
            ValueError: when the index is unsorted, repeated, missing (NaT) or of another type,
                or a column is not numeric.
        """
        import pandas as pd

        if isinstance(obj, pd.Series):
            frame, squeeze = obj.to_frame(), True
        elif isinstance(obj, pd.DataFrame):
            frame, squeeze = obj, False
        else:
            raise TypeError(
                f"from_pandas takes a pandas Series or DataFrame, got {type(obj).__name__}; for "
                "arrays use bs.TimeSeries(times, values)."
            )
        if frame.shape[1] < 1:
            raise ValueError("the DataFrame has no columns: there are no values to model.")
        bad = [
            c
            for c, dt in frame.dtypes.items()
            if pd.api.types.is_bool_dtype(dt) or not pd.api.types.is_numeric_dtype(dt)
        ]
        if bad:
            dtypes = ", ".join(f"{c!r} ({frame.dtypes[c]})" for c in bad[:5])
            raise ValueError(
                f"all columns must hold real numbers; these do not: {dtypes}. Drop them or convert "
                "them with pd.to_numeric(..., errors='coerce') (NaN = missing)."
            )
        numpy_dtypes = [np.dtype(getattr(dt, "numpy_dtype", dt)) for dt in frame.dtypes]
        dtype = np.result_type(*numpy_dtypes)
        if dtype.kind == "c":
            raise ValueError("values must hold real numbers, got complex columns.")
        if dtype.kind != "f":
            dtype = np.dtype(jax.dtypes.canonicalize_dtype(jnp.result_type(float)))
        values = frame.to_numpy(dtype=dtype, na_value=np.nan)

        index = frame.index
        if isinstance(index, pd.MultiIndex):
            raise ValueError(
                "the index is a MultiIndex; a TimeSeries needs one time per row. Select one level "
                "or reset the index."
            )
        if isinstance(index, pd.PeriodIndex):
            raise ValueError(
                "the index is a PeriodIndex; convert it first with obj.to_timestamp()."
            )
        if isinstance(index, pd.DatetimeIndex | pd.TimedeltaIndex):
            times, unit, origin, info = _datetimes_to_times(index, unit, origin)
        elif pd.api.types.is_numeric_dtype(index.dtype) and not pd.api.types.is_bool_dtype(
            index.dtype
        ):
            raw = index.to_numpy()
            _check_times_values(raw.astype(np.float64), index, "index")
            if origin is not None:
                raw = raw - origin
            times = raw
            info = _IndexInfo("numeric", str(index.dtype), "", 0, index.name)
        else:
            raise ValueError(
                f"the index must be a DatetimeIndex, TimedeltaIndex or numeric, got dtype "
                f"{index.dtype}; convert it (e.g. obj.index = pd.to_datetime(obj.index))."
            )
        info = dataclasses.replace(info, columns_name=frame.columns.name)
        return cls(
            times,
            values[:, 0] if squeeze else values,
            unit=unit,
            origin=origin,
            columns=(obj.name,) if squeeze else tuple(frame.columns),
            _index_info=info,
        )

    def to_pandas(self):
        """The series as a pandas Series (built from 1-D values or a Series) or DataFrame.

        The index has the type it was built from: datetimes (rebuilt from `origin` + `unit`,
        rounded to the original resolution), timedeltas, or numbers (the `times`). NaN marks
        missing values.
        """
        import pandas as pd

        values = np.asarray(self.values)
        index = self.to_index(self.times, _exact=True)
        if self.squeeze:
            name = self.columns[0] if self.columns else None
            return pd.Series(values[:, 0], index=index, name=name)
        columns = pd.Index(list(self.columns)) if self.columns is not None else None
        frame = pd.DataFrame(values, index=index, columns=columns)
        if self.index_info is not None and self.index_info.columns_name is not None:
            frame.columns.name = self.index_info.columns_name
        return frame

    def to_index(self, times, _exact: bool = False):
        """Float times (in this series' unit) as a pandas index of this series' index type.

        For a series built from datetimes this gives `origin + times * unit` as a
        `DatetimeIndex` (e.g. to label predictions at query times); otherwise a numeric index.
        """
        import pandas as pd

        t = np.asarray(times, dtype=np.float64).reshape(-1)
        info = self.index_info
        if info is None or info.kind == "numeric":
            origin = 0 if self.origin is None else self.origin
            raw = t + origin
            name = None if info is None else info.name
            if info is not None and np.dtype(info.dtype).kind in "iu":
                raw = np.round(raw).astype(info.dtype)
            return pd.Index(raw, name=name)
        ticks_per_unit = _UNIT_SECONDS[self.unit] * _TICKS_PER_SECOND[info.tick]
        ticks = np.round(t * ticks_per_unit)
        if _exact and info.step > 1:
            ticks = np.round(ticks / info.step) * info.step
        delta = pd.TimedeltaIndex(ticks.astype(np.int64).astype(f"timedelta64[{info.tick}]"))
        index = self.origin + delta
        if info.kind == "datetime":
            index = pd.DatetimeIndex(index, name=info.name).as_unit(info.tick)
            if _exact and info.freq is not None:
                try:
                    index = pd.DatetimeIndex(index, freq=info.freq)
                except ValueError:
                    pass
        else:
            index = pd.TimedeltaIndex(index, name=info.name).as_unit(info.tick)
        return index

    def to_times(self, query) -> np.ndarray:
        """Query times as float times of this series (same unit and origin), e.g. for `impute`.

        Datetimes (strings, `np.datetime64`, a `DatetimeIndex`) are allowed for a series built
        from datetimes; for such a series plain numbers are taken as times of the series already
        (its `times` axis) and returned as floats unchanged. For a numeric index, numbers are
        index values and are shifted by the series' origin as its times were.
        """
        import pandas as pd

        info = self.index_info
        numeric = np.asarray(query).dtype.kind in "iuf"
        if info is not None and info.kind in ("datetime", "timedelta"):
            if numeric:
                return np.asarray(query, dtype=np.float64)
            query = np.atleast_1d(np.asarray(query, dtype=object))
            if info.kind == "datetime":
                index = pd.DatetimeIndex(query)
                if index.tz is None and self.origin.tz is not None:
                    index = index.tz_localize(self.origin.tz)
            else:
                index = pd.TimedeltaIndex(query)
            try:
                delta = (index - self.origin).as_unit("ns")
            except TypeError as err:
                raise ValueError(
                    f"cannot compare the query times with the series' origin {self.origin!r} "
                    f"({str(err).rstrip('.')}); give query times in the same time zone."
                ) from None
            return delta.asi8.astype(np.float64) / (_UNIT_SECONDS[self.unit] * 1e9)
        origin = 0.0 if self.origin is None else self.origin
        return np.asarray(query, dtype=np.float64) - origin

    # -- batching ---------------------------------------------------------------------------------

    @classmethod
    def stack(cls, series) -> TimeSeries:
        """A batch of B series with the same length T, for `jax.vmap`.

        The result has `times` (B, T) and `values` (B, T, M); vmap over it (axis 0) gives one
        series per call. The series must share M and their metadata (unit, origin, columns).
        """
        series = list(series)
        if not series:
            raise ValueError("stack needs at least one TimeSeries.")
        if not all(isinstance(s, TimeSeries) for s in series):
            raise TypeError("stack takes TimeSeries objects only.")
        first = series[0]
        for k, s in enumerate(series[1:], start=1):
            if s.values.shape != first.values.shape:
                raise ValueError(
                    f"all series must have the same (T, M) to be stacked; series 0 has "
                    f"{first.values.shape}, series {k} has {s.values.shape}. Pad shorter series "
                    "with NaN values at extra times."
                )
            if jax.tree.structure(s) != jax.tree.structure(first):
                raise ValueError(
                    f"series {k} has other metadata (unit, origin, columns or index) than series 0;"
                    " stacked series must share it."
                )
        return jax.tree.map(lambda *xs: jnp.stack(xs), *series)

    # -- views ------------------------------------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        """T, the number of time steps."""
        return self.values.shape[-2]

    @property
    def obs_dim(self) -> int:
        """M, the number of values per time step."""
        return self.values.shape[-1]

    @property
    def dtype(self):
        """The dtype of `values`."""
        return self.values.dtype

    @property
    def gaps(self) -> Float[Array, " T-1"]:
        """The T - 1 gaps between consecutive times, `times[t + 1] - times[t]` (all > 0)."""
        return jnp.diff(self.times, axis=-1)

    @property
    def observed(self) -> Bool[Array, "T M"]:
        """True where a value was observed (not NaN)."""
        return ~jnp.isnan(self.values)

    def __len__(self) -> int:
        return self.num_timesteps

    def match_input_shape(self, x):
        """Drop the last axis of `x` (..., M) when this series was built from 1-D values."""
        return x[..., 0] if self.squeeze else x

    def __repr__(self) -> str:
        parts = [f"T={self.num_timesteps}", f"M={self.obs_dim}"]
        if self.times.ndim > 1:
            parts.insert(0, f"batch={self.times.shape[:-1]}")
        if is_concrete(self.times) and is_concrete(self.values):
            t = np.asarray(self.times)
            if self.index_info is not None and self.index_info.kind != "numeric":
                ends = self.to_index(np.array([t.min(), t.max()]))
                parts.append(f"time {ends[0]} .. {ends[-1]}")
                parts.append(f"unit={_UNIT_NAMES.get(self.unit, self.unit)}")
            else:
                parts.append(f"time {t.min():.6g} .. {t.max():.6g}")
                if self.unit is not None:
                    parts.append(f"unit={self.unit}")
            missing = float(np.isnan(np.asarray(self.values)).mean())
            parts.append(f"missing={100 * missing:.1f}%")
        parts.append(f"dtype={self.values.dtype}")
        if self.columns is not None and any(c is not None for c in self.columns):
            shown = ", ".join(repr(c) for c in self.columns[:6])
            parts.append(f"columns=[{shown}{', ...' if len(self.columns) > 6 else ''}]")
        return f"TimeSeries({', '.join(parts)})"
