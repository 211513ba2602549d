"""Evaluate predicted labels against ground truth, block by block with Dask, and plot the paper's figures.

For every time point, one Dask task per block of the spatial grid
(:func:`~vollseg_dask.plan.plan_blocks`, block cores aligned to the storage
chunks) reads the block of both label arrays and returns small results:

* the sparse overlap table of its core (:func:`~vollseg_dask.kernels.overlap.overlap_table`),
* the number of voxels whose binarised state differs (for the MSE),
* the sum and count of the local SSIM map over its core (the block is read with a
  halo of ``(win_size - 1) // 2`` voxels so that its core's SSIM values equal
  those of the whole volume; the overlap table uses the core only).

These results are exact and decomposable; they are reduced per time point by
a tree of small tasks and turned into matching metrics on the client
(:func:`~vollseg_dask.metrics.matching_from_overlaps`). No dense array larger
than one block is ever built.

The result table has one row per (t, τ) plus, for each τ, one aggregate row
over all time points (``t`` is ``<NA>``), computed as StarDist's
``matching_dataset(..., by_image=False)``: counts summed, ratios recomputed; the
aggregate MSE and SSIM are the voxel-weighted means over all time points.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from vollseg_dask.errors import AxesError, DTypeError, InvalidDataError, ShapeError
from vollseg_dask.kernels.overlap import (
    binary_disagreement,
    combine_overlap_tables,
    overlap_table,
    ssim_map_sum,
)
from vollseg_dask.metrics import (
    DEFAULT_THRESHOLDS,
    METRIC_COLUMNS,
    aggregate_matching,
    matching_from_overlaps,
    normalise_thresholds,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import dask.array

__all__ = ["evaluate_store", "evaluate_arrays", "plot_metrics", "RESULT_COLUMNS", "PLOT_FILES"]

LOG = logging.getLogger(__name__)

RESULT_COLUMNS = ("t", *METRIC_COLUMNS, "mse", "ssim")
PLOT_FILES = {
    "accuracy": "accuracy_vs_iou.png",
    "f1": "f1_vs_iou.png",
    "tp": "tp_vs_iou.png",
    "mse": "mse.png",
    "ssim": "ssim.png",
}
_REDUCE_FAN_IN = 8


# --------------------------------------------------------------------------------------------------
# Block tasks (run on workers)
# --------------------------------------------------------------------------------------------------


def _block_stats(
    pred_read: np.ndarray,
    gt_read: np.ndarray,
    core_in_read: tuple[slice, ...],
    ssim_region: tuple[slice, ...] | None,
    squeeze_axes: tuple[int, ...],
    win_size: int,
) -> dict[str, Any]:
    """Overlap table, disagreement count and SSIM partial sum of one block."""
    pred_read = np.asarray(pred_read)
    gt_read = np.asarray(gt_read)
    pc, gc = pred_read[core_in_read], gt_read[core_in_read]
    out: dict[str, Any] = {
        "table": overlap_table(pc, gc),
        "diff": binary_disagreement(pc, gc),
        "n_vox": int(pc.size),
        "ssim_sum": 0.0,
        "ssim_n": 0,
    }
    if ssim_region is not None:
        ps = np.squeeze(pred_read, axis=squeeze_axes) if squeeze_axes else pred_read
        gs = np.squeeze(gt_read, axis=squeeze_axes) if squeeze_axes else gt_read
        out["ssim_sum"], out["ssim_n"] = ssim_map_sum(ps, gs, ssim_region, win_size=win_size)
    return out


def _combine_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum block results (tables by pair, scalars by addition)."""
    return {
        "table": combine_overlap_tables(p["table"] for p in parts),
        "diff": sum(p["diff"] for p in parts),
        "n_vox": sum(p["n_vox"] for p in parts),
        "ssim_sum": float(sum(p["ssim_sum"] for p in parts)),
        "ssim_n": sum(p["ssim_n"] for p in parts),
    }


def _tree_reduce(items: list[Any]) -> Any:
    import dask

    combine = dask.delayed(_combine_stats, pure=True)
    while len(items) > 1:
        items = [combine(items[i : i + _REDUCE_FAN_IN]) for i in range(0, len(items), _REDUCE_FAN_IN)]
    return items[0]


# --------------------------------------------------------------------------------------------------
# Drivers
# --------------------------------------------------------------------------------------------------


_NUMPY_BLOCK = 128  # default block edge for in-memory input


