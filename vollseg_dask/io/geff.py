"""GEFF, the graph exchange file format of the tracking community, written and read with ``geff``.

A track store (:class:`vollseg_dask.io.tracks.TrackData`) becomes one GEFF zarr group:

- **nodes**: one per spot, the node ID is ``spot_id``. Properties ``t`` (frame index, int64),
  ``z``, ``y``, ``x`` (in the store's spatial unit, normally µm), ``seg_id`` (the segmentation
  label of the spot in its frame), ``track_id`` (lineage) and ``tracklet_id``, and every numeric
  column of the cell table the spots came from (volume, intensities, distance to the boundary...).
- **axes** (``t``, ``z``, ``y``, ``x``): type, unit and range. ``t`` holds frame indices: its
  ``unit`` is ``frame`` (the spec's "matches the image index") and ``scale`` = frame interval with
  ``scaled_unit`` = the store's time unit (OME-NGFF name, e.g. ``minute``), as in GEFF's own
  example; space axes have unit ``micrometer``.
- ``track_node_props`` = ``{"lineage": "track_id", "tracklet": "tracklet_id"}``. GEFF requires each
  lineage to be a weakly connected component, so a spot that belongs to no track (``track_id`` -1
  in our tables) gets an ID of its own here; :func:`read_geff` turns single-node lineages back
  into -1.
- ``related_objects``: the labels group (``type: labels``, path relative to the GEFF group,
  ``node_prop: seg_id``) when the track store's calibration names one.
- **edges**: ``cost`` (float64) and ``kind`` (string: ``link``, ``gap``, ``split``, ``merge``).

``extra["vollseg_dask"]`` keeps the calibration (shape, voxel size, frame interval and units of the
image) so that a GEFF read back, or given to ``vollseg-dask track``, keeps its units.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vollseg_dask.errors import InvalidDataError, StoreExistsError, StoreNotFoundError, require

__all__ = ["write_geff", "read_geff", "is_geff", "GEFF_KINDS"]

#: Edge kinds written in the ``kind`` edge property.
GEFF_KINDS = ("link", "gap", "split", "merge")
_AXES = ("t", "z", "y", "x")
_NOT_PROPS = {"spot_id", "t", "x", "y", "z", "label"}


def is_geff(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a zarr group whose attributes hold GEFF metadata."""
    p = Path(path)
    for name in ("zarr.json", ".zattrs"):
        f = p / name
        if f.is_file():
            try:
                return '"geff"' in f.read_text(encoding="utf-8")
            except OSError:
                return False
    return False


def _own_ids(ids: np.ndarray) -> np.ndarray:
    """``ids`` with every negative entry replaced by a fresh ID above the largest one."""
    out = ids.astype(np.int64).copy()
    neg = out < 0
    start = int(out[~neg].max()) + 1 if (~neg).any() else 0
    out[neg] = np.arange(start, start + int(neg.sum()), dtype=np.int64)
    return out


