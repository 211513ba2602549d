"""Track analysis of a whole :class:`~vollseg_dask.io.tracks.TrackData` (pure pandas / NumPy).

:func:`analyze_tracks` turns spots + edges into the tables of the paper's track analysis (S9):

==================  ==========================================================================
table               one row per
==================  ==========================================================================
``tracks``          track (connected lineage): class (dividing / non-dividing), duration,
                    displacement, path length, speeds, distance to the tissue boundary at start and
                    end, dominant intensity frequency of the track's mean intensity
``tracklets``       tracklet (division-free branch): lineage role (root / mother / daughter),
                    generation, start and end position and distance to the boundary (the paper's
                    Fig. 7), speeds, displacement, dominant frequency and period
``divisions``       division: frame, mother tracklet, daughters, position, distance to the boundary
``per_frame``       frame: number of cells, tracked cells, divisions
``timeseries``      tracked spot: time, position, distance to the boundary, step speed,
                    displacement from the tracklet start, raw intensity
``intensity``       (tracklet, frame) on the full frame grid: interpolated and processed intensity
``spectra``         (tracklet, frequency): amplitude spectrum of the processed intensity
``msd``             (tracklet, lag): mean squared displacement and number of pairs
``msd_tracks``      (track, lag): MSD pooled over the track's tracklets
``msd_classes``     (class, lag): MSD pooled over every tracklet of dividing / non-dividing tracks
==================  ==========================================================================

Units: positions in ``TrackData.spatial_units`` (µm), times in ``TrackData.time_units`` with the
frame interval given (or the data's), speeds in spatial unit / time unit, frequencies in 1 / time
unit. Intensity conventions are those of :mod:`vollseg_dask.analysis.signal`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vollseg_dask.analysis.boundary import DISTANCE_COLUMN
from vollseg_dask.analysis.lineage import (
    classify_tracks,
    division_events,
    per_frame_counts,
    tracklet_lineage,
)
from vollseg_dask.analysis.signal import NORMALIZATIONS, intensity_spectrum
from vollseg_dask.errors import InvalidDataError, StoreNotFoundError
from vollseg_dask.io.tracks import TrackData, with_lineage

__all__ = [
    "DEFAULT_MAX_LAG",
    "TABLES",
    "TrackAnalysis",
    "analyze_tracks",
    "select_track",
    "default_intensity_column",
    "load_track_data",
    "trackmate_to_track_data",
]

#: Largest MSD lag (frames) computed when ``max_lag`` is not given.
DEFAULT_MAX_LAG = 100
#: Names of the tables of :class:`TrackAnalysis`, in writing order.
TABLES: tuple[str, ...] = (
    "tracks",
    "tracklets",
    "divisions",
    "per_frame",
    "timeseries",
    "intensity",
    "spectra",
    "msd",
    "msd_tracks",
    "msd_classes",
)
_INTENSITY_PREFERENCE = ("total_intensity_c0", "TOTAL_INTENSITY_CH1", "TOTAL_INTENSITY")


def default_intensity_column(columns: Sequence[str]) -> str | None:
    """The intensity used for the oscillation analysis: total intensity of the first channel.

    Looks for ``total_intensity_c0`` (cell table), ``TOTAL_INTENSITY_CH1`` (TrackMate), any column
    starting with ``total_intensity`` (case-insensitive), then ``mean_intensity_c0`` /
    ``MEAN_INTENSITY_CH1``; None when there is none.
    """
    cols = list(columns)
    for c in _INTENSITY_PREFERENCE:
        if c in cols:
            return c
    totals = sorted(c for c in cols if c.lower().startswith("total_intensity"))
    if totals:
        return totals[0]
    for c in ("mean_intensity_c0", "MEAN_INTENSITY_CH1"):
        if c in cols:
            return c
    return None


@dataclass
class TrackAnalysis:
    """Every table of the track analysis (see the module docstring) and the settings used.

    Attributes
    ----------
    tracks, tracklets, divisions, per_frame, timeseries, intensity, spectra, msd, msd_tracks, msd_classes : pandas.DataFrame
    frame_interval : float
        Time per frame used (time unit).
    time_units, spatial_units : str
    intensity_column : str or None
        Spot column analysed as intensity (None: no intensity analysis).
    moving_average : int or None
        Moving-average window in frames.
    normalize : str
        Normalisation of the intensity (``"zscore"``, ``"max"`` or ``"none"``).
    has_distance : bool
        Whether the spots carry ``distance_to_boundary_um``.
    """

    tracks: pd.DataFrame
    tracklets: pd.DataFrame
    divisions: pd.DataFrame
    per_frame: pd.DataFrame
    timeseries: pd.DataFrame
    intensity: pd.DataFrame
    spectra: pd.DataFrame
    msd: pd.DataFrame
    msd_tracks: pd.DataFrame
    msd_classes: pd.DataFrame
    frame_interval: float
    time_units: str
    spatial_units: str
    intensity_column: str | None
    moving_average: int | None
    normalize: str
    has_distance: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame:
        """Table ``name`` (one of :data:`TABLES`)."""
        if name not in TABLES:
            raise InvalidDataError(f"unknown analysis table {name!r}; known: {list(TABLES)}")
        return getattr(self, name)

    def settings(self) -> dict[str, Any]:
        """Settings and units as a JSON-friendly dict."""
        return {
            "frame_interval": self.frame_interval,
            "time_units": self.time_units,
            "spatial_units": self.spatial_units,
            "intensity_column": self.intensity_column,
            "moving_average": self.moving_average,
            "normalize": self.normalize,
            "has_distance_to_boundary": self.has_distance,
            "n_tracks": int(len(self.tracks)),
            "n_dividing_tracks": int(self.tracks["dividing"].sum()) if len(self.tracks) else 0,
            "n_divisions": int(len(self.divisions)),
            **self.extra,
        }


def _empty(columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in columns.items()})


def _msd_sums(ts: pd.DataFrame, max_lag: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-tracklet sums and counts of squared displacements at lags 1..max_lag (vectorised).

    ``ts`` is sorted by ``(tracklet_id, t)``. Each tracklet is laid on its own frame grid followed by
    ``max_lag`` empty rows, so that a difference ``k`` rows apart never joins two tracklets.
    """
    tl = ts["tracklet_id"].to_numpy(np.int64)
    t = ts["t"].to_numpy(np.int64)
    ids, first, counts = np.unique(tl, return_index=True, return_counts=True)
    t0 = t[first]
    t1 = t[first + counts - 1]
    length = (t1 - t0 + 1) + max_lag
    offset = np.concatenate([[0], np.cumsum(length)[:-1]])
    row_of = np.repeat(np.arange(len(ids)), counts)
    g_index = offset[row_of] + (t - t0[row_of])
    total = int(length.sum())
    grid = np.full((total, 3), np.nan)
    grid[g_index] = ts[["x", "y", "z"]].to_numpy(np.float64)
    owner = np.repeat(np.arange(len(ids)), length)
    sums = np.zeros((len(ids), max_lag))
    cnts = np.zeros((len(ids), max_lag), np.int64)
    for k in range(1, max_lag + 1):
        sq = np.sum((grid[k:] - grid[:-k]) ** 2, axis=1)
        ok = np.isfinite(sq)
        if not ok.any():
            break
        sums[:, k - 1] = np.bincount(owner[:-k][ok], weights=sq[ok], minlength=len(ids))
        cnts[:, k - 1] = np.bincount(owner[:-k][ok], minlength=len(ids))
    return ids, sums, cnts


