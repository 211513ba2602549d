"""``vollseg-dask synthetic``: write a synthetic membrane time-lapse with ground truth to OME-Zarr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def _numbers(text: str | None, kind: type, name: str, count: int) -> tuple | None:
    """Parse ``"1,2,3"`` (or ``"1x2x3"``) into ``count`` values of ``kind``; None stays None."""
    if text is None:
        return None
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"expected {count} comma-separated {kind.__name__} values, got {text!r}",
                                 param_hint=name) from None
    if len(values) != count:
        raise click.BadParameter(f"expected {count} values, got {len(values)} in {text!r}", param_hint=name)
    return values


@click.command("synthetic")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="YAML/TOML file of SyntheticConfig fields; options below override it.")
@click.option("--shape", default=None, metavar="T,Z,Y,X", help="Image shape in frames and voxels.")
@click.option("--cells", "n_cells", type=click.IntRange(min=1), default=None,
              help="Approximate number of cells at t=0 (sets the cell size).")
@click.option("--diameter", "cell_diameter", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Cell diameter in µm (instead of --cells).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Random seed.")
@click.option("--snr", type=click.FloatRange(min=0, min_open=True), default=None, help="Signal-to-noise ratio.")
@click.option("--voxel-size", default=None, metavar="Z,Y,X", help="Voxel size in µm.")
@click.option("--chunks", default=None, metavar="Z,Y,X", help="Spatial chunk shape.")
@click.option("--levels", "n_levels", type=click.IntRange(min=1), default=None, help="Pyramid levels.")
@click.option("--nucleus/--no-nucleus", default=None, help="Add a nucleus channel (axes tczyx).")
@click.option("--scheduler", type=click.Choice(["threads", "processes", "synchronous"]), default="threads",
              show_default=True, help="Local Dask scheduler.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local worker count.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def command(out: Path, config_file: Path | None, shape: str | None, n_cells: int | None, cell_diameter: float | None,
            seed: int | None, snr: float | None, voxel_size: str | None, chunks: str | None, n_levels: int | None,
            nucleus: bool | None, scheduler: str, workers: int | None, overwrite: bool, progress: bool) -> None:
    """Write a synthetic tissue time-lapse and its ground truth into the OME-Zarr store OUT.

    OUT gets the image, labels/ground_truth (label = track id), ground_truth_lineage.parquet,
    man_track.txt (CTC) and synthetic_config.yaml.
    """
    from vollseg_dask.config import parse_config, read_config_dict
    from vollseg_dask.synthetic import SyntheticConfig, write_synthetic

    data: dict[str, Any] = read_config_dict(config_file) if config_file is not None else {}
    overrides: dict[str, Any] = {
        "shape": _numbers(shape, int, "--shape", 4),
        "seed": seed,
        "snr": snr,
        "voxel_size": _numbers(voxel_size, float, "--voxel-size", 3),
        "chunks": _numbers(chunks, int, "--chunks", 3),
        "n_levels": n_levels,
        "nucleus_channel": nucleus,
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    if n_cells is not None and cell_diameter is not None:
        raise click.UsageError("give --cells or --diameter, not both")
    if n_cells is not None:
        data.update(n_cells=n_cells, cell_diameter_um=None)
    elif cell_diameter is not None:
        data.update(cell_diameter_um=cell_diameter, n_cells=None)
    config = parse_config(SyntheticConfig, data, source=str(config_file) if config_file else "command line")
    result = write_synthetic(out, config, scheduler=scheduler, num_workers=workers, overwrite=overwrite,
                             progress=progress)
    T, Z, Y, X = config.shape
    click.echo(f"wrote {result.path}: image {config.axes} shape {(T, config.n_channels, Z, Y, X) if config.nucleus_channel else (T, Z, Y, X)} "
               f"uint16, voxel {tuple(config.voxel_size)} µm, {config.n_levels} level(s)")
    click.echo(f"  labels:   {result.path / 'labels' / result.labels} (uint32, value = track id)")
    click.echo(f"  lineage:  {result.lineage} ({result.n_tracks} tracks, {result.n_divisions} divisions)")
    click.echo(f"  CTC:      {result.man_track}")
    click.echo(f"  config:   {result.config_file}")
    click.echo(f"  {result.n_tasks} tasks in {result.seconds:.1f} s")
