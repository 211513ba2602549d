"""Out-of-core LAP tracking: stream a spot table frame by frame and write a track store.

Passes over the frames (each reads one frame, or a window of frames, at a time):

1. **Link and gather.** Frames are read in batches of ``window_frames``; each frame pair
   ``(t, t + 1)`` of a batch is one task (:func:`~vollseg_dask.tracking.frames.link_frames`, run
   with Dask). The links are then walked in time order: every spot gets its segment, every frame
   is classified (segment starts, ends, middles) as soon as its successor pair is linked, and the
   segment-linking candidates that end in it are gathered against a window holding only the
   segment ends of the last ``MAX_FRAME_GAP`` frames and the middle spots of the previous frame.
   Per frame, a small work file keeps each spot's segment and predecessor link.
2. **Segment LAP** on the gathered candidates, one connected component at a time
   (:func:`~vollseg_dask.tracking.segments.link_segments`; components above
   ``max_component_size`` are solved in time windows, logged).
3. **Structure** from the segment table (:mod:`~vollseg_dask.tracking.structure`): pieces,
   tracklets, tracks, the minimum-tracklet-length filter; then a light pass over the work files
   finds each piece's smallest and first spot ID, which fix the track and tracklet numbering.
4. **Write.** The spot table is read once more, frame by frame, and written with its track and
   tracklet IDs through :class:`vollseg_dask.io.tracks.TracksWriter` (atomic), the edges in
   row groups as they come, per-track statistics (accumulated on the fly) and tracklets.

Memory holds a window of frames, one row group of edges, and per-segment, per-piece and
per-candidate arrays (track fragments, not spots); never the spot or edge table.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vollseg_dask.errors import TrackingError
from vollseg_dask.io.spot_source import SpotSource, open_spots
from vollseg_dask.tracking.config import TrackerConfig
from vollseg_dask.tracking.frames import FrameLinks, link_frames
from vollseg_dask.tracking.segments import empty_candidates, link_segments, timed_candidates
from vollseg_dask.tracking.structure import build_lineage, locate_pieces, number_lineage

__all__ = ["TrackingResult", "track", "prepare_frame", "with_calibration"]

logger = logging.getLogger(__name__)

#: Columns the tracker writes itself (dropped from the pass-through features).
_RESERVED = ("spot_id", "t", "x", "y", "z", "label", "track_id", "tracklet_id")
_KINDS = ("link", "gap", "split", "merge")
_ID_SHIFT = np.int64(1) << np.int64(32)


@dataclass
class TrackingResult:
    """What a tracking run wrote and how it went.

    Attributes
    ----------
    path : Path
        The track store folder.
    config : TrackerConfig
        Settings used.
    n_frames, n_spots : int
        Frames and spots tracked (after the spot filters).
    n_spots_dropped : int
        Spots removed by the spot filters.
    n_edges : dict of str to int
        Written edges by kind.
    n_tracks, n_dividing_tracks, n_tracklets : int
    n_removed_branches : int
        Branches removed by the minimum-tracklet-length filter.
    n_unlinked_spots : int
        Spots without any edge (``track_id == -1``).
    segment_report : dict
        Candidates, components, largest component, windowed components, alternative cost of the
        segment LAP.
    timings : dict of str to float
        Seconds per stage.
    """

    path: Path
    config: TrackerConfig
    n_frames: int = 0
    n_spots: int = 0
    n_spots_dropped: int = 0
    n_edges: dict[str, int] = field(default_factory=dict)
    n_tracks: int = 0
    n_dividing_tracks: int = 0
    n_tracklets: int = 0
    n_removed_branches: int = 0
    n_unlinked_spots: int = 0
    segment_report: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def read(self, lazy: bool = True) -> Any:
        """Open the written store (:func:`vollseg_dask.io.tracks.read_tracks`)."""
        from vollseg_dask.io.tracks import read_tracks

        return read_tracks(self.path, lazy=lazy)


# ----------------------------------------------------------------------------------------------
# Frame preparation (pure)
# ----------------------------------------------------------------------------------------------


def prepare_frame(raw: pd.DataFrame, t: int, config: TrackerConfig, ndim: int) -> tuple[pd.DataFrame, int]:
    """Filter one frame's spots, give them IDs, and sort them by ``spot_id``.

    Parameters
    ----------
    raw : DataFrame
        Rows of frame ``t`` with (normalised) columns ``x``, ``y`` (``z`` when ``ndim == 3``),
        optional ``spot_id``, ``label`` and features.
    t : int
        The frame.
    config : TrackerConfig
        Spot filters: volume, intensity, inside tissue.
    ndim : int
        2 or 3.

    Returns
    -------
    frame : DataFrame
        Kept spots sorted by ``spot_id`` (int64). Absent ``spot_id`` is ``t * 2**32 + label`` when
        a ``label`` column exists, else ``t * 2**32 + row`` (row in stored order).
    n_dropped : int
        Spots removed by the filters.
    """
    df = raw
    keep = np.ones(len(df), dtype=bool)
    for lo, hi, col in (
        (config.min_volume, config.max_volume, config.volume_column),
        (config.min_intensity, config.max_intensity, config.intensity_column),
    ):
        if lo is None and hi is None:
            continue
        if col not in df.columns:
            raise TrackingError(f"a spot filter needs column {col!r}, which the spot table lacks")
        v = df[col].to_numpy(np.float64)
        if lo is not None:
            keep &= v >= lo
        if hi is not None:
            keep &= v <= hi
    if config.inside_tissue_only:
        if config.tissue_column not in df.columns:
            raise TrackingError(
                f"inside_tissue_only needs column {config.tissue_column!r}, which the spot table lacks"
            )
        keep &= df[config.tissue_column].fillna(False).to_numpy(bool)
    if "spot_id" in df.columns:
        if df["spot_id"].isna().any():
            raise TrackingError(f"spot_id holds missing values in frame {t}")
        ids = df["spot_id"].to_numpy().astype(np.int64)
    elif "label" in df.columns:
        ids = np.int64(t) * _ID_SHIFT + df["label"].to_numpy().astype(np.int64)
    else:
        ids = np.int64(t) * _ID_SHIFT + np.arange(len(df), dtype=np.int64)
    df = df.loc[keep].copy()
    df["spot_id"] = ids[keep]
    n_dropped = int((~keep).sum())
    if df["spot_id"].duplicated().any():
        dup = int(df.loc[df["spot_id"].duplicated(), "spot_id"].iloc[0])
        raise TrackingError(f"spot_id {dup} occurs twice in frame {t}")
    pos_cols = ["x", "y", "z"][:ndim]
    for c in pos_cols:
        if c not in df.columns:
            raise TrackingError(f"frame {t} lacks position column {c!r}")
    pos = df[pos_cols].to_numpy(np.float64)
    if not np.isfinite(pos).all():
        bad = int(df["spot_id"].to_numpy()[~np.isfinite(pos).all(axis=1)][0])
        raise TrackingError(f"spot {bad} in frame {t} has a non-finite position")
    df["t"] = np.int64(t)
    return df.sort_values("spot_id", kind="stable").reset_index(drop=True), n_dropped


def _penalty_arrays(frame: pd.DataFrame, penalties: dict[str, float]) -> NDArray[np.float64] | None:
    if not penalties:
        return None
    return frame[list(penalties)].to_numpy(np.float64)


def _weights(penalties: dict[str, float]) -> NDArray[np.float64] | None:
    return np.asarray(list(penalties.values()), dtype=np.float64) if penalties else None


# ----------------------------------------------------------------------------------------------
# Pass 1: frame-pair linking, segments, candidates
# ----------------------------------------------------------------------------------------------


@dataclass
class _Spots:
    """Arrays of a set of spots of one or several frames."""

    ids: NDArray[np.int64]
    t: NDArray[np.int64]
    pos: NDArray[np.float64]
    seg: NDArray[np.int64]
    feats: dict[str, NDArray[np.float64] | None]

    def take(self, mask: NDArray[np.bool_]) -> _Spots:
        return _Spots(
            self.ids[mask],
            self.t[mask],
            self.pos[mask],
            self.seg[mask],
            {k: (None if v is None else v[mask]) for k, v in self.feats.items()},
        )

    @staticmethod
    def concat(parts: list[_Spots], ndim: int) -> _Spots:
        if not parts:
            return _Spots(
                np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, ndim)), np.empty(0, np.int64), {}
            )
        keys = parts[0].feats.keys()
        return _Spots(
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.t for p in parts]),
            np.concatenate([p.pos for p in parts]),
            np.concatenate([p.seg for p in parts]),
            {
                k: (None if parts[0].feats[k] is None else np.concatenate([p.feats[k] for p in parts]))  # type: ignore[misc]
                for k in keys
            },
        )


class _Gatherer:
    """Walks classified frames in time order and collects the segment-linking candidates."""

    def __init__(self, config: TrackerConfig, ndim: int) -> None:
        self.config = config
        self.ndim = ndim
        self.ends: deque[_Spots] = deque()  # ends (lone spots included) of the last MAX_FRAME_GAP frames
        self.prev_middles: _Spots | None = None
        self.prev_ends_nonlone: _Spots | None = None
        self.prev_t: int | None = None
        self.parts: list[pd.DataFrame] = []

    def _add(
        self,
        src: _Spots,
        tgt: _Spots,
        kind: str,
        feat_key: str,
        penalties: dict[str, float],
        max_dist: float,
        max_dt: int,
    ) -> None:
        if src.ids.size == 0 or tgt.ids.size == 0:
            return
        ia, ib, cost = timed_candidates(
            src.pos,
            src.t,
            tgt.pos,
            tgt.t,
            min_dt=1,
            max_dt=max_dt,
            max_distance=max_dist,
            features_a=src.feats.get(feat_key),
            features_b=tgt.feats.get(feat_key),
            weights=_weights(penalties),
        )
        if ia.size:
            self.parts.append(
                pd.DataFrame(
                    {
                        "source_spot_id": src.ids[ia],
                        "target_spot_id": tgt.ids[ib],
                        "source_t": src.t[ia],
                        "target_t": tgt.t[ib],
                        "cost": cost,
                        "kind": kind,
                        "source_segment": src.seg[ia],
                        "target_segment": tgt.seg[ib],
                    }
                )
            )

    def frame(self, spots: _Spots, has_pred: NDArray[np.bool_], has_succ: NDArray[np.bool_]) -> None:
        cfg = self.config
        t = int(spots.t[0]) if spots.ids.size else None
        if t is None:
            return
        lone = ~has_pred & ~has_succ
        starts = spots.take(~has_pred)
        ends = spots.take(~has_succ)
        middles = spots.take(has_pred & has_succ)
        adjacent = self.prev_t is not None and self.prev_t == t - 1
        # Drop window frames that no start of this frame can reach.
        while self.ends and int(self.ends[0].t[0]) < t - cfg.max_frame_gap:
            self.ends.popleft()
        if cfg.allow_gap_closing:
            window = _Spots.concat(list(self.ends), self.ndim)
            self._add(
                window,
                starts,
                "gap",
                "gap",
                cfg.gap_closing_feature_penalties,
                cfg.gap_closing_max_distance,
                cfg.max_frame_gap,
            )
        if cfg.allow_track_splitting and adjacent and self.prev_middles is not None:
            self._add(
                self.prev_middles,
                spots.take(~has_pred & ~lone),
                "split",
                "split",
                cfg.splitting_feature_penalties,
                cfg.splitting_max_distance,
                1,
            )
        if cfg.allow_track_merging and adjacent and self.prev_ends_nonlone is not None:
            self._add(
                self.prev_ends_nonlone,
                middles,
                "merge",
                "merge",
                cfg.merging_feature_penalties,
                cfg.merging_max_distance,
                1,
            )
        if ends.ids.size:
            self.ends.append(ends)
        self.prev_middles = middles
        self.prev_ends_nonlone = spots.take(~has_succ & ~lone)
        self.prev_t = t
        del starts

    def candidates(self) -> pd.DataFrame:
        if not self.parts:
            out = empty_candidates()
            out["source_segment"] = np.empty(0, np.int64)
            out["target_segment"] = np.empty(0, np.int64)
            return out
        return pd.concat(self.parts, ignore_index=True)


def _link_pair(a: pd.DataFrame, b: pd.DataFrame, config: TrackerConfig, ndim: int) -> FrameLinks:
    cols = ["x", "y", "z"][:ndim]
    pen = config.linking_feature_penalties
    return link_frames(
        a[cols].to_numpy(np.float64),
        b[cols].to_numpy(np.float64),
        max_distance=config.linking_max_distance,
        features_a=_penalty_arrays(a, pen),
        features_b=_penalty_arrays(b, pen),
        weights=_weights(pen),
        alternative_cost_factor=config.alternative_linking_cost_factor,
    )


def _require_client() -> Any:
    """The active ``distributed.Client`` (``scheduler="distributed"`` runs on it, never silently
    on local threads)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a core dependency
        raise TrackingError("scheduler='distributed' needs the 'distributed' package") from None
    try:
        return default_client()
    except ValueError:
        raise TrackingError(
            "scheduler='distributed' needs an active distributed.Client (create one, e.g. with "
            "vollseg_dask.runtime.get_client(), before calling track); no client was found"
        ) from None


