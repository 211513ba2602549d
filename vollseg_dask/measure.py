"""Stage S7: per-cell attribute table of a labels group, streamed to a Parquet dataset.

For every time point ``t`` the driver builds one small task graph:

1. one task per block of the labels (blocks aligned to the labels' storage units) reads its
   own labels (and intensities) straight from zarr and returns a partial table
   (:func:`vollseg_dask.kernels.regionprops.block_partials`);
2. a tree of :func:`~vollseg_dask.kernels.regionprops.reduce_partials` tasks merges them
   exactly into one row per label;
3. a finishing task computes the attributes (:func:`~vollseg_dask.kernels.regionprops.finalize`),
   the provisional IDs, the tissue flag and signed distance to the tissue boundary, the
   optional surface areas, and writes the time point atomically
   (:func:`vollseg_dask.io.cell_table.write_time_point`).

No dense array of the whole volume is ever built; the client only receives row counts.
Time points already marked done in the table folder are skipped, so an interrupted run is
resumed by running it again.

Tissue distance (:mod:`vollseg_dask.kernels.distance`): when a time point's mask has at most
``distance_max_voxels`` voxels, the exact Euclidean distance transform of the whole mask is
sampled at each cell's nearest voxel (``distance_error_um = 0``). Larger masks are pooled
into boxes (:func:`~vollseg_dask.kernels.distance.pool_mask`, one task per block); cells in
boxes that are wholly tissue or wholly background get the coarse transform with its proven
bound (``distance_error_um <= 2 * box half-diagonal``), and cells in mixed boxes (the ones
near the boundary) are refined exactly on a small crop of the full-resolution mask.

Provisional IDs: if the labels group's attributes hold ``{"vollseg": {"provisional_id":
"<file>.parquet"}}`` (a Parquet table beside the arrays with columns ``t``, ``label``,
``provisional_id``), each cell's provisional ID comes from it; a table can also be passed
in; otherwise ``provisional_id`` equals ``label``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from vollseg_dask.config import StrictModel
from vollseg_dask.errors import ConfigError, DTypeError, InvalidDataError, ShapeError
from vollseg_dask.tissue import TissueConfig, TissueSource, _index, _zyx_shape

__all__ = ["MeasureConfig", "MeasureResult", "measure_cells", "default_block"]

LOG = logging.getLogger(__name__)


class MeasureConfig(StrictModel):
    """Settings of the per-cell measurement (stage S7)."""

    labels: str = Field("cells", description="Labels group to measure (any integer labels group of the store).")
    channels: list[int] | None = Field(
        None, description="Image channels for intensity statistics; None = all, [] = none."
    )
    tissue_mask: str | None = Field(
        None,
        description="None, 'auto' (computed and stored as labels/<tissue_name>), a labels group name, "
        "or the path of another OME-Zarr store holding the mask.",
    )
    tissue_name: str = Field("tissue_mask", description="Labels group written by tissue_mask='auto'.")
    tissue: TissueConfig = Field(default_factory=TissueConfig, description="Automatic tissue mask settings.")
    block: tuple[int, int, int] | None = Field(
        None, description="Block shape (z, y, x) in voxels, rounded up to the labels' storage units."
    )
    surface: bool = Field(False, description="Also measure surface area (marching cubes) and sphericity.")
    distance_max_voxels: int = Field(
        1 << 24, ge=1, description="Largest mask volume per time point for the exact distance transform."
    )
    times: list[int] | None = Field(None, description="Time points to measure (default all).")
    batch_times: int = Field(4, ge=1, description="Time points computed together (bounds the graph size).")
    surface_tasks: int = Field(4, ge=1, description="Tasks per time point for surface areas.")


@dataclass
class MeasureResult:
    """What a measurement run did."""

    table: Path
    rows: dict[int, int] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    voxels: int = 0
    seconds: float = 0.0
    csv: Path | None = None

    @property
    def n_rows(self) -> int:
        return int(sum(self.rows.values()))

    @property
    def rows_per_s(self) -> float:
        return self.n_rows / self.seconds if self.seconds > 0 else float("nan")

    @property
    def voxels_per_s(self) -> float:
        return self.voxels / self.seconds if self.seconds > 0 else float("nan")


# ----------------------------------------------------------------------------------------------
# Tasks (top-level functions: they are pickled to workers)
# ----------------------------------------------------------------------------------------------


def _open(store: str, path: str):
    import zarr

    return zarr.open_array(store=store, path=path, mode="r")


def _read_zyx(arr: Any, axes: str, t: int | None, core: tuple[slice, slice, slice], c: int | None = 0) -> np.ndarray:
    from vollseg_dask.io.omezarr import read_region

    shape = tuple(s.stop - s.start for s in core)
    # a chunk the codec cannot decode is named (CorruptChunkError) rather than a bare codec error
    return read_region(arr, _index(axes, t, core, c=c)).reshape(shape)


def _partials_task(store: str, lab_path: str, lab_axes: str, img_path: str | None, img_axes: str,
                   channels: tuple[int, ...], t: int | None, core: tuple[slice, slice, slice]) -> pd.DataFrame:
    from vollseg_dask.kernels.regionprops import block_partials

    labels = _read_zyx(_open(store, lab_path), lab_axes, t, core)
    intensity = None
    if channels:
        img = _open(store, img_path)  # type: ignore[arg-type]
        intensity = np.stack([_read_zyx(img, img_axes, t, core, c=ch) for ch in channels])
    try:
        return block_partials(labels, intensity, offset=tuple(s.start for s in core))
    except InvalidDataError as exc:
        raise InvalidDataError(f"t={t}, block {[(s.start, s.stop) for s in core]}: {exc}") from None


def _reduce_task(parts: list[pd.DataFrame]) -> pd.DataFrame:
    from vollseg_dask.kernels.regionprops import reduce_partials

    return reduce_partials(parts)


def _pool_task(source: TissueSource, t: int, core: tuple[slice, slice, slice],
               factors: tuple[int, int, int]) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    from vollseg_dask.kernels.distance import pool_mask

    any_, all_ = pool_mask(source.read(t, core), factors)
    return tuple(s.start // f for s, f in zip(core, factors, strict=True)), any_, all_  # type: ignore[return-value]


def _surface_task(reduced: pd.DataFrame, store: str, lab_path: str, lab_axes: str, t: int | None,
                  shard: int, n_shards: int, voxel_size: tuple[float, float, float]) -> pd.DataFrame:
    from vollseg_dask.kernels.regionprops import surface_area

    arr = _open(store, lab_path)
    rows = reduced.iloc[shard::n_shards]
    areas = np.empty(len(rows))
    for i, r in enumerate(rows.itertuples(index=False)):
        core = (slice(int(r.z0), int(r.z1)), slice(int(r.y0), int(r.y1)), slice(int(r.x0), int(r.x1)))
        crop = _read_zyx(arr, lab_axes, t, core)
        areas[i] = surface_area(crop == np.asarray(r.label).astype(crop.dtype), voxel_size)
    return pd.DataFrame({"label": rows["label"].to_numpy(np.uint64), "surface_area_um2": areas})


def _tissue_columns(cells: pd.DataFrame, source: TissueSource, t: int, voxel_size: tuple[float, float, float],
                    pools: list | None, factors: tuple[int, int, int] | None) -> tuple[np.ndarray, ...]:
    from vollseg_dask.kernels.distance import coarse_distance, crop_radius, nearest_voxel, signed_distance_at

    shape = source.shape_zyx
    pts = cells[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(np.float64)
    vox = nearest_voxel(pts, shape)
    if pools is None:
        dist, inside = signed_distance_at(source.read(t), voxel_size, vox)
        return dist, inside, np.zeros(len(vox))
    assert factors is not None
    cshape = tuple(-(-n // f) for n, f in zip(shape, factors, strict=True))
    any_c = np.zeros(cshape, bool)
    all_c = np.zeros(cshape, bool)
    for origin, a, b in pools:
        region = tuple(slice(o, o + s) for o, s in zip(origin, a.shape, strict=True))
        any_c[region] = a
        all_c[region] = b
    dist, bound, inside, mixed = coarse_distance(any_c, all_c, factors, voxel_size, vox)
    err = bound.copy()
    arr = source.array()
    for i in np.flatnonzero(mixed):
        # The other phase is within `bound` of this voxel: a crop of that radius makes it exact.
        r = crop_radius(float(bound[i]), voxel_size)
        lo = np.maximum(vox[i] - r, 0)
        hi = np.minimum(vox[i] + r + 1, shape)
        crop = source.read(t, tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)), arr=arr)
        d, ins = signed_distance_at(crop, voxel_size, vox[i:i + 1], offset=lo)
        dist[i], inside[i], err[i] = d[0], ins[0], 0.0
    return dist, inside, err


def _finish_task(reduced: pd.DataFrame, pools: list | None, surfaces: list[pd.DataFrame] | None,
                 provisional: pd.DataFrame | None, *, out: str, t: int, n_channels: int,
                 voxel_size: tuple[float, float, float], tissue: TissueSource | None,
                 factors: tuple[int, int, int] | None, prov_file: str | None, voxels: int,
                 started: float, labels_fp: str | None = None) -> dict[str, Any]:
    from vollseg_dask.io.cell_table import cell_table_columns, write_time_point
    from vollseg_dask.kernels.regionprops import finalize

    cells = finalize(reduced, voxel_size)
    n = len(cells)
    labels = cells["label"].to_numpy(np.uint64)
    # Provisional IDs.
    if prov_file is not None and provisional is None:
        import pyarrow.parquet as pq

        provisional = pq.read_table(prov_file, filters=[("t", "==", int(t))]).to_pandas()
    if provisional is not None:
        cells["provisional_id"] = _map_provisional(provisional, labels, t)
    else:
        if n and labels.max() > np.iinfo(np.int64).max:
            raise InvalidDataError(f"t={t}: label {labels.max()} does not fit the int64 provisional_id column")
        cells["provisional_id"] = labels.astype(np.int64)
    # Tissue.
    if tissue is not None and n:
        dist, inside, err = _tissue_columns(cells, tissue, t, voxel_size, pools, factors)
        cells["inside_tissue"] = pd.array(inside, dtype="boolean")
        cells["distance_to_boundary_um"] = dist
        cells["distance_error_um"] = err
    else:
        cells["inside_tissue"] = pd.array([pd.NA] * n, dtype="boolean")
        cells["distance_to_boundary_um"] = np.full(n, np.nan)
        cells["distance_error_um"] = np.full(n, np.nan)
    # Surface.
    if surfaces is not None and n:
        sa = pd.concat(surfaces, ignore_index=True).set_index("label")["surface_area_um2"]
        area = sa.reindex(labels).to_numpy(np.float64)
        cells["surface_area_um2"] = area
        vol = cells["volume_um3"].to_numpy(np.float64)
        cells["sphericity"] = np.cbrt(np.pi) * np.cbrt(6.0 * vol) ** 2 / area
    else:
        cells["surface_area_um2"] = np.full(n, np.nan)
        cells["sphericity"] = np.full(n, np.nan)
    cells = cells[[name for name, _ in cell_table_columns(n_channels)]]
    write_time_point(out, t, cells, n_channels, extra_marker={"voxels": voxels, "labels": labels_fp,
                                                              "seconds": round(time.time() - started, 3)})
    return {"t": t, "rows": n}


def _map_provisional(table: pd.DataFrame, labels: np.ndarray, t: int) -> np.ndarray:
    need = {"label", "provisional_id"}
    if not need <= set(table.columns):
        raise InvalidDataError(f"provisional-id table must have columns {sorted(need)}, has {list(table.columns)}")
    if "t" in table.columns:
        table = table[table["t"].to_numpy() == t]
    m = pd.Series(table["provisional_id"].to_numpy(), index=table["label"].to_numpy(np.uint64))
    if not m.index.is_unique:
        raise InvalidDataError(f"provisional-id table lists a label twice at t={t}")
    got = m.reindex(labels)
    if got.isna().any():
        missing = labels[got.isna().to_numpy()][:5].tolist()
        raise InvalidDataError(f"provisional-id table lacks labels {missing} at t={t}")
    vals = got.to_numpy()
    if vals.dtype.kind == "u" and len(vals) and vals.max() > np.iinfo(np.int64).max:
        raise InvalidDataError(f"t={t}: provisional ID {vals.max()} does not fit int64")
    return vals.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def default_block(shape: Sequence[int], unit: Sequence[int], target_voxels: int = 1 << 23) -> tuple[int, ...]:
    """Grow the storage unit (y, x first, then z) by doubling until about ``target_voxels`` voxels."""
    blk = [max(1, min(int(u), int(s))) for u, s in zip(unit, shape, strict=True)]
    grown = True
    while grown:
        grown = False
        for axis in (1, 2, 0):
            if blk[axis] < shape[axis] and math.prod(blk) * 2 <= target_voxels:
                blk[axis] = min(blk[axis] * 2, int(shape[axis]))
                grown = True
    return tuple(blk)


def _pool_factors(shape: Sequence[int], voxel_size: Sequence[float], max_voxels: int) -> tuple[int, int, int]:
    """Smallest power-of-two pooling that fits ``max_voxels``, coarsening the finest axis first."""
    f = [1, 1, 1]
    while math.prod(-(-n // k) for n, k in zip(shape, f, strict=True)) > max_voxels:
        cand = [a for a in range(3) if f[a] < shape[a]]
        axis = min(cand, key=lambda a: (f[a] * voxel_size[a], -shape[a] // f[a]))
        f[axis] *= 2
    return tuple(f)  # type: ignore[return-value]


def _provisional_file(store: Path, labels: str) -> str | None:
    import zarr

    attrs = dict(zarr.open_group(str(store / "labels" / labels), mode="r").attrs)
    rec = attrs.get("vollseg", {})
    name = rec.get("provisional_id") if isinstance(rec, dict) else None
    if not name:
        return None
    path = store / "labels" / labels / str(name)
    if not path.is_file():
        raise InvalidDataError(f"labels/{labels} names provisional-id table {name!r}, which does not exist at {path}")
    return str(path)


def measure_cells(
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    labels: str | None = None,
    channels: Sequence[int] | None | str = "config",
    tissue_mask: str | None | os.PathLike[str] = "config",
    block: Sequence[int] | None = None,
    surface: bool | None = None,
    times: Sequence[int] | None = None,
    overwrite: bool = False,
    provisional_ids: pd.DataFrame | None = None,
    csv_btrackmate: str | os.PathLike[str] | None = None,
    inside_tissue_only: bool = False,
    config: MeasureConfig | None = None,
    timings: dict[str, dict[str, Any]] | None = None,
) -> MeasureResult:
    """Measure every cell of a labels group into a Parquet cell table partitioned by ``t``.

    Runs on the current Dask scheduler: inside ``vollseg_dask.runtime.get_client()`` (or any
    active ``distributed.Client``) on the cluster, otherwise on Dask's local threads.

    Parameters
    ----------
    store : path-like
        OME-Zarr image store holding ``labels/<labels>``.
    out : path-like
        Table folder (created; resumed if it holds a table made with the same settings).
    labels, channels, tissue_mask, block, surface, times
        Override the corresponding :class:`MeasureConfig` fields (see there).
    overwrite : bool
        Replace an existing table (and recompute an ``auto`` tissue mask).
    provisional_ids : DataFrame, optional
        Columns ``t``, ``label``, ``provisional_id``; takes precedence over the labels group's.
    csv_btrackmate : path-like, optional
        Also write BTrackMate's CSV there (:func:`vollseg_dask.io.cell_table.write_btrackmate_csv`).
    inside_tissue_only : bool
        Keep only cells inside the tissue in that CSV.
    config : MeasureConfig, optional
    timings : dict, optional
        Stage-timing record (:class:`vollseg_dask.runtime.StageTimer`), entry ``"S7 measure"``.

    Returns
    -------
    MeasureResult
    """
    import dask

    from vollseg_dask.io.calibration import image_calibration
    from vollseg_dask.io.cell_table import init_table_dir, write_btrackmate_csv
    from vollseg_dask.io.omezarr import open_image, open_labels
    from vollseg_dask.plan import plan_blocks

    cfg = (config or MeasureConfig()).model_copy()
    if labels is not None:
        cfg.labels = labels
    if channels != "config":
        cfg.channels = None if channels is None else [int(c) for c in channels]  # type: ignore[union-attr]
    if tissue_mask != "config":
        cfg.tissue_mask = None if tissue_mask is None else str(tissue_mask)
    if block is not None:
        cfg.block = tuple(int(b) for b in block)  # type: ignore[assignment]
    if surface is not None:
        cfg.surface = bool(surface)
    if times is not None:
        cfg.times = [int(t) for t in times]

    from vollseg_dask.io.atomic import commit_dir, recover_dir
    from vollseg_dask.io.omezarr import labels_fingerprints_t

    root = Path(store).resolve()
    lab = open_labels(root, cfg.labels, 0)
    labels_fps = labels_fingerprints_t(root, cfg.labels)
    if lab.dtype.kind not in "ui":
        raise DTypeError(f"labels/{cfg.labels} has dtype {lab.dtype}; measurement needs integer labels")
    shape = _zyx_shape(lab.axes, lab.shape)
    voxel_size = tuple(float(v) for v in lab.voxel_size)
    n_t = lab.shape[lab.axes.index("t")] if "t" in lab.axes else None

    # Image channels for intensities.
    image = open_image(root, 0)
    n_img_c = image.shape[image.axes.index("c")] if "c" in image.axes else 1
    chans = list(range(n_img_c)) if cfg.channels is None else list(cfg.channels)
    bad = [c for c in chans if not 0 <= c < n_img_c]
    if bad:
        raise ConfigError(f"channels {bad} do not exist: the image has {n_img_c} channel(s)")
    if chans and _zyx_shape(image.axes, image.shape) != shape:
        raise ShapeError(f"image (z, y, x) shape {_zyx_shape(image.axes, image.shape)} differs from "
                         f"labels/{cfg.labels} {shape}")

    all_t = list(range(n_t if n_t is not None else 1))
    todo_t = all_t if cfg.times is None else cfg.times
    badt = [t for t in todo_t if t not in all_t]
    if badt:
        raise ConfigError(f"time points {badt} do not exist: labels/{cfg.labels} has {len(all_t)}")

    # Tissue mask source.
    tissue: TissueSource | None = None
    if cfg.tissue_mask is not None:
        from vollseg_dask.tissue import make_tissue_mask, open_tissue_source

        name = cfg.tissue_mask
        if name == "auto":
            make_tissue_mask(root, name=cfg.tissue_name, config=cfg.tissue, overwrite=overwrite)
            name = cfg.tissue_name
        tissue = open_tissue_source(root, name, shape, n_t)

    prov_file = None if provisional_ids is not None else _provisional_file(root, cfg.labels)
    manifest = {
        "kind": "vollseg_dask.cell_table",
        "store": str(root),
        "labels": cfg.labels,
        "n_channels": len(chans),
        "channels": chans,
        "voxel_size_um": list(voxel_size),
        "tissue_mask": None if tissue is None else tissue.description,
        "tissue_settings": cfg.tissue.model_dump() if cfg.tissue_mask == "auto" else None,
        "surface": cfg.surface,
        "distance_max_voxels": cfg.distance_max_voxels,
        "provisional_id": "given" if provisional_ids is not None else (prov_file or "label"),
        "config": cfg.model_dump(mode="json"),
        # what the table's consumers (tracking, exports) need about the image; not an identity key,
        # so tables written before it was recorded still resume
        "image": image_calibration(image, labels=cfg.labels),
    }
    identity = [k for k in manifest if k not in ("config", "image")]
    from vollseg_dask.io.cell_table import check_replaceable, done_times, partition_name, time_point_marker
    from vollseg_dask.io.cell_table import partition_dir as _partition_dir

    def fresh(tab: Path, t: int) -> bool:
        # a time point counts as done only for the labels it was measured from
        return time_point_marker(tab, t).get("labels") == labels_fps[min(t, len(labels_fps) - 1)]

    final = Path(out)
    recover_dir(final)  # a replacement killed between its two renames
    staged = final.with_name(f".{final.name}.staging")
    table: Path | None = None
    if overwrite and final.exists():
        # build the new table beside the old one; the old one stays readable until the swap
        check_replaceable(final)
        shutil.rmtree(staged, ignore_errors=True)
        table = init_table_dir(staged, manifest, identity_keys=identity)
    else:
        table = init_table_dir(final, manifest, overwrite=overwrite, identity_keys=identity)
        stale = sorted(t for t in done_times(final) if not fresh(final, t))
        if stale:
            LOG.warning("labels/%s changed since the cell table's time point(s) %s were measured: the table is "
                        "rebuilt beside the old one (unchanged time points are copied)", cfg.labels, stale)
            try:
                table = init_table_dir(staged, manifest, identity_keys=identity)  # resumes a killed rebuild
            except Exception:  # noqa: BLE001 - an unusable leftover: start the rebuild again
                shutil.rmtree(staged, ignore_errors=True)
                table = init_table_dir(staged, manifest, identity_keys=identity)
            for t in sorted(done_times(final)):
                if fresh(final, t) and not fresh(staged, t):
                    name = partition_name(t)
                    shutil.rmtree(staged / name, ignore_errors=True)
                    shutil.copytree(_partition_dir(final, t), staged / name)
        else:
            shutil.rmtree(staged, ignore_errors=True)
    building = Path(table) != final
    done = {t for t in done_times(table) if fresh(Path(table), t)}
    pending = [t for t in todo_t if t not in done]
    result = MeasureResult(table=table, skipped=[t for t in todo_t if t in done])

    unit = _zyx_shape(lab.axes, lab.storage_unit)
    blk = tuple(cfg.block) if cfg.block is not None else default_block(shape, unit)
    plan = plan_blocks(shape, blk, chunks=unit)
    dist_pooled = tissue is not None and math.prod(shape) > cfg.distance_max_voxels
    factors = _pool_factors(shape, voxel_size, cfg.distance_max_voxels) if dist_pooled else None
    pool_plan = None
    if factors is not None:
        pblk = tuple(-(-b // f) * f for b, f in zip(plan.block_shape, factors, strict=True))
        pool_plan = plan_blocks(shape, pblk)
    voxels_t = math.prod(shape)
    store_s = str(root)
    img_path = image.path if chans else None

    def graph(t: int):
        tt = t if n_t is not None else None
        parts = [dask.delayed(_partials_task)(store_s, lab.path, lab.axes, img_path, image.axes, tuple(chans), tt,
                                              b.core) for b in plan]
        while len(parts) > 1:
            parts = [dask.delayed(_reduce_task)(parts[i:i + 8]) for i in range(0, len(parts), 8)]
        reduced = parts[0] if plan.blocks else None
        pools = None
        if pool_plan is not None:
            pools = [dask.delayed(_pool_task)(tissue, t, b.core, factors) for b in pool_plan]
        surfaces = None
        if cfg.surface:
            surfaces = [dask.delayed(_surface_task)(reduced, store_s, lab.path, lab.axes, tt, k, cfg.surface_tasks,
                                                    voxel_size) for k in range(cfg.surface_tasks)]
        prov = None
        if provisional_ids is not None:
            p = provisional_ids
            prov = p[p["t"].to_numpy() == t] if "t" in p.columns else p
        return dask.delayed(_finish_task)(reduced, pools, surfaces, prov, out=str(table), t=t,
                                          n_channels=len(chans), voxel_size=voxel_size, tissue=tissue,
                                          factors=factors, prov_file=prov_file, voxels=voxels_t,
                                          started=time.time(), labels_fp=labels_fps[min(t, len(labels_fps) - 1)])

    from vollseg_dask.runtime import StageTimer, compute_with_progress

    start = time.perf_counter()
    with StageTimer("S7 measure", timings, voxels=voxels_t * len(pending)):
        for i in range(0, len(pending), cfg.batch_times):
            batch = pending[i:i + cfg.batch_times]
            desc = f"measure t={batch[0]}" + (f"..{batch[-1]}" if len(batch) > 1 else "")
            for info in compute_with_progress(*[graph(t) for t in batch], desc=desc):
                result.rows[int(info["t"])] = int(info["rows"])
    result.seconds = time.perf_counter() - start
    result.voxels = voxels_t * len(pending)
    if labels_fingerprints_t(root, cfg.labels) != labels_fps:
        raise InvalidDataError(f"labels/{cfg.labels} of {root} were replaced while being measured; measure again")
    if building:
        commit_dir(table, final)
        table = final
        result.table = final
    if csv_btrackmate is not None:
        write_btrackmate_csv(table, csv_btrackmate, inside_tissue_only=inside_tissue_only)
        result.csv = Path(csv_btrackmate)
    LOG.info("measured %d cells in %d time points (%.1f rows/s, %.3g voxels/s); skipped %s",
             result.n_rows, len(pending), result.rows_per_s, result.voxels_per_s, result.skipped)
    return result


def manifest_of(table: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a cell table folder."""
    return json.loads((Path(table) / "_manifest.json").read_text(encoding="utf-8"))
