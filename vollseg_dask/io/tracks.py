"""The track data model on disk (``TRACKS_DIR``) and in memory (:class:`TrackData`).

A tracking run writes one folder::

    TRACKS_DIR/
        spots/               Parquet dataset partitioned by ``t`` (hive style: ``spots/t=5/part-0.parquet``)
        edges.parquet        source_spot_id, target_spot_id (int64), cost (float64), kind (link|gap|split|merge)
        tracks.parquet       one row per track (connected lineage), see ``TRACK_COLUMNS``
        tracklets.parquet    one row per division-free branch, see ``TRACKLET_COLUMNS``
        tracker_config.yaml  the tracker's settings
        image.json           calibration of the image the spots came from (store, labels, shape,
                             voxel size, frame interval, units), when known

Spot rows hold ``spot_id`` (int64), ``t`` (int32, frame index), ``x``, ``y``, ``z`` (float64, in
``spatial_units``, normally µm), ``label`` (int64 segmentation label in frame ``t``, -1 unknown),
``track_id`` (int64, -1 unlinked), ``tracklet_id`` (int64, -1 unlinked) and any feature columns
(``volume_um3``, ``radius_um``, ``mean_intensity_c0`` ...). Units, frame interval and the number of
spatial dimensions travel as key-value metadata (``vollseg_dask.tracks``) in every Parquet file.

Writing is atomic: everything goes to a hidden sibling folder that is renamed into place at the end,
so that an interrupted run never leaves a half-written ``TRACKS_DIR``. Spots can be written frame by
frame with :class:`TracksWriter` and read frame by frame with :meth:`TrackData.iter_frames`, so no
caller needs the whole spot table in memory.

This module also holds the pure graph helpers that every format converter needs:
:func:`derive_lineage` (track and tracklet IDs from edges), :func:`classify_edges` and
:func:`summarize_tracks`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vollseg_dask.errors import InvalidDataError, StoreExistsError, StoreNotFoundError

__all__ = [
    "SPOT_COLUMNS",
    "EDGE_COLUMNS",
    "EDGE_KINDS",
    "TRACK_COLUMNS",
    "TRACKLET_COLUMNS",
    "TrackData",
    "TracksWriter",
    "read_tracks",
    "write_tracks",
    "normalize_spots",
    "normalize_edges",
    "validate_track_data",
    "derive_lineage",
    "classify_edges",
    "summarize_tracks",
    "with_lineage",
]

log = logging.getLogger(__name__)

#: Required spot columns and their dtypes (``label``, ``track_id``, ``tracklet_id`` default to -1).
SPOT_COLUMNS: dict[str, str] = {
    "spot_id": "int64",
    "t": "int32",
    "x": "float64",
    "y": "float64",
    "z": "float64",
    "label": "int64",
    "track_id": "int64",
    "tracklet_id": "int64",
}
#: Edge columns and dtypes.
EDGE_COLUMNS: dict[str, str] = {
    "source_spot_id": "int64",
    "target_spot_id": "int64",
    "cost": "float64",
    "kind": "str",
}
#: Allowed values of ``edges.kind``.
EDGE_KINDS: tuple[str, ...] = ("link", "gap", "split", "merge")
#: Columns of ``tracks.parquet``.
TRACK_COLUMNS: dict[str, str] = {
    "track_id": "int64",
    "start_t": "int32",
    "end_t": "int32",
    "n_spots": "int64",
    "n_divisions": "int64",
    "dividing": "bool",
    "duration": "float64",
    "displacement": "float64",
    "total_distance": "float64",
    "mean_speed": "float64",
}
#: Columns of ``tracklets.parquet``.
TRACKLET_COLUMNS: dict[str, str] = {
    "tracklet_id": "int64",
    "track_id": "int64",
    "parent_tracklet_id": "int64",
    "start_t": "int32",
    "end_t": "int32",
    "n_spots": "int64",
}

_META_KEY = b"vollseg_dask.tracks"
_SPOTS = "spots"
_EDGES = "edges.parquet"
_TRACKS = "tracks.parquet"
_TRACKLETS = "tracklets.parquet"
_CONFIG = "tracker_config.yaml"
_IMAGE = "image.json"
_DEFAULT_FILL = {"label": -1, "track_id": -1, "tracklet_id": -1}


# ----------------------------------------------------------------------------------------------
# Normalisation and validation (pure functions on DataFrames)
# ----------------------------------------------------------------------------------------------


def normalize_spots(spots: pd.DataFrame, *, where: str = "spots") -> pd.DataFrame:
    """Return ``spots`` with the required columns in front, cast to the fixed dtypes.

    Parameters
    ----------
    spots : pandas.DataFrame
        Must hold ``spot_id``, ``t``, ``x``, ``y``, ``z``; ``label``, ``track_id`` and
        ``tracklet_id`` are added as -1 where absent. Other columns are kept after them.
    where : str
        Name used in error messages.

    Returns
    -------
    pandas.DataFrame
        A new frame with a fresh ``RangeIndex``.

    Raises
    ------
    InvalidDataError
        Naming a missing column, a column that cannot be cast, or a NaN in an ID/position column.
    """
    if not isinstance(spots, pd.DataFrame):
        raise InvalidDataError(f"{where} must be a pandas DataFrame, got {type(spots).__name__}")
    missing = [c for c in ("spot_id", "t", "x", "y", "z") if c not in spots.columns]
    if missing:
        raise InvalidDataError(f"{where} lacks required column(s) {missing}; has {list(spots.columns)}")
    out = spots.reset_index(drop=True).copy()
    for col, fill in _DEFAULT_FILL.items():
        if col not in out.columns:
            out[col] = fill
    for col, dtype in SPOT_COLUMNS.items():
        values = out[col]
        if values.isna().any():
            bad = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise InvalidDataError(f"{where}.{col} holds NaN (first at row {bad})")
        try:
            cast = values.astype(dtype)
        except (TypeError, ValueError) as exc:
            raise InvalidDataError(f"{where}.{col} cannot be cast to {dtype}: {exc}") from None
        if dtype.startswith("int") and values.dtype.kind == "f" and not np.array_equal(cast, values):
            raise InvalidDataError(f"{where}.{col} holds non-integer values (e.g. {values.iloc[0]!r})")
        out[col] = cast
    order = list(SPOT_COLUMNS) + [c for c in out.columns if c not in SPOT_COLUMNS]
    return out[order]


def normalize_edges(edges: pd.DataFrame | None, *, where: str = "edges") -> pd.DataFrame:
    """Return ``edges`` with columns ``source_spot_id, target_spot_id, cost, kind`` first and typed.

    ``cost`` defaults to NaN and ``kind`` to ``"link"`` where absent. ``None`` gives an empty table.

    Raises
    ------
    InvalidDataError
        Naming a missing ID column or a ``kind`` outside :data:`EDGE_KINDS`.
    """
    if edges is None:
        edges = pd.DataFrame({"source_spot_id": [], "target_spot_id": []})
    if not isinstance(edges, pd.DataFrame):
        raise InvalidDataError(f"{where} must be a pandas DataFrame, got {type(edges).__name__}")
    missing = [c for c in ("source_spot_id", "target_spot_id") if c not in edges.columns]
    if missing:
        raise InvalidDataError(f"{where} lacks required column(s) {missing}; has {list(edges.columns)}")
    out = edges.reset_index(drop=True).copy()
    if "cost" not in out.columns:
        out["cost"] = np.nan
    if "kind" not in out.columns:
        out["kind"] = "link"
    for col in ("source_spot_id", "target_spot_id"):
        if out[col].isna().any():
            raise InvalidDataError(f"{where}.{col} holds NaN")
        out[col] = out[col].astype("int64")
    out["cost"] = out["cost"].astype("float64")
    out["kind"] = out["kind"].astype(object).astype(str)
    bad = sorted(set(out["kind"].unique()) - set(EDGE_KINDS))
    if bad:
        raise InvalidDataError(f"{where}.kind has unknown value(s) {bad}; allowed: {list(EDGE_KINDS)}")
    order = list(EDGE_COLUMNS) + [c for c in out.columns if c not in EDGE_COLUMNS]
    return out[order]


def _cast_table(df: pd.DataFrame | None, columns: Mapping[str, str], where: str) -> pd.DataFrame | None:
    if df is None:
        return None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InvalidDataError(f"{where} lacks required column(s) {missing}; has {list(df.columns)}")
    out = df.reset_index(drop=True).copy()
    for col, dtype in columns.items():
        try:
            out[col] = out[col].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise InvalidDataError(f"{where}.{col} cannot be cast to {dtype}: {exc}") from None
    return out[list(columns) + [c for c in out.columns if c not in columns]]


# ----------------------------------------------------------------------------------------------
# The in-memory model
# ----------------------------------------------------------------------------------------------


@dataclass
class TrackData:
    """Tracks in memory: spots, edges, per-track and per-tracklet tables, units.

    Attributes
    ----------
    spots : pandas.DataFrame or None
        One row per spot (columns :data:`SPOT_COLUMNS` plus features). ``None`` when the data was
        opened lazily (:func:`read_tracks` with ``lazy=True``); then ``spots_path`` names the
        ``spots/`` dataset and :meth:`iter_frames` / :meth:`load_spots` read it.
    edges : pandas.DataFrame
        ``source_spot_id``, ``target_spot_id``, ``cost``, ``kind`` (+ edge features), source earlier
        in time than target.
    tracks : pandas.DataFrame or None
        :data:`TRACK_COLUMNS` (+ features), or None when not computed.
    tracklets : pandas.DataFrame or None
        :data:`TRACKLET_COLUMNS`, or None when not computed.
    spatial_units : str
        Unit of ``x``, ``y``, ``z`` (``"µm"`` normally, ``"pixel"`` for pixel coordinates).
    time_units : str
        Unit of ``frame_interval`` (``"sec"``, ``"min"``, ``"frame"`` ...).
    frame_interval : float
        Time between frames in ``time_units``.
    ndim : int
        2 for 2D+t data (``z`` is then 0 everywhere), 3 for 3D+t.
    tracker_config : dict or None
        The tracker's settings as written to ``tracker_config.yaml``.
    spots_path : pathlib.Path or None
        ``spots/`` dataset of lazily opened data.
    image : dict or None
        Calibration of the image the spots came from (:func:`vollseg_dask.io.calibration.image_calibration`): ``store``,
        ``labels``, ``shape`` {axis: size}, ``voxel_size`` (z, y, x) in ``spatial_unit``,
        ``frame_interval`` in ``time_unit``. None when unknown (e.g. spots from a CSV).
    """

    spots: pd.DataFrame | None
    edges: pd.DataFrame = field(default_factory=lambda: normalize_edges(None))
    tracks: pd.DataFrame | None = None
    tracklets: pd.DataFrame | None = None
    spatial_units: str = "µm"
    time_units: str = "sec"
    frame_interval: float = 1.0
    ndim: int = 3
    tracker_config: dict[str, Any] | None = None
    spots_path: Path | None = None
    image: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.spots is None and self.spots_path is None:
            raise InvalidDataError("TrackData needs spots (a DataFrame) or spots_path (a spots/ dataset)")
        if self.spots is not None:
            self.spots = normalize_spots(self.spots)
        self.edges = normalize_edges(self.edges)
        self.tracks = _cast_table(self.tracks, TRACK_COLUMNS, "tracks")
        self.tracklets = _cast_table(self.tracklets, TRACKLET_COLUMNS, "tracklets")
        if self.ndim not in (2, 3):
            raise InvalidDataError(f"TrackData.ndim must be 2 or 3, got {self.ndim!r}")
        fi = float(self.frame_interval)
        if not np.isfinite(fi) or fi <= 0:
            raise InvalidDataError(f"TrackData.frame_interval must be finite and > 0, got {self.frame_interval!r}")
        self.frame_interval = fi

    # -- spot access that works for in-memory and lazy data ------------------------------------
    @property
    def is_lazy(self) -> bool:
        """True when spots live on disk only (``spots`` is None)."""
        return self.spots is None

    def frames(self) -> list[int]:
        """Sorted frame indices that hold at least one spot."""
        if self.spots is not None:
            return sorted(int(t) for t in self.spots["t"].unique())
        return sorted(_partition_dirs(self.spots_path))  # type: ignore[arg-type]

    def spot_columns(self) -> list[str]:
        """Column names of the spot table (required ones first), without reading any row."""
        if self.spots is not None:
            return list(self.spots.columns)
        parts = _partition_dirs(self.spots_path)  # type: ignore[arg-type]
        for t in sorted(parts):
            files = parts[t]
            if files:
                import pyarrow.parquet as pq

                names = [n for n in pq.read_schema(files[0]).names if n != "t"]
                return list(SPOT_COLUMNS) + [n for n in names if n not in SPOT_COLUMNS]
        return list(SPOT_COLUMNS)

    def iter_frames(self, columns: Sequence[str] | None = None) -> Iterator[tuple[int, pd.DataFrame]]:
        """Yield ``(t, spots of frame t)`` in increasing ``t``, sorted by ``spot_id``.

        Parameters
        ----------
        columns : sequence of str, optional
            Restrict to these columns (``t`` is always included). Reads only those columns from disk.
        """
        cols = None if columns is None else list(dict.fromkeys(["t", *columns]))
        if self.spots is not None:
            df = self.spots if cols is None else self.spots[cols]
            for t, part in df.groupby("t", sort=True):
                yield int(t), part.sort_values("spot_id", kind="stable").reset_index(drop=True)
            return
        parts = _partition_dirs(self.spots_path)  # type: ignore[arg-type]
        for t in sorted(parts):
            frame = _read_partition(t, parts[t], cols)
            yield t, frame

    def load_spots(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """All spots as one DataFrame (optionally only ``columns``), sorted by ``(t, spot_id)``."""
        if self.spots is not None and columns is None:
            return self.spots.sort_values(["t", "spot_id"], kind="stable").reset_index(drop=True)
        pieces = [f for _, f in self.iter_frames(columns)]
        if not pieces:
            cols = list(SPOT_COLUMNS) if columns is None else list(dict.fromkeys(["t", *columns]))
            return pd.DataFrame({c: pd.Series([], dtype=SPOT_COLUMNS.get(c, "float64")) for c in cols})
        return pd.concat(pieces, ignore_index=True)

    def materialize(self) -> TrackData:
        """Return an in-memory copy (spots loaded) of lazily opened data; self when already in memory."""
        if self.spots is not None:
            return self
        return replace(self, spots=self.load_spots(), spots_path=None)


# ----------------------------------------------------------------------------------------------
# Graph helpers (pure)
# ----------------------------------------------------------------------------------------------


def _dense_index(sorted_ids: np.ndarray, ids: np.ndarray, where: str) -> np.ndarray:
    idx = np.searchsorted(sorted_ids, ids)
    idx_c = np.minimum(idx, max(len(sorted_ids) - 1, 0))
    ok = (idx < len(sorted_ids)) & (sorted_ids[idx_c] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
    if not np.all(ok):
        bad = ids[~ok][0]
        raise InvalidDataError(f"{where} references spot_id {int(bad)} that is not in the spot table")
    return idx_c


def derive_lineage(
    spot_ids: np.ndarray, t: np.ndarray, edges: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Track and tracklet IDs of every spot from the edges alone.

    A *track* is a connected component of the (undirected) edge graph. A *tracklet* is a maximal
    chain of spots joined by one-to-one edges: it ends at a division (out-degree ≥ 2), a merge
    (in-degree ≥ 2) or a track end. Gap-closing edges continue a tracklet.

    Parameters
    ----------
    spot_ids : numpy.ndarray of int64, shape (N,)
        Unique spot IDs.
    t : numpy.ndarray of int, shape (N,)
        Frame of each spot.
    edges : pandas.DataFrame
        ``source_spot_id``, ``target_spot_id``.

    Returns
    -------
    track_id : numpy.ndarray of int64, shape (N,)
        0.. in order of each track's smallest spot ID; -1 for spots without edges.
    tracklet_id : numpy.ndarray of int64, shape (N,)
        0.. in order of each tracklet's first spot ``(t, spot_id)``; -1 for spots without edges.
    tracklets : pandas.DataFrame
        :data:`TRACKLET_COLUMNS`. ``parent_tracklet_id`` is the tracklet of the first spot's
        predecessor (the smallest such tracklet ID at a merge), -1 at a track start.

    Raises
    ------
    InvalidDataError
        Duplicate spot IDs, an edge to an unknown spot, or an edge that does not go forward in time.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    spot_ids = np.asarray(spot_ids, dtype=np.int64)
    t = np.asarray(t, dtype=np.int64)
    n = len(spot_ids)
    order = np.argsort(spot_ids, kind="stable")
    sids = spot_ids[order]
    if n > 1 and np.any(sids[1:] == sids[:-1]):
        dup = sids[1:][sids[1:] == sids[:-1]][0]
        raise InvalidDataError(f"spot_id {int(dup)} appears more than once")
    ts = t[order]
    src = _dense_index(sids, edges["source_spot_id"].to_numpy(np.int64), "edges.source_spot_id")
    dst = _dense_index(sids, edges["target_spot_id"].to_numpy(np.int64), "edges.target_spot_id")
    if np.any(ts[dst] <= ts[src]):
        i = int(np.flatnonzero(ts[dst] <= ts[src])[0])
        raise InvalidDataError(
            f"edge {int(sids[src[i]])} -> {int(sids[dst[i]])} does not go forward in time "
            f"(t {int(ts[src[i]])} -> {int(ts[dst[i]])})"
        )
    linked = np.zeros(n, bool)
    linked[src] = True
    linked[dst] = True
    track_sorted = np.full(n, -1, np.int64)
    tracklet_sorted = np.full(n, -1, np.int64)
    empty = pd.DataFrame({c: pd.Series([], dtype=d) for c, d in TRACKLET_COLUMNS.items()})
    if len(src) == 0:
        return np.full(n, -1, np.int64), np.full(n, -1, np.int64), empty

    ones = np.ones(len(src), np.int8)
    g = coo_matrix((ones, (src, dst)), shape=(n, n)).tocsr()
    _, comp = connected_components(g, directed=False)
    # number tracks by smallest spot id (dense index order == spot id order)
    lk = np.flatnonzero(linked)
    _, first = np.unique(comp[lk], return_index=True)
    comp_order = np.argsort(lk[first], kind="stable")
    comp_rank = np.empty(len(comp_order), np.int64)
    comp_rank[comp_order] = np.arange(len(comp_order))
    remap = np.full(comp.max() + 1, -1, np.int64)
    remap[np.unique(comp[lk])] = comp_rank
    track_sorted[lk] = remap[comp[lk]]

    outdeg = np.bincount(src, minlength=n)
    indeg = np.bincount(dst, minlength=n)
    cont = (outdeg[src] == 1) & (indeg[dst] == 1)
    h = coo_matrix((ones[cont], (src[cont], dst[cont])), shape=(n, n)).tocsr()
    _, seg = connected_components(h, directed=False)
    # number tracklets by first spot (t, spot_id)
    key = pd.DataFrame({"seg": seg[lk], "t": ts[lk], "i": lk})
    heads = key.sort_values(["t", "i"], kind="stable").drop_duplicates("seg")
    seg_rank = np.full(seg.max() + 1, -1, np.int64)
    seg_rank[heads["seg"].to_numpy()] = np.arange(len(heads))
    tracklet_sorted[lk] = seg_rank[seg[lk]]

    # parents: predecessors of each tracklet's first spot
    head_idx = heads["i"].to_numpy()
    parent = np.full(len(heads), -1, np.int64)
    pe = pd.DataFrame({"child": tracklet_sorted[dst], "parent": tracklet_sorted[src]})
    pe = pe[pe["child"] != pe["parent"]].groupby("child")["parent"].min()
    parent[pe.index.to_numpy()] = pe.to_numpy()
    stats = pd.DataFrame({"tracklet_id": tracklet_sorted[lk], "t": ts[lk]}).groupby("tracklet_id")["t"]
    tracklets = pd.DataFrame(
        {
            "tracklet_id": np.arange(len(heads), dtype=np.int64),
            "track_id": track_sorted[head_idx],
            "parent_tracklet_id": parent,
            "start_t": stats.min().to_numpy().astype(np.int32),
            "end_t": stats.max().to_numpy().astype(np.int32),
            "n_spots": stats.size().to_numpy().astype(np.int64),
        }
    )
    track_id = np.empty(n, np.int64)
    tracklet_id = np.empty(n, np.int64)
    track_id[order] = track_sorted
    tracklet_id[order] = tracklet_sorted
    return track_id, tracklet_id, tracklets


def classify_edges(spot_ids: np.ndarray, t: np.ndarray, edges: pd.DataFrame) -> np.ndarray:
    """Kind of each edge: ``split`` (source has ≥ 2 successors), ``merge`` (target has ≥ 2
    predecessors), ``gap`` (skips ≥ 1 frame) or ``link``, in that priority.

    Returns
    -------
    numpy.ndarray of str, shape (len(edges),)
    """
    spot_ids = np.asarray(spot_ids, dtype=np.int64)
    order = np.argsort(spot_ids, kind="stable")
    sids = spot_ids[order]
    ts = np.asarray(t, np.int64)[order]
    src = _dense_index(sids, edges["source_spot_id"].to_numpy(np.int64), "edges.source_spot_id")
    dst = _dense_index(sids, edges["target_spot_id"].to_numpy(np.int64), "edges.target_spot_id")
    n = len(sids)
    outdeg = np.bincount(src, minlength=n)
    indeg = np.bincount(dst, minlength=n)
    kind = np.full(len(src), "link", dtype=object)
    kind[ts[dst] - ts[src] > 1] = "gap"
    kind[indeg[dst] >= 2] = "merge"
    kind[outdeg[src] >= 2] = "split"
    return kind.astype(str)


def summarize_tracks(spots: pd.DataFrame, edges: pd.DataFrame, frame_interval: float = 1.0) -> pd.DataFrame:
    """Per-track table (:data:`TRACK_COLUMNS`) from spots with ``track_id`` and the edges.

    ``duration`` = (end_t − start_t) × frame_interval; ``displacement`` = distance from the first to
    the last spot (earliest/latest in time, smallest spot ID on ties); ``total_distance`` = sum of
    edge lengths; ``mean_speed`` = mean over edges of length / (Δt × frame_interval);
    ``n_divisions`` = number of spots with ≥ 2 successors.
    """
    s = spots[spots["track_id"] >= 0]
    if s.empty:
        return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in TRACK_COLUMNS.items()})
    s = s.sort_values(["track_id", "t", "spot_id"], kind="stable")
    g = s.groupby("track_id", sort=True)
    first = g.head(1).set_index("track_id")
    # the last spot: the smallest spot id at the last frame
    last = s[s["t"] == s["track_id"].map(g["t"].max())].groupby("track_id").head(1).set_index("track_id")
    xyz = ["x", "y", "z"]
    disp = np.linalg.norm(last[xyz].to_numpy() - first[xyz].to_numpy(), axis=1)
    pos = spots.set_index("spot_id")
    e = edges
    if len(e):
        a = pos.loc[e["source_spot_id"].to_numpy()]
        b = pos.loc[e["target_spot_id"].to_numpy()]
        length = np.linalg.norm(b[xyz].to_numpy() - a[xyz].to_numpy(), axis=1)
        dt = (b["t"].to_numpy() - a["t"].to_numpy()).astype(float) * float(frame_interval)
        ed = pd.DataFrame({"track_id": a["track_id"].to_numpy(), "len": length, "speed": length / dt})
        eg = ed.groupby("track_id")
        total = eg["len"].sum()
        speed = eg["speed"].mean()
        outdeg = e.groupby("source_spot_id").size()
        div_src = outdeg[outdeg >= 2].index.to_numpy()
        ndiv = pos.loc[div_src].groupby("track_id").size() if len(div_src) else pd.Series(dtype="int64")
    else:
        total = speed = ndiv = pd.Series(dtype="float64")
    ids = g.size().index
    out = pd.DataFrame(
        {
            "track_id": ids.to_numpy(np.int64),
            "start_t": g["t"].min().to_numpy().astype(np.int32),
            "end_t": g["t"].max().to_numpy().astype(np.int32),
            "n_spots": g.size().to_numpy().astype(np.int64),
            "n_divisions": ndiv.reindex(ids).fillna(0).to_numpy().astype(np.int64),
        }
    )
    out["dividing"] = out["n_divisions"] > 0
    out["duration"] = (out["end_t"] - out["start_t"]).astype(float) * float(frame_interval)
    out["displacement"] = disp
    out["total_distance"] = total.reindex(ids).fillna(0.0).to_numpy()
    out["mean_speed"] = speed.reindex(ids).to_numpy()
    return out


def with_lineage(data: TrackData, *, recompute: bool = False) -> TrackData:
    """Return in-memory data whose spots carry ``track_id``/``tracklet_id`` and whose ``tracklets``
    and ``tracks`` tables exist, deriving them from the edges where missing (or when ``recompute``).

    Existing IDs are kept unless ``recompute`` is true or they are all -1 while edges exist.
    """
    data = data.materialize()
    spots = data.spots
    assert spots is not None
    need = recompute or data.tracklets is None or (
        len(data.edges) > 0 and bool((spots["tracklet_id"] < 0).all())
    )
    tracklets = data.tracklets
    if need:
        track_id, tracklet_id, tracklets = derive_lineage(
            spots["spot_id"].to_numpy(), spots["t"].to_numpy(), data.edges
        )
        spots = spots.copy()
        keep_tracks = not recompute and bool((spots["track_id"] >= 0).any())
        if keep_tracks:
            # keep the caller's track numbering, map tracklets onto it
            lookup = pd.Series(spots["track_id"].to_numpy(), index=track_id)
            lookup = lookup[lookup.index >= 0]
            lookup = lookup[~lookup.index.duplicated()]
            tracklets["track_id"] = lookup.reindex(tracklets["track_id"]).to_numpy().astype(np.int64)
        else:
            spots["track_id"] = track_id
        spots["tracklet_id"] = tracklet_id
    tracks = data.tracks
    if tracks is None or need:
        tracks = summarize_tracks(spots, data.edges, data.frame_interval)
    return replace(data, spots=spots, tracklets=tracklets, tracks=tracks)


def validate_track_data(data: TrackData) -> None:
    """Check that spot IDs are unique, every edge joins known spots forward in time, and the
    tracklet table names only known tracklets.

    Raises
    ------
    InvalidDataError
        Naming the offending spot ID, edge or tracklet.
    """
    cols = ["spot_id", "tracklet_id"]
    spots = data.spots[["spot_id", "t", "tracklet_id"]] if data.spots is not None else data.load_spots(cols)
    derive_lineage(spots["spot_id"].to_numpy(), spots["t"].to_numpy(), data.edges)
    if data.tracklets is not None:
        known = set(data.tracklets["tracklet_id"].tolist())
        used = set(spots.loc[spots["tracklet_id"] >= 0, "tracklet_id"].tolist())
        if used - known:
            raise InvalidDataError(
                f"spots name tracklet_id {min(used - known)} that is not in the tracklets table"
            )
        parents = set(data.tracklets["parent_tracklet_id"].tolist()) - {-1}
        if parents - known:
            raise InvalidDataError(f"tracklets name parent_tracklet_id {min(parents - known)} that does not exist")


# ----------------------------------------------------------------------------------------------
# Disk layout
# ----------------------------------------------------------------------------------------------


def _partition_dirs(root: Path) -> dict[int, list[Path]]:
    parts: dict[int, list[Path]] = {}
    if not root.is_dir():
        raise StoreNotFoundError(f"spots dataset not found: {root}")
    for d in root.iterdir():
        if not d.is_dir() or not d.name.startswith("t="):
            continue
        try:
            t = int(d.name[2:])
        except ValueError:
            raise InvalidDataError(f"spots partition folder {d} is not named t=<integer>") from None
        parts[t] = sorted(p for p in d.iterdir() if p.suffix == ".parquet" and p.is_file())
    return parts


def _read_partition(t: int, files: list[Path], columns: list[str] | None) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file_cols = None if columns is None else [c for c in columns if c != "t"]
    tables = []
    for f in files:
        names = pq.read_schema(f).names
        want = None if file_cols is None else [c for c in file_cols if c in names]
        tables.append(pq.read_table(f, columns=want))
    table = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    df = table.to_pandas()
    if "t" in df.columns:
        if len(df) and not (df["t"] == t).all():
            raise InvalidDataError(f"spots partition t={t} holds rows with another t")
        df = df.drop(columns="t")
    df.insert(0, "t", np.full(len(df), t, np.int32))
    for col, fill in _DEFAULT_FILL.items():
        if col not in df.columns and (columns is None or col in columns):
            df[col] = np.full(len(df), fill, np.int64)
    for col, dtype in SPOT_COLUMNS.items():
        if col in df.columns:
            df[col] = df[col].astype(dtype)
    if columns is None:
        order = list(SPOT_COLUMNS) + [c for c in df.columns if c not in SPOT_COLUMNS]
    else:
        order = [c for c in dict.fromkeys(["t", *columns]) if c in df.columns]
    return df[order].sort_values("spot_id", kind="stable").reset_index(drop=True) if "spot_id" in df else df[order]


def _meta_of(data: TrackData | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(data, TrackData):
        return {
            "spatial_units": data.spatial_units,
            "time_units": data.time_units,
            "frame_interval": data.frame_interval,
            "ndim": data.ndim,
        }
    return dict(data)


def _write_parquet(df: pd.DataFrame, path: Path, meta: Mapping[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    md = dict(table.schema.metadata or {})
    md[_META_KEY] = json.dumps(dict(meta), ensure_ascii=False).encode("utf-8")
    table = table.replace_schema_metadata(md)
    pq.write_table(table, path)


class TracksWriter:
    """Write a ``TRACKS_DIR`` piece by piece, atomically.

    Everything is written into a hidden sibling folder, which replaces ``path`` only when the
    ``with`` block ends without an exception (and is deleted otherwise).

    Parameters
    ----------
    path : path-like
        Target ``TRACKS_DIR``.
    overwrite : bool
        Replace an existing folder; otherwise an existing ``path`` raises :class:`StoreExistsError`.
    spatial_units, time_units, frame_interval, ndim
        Stored as metadata in every Parquet file.
    image : dict, optional
        Calibration of the source image (:attr:`TrackData.image`), written to ``image.json`` (its
        own file: it names the store and labels group, provenance that the result tables do not
        depend on).

    Edges are written either whole (:meth:`write_edges`) or streamed in pieces
    (:meth:`write_edges_chunk`, one Parquet row group per piece), never both; a writer that got
    neither writes an empty ``edges.parquet``.

    Examples
    --------
    >>> with TracksWriter(out, overwrite=True) as w:           # doctest: +SKIP
    ...     for t, frame in frames:
    ...         w.write_spots_frame(t, frame)
    ...         w.write_edges_chunk(edges_into(t))              # or w.write_edges(edges) once
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        spatial_units: str = "µm",
        time_units: str = "sec",
        frame_interval: float = 1.0,
        ndim: int = 3,
        image: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.meta = {
            "spatial_units": spatial_units,
            "time_units": time_units,
            "frame_interval": float(frame_interval),
            "ndim": int(ndim),
        }
        self.image = json.loads(json.dumps(dict(image), default=str)) if image else None
        self._tmp: Path | None = None
        self._frames: set[int] = set()
        self._has_edges = False
        self._edge_writer: Any = None  # pyarrow.parquet.ParquetWriter of streamed edges
        self._edge_schema: Any = None
        self._n_edge_chunks = 0

    def __enter__(self) -> TracksWriter:
        if self.path.exists() and not self.overwrite:
            raise StoreExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}"
        (self._tmp / _SPOTS).mkdir(parents=True)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._tmp is not None
        try:
            self._close_edge_stream()
        except Exception:
            if exc_type is None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                raise
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        if not self._has_edges:
            self.write_edges(None)
        if self.image:
            (self._tmp / _IMAGE).write_text(json.dumps(self.image, indent=1, sort_keys=True, ensure_ascii=False),
                                            encoding="utf-8")
        _commit_dir(self._tmp, self.path, self.overwrite)

    def _close_edge_stream(self) -> None:
        if self._edge_writer is not None:
            writer, self._edge_writer = self._edge_writer, None
            writer.close()

    def _need_open(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("TracksWriter must be used as a context manager")
        return self._tmp

    def write_spots_frame(self, t: int, spots: pd.DataFrame) -> None:
        """Write the spots of frame ``t`` (``spots.t``, if present, must all equal ``t``)."""
        tmp = self._need_open()
        t = int(t)
        if t in self._frames:
            raise InvalidDataError(f"frame t={t} written twice")
        if "t" not in spots.columns:
            spots = spots.assign(t=t)
        df = normalize_spots(spots, where=f"spots (t={t})")
        if len(df) and not (df["t"] == t).all():
            raise InvalidDataError(f"spots passed for t={t} hold rows with t={int(df.loc[df['t'] != t, 't'].iloc[0])}")
        part = tmp / _SPOTS / f"t={t}"
        part.mkdir()
        _write_parquet(df.drop(columns="t").sort_values("spot_id", kind="stable"), part / "part-0.parquet", self.meta)
        self._frames.add(t)

    def write_edges(self, edges: pd.DataFrame | None) -> None:
        """Write ``edges.parquet`` from one table (``None``: no edge).

        Raises
        ------
        InvalidDataError
            Edges were already written (whole, or streamed with :meth:`write_edges_chunk`).
        """
        tmp = self._need_open()
        if self._has_edges:
            how = f"streamed in {self._n_edge_chunks} chunk(s)" if self._n_edge_chunks else "written"
            raise InvalidDataError(
                f"edges.parquet of {self.path} was already {how}; write_edges writes it once"
            )
        _write_parquet(normalize_edges(edges), tmp / _EDGES, self.meta)
        self._has_edges = True

    def write_edges_chunk(self, edges: pd.DataFrame) -> int:
        """Append edges to ``edges.parquet`` as one row group, so that the edge table is never
        whole in memory.

        Every chunk is normalised like :meth:`write_edges` (:func:`normalize_edges`) and must have
        the columns and types of the first non-empty chunk (extra edge-feature columns included).
        Empty chunks are skipped. The file is complete, with the ``vollseg_dask.tracks`` metadata,
        when the ``with`` block ends; reading it back gives the concatenation of the chunks in the
        order written.

        Parameters
        ----------
        edges : pandas.DataFrame
            ``source_spot_id``, ``target_spot_id`` and optionally ``cost``, ``kind`` and features.

        Returns
        -------
        int
            Rows appended.

        Raises
        ------
        InvalidDataError
            ``edges`` is not a valid edge table (see :func:`normalize_edges`), its columns or types
            differ from the first chunk's (naming the column), or the edges were already written
            whole with :meth:`write_edges`.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = self._need_open()
        if self._has_edges and self._n_edge_chunks == 0:
            raise InvalidDataError(
                f"edges.parquet of {self.path} was already written whole by write_edges; "
                "write_edges_chunk cannot append to it"
            )
        df = normalize_edges(edges, where=f"edges chunk {self._n_edge_chunks}")
        if len(df) == 0:
            return 0
        table = pa.Table.from_pandas(df, preserve_index=False)
        if self._edge_writer is None:
            md = dict(table.schema.metadata or {})
            md[_META_KEY] = json.dumps(dict(self.meta), ensure_ascii=False).encode("utf-8")
            table = table.replace_schema_metadata(md)
            self._edge_schema = table.schema
            self._edge_writer = pq.ParquetWriter(tmp / _EDGES, table.schema)
            self._has_edges = True
        else:
            schema = self._edge_schema
            if table.schema.names != schema.names:
                extra = sorted(set(table.schema.names) ^ set(schema.names))
                raise InvalidDataError(
                    f"edges chunk {self._n_edge_chunks} has columns {table.schema.names}, the first chunk "
                    f"{schema.names}" + (f" (differ in {extra})" if extra else " (order differs)")
                )
            for f in table.schema:
                want = schema.field(f.name).type
                if f.type != want:
                    try:
                        table = table.set_column(
                            table.schema.get_field_index(f.name), f.name, table[f.name].cast(want)
                        )
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        raise InvalidDataError(
                            f"edges chunk {self._n_edge_chunks} column {f.name!r} has type {f.type}, "
                            f"the first chunk {want}"
                        ) from None
            table = table.replace_schema_metadata(schema.metadata)
        self._edge_writer.write_table(table, row_group_size=max(len(table), 1))
        self._n_edge_chunks += 1
        return len(table)

    def write_tracks(self, tracks: pd.DataFrame) -> None:
        """Write ``tracks.parquet``."""
        df = _cast_table(tracks, TRACK_COLUMNS, "tracks")
        _write_parquet(df, self._need_open() / _TRACKS, self.meta)  # type: ignore[arg-type]

    def write_tracklets(self, tracklets: pd.DataFrame) -> None:
        """Write ``tracklets.parquet``."""
        df = _cast_table(tracklets, TRACKLET_COLUMNS, "tracklets")
        _write_parquet(df, self._need_open() / _TRACKLETS, self.meta)  # type: ignore[arg-type]

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write ``tracker_config.yaml``."""
        import yaml

        text = yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)
        (self._need_open() / _CONFIG).write_text(text, encoding="utf-8")


