"""Track exports (TrackMate XML, Cell Tracking Challenge, napari, GEFF), one function for every face.

``vollseg-dask export`` and the ``export`` stage of ``vollseg-dask run`` both call
:func:`export_tracks`, so a format is written the same way whichever face asks. Units and image
dimensions come from the track store's calibration (:attr:`vollseg_dask.io.tracks.TrackData.image`,
recorded from the OME-Zarr store by ``measure`` and carried by ``track``); a labels group given
here fills it for track stores written without one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vollseg_dask.errors import AxesError, InvalidDataError, StoreExistsError

if TYPE_CHECKING:  # pragma: no cover
    from vollseg_dask.io.omezarr import OmeImage

__all__ = ["EXPORT_FORMATS", "IMAGE_TIFF_MAX_BYTES", "ExportResult", "export_tracks", "label_frames",
           "write_image_tiff"]

#: Formats :func:`export_tracks` writes.
EXPORT_FORMATS = ("trackmate", "ctc", "napari", "geff")
#: Largest image ``image_tiff`` writes (a plain ImageJ TIFF; Fiji opens it whole into memory).
IMAGE_TIFF_MAX_BYTES = 2 * 2**30


@dataclass
class ExportResult:
    """What an export wrote: its path and a one-line description for the CLI."""

    path: Path
    message: str


def label_frames(img: OmeImage) -> tuple[Any, str]:
    """Labels as ``(t, z, y, x)`` or ``(t, y, x)`` Dask arrays: a singleton channel axis is dropped."""
    axes = img.axes
    data = img.data
    if "c" in axes:
        ci = axes.index("c")
        if data.shape[ci] != 1:
            raise AxesError(f"labels have {data.shape[ci]} channels (axes {axes!r}); expected none or one")
        data = data.take(0, axis=ci)
        axes = axes.replace("c", "")
    if axes not in ("tzyx", "tyx"):
        raise AxesError(f"labels axes must be 'tzyx' or 'tyx' to export tracks, got {axes!r}")
    return data, axes


def write_image_tiff(store: str | os.PathLike[str], path: str | os.PathLike[str], *,
                     max_bytes: int = IMAGE_TIFF_MAX_BYTES) -> Path:
    """Write level 0 of an OME-Zarr image as an ImageJ hyperstack TIFF that Fiji opens calibrated.

    Axes become ImageJ's ``TZCYX``; the voxel size goes into the resolution and ``spacing`` tags
    (unit ``micron``), the frame interval into ``finterval``.

    Raises
    ------
    InvalidDataError
        The image is larger than ``max_bytes`` (export the tracks without ``--image-tiff``).
    """
    import numpy as np
    import tifffile

    from vollseg_dask.io.omezarr import open_image

    img = open_image(store, 0)
    nbytes = int(np.prod(img.shape)) * img.dtype.itemsize
    if nbytes > max_bytes:
        raise InvalidDataError(
            f"image {img.store} is {nbytes / 2**30:.1f} GiB, above the {max_bytes / 2**30:.1f} GiB an "
            "ImageJ TIFF export allows; export the tracks without --image-tiff (the XML then names the OME-Zarr)"
        )
    arr = img.data
    axes = img.axes
    for a in "tczyx":  # ImageJ wants all of TZCYX
        if a not in axes:
            arr = arr[None]
            axes = a + axes
    order = [axes.index(a) for a in "tzcyx"]
    data = np.asarray(arr.transpose(order).compute())
    vz, vy, vx = img.voxel_size
    meta: dict[str, Any] = {"axes": "TZCYX", "spacing": float(vz), "unit": "micron"}
    if img.frame_interval:
        meta["finterval"] = float(img.frame_interval)
        t_unit = img.units.get("t")
        if t_unit:
            meta["tunit"] = t_unit
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if data.dtype not in (np.uint8, np.uint16, np.float32):
        data = data.astype(np.float32)
    tifffile.imwrite(out, data, imagej=True, resolution=(1.0 / float(vx), 1.0 / float(vy)), metadata=meta)
    return out


def _calibration_from_labels(data: Any, labels: OmeImage | None, labels_name: str | None) -> None:
    if labels is None or data.image:
        return
    from vollseg_dask.io.calibration import image_calibration, read_calibration

    data.image = read_calibration(labels.store, labels_name) or image_calibration(labels, labels=labels_name)


def export_tracks(
    tracks_dir: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str],
    *,
    labels: OmeImage | None = None,
    labels_name: str | None = None,
    image_tiff: bool = False,
    include_unlinked: bool | None = None,
    tracker_settings: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export the track store ``tracks_dir`` as ``fmt`` to ``out``.

    Parameters
    ----------
    tracks_dir : path-like
        Written by :func:`vollseg_dask.tracking.track`.
    fmt : {"trackmate", "ctc", "napari", "geff"}
        ``trackmate``: an ``.xml`` Fiji TrackMate opens (``Model`` units and ``ImageData``
        dimensions/calibration from the store); ``ctc``: a folder with ``res_track.txt`` (and
        ``mask000.tif``... from ``labels``); ``napari``: an ``.npz`` with units
        (:mod:`vollseg_dask.io.napari_tracks`); ``geff``: a GEFF zarr group (:mod:`vollseg_dask.io.geff`).
    out : path-like
    labels : OmeImage, optional
        The labels group the spots came from: CTC masks are relabelled from it; it also supplies
        the calibration of track stores that lack one.
    labels_name : str, optional
        Its name (recorded in GEFF ``related_objects``).
    image_tiff : bool
        ``trackmate`` only: also write the image as ``<out>.tif`` beside the XML (up to
        :data:`IMAGE_TIFF_MAX_BYTES`) and name it in ``ImageData``, so Fiji opens tracks and image.
    include_unlinked : bool, optional
        Write spots that belong to no track (default: yes for CTC, no for napari).
    tracker_settings : dict, optional
        TrackMate tracker keys for the XML's ``Settings``.
    overwrite : bool
        Replace ``out``.

    Raises
    ------
    StoreExistsError
        ``out`` exists and ``overwrite`` is false (nothing is written).
    """
    from vollseg_dask.io.tracks import read_tracks

    out = Path(out)
    if fmt not in EXPORT_FORMATS:
        raise InvalidDataError(f"unknown export format {fmt!r}; expected one of {EXPORT_FORMATS}")
    if out.exists() and not overwrite:
        raise StoreExistsError(f"{out} exists; pass --overwrite to replace it")
    if fmt == "trackmate":
        from vollseg_dask.io.trackmate_xml import write_trackmate_xml

        data = read_tracks(tracks_dir, lazy=True)
        _calibration_from_labels(data, labels, labels_name)
        image_data: dict[str, Any] = {}
        if image_tiff:
            store = (data.image or {}).get("store")
            if not store:
                raise InvalidDataError("--image-tiff needs the OME-Zarr the tracks came from: the track store "
                                       "records none; pass --labels STORE:NAME")
            tif = write_image_tiff(store, out.with_suffix(".tif"))
            image_data = {"filename": tif.name, "folder": str(tif.parent.resolve())}
        path = write_trackmate_xml(out, data, image_data=image_data or None, tracker_settings=tracker_settings)
        extra = f" (image: {image_data['filename']})" if image_data else ""
        return ExportResult(path, f"TrackMate XML written: {path}{extra}")
    if fmt == "ctc":
        from vollseg_dask.io.ctc import write_ctc

        data = read_tracks(tracks_dir)
        arr = label_frames(labels)[0] if labels is not None else None
        path = write_ctc(out, data, arr, include_unlinked=True if include_unlinked is None else include_unlinked,
                         overwrite=overwrite)
        with open(path / "res_track.txt", encoding="utf-8") as fh:
            n = sum(1 for _ in fh)
        return ExportResult(path, f"CTC result written: {path} ({n} tracks{', with masks' if arr is not None else ''})")
    if fmt == "napari":
        from vollseg_dask.io.napari_tracks import write_napari_tracks
        from vollseg_dask.tracking.napari import to_napari_tracks

        data = read_tracks(tracks_dir)
        arr, props, graph = to_napari_tracks(data, include_unlinked=bool(include_unlinked))
        units = {"spatial_units": data.spatial_units, "time_units": data.time_units,
                 "frame_interval": data.frame_interval}
        path = write_napari_tracks(out, arr, props, graph, units=units)
        return ExportResult(path, f"napari tracks written: {path} ({len(arr)} points, {len(graph)} graph entries)")
    from vollseg_dask.io.geff import write_geff

    data = read_tracks(tracks_dir)
    _calibration_from_labels(data, labels, labels_name)
    path = write_geff(out, data, overwrite=overwrite)
    return ExportResult(path, f"GEFF written: {path} ({len(data.spots)} nodes, {len(data.edges)} edges)")
