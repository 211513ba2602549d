"""napari reader of a vollseg-dask run's output (npe2 ``readers`` contribution).

It opens, as napari layer data (no napari import is needed to build them):

- the **image** of an OME-Zarr store (every pyramid level, lazily, through
  :func:`vollseg_dask.io.omezarr.open_image`; channels split into layers),
- every **labels** group of that store (:func:`~vollseg_dask.io.omezarr.list_labels`,
  :func:`~vollseg_dask.io.omezarr.open_labels`),
- the **tracks**, from a ``TRACKS_DIR`` (``spots/`` + ``edges.parquet``) or a TrackMate XML file, as a
  napari tracks layer whose IDs are tracklets and whose graph draws the divisions
  (:func:`vollseg_dask.tracking.napari.to_napari_tracks`).

A path may be the run folder holding these (searched one level deep: an OME-Zarr image, a tracks
folder, a ``*.xml`` TrackMate file), or any one of them. Spatial scales are the image's voxel size
in µm and track positions stay in µm, so tracks overlay the image; the time axis is shown in frames
(scale 1) for images and tracks alike. The tracks layer carries the :class:`TrackData` in its
``metadata["vollseg_dask_tracks"]``, which :class:`~vollseg_dask.napari.TrackAnalysisWidget` uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vollseg_dask.errors import StoreNotFoundError, VollSegError

__all__ = ["RunParts", "find_run_parts", "get_reader", "read_run", "METADATA_KEY", "SOURCE_KEY"]

#: Layer-metadata key of the :class:`~vollseg_dask.io.tracks.TrackData` of a tracks layer.
METADATA_KEY = "vollseg_dask_tracks"
#: Layer-metadata key of the file or folder a layer was read from.
SOURCE_KEY = "vollseg_dask_source"

LayerData = tuple[Any, dict[str, Any], str]


@dataclass(frozen=True)
class RunParts:
    """What a path holds: an OME-Zarr image store and/or a tracks source (folder or XML)."""

    image: Path | None
    tracks: Path | None

    def __bool__(self) -> bool:
        return self.image is not None or self.tracks is not None


def _is_image(path: Path) -> bool:
    if not path.is_dir():
        return False
    if not ((path / "zarr.json").is_file() or (path / ".zattrs").is_file()):
        return False
    from vollseg_dask.io.omezarr import open_image

    try:
        open_image(path, 0)
    except (VollSegError, OSError, ValueError, KeyError):
        return False
    return True


def _is_tracks_dir(path: Path) -> bool:
    return path.is_dir() and (path / "spots").is_dir() and (path / "edges.parquet").is_file()


def _is_trackmate_xml(path: Path) -> bool:
    if not (path.is_file() and path.suffix.lower() == ".xml"):
        return False
    with open(path, "rb") as fh:
        head = fh.read(4096)
    return b"<TrackMate" in head


def find_run_parts(path: str | os.PathLike[str]) -> RunParts:
    """Locate the image store and the tracks in ``path`` (see the module docstring).

    Among several candidates in a run folder, ``*.zarr`` images come before other image stores, a
    tracks folder named ``tracks`` before other tracks folders, and tracks folders before XML
    files; ties go to the first name in sorted order.
    """
    p = Path(path)
    if _is_trackmate_xml(p) or _is_tracks_dir(p):
        return RunParts(image=None, tracks=p)
    if _is_image(p):
        return RunParts(image=p, tracks=None)
    if not p.is_dir():
        return RunParts(None, None)
    children = sorted(c for c in p.iterdir() if not c.name.startswith("."))
    images = [c for c in children if _is_image(c)]
    images.sort(key=lambda c: (c.suffix != ".zarr",))
    track_dirs = [c for c in children if _is_tracks_dir(c)]
    track_dirs.sort(key=lambda c: (c.name != "tracks",))
    xmls = [c for c in children if _is_trackmate_xml(c)]
    tracks = (track_dirs + xmls)[:1]
    return RunParts(image=images[0] if images else None, tracks=tracks[0] if tracks else None)


def _contrast_limits(level: Any, axes: str) -> list[float] | tuple[list[float], ...] | None:
    """Percentiles 0.5 and 99.9 of the first frame of the coarsest level (per channel): a small
    sample, so that opening a huge store reads only a few chunks."""
    import numpy as np

    index = tuple(0 if a == "t" else slice(None) for a in axes)
    sample = np.asarray(level[index], dtype=np.float64)
    sub_axes = [a for a in axes if a != "t"]

    def one(x: np.ndarray) -> list[float] | None:
        x = x[np.isfinite(x)]
        if x.size == 0:
            return None
        lo, hi = (float(v) for v in np.percentile(x, [0.5, 99.9]))
        if hi <= lo:
            lo, hi = float(x.min()), float(x.max())
        return [lo, hi] if hi > lo else None

    if "c" in sub_axes:
        per = [
            one(np.take(sample, k, axis=sub_axes.index("c")))
            for k in range(sample.shape[sub_axes.index("c")])
        ]
        return None if any(p is None for p in per) else tuple(per)  # type: ignore[return-value]
    return one(sample)


def _image_layers(store: Path) -> list[LayerData]:
    from vollseg_dask.io.omezarr import list_labels, open_image, open_labels

    first = open_image(store, 0)
    levels = [first.data] + [open_image(store, k).data for k in range(1, first.n_levels)]
    axes = first.axes
    scale = [1.0 if a == "t" else float(s) for a, s in zip(axes, first.scale, strict=True) if a != "c"]
    meta: dict[str, Any] = {
        "scale": scale,
        "name": store.stem,
        "metadata": {SOURCE_KEY: str(store), "axes": axes},
    }
    if "c" in axes:
        meta["channel_axis"] = axes.index("c")
        n_c = first.shape[axes.index("c")]
        meta["name"] = [f"{store.stem} c{k}" for k in range(n_c)]
        meta["blending"] = "additive"
    data = levels if len(levels) > 1 else levels[0]
    if len(levels) > 1:
        meta["multiscale"] = True
    limits = _contrast_limits(levels[-1], axes)
    if limits is not None:
        meta["contrast_limits"] = limits
    layers: list[LayerData] = [(data, meta, "image")]
    for name in list_labels(store):
        lab0 = open_labels(store, name, 0)
        lv = [lab0.data] + [open_labels(store, name, k).data for k in range(1, lab0.n_levels)]
        if "c" in lab0.axes:
            ci = lab0.axes.index("c")
            lv = [arr[(slice(None),) * ci + (0,)] for arr in lv]
        lscale = [
            1.0 if a == "t" else float(s) for a, s in zip(lab0.axes, lab0.scale, strict=True) if a != "c"
        ]
        lmeta: dict[str, Any] = {
            "scale": lscale,
            "name": name,
            "opacity": 0.5,
            "metadata": {SOURCE_KEY: f"{store}/labels/{name}"},
        }
        if len(lv) > 1:
            lmeta["multiscale"] = True
        layers.append((lv if len(lv) > 1 else lv[0], lmeta, "labels"))
    return layers


def tracks_layer_data(data: Any, source: str | None = None, name: str = "tracks") -> LayerData:
    """napari tracks-layer data of a :class:`~vollseg_dask.io.tracks.TrackData` (positions in its
    spatial unit), with the data itself in ``metadata[METADATA_KEY]``."""
    from vollseg_dask.tracking.napari import to_napari_tracks

    arr, props, graph = to_napari_tracks(data)
    meta = {
        "name": name,
        "properties": props,
        "graph": graph,
        "tail_length": 10,
        "tail_width": 2,
        "color_by": "track_id",
        "metadata": {METADATA_KEY: data, SOURCE_KEY: source},
    }
    return arr, meta, "tracks"


def read_run(path: str | os.PathLike[str]) -> list[LayerData]:
    """Layer data of everything :func:`find_run_parts` finds in ``path``.

    Raises
    ------
    StoreNotFoundError
        Nothing readable in ``path``.
    """
    from vollseg_dask.analysis import load_track_data
    from vollseg_dask.io.tracks import with_lineage

    parts = find_run_parts(path)
    if not parts:
        raise StoreNotFoundError(f"{path} holds no OME-Zarr image, tracks folder or TrackMate XML")
    layers: list[LayerData] = []
    if parts.image is not None:
        layers += _image_layers(parts.image)
    if parts.tracks is not None:
        data = with_lineage(load_track_data(parts.tracks))
        layers.append(tracks_layer_data(data, str(parts.tracks), name=f"tracks ({parts.tracks.name})"))
    return layers


def get_reader(path: str | os.PathLike[str] | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: :func:`read_run` when ``path`` holds something readable, else None."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        parts = find_run_parts(path)
    except OSError:
        return None
    if not parts:
        return None

    def _read(p: Any) -> list[LayerData]:
        return read_run(p[0] if isinstance(p, list | tuple) else p)

    return _read
