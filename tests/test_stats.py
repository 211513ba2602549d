"""Exact global intensity statistics: histogram kernels and the Dask driver against np.percentile."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vollseg_dask.errors import AxesError, ConfigError, DTypeError, InvalidDataError
from vollseg_dask.kernels.histogram import (
    block_histogram,
    float_block_histogram,
    keys_to_values,
    percentiles_from_float_histogram,
    percentiles_from_histogram,
    quantile_positions,
    radix_histogram,
    sortable_keys,
)
from vollseg_dask.stats import global_percentiles, intensity_histograms, percentile_column

Q_EDGES = (0.0, 0.1, 1.0, 33.3, 50.0, 99.8, 100.0)
UNEVEN = ((2, 1), (1, 3, 2), (5, 9, 3), (7, 12))  # deliberately uneven dask chunks of a (3, 6, 17, 19) volume


@pytest.fixture(autouse=True)
def _sync_scheduler():
    # Small graphs: the synchronous scheduler keeps the tests quick on a loaded 2-core machine.
    with dask.config.set(scheduler="sync"):
        yield


def _reference(a: np.ndarray, q) -> np.ndarray:
    """np.percentile per time point (axis 0)."""
    return np.stack([np.percentile(a[t], np.asarray(q, dtype=np.float64)) for t in range(a.shape[0])])


# --------------------------------------------------------------------------- kernels

int_arrays = st.sampled_from([np.uint8, np.uint16, np.int16]).flatmap(
    lambda dt: hnp.arrays(
        dt,
        st.integers(1, 300),
        # int16 within ±16000: NumPy's own int16 subtraction wraps beyond (tested separately)
        elements=st.integers(-16000, 16000) if dt is np.int16 else st.integers(0, np.iinfo(dt).max),
    )
)


@settings(max_examples=200, deadline=None)
@given(int_arrays, st.lists(st.floats(0, 100), min_size=1, max_size=6))
def test_percentiles_from_histogram_equal_numpy(values, q):
    q = [0.0, 100.0, *q]
    info = np.iinfo(values.dtype)
    counts = block_histogram(values, info.min, info.max - info.min + 1)
    np.testing.assert_array_equal(counts, np.bincount(values.astype(np.int64) - info.min, minlength=counts.size))
    got = percentiles_from_histogram(counts, info.min, q)
    np.testing.assert_array_equal(got, np.percentile(values, q))  # bit for bit


def test_percentiles_from_histogram_int16_where_numpy_wraps():
    values = np.array([-30000, 30000], dtype=np.int16)
    counts = block_histogram(values, -32768, 65536)
    got = percentiles_from_histogram(counts, -32768, [25, 50])
    # NumPy subtracts in int16 and wraps (its median here is 32768.0); we return the true values.
    np.testing.assert_array_equal(got, np.percentile(values.astype(np.float64), [25, 50]))
    assert got[1] == 0.0


def test_quantile_positions_match_numpy_indexing():
    x = np.arange(10, dtype=np.float64) * 3  # value = 3 * rank, so the percentile reveals the position
    lower, upper, gamma = quantile_positions(10, [0, 12.5, 50, 100])
    np.testing.assert_array_equal(lower, [0, 1, 4, 9])
    np.testing.assert_array_equal(upper, [1, 2, 5, 9])
    np.testing.assert_allclose(x[lower] + (x[upper] - x[lower]) * np.minimum(gamma, 1), np.percentile(x, [0, 12.5, 50, 100]))
    with pytest.raises(ConfigError, match=r"\[0, 100\]"):
        quantile_positions(10, [101])
    with pytest.raises(InvalidDataError):
        quantile_positions(0, [50])


def test_block_histogram_validation():
    with pytest.raises(DTypeError, match="float32"):
        block_histogram(np.zeros(3, np.float32), 0, 10)
    with pytest.raises(InvalidDataError, match=r"\[3, 12\].*\[0, 9\]"):
        block_histogram(np.array([3, 12], np.uint8), 0, 10)
    with pytest.raises(InvalidDataError):
        percentiles_from_histogram(np.zeros(5, np.int64), 0, [50])
    np.testing.assert_array_equal(block_histogram(np.array([True, False, True]), 0, 2), [1, 2])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.int64, np.uint32, np.uint64, np.int8])
def test_sortable_keys_preserve_order_and_invert(dtype, rng):
    if np.dtype(dtype).kind == "f":
        special = np.array([0.0, -0.0, np.inf, -np.inf, np.finfo(dtype).tiny, -np.finfo(dtype).tiny, np.finfo(dtype).max], dtype)
        values = np.concatenate([(rng.standard_normal(500) * 1e3).astype(dtype), special])
    else:
        info = np.iinfo(dtype)
        values = np.concatenate([rng.integers(info.min, info.max, 500, dtype=dtype, endpoint=True), np.array([info.min, info.max, 0], dtype)])
    keys = sortable_keys(values)
    assert keys.dtype.kind == "u" and keys.dtype.itemsize == values.dtype.itemsize
    order = np.argsort(keys, kind="stable")
    assert np.all(np.diff(values[order].astype(np.float64)) >= 0)
    np.testing.assert_array_equal(keys_to_values(keys, dtype), values)


def test_radix_histogram_selects_prefix(rng):
    keys = rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32)
    top = radix_histogram(keys, 16, 16)
    np.testing.assert_array_equal(top[0], np.bincount(keys >> 16, minlength=65536))
    prefixes = [int(keys[0] >> 16), int(keys[5] >> 16), int(keys[0] >> 16)]
    low = radix_histogram(keys, 0, 16, prefixes)
    for row, p in zip(low, prefixes, strict=True):
        np.testing.assert_array_equal(row, np.bincount(keys[(keys >> 16) == p] & 0xFFFF, minlength=65536))


def test_float_histogram_kernel_and_bound(rng):
    values = np.concatenate([rng.normal(10, 1, 3000), rng.exponential(50, 2000), np.full(500, 3.25)])
    lo, hi, n_bins = float(values.min()), float(values.max()), 200
    counts = float_block_histogram(values, lo, hi, n_bins)
    assert counts.sum() == values.size
    width = (hi - lo) / n_bins
    np.testing.assert_array_equal(counts, np.histogram(values, n_bins, (lo, hi))[0])
    # values exactly on inner edges go to the bin on their right, hi to the last bin
    edges = np.linspace(0.0, 1.0, 11)
    np.testing.assert_array_equal(float_block_histogram(edges, 0.0, 1.0, 10), [1] * 9 + [2])
    q = np.linspace(0, 100, 41)
    approx = percentiles_from_float_histogram(counts, lo, hi, q)
    exact = np.percentile(values, q)
    assert np.max(np.abs(approx - exact)) <= width
    assert approx[0] == exact[0] and approx[-1] == exact[-1]
    with pytest.raises(InvalidDataError, match="outside"):
        float_block_histogram(values, lo + 1, hi, n_bins)
    with pytest.raises(InvalidDataError, match="NaN"):
        float_block_histogram(np.array([1.0, np.nan]), 0, 2, 4)


# --------------------------------------------------------------------------- driver


def _volume(dtype, rng, shape=(3, 6, 17, 19)) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = rng.gamma(2.0, 30.0, shape) - 20
        a[1] *= 5  # time points differ
        return a.astype(dt)
    info = np.iinfo(dt)
    lo, hi = max(info.min, -15000), min(info.max, 15000)
    a = rng.integers(lo, hi, shape, endpoint=True)
    a[0] = rng.integers(lo, lo + (hi - lo) // 10, shape[1:])  # t=0 concentrated at the bottom of the range
    return a.astype(dt)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_global_percentiles_integer_equal_numpy(dtype, rng):
    a = _volume(dtype, rng)
    df = global_percentiles(da.from_array(a, chunks=UNEVEN), "tzyx", q=Q_EDGES)
    assert list(df.columns) == [percentile_column(v) for v in Q_EDGES] + ["min", "max", "mean", "count"]
    assert df.index.name == "t" and list(df.index) == [0, 1, 2]
    np.testing.assert_array_equal(df[[percentile_column(v) for v in Q_EDGES]].to_numpy(), _reference(a, Q_EDGES))
    flat = a.reshape(3, -1)
    np.testing.assert_array_equal(df["min"], flat.min(1))
    np.testing.assert_array_equal(df["max"], flat.max(1))
    np.testing.assert_allclose(df["mean"], flat.mean(1, dtype=np.float64), rtol=1e-13)
    assert df["count"].dtype == np.int64 and (df["count"] == flat.shape[1]).all()
    assert df.attrs["method"] == "exact"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_global_percentiles_exact_radix_equal_numpy(dtype, rng):
    a = _volume(dtype, rng)
    df = global_percentiles(da.from_array(a, chunks=UNEVEN), "tzyx", q=Q_EDGES)
    np.testing.assert_array_equal(df.iloc[:, : len(Q_EDGES)].to_numpy(), _reference(a, Q_EDGES))
    np.testing.assert_array_equal(df["min"], a.reshape(3, -1).min(1))
    np.testing.assert_array_equal(df["max"], a.reshape(3, -1).max(1))
    np.testing.assert_allclose(df["mean"], a.reshape(3, -1).mean(1, dtype=np.float64), rtol=1e-12)


def test_global_percentiles_float_approx_within_one_bin(rng):
    a = _volume(np.float32, rng)
    a[2, :2] = 7.5  # a spike of ties
    n_bins = 64  # coarse, so that the bound is a real constraint
    df = global_percentiles(da.from_array(a, chunks=UNEVEN), "tzyx", q=Q_EDGES, method="approx", n_bins=n_bins)
    assert df.attrs["method"] == "approx"
    ref = _reference(a, Q_EDGES)
    flat = a.reshape(3, -1).astype(np.float64)
    width = (flat.max(1) - flat.min(1)) / n_bins
    err = np.abs(df.iloc[:, : len(Q_EDGES)].to_numpy() - ref)
    assert np.all(err <= width[:, None])
    assert np.any(err > 0)  # it is an approximation: not accidentally exact
    np.testing.assert_array_equal(df["p0"], flat.min(1))
    np.testing.assert_array_equal(df["p100"], flat.max(1))


def test_percentiles_are_separated_per_t(rng):
    # Each time point has its own range; chunks straddle time points.
    a = np.stack([rng.integers(1000 * t, 1000 * t + 100, (4, 5, 6)) for t in range(4)]).astype(np.uint16)
    df = global_percentiles(da.from_array(a, chunks=(3, 2, 5, 4)), "tzyx", q=(1, 50, 99))
    np.testing.assert_array_equal(df.to_numpy()[:, :3], _reference(a, (1, 50, 99)))
    assert (df["min"].to_numpy() >= 1000 * np.arange(4)).all()
    assert (df["max"].to_numpy() < 1000 * np.arange(4) + 100).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_constant_volume(dtype):
    a = np.full((2, 3, 4, 5), 7, dtype=dtype)
    for method in ("exact", "approx"):
        df = global_percentiles(da.from_array(a, chunks=(1, 2, 3, 5)), "tzyx", q=Q_EDGES, method=method)
        assert (df.drop(columns="count").to_numpy() == 7).all()


def test_empty_volume_raises():
    with pytest.raises(InvalidDataError, match=r"empty image \(shape \(2, 0, 3\)"):
        global_percentiles(np.zeros((2, 0, 3), np.uint8), "tyx")


@pytest.mark.parametrize("bad, word", [(np.nan, "1 NaN"), (np.inf, "1 Inf"), (-np.inf, "1 Inf")])
@pytest.mark.parametrize("method", ["exact", "approx"])
def test_nonfinite_names_time_point(bad, word, method, rng):
    a = rng.random((4, 3, 5, 5)).astype(np.float32)
    a[2, 1, 2, 3] = bad
    with pytest.raises(InvalidDataError, match=rf"{word}.*t=2"):
        global_percentiles(da.from_array(a, chunks=(1, 2, 5, 5)), "tzyx", method=method)


def test_channels_and_grouping(rng):
    a = rng.integers(0, 4000, (3, 2, 4, 5, 6)).astype(np.uint16)
    a[:, 1] += 10000
    d = da.from_array(a, chunks=(1, 1, 3, 5, 4))
    df1 = global_percentiles(d, "tczyx", q=(5, 95), channel=1)
    np.testing.assert_array_equal(df1.iloc[:, :2].to_numpy(), _reference(a[:, 1], (5, 95)))
    both = global_percentiles(d, "tczyx", q=(5, 95), per_axis="tc")
    assert both.index.names == ["t", "c"] and len(both) == 6
    np.testing.assert_array_equal(both.xs(1, level="c").iloc[:, :2].to_numpy(), df1.iloc[:, :2].to_numpy())
    pooled = global_percentiles(d, "tczyx", q=(5, 95), per_axis="", channel=0)
    assert len(pooled) == 1
    np.testing.assert_array_equal(pooled.iloc[0, :2].to_numpy(), np.percentile(a[:, 0], (5, 95)))
    # axes in another order (czyxt-like layouts) are handled by letters, not positions
    moved = np.moveaxis(a, 0, -1)
    df_moved = global_percentiles(moved, "czyxt", q=(5, 95), channel=1)
    np.testing.assert_array_equal(df_moved.iloc[:, :2].to_numpy(), df1.iloc[:, :2].to_numpy())


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(axes="tzyx"), AxesError, r"axes 'tzyx' has 4 letters.*\(2, 2, 3, 4, 5\)"),
        (dict(axes="tczyq"), AxesError, r"unknown axis letters \['q'\]"),
        (dict(axes="tczyx"), AxesError, "2 channels"),
        (dict(axes="tczyx", channel=2), ConfigError, "channel 2 is out of range"),
        (dict(axes="tczyx", channel=0, per_axis="c"), AxesError, "also groups by 'c'"),
        (dict(axes="tczyx", channel=0, per_axis="tq"), AxesError, "per_axis 'tq'"),
        (dict(axes="tczyx", channel=0, q=(50, 120)), ConfigError, r"\[0, 100\]"),
        (dict(axes="tczyx", channel=0, q=(50, 50.0)), ConfigError, "repeat"),
        (dict(axes="tczyx", channel=0, method="fast"), ConfigError, "'fast'"),
    ],
)
def test_validation_errors(kwargs, exc, match):
    a = np.zeros((2, 2, 3, 4, 5), np.uint8)
    axes = kwargs.pop("axes")
    with pytest.raises(exc, match=match):
        global_percentiles(a, axes, **kwargs)


def test_channel_without_c_axis():
    with pytest.raises(AxesError, match="no 'c' axis"):
        global_percentiles(np.zeros((2, 3, 4), np.uint8), "tyx", channel=0)
    with pytest.raises(DTypeError, match="complex"):
        global_percentiles(np.zeros((2, 3, 4), np.complex64), "tyx")


def test_intensity_histograms_lazy_and_exact(rng):
    a = rng.integers(0, 256, (3, 4, 7, 9)).astype(np.uint8)
    calls = []

    def load(block):
        calls.append(block.shape)
        return block

    d = da.from_array(a, chunks=(2, 3, 4, 5)).map_blocks(load, meta=np.empty((0, 0, 0, 0), np.uint8))
    h = intensity_histograms(d, "tzyx")
    assert isinstance(h.counts, da.Array) and calls == []  # nothing computed yet
    assert h.counts.shape == (3, 256) and h.lo == 0 and h.bin_width == 1 and h.is_integer
    counts = h.counts.compute()
    # each task saw one block, never the whole volume
    assert max(int(np.prod(s)) for s in calls) <= 2 * 3 * 4 * 5
    for t in range(3):
        np.testing.assert_array_equal(counts[t], np.bincount(a[t].ravel(), minlength=256))
    np.testing.assert_array_equal(h.edges()[:3], [0, 1, 2])


def test_intensity_histograms_ranges(rng):
    a = rng.integers(100, 200, (2, 5, 6)).astype(np.int32)
    with pytest.raises(ConfigError, match="value_range is required for int32"):
        intensity_histograms(a, "tyx")
    h = intensity_histograms(a, "tyx", value_range=(100, 199))
    np.testing.assert_array_equal(h.counts.compute()[1], np.bincount(a[1].ravel() - 100, minlength=100))
    narrow = intensity_histograms(a, "tyx", value_range=(150, 199))
    with pytest.raises(InvalidDataError, match=r"outside the histogram range.*t=0"):
        narrow.counts.compute()
    f = rng.random((2, 5, 6))
    hf = intensity_histograms(f, "tyx", value_range=(0.0, 1.0), n_bins=10)
    np.testing.assert_array_equal(hf.counts.compute()[0], np.histogram(f[0], bins=10, range=(0, 1))[0])
    with pytest.raises(ConfigError, match="n_bins=10 given for uint8"):
        intensity_histograms(a.astype(np.uint8), "tyx", n_bins=10)


def test_percentile_column_names():
    assert [percentile_column(v) for v in (0, 1.0, 99.8, 100, 0.05)] == ["p0", "p1", "p99.8", "p100", "p0.05"]


@st.composite
def chunked_volumes(draw):
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.float32]))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=3, max_size=3)))
    elements = st.floats(-1e4, 1e4, width=32) if dtype is np.float32 else st.integers(-200, 200) if dtype is np.int16 else st.integers(0, 255)
    a = draw(hnp.arrays(dtype, shape, elements=elements))
    chunks = []
    for n in shape:
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=3))) if n > 1 else []
        bounds = [0, *cuts, n]
        chunks.append(tuple(b - a_ for a_, b in zip(bounds[:-1], bounds[1:], strict=True)))
    return a, tuple(chunks)


@settings(max_examples=25, deadline=None)
@given(chunked_volumes(), st.lists(st.floats(0, 100), min_size=1, max_size=3, unique=True))
def test_driver_equals_numpy_for_any_chunking(vol, q):
    a, chunks = vol
    df = global_percentiles(da.from_array(a, chunks=chunks), "tyx", q=q)
    np.testing.assert_array_equal(df.iloc[:, : len(q)].to_numpy(), _reference(a, q))