def _as_dask(arr: Any) -> tuple[dask.array.Array, bool]:
    """A Dask view of ``arr`` and whether it was already a Dask array (numpy -> one chunk)."""
    import dask.array as da

    if isinstance(arr, da.Array):
        return arr, True
    a = np.asarray(arr)
    return da.from_array(a, chunks=a.shape), False


def _check_dtype(dtype: np.dtype, name: str, shape: tuple[int, ...]) -> None:
    if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
        raise DTypeError(
            f"{name} labels must have an integer dtype, got {dtype} (shape {shape}); "
            "binarised masks or probability maps are not label images"
        )


def _spatial_layout(axes: str | None, shape: tuple[int, ...]) -> tuple[int | None, tuple[int, ...]]:
    """Index of the t axis (or None) and the indices of squeezed channel axes."""
    if axes is None:
        return None, ()
    axes = axes.lower()
    if len(axes) != len(shape) or len(set(axes)) != len(axes) or set(axes) - set("tczyx"):
        raise AxesError(f"axes {axes!r} do not describe an array of shape {shape} (use letters of 'tczyx')")
    c_axes = tuple(i for i, a in enumerate(axes) if a == "c")
    for i in c_axes:
        if shape[i] != 1:
            raise AxesError(f"label arrays must not have a channel axis longer than 1, got shape {shape} axes {axes!r}")
    t_axis = axes.index("t") if "t" in axes else None
    return t_axis, c_axes


