"""Histogram kernels for exact global intensity statistics.

Percentiles of a huge volume are computed from histograms that are additive
over blocks (DESIGN §3 "Global normalisation"):

* **Integer data, small range** (8/16-bit): one exact histogram with one bin per
  value (:func:`block_histogram`), summed over blocks; :func:`percentiles_from_histogram`
  then gives what ``np.percentile(volume, q)`` gives, bit for bit.
* **Any dtype, exact** (float, 32/64-bit integers): radix selection on an
  order-preserving unsigned integer *key* of every value (:func:`sortable_keys`).
  Pass 1 histograms the top 16 bits of the keys; every later pass histograms the
  next 16 bits of only the keys whose higher bits equal the prefix found so far
  for each wanted order statistic (:func:`radix_histogram`, :func:`locate_ranks`).
  After ``bits/16`` passes each wanted order statistic is known exactly, and
  :func:`interpolate_quantiles` combines them exactly as NumPy's ``"linear"``
  method does.
* **Float data, approximate** (two passes): pass 1 finds the exact min and max,
  pass 2 counts values in ``n_bins`` equal-width bins between them
  (:func:`float_block_histogram`); :func:`percentiles_from_float_histogram`
  answers within one bin width ``(max - min) / n_bins`` of ``np.percentile``.

Percentiles ``q`` are in percent (0 to 100); results are ``float64`` like those
of ``np.percentile`` for integer input and for float input with ``q`` given as an
array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vollseg_dask.errors import ConfigError, DTypeError, InvalidDataError

__all__ = [
    "block_histogram",
    "percentiles_from_histogram",
    "quantile_positions",
    "interpolate_quantiles",
    "locate_ranks",
    "count_nonfinite",
    "sortable_keys",
    "keys_to_values",
    "key_bits",
    "radix_histogram",
    "float_block_histogram",
    "percentiles_from_float_histogram",
]


def _as_q(q: float | Sequence[float] | np.ndarray) -> np.ndarray:
    qa = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if qa.ndim != 1:
        raise ConfigError(f"percentiles q must be a scalar or a 1-d sequence, got shape {qa.shape}")
    if not np.all((qa >= 0) & (qa <= 100)):  # also rejects NaN
        raise ConfigError(f"percentiles q must lie in [0, 100], got {qa.tolist()}")
    return qa


def quantile_positions(n: int, q: float | Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order statistics and weights that ``np.percentile(..., method="linear")`` interpolates.

    Reproduces NumPy's own arithmetic (Hyndman & Fan method 7): virtual index
    ``h = (n - 1) * q'`` with ``q' = q/100`` in float64, lower rank
    ``floor(h)``, upper rank ``floor(h) + 1``, both clamped to ``n - 1``.

    Parameters
    ----------
    n : int
        Number of values (> 0).
    q : float or sequence of float
        Percentiles in [0, 100].

    Returns
    -------
    lower, upper : ndarray of int64, shape (len(q),)
        0-based ranks in the sorted values.
    gamma : ndarray of float64, shape (len(q),)
        Interpolation weight of ``upper`` (NumPy's value, which may exceed 1 at
        the top end where ``lower == upper``).
    """
    n = int(n)
    if n < 1:
        raise InvalidDataError(f"cannot take percentiles of {n} values")
    qq = _as_q(q) / 100
    # NumPy >= 1.22 computes the "linear" index as (n - 1) * q, not through the
    # general alpha/beta formula; the two differ in the last bit.
    virtual = (n - 1) * qq
    lower = np.floor(virtual)
    upper = lower + 1
    above = virtual >= n - 1
    # NumPy indexes the last element as -1 and derives gamma from that -1.
    lower_np = np.where(above, -1.0, np.where(virtual < 0, 0.0, lower))
    gamma = virtual - lower_np
    lower_i = np.where(above, n - 1, np.maximum(lower, 0)).astype(np.int64)
    upper_i = np.where(above, n - 1, np.where(virtual < 0, 0, upper)).astype(np.int64)
    return lower_i, upper_i, gamma


