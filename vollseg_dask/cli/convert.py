"""``vollseg-dask convert``: TIFF / HDF5 / .npy -> OME-Zarr, slab by slab."""

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
@click.argument("input", type=click.Path(dir_okay=False, path_type=Path))
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
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def command(input: Path, out: Path, axes: str | None, voxel_size: str | None, frame_interval: float | None,
            time_unit: str | None, dataset: str | None, chunks: str | None, shards: str | None, n_levels: int,
            labels_like: bool, ngff_version: str, max_slab_mb: float, overwrite: bool, progress: bool) -> None:
    """Convert INPUT (TIFF, HDF5 or .npy) into the OME-Zarr image OUT, chunk by chunk."""
    from contextlib import nullcontext

    from vollseg_dask.io.ingest import convert

    bar = nullcontext()
    if progress:
        from dask.diagnostics import ProgressBar

        bar = ProgressBar(out=sys.stderr)
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