def evaluate_arrays(
    pred: np.ndarray | dask.array.Array,
    gt: np.ndarray | dask.array.Array,
    thresholds: float | Iterable[float] = DEFAULT_THRESHOLDS,
    per_t: bool = True,
    *,
    axes: str | None = None,
    block_shape: int | Sequence[int | None] | None = None,
    ssim: bool = True,
    win_size: int = 7,
    scheduler: Any = None,
) -> pd.DataFrame:
    """Matching metrics, MSE and SSIM of predicted labels against ground truth, block-wise.

    Parameters
    ----------
    pred, gt : numpy.ndarray or dask.array.Array, same shape
        Integer label arrays; ``axes`` says which axis (if any) is time.
    thresholds : float or iterable of float, default 0.1 ... 0.9
        IoU thresholds τ in (0, 1].
    per_t : bool, default True
        Return one row per (t, τ) before the aggregate rows; False returns only the aggregate.
    axes : str, optional
        Axes of the arrays (letters of ``tczyx``, e.g. ``"tzyx"``). Without it (or without a
        ``t``) the whole array is one time point, reported as ``t = 0``. A ``c`` axis must have
        length 1.
    block_shape : int or sequence, optional
        Spatial core shape of a block (rounded up to the Dask chunks). Default: the Dask chunks.
    ssim : bool, default True
        Compute SSIM (set False to skip it: the ``ssim`` column is then NaN).
    win_size : int, default 7
        SSIM window. Singleton spatial axes are dropped for SSIM; when another spatial axis is
        shorter than ``win_size`` the SSIM is NaN (and a warning is logged).
    scheduler : optional
        Passed to ``dask.compute`` (default: the active client or the threaded scheduler).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`RESULT_COLUMNS`; ``t`` is a nullable integer, ``<NA>`` on the aggregate rows.

    Raises
    ------
    ShapeError, DTypeError, AxesError, InvalidDataError
    """
    import dask

    from vollseg_dask.plan import plan_blocks

    thr = normalise_thresholds(thresholds)
    pshape, gshape = tuple(int(s) for s in np.shape(pred)), tuple(int(s) for s in np.shape(gt))
    if pshape != gshape:
        raise ShapeError(f"predicted labels have shape {pshape} but ground truth has shape {gshape}")
    _check_dtype(np.dtype(pred.dtype), "predicted", pshape)
    _check_dtype(np.dtype(gt.dtype), "ground-truth", gshape)
    if len(pshape) == 0 or 0 in pshape:
        raise InvalidDataError(f"cannot evaluate empty label arrays of shape {pshape}")
    t_axis, c_axes = _spatial_layout(axes, pshape)

    pd_, p_lazy = _as_dask(pred)
    gd_, _ = _as_dask(gt)
    # Move t first and drop channel axes: (T, *spatial).
    if c_axes:
        pd_ = pd_.squeeze(axis=c_axes)
        gd_ = gd_.squeeze(axis=c_axes)
        if t_axis is not None:
            t_axis -= sum(1 for c in c_axes if c < t_axis)
    if t_axis is None:
        pd_, gd_ = pd_[None], gd_[None]
    else:
        pd_, gd_ = _to_front(pd_, t_axis), _to_front(gd_, t_axis)
    n_t = int(pd_.shape[0])
    spatial = tuple(int(s) for s in pd_.shape[1:])
    if not spatial:
        raise ShapeError(f"label arrays of shape {pshape} (axes {axes!r}) have no spatial axis")

    # SSIM layout: drop singleton spatial axes; the rest need win_size voxels.
    squeeze_axes = tuple(i for i, n in enumerate(spatial) if n == 1)
    kept = [i for i, n in enumerate(spatial) if n > 1]
    pad = (win_size - 1) // 2
    do_ssim = bool(ssim)
    if do_ssim and (win_size < 3 or win_size % 2 != 1):
        raise ShapeError(f"SSIM win_size must be odd and >= 3, got {win_size}")
    if do_ssim and (not kept or min(spatial[i] for i in kept) < win_size):
        LOG.warning("SSIM skipped: spatial shape %s has an axis shorter than win_size=%d", spatial, win_size)
        do_ssim = False
    halo = tuple(pad if (do_ssim and n > 1) else 0 for n in spatial)

    if p_lazy:  # align block cores to the storage chunks of the prediction
        chunk_spatial: tuple[int, ...] | None = tuple(int(c) for c in pd_.chunksize[1:])
        bs = chunk_spatial if block_shape is None else block_shape
    else:
        chunk_spatial = None
        bs = tuple(min(n, _NUMPY_BLOCK) for n in spatial) if block_shape is None else block_shape
    plan = plan_blocks(spatial, bs, halo, chunks=chunk_spatial)

    per_t_stats = []
    task = dask.delayed(_block_stats, pure=True)
    for t in range(n_t):
        parts = []
        for block in plan:
            region: tuple[slice, ...] | None = None
            if do_ssim:
                reg = []
                for i in kept:
                    c, r = block.core[i], block.read[i]
                    lo, hi = max(c.start, pad), min(c.stop, spatial[i] - pad)
                    reg.append(slice(lo - r.start, max(lo, hi) - r.start))
                region = tuple(reg)
            parts.append(
                task(pd_[(t, *block.read)], gd_[(t, *block.read)], block.core_in_read, region, squeeze_axes, win_size)
            )
        per_t_stats.append(_tree_reduce(parts))
    (results,) = dask.compute(per_t_stats, scheduler=scheduler)

    tables = []
    for t, st in enumerate(results):
        m = matching_from_overlaps(st["table"], thresh=thr)
        m.insert(0, "t", t)
        m["mse"] = st["diff"] / st["n_vox"]
        m["ssim"] = st["ssim_sum"] / st["ssim_n"] if do_ssim and st["ssim_n"] else np.nan
        tables.append(m)
    agg = aggregate_matching([m.drop(columns=["mse", "ssim"]) for m in tables])
    agg.insert(0, "t", pd.NA)
    agg["mse"] = sum(st["diff"] for st in results) / sum(st["n_vox"] for st in results)
    ssim_n = sum(st["ssim_n"] for st in results)
    agg["ssim"] = sum(st["ssim_sum"] for st in results) / ssim_n if do_ssim and ssim_n else np.nan
    out = pd.concat([*tables, agg] if per_t else [agg], ignore_index=True)
    out["t"] = out["t"].astype("Int64")
    return out[list(RESULT_COLUMNS)]


def _to_front(arr: dask.array.Array, axis: int) -> dask.array.Array:
    """Move ``axis`` of a Dask array to the front (lazy)."""
    import dask.array as da

    return arr if axis == 0 else da.moveaxis(arr, axis, 0)


