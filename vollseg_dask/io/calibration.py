"""Image calibration (shape, voxel size, frame interval and their units) carried from a store to exports.

A *calibration* is a small JSON-able dict describing the image that spots, tables and tracks came
from, so that every export (TrackMate XML, GEFF, napari, CTC, analysis plots) can state the
image's own dimensions and units without a hand-written config::

    {"store": "/data/movie.ome.zarr", "image_path": "0", "labels": "cells",
     "axes": "tczyx", "shape": {"t": 3, "c": 1, "z": 16, "y": 64, "x": 64},
     "voxel_size": [2.0, 0.5, 0.5], "spatial_unit": "µm",
     "frame_interval": 9.5, "time_unit": "min"}

Units are written in TrackMate's spelling (``µm``, ``sec``, ``min``, ``h``; see
:func:`vollseg_dask.io.trackmate_xml.normalize_time_units`); :func:`ngff_unit` gives the OME-NGFF
name (``micrometer``, ``minute``) that OME-Zarr and GEFF use. A store that names no time unit (NGFF
allows that) gives ``time_unit`` None, which consumers report as ``frame``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from vollseg_dask.io.omezarr import OmeImage

__all__ = ["image_calibration", "read_calibration", "ngff_unit", "time_unit_of", "spatial_unit_of"]

_NGFF = {
    "µm": "micrometer", "nm": "nanometer", "mm": "millimeter", "pixel": None,
    "sec": "second", "ms": "millisecond", "min": "minute", "h": "hour", "frame": None,
}


def ngff_unit(unit: str | None) -> str | None:
    """OME-NGFF name of a unit (``µm`` → ``micrometer``, ``min`` → ``minute``); None for pixel/frame.

    A unit we do not know is returned unchanged (NGFF and GEFF allow other units).
    """
    if unit is None:
        return None
    from vollseg_dask.io.trackmate_xml import normalize_spatial_units, normalize_time_units

    u = normalize_time_units(unit)
    if u in _NGFF:
        return _NGFF[u]
    u = normalize_spatial_units(unit)
    return _NGFF.get(u, u)


def time_unit_of(calibration: dict[str, Any] | None) -> str:
    """Time unit of a calibration in TrackMate's spelling; ``"frame"`` when unknown."""
    from vollseg_dask.io.trackmate_xml import normalize_time_units

    return normalize_time_units((calibration or {}).get("time_unit"))


def spatial_unit_of(calibration: dict[str, Any] | None) -> str:
    """Spatial unit of a calibration in TrackMate's spelling; ``"µm"`` when unknown (NGFF default)."""
    from vollseg_dask.io.trackmate_xml import normalize_spatial_units

    return normalize_spatial_units((calibration or {}).get("spatial_unit") or "µm")


def image_calibration(img: OmeImage, *, labels: str | None = None) -> dict[str, Any]:
    """The calibration of an opened OME-Zarr image or labels group (see the module docstring).

    Parameters
    ----------
    img : OmeImage
        Level 0 of an image or labels group.
    labels : str, optional
        Name of the labels group the spots were measured on (recorded for ``related_objects``).

    Returns
    -------
    dict
        ``store``, ``image_path``, ``labels``, ``axes``, ``shape`` {axis: size}, ``voxel_size``
        (z, y, x), ``spatial_unit``, ``frame_interval`` (None without a t axis) and ``time_unit``
        (None when the store names none).
    """
    from vollseg_dask.io.trackmate_xml import normalize_spatial_units, normalize_time_units

    space = img.units.get("x") or img.units.get("y") or "micrometer"
    t_unit = img.units.get("t")
    return {
        "store": str(img.store),
        "image_path": img.path,
        "labels": labels,
        "axes": img.axes,
        "shape": {a: int(n) for a, n in zip(img.axes, img.shape, strict=True)},
        "voxel_size": [float(v) for v in img.voxel_size],
        "spatial_unit": normalize_spatial_units(space),
        "frame_interval": None if img.frame_interval is None else float(img.frame_interval),
        "time_unit": None if t_unit is None else normalize_time_units(t_unit),
    }


def read_calibration(store: str | os.PathLike[str], labels: str | None = None) -> dict[str, Any] | None:
    """Calibration of the image of ``store`` (labels recorded as ``labels``), or None if unreadable."""
    from vollseg_dask.errors import VollSegError
    from vollseg_dask.io.omezarr import open_image

    if not Path(store).exists():
        return None
    try:
        img = open_image(store, 0)
    except (VollSegError, OSError, ValueError, KeyError):
        return None
    return image_calibration(img, labels=labels)