@contextmanager
def _process_pool(scheduler: str) -> Iterator[Any]:
    """One worker pool for the whole linking pass of ``scheduler="processes"`` (Dask would
    otherwise start a new pool of processes for every batch of frames); None for the others."""
    if scheduler != "processes":
        yield None
        return
    from concurrent.futures import ProcessPoolExecutor

    from dask.multiprocessing import get_context
    from dask.system import CPU_COUNT

    with ProcessPoolExecutor(CPU_COUNT, mp_context=get_context()) as pool:
        yield pool


def _compute(tasks: list[Any], scheduler: str, pool: Any = None) -> list[Any]:
    import dask

    if not tasks:
        return []
    if pool is not None:
        return list(dask.compute(*tasks, scheduler=scheduler, pool=pool))
    if scheduler == "distributed":
        return list(_require_client().compute(tasks, sync=True))
    return list(dask.compute(*tasks, scheduler=scheduler))


def _batches(frames: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(frames), size):
        yield frames[i : i + size]


def _progress(iterable: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="frame", leave=False)


def _progress_default() -> bool:
    return os.environ.get("VOLLSEG_PROGRESS", "1") not in {"0", "false", "no", ""}


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------


def track(
    spots: pd.DataFrame | str | os.PathLike[str] | SpotSource,
    out_dir: str | os.PathLike[str],
    config: TrackerConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
) -> TrackingResult:
    """Track spots with TrackMate's LAP tracker, out of core, and write a track store.

    Parameters
    ----------
    spots : DataFrame, path or SpotSource
        A table with ``t`` (int frame), ``x``, ``y`` and optionally ``z`` (micrometres), optional
        ``spot_id`` (unique int64; made from ``t`` and ``label`` or the row when absent), ``label``
        and feature columns; or a Parquet dataset partitioned by ``t`` (``DIR/t=<int>/*.parquet``,
        e.g. a cell table, whose ``centroid_*_um`` columns serve as positions), a CSV, a Parquet
        file or a TrackMate XML (see :func:`vollseg_dask.io.spot_source.open_spots`).
    out_dir : path
        Track store to write (``spots/``, ``edges.parquet``, ``tracks.parquet``,
        ``tracklets.parquet``, ``tracker_config.yaml``), atomically.
    config : TrackerConfig, optional
        Tracker settings (TrackMate defaults when omitted). ``frame_interval``, ``time_units`` and
        ``spatial_units`` that the config does not set explicitly come from the spots' image
        calibration when the source has one (a cell table's manifest, a TrackMate XML's
        ``ImageData``, a GEFF's axes): a store in minutes gives tracks in minutes.
    overwrite : bool
        Replace an existing ``out_dir``.
    progress : bool, optional
        Show progress bars (default: unless ``VOLLSEG_PROGRESS=0``).

    Returns
    -------
    TrackingResult

    Raises
    ------
    StoreExistsError
        ``out_dir`` exists and ``overwrite`` is false.
    TrackingError
        A position or penalty-feature column is missing, a spot ID repeats or a position is not
        finite; or ``config.scheduler == "distributed"`` and no ``distributed.Client`` is active
        (the frame-pair tasks run on the active client; create one first, e.g. with
        :func:`vollseg_dask.runtime.get_client`). Nothing is left behind.

    Notes
    -----
    The result does not depend on how the work is split: ``window_frames``, the number and order
    of Parquet part files per frame, and the scheduler (``threads``, ``sync``, ``processes``,
    ``distributed``) give identical track stores (same edges, costs, IDs and tables).
    """
    from vollseg_dask.io.tracks import TracksWriter

    config = config or TrackerConfig()
    progress = _progress_default() if progress is None else progress
    source: SpotSource = (
        spots if hasattr(spots, "read") and hasattr(spots, "frames") else open_spots(spots)[0]
    )  # type: ignore[arg-type,assignment]
    out = Path(out_dir)
    if out.exists() and not overwrite:
        from vollseg_dask.errors import StoreExistsError

        raise StoreExistsError(f"{out} exists; pass overwrite=True to replace it")
    calibration = getattr(source, "image", None)
    config = with_calibration(config, calibration)
    frames = [int(f) for f in source.frames]
    columns = source.columns
    ndim = 3 if "z" in columns else 2
    for c in ("x", "y"):
        if c not in columns:
            raise TrackingError(f"spot table lacks position column {c!r} (has {columns})")
    needed = set(config.linking_feature_penalties) | set(config.gap_closing_feature_penalties)
    needed |= set(config.splitting_feature_penalties) | set(config.merging_feature_penalties)
    missing = sorted(needed - set(columns))
    if missing:
        raise TrackingError(f"feature penalties name column(s) {missing} that the spot table lacks")
    if config.scheduler == "distributed":
        _require_client()
    result = TrackingResult(path=out, config=config, n_frames=len(frames))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    try:
        _run(source, frames, ndim, config, out, work, result, progress, overwrite,
             functools.partial(TracksWriter, image=calibration))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def with_calibration(config: TrackerConfig, calibration: dict[str, Any] | None) -> TrackerConfig:
    """``config`` with its unset units (None) resolved from an image calibration.

    ``frame_interval``, ``time_units`` and ``spatial_units`` the config sets (from a file, the CLI's
    ``--frame-interval``/``--time-unit`` or keyword arguments) win; None takes the calibration's
    (:mod:`vollseg_dask.io.calibration`), else 1 frame and µm. A frame interval set without a time
    unit is taken in the image's time unit (``frame`` when the image names none).
    Units come out in TrackMate's spelling (``min``, ``sec``, ``µm``).
    """
    from vollseg_dask.io.trackmate_xml import normalize_spatial_units, normalize_time_units

    cal = calibration or {}
    cal_fi = cal.get("frame_interval")
    fi = config.frame_interval
    if fi is None:
        fi = float(cal_fi) if cal_fi else 1.0
    t_units = config.time_units
    if t_units is None:
        t_units = normalize_time_units(cal.get("time_unit")) if cal_fi or config.frame_interval else "frame"
    s_units = config.spatial_units or normalize_spatial_units(cal.get("spatial_unit") or "µm")
    return config.model_copy(update={"frame_interval": float(fi), "time_units": t_units, "spatial_units": s_units})


