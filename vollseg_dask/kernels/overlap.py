"""Label-overlap kernels: sparse contingency tables and block sums for segmentation metrics.

Every function here is a pure NumPy/pandas function on in-memory arrays (no Dask,
no files). The results are *decomposable*: a volume cut into disjoint blocks
gives per-block results whose sum (:func:`combine_overlap_tables`, plain ``+``
for the scalar sums) equals the result on the whole volume. The drivers in
:mod:`vollseg_dask.evaluate` rely on this to evaluate volumes of any size.

Conventions
-----------
* Labels are non-negative integers; 0 is background. Arrays of any integer
  dtype (signed or unsigned, up to 64 bits) are accepted; booleans and floats
  are rejected with :class:`~vollseg_dask.errors.DTypeError`.
* The overlap table keeps the background rows (``pred == 0`` or ``gt == 0``) so
  that the size of every label is the sum of its row/column of the table
  (:func:`label_sizes`): one table is all a reduction needs to carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from vollseg_dask.errors import DTypeError, InvalidDataError, ShapeError

__all__ = [
    "OVERLAP_COLUMNS",
    "check_label_pair",
    "overlap_table",
    "empty_overlap_table",
    "combine_overlap_tables",
    "label_sizes",
    "binary_disagreement",
    "ssim_map_sum",
]

OVERLAP_COLUMNS = ("pred", "gt", "count")

# Below this many bins (or 2x the voxel count, whichever is larger) a dense bincount is used
# instead of a sort; above it the sort-based np.unique path keeps memory proportional to the block.
_BINCOUNT_MIN_BINS = 1 << 20
_U64_MAX = (1 << 64) - 1


def _check_labels(arr: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise DTypeError(
            f"{name} labels must have an integer dtype, got {arr.dtype} (shape {arr.shape}); "
            "binarised masks or probability maps are not label images"
        )
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger):
        lo = arr.min()
        if lo < 0:
            raise InvalidDataError(f"{name} labels must be non-negative, found {int(lo)} (shape {arr.shape})")
    return arr


def check_label_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a predicted/ground-truth label pair.

    Parameters
    ----------
    pred, gt : numpy.ndarray
        Label arrays of the same shape (any number of dimensions), non-negative integers.

    Returns
    -------
    pred, gt : numpy.ndarray
        The inputs as arrays (no copy).

    Raises
    ------
    DTypeError
        A non-integer (float, bool, object) dtype.
    ShapeError
        Different shapes.
    InvalidDataError
        Negative labels.
    """
    pred = _check_labels(pred, "predicted")
    gt = _check_labels(gt, "ground-truth")
    if pred.shape != gt.shape:
        raise ShapeError(f"predicted labels have shape {pred.shape} but ground truth has shape {gt.shape}")
    return pred, gt


def empty_overlap_table() -> pd.DataFrame:
    """An overlap table with no rows and the standard columns/dtypes."""
    return pd.DataFrame(
        {
            "pred": np.zeros(0, np.uint64),
            "gt": np.zeros(0, np.uint64),
            "count": np.zeros(0, np.int64),
        }
    )


def _table(pred: np.ndarray, gt: np.ndarray, count: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pred": np.asarray(pred, dtype=np.uint64),
            "gt": np.asarray(gt, dtype=np.uint64),
            "count": np.asarray(count, dtype=np.int64),
        }
    )


