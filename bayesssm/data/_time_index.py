"""Time units and datetime indices: how a TimeSeries turns datetimes into float times and back."""

from __future__ import annotations

import dataclasses
import datetime

import jax
import jax.numpy as jnp
import numpy as np

# Time units for datetime indices: canonical name -> length in seconds. A year is 365.25 days.
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "D": 86400.0,
    "W": 7 * 86400.0,
    "Y": 365.25 * 86400.0,
}
_UNIT_ALIASES = {
    "nanosecond": "ns",
    "nanoseconds": "ns",
    "microsecond": "us",
    "microseconds": "us",
    "millisecond": "ms",
    "milliseconds": "ms",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "m": "min",
    "minute": "min",
    "minutes": "min",
    "hour": "h",
    "hours": "h",
    "d": "D",
    "day": "D",
    "days": "D",
    "w": "W",
    "week": "W",
    "weeks": "W",
    "y": "Y",
    "year": "Y",
    "years": "Y",
}
_UNIT_NAMES = {
    "ns": "nanoseconds",
    "us": "microseconds",
    "ms": "milliseconds",
    "s": "seconds",
    "min": "minutes",
    "h": "hours",
    "D": "days",
    "W": "weeks",
    "Y": "years",
}
_TICKS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def _canonical_unit(unit: str) -> str:
    if isinstance(unit, str):
        if unit in _UNIT_SECONDS:
            return unit
        if unit.lower() in _UNIT_ALIASES:
            return _UNIT_ALIASES[unit.lower()]
    known = ", ".join(repr(u) for u in _UNIT_SECONDS)
    raise ValueError(f"unknown time unit {unit!r}; use one of {known} (a year 'Y' is 365.25 days).")


@dataclasses.dataclass(frozen=True)
class _IndexInfo:
    """How to rebuild the pandas index of a series (static, hashable metadata)."""

    kind: str  # "numeric", "datetime" or "timedelta"
    dtype: str  # numpy dtype of a numeric index, e.g. "int64"
    tick: str  # resolution of a datetime/timedelta index: "s", "ms", "us" or "ns"
    step: int  # gcd of the offsets from origin, in ticks: rebuilt times are rounded to it
    name: object = None  # the index's name
    freq: str | None = None  # DatetimeIndex.freqstr, restored when it still fits
    columns_name: object = None


def _float_dtype_of(x) -> np.dtype:
    """The float dtype an input keeps: its own if floating, JAX's default float otherwise."""
    dtype = np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return jax.dtypes.canonicalize_dtype(dtype)


def _check_numeric(name: str, x) -> None:
    dtype = np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype
    if dtype.kind not in "iuf":
        if dtype.kind == "b":
            hint = f"convert with {name}.astype(float)"
        elif dtype.kind == "c":
            hint = "pass the real part (and the imaginary part as another column)"
        else:
            hint = f"convert with np.asarray({name}, dtype=float), using NaN for missing entries"
        raise ValueError(f"{name} must hold real numbers, got dtype {dtype}; {hint}.")


def _check_times_values(times: np.ndarray, labels=None, what: str = "times") -> None:
    """Finite, strictly increasing times; `labels` (same length) names entries in messages."""

    def show(i: int) -> str:
        value = labels[i] if labels is not None else times[i]
        return f"{what}[{i}] = {value.item() if isinstance(value, np.generic) else value}"

    bad = np.flatnonzero(~np.isfinite(times))
    if bad.size:
        raise ValueError(
            f"{what} has {bad.size} non-finite entr{'y' if bad.size == 1 else 'ies'} (first: "
            f"{show(int(bad[0]))}); every time step needs a finite time. Drop those rows or give "
            "them their times."
        )
    diffs = np.diff(times)
    down = np.flatnonzero(diffs < 0)
    if down.size:
        i = int(down[0]) + 1
        raise ValueError(
            f"{what} must be strictly increasing, but {show(i)} comes after {show(i - 1)} (first "
            "offending index: "
            f"{i}); sort the data by time first (e.g. np.argsort(times), or df.sort_index())."
        )
    same = np.flatnonzero(diffs == 0)
    if same.size:
        shown = ", ".join(f"{show(int(j) + 1)} equals {what}[{int(j)}]" for j in same[:3])
        more = f" (and {same.size - 3} more)" if same.size > 3 else ""
        raise ValueError(
            f"{what} must be strictly increasing but has duplicates: {shown}{more}; aggregate rows "
            "that share a time first (e.g. df.groupby(level=0).mean())."
        )


def _is_datetime_like(x) -> bool:
    """Datetimes or timedeltas: numpy datetime64/timedelta64, pandas indices, Python datetimes."""
    if isinstance(x, jax.Array):
        return False
    dtype = getattr(x, "dtype", None)
    if dtype is not None and ("datetime" in str(dtype) or "timedelta" in str(dtype)):
        return True
    raw = np.asarray(x)
    if raw.dtype.kind in "mM":
        return True
    return (
        raw.dtype == object
        and raw.size > 0
        and isinstance(raw.flat[0], datetime.date | datetime.timedelta)
    )


def _datetimes_to_times(index, unit, origin):
    """(times, unit, origin, index info) for datetime or timedelta times."""
    import pandas as pd

    if not isinstance(index, pd.DatetimeIndex | pd.TimedeltaIndex):
        raw = np.asarray(index)
        if raw.ndim != 1:
            raise ValueError(f"times must be a 1-D array of shape (T,), got shape {raw.shape}.")
        kind = raw.dtype.kind
        index = pd.TimedeltaIndex(raw) if kind == "m" else pd.DatetimeIndex(raw)
    is_datetime = isinstance(index, pd.DatetimeIndex)
    if len(index) < 1:
        raise ValueError("times is empty: a TimeSeries needs at least one time step (T >= 1).")
    unit = _canonical_unit("D" if unit is None else unit)
    if index.hasnans:
        first = int(np.flatnonzero(index.isna())[0])
        raise ValueError(
            f"the time index has missing entries (NaT), first at position {first}; drop those "
            "rows or give them their times."
        )
    # Offsets in integer ticks of the index's resolution: exact, then one float division.
    if origin is None:
        origin = index[0]
    else:
        origin = pd.Timestamp(origin) if is_datetime else pd.Timedelta(origin)
        if is_datetime and index.tz is not None and origin.tz is None:
            origin = origin.tz_localize(index.tz)
    try:
        delta = index - origin
    except TypeError as err:
        raise ValueError(
            f"origin {origin!r} does not fit the index: {err}. Give an origin with the same time "
            "zone as the index."
        ) from None
    tick = str(index.unit)
    offsets = delta.as_unit(tick).asi8
    _check_times_values(offsets.astype(np.float64), index, "index")
    step = int(np.gcd.reduce(np.abs(offsets - offsets[0]))) if len(offsets) > 1 else 0
    times = offsets.astype(np.float64) / (_UNIT_SECONDS[unit] * _TICKS_PER_SECOND[tick])
    freq = index.freqstr if is_datetime else None
    info = _IndexInfo("datetime" if is_datetime else "timedelta", "", tick, step, index.name, freq)
    return times, unit, origin, info
