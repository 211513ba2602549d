"""Writing a track analysis to a folder (tables and figures), and the whole ``analyze`` run.

Layout of ``OUT``::

    OUT/
        analysis.json                 settings, units and counts
        tables/<name>.parquet|csv     every table of TrackAnalysis (see vollseg_dask.analysis.core)
        plots/<name>.png|svg          track_lengths, divisions_per_frame, cells_per_frame,
                                      distance_to_boundary, msd
        plots/tracks/track_<id>_intensity.png|svg   intensity and spectrum per tracklet
        plots/tracks/track_<id>_distance.png|svg    distance to boundary per tracklet

The folder is written aside and renamed into place, so an interrupted run leaves no partial ``OUT``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vollseg_dask.analysis.core import TABLES, TrackAnalysis, analyze_tracks, load_track_data
from vollseg_dask.errors import InvalidDataError, StoreExistsError

__all__ = ["PLOT_FORMATS", "TABLE_FORMATS", "choose_track_plots", "write_analysis", "run_analysis"]

#: Figure formats accepted by :func:`write_analysis`.
PLOT_FORMATS: tuple[str, ...] = ("png", "svg", "pdf")
#: Table formats accepted by :func:`write_analysis`.
TABLE_FORMATS: tuple[str, ...] = ("parquet", "csv")


def _check_formats(values: Sequence[str], allowed: tuple[str, ...], what: str) -> list[str]:
    out = [str(v).strip().lower().lstrip(".") for v in values if str(v).strip()]
    bad = [v for v in out if v not in allowed]
    if bad:
        raise InvalidDataError(f"unknown {what} format(s) {bad}; allowed: {list(allowed)}")
    return list(dict.fromkeys(out))


def choose_track_plots(a: TrackAnalysis, n: int) -> list[int]:
    """Track IDs that get their own figures: dividing tracks first, then the longest, at most ``n``."""
    if n <= 0 or len(a.tracks) == 0:
        return []
    tr = a.tracks.sort_values(
        ["dividing", "n_spots", "track_id"], ascending=[False, False, True], kind="stable"
    )
    return [int(t) for t in tr["track_id"].to_numpy()[:n]]


def write_analysis(
    a: TrackAnalysis,
    out: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("png",),
    table_formats: Sequence[str] = TABLE_FORMATS,
    track_plots: int = 10,
    overwrite: bool = False,
    dpi: int = 120,
) -> Path:
    """Write the tables and figures of ``a`` to the folder ``out`` (layout in the module docstring).

    Parameters
    ----------
    a : TrackAnalysis
    out : path-like
        Output folder (created; replaced only with ``overwrite``).
    formats : sequence of str
        Figure formats among :data:`PLOT_FORMATS` (empty: no figures).
    table_formats : sequence of str
        Table formats among :data:`TABLE_FORMATS`.
    track_plots : int
        Number of tracks with their own figures (:func:`choose_track_plots`).
    overwrite : bool
    dpi : int
        Resolution of raster figures.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    from vollseg_dask.analysis import plots

    fmts = _check_formats(formats, PLOT_FORMATS, "plot")
    tfmts = _check_formats(table_formats, TABLE_FORMATS, "table")
    if isinstance(track_plots, bool) or not isinstance(track_plots, int | np.integer) or track_plots < 0:
        raise InvalidDataError(f"track_plots must be an integer >= 0, got {track_plots!r}")
    target = Path(out)
    if target.exists() and not overwrite:
        raise StoreExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / "tables").mkdir()
        for name in TABLES:
            df = a.table(name)
            if "parquet" in tfmts:
                df.to_parquet(tmp / "tables" / f"{name}.parquet", index=False)
            if "csv" in tfmts:
                df.to_csv(tmp / "tables" / f"{name}.csv", index=False)
        written: list[str] = []
        if fmts:
            (tmp / "plots" / "tracks").mkdir(parents=True)
            for stem, fn in plots.SUMMARY_PLOTS.items():
                fig = fn(a)
                for f in fmts:
                    fig.savefig(tmp / "plots" / f"{stem}.{f}", dpi=dpi)
                written.append(stem)
            chosen = choose_track_plots(a, int(track_plots))
            for tid in chosen:
                for kind, fn in (
                    ("intensity", plots.plot_track_intensity),
                    ("distance", plots.plot_track_distance),
                ):
                    fig = fn(a, tid)
                    for f in fmts:
                        fig.savefig(tmp / "plots" / "tracks" / f"track_{tid}_{kind}.{f}", dpi=dpi)
        settings = a.settings() | {
            "plots": written,
            "plot_formats": fmts,
            "table_formats": tfmts,
            "track_plots": choose_track_plots(a, int(track_plots)) if fmts else [],
        }
        (tmp / "analysis.json").write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def run_analysis(
    tracks: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    frame_interval: float | None = None,
    moving_average: int | None = None,
    normalize: str = "zscore",
    intensity_column: str | None = None,
    max_lag: int | None = None,
    formats: Sequence[str] = ("png",),
    table_formats: Sequence[str] = TABLE_FORMATS,
    track_plots: int = 10,
    overwrite: bool = False,
) -> TrackAnalysis:
    """Read tracks (a ``TRACKS_DIR`` or a TrackMate XML), analyse them and write ``out``.

    Parameters are those of :func:`~vollseg_dask.analysis.analyze_tracks` and :func:`write_analysis`.

    Returns
    -------
    TrackAnalysis
    """
    target = Path(out)
    if target.exists() and not overwrite:  # fail before the work
        raise StoreExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    data = load_track_data(tracks)
    a = analyze_tracks(
        data,
        frame_interval=frame_interval,
        moving_average=moving_average,
        normalize=normalize,
        intensity_column=intensity_column,
        max_lag=max_lag,
    )
    a.extra["source"] = str(Path(tracks).resolve())
    write_analysis(
        a, target, formats=formats, table_formats=table_formats, track_plots=track_plots, overwrite=overwrite
    )
    return a
