"""Two-class Otsu threshold of float values from an exact, block-decomposable histogram.

Upstream VollSeg thresholds a CARE U-Net's output at its Otsu threshold over the whole volume. A
tiled run cannot see the whole volume at once, so each block contributes an exact histogram and the
threshold is computed once per time point from their sum: every block then uses the same value,
whatever the tiling.

The bins are the top 16 bits of the order-preserving integer key of each float32 value
(:func:`vollseg_dask.kernels.histogram.sortable_keys`): 65,536 bins whose edges do not depend on the
data's range (no first pass for min/max), about 2^-7 relative width (sign, exponent and 7 mantissa
bits). Counts are exact integers, so summing blocks in any order gives the same histogram.
"""

from __future__ import annotations

import numpy as np

from vollseg_dask.errors import InvalidDataError

__all__ = ["N_PREFIX_BINS", "prefix_histogram", "prefix_bin_centres", "otsu_from_prefix_histogram"]

#: bins of :func:`prefix_histogram`
N_PREFIX_BINS = 1 << 16


def prefix_histogram(values: np.ndarray) -> np.ndarray:
    """Counts of float32 values per 16-bit key prefix.

    Parameters
    ----------
    values : numpy.ndarray, any shape, real dtype (cast to float32), finite

    Returns
    -------
    numpy.ndarray, shape (65536,), int64
    """
    from vollseg_dask.kernels.histogram import sortable_keys

    v = np.asarray(values, dtype=np.float32)
    if not np.isfinite(v).all():
        raise InvalidDataError("values hold NaN or infinite numbers; no Otsu threshold")
    keys = sortable_keys(v.reshape(-1)) >> np.uint32(16)
    return np.bincount(keys.astype(np.int64), minlength=N_PREFIX_BINS).astype(np.int64)


def prefix_bin_centres() -> np.ndarray:
    """Value (float64) at the middle key of each prefix bin, shape (65536,); NaN where the bin holds NaNs."""
    from vollseg_dask.kernels.histogram import keys_to_values

    mid = (np.arange(N_PREFIX_BINS, dtype=np.uint64) << np.uint64(16)) | np.uint64(0x8000)
    with np.errstate(invalid="ignore"):
        return keys_to_values(mid.astype(np.uint32), np.float32).astype(np.float64)


def otsu_from_prefix_histogram(counts: np.ndarray) -> float:
    """Otsu's two-class threshold (``skimage.filters.threshold_otsu`` on the histogram).

    Parameters
    ----------
    counts : numpy.ndarray, shape (65536,), integer
        Summed :func:`prefix_histogram` of every block of a time point.

    Returns
    -------
    float
        Threshold value: values strictly above it are foreground. When every value falls in one bin
        that bin's centre (nothing above it).
    """
    from skimage.filters import threshold_otsu

    counts = np.asarray(counts, dtype=np.int64)
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        raise InvalidDataError("empty histogram: no Otsu threshold")
    centres = prefix_bin_centres()[nz]
    if nz.size == 1:
        return float(centres[0])
    return float(threshold_otsu(hist=(counts[nz], centres)))
