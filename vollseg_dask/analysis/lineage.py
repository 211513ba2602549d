"""Divisions and lineage roles from spots and edges (pure pandas).

A **division** is a spot with two or more successors (TrackMate's split). A **dividing track** is a
track (connected lineage) holding at least one division; every other track is **non-dividing**.
A tracklet that ends in a division is a **mother**; a tracklet whose first spot follows a division is
a **daughter**; ``generation`` counts divisions from the track's root tracklet (0) to the tracklet.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vollseg_dask.errors import InvalidDataError

__all__ = [
    "DIVISION_COLUMNS",
    "division_events",
    "classify_tracks",
    "tracklet_lineage",
    "per_frame_counts",
]

#: Columns of the division table (one row per division).
DIVISION_COLUMNS: tuple[str, ...] = (
    "division_id",
    "track_id",
    "mother_tracklet_id",
    "mother_spot_id",
    "t",
    "x",
    "y",
    "z",
    "n_daughters",
    "daughter_tracklet_ids",
    "distance_to_boundary_um",
)


def _need(df: pd.DataFrame, cols: list[str], where: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InvalidDataError(f"{where} lacks column(s) {missing}; has {list(df.columns)}")


def division_events(spots: pd.DataFrame, edges: pd.DataFrame) -> pd.DataFrame:
    """One row per division.

    Parameters
    ----------
    spots : pandas.DataFrame
        ``spot_id``, ``t``, ``x``, ``y``, ``z``, ``track_id``, ``tracklet_id`` (and optionally
        ``distance_to_boundary_um``, µm).
    edges : pandas.DataFrame
        ``source_spot_id``, ``target_spot_id``.

    Returns
    -------
    pandas.DataFrame
        :data:`DIVISION_COLUMNS`, sorted by ``(t, mother_spot_id)``: ``t`` and ``x, y, z`` are those of
        the mother's last spot; ``daughter_tracklet_ids`` is the sorted daughter tracklet IDs joined
        by ``";"``; ``distance_to_boundary_um`` is the mother spot's (NaN when unknown).
    """
    _need(spots, ["spot_id", "t", "x", "y", "z", "track_id", "tracklet_id"], "spots")
    _need(edges, ["source_spot_id", "target_spot_id"], "edges")
    outdeg = edges.groupby("source_spot_id").size()
    mothers = outdeg[outdeg >= 2]
    cols = ["spot_id", "t", "x", "y", "z", "track_id", "tracklet_id"]
    has_dist = "distance_to_boundary_um" in spots.columns
    pos = spots[cols + (["distance_to_boundary_um"] if has_dist else [])].set_index("spot_id")
    if len(mothers) == 0:
        return pd.DataFrame(
            {
                c: pd.Series([], dtype="object" if c == "daughter_tracklet_ids" else "float64")
                for c in DIVISION_COLUMNS
            }
        ).astype(
            {
                "division_id": "int64",
                "track_id": "int64",
                "mother_tracklet_id": "int64",
                "mother_spot_id": "int64",
                "t": "int64",
                "n_daughters": "int64",
            }
        )
    unknown = mothers.index.difference(pos.index)
    if len(unknown):
        raise InvalidDataError(f"edges name source spot {int(unknown[0])} that is not in the spot table")
    m = pos.loc[mothers.index.to_numpy()]
    e = edges[edges["source_spot_id"].isin(mothers.index)]
    daughters_tl = pos["tracklet_id"].reindex(e["target_spot_id"].to_numpy()).to_numpy()
    dl = pd.DataFrame({"mother": e["source_spot_id"].to_numpy(), "d": daughters_tl})
    joined = dl.groupby("mother")["d"].apply(lambda s: ";".join(str(int(v)) for v in sorted(s) if v == v))
    out = pd.DataFrame(
        {
            "track_id": m["track_id"].to_numpy(np.int64),
            "mother_tracklet_id": m["tracklet_id"].to_numpy(np.int64),
            "mother_spot_id": m.index.to_numpy(np.int64),
            "t": m["t"].to_numpy(np.int64),
            "x": m["x"].to_numpy(np.float64),
            "y": m["y"].to_numpy(np.float64),
            "z": m["z"].to_numpy(np.float64),
            "n_daughters": mothers.to_numpy(np.int64),
            "daughter_tracklet_ids": joined.reindex(m.index).to_numpy(object),
            "distance_to_boundary_um": m["distance_to_boundary_um"].to_numpy(np.float64)
            if has_dist
            else np.full(len(m), np.nan),
        }
    )
    out = out.sort_values(["t", "mother_spot_id"], kind="stable").reset_index(drop=True)
    out.insert(0, "division_id", np.arange(len(out), dtype=np.int64))
    return out[list(DIVISION_COLUMNS)]


def classify_tracks(spots: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Dividing vs non-dividing class of every track.

    Parameters
    ----------
    spots : pandas.DataFrame
        ``track_id`` per spot (-1 = unlinked, ignored).
    events : pandas.DataFrame
        :func:`division_events` output.

    Returns
    -------
    pandas.DataFrame
        ``track_id`` (int64), ``n_divisions`` (int64), ``dividing`` (bool), ``track_class``
        (``"dividing"`` | ``"non-dividing"``), sorted by ``track_id``.
    """
    _need(spots, ["track_id"], "spots")
    ids = np.unique(spots["track_id"].to_numpy(np.int64))
    ids = ids[ids >= 0]
    n = (
        events.groupby("track_id").size().reindex(ids).fillna(0).to_numpy(np.int64)
        if len(events)
        else np.zeros(len(ids), np.int64)
    )
    out = pd.DataFrame({"track_id": ids, "n_divisions": n})
    out["dividing"] = out["n_divisions"] > 0
    out["track_class"] = np.where(out["dividing"], "dividing", "non-dividing")
    return out


