"""napari tracks-layer data in one ``.npz`` file (``data``, properties, lineage graph).

Layout (all NumPy arrays, no pickles): ``data`` (N, D+1) ``track_id, t, (z,) y, x``;
``graph_child`` / ``graph_parent`` (M,) int64 pairs, one per parent of a child track;
``prop__<name>`` (N,) per property; ``units__spatial_units``, ``units__time_units`` (0-d strings)
and ``units__frame_interval`` (0-d float).

Units: ``t`` is the frame index (multiply by ``frame_interval`` for time in ``time_units``);
``z``, ``y``, ``x`` are in ``spatial_units`` (µm for tracks from an OME-Zarr store), so the tracks
overlay an image layer whose ``scale`` is its voxel size in µm (as napari-ome-zarr and our reader
open it). Files written before the units were recorded read as µm and frames.

Open it in napari with :func:`load`::

    from vollseg_dask.io.napari_tracks import load
    data, kwargs, layer_type = load("napari_tracks.npz")
    viewer.add_tracks(data, **kwargs)       # or viewer._add_layer_from_data(*load(path))
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vollseg_dask.errors import InvalidDataError, ShapeError, StoreNotFoundError

__all__ = ["write_napari_tracks", "read_napari_tracks", "read_napari_units", "load"]

_PROP = "prop__"
_UNITS = "units__"


def write_napari_tracks(
    path: str | os.PathLike[str],
    data: np.ndarray,
    properties: Mapping[str, np.ndarray],
    graph: Mapping[int, list[int]],
    *,
    units: Mapping[str, Any] | None = None,
) -> Path:
    """Write napari tracks-layer data to ``path`` (``.npz``; written aside, then renamed).

    ``units`` (``spatial_units``, ``time_units``, ``frame_interval``) are stored with the data
    (see the module docstring); default µm, frames, 1.

    Raises
    ------
    ShapeError
        ``data`` is not (N, 4) or (N, 5), or a property has not N values.
    InvalidDataError
        A property value array of object dtype (strings are not stored).
    """
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise ShapeError(f"napari tracks data must be (N, 4) or (N, 5), got {arr.shape}")
    out: dict[str, np.ndarray] = {"data": arr}
    for name, values in properties.items():
        v = np.asarray(values)
        if v.shape != (len(arr),):
            raise ShapeError(f"property {name!r} has shape {v.shape}, expected ({len(arr)},)")
        if v.dtype.kind not in "iufb":
            raise InvalidDataError(f"property {name!r} has dtype {v.dtype}: only numbers and booleans are stored")
        out[_PROP + name] = v
    child = [int(c) for c, ps in graph.items() for _ in ps]
    parent = [int(p) for _, ps in graph.items() for p in ps]
    out["graph_child"] = np.asarray(child, dtype=np.int64)
    out["graph_parent"] = np.asarray(parent, dtype=np.int64)
    u = {"spatial_units": "µm", "time_units": "frame", "frame_interval": 1.0, **dict(units or {})}
    out[_UNITS + "spatial_units"] = np.asarray(str(u["spatial_units"]))
    out[_UNITS + "time_units"] = np.asarray(str(u["time_units"]))
    out[_UNITS + "frame_interval"] = np.asarray(float(u["frame_interval"]))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **out)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def read_napari_tracks(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, np.ndarray], dict[int, list[int]]]:
    """Read a file written by :func:`write_napari_tracks`: ``(data, properties, graph)``."""
    p = Path(path)
    if not p.is_file():
        raise StoreNotFoundError(f"napari tracks file not found: {p}")
    with np.load(p, allow_pickle=False) as z:
        if "data" not in z.files:
            raise InvalidDataError(f"{p} is not a napari tracks file: no 'data' array (has {z.files})")
        data = z["data"]
        props = {k[len(_PROP):]: z[k] for k in z.files if k.startswith(_PROP)}
        graph: dict[int, list[int]] = {}
        for c, par in zip(z["graph_child"].tolist(), z["graph_parent"].tolist(), strict=True):
            graph.setdefault(int(c), []).append(int(par))
    return data, props, graph


def read_napari_units(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``spatial_units``, ``time_units`` and ``frame_interval`` of a napari tracks file.

    Files written before units were recorded give µm, ``frame`` and 1.0.
    """
    p = Path(path)
    if not p.is_file():
        raise StoreNotFoundError(f"napari tracks file not found: {p}")
    out: dict[str, Any] = {"spatial_units": "µm", "time_units": "frame", "frame_interval": 1.0}
    with np.load(p, allow_pickle=False) as z:
        for k in z.files:
            if k.startswith(_UNITS):
                v = z[k]
                out[k[len(_UNITS):]] = float(v) if v.dtype.kind == "f" else str(v)
    return out


def load(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any], str]:
    """A napari layer-data tuple ``(data, kwargs, "tracks")`` of a napari tracks file.

    ``kwargs`` holds ``properties``, ``graph``, ``name`` and ``metadata`` (the units, see
    :func:`read_napari_units`); napari itself is not imported. Use
    ``viewer.add_tracks(data, **kwargs)``.
    """
    data, props, graph = read_napari_tracks(path)
    units = read_napari_units(path)
    kwargs: dict[str, Any] = {
        "properties": props,
        "graph": graph,
        "name": Path(path).stem,
        "metadata": {"units": units, "axes": ["t", "z", "y", "x"][-(data.shape[1] - 1):]},
    }
    return data, kwargs, "tracks"
