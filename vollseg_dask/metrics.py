"""Segmentation metrics of the VollSeg paper: IoU matching at τ, precision, recall, F1, AP, MSE, SSIM.

Object metrics (StarDist's definitions)
---------------------------------------
A ground-truth object and a predicted object are a *match* at threshold τ when
their intersection over union (IoU) is at least τ, and every object is matched
at most once. The matching is the optimal assignment that StarDist's
``stardist.matching.matching`` computes with the Hungarian algorithm:

1. it maximises the **number** of matched pairs with IoU ≥ τ, and
2. among those assignments, it maximises the total IoU of all assigned
   overlapping pairs (StarDist's tie-breaker).

For τ > 0.5 the matching is unique (an object can have at most one partner with
IoU > 0.5) and no assignment problem needs solving. For τ ≤ 0.5 the problem is
solved on the *sparse* graph of overlapping pairs (scipy's LAPJVsp,
``min_weight_full_bipartite_matching``): only pairs that share voxels have a
non-zero IoU, so the dense (n_true × n_pred) matrix StarDist builds is never
formed. Then, with TP matched pairs, FP = n_pred − TP and FN = n_true − TP:

* precision = TP / (TP + FP), recall = TP / (TP + FN),
* F1 = 2 TP / (2 TP + FP + FN),
* accuracy = TP / (TP + FP + FN), called *AP* (average precision) in the paper
  and in the Data Science Bowl 2018 metric,
* mean_matched_score = mean IoU of the TP pairs,
  mean_true_score = (sum of IoU of the TP pairs) / n_true,
  panoptic_quality = (sum of IoU of the TP pairs) / (TP + FP/2 + FN/2)
  (Kirillov et al., CVPR 2019).

All ratios are 0 when TP = 0, as in StarDist. IoU is computed in float64 from
exact integer counts (StarDist stores it in float32; the match decision can
differ only for an IoU within float32 rounding of τ, i.e. objects of more than
about 10⁷ voxels).

Over a dataset (many images or time points) the counts TP, FP, FN, n_true,
n_pred and the sum of matched IoU are summed, then the ratios recomputed:
StarDist's ``matching_dataset(..., by_image=False)``.

Pixel metrics of the binarised masks
------------------------------------
The paper also compares methods by the mean squared error and the structural
similarity between the *binarised* prediction and ground truth (foreground =
label > 0):

* MSE = mean over voxels of ``((pred > 0) − (gt > 0))²``, i.e. the fraction of
  voxels whose foreground/background state differs (0 is perfect);
* SSIM = ``skimage.metrics.structural_similarity(gt > 0, pred > 0,
  data_range=1)`` on the masks as float64: uniform 7-voxel window in every
  dimension, sample covariance, mean of the local SSIM map over the voxels at
  least 3 voxels from the border (1 is perfect). Every axis must be at least
  ``win_size`` long.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from vollseg_dask.errors import InvalidDataError, ShapeError
from vollseg_dask.kernels.overlap import (
    binary_disagreement,
    check_label_pair,
    label_sizes,
    overlap_table,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "COUNT_COLUMNS",
    "METRIC_COLUMNS",
    "normalise_thresholds",
    "matching_from_overlaps",
    "matching",
    "matching_dataset",
    "aggregate_matching",
    "finalise_matching",
    "binary_mse",
    "binary_ssim",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

COUNT_COLUMNS = ("tp", "fp", "fn", "n_true", "n_pred", "sum_matched_score")
"""Additive columns: a dataset's values are the sums of its images' values."""

METRIC_COLUMNS = (
    "thresh",
    "tp",
    "fp",
    "fn",
    "n_true",
    "n_pred",
    "precision",
    "recall",
    "f1",
    "accuracy",
    "mean_true_score",
    "mean_matched_score",
    "panoptic_quality",
    "sum_matched_score",
)


def normalise_thresholds(thresh: float | Iterable[float]) -> tuple[float, ...]:
    """IoU thresholds as a tuple of floats in (0, 1].

    Parameters
    ----------
    thresh : float or iterable of float

    Raises
    ------
    InvalidDataError
        An empty list, a non-number, or a value outside (0, 1].
    """
    values = (thresh,) if np.isscalar(thresh) else tuple(thresh)  # type: ignore[arg-type]
    if not values:
        raise InvalidDataError("at least one IoU threshold is needed, got an empty list")
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidDataError(f"IoU threshold {v!r} is not a number") from None
        if not (0.0 < f <= 1.0):
            raise InvalidDataError(f"IoU threshold must lie in (0, 1], got {v!r}")
        out.append(f)
    return tuple(out)


def _optimal_matching(
    t_idx: np.ndarray, p_idx: np.ndarray, iou: np.ndarray, n_t: int, n_p: int, thresh: float, n_matched: int
) -> np.ndarray:
    """Indices (into the pair arrays) of the pairs StarDist's assignment selects.

    Maximises ``#(IoU >= thresh) + sum(IoU) / (2 * n_matched)`` over matchings of
    the sparse bipartite graph (the second term < 1/2 only breaks ties). Every
    ground-truth row gets a private dummy column of weight 0 so that a full
    matching always exists; all weights are shifted by +1 because the sparse
    solver needs non-zero weights (the shift adds the same constant n_t to every
    full matching).
    """
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    w = 1.0 + (iou >= thresh).astype(np.float64) + iou / (2.0 * n_matched)
    rows = np.concatenate([t_idx, np.arange(n_t)])
    cols = np.concatenate([p_idx, n_p + np.arange(n_t)])
    vals = np.concatenate([w, np.ones(n_t)])
    graph = coo_array((vals, (rows, cols)), shape=(n_t, n_p + n_t)).tocsr()
    row_ind, col_ind = min_weight_full_bipartite_matching(graph, maximize=True)
    real = col_ind < n_p
    row_ind, col_ind = row_ind[real], col_ind[real]
    # Map chosen (row, col) back to pair indices.
    pair_key = t_idx.astype(np.int64) * n_p + p_idx
    chosen_key = row_ind.astype(np.int64) * n_p + col_ind
    order = np.argsort(pair_key)
    pos = np.searchsorted(pair_key[order], chosen_key)
    return order[pos]


def finalise_matching(counts: pd.DataFrame) -> pd.DataFrame:
    """Add the ratio columns to a table of additive counts (one row per threshold).

    Parameters
    ----------
    counts : pandas.DataFrame
        Columns ``thresh`` and :data:`COUNT_COLUMNS`; other columns are kept.

    Returns
    -------
    pandas.DataFrame
        ``counts`` with precision, recall, f1, accuracy, mean_true_score,
        mean_matched_score and panoptic_quality (0 where TP = 0, as in StarDist).
    """
    out = counts.copy()
    tp = out["tp"].to_numpy(np.float64)
    fp = out["fp"].to_numpy(np.float64)
    fn = out["fn"].to_numpy(np.float64)
    n_true = out["n_true"].to_numpy(np.float64)
    s = out["sum_matched_score"].to_numpy(np.float64)
    has = tp > 0

    def ratio(num: np.ndarray, den: np.ndarray, mask: np.ndarray) -> np.ndarray:
        res = np.zeros_like(num)
        np.divide(num, den, out=res, where=mask & (den > 0))
        return res

    out["precision"] = ratio(tp, tp + fp, has)
    out["recall"] = ratio(tp, tp + fn, has)
    out["f1"] = ratio(2 * tp, 2 * tp + fp + fn, has)
    out["accuracy"] = ratio(tp, tp + fp + fn, has)
    out["mean_true_score"] = ratio(s, n_true, n_true > 0)
    out["mean_matched_score"] = ratio(s, tp, has)
    out["panoptic_quality"] = ratio(s, tp + fp / 2 + fn / 2, has)
    for c in ("tp", "fp", "fn", "n_true", "n_pred"):
        out[c] = out[c].astype(np.int64)
    keys = [c for c in out.columns if c not in METRIC_COLUMNS]
    return out[keys + list(METRIC_COLUMNS)]


def matching_from_overlaps(
    overlaps: pd.DataFrame,
    pred_sizes: pd.Series | None = None,
    gt_sizes: pd.Series | None = None,
    thresh: float | Iterable[float] = DEFAULT_THRESHOLDS,
) -> pd.DataFrame:
    """Object matching metrics at each IoU threshold, from a sparse overlap table.

    Parameters
    ----------
    overlaps : pandas.DataFrame
        Columns ``pred``, ``gt``, ``count`` (:func:`~vollseg_dask.kernels.overlap.overlap_table`,
        summed over blocks). Rows with a background label are used only for sizes.
    pred_sizes, gt_sizes : pandas.Series, optional
        Voxel count per label (index: label, background excluded). Default: derived from
        ``overlaps``, which must then include the background rows.
    thresh : float or iterable of float, default 0.1, 0.2, ..., 0.9
        IoU thresholds in (0, 1].

    Returns
    -------
    pandas.DataFrame
        One row per threshold, columns :data:`METRIC_COLUMNS`: ``thresh``, ``tp``, ``fp``,
        ``fn``, ``n_true``, ``n_pred``, ``precision``, ``recall``, ``f1``, ``accuracy`` (AP),
        ``mean_true_score``, ``mean_matched_score``, ``panoptic_quality`` and the additive
        ``sum_matched_score`` (sum of IoU over TP pairs).

    Raises
    ------
    InvalidDataError
        A threshold outside (0, 1], or an overlap larger than a label's size.
    """
    thresholds = normalise_thresholds(thresh)
    if pred_sizes is None or gt_sizes is None:
        ps, gs = label_sizes(overlaps)
        pred_sizes = ps if pred_sizes is None else pred_sizes
        gt_sizes = gs if gt_sizes is None else gt_sizes
    pred_sizes = pred_sizes[(pred_sizes.index != 0) & (pred_sizes > 0)]
    gt_sizes = gt_sizes[(gt_sizes.index != 0) & (gt_sizes > 0)]
    n_pred, n_true = int(len(pred_sizes)), int(len(gt_sizes))

    fg = overlaps[(overlaps["pred"] != 0) & (overlaps["gt"] != 0) & (overlaps["count"] > 0)]
    if len(fg):
        p_lab = fg["pred"].to_numpy(np.uint64)
        t_lab = fg["gt"].to_numpy(np.uint64)
        inter = fg["count"].to_numpy(np.float64)
        p_index = pd.Index(pred_sizes.index.to_numpy(np.uint64))
        t_index = pd.Index(gt_sizes.index.to_numpy(np.uint64))
        p_idx = p_index.get_indexer(p_lab)
        t_idx = t_index.get_indexer(t_lab)
        if (p_idx < 0).any() or (t_idx < 0).any():
            bad = p_lab[p_idx < 0][:3].tolist() + t_lab[t_idx < 0][:3].tolist()
            raise InvalidDataError(f"overlap table names labels {bad} that have no size")
        sp = pred_sizes.to_numpy(np.float64)[p_idx]
        st = gt_sizes.to_numpy(np.float64)[t_idx]
        union = sp + st - inter
        if (inter > np.minimum(sp, st)).any():
            raise InvalidDataError("overlap table holds an overlap larger than one of its labels' sizes")
        iou = inter / union
    else:
        p_idx = t_idx = np.zeros(0, np.intp)
        iou = np.zeros(0, np.float64)

    n_matched = min(n_true, n_pred)
    rows = []
    for thr in thresholds:
        if len(iou) == 0 or n_matched == 0:
            tp, s = 0, 0.0
        elif thr > 0.5:
            # IoU > 0.5 implies each object has at most one such partner: the matching is forced.
            sel = iou >= thr
            tp, s = int(sel.sum()), float(iou[sel].sum())
        else:
            chosen = _optimal_matching(t_idx, p_idx, iou, n_true, n_pred, thr, n_matched)
            ok = iou[chosen] >= thr
            tp, s = int(ok.sum()), float(iou[chosen][ok].sum())
        rows.append(
            {"thresh": thr, "tp": tp, "fp": n_pred - tp, "fn": n_true - tp, "n_true": n_true,
             "n_pred": n_pred, "sum_matched_score": s}
        )
    return finalise_matching(pd.DataFrame(rows))


def aggregate_matching(tables: Iterable[pd.DataFrame], by: Sequence[str] = ("thresh",)) -> pd.DataFrame:
    """Combine per-image matching tables into dataset metrics (sum counts, recompute ratios).

    Equals StarDist's ``matching_dataset(..., by_image=False)``.

    Parameters
    ----------
    tables : iterable of pandas.DataFrame
        Outputs of :func:`matching_from_overlaps` (or with extra key columns).
    by : sequence of str
        Columns that identify a row to aggregate over (default: the threshold).

    Returns
    -------
    pandas.DataFrame
        One row per distinct ``by`` value.
    """
    parts = list(tables)
    if not parts:
        raise InvalidDataError("no matching tables to aggregate")
    cat = pd.concat(parts, ignore_index=True)
    summed = cat.groupby(list(by), sort=True, as_index=False)[list(COUNT_COLUMNS)].sum()
    return finalise_matching(summed)


def matching(
    y_true: np.ndarray, y_pred: np.ndarray, thresh: float | Iterable[float] = 0.5
) -> pd.DataFrame:
    """Matching metrics between two label images (drop-in for ``stardist.matching.matching``).

    Parameters
    ----------
    y_true : numpy.ndarray, shape (...)
        Ground-truth labels, non-negative integers.
    y_pred : numpy.ndarray, same shape
        Predicted labels.
    thresh : float or iterable of float, default 0.5

    Returns
    -------
    pandas.DataFrame
        One row per threshold (even for a scalar), see :func:`matching_from_overlaps`.

    Raises
    ------
    DTypeError, ShapeError, InvalidDataError
    """
    table = overlap_table(y_pred, y_true)
    return matching_from_overlaps(table, thresh=thresh)


def matching_dataset(
    y_true: Iterable[np.ndarray], y_pred: Iterable[np.ndarray], thresh: float | Iterable[float] = 0.5
) -> pd.DataFrame:
    """Dataset matching metrics over pairs of label images (StarDist's ``matching_dataset``, by_image=False).

    Parameters
    ----------
    y_true, y_pred : iterable of numpy.ndarray
        Same number of images; each pair of the same shape.
    thresh : float or iterable of float

    Returns
    -------
    pandas.DataFrame
        One row per threshold.
    """
    trues, preds = list(y_true), list(y_pred)
    if len(trues) != len(preds):
        raise ShapeError(f"{len(trues)} ground-truth images but {len(preds)} predicted images")
    thresholds = normalise_thresholds(thresh)
    return aggregate_matching(matching(t, p, thresholds) for t, p in zip(trues, preds, strict=True))


def binary_mse(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean squared error between the binarised prediction and ground truth.

    Parameters
    ----------
    pred, gt : numpy.ndarray, same shape (...)
        Label images; foreground is ``label > 0``.

    Returns
    -------
    float
        ``mean(((pred > 0) - (gt > 0))**2)``, the fraction of voxels whose
        foreground state differs; in [0, 1], 0 when the masks agree.
    """
    pred, gt = check_label_pair(pred, gt)
    if pred.size == 0:
        raise InvalidDataError(f"cannot compute the MSE of empty arrays (shape {pred.shape})")
    return binary_disagreement(pred, gt) / pred.size


def binary_ssim(pred: np.ndarray, gt: np.ndarray, win_size: int = 7) -> float:
    """Structural similarity between the binarised prediction and ground truth.

    Parameters
    ----------
    pred, gt : numpy.ndarray, same shape (n0, n1, ...), every axis >= ``win_size``
        Label images; foreground is ``label > 0``.
    win_size : int, odd, default 7

    Returns
    -------
    float
        ``skimage.metrics.structural_similarity(gt > 0, pred > 0, data_range=1,
        win_size=win_size)`` on float64 masks; 1 when the masks agree.

    Raises
    ------
    ShapeError
        An axis shorter than ``win_size``.
    """
    from skimage.metrics import structural_similarity

    pred, gt = check_label_pair(pred, gt)
    if pred.ndim == 0 or min(pred.shape) < win_size:
        raise ShapeError(
            f"SSIM needs every axis at least win_size={win_size} long, got shape {pred.shape}"
        )
    if win_size < 3 or win_size % 2 != 1:
        raise ShapeError(f"SSIM win_size must be odd and >= 3, got {win_size}")
    a = (gt > 0).astype(np.float64)
    b = (pred > 0).astype(np.float64)
    return float(structural_similarity(a, b, data_range=1.0, win_size=win_size))