def tracklet_lineage(tracklets: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Role of every tracklet in its lineage.

    Parameters
    ----------
    tracklets : pandas.DataFrame
        ``tracklet_id``, ``track_id``, ``parent_tracklet_id`` (-1 for a root).
    events : pandas.DataFrame
        :func:`division_events` output.

    Returns
    -------
    pandas.DataFrame
        ``tracklet_id``, ``parent_tracklet_id``, ``generation`` (int64, 0 at the root),
        ``divides`` (bool: the tracklet ends in a division), ``n_daughters`` (int64),
        ``is_daughter`` (bool: its parent divided), ``role`` (``"mother"`` when it divides, else
        ``"daughter"`` when it follows a division, else ``"root"``; a tracklet that both follows and
        ends in a division is a ``"mother"`` and ``is_daughter``).
    """
    _need(tracklets, ["tracklet_id", "parent_tracklet_id"], "tracklets")
    tl = tracklets[["tracklet_id", "parent_tracklet_id"]].astype("int64").reset_index(drop=True)
    parent = pd.Series(tl["parent_tracklet_id"].to_numpy(), index=tl["tracklet_id"].to_numpy())
    gen = np.zeros(len(tl), np.int64)
    cur = tl["parent_tracklet_id"].to_numpy().copy()
    for _ in range(len(tl) + 1):
        active = cur >= 0
        if not active.any():
            break
        gen[active] += 1
        cur[active] = parent.reindex(cur[active]).fillna(-1).to_numpy(np.int64)
    else:  # pragma: no cover - a cycle cannot come out of derive_lineage
        raise InvalidDataError("tracklet parents form a cycle")
    nd = (
        events.groupby("mother_tracklet_id")["n_daughters"].sum() if len(events) else pd.Series(dtype="int64")
    )
    n_daughters = nd.reindex(tl["tracklet_id"]).fillna(0).to_numpy(np.int64)
    divides = n_daughters >= 2
    mother_set = set(int(v) for v in nd.index)
    is_daughter = np.array([int(p) in mother_set for p in tl["parent_tracklet_id"]], dtype=bool)
    role = np.where(divides, "mother", np.where(is_daughter, "daughter", "root"))
    return pd.DataFrame(
        {
            "tracklet_id": tl["tracklet_id"].to_numpy(),
            "parent_tracklet_id": tl["parent_tracklet_id"].to_numpy(),
            "generation": gen,
            "divides": divides,
            "n_daughters": n_daughters,
            "is_daughter": is_daughter,
            "role": role,
        }
    )


def per_frame_counts(spots: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Cells and divisions in every frame.

    Returns
    -------
    pandas.DataFrame
        ``t`` (every frame from the first to the last spot), ``n_cells`` (spots), ``n_tracked``
        (spots with a track), ``n_divisions`` (divisions whose mother's last spot is in ``t``).
    """
    _need(spots, ["t", "track_id"], "spots")
    if len(spots) == 0:
        return pd.DataFrame(
            {c: pd.Series([], dtype="int64") for c in ("t", "n_cells", "n_tracked", "n_divisions")}
        )
    t = spots["t"].to_numpy(np.int64)
    frames = np.arange(t.min(), t.max() + 1, dtype=np.int64)
    n_cells = np.bincount(t - t.min(), minlength=len(frames))
    tracked = t[spots["track_id"].to_numpy() >= 0]
    n_tracked = np.bincount(tracked - t.min(), minlength=len(frames))
    et = events["t"].to_numpy(np.int64) if len(events) else np.zeros(0, np.int64)
    n_div = np.bincount(et - t.min(), minlength=len(frames)) if len(et) else np.zeros(len(frames), np.int64)
    return pd.DataFrame(
        {
            "t": frames,
            "n_cells": n_cells.astype(np.int64),
            "n_tracked": n_tracked.astype(np.int64),
            "n_divisions": n_div.astype(np.int64),
        }
    )
