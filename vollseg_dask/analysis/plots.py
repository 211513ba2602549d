"""Figures of the track analysis, drawn with matplotlib's object API (no pyplot, no global state).

Every function draws on a :class:`matplotlib.figure.Figure` it is given (cleared first) or on a new
one, and returns it; ``fig.savefig(path)`` writes PNG (Agg) or SVG without a GUI. The napari widget
passes the figures of its Qt canvases to :func:`plot_track_distance` and
:func:`plot_track_intensity`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vollseg_dask.analysis.boundary import DISTANCE_COLUMN
from vollseg_dask.analysis.core import TrackAnalysis
from vollseg_dask.errors import InvalidDataError

__all__ = [
    "CLASS_COLORS",
    "SUMMARY_PLOTS",
    "plot_track_lengths",
    "plot_divisions_per_frame",
    "plot_cell_counts",
    "plot_boundary_distance",
    "plot_msd",
    "plot_track_distance",
    "plot_track_intensity",
]

#: Colour of each track class.
CLASS_COLORS = {"dividing": "tab:red", "non-dividing": "tab:blue"}


def _figure(fig: Figure | None, size: tuple[float, float]) -> Figure:
    if fig is None:
        return Figure(figsize=size, layout="constrained")
    fig.clear()
    return fig


def _time_label(a: TrackAnalysis) -> str:
    return f"time ({a.time_units})"


def _note(ax, text: str) -> None:  # noqa: ANN001 - matplotlib Axes
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)


def plot_track_lengths(a: TrackAnalysis, fig: Figure | None = None) -> Figure:
    """Histogram of track durations (time unit), dividing and non-dividing tracks stacked."""
    fig = _figure(fig, (6, 4))
    ax = fig.add_subplot()
    tr = a.tracks
    if len(tr) == 0:
        _note(ax, "no tracks")
        return fig
    dur = tr["duration"].to_numpy(float) + a.frame_interval  # a one-frame track lasts one frame
    bins = np.histogram_bin_edges(dur, bins=min(30, max(5, len(tr) // 3)))
    groups = [dur[tr["track_class"].to_numpy() == c] for c in CLASS_COLORS]
    ax.hist(
        groups,
        bins=bins,
        stacked=True,
        color=list(CLASS_COLORS.values()),
        label=[f"{c} ({len(g)})" for c, g in zip(CLASS_COLORS, groups, strict=True)],
    )
    ax.set_xlabel(f"track length ({a.time_units})")
    ax.set_ylabel("tracks")
    ax.set_title("Track lengths")
    ax.legend()
    return fig


def plot_divisions_per_frame(a: TrackAnalysis, fig: Figure | None = None) -> Figure:
    """Number of divisions in every frame."""
    fig = _figure(fig, (6, 3.5))
    ax = fig.add_subplot()
    pf = a.per_frame
    if len(pf) == 0:
        _note(ax, "no spots")
        return fig
    ax.bar(
        pf["t"].to_numpy() * a.frame_interval,
        pf["n_divisions"].to_numpy(),
        width=a.frame_interval * 0.9,
        color=CLASS_COLORS["dividing"],
    )
    ax.set_xlabel(_time_label(a))
    ax.set_ylabel("divisions")
    ax.set_title(f"Divisions per frame (total {int(pf['n_divisions'].sum())})")
    return fig


def plot_cell_counts(a: TrackAnalysis, fig: Figure | None = None) -> Figure:
    """Number of cells (spots) and of tracked cells in every frame."""
    fig = _figure(fig, (6, 3.5))
    ax = fig.add_subplot()
    pf = a.per_frame
    if len(pf) == 0:
        _note(ax, "no spots")
        return fig
    time = pf["t"].to_numpy() * a.frame_interval
    ax.plot(time, pf["n_cells"].to_numpy(), color="k", label="cells")
    ax.plot(time, pf["n_tracked"].to_numpy(), color="tab:green", label="tracked cells")
    ax.set_xlabel(_time_label(a))
    ax.set_ylabel("cells")
    ax.set_title("Cells per frame")
    ax.legend()
    return fig


def plot_boundary_distance(a: TrackAnalysis, fig: Figure | None = None) -> Figure:
    """Distance to the tissue boundary: curves of dividing vs non-dividing tracks, and the start and
    end distance of mother and daughter tracklets (the paper's Fig. 7)."""
    fig = _figure(fig, (11, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    if not a.has_distance:
        for ax in (ax1, ax2):
            _note(ax, f"no {DISTANCE_COLUMN} on the spots\n(measure with a tissue mask)")
        return fig
    ts = a.timeseries.merge(a.tracks[["track_id", "track_class"]], on="track_id", how="left")
    for (cls, _tl), g in ts.groupby(["track_class", "tracklet_id"], sort=False):
        ax1.plot(g["time"], g[DISTANCE_COLUMN], color=CLASS_COLORS.get(cls, "0.5"), alpha=0.25, lw=0.8)
    for cls, g in ts.groupby("track_class"):
        m = g.groupby("time")[DISTANCE_COLUMN].mean()
        ax1.plot(m.index, m.to_numpy(), color=CLASS_COLORS.get(cls, "0.5"), lw=2.5, label=f"{cls} (mean)")
    ax1.set_xlabel(_time_label(a))
    ax1.set_ylabel(f"distance to boundary ({a.spatial_units})")
    ax1.set_title("Distance to the tissue boundary")
    ax1.legend()
    tl = a.tracklets
    for role, marker, color in (
        ("mother", "o", "tab:red"),
        ("daughter", "^", "tab:orange"),
        ("root", "s", "tab:blue"),
    ):
        g = tl[tl["role"] == role]
        if len(g):
            ax2.scatter(
                g["start_distance_um"],
                g["end_distance_um"],
                marker=marker,
                color=color,
                s=18,
                label=f"{role} ({len(g)})",
                alpha=0.8,
            )
    lims = np.array(
        [
            np.nanmin(tl[["start_distance_um", "end_distance_um"]].to_numpy(float)),
            np.nanmax(tl[["start_distance_um", "end_distance_um"]].to_numpy(float)),
        ]
    )
    if np.all(np.isfinite(lims)):
        ax2.plot(lims, lims, color="0.6", lw=1, ls="--")
    ax2.set_xlabel(f"start distance ({a.spatial_units})")
    ax2.set_ylabel(f"end distance ({a.spatial_units})")
    ax2.set_title("Start vs end distance per tracklet")
    ax2.legend()
    return fig


def plot_msd(a: TrackAnalysis, fig: Figure | None = None) -> Figure:
    """Mean squared displacement against lag time, pooled per class (log-log)."""
    fig = _figure(fig, (6, 4))
    ax = fig.add_subplot()
    mc = a.msd_classes
    if len(mc) == 0:
        _note(ax, "no tracklet longer than one frame")
        return fig
    for cls, g in mc.groupby("track_class"):
        ax.plot(g["lag_time"], g["msd"], marker=".", color=CLASS_COLORS.get(cls, "0.5"), label=cls)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"lag ({a.time_units})")
    ax.set_ylabel(f"MSD ({a.spatial_units}²)")
    ax.set_title("Mean squared displacement")
    ax.legend()
    return fig


def _track_rows(a: TrackAnalysis, track_id: int) -> pd.DataFrame:
    tl = a.tracklets[a.tracklets["track_id"] == int(track_id)]
    if tl.empty:
        raise InvalidDataError(f"track {track_id!r} is not in the analysis ({len(a.tracks)} tracks)")
    return tl


def _tracklet_colors(ids: np.ndarray) -> dict[int, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {int(t): cmap(i % 10) for i, t in enumerate(sorted(ids))}


def plot_track_distance(a: TrackAnalysis, track_id: int, fig: Figure | None = None) -> Figure:
    """Distance to the boundary over time of every tracklet of one track (divisions dotted)."""
    fig = _figure(fig, (6, 3.5))
    ax = fig.add_subplot()
    tl = _track_rows(a, track_id)
    colors = _tracklet_colors(tl["tracklet_id"].to_numpy())
    ts = a.timeseries[a.timeseries["track_id"] == int(track_id)]
    ax.set_title(f"Track {int(track_id)}: distance to boundary")
    ax.set_xlabel(_time_label(a))
    ax.set_ylabel(f"distance ({a.spatial_units})")
    if not a.has_distance:
        _note(ax, f"no {DISTANCE_COLUMN} on the spots")
        return fig
    for tid, g in ts.groupby("tracklet_id", sort=True):
        ax.plot(
            g["time"], g[DISTANCE_COLUMN], marker=".", color=colors[int(tid)], label=f"tracklet {int(tid)}"
        )
    for t in a.divisions.loc[a.divisions["track_id"] == int(track_id), "t"]:
        ax.axvline(float(t) * a.frame_interval, color="0.5", ls=":", lw=1)
    ax.legend(fontsize="small")
    return fig


def plot_track_intensity(a: TrackAnalysis, track_id: int, fig: Figure | None = None) -> Figure:
    """Processed intensity over time and its amplitude spectrum for every tracklet of one track;
    the dominant frequency of each tracklet is marked."""
    fig = _figure(fig, (6, 5))
    ax1, ax2 = fig.subplots(2, 1)
    tl = _track_rows(a, track_id)
    colors = _tracklet_colors(tl["tracklet_id"].to_numpy())
    label = {"zscore": "z-score", "max": "÷ max", "none": "raw"}[a.normalize]
    ax1.set_title(
        f"Track {int(track_id)}: intensity ({label}"
        f"{', MA ' + str(a.moving_average) if a.moving_average else ''})"
    )
    ax1.set_xlabel(_time_label(a))
    ax1.set_ylabel(a.intensity_column or "intensity", fontsize="small")
    ax2.set_xlabel(f"frequency (1/{a.time_units})")
    ax2.set_ylabel("amplitude")
    if a.intensity_column is None:
        for ax in (ax1, ax2):
            _note(ax, "no intensity column on the spots")
        return fig
    it = a.intensity[a.intensity["track_id"] == int(track_id)]
    sp = a.spectra[a.spectra["track_id"] == int(track_id)]
    dom = tl.set_index("tracklet_id")["dominant_frequency"]
    for tid, g in it.groupby("tracklet_id", sort=True):
        ax1.plot(g["time"], g["signal"], color=colors[int(tid)], label=f"tracklet {int(tid)}")
    for tid, g in sp.groupby("tracklet_id", sort=True):
        ax2.plot(g["frequency"], g["amplitude"], marker=".", color=colors[int(tid)])
        f = float(dom.get(tid, np.nan))
        if np.isfinite(f):
            ax2.axvline(f, color=colors[int(tid)], ls="--", lw=1)
    if len(it):
        ax1.legend(fontsize="small")
    return fig


#: Summary figures written by :func:`vollseg_dask.analysis.write_analysis`: file stem -> function.
SUMMARY_PLOTS = {
    "track_lengths": plot_track_lengths,
    "divisions_per_frame": plot_divisions_per_frame,
    "cells_per_frame": plot_cell_counts,
    "distance_to_boundary": plot_boundary_distance,
    "msd": plot_msd,
}