def evaluate_store(
    store: str | os.PathLike[str],
    pred_name: str,
    gt_name: str,
    thresholds: float | Iterable[float] = DEFAULT_THRESHOLDS,
    per_t: bool = True,
    *,
    level: int = 0,
    block_shape: int | Sequence[int | None] | None = None,
    ssim: bool = True,
    win_size: int = 7,
    scheduler: Any = None,
) -> pd.DataFrame:
    """Evaluate the labels group ``pred_name`` against ``gt_name`` of one OME-Zarr store.

    Parameters
    ----------
    store : path-like
        OME-Zarr image store holding both labels groups (``store/labels/<name>``).
    pred_name, gt_name : str
        Names of the predicted and ground-truth labels groups.
    thresholds, per_t, block_shape, ssim, win_size, scheduler
        See :func:`evaluate_arrays`.
    level : int, default 0
        Pyramid level to compare (both groups).

    Returns
    -------
    pandas.DataFrame
        One row per (t, τ) (when ``per_t``) plus one aggregate row per τ with ``t = <NA>``;
        columns :data:`RESULT_COLUMNS`.

    Raises
    ------
    StoreNotFoundError
        Missing store or labels group.
    AxesError, ShapeError
        The two groups have different axes or shapes.
    """
    from vollseg_dask.io.omezarr import open_labels

    pred = open_labels(store, pred_name, level)
    gt = open_labels(store, gt_name, level)
    if pred.axes != gt.axes:
        raise AxesError(f"labels {pred_name!r} have axes {pred.axes!r} but {gt_name!r} have {gt.axes!r}")
    if pred.shape != gt.shape:
        raise ShapeError(f"labels {pred_name!r} have shape {pred.shape} but {gt_name!r} have shape {gt.shape}")
    return evaluate_arrays(
        pred.data, gt.data, thresholds, per_t, axes=pred.axes, block_shape=block_shape, ssim=ssim,
        win_size=win_size, scheduler=scheduler,
    )


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _summary_rows(table: pd.DataFrame, method: str) -> pd.DataFrame:
    missing = {"thresh", "accuracy", "f1", "tp"} - set(table.columns)
    if missing:
        raise InvalidDataError(f"table of method {method!r} lacks columns {sorted(missing)}")
    if "t" in table.columns:
        agg = table[table["t"].isna()]
        if len(agg) == 0:  # no aggregate rows: a single time point table
            ts = table["t"].dropna().unique()
            if len(ts) != 1:
                raise InvalidDataError(
                    f"table of method {method!r} has {len(ts)} time points but no aggregate rows (t = NA)"
                )
            agg = table
    else:
        agg = table
    return agg.sort_values("thresh")


def plot_metrics(table_by_method: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the paper's comparison plots as PNG files.

    Line plots of accuracy (AP), F1 and TP against the IoU threshold τ, one line per method,
    and bar charts of the binarised-mask MSE and SSIM per method. Drawn on matplotlib's Agg
    canvas without touching pyplot's global state.

    Parameters
    ----------
    table_by_method : mapping of str to pandas.DataFrame
        Method name (e.g. ``"VollSeg"``, ``"StarDist"``, ``"U-Net"``) to its result table
        (:func:`evaluate_store` / :func:`evaluate_arrays`; the aggregate rows are plotted).
    out_dir : path-like
        Folder to write into (created if needed).

    Returns
    -------
    dict of str to pathlib.Path
        Keys ``accuracy``, ``f1``, ``tp``, ``mse``, ``ssim`` (file names :data:`PLOT_FILES`).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not table_by_method:
        raise InvalidDataError("plot_metrics needs at least one method's table")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {m: _summary_rows(t, m) for m, t in table_by_method.items()}
    paths: dict[str, Path] = {}

    labels = {"accuracy": "Accuracy (AP)", "f1": "F1 score", "tp": "True positives"}
    for key, ylabel in labels.items():
        fig = Figure(figsize=(5, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for method, s in summaries.items():
            ax.plot(s["thresh"], s[key], marker="o", label=method)
        ax.set_xlabel("IoU threshold τ")
        ax.set_ylabel(ylabel)
        if key != "tp":
            ax.set_ylim(0, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths[key] = out / PLOT_FILES[key]
        fig.savefig(paths[key], format="png")

    for key, ylabel in {"mse": "MSE (binary masks)", "ssim": "SSIM (binary masks)"}.items():
        fig = Figure(figsize=(5, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        names = list(summaries)
        vals = [float(s[key].iloc[0]) if key in s.columns and len(s) else np.nan for s in summaries.values()]
        ax.bar(range(len(names)), np.nan_to_num(vals, nan=0.0), color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(ylabel)
        for i, v in enumerate(vals):
            ax.annotate("n/a" if np.isnan(v) else f"{v:.3g}", (i, 0 if np.isnan(v) else v),
                        ha="center", va="bottom")
        fig.tight_layout()
        paths[key] = out / PLOT_FILES[key]
        fig.savefig(paths[key], format="png")
    return paths