def write_geff(
    path: str | os.PathLike[str],
    data: Any,
    *,
    overwrite: bool = False,
    zarr_format: int = 2,
) -> Path:
    """Write tracks as a GEFF zarr group (see the module docstring for its content).

    Parameters
    ----------
    path : path-like
        Output folder (e.g. ``tracks.geff``); written into a hidden sibling and renamed into place.
    data : TrackData
        In memory or lazily opened track store.
    overwrite : bool
        Replace an existing ``path``.
    zarr_format : int
        2 (what most GEFF readers expect today) or 3.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    StoreExistsError
        ``path`` exists and ``overwrite`` is false.
    InvalidDataError
        Edges to unknown spots (also checked by ``geff``'s structural validation on write).
    """
    require("geff", "geff")
    from geff.core_io import write_arrays
    from geff_spec import Axis, GeffMetadata, PropMetadata, RelatedObject

    from vollseg_dask.io.calibration import ngff_unit
    from vollseg_dask.io.tracks import with_lineage

    out = Path(path)
    if out.exists() and not overwrite:
        raise StoreExistsError(f"{out} exists; pass overwrite=True to replace it")
    data = with_lineage(data.materialize() if data.is_lazy else data)
    spots = data.spots.sort_values("spot_id", kind="stable").reset_index(drop=True)
    node_ids = spots["spot_id"].to_numpy(np.int64)
    e = data.edges
    edge_ids = np.stack([e["source_spot_id"].to_numpy(np.int64), e["target_spot_id"].to_numpy(np.int64)], axis=1) \
        if len(e) else np.zeros((0, 2), np.int64)
    if len(e) and not np.isin(edge_ids, node_ids).all():
        raise InvalidDataError("edges name spots that are not in the spot table")

    def prop(values: np.ndarray) -> dict[str, Any]:
        return {"values": values, "missing": None}

    node_props: dict[str, Any] = {
        "t": prop(spots["t"].to_numpy(np.int64)),
        "seg_id": prop(spots["label"].to_numpy(np.int64)),
        "track_id": prop(_own_ids(spots["track_id"].to_numpy(np.int64))),
        "tracklet_id": prop(_own_ids(spots["tracklet_id"].to_numpy(np.int64))),
    }
    spatial = ("z", "y", "x") if data.ndim == 3 else ("y", "x")
    for a in spatial:
        node_props[a] = prop(spots[a].to_numpy(np.float64))
    for c in spots.columns:
        if c in _NOT_PROPS or c in node_props or spots[c].dtype.kind not in "iufb":
            continue
        node_props[c] = prop(spots[c].to_numpy())
    edge_props = {
        "cost": prop(e["cost"].to_numpy(np.float64)),
        "kind": prop(e["kind"].astype(str).to_numpy(dtype=object).astype(str)),
    }

    cal = dict(data.image or {})
    t_unit = ngff_unit(data.time_units)
    s_unit = ngff_unit(data.spatial_units)

    def rng(name: str) -> dict[str, float]:
        v = node_props[name]["values"]
        return {"min": float(v.min()), "max": float(v.max())} if len(v) else {}

    axes = [Axis(name="t", type="time", unit="frame", scale=float(data.frame_interval) if t_unit else None,
                 scaled_unit=t_unit, **rng("t"))]
    axes += [Axis(name=a, type="space", unit=s_unit, **rng(a)) for a in spatial]
    related = None
    if cal.get("labels") and cal.get("store"):
        target = Path(cal["store"]) / "labels" / str(cal["labels"])
        related = [RelatedObject(type="labels", path=os.path.relpath(target, out.resolve()), node_prop="seg_id")]
    describe = {
        "t": ("frame index", None), "seg_id": ("segmentation label of the spot in its frame", None),
        "track_id": ("lineage (track) ID", None), "tracklet_id": ("tracklet ID (between divisions)", None),
    }
    node_meta = {k: PropMetadata(identifier=k, dtype=str(v["values"].dtype), description=describe.get(k, (None,))[0],
                                 unit=s_unit if k in spatial else None)
                 for k, v in node_props.items()}
    edge_meta = {
        "cost": PropMetadata(identifier="cost", dtype="float64", description="LAP linking cost"),
        "kind": PropMetadata(identifier="kind", dtype="str", description="link, gap, split or merge"),
    }
    meta = GeffMetadata(
        directed=True,
        axes=axes,
        node_props_metadata=node_meta,
        edge_props_metadata=edge_meta,
        track_node_props={"lineage": "track_id", "tracklet": "tracklet_id"},
        related_objects=related,
        extra={"vollseg_dask": {
            "image": cal or None,
            "spatial_units": data.spatial_units,
            "time_units": data.time_units,
            "frame_interval": float(data.frame_interval),
            "ndim": int(data.ndim),
        }},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_arrays(str(tmp), node_ids, node_props, edge_ids, edge_props, meta, zarr_format=zarr_format)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class GeffTracks:
    """A GEFF read back: spots and edges as track-store tables, and the metadata."""

    spots: pd.DataFrame
    edges: pd.DataFrame
    metadata: Any
    image: dict[str, Any] | None

    def to_track_data(self) -> Any:
        """As :class:`vollseg_dask.io.tracks.TrackData` (units from the GEFF's axes)."""
        from vollseg_dask.io.tracks import TrackData

        extra = (self.metadata.extra or {}).get("vollseg_dask", {})
        units = _units(self.metadata)
        return TrackData(
            spots=self.spots, edges=self.edges,
            spatial_units=units["spatial_units"], time_units=units["time_units"],
            frame_interval=units["frame_interval"], ndim=int(extra.get("ndim", 3 if "z" in self.spots else 2)),
            image=self.image,
        )


def _units(meta: Any) -> dict[str, Any]:
    from vollseg_dask.io.trackmate_xml import normalize_spatial_units, normalize_time_units

    out = {"spatial_units": "pixel", "time_units": "frame", "frame_interval": 1.0}
    for ax in meta.axes or []:
        if ax.type == "time" and ax.name == "t":
            if ax.scaled_unit and ax.scale:
                out["time_units"] = normalize_time_units(ax.scaled_unit)
                out["frame_interval"] = float(ax.scale)
            elif ax.unit and ax.unit != "frame":  # t in time units already: unusual; keep them as frames
                out["time_units"] = normalize_time_units(ax.unit)
        elif ax.type == "space" and ax.unit:
            out["spatial_units"] = normalize_spatial_units(ax.unit)
    return out


def read_geff(path: str | os.PathLike[str], *, validate: bool = True) -> GeffTracks:
    """Read a GEFF (ours or another tool's) into spot and edge tables.

    Positions come from the metadata's axes (the time axis is ``t``; others keep their names),
    ``seg_id`` becomes ``label``, the lineage and tracklet properties named by
    ``track_node_props`` become ``track_id`` and ``tracklet_id`` (single-node lineages, spots in no
    track, become -1), every other scalar node property is kept as a spot feature.

    Parameters
    ----------
    path : path-like
        The GEFF zarr group.
    validate : bool
        Run ``geff``'s structural validation first.

    Raises
    ------
    StoreNotFoundError
        ``path`` is not a GEFF.
    InvalidDataError
        No time axis or node property ``t``.
    """
    require("geff", "geff")
    from geff.core_io import read_to_memory

    p = Path(path)
    if not is_geff(p):
        raise StoreNotFoundError(f"{p} is not a GEFF (no geff metadata in its zarr attributes)")
    g = read_to_memory(str(p), structure_validation=validate)
    meta = g["metadata"]
    time_axis = next((a.name for a in (meta.axes or []) if a.type == "time"), "t")
    props = g["node_props"]
    if time_axis not in props:
        raise InvalidDataError(f"GEFF {p} has no time property {time_axis!r} (node properties: {sorted(props)})")
    spots: dict[str, Any] = {"spot_id": np.asarray(g["node_ids"]).astype(np.int64)}
    tnp = meta.track_node_props or {}
    rename = {time_axis: "t", "seg_id": "label", tnp.get("lineage", ""): "track_id",
              tnp.get("tracklet", ""): "tracklet_id"}
    for name, pd_ in props.items():
        v = np.asarray(pd_["values"])
        if v.ndim != 1 or v.dtype.kind not in "iufb":
            continue
        col = rename.get(name, name)
        if pd_.get("missing") is not None and np.asarray(pd_["missing"]).any():
            v = v.astype(np.float64)
            v[np.asarray(pd_["missing"], bool)] = np.nan
        spots[col] = v
    df = pd.DataFrame(spots)
    df["t"] = df["t"].astype(np.int64)
    edge_ids = np.asarray(g["edge_ids"]).astype(np.int64).reshape(-1, 2)
    edges = pd.DataFrame({"source_spot_id": edge_ids[:, 0], "target_spot_id": edge_ids[:, 1]})
    ep = g["edge_props"]
    edges["cost"] = np.asarray(ep["cost"]["values"], np.float64) if "cost" in ep else np.nan
    edges["kind"] = np.asarray(ep["kind"]["values"]).astype(str) if "kind" in ep else "link"
    # spots in no track: lineages of one node
    deg = pd.Series(np.r_[edge_ids[:, 0], edge_ids[:, 1]]).value_counts()
    alone = ~df["spot_id"].isin(deg.index)
    for c in ("track_id", "tracklet_id"):
        if c in df:
            df[c] = df[c].astype(np.int64)
            df.loc[alone, c] = -1
    extra = (meta.extra or {}).get("vollseg_dask", {})
    return GeffTracks(spots=df, edges=edges, metadata=meta, image=extra.get("image") or _calibration_of(meta))


def _calibration_of(meta: Any) -> dict[str, Any] | None:
    u = _units(meta)
    if u["time_units"] == "frame" and u["spatial_units"] == "pixel":
        return None
    return {"store": None, "labels": None, "frame_interval": u["frame_interval"] if u["time_units"] != "frame" else None,
            "time_unit": u["time_units"] if u["time_units"] != "frame" else None, "spatial_unit": u["spatial_units"]}