def _feats(frame: pd.DataFrame, config: TrackerConfig) -> dict[str, NDArray[np.float64] | None]:
    return {
        "gap": _penalty_arrays(frame, config.gap_closing_feature_penalties),
        "split": _penalty_arrays(frame, config.splitting_feature_penalties),
        "merge": _penalty_arrays(frame, config.merging_feature_penalties),
    }


def _run(
    source: SpotSource,
    frames: list[int],
    ndim: int,
    config: TrackerConfig,
    out: Path,
    work: Path,
    result: TrackingResult,
    progress: bool,
    overwrite: bool,
    writer_cls: Any,
) -> None:
    import dask

    pos_cols = ["x", "y", "z"][:ndim]
    tick = time.perf_counter()

    # ---- pass 1 -------------------------------------------------------------------------------
    seg_start = _Growable()
    seg_end = _Growable()
    gatherer = _Gatherer(config, ndim)
    pending: dict[str, Any] | None = None  # the last frame, waiting for its successor links
    carry: tuple[int, pd.DataFrame] | None = None
    n_spots = 0
    delayed_link = dask.delayed(_link_pair, pure=False)

    def finalize(p: dict[str, Any], succ_src: NDArray[np.intp] | None) -> None:
        nonlocal n_spots
        frame: pd.DataFrame = p["frame"]
        n = len(frame)
        has_succ = np.zeros(n, dtype=bool)
        if succ_src is not None:
            has_succ[succ_src] = True
        seg = p["seg"]
        seg_end.values[seg] = p["t"]
        np.savez(
            work / f"t{p['t']}.npz",
            spot_id=frame["spot_id"].to_numpy(np.int64),
            seg=seg,
            pred_id=p["pred_id"],
            pred_cost=p["pred_cost"],
        )
        spots_ = _Spots(
            frame["spot_id"].to_numpy(np.int64),
            np.full(n, p["t"], np.int64),
            frame[pos_cols].to_numpy(np.float64),
            seg,
            _feats(frame, config),
        )
        gatherer.frame(spots_, p["has_pred"], has_succ)
        n_spots += n

    frame_iter = _progress(
        _batches(frames, config.window_frames), -(-len(frames) // config.window_frames), "linking", progress
    )
    with _process_pool(config.scheduler) as pool:
        for batch in frame_iter:
            loaded: list[tuple[int, pd.DataFrame]] = [] if carry is None else [carry]
            for t in batch:
                frame, dropped = prepare_frame(source.read(t), t, config, ndim)
                result.n_spots_dropped += dropped
                loaded.append((t, frame))
            # One task per frame pair (t, t + 1) of this batch.
            pairs = [(i, i + 1) for i in range(len(loaded) - 1) if loaded[i + 1][0] == loaded[i][0] + 1]
            tasks = [delayed_link(loaded[i][1], loaded[j][1], config, ndim) for i, j in pairs]
            links_of = dict(zip((j for _, j in pairs), _compute(tasks, config.scheduler, pool), strict=True))
            start = 0 if carry is None else 1
            for k in range(start, len(loaded)):
                t, frame = loaded[k]
                links: FrameLinks | None = links_of.get(k)
                if pending is not None:
                    finalize(pending, None if links is None else links.source)
                n = len(frame)
                pred_id = np.full(n, -1, np.int64)
                pred_cost = np.full(n, np.nan)
                has_pred = np.zeros(n, dtype=bool)
                seg = np.full(n, -1, np.int64)
                if links is not None and links.target.size:
                    assert pending is not None
                    prev_ids = pending["frame"]["spot_id"].to_numpy(np.int64)
                    pred_id[links.target] = prev_ids[links.source]
                    pred_cost[links.target] = links.cost
                    has_pred[links.target] = True
                    seg[links.target] = pending["seg"][links.source]
                new = np.flatnonzero(seg < 0)
                seg[new] = np.arange(seg_start.size, seg_start.size + new.size)
                seg_start.extend(np.full(new.size, t, np.int64))
                seg_end.extend(np.full(new.size, t, np.int64))
                pending = {
                    "t": t,
                    "frame": frame,
                    "seg": seg,
                    "has_pred": has_pred,
                    "pred_id": pred_id,
                    "pred_cost": pred_cost,
                }
            carry = loaded[-1] if loaded else None
    if pending is not None:
        finalize(pending, None)
    result.n_spots = n_spots
    result.timings["link_frames"] = time.perf_counter() - tick

    # ---- pass 2: segment LAP ------------------------------------------------------------------
    tick = time.perf_counter()
    cands = gatherer.candidates()
    gatherer.parts.clear()
    chosen = link_segments(
        cands,
        cutoff_percentile=config.cutoff_percentile,
        alternative_cost_factor=config.alternative_linking_cost_factor,
        per_component=True,
        max_component_size=config.max_component_size,
        window_frames=config.window_frames,
        max_frame_gap=config.max_frame_gap,
    )
    result.segment_report = dict(chosen.attrs.get("report", {}))
    del cands
    result.timings["link_segments"] = time.perf_counter() - tick

    # ---- pass 3: structure and numbering -----------------------------------------------------
    tick = time.perf_counter()
    segments = pd.DataFrame(
        {
            "segment": np.arange(seg_start.size, dtype=np.int64),
            "start_t": seg_start.values.copy(),
            "end_t": seg_end.values.copy(),
        }
    )
    lineage = build_lineage(segments, chosen, config.min_tracklet_length)
    result.n_removed_branches = lineage.n_removed_branches
    pieces = lineage.pieces
    n_pieces = len(pieces)
    piece_min = np.full(n_pieces, np.iinfo(np.int64).max, np.int64)
    piece_first = np.full(n_pieces, -1, np.int64)
    piece_start = pieces["start_t"].to_numpy(np.int64)
    for t in frames:
        w = np.load(work / f"t{t}.npz")
        if w["spot_id"].size == 0:
            continue
        rows = locate_pieces(pieces, w["seg"], np.full(w["seg"].size, t, np.int64))
        np.minimum.at(piece_min, rows, w["spot_id"])
        head = piece_start[rows] == t
        piece_first[rows[head]] = w["spot_id"][head]
    piece_track, piece_tracklet, tracklets = number_lineage(lineage, piece_min, piece_first)
    removed = pieces["removed"].to_numpy(bool)
    # A kept split stays a division only if its mother still has two successors.
    e = lineage.edges
    outdeg = (
        np.bincount(e["src"].to_numpy(np.intp), minlength=n_pieces)
        if len(e)
        else np.zeros(n_pieces, np.int64)
    )
    result.timings["structure"] = time.perf_counter() - tick

    # ---- pass 4: write ------------------------------------------------------------------------
    tick = time.perf_counter()
    n_tracks = int(piece_track.max()) + 1 if piece_track.size and piece_track.max() >= 0 else 0
    acc = _TrackAccumulator(n_tracks, ndim, config.frame_interval)
    seg_edges_by_t = {int(t): g for t, g in chosen.groupby("target_t")} if len(chosen) else {}
    window: deque[tuple[int, NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]]] = deque()
    n_unlinked = 0
    with writer_cls(
        out,
        overwrite=overwrite,
        spatial_units=config.spatial_units,
        time_units=config.time_units,
        frame_interval=config.frame_interval,
        ndim=ndim,
    ) as writer:
        edge_stream = _EdgeStream(writer)
        for t in _progress(frames, len(frames), "writing", progress):
            frame, _ = prepare_frame(source.read(t), t, config, ndim)
            w = np.load(work / f"t{t}.npz")
            ids = frame["spot_id"].to_numpy(np.int64)
            if not np.array_equal(ids, w["spot_id"]):
                raise TrackingError(f"frame {t} changed while it was being tracked (spot IDs differ)")
            seg = w["seg"]
            rows = (
                locate_pieces(pieces, seg, np.full(seg.size, t, np.int64))
                if ids.size
                else np.empty(0, np.intp)
            )
            track_id = piece_track[rows] if ids.size else np.empty(0, np.int64)
            tracklet_id = piece_tracklet[rows] if ids.size else np.empty(0, np.int64)
            pos = frame[pos_cols].to_numpy(np.float64)
            while window and window[0][0] < t - config.max_frame_gap:
                window.popleft()
            # Edges into this frame: frame-to-frame links, then segment links.
            src_l: list[NDArray[np.int64]] = []
            tgt_l: list[NDArray[np.int64]] = []
            cost_l: list[NDArray[np.float64]] = []
            kind_l: list[NDArray[np.int8]] = []
            has_link = w["pred_id"] >= 0
            if has_link.any():
                prev_rows = locate_pieces(
                    pieces, seg[has_link], np.full(int(has_link.sum()), t - 1, np.int64)
                )
                keep = ~removed[rows[has_link]] & ~removed[prev_rows]
                src_l.append(w["pred_id"][has_link][keep])
                tgt_l.append(ids[has_link][keep])
                cost_l.append(w["pred_cost"][has_link][keep])
                kind_l.append(np.zeros(int(keep.sum()), np.int8))
            g = seg_edges_by_t.get(t)
            if g is not None:
                s_rows = locate_pieces(
                    pieces, g["source_segment"].to_numpy(np.int64), g["source_t"].to_numpy(np.int64)
                )
                d_rows = locate_pieces(
                    pieces, g["target_segment"].to_numpy(np.int64), g["target_t"].to_numpy(np.int64)
                )
                keep = ~removed[s_rows] & ~removed[d_rows]
                kinds = g["kind"].to_numpy(dtype=object)
                code = np.array([_KINDS.index(k) for k in kinds], dtype=np.int8)
                # A split whose sister branch was removed is a plain link now, and a gap closing
                # over one frame is a link (io.tracks.classify_edges: a gap skips a frame).
                code[(code == 2) & (outdeg[s_rows] < 2)] = 0
                dt = g["target_t"].to_numpy(np.int64) - g["source_t"].to_numpy(np.int64)
                code[(code == 1) & (dt == 1)] = 0
                src_l.append(g["source_spot_id"].to_numpy(np.int64)[keep])
                tgt_l.append(g["target_spot_id"].to_numpy(np.int64)[keep])
                cost_l.append(g["cost"].to_numpy(np.float64)[keep])
                kind_l.append(code[keep])
            if src_l:
                e_src = np.concatenate(src_l)
                e_tgt = np.concatenate(tgt_l)
                e_cost = np.concatenate(cost_l)
                e_kind = np.concatenate(kind_l)
                edge_stream.add(e_src, e_tgt, e_cost, e_kind)
                acc.add_edges(e_src, e_tgt, ids, pos, track_id, window, t)
            acc.add_spots(ids, pos, track_id, t)
            n_unlinked += int((track_id < 0).sum())
            window.append((t, ids, pos, track_id))
            out_frame = _output_frame(frame, ids, pos, track_id, tracklet_id, ndim)
            writer.write_spots_frame(t, out_frame)
        edge_stream.close()
        tracks = acc.table()
        writer.write_tracks(tracks)
        writer.write_tracklets(tracklets)
        writer.write_config(config.model_dump(mode="json", exclude_none=True))
    result.n_edges = edge_stream.counts
    result.n_tracks = len(tracks)
    result.n_dividing_tracks = int(tracks["dividing"].sum()) if len(tracks) else 0
    result.n_tracklets = len(tracklets)
    result.n_unlinked_spots = n_unlinked
    result.timings["write"] = time.perf_counter() - tick
    logger.info(
        "tracked %d spots in %d frames: %d tracks (%d dividing), %s edges, %d short branches removed",
        result.n_spots,
        result.n_frames,
        result.n_tracks,
        result.n_dividing_tracks,
        result.n_edges,
        result.n_removed_branches,
    )


