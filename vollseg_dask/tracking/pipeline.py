"""The whole LAP tracker on an in-memory spot table (the reference the streaming driver must equal).

:func:`lap_track` runs both steps on a pandas table in one go: every frame pair through
:func:`~vollseg_dask.tracking.frames.link_frames`, then the segment candidates of the whole movie at
once, then one global segment LAP (no decomposition into components). It is deliberately written
independently of the streaming driver (:mod:`vollseg_dask.tracking.driver`) so that each checks the
other.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vollseg_dask.errors import TrackingError
from vollseg_dask.tracking.config import TrackerConfig
from vollseg_dask.tracking.frames import link_frames
from vollseg_dask.tracking.segments import (
    CANDIDATE_COLUMNS,
    empty_candidates,
    link_segments,
    timed_candidates,
)

__all__ = ["lap_track", "segment_candidates", "position_columns", "EDGE_COLUMNS"]

#: Columns of an edge table.
EDGE_COLUMNS: tuple[str, ...] = ("source_spot_id", "target_spot_id", "cost", "kind")


def position_columns(spots: pd.DataFrame) -> list[str]:
    """``["x", "y", "z"]``, or ``["x", "y"]`` when there is no ``z`` column (2D movies)."""
    for col in ("x", "y"):
        if col not in spots.columns:
            raise TrackingError(f"spot table lacks the position column {col!r} (has {list(spots.columns)})")
    return ["x", "y", "z"] if "z" in spots.columns else ["x", "y"]


def _features(
    spots: pd.DataFrame, penalties: dict[str, float]
) -> tuple[NDArray[np.float64] | None, NDArray[np.float64] | None]:
    if not penalties:
        return None, None
    names = list(penalties)
    missing = [n for n in names if n not in spots.columns]
    if missing:
        raise TrackingError(f"feature penalty on {missing} but the spot table has no such column")
    return spots[names].to_numpy(np.float64), np.asarray([penalties[n] for n in names], dtype=np.float64)


def segment_candidates(
    spots: pd.DataFrame,
    has_predecessor: NDArray[np.bool_],
    has_successor: NDArray[np.bool_],
    config: TrackerConfig,
) -> pd.DataFrame:
    """All segment-linking candidates of a spot table (gap closing, splitting, merging).

    Parameters
    ----------
    spots : DataFrame, n rows
        Columns ``spot_id``, ``t``, ``x``, ``y`` (``z``) and the penalty features.
    has_predecessor, has_successor : ndarray of bool, shape (n,)
        Whether each spot has a frame-to-frame link from the previous / to the next frame.
    config : TrackerConfig

    Returns
    -------
    DataFrame
        Columns :data:`~vollseg_dask.tracking.segments.CANDIDATE_COLUMNS`.
    """
    pos = spots[position_columns(spots)].to_numpy(np.float64)
    t = spots["t"].to_numpy(np.int64)
    ids = spots["spot_id"].to_numpy(np.int64)
    starts = np.flatnonzero(~has_predecessor)
    ends = np.flatnonzero(~has_successor)
    middles = np.flatnonzero(has_predecessor & has_successor)
    # Single-spot segments are offered gap closing only (see vollseg_dask.tracking.segments).
    lone = ~has_predecessor & ~has_successor
    split_targets = np.flatnonzero(~has_predecessor & ~lone)
    merge_sources = np.flatnonzero(~has_successor & ~lone)
    parts: list[pd.DataFrame] = []

    def add(
        src: NDArray[np.intp],
        tgt: NDArray[np.intp],
        penalties: dict[str, float],
        max_dist: float,
        max_dt: int,
        kind: str,
    ) -> None:
        feats, weights = _features(spots, penalties)
        ia, ib, cost = timed_candidates(
            pos[src],
            t[src],
            pos[tgt],
            t[tgt],
            min_dt=1,
            max_dt=max_dt,
            max_distance=max_dist,
            features_a=None if feats is None else feats[src],
            features_b=None if feats is None else feats[tgt],
            weights=weights,
        )
        s, g = src[ia], tgt[ib]
        parts.append(
            pd.DataFrame(
                {
                    "source_spot_id": ids[s],
                    "target_spot_id": ids[g],
                    "source_t": t[s],
                    "target_t": t[g],
                    "cost": cost,
                    "kind": kind,
                }
            )
        )

    if config.allow_gap_closing:
        add(
            ends,
            starts,
            config.gap_closing_feature_penalties,
            config.gap_closing_max_distance,
            config.max_frame_gap,
            "gap",
        )
    if config.allow_track_splitting:
        add(
            middles,
            split_targets,
            config.splitting_feature_penalties,
            config.splitting_max_distance,
            1,
            "split",
        )
    if config.allow_track_merging:
        add(merge_sources, middles, config.merging_feature_penalties, config.merging_max_distance, 1, "merge")
    parts = [p for p in parts if len(p)]
    if not parts:
        return empty_candidates()
    return pd.concat(parts, ignore_index=True).loc[:, list(CANDIDATE_COLUMNS)]


def lap_track(spots: pd.DataFrame, config: TrackerConfig | None = None) -> pd.DataFrame:
    """Run TrackMate's LAP tracker on an in-memory spot table.

    Parameters
    ----------
    spots : DataFrame
        One row per spot: ``spot_id`` (unique int), ``t`` (int frame), ``x``, ``y`` and optionally
        ``z`` (micrometres), plus any feature columns named in the penalties.
    config : TrackerConfig, optional
        Defaults to TrackMate's defaults.

    Returns
    -------
    DataFrame
        Edges ``source_spot_id``, ``target_spot_id`` (int64), ``cost`` (float64), ``kind`` in
        {"link", "gap", "split", "merge"}, sorted by source frame, source id, target id. A gap
        closing between consecutive frames is reported as ``"link"`` (a ``"gap"`` skips a frame).
    """
    config = config or TrackerConfig()
    if "spot_id" not in spots.columns or "t" not in spots.columns:
        raise TrackingError("spot table needs 'spot_id' and 't' columns")
    if spots["spot_id"].duplicated().any():
        dup = spots.loc[spots["spot_id"].duplicated(), "spot_id"].iloc[0]
        raise TrackingError(f"spot_id {dup} occurs more than once")
    spots = spots.sort_values(["t", "spot_id"], kind="stable").reset_index(drop=True)
    cols = position_columns(spots)
    pos = spots[cols].to_numpy(np.float64)
    t = spots["t"].to_numpy(np.int64)
    ids = spots["spot_id"].to_numpy(np.int64)
    feats, weights = _features(spots, config.linking_feature_penalties)
    frames = np.unique(t)
    index_of = {int(f): np.flatnonzero(t == f) for f in frames}
    src_l: list[NDArray[np.intp]] = []
    tgt_l: list[NDArray[np.intp]] = []
    cost_l: list[NDArray[np.float64]] = []
    for f in frames:
        ia = index_of[int(f)]
        ib = index_of.get(int(f) + 1)
        if ib is None:
            continue
        links = link_frames(
            pos[ia],
            pos[ib],
            max_distance=config.linking_max_distance,
            features_a=None if feats is None else feats[ia],
            features_b=None if feats is None else feats[ib],
            weights=weights,
            alternative_cost_factor=config.alternative_linking_cost_factor,
        )
        src_l.append(ia[links.source])
        tgt_l.append(ib[links.target])
        cost_l.append(links.cost)
    src = np.concatenate(src_l) if src_l else np.empty(0, np.intp)
    tgt = np.concatenate(tgt_l) if tgt_l else np.empty(0, np.intp)
    cost = np.concatenate(cost_l) if cost_l else np.empty(0)
    edges = [
        pd.DataFrame(
            {
                "source_spot_id": ids[src],
                "target_spot_id": ids[tgt],
                "cost": cost,
                "kind": "link",
                "_t": t[src],
            }
        )
    ]
    if config.segment_linking_enabled:
        has_pred = np.zeros(len(spots), dtype=bool)
        has_succ = np.zeros(len(spots), dtype=bool)
        has_pred[tgt] = True
        has_succ[src] = True
        cands = segment_candidates(spots, has_pred, has_succ, config)
        chosen = link_segments(
            cands,
            cutoff_percentile=config.cutoff_percentile,
            alternative_cost_factor=config.alternative_linking_cost_factor,
            per_component=False,
        )
        chosen = chosen.copy()
        # A gap closing over one frame is reported as a link (io.tracks.classify_edges convention).
        one_frame = (chosen["kind"] == "gap") & (chosen["target_t"] - chosen["source_t"] == 1)
        chosen.loc[one_frame, "kind"] = "link"
        edges.append(
            chosen.rename(columns={"source_t": "_t"}).loc[
                :, ["source_spot_id", "target_spot_id", "cost", "kind", "_t"]
            ]
        )
    out = pd.concat([e for e in edges if len(e)] or edges[:1], ignore_index=True)
    out = out.sort_values(["_t", "source_spot_id", "target_spot_id"], kind="stable").drop(columns="_t")
    out = out.astype({"source_spot_id": np.int64, "target_spot_id": np.int64, "cost": np.float64})
    return out.reset_index(drop=True)
