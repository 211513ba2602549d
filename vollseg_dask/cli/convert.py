"""``vollseg-dask convert``: TIFF / HDF5 / .npy -> OME-Zarr, slab by slab; ``--as-labels``: masks into a store."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def parse_number_list(text: str | None, kind: type, name: str) -> tuple | None:
    """Parse ``"1,2,3"`` (or ``"1x2x3"``) into a tuple of ``kind``; None stays None."""
    if text is None:
        return None
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        return tuple(kind(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated {kind.__name__} values, got {text!r}",
                                 param_hint=name) from None


@click.command("convert")
@click.argument("input", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--axes", default=None, help="Axes of the input in its own order, e.g. TZYX or ZCYX "
              "(default: from the file's metadata, else by ndim: yx, zyx, tzyx, tczyx).")
@click.option("--voxel-size", default=None, metavar="Z,Y,X", help="Voxel size in µm (overrides the file's).")
@click.option("--frame-interval", type=float, default=None, help="Time between frames (overrides the file's).")
@click.option("--time-unit", default=None, help="NGFF time unit of the frame interval (second, minute, ...).")
@click.option("--dataset", default=None, help="HDF5 dataset name, or TIFF series index.")
@click.option("--chunks", default=None, metavar="N,N,...", help="Output chunk shape in t,c,z,y,x order "
              "(axes present only).")
@click.option("--shards", default=None, metavar="N,N,...", help="Output shard shape (zarr v3), multiples of chunks.")
@click.option("--levels", "n_levels", type=click.IntRange(min=1), default=1, show_default=True,
              help="Pyramid levels (y and x halved per level).")
@click.option("--labels-like", is_flag=True, help="Downsample the pyramid by nearest pick (for label images).")
@click.option("--ngff-version", type=click.Choice(["0.5", "0.4"]), default="0.5", show_default=True)
@click.option("--max-slab-mb", type=click.FloatRange(min=1), default=64, show_default=True,
              help="Memory budget of one read block in MiB (peak ≈ this × threads).")
@click.option("--as-labels", "as_labels", default=None, metavar="NAME",
              help="INPUT holds integer masks (TIFF, HDF5, .npy, zarr): write them as the labels group NAME of "
                   "the existing image store OUT (shape and axes must match the image; pyramid by nearest).")
@click.option("--overwrite", is_flag=True, help="Replace OUT (or, with --as-labels, the labels group) if it exists.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def command(input: Path, out: Path, axes: str | None, voxel_size: str | None, frame_interval: float | None,
            time_unit: str | None, dataset: str | None, chunks: str | None, shards: str | None, n_levels: int,
            labels_like: bool, ngff_version: str, max_slab_mb: float, as_labels: str | None, overwrite: bool,
            progress: bool) -> None:
    """Convert INPUT (TIFF, HDF5 or .npy) into the OME-Zarr image OUT, chunk by chunk.

    With --as-labels NAME, INPUT holds masks and OUT is an existing image store: the masks become its
    labels group NAME (usable by evaluate, measure, track and as training data).
    """
    from contextlib import nullcontext

    from vollseg_dask.io.ingest import convert

    bar = nullcontext()
    if progress:
        from dask.diagnostics import ProgressBar

        bar = ProgressBar(out=sys.stderr)
    if as_labels is not None:
        ignored = [flag for flag, v in (("--voxel-size", voxel_size), ("--frame-interval", frame_interval),
                                        ("--time-unit", time_unit), ("--chunks", chunks), ("--shards", shards))
                   if v is not None] + (["--levels"] if n_levels != 1 else []) + (["--labels-like"] if labels_like else [])
        if ignored:
            raise click.UsageError(f"{', '.join(ignored)} cannot be used with --as-labels: labels take the image's "
                                   f"scale, chunks and pyramid levels")
        from vollseg_dask.io.labels_ingest import import_labels
        from vollseg_dask.io.omezarr import open_labels

        with bar:
            path = import_labels(input, out, as_labels, axes=axes, dataset=dataset, overwrite=overwrite,
                                 max_slab_bytes=int(max_slab_mb * 2**20))
        lab = open_labels(out, as_labels)
        click.echo(f"wrote {path}: axes {lab.axes}, shape {lab.shape}, dtype {lab.dtype}, {lab.n_levels} level(s)")
        return
    if input.is_dir():
        raise click.BadParameter(f"{input} is a folder; convert reads TIFF, HDF5 or .npy files "
                                 f"(a zarr folder is accepted with --as-labels)", param_hint="INPUT")
    with bar:
        image = convert(
            input, out, axes=axes, voxel_size=parse_number_list(voxel_size, float, "--voxel-size"),
            dataset=dataset, chunks=parse_number_list(chunks, int, "--chunks"), frame_interval=frame_interval,
            overwrite=overwrite, shards=parse_number_list(shards, int, "--shards"), n_levels=n_levels,
            ngff_version=ngff_version, time_unit=time_unit, pyramid_method="nearest" if labels_like else "mean",
            max_slab_bytes=int(max_slab_mb * 2**20),
        )
    click.echo(f"wrote {image.store}: axes {image.axes}, shape {image.shape}, dtype {image.dtype}, "
               f"chunks {image.chunks}, scale {image.scale}, {image.n_levels} level(s)")