def _output_frame(
    frame: pd.DataFrame,
    ids: NDArray[np.int64],
    pos: NDArray[np.float64],
    track_id: NDArray[np.int64],
    tracklet_id: NDArray[np.int64],
    ndim: int,
) -> pd.DataFrame:
    n = len(frame)
    cols: dict[str, Any] = {
        "spot_id": ids,
        "t": np.full(n, int(frame["t"].iloc[0]) if n else 0, np.int32),
        "x": pos[:, 0],
        "y": pos[:, 1],
        "z": pos[:, 2] if ndim == 3 else np.zeros(n),
        "label": frame["label"].to_numpy().astype(np.int64)
        if "label" in frame.columns
        else np.full(n, -1, np.int64),
        "track_id": track_id,
        "tracklet_id": tracklet_id,
    }
    out = pd.DataFrame(cols)
    extra = [c for c in frame.columns if c not in _RESERVED]
    if extra:
        out = pd.concat([out, frame[extra].reset_index(drop=True)], axis=1)
    return out


class _EdgeStream:
    """Buffers the edges of the write pass and hands them to
    :meth:`vollseg_dask.io.tracks.TracksWriter.write_edges_chunk` in row groups of about
    ``rows_per_group`` rows, so that the edge table is never whole in memory.

    The writer normalises every chunk (:func:`~vollseg_dask.io.tracks.normalize_edges`), stores
    the store metadata, and commits ``edges.parquet`` atomically with the rest of the store (an
    empty table when no edge was written at all).
    """

    def __init__(self, writer: Any, rows_per_group: int = 1 << 15) -> None:
        self._writer = writer
        self._rows = rows_per_group
        self._buf: list[
            tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], NDArray[np.int8]]
        ] = []
        self._n_buf = 0
        self.counts = {k: 0 for k in _KINDS}

    def add(
        self,
        src: NDArray[np.int64],
        tgt: NDArray[np.int64],
        cost: NDArray[np.float64],
        kind: NDArray[np.int8],
    ) -> None:
        self._buf.append((src, tgt, cost, kind))
        self._n_buf += src.size
        for code, count in zip(*np.unique(kind, return_counts=True), strict=True):
            self.counts[_KINDS[int(code)]] += int(count)
        if self._n_buf >= self._rows:
            self._flush()

    def _flush(self) -> None:
        if not self._n_buf:
            return
        kinds = np.asarray(_KINDS, dtype=object)
        df = pd.DataFrame(
            {
                "source_spot_id": np.concatenate([b[0] for b in self._buf]),
                "target_spot_id": np.concatenate([b[1] for b in self._buf]),
                "cost": np.concatenate([b[2] for b in self._buf]),
                "kind": kinds[np.concatenate([b[3] for b in self._buf])],
            }
        )
        self._writer.write_edges_chunk(df)
        self._buf.clear()
        self._n_buf = 0

    def close(self) -> None:
        self._flush()


