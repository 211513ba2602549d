"""Exact global intensity statistics of huge images, per time point (stage S0).

Normalisation percentiles must come from the whole volume of a time point, never
from a tile (DESIGN §3). Every function here reduces per-block histograms with a
Dask tree reduction, so no task ever holds more than one block plus a few
histograms, and the client receives only small tables.

Methods, by dtype (see :mod:`vollseg_dask.kernels.histogram` for the kernels):

* ``bool``/8-/16-bit integers: one pass, one histogram bin per possible value;
  percentiles, min, max and mean are exact (percentiles equal ``np.percentile``).
* other dtypes, ``method="exact"`` (default): radix selection on sortable keys,
  16 key bits per pass (2 passes for float32/int32, 4 for float64/int64, 1 for
  float16); equal to ``np.percentile`` bit for bit.
* float data, ``method="approx"``: pass 1 exact min/max, pass 2 an equal-width
  histogram with ``n_bins`` bins; each percentile is within one bin width
  ``(max - min)/n_bins`` of ``np.percentile`` (q = 0 and 100 exact).

NaN or Inf raise :class:`~vollseg_dask.errors.InvalidDataError` naming the time
point (more precisely, the group, e.g. ``t=3``). A zero-size image raises too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd

from vollseg_dask.errors import AxesError, ConfigError, DTypeError, InvalidDataError
from vollseg_dask.kernels.histogram import (
    block_histogram,
    count_nonfinite,
    float_block_histogram,
    interpolate_quantiles,
    key_bits,
    keys_to_values,
    locate_ranks,
    percentiles_from_float_histogram,
    percentiles_from_histogram,
    quantile_positions,
    radix_histogram,
    sortable_keys,
)

__all__ = [
    "IntensityHistograms",
    "intensity_histograms",
    "global_percentiles",
    "percentile_column",
    "KNOWN_AXES",
]

KNOWN_AXES = "tczyx"
_DIGIT_BITS = 16
_SPLIT_EVERY = 8


def percentile_column(q: float) -> str:
    """Column name of percentile ``q`` in :func:`global_percentiles` tables, e.g. ``"p99.8"``, ``"p1"``."""
    return "p" + np.format_float_positional(float(q) + 0.0, trim="-")  # + 0.0 turns -0.0 into 0.0


# --------------------------------------------------------------------------- validation


def _validate_axes(axes: str, shape: tuple[int, ...]) -> str:
    if not isinstance(axes, str):
        raise AxesError(f"axes must be a string such as 'tczyx', got {axes!r}")
    axes = axes.lower()
    if len(axes) != len(shape):
        raise AxesError(f"axes {axes!r} has {len(axes)} letters but the data has shape {shape}")
    unknown = sorted(set(axes) - set(KNOWN_AXES))
    if unknown:
        raise AxesError(f"axes {axes!r} holds unknown axis letters {unknown} (known: {KNOWN_AXES!r})")
    if len(set(axes)) != len(axes):
        raise AxesError(f"axes {axes!r} repeats an axis")
    return axes


def _prepare(
    data: Any, axes: str, per_axis: str | None, channel: int | None
) -> tuple[da.Array, str, str]:
    """Select the channel and move the grouping axes first.

    Returns the array (group axes first, at least one: a singleton is added when
    ``per_axis`` is empty), the group axes and the pooled axes.
    """
    arr = data if isinstance(data, da.Array) else da.asarray(data)
    shape = tuple(int(s) for s in arr.shape)
    axes = _validate_axes(axes, shape)
    per_axis = (per_axis or "").lower()
    bad = [a for a in per_axis if a not in axes]
    if bad or len(set(per_axis)) != len(per_axis):
        raise AxesError(f"per_axis {per_axis!r} must name distinct axes of {axes!r}")
    if arr.dtype.kind not in "iubf":
        raise DTypeError(f"intensity statistics need bool, integer or float data, got dtype {arr.dtype}")
    if channel is not None:
        if "c" not in axes:
            raise AxesError(f"channel={channel} given but axes {axes!r} have no 'c' axis")
        if "c" in per_axis:
            raise AxesError(f"channel={channel} given and per_axis {per_axis!r} also groups by 'c'")
        n_c = shape[axes.index("c")]
        if not 0 <= int(channel) < n_c:
            raise ConfigError(f"channel {channel} is out of range for {n_c} channels (axes {axes!r}, shape {shape})")
        index = [slice(None)] * arr.ndim
        index[axes.index("c")] = int(channel)
        arr = arr[tuple(index)]
        axes = axes.replace("c", "")
        shape = tuple(int(s) for s in arr.shape)
    if "c" in axes and "c" not in per_axis and shape[axes.index("c")] > 1:
        raise AxesError(
            f"data with axes {axes!r} and shape {shape} has {shape[axes.index('c')]} channels: "
            "pass channel=... or include 'c' in per_axis (channels are never pooled)"
        )
    if arr.size == 0:
        raise InvalidDataError(f"cannot compute intensity statistics of an empty image (shape {shape}, axes {axes!r})")
    rest = "".join(a for a in axes if a not in per_axis)
    order = [axes.index(a) for a in per_axis] + [axes.index(a) for a in rest]
    arr = arr.transpose(order)
    if not per_axis:
        arr = arr[None]
    return arr, per_axis, rest


def _group_label(group_axes: str, group_shape: tuple[int, ...], gid: int) -> str:
    if not group_axes:
        return "the whole image"
    idx = np.unravel_index(int(gid), group_shape)
    return ", ".join(f"{a}={int(i)}" for a, i in zip(group_axes, idx, strict=True))


# --------------------------------------------------------------------------- blockwise machinery


def _rows(block: np.ndarray, n_group: int) -> np.ndarray:
    """Block with its group axes flattened into rows: shape (n_rows, n_values)."""
    n_rows = int(np.prod(block.shape[:n_group], dtype=np.int64))
    return block.reshape(n_rows, -1)


def _blockwise_groups(
    x: da.Array,
    n_lead: int,
    func: Callable[..., np.ndarray],
    tail: tuple[int, ...],
    dtype: type,
    params: Sequence[da.Array] = (),
    **kwargs: Any,
) -> da.Array:
    """Map ``func`` over blocks; the output has size 1 on every pooled axis of every block.

    ``func(block, *param_blocks, **kwargs)`` gets one block of ``x`` and, for
    each parameter array (group axes first, then trailing axes held in one
    chunk), its rows for the block's groups; it returns an array of shape
    ``(*group_chunk, 1, ..., 1, *tail)``. Reduce the pooled axes afterwards.
    """
    gi = tuple(f"g{i}" for i in range(n_lead))
    ri = tuple(f"r{i}" for i in range(x.ndim - n_lead))
    ti = tuple(f"k{i}" for i in range(len(tail)))
    args: list[Any] = [x, gi + ri]
    for j, p in enumerate(params):
        args += [p, gi + tuple(f"p{j}_{i}" for i in range(p.ndim - n_lead))]
    out_ind = gi + ri + ti
    return da.blockwise(
        func,
        out_ind,
        *args,
        new_axes=dict(zip(ti, tail, strict=True)),
        adjust_chunks={r: 1 for r in ri},
        dtype=dtype,
        concatenate=True,
        meta=np.empty((0,) * len(out_ind), dtype=dtype),
        **kwargs,
    )


def _pooled_axes(n_group: int, ndim: int) -> tuple[int, ...]:
    return tuple(range(n_group, ndim))


def _group_params(values: np.ndarray, x: da.Array, n_group: int) -> da.Array:
    """A small per-group parameter array chunked like the group axes of ``x``."""
    chunks = tuple(x.chunks[:n_group]) + tuple((s,) for s in values.shape[n_group:])
    return da.from_array(values, chunks=chunks)


def _gids(x: da.Array, n_group: int) -> da.Array:
    shape = x.shape[:n_group]
    return _group_params(np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape), x, n_group)


def _check_finite(row: np.ndarray, gid: int, labels: tuple[str, tuple[int, ...]]) -> None:
    n_nan, n_inf = count_nonfinite(row)
    if n_nan or n_inf:
        raise InvalidDataError(
            f"{n_nan} NaN and {n_inf} Inf values at {_group_label(labels[0], labels[1], gid)}: "
            "intensity statistics need finite data"
        )


def _out_shape(block: np.ndarray, n_group: int, tail: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(block.shape[:n_group]) + (1,) * (block.ndim - n_group) + tail


def _int_hist_block(block, gids, *, n_group, lo, n_bins, labels):
    rows, ids = _rows(block, n_group), gids.ravel()
    out = np.empty((rows.shape[0], n_bins), dtype=np.int64)
    for i, row in enumerate(rows):
        try:
            out[i] = block_histogram(row, lo, n_bins)
        except InvalidDataError as exc:
            raise InvalidDataError(f"{exc} at {_group_label(labels[0], labels[1], ids[i])}") from None
    return out.reshape(_out_shape(block, n_group, (n_bins,)))


def _float_hist_block(block, gids, ranges, *, n_group, n_bins, labels):
    rows, ids = _rows(block, n_group), gids.ravel()
    ranges = ranges.reshape(-1, 2)
    out = np.empty((rows.shape[0], n_bins), dtype=np.int64)
    for i, row in enumerate(rows):
        _check_finite(row, ids[i], labels)
        try:
            out[i] = float_block_histogram(row, ranges[i, 0], ranges[i, 1], n_bins)
        except InvalidDataError as exc:
            raise InvalidDataError(f"{exc} at {_group_label(labels[0], labels[1], ids[i])}") from None
    return out.reshape(_out_shape(block, n_group, (n_bins,)))


def _summary_block(block, gids, *, n_group, labels):
    """Per group row: [sum (float64), min, max]."""
    rows, ids = _rows(block, n_group), gids.ravel()
    out = np.empty((rows.shape[0], 3), dtype=np.float64)
    for i, row in enumerate(rows):
        _check_finite(row, ids[i], labels)
        out[i] = (np.sum(row, dtype=np.float64), row.min(), row.max())
    return out.reshape(_out_shape(block, n_group, (3,)))


def _radix_block(block, gids, *prefixes, n_group, shift, digit_bits, labels):
    rows, ids = _rows(block, n_group), gids.ravel()
    pref = prefixes[0].reshape(rows.shape[0], -1) if prefixes else None
    n_rows_out = 1 if pref is None else pref.shape[1]
    out = np.empty((rows.shape[0], n_rows_out, 1 << digit_bits), dtype=np.int64)
    for i, row in enumerate(rows):
        _check_finite(row, ids[i], labels)
        keys = sortable_keys(row)
        out[i] = radix_histogram(keys, shift, digit_bits, None if pref is None else pref[i])
    return out.reshape(_out_shape(block, n_group, (n_rows_out, 1 << digit_bits)))


def _locate_block(hist, row_of_rank, residual, *, n_group):
    """Per group: for each wanted rank, the digit holding it and its rank inside that digit."""
    gshape = hist.shape[:n_group]
    h = hist.reshape(-1, *hist.shape[n_group:])
    rows = row_of_rank.reshape(h.shape[0], -1)
    res = residual.reshape(h.shape[0], -1)
    out = np.empty((h.shape[0], rows.shape[1], 2), dtype=np.int64)
    for g in range(h.shape[0]):
        for r in range(rows.shape[1]):
            d, rr = locate_ranks(h[g, rows[g, r]], res[g, r : r + 1])
            out[g, r] = (d[0], rr[0])
    return out.reshape(*gshape, rows.shape[1], 2)


def _int_finalize_block(hist, *, n_group, lo, q):
    """Per group: [percentiles..., min, max, mean, count] from an exact one-bin-per-value histogram."""
    gshape = hist.shape[:n_group]
    h = hist.reshape(-1, hist.shape[-1])
    values = np.arange(h.shape[1], dtype=np.int64) + lo
    out = np.empty((h.shape[0], len(q) + 4), dtype=np.float64)
    for g, counts in enumerate(h):
        n = int(counts.sum())
        nz = np.flatnonzero(counts)
        total = int(np.dot(counts, values))  # exact in int64 for 16-bit values
        out[g, : len(q)] = percentiles_from_histogram(counts, lo, q)
        out[g, len(q) :] = (lo + nz[0], lo + nz[-1], total / n, n)
    return out.reshape(*gshape, len(q) + 4)


def _float_finalize_block(hist, ranges, *, n_group, q):
    gshape = hist.shape[:n_group]
    h = hist.reshape(-1, hist.shape[-1])
    r = ranges.reshape(-1, 2)
    out = np.empty((h.shape[0], len(q)), dtype=np.float64)
    for g, counts in enumerate(h):
        out[g] = percentiles_from_float_histogram(counts, r[g, 0], r[g, 1], q)
    return out.reshape(*gshape, len(q))


# --------------------------------------------------------------------------- lazy histograms


def _int_histograms(x: da.Array, n_group: int, gids: da.Array, labels, lo: int, n_bins: int) -> da.Array:
    per_block = _blockwise_groups(
        x, n_group, _int_hist_block, (n_bins,), np.int64, [gids], n_group=n_group, lo=lo, n_bins=n_bins, labels=labels
    )
    return per_block.sum(axis=_pooled_axes(n_group, x.ndim), split_every=_SPLIT_EVERY)


@dataclass(frozen=True)
class IntensityHistograms:
    """Lazy per-group histograms (see :func:`intensity_histograms`).

    Attributes
    ----------
    counts : dask.array.Array of int64, shape (*group_shape, n_bins)
        Bin counts per group (e.g. per time point).
    lo : float
        Left edge of bin 0 (for integer data, the value counted in bin 0).
    bin_width : float
        Width of every bin (1 for integer data: one bin per value).
    group_axes : str
        Axes the leading dimensions of ``counts`` stand for (``""``: one group).
    dtype : numpy.dtype
        Dtype of the data.
    """

    counts: da.Array
    lo: float
    bin_width: float
    group_axes: str
    dtype: np.dtype

    @property
    def n_bins(self) -> int:
        return int(self.counts.shape[-1])

    @property
    def is_integer(self) -> bool:
        return self.dtype.kind in "iub"

    def edges(self) -> np.ndarray:
        """Bin edges, shape (n_bins + 1,)."""
        return self.lo + self.bin_width * np.arange(self.n_bins + 1, dtype=np.float64)


def intensity_histograms(
    image: Any,
    axes: str,
    *,
    per_axis: str | None = "t",
    channel: int | None = None,
    value_range: tuple[float, float] | None = None,
    n_bins: int | None = None,
) -> IntensityHistograms:
    """Per-group intensity histograms of an image, as a lazy Dask array.

    Parameters
    ----------
    image : dask.array.Array or array-like
        The image; a NumPy or zarr array is wrapped with ``dask.array.asarray``.
    axes : str
        Axis letters of ``image`` (subset of ``"tczyx"`` in any order), e.g. ``"tzyx"``.
    per_axis : str, default ``"t"``
        Axes to keep separate (one histogram per index); ``""`` pools everything.
    channel : int, optional
        Channel to use when ``axes`` holds ``"c"`` (channels are never pooled).
    value_range : (lo, hi), optional
        Inclusive range of values. Default for bool/8-/16-bit integers: the
        whole dtype range. Required for other dtypes (e.g. from a first pass).
    n_bins : int, optional
        Float data only: number of equal-width bins over ``value_range``
        (default 65536). Integer data always get one bin per value.

    Returns
    -------
    IntensityHistograms
        With ``counts`` of shape ``(*group_shape, n_bins)``, lazy. Values outside
        ``value_range`` or NaN/Inf raise :class:`InvalidDataError` when computed.
    """
    x, group_axes, _ = _prepare(image, axes, per_axis, channel)
    n_group = max(len(group_axes), 1)
    dt = x.dtype
    labels = (group_axes, tuple(x.shape[:n_group]))
    gids = _gids(x, n_group)
    if dt.kind in "iub":
        if n_bins is not None:
            raise ConfigError(f"n_bins={n_bins} given for {dt} data: integer histograms have one bin per value")
        if value_range is None:
            if dt.itemsize > 2:
                raise ConfigError(f"value_range is required for {dt} data (too many values for one bin each)")
            lo, hi = (0, 1) if dt.kind == "b" else (int(np.iinfo(dt).min), int(np.iinfo(dt).max))
        else:
            lo, hi = (int(v) for v in value_range)
        nb = hi - lo + 1
        if nb < 1 or nb > 1 << 24:
            raise ConfigError(f"value_range {value_range} gives {nb} integer bins (allowed 1 to {1 << 24})")
        counts = _int_histograms(x, n_group, gids, labels, lo, nb)
        return IntensityHistograms(counts, float(lo), 1.0, group_axes, dt)
    if value_range is None:
        raise ConfigError(f"value_range is required for {dt} data (use global_percentiles for the min/max pass)")
    lo_f, hi_f = (float(v) for v in value_range)
    nb = 1 << 16 if n_bins is None else int(n_bins)
    if nb < 1 or not (np.isfinite(lo_f) and np.isfinite(hi_f)) or hi_f < lo_f:
        raise ConfigError(f"bad float histogram: value_range {value_range}, n_bins {n_bins}")
    ranges = np.broadcast_to(np.array([lo_f, hi_f]), (*x.shape[:n_group], 2)).copy()
    per_block = _blockwise_groups(
        x, n_group, _float_hist_block, (nb,), np.int64, [gids, _group_params(ranges, x, n_group)],
        n_group=n_group, n_bins=nb, labels=labels,
    )
    counts = per_block.sum(axis=_pooled_axes(n_group, x.ndim), split_every=_SPLIT_EVERY)
    return IntensityHistograms(counts, lo_f, (hi_f - lo_f) / nb, group_axes, dt)


# --------------------------------------------------------------------------- percentiles (computes)


def _summary(x: da.Array, n_group: int, gids: da.Array, labels) -> tuple[da.Array, da.Array, da.Array]:
    s = _blockwise_groups(x, n_group, _summary_block, (3,), np.float64, [gids], n_group=n_group, labels=labels)
    pooled = _pooled_axes(n_group, x.ndim)
    return (
        s[..., 0].sum(axis=pooled, split_every=_SPLIT_EVERY),
        s[..., 1].min(axis=pooled, split_every=_SPLIT_EVERY),
        s[..., 2].max(axis=pooled, split_every=_SPLIT_EVERY),
    )


def _radix_select(
    x: da.Array, n_group: int, gids: da.Array, labels, ranks: np.ndarray, extra: Sequence[da.Array] = ()
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Exact values of the given 0-based ranks in every group, by radix selection on sortable keys.

    Returns the values, shape (*group_shape, len(ranks)), and the computed ``extra``
    collections (computed with the first pass, to share its reads).
    """
    dt = x.dtype
    bits = key_bits(dt)
    digit_bits = min(_DIGIT_BITS, bits)
    gshape = tuple(x.shape[:n_group])
    n_ranks = len(ranks)
    prefix = np.zeros((*gshape, n_ranks), dtype=np.uint64)
    residual = np.broadcast_to(np.asarray(ranks, dtype=np.int64), (*gshape, n_ranks)).copy()
    computed_extra: list[np.ndarray] = []
    for shift in range(bits - digit_bits, -1, -digit_bits):
        kw = dict(n_group=n_group, shift=shift, digit_bits=digit_bits, labels=labels)
        if shift == bits - digit_bits:
            params = [gids]
            n_rows = 1
            row_of_rank = np.zeros((*gshape, n_ranks), dtype=np.int64)
        else:
            # Histogram each distinct prefix once per group; pad rows with the first prefix.
            flat_pref = prefix.reshape(-1, n_ranks)
            uniq = [np.unique(p, return_inverse=True) for p in flat_pref]
            n_rows = max(len(u[0]) for u in uniq)
            table = np.empty((len(uniq), n_rows), dtype=np.uint64)
            rows = np.empty((len(uniq), n_ranks), dtype=np.int64)
            for g, (u, inv) in enumerate(uniq):
                table[g, : len(u)] = u
                table[g, len(u) :] = u[0]
                rows[g] = inv.ravel()
            params = [gids, _group_params(table.reshape(*gshape, n_rows), x, n_group)]
            row_of_rank = rows.reshape(*gshape, n_ranks)
        per_block = _blockwise_groups(x, n_group, _radix_block, (n_rows, 1 << digit_bits), np.int64, params, **kw)
        hist = per_block.sum(axis=_pooled_axes(n_group, x.ndim), split_every=_SPLIT_EVERY)
        gi = tuple(f"g{i}" for i in range(n_group))
        located = da.blockwise(
            _locate_block,
            gi + ("r", "k"),
            hist, gi + ("p", "h"),
            _group_params(row_of_rank, x, n_group), gi + ("r",),
            _group_params(residual, x, n_group), gi + ("r",),
            new_axes={"k": 2},
            concatenate=True,
            dtype=np.int64,
            meta=np.empty((0,) * (n_group + 2), dtype=np.int64),
            n_group=n_group,
        )
        if shift == bits - digit_bits and extra:
            located_np, *computed_extra = dask.compute(located, *extra)
        else:
            (located_np,) = dask.compute(located)
        prefix = (prefix << np.uint64(digit_bits)) | located_np[..., 0].astype(np.uint64)
        residual = located_np[..., 1].copy()
    return keys_to_values(prefix, dt), computed_extra


