"""``vollseg-dask export``: tracks folder → TrackMate XML, Cell Tracking Challenge or napari data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vollseg_dask.errors import AxesError, InvalidDataError, StoreExistsError

FORMATS = ("trackmate", "ctc", "napari")


def _parse_labels(text: str | None) -> tuple[Path, str] | None:
    """``STORE:NAME`` → (store, name); the last colon separates them."""
    if text is None:
        return None
    store, sep, name = text.rpartition(":")
    if not sep or not store or not name:
        raise InvalidDataError(f"--labels must be STORE:NAME (an OME-Zarr store and a labels group), got {text!r}")
    return Path(store), name


def _open_labels(spec: tuple[Path, str]) -> Any:
    from vollseg_dask.io.omezarr import open_labels

    return open_labels(spec[0], spec[1])


def _label_frames(img: Any) -> Any:
    """Labels as ``(t, z, y, x)`` or ``(t, y, x)``: a singleton channel axis is dropped."""
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


@click.command(name="export")
@click.argument("tracks_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="Output format.")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--labels", "labels_spec", default=None, metavar="STORE:NAME",
              help="OME-Zarr labels group the spots came from: CTC masks are relabelled from it; "
                   "TrackMate ImageData (size, voxel size, frame interval) is taken from it.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--include-unlinked/--linked-only", default=None,
              help="Write spots that belong to no track (default: yes for CTC, no for napari; TrackMate XML "
                   "always keeps every spot).")
def command(tracks_dir: Path, fmt: str, out: Path, labels_spec: str | None, overwrite: bool,
            include_unlinked: bool | None) -> None:
    """Export the tracks of TRACKS_DIR (written by `vollseg-dask track`) to OUT.

    \b
    trackmate  OUT is an .xml file that Fiji TrackMate opens (streamed, frame by frame).
    ctc        OUT is a folder: res_track.txt, and mask000.tif... when --labels is given.
    napari     OUT is an .npz file: data (track_id, t, (z,) y, x), prop__*, graph_child/graph_parent.
    """
    from vollseg_dask.io.tracks import read_tracks

    if out.exists() and not overwrite:
        raise StoreExistsError(f"{out} exists; pass --overwrite to replace it")
    spec = _parse_labels(labels_spec)
    labels = _open_labels(spec) if spec is not None else None

    if fmt == "trackmate":
        from vollseg_dask.io.trackmate_xml import write_trackmate_xml

        data = read_tracks(tracks_dir, lazy=True)
        image_data = None
        if labels is not None:
            arr, axes = _label_frames(labels)
            shape = dict(zip(axes, arr.shape, strict=True))
            vz, vy, vx = labels.voxel_size
            image_data = {
                "filename": labels.path, "folder": str(labels.store),
                "width": int(shape["x"]), "height": int(shape["y"]), "nslices": int(shape.get("z", 1)),
                "nframes": int(shape["t"]), "pixelwidth": float(vx), "pixelheight": float(vy),
                "voxeldepth": float(vz),
                "timeinterval": float(labels.frame_interval or data.frame_interval),
            }
        path = write_trackmate_xml(out, data, image_data=image_data)
        click.echo(f"TrackMate XML written: {path}")
    elif fmt == "ctc":
        from vollseg_dask.io.ctc import write_ctc

        data = read_tracks(tracks_dir)
        arr = _label_frames(labels)[0] if labels is not None else None
        path = write_ctc(out, data, arr, include_unlinked=True if include_unlinked is None else include_unlinked,
                         overwrite=overwrite)
        n = sum(1 for _ in open(path / "res_track.txt", encoding="utf-8"))
        click.echo(f"CTC result written: {path} ({n} tracks{', with masks' if arr is not None else ''})")
    else:
        from vollseg_dask.io.napari_tracks import write_napari_tracks
        from vollseg_dask.tracking.napari import to_napari_tracks

        data = read_tracks(tracks_dir)
        arr, props, graph = to_napari_tracks(data, include_unlinked=bool(include_unlinked))
        path = write_napari_tracks(out, arr, props, graph)
        click.echo(f"napari tracks written: {path} ({len(arr)} points, {len(graph)} graph entries)")