class _Growable:
    """An int64 array that grows by appending (amortised doubling)."""

    def __init__(self) -> None:
        self._buf = np.empty(1024, np.int64)
        self.size = 0

    def extend(self, values: NDArray[np.int64]) -> None:
        need = self.size + values.size
        if need > self._buf.size:
            buf = np.empty(max(need, 2 * self._buf.size), np.int64)
            buf[: self.size] = self._buf[: self.size]
            self._buf = buf
        self._buf[self.size : need] = values
        self.size = need

    @property
    def values(self) -> NDArray[np.int64]:
        return self._buf[: self.size]


class _TrackAccumulator:
    """Per-track statistics gathered frame by frame (definitions of
    :func:`vollseg_dask.io.tracks.summarize_tracks`)."""

    def __init__(self, n_tracks: int, ndim: int, frame_interval: float) -> None:
        self.n = n_tracks
        self.fi = float(frame_interval)
        self.n_spots = np.zeros(n_tracks, np.int64)
        self.start_t = np.full(n_tracks, np.iinfo(np.int64).max, np.int64)
        self.end_t = np.full(n_tracks, -1, np.int64)
        self.first_pos = np.zeros((n_tracks, 3))
        self.last_pos = np.zeros((n_tracks, 3))
        self.total = np.zeros(n_tracks)
        self.speed_sum = np.zeros(n_tracks)
        self.n_edges = np.zeros(n_tracks, np.int64)
        self.n_div = np.zeros(n_tracks, np.int64)

    @staticmethod
    def _xyz(pos: NDArray[np.float64]) -> NDArray[np.float64]:
        if pos.shape[1] == 3:
            return pos
        return np.concatenate([pos, np.zeros((pos.shape[0], 1))], axis=1)

    def add_spots(
        self, ids: NDArray[np.int64], pos: NDArray[np.float64], track: NDArray[np.int64], t: int
    ) -> None:
        lk = track >= 0
        if not lk.any():
            return
        tr = track[lk]
        xyz = self._xyz(pos[lk])
        np.add.at(self.n_spots, tr, 1)
        # Spots arrive sorted by id, so the first row of each track in this frame has its smallest id.
        uniq, first = np.unique(tr, return_index=True)
        new_start = self.start_t[uniq] > t
        self.first_pos[uniq[new_start]] = xyz[first[new_start]]
        self.start_t[uniq[new_start]] = t
        later = self.end_t[uniq] < t
        self.last_pos[uniq[later]] = xyz[first[later]]
        self.end_t[uniq[later]] = t

    def add_edges(
        self,
        src: NDArray[np.int64],
        tgt: NDArray[np.int64],
        ids: NDArray[np.int64],
        pos: NDArray[np.float64],
        track: NDArray[np.int64],
        window: deque[tuple[int, NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]]],
        t: int,
    ) -> None:
        ti = np.searchsorted(ids, tgt)
        tgt_pos = self._xyz(pos[ti])
        tr = track[ti]
        src_pos = np.full((src.size, 3), np.nan)
        src_t = np.full(src.size, -1, np.int64)
        for wt, wids, wpos, _ in window:
            k = np.searchsorted(wids, src)
            k = np.minimum(k, max(wids.size - 1, 0))
            hit = (wids.size > 0) & (wids[k] == src) if wids.size else np.zeros(src.size, bool)
            src_pos[hit] = self._xyz(wpos[k[hit]])
            src_t[hit] = wt
        if np.any(src_t < 0):
            bad = int(src[src_t < 0][0])
            raise TrackingError(f"edge source spot {bad} not found in the frames before {t}")
        length = np.linalg.norm(tgt_pos - src_pos, axis=1)
        dt = (t - src_t).astype(np.float64) * self.fi
        np.add.at(self.total, tr, length)
        np.add.at(self.speed_sum, tr, length / dt)
        np.add.at(self.n_edges, tr, 1)
        # Divisions: sources with two successors (both edges of a division end in this frame).
        order = np.argsort(src, kind="stable")
        _, first_edge, counts = np.unique(src[order], return_index=True, return_counts=True)
        dividing = first_edge[counts >= 2]
        if dividing.size:
            np.add.at(self.n_div, tr[order[dividing]], 1)

    def table(self) -> pd.DataFrame:
        ids = np.arange(self.n, dtype=np.int64)
        disp = np.linalg.norm(self.last_pos - self.first_pos, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_speed = self.speed_sum / self.n_edges
        out = pd.DataFrame(
            {
                "track_id": ids,
                "start_t": self.start_t.astype(np.int32),
                "end_t": self.end_t.astype(np.int32),
                "n_spots": self.n_spots,
                "n_divisions": self.n_div,
                "dividing": self.n_div > 0,
                "duration": (self.end_t - self.start_t).astype(np.float64) * self.fi,
                "displacement": disp,
                "total_distance": self.total,
                "mean_speed": mean_speed,
            }
        )
        return out
