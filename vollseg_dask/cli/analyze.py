"""``vollseg-dask analyze``: track analysis tables and figures (distance to boundary, motion,
intensity oscillations, divisions)."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _formats(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command(name="analyze")
@click.argument("tracks", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write (tables/, plots/, analysis.json).",
)
@click.option(
    "--frame-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Time per frame, in the tracks' time unit. Default: the one stored with the tracks.",
)
@click.option(
    "--moving-average",
    type=click.IntRange(min=1),
    default=None,
    help="Centred moving average (frames) applied to intensities before the FFT.",
)
@click.option(
    "--normalize",
    type=click.Choice(["zscore", "max", "none"]),
    default="zscore",
    show_default=True,
    help="Intensity normalisation: (x-mean)/std, (x-mean)/max|x-mean|, or none.",
)
@click.option(
    "--intensity-column",
    default=None,
    help="Spot column used as intensity. Default: total_intensity_c0 (or TOTAL_INTENSITY_CH1).",
)
@click.option(
    "--max-lag",
    type=click.IntRange(min=1),
    default=None,
    help="Largest MSD lag in frames. Default: the longest tracklet, at most 100.",
)
@click.option(
    "--formats",
    default="png",
    show_default=True,
    help="Figure formats, comma-separated (png,svg,pdf); empty for none.",
)
@click.option(
    "--tables",
    "table_formats",
    default="parquet,csv",
    show_default=True,
    help="Table formats, comma-separated (parquet,csv).",
)
@click.option(
    "--track-plots",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Tracks with their own intensity/distance figures (dividing first, then longest).",
)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def command(
    tracks: Path,
    out_dir: Path,
    frame_interval: float | None,
    moving_average: int | None,
    normalize: str,
    intensity_column: str | None,
    max_lag: int | None,
    formats: str,
    table_formats: str,
    track_plots: int,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Analyse TRACKS (a folder written by `vollseg-dask track`, or a TrackMate XML file).

    Per track and per tracklet: distance to the tissue boundary over time (start and end of mother
    and daughter tracklets), speed, displacement, mean squared displacement, total intensity over
    time and its FFT (dominant frequency in 1/time unit), dividing vs non-dividing class.
    """
    from vollseg_dask.analysis import run_analysis

    a = run_analysis(
        tracks,
        out_dir,
        frame_interval=frame_interval,
        moving_average=moving_average,
        normalize=normalize,
        intensity_column=intensity_column,
        max_lag=max_lag,
        formats=_formats(formats),
        table_formats=_formats(table_formats),
        track_plots=track_plots,
        overwrite=overwrite,
    )
    summary = a.settings() | {"out": str(out_dir)}
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    s = summary
    click.echo(
        f"{s['n_tracks']} tracks ({s['n_dividing_tracks']} dividing, {s['n_divisions']} divisions), "
        f"{len(a.tracklets)} tracklets; intensity: {s['intensity_column'] or 'none'}; distance to boundary: "
        f"{'yes' if s['has_distance_to_boundary'] else 'no'}"
    )
    click.echo(f"wrote {out_dir}")
