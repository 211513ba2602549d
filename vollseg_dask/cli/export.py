"""``vollseg-dask export``: tracks folder → TrackMate XML, Cell Tracking Challenge, napari or GEFF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vollseg_dask.errors import InvalidDataError

FORMATS = ("trackmate", "ctc", "napari", "geff")


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


@click.command(name="export")
@click.argument("tracks_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="Output format.")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--labels", "labels_spec", default=None, metavar="STORE:NAME",
              help="OME-Zarr labels group the spots came from: CTC masks are relabelled from it; it gives "
                   "the image calibration to track stores that record none.")
@click.option("--image-tiff", is_flag=True,
              help="trackmate: also write the image as OUT.tif (small data only) and name it in ImageData, "
                   "so Fiji opens image and tracks together.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--include-unlinked/--linked-only", default=None,
              help="Write spots that belong to no track (default: yes for CTC, no for napari; TrackMate XML "
                   "and GEFF always keep every spot).")
def command(tracks_dir: Path, fmt: str, out: Path, labels_spec: str | None, image_tiff: bool, overwrite: bool,
            include_unlinked: bool | None) -> None:
    """Export the tracks of TRACKS_DIR (written by `vollseg-dask track`) to OUT.

    \b
    trackmate  OUT is an .xml file that Fiji TrackMate opens (streamed, frame by frame); units,
               dimensions and calibration of the image the cells were measured on.
    ctc        OUT is a folder: res_track.txt, and mask000.tif... when --labels is given.
    napari     OUT is an .npz file: data (track_id, t, (z,) y, x), prop__*, graph_child/graph_parent,
               units; open it with vollseg_dask.io.napari_tracks.load.
    geff       OUT is a GEFF zarr group (graph exchange format: Mastodon, TrackMate-Geff, ultrack,
               traccuracy, motile... read it).
    """
    from vollseg_dask.errors import StoreExistsError
    from vollseg_dask.exports import export_tracks

    if out.exists() and not overwrite:
        raise StoreExistsError(f"{out} exists; pass --overwrite to replace it")
    spec = _parse_labels(labels_spec)
    labels = _open_labels(spec) if spec is not None else None
    res = export_tracks(tracks_dir, fmt, out, labels=labels, labels_name=spec[1] if spec else None,
                        image_tiff=image_tiff, include_unlinked=include_unlinked, overwrite=overwrite)
    click.echo(res.message)
