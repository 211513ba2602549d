"""``vollseg-dask track``: TrackMate's LAP tracker on a spot table, out of core."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="track")
@click.argument("table", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Track store folder to write."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Tracker settings (.yaml/.toml). Default: the XML's own tracker settings, else TrackMate's defaults.",
)
@click.option("--overwrite", is_flag=True, help="Replace TRACKS_DIR if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def command(
    table: Path, out_dir: Path, config_path: Path | None, overwrite: bool, as_json: bool, no_progress: bool
) -> None:
    """Track the spots of TABLE into the track store --out.

    TABLE is a Parquet dataset partitioned by t (TABLE/t=<int>/*.parquet, e.g. a cell table), a
    CSV of spots (t or FRAME, x/y/z or POSITION_X/Y/Z), a Parquet file, or a TrackMate XML.
    """
    from vollseg_dask.config import load_config
    from vollseg_dask.io.spot_source import open_spots
    from vollseg_dask.tracking import TrackerConfig, track

    source, xml_settings = open_spots(table)
    if config_path is not None:
        config = load_config(TrackerConfig, config_path)
    elif xml_settings:
        config = TrackerConfig.from_trackmate(xml_settings)
    else:
        config = TrackerConfig()
    result = track(source, out_dir, config, overwrite=overwrite, progress=not no_progress)
    summary = {
        "out": str(result.path),
        "frames": result.n_frames,
        "spots": result.n_spots,
        "spots_dropped": result.n_spots_dropped,
        "unlinked_spots": result.n_unlinked_spots,
        "edges": result.n_edges,
        "tracks": result.n_tracks,
        "dividing_tracks": result.n_dividing_tracks,
        "tracklets": result.n_tracklets,
        "removed_branches": result.n_removed_branches,
        "segment_lap": {k: v for k, v in result.segment_report.items()},
        "seconds": {k: round(v, 3) for k, v in result.timings.items()},
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=float))
        return
    e = result.n_edges
    click.echo(
        f"{result.n_spots} spots in {result.n_frames} frames -> {result.n_tracks} tracks "
        f"({result.n_dividing_tracks} dividing), {result.n_tracklets} tracklets; edges: "
        f"{e.get('link', 0)} link, {e.get('gap', 0)} gap, {e.get('split', 0)} split, {e.get('merge', 0)} merge"
    )
    if result.n_removed_branches:
        click.echo(
            f"removed {result.n_removed_branches} short branches (min_tracklet_length={config.min_tracklet_length})"
        )
    click.echo(f"wrote {result.path}")
