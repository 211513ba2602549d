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
@click.option("--frame-interval", type=float, default=None,
              help="Time between frames; overrides the config and the source image's calibration.")
@click.option("--time-unit", default=None,
              help="Unit of the frame interval (sec, min, h...); overrides the config and the source image's.")
@click.option("--overwrite", is_flag=True, help="Replace TRACKS_DIR if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def command(
    table: Path, out_dir: Path, config_path: Path | None, frame_interval: float | None, time_unit: str | None,
    overwrite: bool, as_json: bool, no_progress: bool
) -> None:
    """Track the spots of TABLE into the track store --out.

    TABLE is a Parquet dataset partitioned by t (a cell table written by `measure`), a CSV of
    spots (t or FRAME, x/y/z or POSITION_X/Y/Z), a Parquet file, a TrackMate XML or a GEFF.
    Units (frame interval, time and space units) come from the image the spots were measured on
    (a cell table's store, the XML's ImageData, the GEFF's axes) unless the config or
    --frame-interval/--time-unit set them.
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
    update: dict[str, object] = {}
    if frame_interval is not None:
        update["frame_interval"] = frame_interval
    if time_unit is not None:
        from vollseg_dask.io.trackmate_xml import normalize_time_units

        update["time_units"] = normalize_time_units(time_unit)
    if update:  # set values win over the source's calibration (tracking.driver.with_calibration)
        config = TrackerConfig.model_validate({**config.model_dump(), **update})
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
        "frame_interval": result.config.frame_interval,
        "time_units": result.config.time_units,
        "spatial_units": result.config.spatial_units,
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
