"""Tracks as napari ``Tracks`` layer data (without importing napari).

napari's tracks layer takes ``data`` of shape ``(N, D+1)`` with columns ``track_id, t, (z,) y, x``
sorted by track and time, per-point ``properties``, and a ``graph`` ``{track_id: [parent_ids]}``
that draws divisions (and merges). Using *tracklet* IDs as napari track IDs makes every division a
graph edge, so lineages appear as trees::

    data, properties, graph = to_napari_tracks(track_data)
    viewer.add_tracks(data, properties=properties, graph=graph)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from vollseg_dask.errors import InvalidDataError
from vollseg_dask.io.tracks import TrackData, with_lineage

__all__ = ["to_napari_tracks", "napari_graph"]

_NOT_PROPERTIES = {"x", "y", "z"}


def napari_graph(data: TrackData) -> dict[int, list[int]]:
    """Lineage graph ``{child tracklet: [parent tracklets]}`` of tracklet-ID napari tracks.

    Parents come from the edges that join two different tracklets (a division gives each daughter
    its mother, a merge gives the merged tracklet both parents); without such edges, from
    ``tracklets.parent_tracklet_id``. Lists are sorted; tracklets without parent are absent.
    """
    data = with_lineage(data)
    spots = data.spots
    assert spots is not None and data.tracklets is not None
    tl_of = pd.Series(spots["tracklet_id"].to_numpy(), index=spots["spot_id"].to_numpy())
    e = data.edges
    pairs = pd.DataFrame({
        "child": tl_of.reindex(e["target_spot_id"].to_numpy()).to_numpy(),
        "parent": tl_of.reindex(e["source_spot_id"].to_numpy()).to_numpy(),
    }).dropna()
    tls = data.tracklets[data.tracklets["parent_tracklet_id"] >= 0]
    pairs = pd.concat([
        pairs.astype(np.int64),
        pd.DataFrame({"child": tls["tracklet_id"].to_numpy(np.int64), "parent": tls["parent_tracklet_id"].to_numpy(np.int64)}),
    ], ignore_index=True)
    pairs = pairs[(pairs["child"] != pairs["parent"]) & (pairs["child"] >= 0) & (pairs["parent"] >= 0)]
    pairs = pairs.drop_duplicates().sort_values(["child", "parent"])
    return {int(c): [int(p) for p in g["parent"]] for c, g in pairs.groupby("child", sort=True)}


def to_napari_tracks(
    data: TrackData,
    *,
    voxel_size: Sequence[float] | None = None,
    include_unlinked: bool = False,
    properties: Sequence[str] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[int, list[int]]]:
    """napari tracks-layer data of ``data``.

    Parameters
    ----------
    data : TrackData
        Tracklets are derived from the edges when missing.
    voxel_size : sequence of float, optional
        ``(z, y, x)`` (or ``(y, x)`` for 2D) voxel size: positions are divided by it, giving voxel
        coordinates that overlay an image layer shown without scale. Default: positions as stored
        (µm), to overlay an image layer whose ``scale`` is the voxel size.
    include_unlinked : bool
        Also return spots without tracklet (``tracklet_id`` −1), each as a one-point track with an
        ID above every tracklet ID.
    properties : sequence of str, optional
        Spot columns to return as properties; default every numeric or boolean column except the
        coordinates.

    Returns
    -------
    data : numpy.ndarray of float64, shape (N, 5) for 3D or (N, 4) for 2D
        ``tracklet_id, t, z, y, x`` (``tracklet_id, t, y, x``), sorted by ``(tracklet_id, t)``.
    properties : dict of str to numpy.ndarray
        One value per row of ``data`` (always ``spot_id``, ``track_id``, ``tracklet_id``, ``t``).
    graph : dict of int to list of int
        ``{child tracklet: [parent tracklets]}``.

    Raises
    ------
    InvalidDataError
        ``voxel_size`` of the wrong length or not positive, an unknown property column, or two spots
        of one tracklet in the same frame.
    """
    data = with_lineage(data)
    spots = data.spots
    assert spots is not None
    spatial = ["z", "y", "x"] if data.ndim == 3 else ["y", "x"]
    if voxel_size is not None:
        vs = np.asarray(voxel_size, dtype=np.float64)
        if vs.shape != (len(spatial),) or not np.all(vs > 0):
            raise InvalidDataError(f"voxel_size must be {len(spatial)} positive numbers ({', '.join(spatial)}), got {voxel_size!r}")
    else:
        vs = np.ones(len(spatial))
    s = spots
    if include_unlinked:
        free = s["tracklet_id"] < 0
        if free.any():
            base = int(max(s["tracklet_id"].max(), -1)) + 1
            s = s.copy()
            order = np.argsort(s.loc[free, "spot_id"].to_numpy(), kind="stable")
            ids = np.empty(int(free.sum()), np.int64)
            ids[order] = base + np.arange(len(ids))
            s.loc[free, "tracklet_id"] = ids
    else:
        s = s[s["tracklet_id"] >= 0]
    s = s.sort_values(["tracklet_id", "t", "spot_id"], kind="stable").reset_index(drop=True)
    dup = s.duplicated(["tracklet_id", "t"])
    if dup.any():
        r = s[dup].iloc[0]
        raise InvalidDataError(f"tracklet {int(r['tracklet_id'])} has two spots in frame {int(r['t'])}: napari needs one")
    arr = np.column_stack([
        s["tracklet_id"].to_numpy(np.float64),
        s["t"].to_numpy(np.float64),
        s[spatial].to_numpy(np.float64) / vs,
    ]) if len(s) else np.zeros((0, 2 + len(spatial)))

    if properties is None:
        cols = [c for c in s.columns if c not in _NOT_PROPERTIES and s[c].dtype.kind in "iufb"]
    else:
        unknown = [c for c in properties if c not in s.columns]
        if unknown:
            raise InvalidDataError(f"unknown property column(s) {unknown}; spots have {list(s.columns)}")
        cols = list(dict.fromkeys(["spot_id", "track_id", "tracklet_id", "t", *properties]))
    for c in ("spot_id", "track_id", "tracklet_id", "t"):
        if c not in cols:
            cols.insert(0, c)
    props: dict[str, Any] = {c: s[c].to_numpy() for c in cols}
    present = set(s["tracklet_id"].tolist())
    graph = {c: [p for p in ps if p in present] for c, ps in napari_graph(data).items() if c in present}
    return arr, props, {c: ps for c, ps in graph.items() if ps}