def _commit_dir(tmp: Path, target: Path, overwrite: bool) -> None:
    if target.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreExistsError(f"{target} exists; pass overwrite=True to replace it")
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def write_tracks(path: str | os.PathLike[str], data: TrackData, *, overwrite: bool = False) -> Path:
    """Write ``data`` as a ``TRACKS_DIR`` (atomically: written aside, then renamed into place).

    Parameters
    ----------
    path : path-like
        Target folder.
    data : TrackData
        In memory or lazily opened (spots are then copied frame by frame).
    overwrite : bool
        Replace an existing folder.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    StoreExistsError
        ``path`` exists and ``overwrite`` is false.
    InvalidDataError
        Duplicate spot IDs, edges to unknown spots or backwards in time, unknown tracklets.
    """
    validate_track_data(data)
    path = Path(path)
    if data.spots_path is not None and Path(data.spots_path).resolve().parent == path.resolve():
        data = data.materialize()  # we are about to replace the folder we read from
    with TracksWriter(
        path,
        overwrite=overwrite,
        spatial_units=data.spatial_units,
        time_units=data.time_units,
        frame_interval=data.frame_interval,
        ndim=data.ndim,
        image=data.image,
    ) as w:
        for t, frame in data.iter_frames():
            w.write_spots_frame(t, frame)
        w.write_edges(data.edges)
        if data.tracks is not None:
            w.write_tracks(data.tracks)
        if data.tracklets is not None:
            w.write_tracklets(data.tracklets)
        if data.tracker_config is not None:
            w.write_config(data.tracker_config)
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    md = pq.read_schema(path).metadata or {}
    raw = md.get(_META_KEY)
    return json.loads(raw.decode("utf-8")) if raw else {}