def _msd_table(keys: pd.DataFrame, sums: np.ndarray, cnts: np.ndarray, dt: float) -> pd.DataFrame:
    n, lag = sums.shape
    k = np.tile(np.arange(1, lag + 1), n)
    s = sums.ravel()
    c = cnts.ravel()
    keep = c > 0
    out = keys.loc[keys.index.repeat(lag)].reset_index(drop=True)[keep]
    out = out.reset_index(drop=True)
    out["lag"] = k[keep].astype(np.int64)
    out["lag_time"] = k[keep] * dt
    out["msd"] = s[keep] / c[keep]
    out["n_pairs"] = c[keep].astype(np.int64)
    return out


def _first_last(ts: pd.DataFrame, key: str, cols: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    g = ts.groupby(key, sort=True)
    return g[cols].first(), g[cols].last()


def analyze_tracks(
    data: TrackData,
    *,
    frame_interval: float | None = None,
    moving_average: int | None = None,
    normalize: str = "zscore",
    intensity_column: str | None = None,
    max_lag: int | None = None,
) -> TrackAnalysis:
    """Analyse every track and tracklet of ``data``.

    Parameters
    ----------
    data : TrackData
        Tracks (lazy data is loaded; tracklets are derived from the edges when missing).
    frame_interval : float, optional
        Time per frame (> 0) in ``data.time_units``; default ``data.frame_interval``.
    moving_average : int, optional
        Centred moving-average window (frames) applied to intensities before the FFT.
    normalize : {"zscore", "max", "none"}
        Intensity normalisation before the FFT (see :mod:`vollseg_dask.analysis.signal`).
    intensity_column : str, optional
        Spot column analysed as intensity; default :func:`default_intensity_column`.
    max_lag : int, optional
        Largest MSD lag in frames; default ``min(longest tracklet span, DEFAULT_MAX_LAG)``.

    Returns
    -------
    TrackAnalysis
    """
    if normalize not in NORMALIZATIONS:
        raise InvalidDataError(f"normalize must be one of {list(NORMALIZATIONS)}, got {normalize!r}")
    dt = float(data.frame_interval if frame_interval is None else frame_interval)
    if not np.isfinite(dt) or dt <= 0:
        raise InvalidDataError(f"frame_interval must be finite and > 0, got {frame_interval!r}")
    if moving_average is not None and (
        isinstance(moving_average, bool)
        or not isinstance(moving_average, int | np.integer)
        or moving_average < 1
    ):
        raise InvalidDataError(f"moving_average must be an integer >= 1 frame, got {moving_average!r}")
    data = with_lineage(data)
    spots = data.spots
    assert spots is not None and data.tracklets is not None
    if intensity_column is None:
        intensity_column = default_intensity_column(list(spots.columns))
    elif intensity_column not in spots.columns:
        raise InvalidDataError(
            f"intensity column {intensity_column!r} is not a spot column; have {list(spots.columns)}"
        )
    has_distance = DISTANCE_COLUMN in spots.columns and bool(spots[DISTANCE_COLUMN].notna().any())

    events = division_events(spots, data.edges)
    classes = classify_tracks(spots, events)
    roles = tracklet_lineage(data.tracklets, events)
    per_frame = per_frame_counts(spots, events)

    # -- per-spot time series (tracked spots only) -------------------------------------------
    cols = ["spot_id", "t", "x", "y", "z", "track_id", "tracklet_id"]
    ts = spots.loc[spots["tracklet_id"] >= 0, cols].copy()
    ts[DISTANCE_COLUMN] = spots.loc[ts.index, DISTANCE_COLUMN].astype(np.float64) if has_distance else np.nan
    ts["intensity"] = spots.loc[ts.index, intensity_column].astype(np.float64) if intensity_column else np.nan
    ts = ts.sort_values(["tracklet_id", "t", "spot_id"], kind="stable").reset_index(drop=True)
    dup = ts.duplicated(["tracklet_id", "t"])
    if dup.any():
        r = ts[dup].iloc[0]
        raise InvalidDataError(f"tracklet {int(r['tracklet_id'])} has two spots in frame {int(r['t'])}")
    ts.insert(2, "time", ts["t"].to_numpy(np.float64) * dt)
    xyz = ts[["x", "y", "z"]].to_numpy(np.float64)
    tl = ts["tracklet_id"].to_numpy(np.int64)
    same = np.zeros(len(ts), bool)
    same[1:] = tl[1:] == tl[:-1]
    step = np.full(len(ts), np.nan)
    if len(ts) > 1:
        d = np.linalg.norm(np.diff(xyz, axis=0), axis=1)
        dtt = np.diff(ts["t"].to_numpy(np.float64)) * dt
        step[1:] = np.where(same[1:], d, np.nan)
        speed = np.full(len(ts), np.nan)
        np.divide(d, dtt, out=speed[1:], where=same[1:])
    else:
        speed = np.full(len(ts), np.nan)
    ts["step_length"] = step
    ts["speed"] = speed
    start_idx = np.flatnonzero(~same)
    start_of = np.repeat(start_idx, np.diff(np.concatenate([start_idx, [len(ts)]])))
    ts["displacement"] = np.linalg.norm(xyz - xyz[start_of], axis=1) if len(ts) else np.zeros(0)

    # -- tracklet table ----------------------------------------------------------------------
    pos_cols = ["t", "time", "x", "y", "z", DISTANCE_COLUMN, "intensity"]
    first, last = _first_last(ts, "tracklet_id", pos_cols)
    g = ts.groupby("tracklet_id", sort=True)
    tlt = data.tracklets[["tracklet_id", "track_id"]].set_index("tracklet_id")
    ids = first.index.to_numpy(np.int64)
    tracklets = pd.DataFrame(
        {"tracklet_id": ids, "track_id": tlt["track_id"].reindex(ids).to_numpy(np.int64)}
    )
    tracklets = tracklets.merge(roles, on="tracklet_id", how="left")
    tracklets = tracklets.merge(
        classes[["track_id", "dividing", "track_class"]].rename(columns={"dividing": "track_dividing"}),
        on="track_id",
        how="left",
    )
    tracklets["start_t"] = first["t"].to_numpy(np.int64)
    tracklets["end_t"] = last["t"].to_numpy(np.int64)
    tracklets["n_spots"] = g.size().to_numpy(np.int64)
    tracklets["duration"] = (last["time"] - first["time"]).to_numpy(np.float64)
    for c in ("x", "y", "z"):
        tracklets[f"start_{c}"] = first[c].to_numpy(np.float64)
        tracklets[f"end_{c}"] = last[c].to_numpy(np.float64)
    a = first[["x", "y", "z"]].to_numpy(np.float64)
    b = last[["x", "y", "z"]].to_numpy(np.float64)
    tracklets["displacement"] = np.linalg.norm(b - a, axis=1)
    tracklets["path_length"] = g["step_length"].sum(min_count=0).to_numpy(np.float64)
    tracklets["mean_speed"] = g["speed"].mean().to_numpy(np.float64)
    tracklets["max_speed"] = g["speed"].max().to_numpy(np.float64)
    tracklets["start_distance_um"] = first[DISTANCE_COLUMN].to_numpy(np.float64)
    tracklets["end_distance_um"] = last[DISTANCE_COLUMN].to_numpy(np.float64)
    tracklets["mean_distance_um"] = g[DISTANCE_COLUMN].mean().to_numpy(np.float64)
    tracklets["min_distance_um"] = g[DISTANCE_COLUMN].min().to_numpy(np.float64)
    tracklets["mean_intensity"] = g["intensity"].mean().to_numpy(np.float64)

    # -- intensity spectra per tracklet --------------------------------------------------------
    dom = np.full(len(ids), np.nan)
    res = np.full(len(ids), np.nan)
    cols_i: dict[str, list[np.ndarray]] = {
        k: [] for k in ("tracklet_id", "track_id", "t", "intensity", "signal")
    }
    cols_s: dict[str, list[np.ndarray]] = {
        k: [] for k in ("tracklet_id", "track_id", "frequency", "amplitude")
    }
    if intensity_column is not None:
        t_all = ts["t"].to_numpy(np.int64)
        v_all = ts["intensity"].to_numpy(np.float64)
        bounds = np.concatenate([start_idx, [len(ts)]])
        track_of = tracklets["track_id"].to_numpy(np.int64)
        for i in range(len(ids)):
            lo, hi = bounds[i], bounds[i + 1]
            spec = intensity_spectrum(
                t_all[lo:hi], v_all[lo:hi], dt, moving_average_window=moving_average, normalize=normalize
            )
            dom[i], res[i] = spec.dominant_frequency, spec.resolution
            n_t, n_f = len(spec.frames), len(spec.frequency)
            cols_i["tracklet_id"].append(np.full(n_t, ids[i]))
            cols_i["track_id"].append(np.full(n_t, track_of[i]))
            cols_i["t"].append(spec.frames)
            cols_i["intensity"].append(spec.resampled)
            cols_i["signal"].append(spec.signal)
            cols_s["tracklet_id"].append(np.full(n_f, ids[i]))
            cols_s["track_id"].append(np.full(n_f, track_of[i]))
            cols_s["frequency"].append(spec.frequency)
            cols_s["amplitude"].append(spec.amplitude)
    tracklets["dominant_frequency"] = dom
    with np.errstate(divide="ignore"):
        tracklets["dominant_period"] = np.where(dom > 0, 1.0 / np.where(dom > 0, dom, 1.0), np.nan)
    tracklets["frequency_resolution"] = res

    def _table(cols: dict[str, list[np.ndarray]], dtypes: dict[str, str]) -> pd.DataFrame:
        return pd.DataFrame(
            {k: (np.concatenate(v) if v else np.zeros(0)).astype(dtypes[k]) for k, v in cols.items()}
        )

    intensity = _table(
        cols_i,
        {
            "tracklet_id": "int64",
            "track_id": "int64",
            "t": "int64",
            "intensity": "float64",
            "signal": "float64",
        },
    )
    intensity.insert(3, "time", intensity["t"].to_numpy(np.float64) * dt)
    spectra = _table(
        cols_s, {"tracklet_id": "int64", "track_id": "int64", "frequency": "float64", "amplitude": "float64"}
    )

    # -- MSD ------------------------------------------------------------------------------------
    span = int((tracklets["end_t"] - tracklets["start_t"]).max()) if len(tracklets) else 0
    lag = min(span, DEFAULT_MAX_LAG) if max_lag is None else int(max_lag)
    if max_lag is not None and (isinstance(max_lag, bool) or lag < 1):
        raise InvalidDataError(f"max_lag must be an integer >= 1 frame, got {max_lag!r}")
    msd_cols = {"lag": "int64", "lag_time": "float64", "msd": "float64", "n_pairs": "int64"}
    if lag >= 1 and len(ts):
        tl_ids, sums, cnts = _msd_sums(ts, lag)
        keys = pd.DataFrame(
            {"tracklet_id": tl_ids, "track_id": tlt["track_id"].reindex(tl_ids).to_numpy(np.int64)}
        )
        msd = _msd_table(keys, sums, cnts, dt)
        trk = keys["track_id"].to_numpy()
        utr, inv = np.unique(trk, return_inverse=True)
        tsum = np.zeros((len(utr), lag))
        tcnt = np.zeros((len(utr), lag), np.int64)
        np.add.at(tsum, inv, sums)
        np.add.at(tcnt, inv, cnts)
        msd_tracks = _msd_table(pd.DataFrame({"track_id": utr}), tsum, tcnt, dt)
        cls = classes.set_index("track_id")["track_class"].reindex(trk).to_numpy(object)
        names = np.array(["dividing", "non-dividing"], dtype=object)
        csum = np.stack([sums[cls == n].sum(axis=0) for n in names])
        ccnt = np.stack([cnts[cls == n].sum(axis=0) for n in names])
        msd_classes = _msd_table(pd.DataFrame({"track_class": names}), csum, ccnt, dt)
    else:
        msd = _empty({"tracklet_id": "int64", "track_id": "int64", **msd_cols})
        msd_tracks = _empty({"track_id": "int64", **msd_cols})
        msd_classes = _empty({"track_class": "object", **msd_cols})

    # -- track table ------------------------------------------------------------------------------
    tracks = _track_table(ts, classes, tracklets, dt, moving_average, normalize, intensity_column is not None)

    return TrackAnalysis(
        tracks=tracks,
        tracklets=tracklets,
        divisions=events,
        per_frame=per_frame,
        timeseries=ts,
        intensity=intensity,
        spectra=spectra,
        msd=msd,
        msd_tracks=msd_tracks,
        msd_classes=msd_classes,
        frame_interval=dt,
        time_units=data.time_units,
        spatial_units=data.spatial_units,
        intensity_column=intensity_column,
        moving_average=moving_average,
        normalize=normalize,
        has_distance=has_distance,
    )


def _track_table(
    ts: pd.DataFrame,
    classes: pd.DataFrame,
    tracklets: pd.DataFrame,
    dt: float,
    moving_average: int | None,
    normalize: str,
    with_intensity: bool,
) -> pd.DataFrame:
    if len(ts) == 0:
        return classes.assign(n_tracklets=0, start_t=0, end_t=0, n_spots=0).iloc[0:0]
    g = ts.groupby("track_id", sort=True)
    ids = np.asarray(sorted(g.groups), dtype=np.int64)
    out = classes.set_index("track_id").reindex(ids).reset_index()
    out["n_tracklets"] = tracklets.groupby("track_id").size().reindex(ids).fillna(0).to_numpy(np.int64)
    out["start_t"] = g["t"].min().to_numpy(np.int64)
    out["end_t"] = g["t"].max().to_numpy(np.int64)
    out["n_spots"] = g.size().to_numpy(np.int64)
    out["duration"] = (out["end_t"] - out["start_t"]).to_numpy(np.float64) * dt
    # first spot = earliest (smallest spot id on ties); last spots = every spot of the last frame
    s = ts.sort_values(["track_id", "t", "spot_id"], kind="stable")
    first = s.groupby("track_id").head(1).set_index("track_id").reindex(ids)
    last_frame = s["track_id"].map(g["t"].max())
    lasts = s[s["t"] == last_frame]
    lg = lasts.groupby("track_id")
    first_xyz = first[["x", "y", "z"]].to_numpy(np.float64)
    last_one = lg.head(1).set_index("track_id").reindex(ids)
    out["displacement"] = np.linalg.norm(last_one[["x", "y", "z"]].to_numpy(np.float64) - first_xyz, axis=1)
    out["total_distance"] = g["step_length"].sum(min_count=0).to_numpy(np.float64)
    out["mean_speed"] = g["speed"].mean().to_numpy(np.float64)
    out["max_speed"] = g["speed"].max().to_numpy(np.float64)
    out["start_distance_um"] = first[DISTANCE_COLUMN].to_numpy(np.float64)
    out["end_distance_um"] = lg[DISTANCE_COLUMN].mean().reindex(ids).to_numpy(np.float64)
    out["mean_distance_um"] = g[DISTANCE_COLUMN].mean().to_numpy(np.float64)
    out["min_distance_um"] = g[DISTANCE_COLUMN].min().to_numpy(np.float64)
    dom = np.full(len(ids), np.nan)
    if with_intensity:
        per_frame = ts.groupby(["track_id", "t"], sort=True)["intensity"].mean().reset_index()
        bounds = np.flatnonzero(
            np.r_[True, per_frame["track_id"].to_numpy()[1:] != per_frame["track_id"].to_numpy()[:-1]]
        )
        bounds = np.r_[bounds, len(per_frame)]
        t_all = per_frame["t"].to_numpy(np.int64)
        v_all = per_frame["intensity"].to_numpy(np.float64)
        for i in range(len(bounds) - 1):
            lo, hi = bounds[i], bounds[i + 1]
            dom[i] = intensity_spectrum(
                t_all[lo:hi], v_all[lo:hi], dt, moving_average_window=moving_average, normalize=normalize
            ).dominant_frequency
    out["dominant_frequency"] = dom
    return out


def select_track(data: TrackData, track_id: int) -> TrackData:
    """The spots and edges of one track, as a new in-memory :class:`TrackData`.

    Track and tracklet IDs are kept; raises :class:`InvalidDataError` when the track does not exist.
    """
    data = with_lineage(data)
    spots = data.spots
    assert spots is not None and data.tracklets is not None
    sel = spots[spots["track_id"] == int(track_id)]
    if sel.empty:
        known = np.unique(spots["track_id"][spots["track_id"] >= 0])
        raise InvalidDataError(
            f"track {track_id!r} not found; tracks are {known[:10].tolist()}"
            f"{' ...' if len(known) > 10 else ''}"
        )
    ids = set(sel["spot_id"].tolist())
    e = data.edges[data.edges["source_spot_id"].isin(ids) & data.edges["target_spot_id"].isin(ids)]
    tl = data.tracklets[data.tracklets["track_id"] == int(track_id)]
    tracks = None if data.tracks is None else data.tracks[data.tracks["track_id"] == int(track_id)]
    return TrackData(
        spots=sel,
        edges=e,
        tracks=tracks,
        tracklets=tl,
        spatial_units=data.spatial_units,
        time_units=data.time_units,
        frame_interval=data.frame_interval,
        ndim=data.ndim,
        tracker_config=data.tracker_config,
    )


def trackmate_to_track_data(path: str | os.PathLike[str], *, tracks: str = "all") -> TrackData:
    """Read a TrackMate XML file into :class:`TrackData`.

    A thin wrapper over :func:`vollseg_dask.io.trackmate_xml.read_trackmate_xml` and
    :meth:`~vollseg_dask.io.trackmate_xml.TrackMateData.to_track_data` (``tracks`` = ``"all"`` or
    ``"filtered"``).
    """
    from vollseg_dask.io.trackmate_xml import read_trackmate_xml

    return read_trackmate_xml(path).to_track_data(tracks=tracks)


def load_track_data(path: str | os.PathLike[str]) -> TrackData:
    """Tracks from a ``TRACKS_DIR`` (``spots/`` + ``edges.parquet``) or a TrackMate ``.xml`` file.

    Raises
    ------
    StoreNotFoundError
        ``path`` is neither.
    """
    from vollseg_dask.io.tracks import read_tracks

    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".xml":
        return trackmate_to_track_data(p)
    if p.is_dir() and (p / "spots").is_dir() and (p / "edges.parquet").is_file():
        return read_tracks(p)
    raise StoreNotFoundError(
        f"{p} is neither a tracks folder (spots/ and edges.parquet) nor a TrackMate .xml file"
    )