def global_percentiles(
    data: Any,
    axes: str,
    q: float | Sequence[float] = (1.0, 99.8),
    *,
    per_axis: str | None = "t",
    channel: int | None = None,
    method: Literal["exact", "approx"] = "exact",
    n_bins: int = 1 << 16,
) -> pd.DataFrame:
    """Exact (or bounded) intensity percentiles per time point of an image of any size.

    Computes (it is the convenience that triggers computation; the current Dask
    scheduler or client is used) from per-block histograms reduced in a tree:
    no task loads more than one block and the client receives only the table.

    Parameters
    ----------
    data : dask.array.Array or array-like
        The image (e.g. the Dask array of an OME-Zarr level).
    axes : str
        Axis letters of ``data``, e.g. ``"tczyx"``.
    q : float or sequence of float, default (1.0, 99.8)
        Percentiles in [0, 100].
    per_axis : str, default ``"t"``
        Axes kept separate, one row per index (``"tc"`` gives a (t, c) MultiIndex,
        ``""`` one row for the whole image).
    channel : int, optional
        Channel to use when ``axes`` holds ``"c"`` and ``per_axis`` does not.
    method : {"exact", "approx"}, default "exact"
        ``"approx"`` applies to dtypes wider than 16 bits: two passes (min/max,
        then ``n_bins`` equal-width bins), result within one bin width
        ``(max - min)/n_bins`` of ``np.percentile``. 8/16-bit data are always exact.
    n_bins : int, default 65536
        Number of bins of the ``"approx"`` method.

    Returns
    -------
    pandas.DataFrame
        Indexed by the ``per_axis`` axes; columns ``percentile_column(q)`` for
        each q (e.g. ``"p1"``, ``"p99.8"``) then ``min``, ``max``, ``mean``
        (float64) and ``count`` (int64, voxels per group). ``df.attrs`` records
        ``q``, ``method``, ``dtype``, ``axes`` and ``per_axis``.
        For integer dtypes the percentiles equal ``np.percentile(volume_t, q)``
        (method "linear"); for float dtypes with ``"exact"`` they equal
        ``np.percentile(volume_t, np.asarray(q, float64))``.

    Raises
    ------
    InvalidDataError
        NaN/Inf (naming the time point), or an empty image.
    AxesError, ConfigError, DTypeError
        Bad axes, channel, q or method.
    """
    if method not in ("exact", "approx"):
        raise ConfigError(f"method must be 'exact' or 'approx', got {method!r}")
    q_arr = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if q_arr.ndim != 1 or q_arr.size == 0 or not np.all((q_arr >= 0) & (q_arr <= 100)):
        raise ConfigError(f"percentiles q must be a non-empty sequence of values in [0, 100], got {q!r}")
    columns = [percentile_column(v) for v in q_arr]
    if len(set(columns)) != len(columns):
        raise ConfigError(f"percentiles q {q_arr.tolist()} repeat a value")
    if int(n_bins) < 1:
        raise ConfigError(f"n_bins must be positive, got {n_bins}")

    x, group_axes, rest = _prepare(data, axes, per_axis, channel)
    n_group = max(len(group_axes), 1)
    gshape = tuple(int(s) for s in x.shape[:n_group])
    count = int(np.prod(x.shape[n_group:], dtype=np.int64))
    labels = (group_axes, gshape)
    gids = _gids(x, n_group)
    dt = x.dtype
    nq = q_arr.size
    small_int = dt.kind in "iub" and dt.itemsize <= 2

    if small_int:
        lo = 0 if dt.kind == "b" else int(np.iinfo(dt).min)
        nb = 2 if dt.kind == "b" else 1 << (8 * dt.itemsize)
        counts = _int_histograms(x, n_group, gids, labels, lo, nb)
        table = da.blockwise(
            _int_finalize_block,
            tuple(f"g{i}" for i in range(n_group)) + ("c",),
            counts, tuple(f"g{i}" for i in range(n_group)) + ("h",),
            new_axes={"c": nq + 4},
            concatenate=True,
            dtype=np.float64,
            meta=np.empty((0,) * (n_group + 1), dtype=np.float64),
            n_group=n_group, lo=lo, q=q_arr,
        )
        (table_np,) = dask.compute(table)
        used = "exact"
    elif method == "exact":
        lower, upper, gamma = quantile_positions(count, q_arr)
        ranks = np.concatenate([lower, upper, [0, count - 1]])
        values, (total,) = _radix_select(x, n_group, gids, labels, ranks, extra=[_summary(x, n_group, gids, labels)[0]])
        a = values[..., :nq]
        b = values[..., nq : 2 * nq]
        if dt.kind in "iu":
            a, b = a.astype(np.float64), b.astype(np.float64)
        pct = interpolate_quantiles(a, b, np.broadcast_to(gamma, a.shape))
        table_np = np.concatenate(
            [
                pct.astype(np.float64),
                values[..., 2 * nq : 2 * nq + 2].astype(np.float64),
                (np.asarray(total) / count)[..., None],
                np.full((*gshape, 1), float(count)),
            ],
            axis=-1,
        )
        used = "exact"
    else:
        total_d, vmin_d, vmax_d = _summary(x, n_group, gids, labels)
        total, vmin, vmax = dask.compute(total_d, vmin_d, vmax_d)
        ranges = np.stack([vmin, vmax], axis=-1)
        ranges_d = _group_params(ranges, x, n_group)
        per_block = _blockwise_groups(
            x, n_group, _float_hist_block, (int(n_bins),), np.int64, [gids, ranges_d],
            n_group=n_group, n_bins=int(n_bins), labels=labels,
        )
        hist = per_block.sum(axis=_pooled_axes(n_group, x.ndim), split_every=_SPLIT_EVERY)
        gi = tuple(f"g{i}" for i in range(n_group))
        pct_d = da.blockwise(
            _float_finalize_block, gi + ("c",),
            hist, gi + ("h",), ranges_d, gi + ("m",),
            new_axes={"c": nq}, concatenate=True, dtype=np.float64,
            meta=np.empty((0,) * (n_group + 1), dtype=np.float64), n_group=n_group, q=q_arr,
        )
        (pct,) = dask.compute(pct_d)
        table_np = np.concatenate(
            [pct, vmin[..., None], vmax[..., None], (np.asarray(total) / count)[..., None],
             np.full((*gshape, 1), float(count))],
            axis=-1,
        )
        used = "approx"

    flat = table_np.reshape(-1, nq + 4)
    if group_axes:
        if len(group_axes) == 1:
            index = pd.RangeIndex(gshape[0], name=group_axes)
        else:
            index = pd.MultiIndex.from_product([range(s) for s in gshape], names=list(group_axes))
    else:
        index = pd.RangeIndex(1)
    df = pd.DataFrame(flat, index=index, columns=[*columns, "min", "max", "mean", "count"])
    df["count"] = df["count"].astype(np.int64)
    df.attrs.update(
        q=q_arr.tolist(), method=used, dtype=str(dt), axes=axes, per_axis=group_axes, pooled_axes=rest
    )
    return df