def interpolate_quantiles(a: np.ndarray, b: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """NumPy's ``_lerp``: ``a + (b - a)*gamma``, or ``b - (b - a)*(1 - gamma)`` where ``gamma >= 0.5``.

    ``a`` and ``b`` keep the data's dtype for floating data (so ``b - a`` rounds
    as NumPy's does); integer order statistics should be passed as float64,
    which is exact below 2**53 and avoids the wrap-around NumPy suffers when
    ``b - a`` overflows the integer dtype (e.g. int16 values -30000 and 30000).

    Parameters
    ----------
    a, b : ndarray, shape (k,)
        Lower and upper order statistics.
    gamma : ndarray of float64, shape (k,)

    Returns
    -------
    ndarray of float64 (or wider float), shape (k,)
    """
    a = np.asarray(a)
    b = np.asarray(b)
    gamma = np.asarray(gamma, dtype=np.float64)
    diff = np.subtract(b, a)
    out = np.asanyarray(np.add(a, diff * gamma))
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=type(out.dtype))
    return out


def locate_ranks(counts: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bins holding given order statistics, and their ranks within those bins.

    Parameters
    ----------
    counts : ndarray of int, shape (n_bins,)
        Histogram (non-negative counts) over bins in increasing value order.
    ranks : ndarray of int, shape (k,)
        0-based ranks, each below ``counts.sum()``.

    Returns
    -------
    bins : ndarray of int64, shape (k,)
        Index of the bin holding each ranked value.
    residual : ndarray of int64, shape (k,)
        Rank of that value among the values of its bin.
    """
    counts = np.asarray(counts, dtype=np.int64)
    ranks = np.asarray(ranks, dtype=np.int64)
    cum = np.cumsum(counts)
    total = int(cum[-1]) if cum.size else 0
    if ranks.size and (ranks.min() < 0 or ranks.max() >= total):
        raise InvalidDataError(f"ranks {ranks.tolist()} outside a histogram of {total} values")
    bins = np.searchsorted(cum, ranks, side="right").astype(np.int64)
    before = np.where(bins > 0, cum[np.maximum(bins - 1, 0)], 0)
    return bins, ranks - before


def block_histogram(block: np.ndarray, lo: int, n_bins: int) -> np.ndarray:
    """Exact histogram of integer data, one bin per value.

    Parameters
    ----------
    block : ndarray of integer (or bool) dtype, any shape
    lo : int
        Value counted in bin 0 (e.g. ``np.iinfo(dtype).min``).
    n_bins : int
        Number of bins; bin ``i`` counts the value ``lo + i``.

    Returns
    -------
    ndarray of int64, shape (n_bins,)

    Raises
    ------
    DTypeError
        Non-integer data.
    InvalidDataError
        A value outside ``[lo, lo + n_bins)``.
    """
    block = np.asarray(block)
    if block.dtype.kind not in "iub":
        raise DTypeError(f"block_histogram needs integer data, got dtype {block.dtype}")
    lo = int(lo)
    n_bins = int(n_bins)
    if n_bins < 1:
        raise ConfigError(f"n_bins must be positive, got {n_bins}")
    if block.size == 0:
        return np.zeros(n_bins, dtype=np.int64)
    if block.dtype.kind == "b":
        block = block.view(np.uint8)
    vmin, vmax = int(block.min()), int(block.max())
    if vmin < lo or vmax >= lo + n_bins:
        raise InvalidDataError(
            f"values in [{vmin}, {vmax}] fall outside the histogram range [{lo}, {lo + n_bins - 1}]"
        )
    flat = block.ravel()
    if lo != 0 or flat.dtype.kind == "i":
        # Shift into [0, n_bins) in a dtype that holds both ends; int64 is enough for our ranges.
        flat = flat.astype(np.int64) - lo
    return np.bincount(flat, minlength=n_bins).astype(np.int64, copy=False)


def percentiles_from_histogram(counts: np.ndarray, lo: int, q: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Percentiles of integer data from its exact histogram, as ``np.percentile`` gives them.

    Equal to ``np.percentile(values, q)`` (method ``"linear"``, ``q`` as a float64
    array) bit for bit, except where NumPy's integer subtraction wraps around
    (see :func:`interpolate_quantiles`), where this returns the correct value.

    Parameters
    ----------
    counts : ndarray of int, shape (n_bins,)
        Histogram with bin ``i`` counting the value ``lo + i``.
    lo : int
        Value of bin 0.
    q : float or sequence of float
        Percentiles in [0, 100].

    Returns
    -------
    ndarray of float64, shape (len(q),)

    Raises
    ------
    InvalidDataError
        The histogram is empty.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        raise InvalidDataError("percentiles of an empty histogram (no values)")
    lower, upper, gamma = quantile_positions(n, q)
    bins, _ = locate_ranks(counts, np.concatenate([lower, upper]))
    values = (np.int64(lo) + bins).astype(np.float64)
    k = lower.size
    return interpolate_quantiles(values[:k], values[k:], gamma)


def count_nonfinite(block: np.ndarray) -> tuple[int, int]:
    """Number of NaN and of ±Inf values in ``block`` (both 0 for integer data)."""
    block = np.asarray(block)
    if block.dtype.kind != "f":
        return 0, 0
    n_nan = int(np.count_nonzero(np.isnan(block)))
    n_inf = int(np.count_nonzero(np.isinf(block)))
    return n_nan, n_inf


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def key_bits(dtype: np.dtype | type) -> int:
    """Width in bits of the sortable key of ``dtype`` (8, 16, 32 or 64)."""
    dt = np.dtype(dtype)
    if dt.kind not in "iubf" or dt.itemsize not in _UINT:
        raise DTypeError(f"no sortable key for dtype {dt} (need bool, integer or float of 1-8 bytes)")
    return dt.itemsize * 8


def sortable_keys(values: np.ndarray) -> np.ndarray:
    """Map values to unsigned integers of the same width whose order is the values' order.

    Signed integers flip the sign bit; floats (IEEE 754) flip the sign bit of
    positives and every bit of negatives. NaN has a key too, but it is not
    ordered meaningfully: reject NaN before (see :func:`count_nonfinite`).
    ``-0.0`` sorts just below ``+0.0``; both compare equal as values.

    Parameters
    ----------
    values : ndarray of bool, integer or float dtype, any shape

    Returns
    -------
    ndarray of uint8/16/32/64, same shape
    """
    values = np.asarray(values)
    bits = key_bits(values.dtype)
    ut = _UINT[values.dtype.itemsize]
    sign = ut(1) << ut(bits - 1)
    kind = values.dtype.kind
    if kind in "ub":
        return values.view(ut)
    u = np.ascontiguousarray(values).view(ut)
    if kind == "i":
        return u ^ sign
    return np.where(u & sign, ~u, u | sign).astype(ut, copy=False)


def keys_to_values(keys: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Inverse of :func:`sortable_keys` for ``dtype``."""
    dt = np.dtype(dtype)
    bits = key_bits(dt)
    ut = _UINT[dt.itemsize]
    keys = np.asarray(keys).astype(ut)
    sign = ut(1) << ut(bits - 1)
    if dt.kind in "ub":
        return keys.view(dt)
    if dt.kind == "i":
        return (keys ^ sign).view(dt)
    return np.where(keys & sign, keys ^ sign, ~keys).astype(ut, copy=False).view(dt)


def radix_histogram(
    keys: np.ndarray, shift: int, digit_bits: int, prefixes: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """Histograms of one digit of sortable keys, restricted to keys with given higher bits.

    The digit of key ``k`` is ``(k >> shift) & (2**digit_bits - 1)``; its prefix is
    ``k >> (shift + digit_bits)``.

    Parameters
    ----------
    keys : ndarray of unsigned int, any shape
        From :func:`sortable_keys`.
    shift : int
        Bit position of the digit's lowest bit.
    digit_bits : int
        Digit width (e.g. 16 gives 65536 bins).
    prefixes : sequence of int, optional
        For each output row, the prefix a key must have to be counted. ``None``
        counts every key (the first pass, where the digit is the top one).

    Returns
    -------
    ndarray of int64, shape (len(prefixes) or 1, 2**digit_bits)
    """
    keys = np.asarray(keys).ravel()
    n_bins = 1 << int(digit_bits)
    ut = keys.dtype.type
    bits = keys.dtype.itemsize * 8
    if keys.dtype.kind != "u" or not (0 <= shift and shift + digit_bits <= bits):
        raise ConfigError(f"bad radix digit: keys {keys.dtype}, shift {shift}, digit_bits {digit_bits}")
    digits = ((keys >> ut(shift)) & ut(n_bins - 1)).astype(np.intp)
    if prefixes is None:
        return np.bincount(digits, minlength=n_bins).astype(np.int64)[None, :]
    prefixes = [int(p) for p in np.asarray(prefixes, dtype=np.uint64).ravel()]
    out = np.zeros((len(prefixes), n_bins), dtype=np.int64)
    if shift + digit_bits == bits:  # the digit is the top one: every key has prefix 0
        full = np.bincount(digits, minlength=n_bins)
        for row, p in enumerate(prefixes):
            if p == 0:
                out[row] = full
        return out
    high = keys >> ut(shift + digit_bits)
    done: dict[int, np.ndarray] = {}
    for row, p in enumerate(prefixes):
        if p not in done:
            done[p] = np.bincount(digits[high == ut(p)], minlength=n_bins)
        out[row] = done[p]
    return out


def float_block_histogram(block: np.ndarray, lo: float, hi: float, n_bins: int) -> np.ndarray:
    """Histogram of float data in ``n_bins`` equal-width bins spanning ``[lo, hi]``.

    Bin ``i`` covers ``[e[i], e[i+1])`` with ``e = np.linspace(lo, hi, n_bins + 1)``
    (width ``(hi - lo)/n_bins``); the last bin also holds ``hi``. The counts equal
    ``np.histogram(block, n_bins, (lo, hi))[0]``. When ``hi == lo`` every value
    is in bin 0.

    Parameters
    ----------
    block : ndarray of real dtype, any shape (finite values)
    lo, hi : float
        Range; every value must lie inside it (pass 1 gives the exact min/max).
    n_bins : int

    Returns
    -------
    ndarray of int64, shape (n_bins,)

    Raises
    ------
    InvalidDataError
        NaN/Inf, or a value outside ``[lo, hi]``.
    """
    x = np.asarray(block, dtype=np.float64).ravel()
    n_bins = int(n_bins)
    if n_bins < 1 or not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        raise ConfigError(f"bad float histogram range [{lo}, {hi}] with {n_bins} bins")
    if x.size == 0:
        return np.zeros(n_bins, dtype=np.int64)
    n_nan, n_inf = count_nonfinite(x)
    if n_nan or n_inf:
        raise InvalidDataError(f"{n_nan} NaN and {n_inf} Inf values in a block")
    vmin, vmax = float(x.min()), float(x.max())
    if vmin < lo or vmax > hi:
        raise InvalidDataError(f"values in [{vmin}, {vmax}] fall outside the histogram range [{lo}, {hi}]")
    if hi == lo:
        out = np.zeros(n_bins, dtype=np.int64)
        out[0] = x.size
        return out
    idx = np.floor((x - lo) * (n_bins / (hi - lo))).astype(np.intp)
    np.clip(idx, 0, n_bins - 1, out=idx)
    # The scaled index can be off by one at an edge; fix it against the edges
    # themselves (as np.histogram does), so every value lies inside its bin.
    edges = np.linspace(lo, hi, n_bins + 1)
    idx[x < edges[idx]] -= 1
    idx[(x >= edges[idx + 1]) & (idx != n_bins - 1)] += 1
    return np.bincount(idx, minlength=n_bins).astype(np.int64)


def percentiles_from_float_histogram(
    counts: np.ndarray,
    lo: float,
    hi: float,
    q: float | Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Approximate percentiles from an equal-width histogram (see :func:`float_block_histogram`).

    Each order statistic is estimated by the centre of its bin, except the
    smallest and largest, which are ``lo`` and ``hi`` themselves (pass 1 makes
    them the exact min and max). The result is within one bin width
    ``(hi - lo)/n_bins`` of ``np.percentile`` of the values (half a width plus
    rounding at bin edges), and exact for q = 0, q = 100 and constant data.

    Parameters
    ----------
    counts : ndarray of int, shape (n_bins,)
    lo, hi : float
        The exact minimum and maximum of the values.
    q : float or sequence of float
        Percentiles in [0, 100].

    Returns
    -------
    ndarray of float64, shape (len(q),)
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        raise InvalidDataError("percentiles of an empty histogram (no values)")
    lower, upper, gamma = quantile_positions(n, q)
    ranks = np.concatenate([lower, upper])
    bins, _ = locate_ranks(counts, ranks)
    width = (hi - lo) / counts.size
    est = np.clip(lo + (bins + 0.5) * width, lo, hi)
    est = np.where(ranks == 0, lo, np.where(ranks == n - 1, hi, est))
    k = lower.size
    return interpolate_quantiles(est[:k], est[k:], gamma)
