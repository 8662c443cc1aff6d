"""bs.TimeSeries: construction, validation, pandas round trips, pytree behaviour, dtypes, repr."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from bayesssm import TimeSeries

# -- construction from arrays ------------------------------------------------------------------


def test_from_1d_arrays():
    times = np.array([0.0, 0.5, 2.0, 2.25])
    values = np.array([1.0, np.nan, 3.0, 4.0])
    s = TimeSeries(times, values)
    assert s.values.shape == (4, 1)
    assert s.times.shape == (4,)
    assert s.squeeze
    assert len(s) == s.num_timesteps == 4
    assert s.obs_dim == 1
    np.testing.assert_array_equal(s.times, times)
    np.testing.assert_array_equal(s.values[:, 0], values)
    np.testing.assert_allclose(s.gaps, [0.5, 1.5, 0.25])
    np.testing.assert_array_equal(s.observed[:, 0], [True, False, True, True])
    # outputs for a 1-D series come back 1-D
    assert s.match_input_shape(jnp.zeros((7, 1))).shape == (7,)


def test_from_2d_arrays_and_lists():
    values = [[1.0, 2.0], [np.nan, 3.0], [4.0, np.nan]]
    s = TimeSeries([1, 2, 5], values, columns=["a", "b"])
    assert s.values.shape == (3, 2)
    assert not s.squeeze
    assert s.obs_dim == 2
    assert s.columns == ("a", "b")
    np.testing.assert_array_equal(np.isnan(s.values), np.isnan(np.asarray(values)))
    np.testing.assert_array_equal(s.observed, ~np.isnan(np.asarray(values)))
    assert s.match_input_shape(jnp.zeros((3, 2))).shape == (3, 2)


def test_single_time_step_is_allowed():
    s = TimeSeries([3.0], [1.0])
    assert len(s) == 1
    assert s.gaps.shape == (0,)


def test_datetime64_times_in_constructor():
    times = np.array(["2021-03-01T00", "2021-03-01T12", "2021-03-03T00"], dtype="datetime64[s]")
    s = TimeSeries(times, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(s.times, [0.0, 0.5, 2.0])
    assert s.unit == "D"
    assert s.origin == pd.Timestamp("2021-03-01")
    s = TimeSeries(times, [1.0, 2.0, 3.0], unit="hours")
    np.testing.assert_allclose(s.times, [0.0, 12.0, 48.0])


def test_numeric_offsets_with_datetime_origin_map_back():
    s = TimeSeries([0.0, 1.5], [1.0, 2.0], unit="D", origin="2020-01-01")
    index = s.to_index(s.times)
    assert list(index) == [pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-02 12:00")]
    np.testing.assert_allclose(s.to_times(["2020-01-03"]), [2.0])


def test_numeric_queries_on_a_datetime_series_are_its_own_times():
    """Numbers given to a datetime series are times on its axis (here days since the first
    date), not nanoseconds since 1970."""
    index = pd.date_range("2000-01-01", periods=3)
    s = TimeSeries.from_pandas(pd.Series([1.0, 2.0, 3.0], index=index))
    np.testing.assert_allclose(s.to_times([1.0, 2.5]), [1.0, 2.5])
    np.testing.assert_allclose(s.to_times(np.array([1, 2])), [1.0, 2.0])
    np.testing.assert_allclose(s.to_times(index[1:]), [1.0, 2.0])


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "times, values, match",
    [
        (np.zeros((3, 1)), np.zeros(3), r"times must be a 1-D array.*\(3, 1\)"),
        (np.float64(1.0), np.zeros(1), r"times must be a 1-D array"),
        ([0.0, np.nan, 2.0], [1.0, 2.0, 3.0], r"non-finite.*times\[1\] = .*nan"),
        ([0.0, 1.0, np.inf], [1.0, 2.0, 3.0], r"non-finite.*times\[2\] = .*inf"),
        ([0.0, 2.0, 1.0, 3.0], np.zeros(4), r"strictly increasing.*first offending index: 2"),
        ([0.0, 1.0, 1.0, 2.0], np.zeros(4), r"duplicates: times\[2\] = .*1\.0 equals times\[1\].*"),
        ([0.0, 1.0, 2.0], np.zeros(4), r"same length T, got 3 times and 4 rows"),
        ([0.0, 1.0], np.zeros((2, 2, 2)), r"values must have shape \(T, M\)"),
        ([0.0, 1.0], np.zeros((2, 0)), r"at least one column"),
        ([], [], r"at least one time step"),
        ([0.0, 1.0], [1.0, np.inf], r"infinite entry \(first at row 1, column 0\).*NaN"),
        ([0.0, 1.0], [[1.0, -np.inf], [np.inf, 0.0]], r"2 infinite entries.*row 0, column 1"),
        ([0.0, 1.0], [np.nan, np.nan], r"all NaN"),
        ([0.0, 1.0], np.array(["a", "b"]), r"values must hold real numbers.*dtype <U1"),
        ([0.0, 1.0], np.array([1.0, None], dtype=object), r"values must hold real numbers"),
        ([0.0, 1.0], np.array([True, False]), r"values must hold real numbers.*astype\(float\)"),
        ([0.0, 1.0], np.array([1j, 2j]), r"dtype complex128; pass the real part"),
        (np.array(["x", "y"]), [1.0, 2.0], r"times must hold real numbers"),
    ],
)
def test_validation_errors(times, values, match):
    with pytest.raises(ValueError, match=match):
        TimeSeries(times, values)


def test_duplicate_message_suggests_aggregating():
    with pytest.raises(ValueError, match=r"aggregate rows that share a time"):
        TimeSeries([0.0, 0.0], [1.0, 2.0])


def test_unsorted_message_suggests_sorting():
    with pytest.raises(ValueError, match=r"sort the data by time"):
        TimeSeries([1.0, 0.0], [1.0, 2.0])


def test_wrong_number_of_column_names():
    with pytest.raises(ValueError, match=r"columns must name the 2 column\(s\).*got 3"):
        TimeSeries([0.0, 1.0], np.zeros((2, 2)), columns=["a", "b", "c"])


def test_unknown_unit():
    idx = pd.date_range("2020-01-01", periods=3, freq="D")
    with pytest.raises(ValueError, match=r"unknown time unit 'fortnight'"):
        TimeSeries.from_pandas(pd.Series([1.0, 2.0, 3.0], index=idx), unit="fortnight")


def test_nan_is_allowed_in_values():
    s = TimeSeries([0.0, 1.0, 2.0], [np.nan, 1.0, np.nan])
    assert int(s.observed.sum()) == 1


def test_times_that_collide_after_cast_to_float32():
    # 1e8 and 1e8 + 1 are distinct in float64 but equal in float32 (JAX's default float without x64)
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"not after conversion to float32.*jax_enable_x64"):
            TimeSeries(np.array([1e8, 1e8 + 1]), np.zeros(2))


# -- from_pandas -------------------------------------------------------------------------------


def test_from_pandas_series_datetime_index_in_days():
    idx = pd.DatetimeIndex(["2020-01-01 00:00", "2020-01-01 06:00", "2020-01-03 00:00"])
    s = TimeSeries.from_pandas(pd.Series([1.0, np.nan, 2.0], index=idx, name="y"))
    # hand computation: 6 h = 0.25 d; 2 days
    np.testing.assert_allclose(s.times, [0.0, 0.25, 2.0])
    assert s.values.shape == (3, 1)
    assert s.squeeze
    assert s.unit == "D"
    assert s.origin == pd.Timestamp("2020-01-01")
    assert s.columns == ("y",)


@pytest.mark.parametrize(
    "unit, expected",
    [
        ("h", [0.0, 6.0, 48.0]),
        ("hours", [0.0, 6.0, 48.0]),
        ("min", [0.0, 360.0, 2880.0]),
        ("s", [0.0, 21600.0, 172800.0]),
        ("W", [0.0, 0.25 / 7, 2.0 / 7]),
        ("Y", [0.0, 0.25 / 365.25, 2.0 / 365.25]),
    ],
)
def test_from_pandas_units(unit, expected):
    idx = pd.DatetimeIndex(["2020-01-01 00:00", "2020-01-01 06:00", "2020-01-03 00:00"])
    s = TimeSeries.from_pandas(pd.Series([1.0, 2.0, 3.0], index=idx), unit=unit)
    np.testing.assert_allclose(s.times, expected, rtol=1e-14)


def test_from_pandas_origin():
    idx = pd.DatetimeIndex(["2020-01-02", "2020-01-04"])
    s = TimeSeries.from_pandas(pd.Series([1.0, 2.0], index=idx), origin="2020-01-01", unit="h")
    np.testing.assert_allclose(s.times, [24.0, 72.0])
    assert s.origin == pd.Timestamp("2020-01-01")


def test_from_pandas_dataframe_datetime_index():
    idx = pd.date_range("2022-06-01", periods=4, freq="2h")
    df = pd.DataFrame({"temp": [1.0, 2.0, np.nan, 4.0], "rain": [0.0, np.nan, 0.5, 0.0]}, idx)
    s = TimeSeries.from_pandas(df, unit="h")
    assert s.values.shape == (4, 2)
    assert not s.squeeze
    assert s.columns == ("temp", "rain")
    np.testing.assert_allclose(s.times, [0.0, 2.0, 4.0, 6.0])
    np.testing.assert_array_equal(np.isnan(s.values), df.isna().to_numpy())


def test_from_pandas_numeric_index():
    ser = pd.Series([1.0, 2.0, 3.0], index=[0.5, 1.0, 4.0])
    s = TimeSeries.from_pandas(ser)
    np.testing.assert_array_equal(s.times, [0.5, 1.0, 4.0])
    df = pd.DataFrame({"a": [1, 2, 3], "b": [4, 5, 6]}, index=[10, 20, 35])
    s = TimeSeries.from_pandas(df)
    np.testing.assert_array_equal(s.times, [10.0, 20.0, 35.0])
    assert s.values.dtype == jnp.float64  # ints become the default float
    s = TimeSeries.from_pandas(df, origin=10)
    np.testing.assert_array_equal(s.times, [0.0, 10.0, 25.0])


def test_from_pandas_nullable_dtypes():
    df = pd.DataFrame({"a": pd.array([1, None, 3], dtype="Int64")}, index=[0, 1, 2])
    s = TimeSeries.from_pandas(df)
    np.testing.assert_array_equal(np.isnan(s.values[:, 0]), [False, True, False])


def test_from_pandas_unsorted_index():
    idx = pd.DatetimeIndex(["2020-01-01", "2020-01-03", "2020-01-02"])
    with pytest.raises(ValueError, match=r"strictly increasing.*index\[2\].*2020-01-02.*index: 2"):
        TimeSeries.from_pandas(pd.Series([1.0, 2.0, 3.0], index=idx))


def test_from_pandas_duplicate_index():
    idx = pd.DatetimeIndex(["2020-01-01", "2020-01-02", "2020-01-02"])
    with pytest.raises(ValueError, match=r"duplicates: index\[2\].*2020-01-02.*groupby"):
        TimeSeries.from_pandas(pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=idx))
    with pytest.raises(ValueError, match=r"duplicates: index\[1\] = 3"):
        TimeSeries.from_pandas(pd.Series([1.0, 2.0], index=[3, 3]))


def test_from_pandas_bad_inputs():
    idx = pd.date_range("2020-01-01", periods=2)
    with pytest.raises(TypeError, match=r"pandas Series or DataFrame, got ndarray"):
        TimeSeries.from_pandas(np.zeros(2))
    with pytest.raises(ValueError, match=r"'name' \(.*\).*pd.to_numeric"):
        TimeSeries.from_pandas(pd.DataFrame({"x": [1.0, 2.0], "name": ["a", "b"]}, index=idx))
    with pytest.raises(ValueError, match=r"index must be a DatetimeIndex.*pd.to_datetime"):
        TimeSeries.from_pandas(pd.Series([1.0, 2.0], index=["2020-01-01", "2020-01-02"]))
    with pytest.raises(ValueError, match=r"NaT.*position 1"):
        TimeSeries.from_pandas(pd.Series([1.0, 2.0], index=pd.DatetimeIndex(["2020", None])))
    with pytest.raises(ValueError, match=r"all NaN"):
        TimeSeries.from_pandas(pd.Series([np.nan, np.nan], index=idx))
    with pytest.raises(ValueError, match=r"no columns"):
        TimeSeries.from_pandas(pd.DataFrame(index=idx))
    with pytest.raises(ValueError, match=r"PeriodIndex.*to_timestamp"):
        TimeSeries.from_pandas(pd.Series([1.0, 2.0], index=pd.period_range("2020", periods=2)))


# -- round trips -------------------------------------------------------------------------------


def test_round_trip_series_datetime_index():
    idx = pd.date_range("2019-12-30 08:00", periods=6, freq="15min", name="when")
    ser = pd.Series([1.0, np.nan, 3.0, 4.5, np.nan, -1.0], index=idx, name="load")
    back = TimeSeries.from_pandas(ser, unit="h").to_pandas()
    pd.testing.assert_series_equal(back, ser)
    assert back.index.freq == ser.index.freq


def test_round_trip_irregular_tz_aware_dataframe():
    idx = pd.DatetimeIndex(
        [
            "2021-01-01 00:00:01",
            "2021-01-01 00:00:07",
            "2021-02-13 17:45:59",
            "2024-07-04 11:11:11",
        ],
        tz="Europe/Berlin",
    )
    df = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0], "b": [np.nan, 2.0, 2.5, np.nan]}, index=idx)
    df.columns.name = "sensor"
    for unit in ("D", "Y", "s"):
        back = TimeSeries.from_pandas(df, unit=unit).to_pandas()
        pd.testing.assert_frame_equal(back, df)


def test_round_trip_numeric_index():
    ser = pd.Series([1.0, np.nan, 2.0], index=pd.Index([1, 4, 9], name="step"))
    pd.testing.assert_series_equal(TimeSeries.from_pandas(ser).to_pandas(), ser)
    df = pd.DataFrame({"u": [1.0, 2.0], "v": [np.nan, 0.5]}, index=[0.25, 0.75])
    pd.testing.assert_frame_equal(TimeSeries.from_pandas(df).to_pandas(), df)


def test_round_trip_timedelta_index():
    ser = pd.Series([1.0, 2.0, np.nan], index=pd.to_timedelta(["0s", "90s", "1h"]))
    s = TimeSeries.from_pandas(ser, unit="min")
    np.testing.assert_allclose(s.times, [0.0, 1.5, 60.0])
    pd.testing.assert_series_equal(s.to_pandas(), ser)


def test_to_pandas_from_arrays():
    s = TimeSeries([0.0, 1.5], [[1.0, 2.0], [3.0, np.nan]], columns=["x", "y"])
    df = s.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["x", "y"]
    np.testing.assert_array_equal(df.index.to_numpy(), [0.0, 1.5])
    ser = TimeSeries([0.0, 1.5], [1.0, np.nan]).to_pandas()
    assert isinstance(ser, pd.Series)
    np.testing.assert_array_equal(ser.to_numpy(), [1.0, np.nan])


def test_query_times_map_both_ways():
    idx = pd.date_range("2020-01-01", periods=3, freq="D", tz="UTC")
    s = TimeSeries.from_pandas(pd.Series([1.0, 2.0, 3.0], index=idx), unit="h")
    np.testing.assert_allclose(s.to_times(["2020-01-01 06:00", "2020-01-04"]), [6.0, 72.0])
    back = s.to_index(np.array([6.0, 72.0]))
    assert list(back) == [
        pd.Timestamp("2020-01-01 06:00", tz="UTC"),
        pd.Timestamp("2020-01-04", tz="UTC"),
    ]


# -- pytree: jit and vmap ----------------------------------------------------------------------


def _series(seed, T=5, M=2):
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.uniform(0.1, 1.0, T))
    values = rng.normal(size=(T, M))
    values[1, 0] = np.nan
    return TimeSeries(times, values, columns=["a", "b"])


def test_jit_over_timeseries():
    s = _series(0)

    @jax.jit
    def f(series):
        return jnp.where(series.observed, series.values, 0.0).sum() + series.gaps.sum()

    expected = np.nansum(np.asarray(s.values)) + np.diff(np.asarray(s.times)).sum()
    np.testing.assert_allclose(f(s), expected)
    out = jax.jit(lambda series: series)(s)
    assert isinstance(out, TimeSeries)
    assert out.columns == ("a", "b")
    np.testing.assert_array_equal(out.times, s.times)


def test_static_metadata_is_hashable():
    idx = pd.date_range("2020-01-01", periods=3, freq="D", name="t")
    s = TimeSeries.from_pandas(pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=idx))
    treedef = jax.tree.structure(s)
    hash(treedef)
    assert len(jax.tree.leaves(s)) == 2  # times and values are the only leaves
    assert jax.tree.structure(TimeSeries.from_pandas(pd.DataFrame({"a": [0.0, 5, 6]}, idx))) == (
        treedef
    )


def test_vmap_over_a_stack_of_series():
    batch = TimeSeries.stack([_series(k) for k in range(3)])
    assert batch.times.shape == (3, 5)
    assert batch.values.shape == (3, 5, 2)
    assert batch.num_timesteps == 5
    assert "batch=(3,)" in repr(batch)
    totals = jax.vmap(lambda s: s.gaps.sum() + jnp.isnan(s.values).sum())(batch)
    expected = [float(_series(k).times[-1] - _series(k).times[0]) + 1 for k in range(3)]
    np.testing.assert_allclose(totals, expected)
    with pytest.raises(ValueError, match=r"same \(T, M\).*Pad shorter series"):
        TimeSeries.stack([_series(0, T=5), _series(1, T=4)])


def test_construct_under_jit_and_vmap():
    times = jnp.array([[0.0, 1.0, 3.0], [0.0, 2.0, 2.5]])
    values = jnp.ones((2, 3))

    gaps = jax.vmap(lambda t, v: TimeSeries(t, v).gaps)(times, values)
    np.testing.assert_allclose(gaps, [[1.0, 2.0], [2.0, 0.5]])
    # value checks are skipped for tracers (NaN times would raise eagerly) ...
    out = jax.jit(lambda t, v: TimeSeries(t, v).values)(jnp.array([0.0, jnp.nan]), jnp.ones(2))
    assert out.shape == (2, 1)
    # ... but shape checks still run
    with pytest.raises(ValueError, match=r"same length T"):
        jax.jit(lambda t, v: TimeSeries(t, v).values)(jnp.zeros(3), jnp.ones(4))
    with pytest.raises(ValueError, match=r"times must be a 1-D array"):
        jax.jit(lambda t, v: TimeSeries(t, v).values)(jnp.zeros((3, 1)), jnp.ones(3))


# -- dtypes --------------------------------------------------------------------------------------


def test_float32_is_kept():
    s = TimeSeries(np.arange(3, dtype=np.float32), np.ones(3, np.float32))
    assert s.times.dtype == jnp.float32
    assert s.values.dtype == s.dtype == jnp.float32
    ser = pd.Series(np.ones(3, np.float32), index=[0.0, 1.0, 2.0])
    assert TimeSeries.from_pandas(ser).values.dtype == jnp.float32
    assert TimeSeries.from_pandas(ser).to_pandas().dtype == np.float32


def test_ints_become_default_float():
    s = TimeSeries(np.arange(3), np.arange(3))
    assert s.times.dtype == jnp.float64  # tests run with x64
    assert s.values.dtype == jnp.float64
    with jax.enable_x64(False):
        s = TimeSeries(np.arange(3), np.arange(3))
        assert s.values.dtype == jnp.float32
        assert s.times.dtype == jnp.float32


def test_float64_kept():
    s = TimeSeries(np.arange(3.0), np.ones((3, 2)))
    assert s.values.dtype == jnp.float64


# -- repr ----------------------------------------------------------------------------------------


def test_repr_numeric():
    s = TimeSeries([0.0, 1.0, 2.5, 4.0], [[1.0, np.nan], [2.0, 3.0], [np.nan, np.nan], [1.0, 1.0]])
    text = repr(s)
    assert text.startswith("TimeSeries(T=4, M=2")
    assert "time 0 .. 4" in text
    assert "missing=37.5%" in text
    assert "dtype=float64" in text


def test_repr_datetime():
    idx = pd.date_range("2020-01-01", periods=4, freq="h")
    s = TimeSeries.from_pandas(pd.DataFrame({"a": [1.0, np.nan, 2.0, 3.0]}, index=idx), unit="h")
    text = repr(s)
    assert "time 2020-01-01 00:00:00 .. 2020-01-01 03:00:00" in text
    assert "unit=hours" in text
    assert "missing=25.0%" in text
    assert "columns=['a']" in text


def test_repr_under_jit_does_not_fail():
    texts = []

    @jax.jit
    def f(t, v):
        texts.append(repr(TimeSeries(t, v)))
        return v

    f(jnp.arange(3.0), jnp.ones(3))
    assert texts[0].startswith("TimeSeries(T=3, M=1") and "missing" not in texts[0]
