"""``vollseg-dask measure``: per-cell attribute table (Parquet, partitioned by t) of a labels group."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vollseg_dask.errors import ConfigError


def _ints(text: str | None, what: str, n: int | None = None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None
    if n is not None and len(values) != n:
        raise ConfigError(f"{what} needs {n} comma-separated integers (z,y,x), got {text!r}")
    return values


def _job_voxels(store: Path, labels: str) -> int:
    """Voxels of the labels group to measure (all time points); 0 when it cannot be opened here."""
    import math

    from vollseg_dask.errors import VollSegError
    from vollseg_dask.io.omezarr import open_labels

    try:
        return math.prod(open_labels(store, labels, 0).shape)
    except (VollSegError, OSError, ValueError, KeyError):
        return 0  # measure_cells reports the problem


@click.command("measure")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--labels", "labels", default=None, help="Labels group to measure [default: config or 'cells'].")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Cell table folder to write.")
@click.option("--tissue-mask", default=None,
              help="'auto', a labels group name, or the path of another OME-Zarr store holding the mask.")
@click.option("--csv-btrackmate", type=click.Path(path_type=Path), default=None,
              help="Also write the CSV that BTrackMate reads.")
@click.option("--inside-tissue-only", is_flag=True, help="Keep only cells inside the tissue in the BTrackMate CSV.")
@click.option("--block", default=None, help="Block shape Z,Y,X in voxels (rounded up to the storage chunks).")
@click.option("--channels", default=None, help="Image channels for intensities, e.g. 0,1; 'none' for none [all].")
@click.option("--times", default=None, help="Time points to measure, e.g. 0,1,2 [all].")
@click.option("--surface", is_flag=True, help="Also measure surface area (marching cubes) and sphericity.")
@click.option("--sigma-um", type=float, default=None, help="Smoothing of the automatic tissue mask (µm).")
@click.option("--threshold", type=float, default=None, help="Threshold of the automatic tissue mask [Otsu].")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="YAML/TOML file with a MeasureConfig (options given here override it).")
@click.option("--workers", type=int, default=None,
              help="Local Dask worker processes [sized to the machine; threads up to 2**27 voxels].")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler to use instead.")
@click.option("--overwrite", is_flag=True, help="Replace an existing table (and an automatic tissue mask).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def command(store: Path, labels: str | None, out: Path, tissue_mask: str | None, csv_btrackmate: Path | None,
            inside_tissue_only: bool, block: str | None, channels: str | None, times: str | None, surface: bool,
            sigma_um: float | None, threshold: float | None, config_path: Path | None, workers: int | None,
            scheduler: str | None, overwrite: bool, as_json: bool) -> None:
    """Measure every cell of a labels group of STORE into a Parquet cell table (one partition per t).

    Re-running resumes: time points already written are skipped.
    """
    from vollseg_dask.config import load_config
    from vollseg_dask.measure import MeasureConfig, measure_cells
    from vollseg_dask.runtime import ClusterConfig, for_job_size, get_client

    cfg = load_config(MeasureConfig, config_path) if config_path is not None else MeasureConfig()
    if sigma_um is not None:
        cfg.tissue.sigma_um = sigma_um
    if threshold is not None:
        cfg.tissue.threshold = threshold
    chans: list[int] | None | str = "config"
    if channels is not None:
        chans = [] if channels.strip().lower() == "none" else _ints(channels, "--channels")
    spec: ClusterConfig | str
    spec = scheduler if scheduler else ClusterConfig(n_workers=workers)
    if isinstance(spec, ClusterConfig):  # a small job runs on threads: no process cluster to start
        spec = for_job_size(spec, _job_voxels(store, labels or cfg.labels))
    with get_client(spec):
        result = measure_cells(
            store, out,
            labels=labels,
            channels=chans,
            tissue_mask=tissue_mask if tissue_mask is not None else "config",
            block=_ints(block, "--block", 3),
            surface=True if surface else None,
            times=_ints(times, "--times"),
            overwrite=overwrite,
            csv_btrackmate=csv_btrackmate,
            inside_tissue_only=inside_tissue_only,
            config=cfg,
        )
    summary = {
        "table": str(result.table),
        "rows": {str(k): v for k, v in sorted(result.rows.items())},
        "n_rows": result.n_rows,
        "skipped_t": result.skipped,
        "seconds": round(result.seconds, 3),
        "rows_per_s": result.rows_per_s,
        "voxels_per_s": result.voxels_per_s,
        "csv_btrackmate": None if result.csv is None else str(result.csv),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"cell table: {summary['table']}  ({result.n_rows} rows in {len(result.rows)} time point(s), "
               f"{result.seconds:.1f} s)")
    if result.skipped:
        click.echo(f"skipped (already done): t = {', '.join(map(str, result.skipped))}")
    if result.csv is not None:
        click.echo(f"BTrackMate CSV: {result.csv}")