def overlap_table(pred_block: np.ndarray, gt_block: np.ndarray) -> pd.DataFrame:
    """Sparse contingency table of two label images: voxel count of every co-occurring (pred, gt) pair.

    Exact and decomposable: for disjoint blocks that tile a volume, summing the
    per-block tables (:func:`combine_overlap_tables`) gives the whole-volume table.

    Parameters
    ----------
    pred_block : numpy.ndarray, shape (...)
        Predicted labels (non-negative integers, 0 = background).
    gt_block : numpy.ndarray, same shape as ``pred_block``
        Ground-truth labels.

    Returns
    -------
    pandas.DataFrame
        Columns ``pred`` (uint64), ``gt`` (uint64), ``count`` (int64, voxels > 0),
        one row per pair that occurs, sorted by (pred, gt). Background pairs
        (``pred == 0`` or ``gt == 0``) are included, so that label sizes follow
        from the table (:func:`label_sizes`).

    Raises
    ------
    DTypeError, ShapeError, InvalidDataError
        See :func:`check_label_pair`.

    Notes
    -----
    Pairs are encoded as one ``uint64`` key ``pred * (max(gt) + 1) + gt``. When
    the key space is small a ``bincount`` counts them in one pass; otherwise the
    keys are sorted (``np.unique``). When the key would overflow 64 bits (huge
    label IDs, e.g. provisional IDs with a namespace in the high bits) both label
    images are first compressed to dense indices with ``np.unique``.
    """
    pred, gt = check_label_pair(pred_block, gt_block)
    if pred.size == 0:
        return empty_overlap_table()
    p = pred.ravel()
    g = gt.ravel()
    pmax = int(p.max())
    gmax = int(g.max())
    ng = gmax + 1
    if pmax * ng + gmax <= _U64_MAX:
        key = p.astype(np.uint64) * np.uint64(ng) + g.astype(np.uint64)
        n_bins = (pmax + 1) * ng
        if n_bins <= max(_BINCOUNT_MIN_BINS, 2 * p.size):
            counts = np.bincount(key.astype(np.intp, copy=False), minlength=n_bins)
            keys = np.flatnonzero(counts).astype(np.uint64)
            counts = counts[keys.astype(np.intp)]
        else:
            keys, counts = np.unique(key, return_counts=True)
        return _table(keys // np.uint64(ng), keys % np.uint64(ng), counts)
    # Key would overflow: compress both images to dense indices first.
    up, pinv = np.unique(p, return_inverse=True)
    ug, ginv = np.unique(g, return_inverse=True)
    key = pinv.astype(np.int64).ravel() * len(ug) + ginv.astype(np.int64).ravel()
    keys, counts = np.unique(key, return_counts=True)
    return _table(up[keys // len(ug)], ug[keys % len(ug)], counts)


def combine_overlap_tables(tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Sum overlap tables of disjoint blocks into one table.

    Parameters
    ----------
    tables : iterable of pandas.DataFrame
        Tables as returned by :func:`overlap_table` (columns ``pred``, ``gt``, ``count``).

    Returns
    -------
    pandas.DataFrame
        One row per (pred, gt) pair, counts summed, sorted by (pred, gt).
    """
    parts = [t for t in tables if len(t)]
    if not parts:
        return empty_overlap_table()
    for t in parts:
        missing = set(OVERLAP_COLUMNS) - set(t.columns)
        if missing:
            raise ShapeError(f"overlap table lacks columns {sorted(missing)} (has {list(t.columns)})")
    if len(parts) == 1:
        return _table(parts[0]["pred"], parts[0]["gt"], parts[0]["count"])
    cat = pd.concat([t[list(OVERLAP_COLUMNS)] for t in parts], ignore_index=True)
    out = cat.groupby(["pred", "gt"], sort=True, as_index=False)["count"].sum()
    return _table(out["pred"], out["gt"], out["count"])


def label_sizes(overlaps: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Voxel count of every label, from an overlap table that includes background pairs.

    Parameters
    ----------
    overlaps : pandas.DataFrame
        Table from :func:`overlap_table` / :func:`combine_overlap_tables`.

    Returns
    -------
    pred_sizes, gt_sizes : pandas.Series
        Index: label (uint64, background 0 excluded); values: voxel count (int64).
    """
    if len(overlaps) == 0:
        empty = pd.Series(np.zeros(0, np.int64), index=pd.Index(np.zeros(0, np.uint64)), name="size")
        return empty, empty.copy()
    pred_sizes = overlaps.groupby("pred", sort=True)["count"].sum()
    gt_sizes = overlaps.groupby("gt", sort=True)["count"].sum()
    pred_sizes = pred_sizes[pred_sizes.index != 0].astype(np.int64).rename("size")
    gt_sizes = gt_sizes[gt_sizes.index != 0].astype(np.int64).rename("size")
    return pred_sizes, gt_sizes


def binary_disagreement(pred_block: np.ndarray, gt_block: np.ndarray) -> int:
    """Number of voxels where the binarised prediction and ground truth differ.

    For binary masks ``a = pred > 0`` and ``b = gt > 0`` the squared difference
    ``(a - b)**2`` is 1 exactly where they differ, so this is the block's sum of
    squared differences; the MSE of the volume is the sum over blocks divided by
    the voxel count.

    Parameters
    ----------
    pred_block, gt_block : numpy.ndarray, same shape
        Label (or mask) arrays; any value > 0 is foreground.

    Returns
    -------
    int
    """
    pred, gt = np.asarray(pred_block), np.asarray(gt_block)
    if pred.shape != gt.shape:
        raise ShapeError(f"predicted labels have shape {pred.shape} but ground truth has shape {gt.shape}")
    return int(np.count_nonzero((pred > 0) != (gt > 0)))


def ssim_map_sum(
    pred_read: np.ndarray,
    gt_read: np.ndarray,
    region: Sequence[slice],
    win_size: int = 7,
) -> tuple[float, int]:
    """Sum of the local SSIM map of the binarised masks over ``region`` of a read region.

    The SSIM map is scikit-image's (``structural_similarity(gt, pred,
    data_range=1, win_size=win_size, full=True)``, uniform window, sample
    covariance) on ``gt > 0`` and ``pred > 0`` as float64. A voxel's local SSIM
    depends only on the ``win_size`` window around it, so a voxel whose window
    lies inside the read region gets exactly the value it has in the whole
    volume. A driver reads each block with a halo of ``(win_size - 1) // 2``,
    passes as ``region`` the block core intersected with the volume's interior
    (voxels at least that far from the volume border; scikit-image averages over
    that interior), and sums ``(sum, count)`` over blocks; ``sum / count`` is the
    volume's SSIM.

    Parameters
    ----------
    pred_read, gt_read : numpy.ndarray, shape (n0, n1, ...)
        Label arrays of the read region; every axis at least ``win_size`` long.
    region : sequence of slice
        Slices of ``pred_read`` (local coordinates) to sum over; every voxel in
        it must be at least ``(win_size - 1) // 2`` from the read-region border.
    win_size : int, odd, default 7

    Returns
    -------
    sum : float
        Sum of local SSIM over the region.
    count : int
        Number of voxels in the region.

    Raises
    ------
    ShapeError
        Mismatched shapes, an axis shorter than ``win_size``, or a region that
        reaches closer than the window radius to the read-region border.
    """
    from skimage.metrics import structural_similarity

    pred, gt = np.asarray(pred_read), np.asarray(gt_read)
    if pred.shape != gt.shape:
        raise ShapeError(f"predicted labels have shape {pred.shape} but ground truth has shape {gt.shape}")
    if win_size < 3 or win_size % 2 != 1:
        raise ShapeError(f"SSIM win_size must be odd and >= 3, got {win_size}")
    if len(region) != pred.ndim:
        raise ShapeError(f"region has {len(region)} slices but the read region has shape {pred.shape}")
    pad = (win_size - 1) // 2
    bounds = []
    for ax, (s, n) in enumerate(zip(region, pred.shape, strict=True)):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ShapeError(f"region slice {s} on axis {ax} must have step 1")
        if stop <= start:
            return 0.0, 0
        if start < pad or stop > n - pad:
            raise ShapeError(
                f"region {start}:{stop} on axis {ax} comes closer than the SSIM window radius {pad} to the "
                f"border of the read region of shape {pred.shape}"
            )
        bounds.append(slice(start, stop))
    if min(pred.shape) < win_size:
        raise ShapeError(f"SSIM window {win_size} is larger than the read region of shape {pred.shape}")
    a = (gt > 0).astype(np.float64)
    b = (pred > 0).astype(np.float64)
    _, smap = structural_similarity(a, b, data_range=1.0, win_size=win_size, full=True)
    part = smap[tuple(bounds)]
    return float(part.sum(dtype=np.float64)), int(part.size)