def read_tracks(path: str | os.PathLike[str], *, lazy: bool = False) -> TrackData:
    """Read a ``TRACKS_DIR``.

    Parameters
    ----------
    path : path-like
        Folder holding ``spots/`` and ``edges.parquet`` (``tracks.parquet``, ``tracklets.parquet``,
        ``tracker_config.yaml`` are optional).
    lazy : bool
        Leave the spots on disk (``TrackData.spots`` is None); read them with
        :meth:`TrackData.iter_frames`.

    Raises
    ------
    StoreNotFoundError
        The folder, ``spots/`` or ``edges.parquet`` is missing (the message names which).
    """
    import pyarrow.parquet as pq

    root = Path(path)
    if not root.is_dir():
        raise StoreNotFoundError(f"tracks folder not found: {root}")
    missing = [n for n in (_SPOTS, _EDGES) if not (root / n).exists()]
    if missing:
        raise StoreNotFoundError(f"{root} is not a tracks folder: missing {missing}")
    meta = _read_meta(root / _EDGES)
    edges = pq.read_table(root / _EDGES).to_pandas()
    tracks = pq.read_table(root / _TRACKS).to_pandas() if (root / _TRACKS).exists() else None
    tracklets = pq.read_table(root / _TRACKLETS).to_pandas() if (root / _TRACKLETS).exists() else None
    config = None
    if (root / _CONFIG).exists():
        import yaml

        config = yaml.safe_load((root / _CONFIG).read_text(encoding="utf-8")) or {}
    data = TrackData(
        spots=None,
        edges=edges,
        tracks=tracks,
        tracklets=tracklets,
        spatial_units=str(meta.get("spatial_units", "µm")),
        time_units=str(meta.get("time_units", "sec")),
        frame_interval=float(meta.get("frame_interval", 1.0)),
        ndim=int(meta.get("ndim", 3)),
        tracker_config=config,
        spots_path=root / _SPOTS,
        image=json.loads((root / _IMAGE).read_text(encoding="utf-8")) if (root / _IMAGE).is_file() else None,
    )
    return data if lazy else data.materialize()
