"""TrackMate XML: a streaming reader and a streaming writer.

The format is TrackMate's published XML file format (as written by Fiji TrackMate 3 to 8 and its
forks), learnt from files TrackMate wrote; this module contains no TrackMate code. Layout::

    <TrackMate version="...">
      <Log>...</Log>
      <Model spatialunits="µm" timeunits="sec">
        <FeatureDeclarations> <SpotFeatures|EdgeFeatures|TrackFeatures>
            <Feature feature= name= shortname= dimension= isint= /> ...
        <AllSpots nspots=N> <SpotsInFrame frame=F> <Spot ID= name= POSITION_X= ... /> ...
        <AllTracks> <Track name= TRACK_ID= ...> <Edge SPOT_SOURCE_ID= SPOT_TARGET_ID= LINK_COST= .../>
        <FilteredTracks> <TrackID TRACK_ID= /> ...
      </Model>
      <Settings> <ImageData .../> <BasicSettings/> <DetectorSettings/> <InitialSpotFilter/>
                 <SpotFilterCollection/> <TrackerSettings>...</TrackerSettings>
                 <TrackFilterCollection/> <AnalyzerCollection/> </Settings>
      <GUIState state= /> <DisplaySettings>{json}</DisplaySettings>
    </TrackMate>

:func:`read_trackmate_xml` parses with ``lxml.etree.iterparse`` and frees every ``Spot``/``Edge``
element once read, so memory holds the resulting tables, not the XML tree. Reader quirks handled:
non-ASCII text and feature short names, TrackMate's misspelt ``MANUAL_EGE_COLOR`` (read as
``MANUAL_EDGE_COLOR``), units ``µm``/``micrometer``/``pixel`` and ``sec``/``second``/``min``/``frame``,
tracks missing from ``FilteredTracks``, the older (3.x) feature set and forked version strings.

:func:`write_trackmate_xml` writes with ``lxml.etree.xmlfile`` (incrementally, one spot or edge
element at a time): spot IDs are remapped to a dense int32 range (rank of the int64 ``spot_id``),
integer features are written without decimals, NaN/±∞ as Java spells them (``NaN``, ``Infinity``),
one ``<Track>`` per connected lineage, and ``Settings/ImageData`` is always present.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vollseg_dask.errors import InvalidDataError, StoreNotFoundError
from vollseg_dask.io.tracks import TrackData, derive_lineage, summarize_tracks

__all__ = [
    "TRACKMATE_FORMAT_VERSION",
    "TrackMateData",
    "TrackMateTrack",
    "read_trackmate_xml",
    "write_trackmate_xml",
    "normalize_spatial_units",
    "image_data_from_calibration",
    "normalize_time_units",
    "tracker_settings_from_config",
    "spot_feature_key",
]

log = logging.getLogger(__name__)

#: Version written in the root ``version`` attribute: the TrackMate file-format release whose
#: layout we write (our own name and version go into ``<Log>``).
TRACKMATE_FORMAT_VERSION = "7.14.0"
INT32_MAX = 2**31 - 1

_SPATIAL_UNITS = {
    "µm": "µm", "μm": "µm", "um": "µm", "micrometer": "µm", "micrometers": "µm", "micrometre": "µm",
    "micrometres": "µm", "micron": "µm", "microns": "µm",
    "nm": "nm", "nanometer": "nm", "nanometre": "nm",
    "mm": "mm", "millimeter": "mm", "millimetre": "mm",
    "pixel": "pixel", "pixels": "pixel", "px": "pixel",
}
_TIME_UNITS = {
    "sec": "sec", "s": "sec", "second": "sec", "seconds": "sec",
    "ms": "ms", "millisecond": "ms", "milliseconds": "ms",
    "min": "min", "minute": "min", "minutes": "min",
    "h": "h", "hour": "h", "hours": "h", "hr": "h",
    "frame": "frame", "frames": "frame",
}
_FEATURE_ALIASES = {"MANUAL_EGE_COLOR": "MANUAL_EDGE_COLOR"}


def normalize_spatial_units(unit: str | None) -> str:
    """Canonical spelling of a spatial unit: ``µm`` for ``micrometer``/``um``/``micron``...,
    ``pixel`` for ``pixels``; unknown units are returned stripped, unchanged."""
    if unit is None:
        return "pixel"
    u = unit.strip()
    return _SPATIAL_UNITS.get(u.lower(), _SPATIAL_UNITS.get(u, u))


def normalize_time_units(unit: str | None) -> str:
    """Canonical spelling of a time unit: ``sec`` for ``s``/``second``, ``min``, ``h``, ``ms``,
    ``frame``; unknown units are returned stripped, unchanged."""
    if unit is None:
        return "frame"
    u = unit.strip()
    return _TIME_UNITS.get(u.lower(), u)


# ==============================================================================================
# Reading
# ==============================================================================================


@dataclass
class TrackMateTrack:
    """One ``<Track>``: its ID, name, features and the rows of its edges in ``TrackMateData.edges``."""

    track_id: int
    name: str
    features: dict[str, float]
    edge_rows: np.ndarray
    spot_ids: np.ndarray


@dataclass
class TrackMateData:
    """Content of a TrackMate XML file.

    Attributes
    ----------
    version : str
        Root ``version`` attribute, verbatim (forks write their own, e.g. ``"2.0.0"``).
    spots : pandas.DataFrame
        ``spot_id`` (int64, TrackMate ``ID``), ``t`` (int32, ``FRAME``), ``x``, ``y``, ``z``
        (``POSITION_*``), ``radius``, ``quality``, ``name`` and every other numeric spot attribute
        under its TrackMate name (``POSITION_T``, ``MEAN_INTENSITY_CH1``...). Declared integer
        features are int64 when no value is missing.
    edges : pandas.DataFrame
        ``source_spot_id``, ``target_spot_id`` (int64), ``track_id`` (enclosing ``<Track>``),
        ``cost`` (``LINK_COST``) and every other numeric edge attribute.
    tracks : dict of int to TrackMateTrack
        Every ``<Track>`` of ``AllTracks`` by ``TRACK_ID``.
    filtered_track_ids : list of int
        ``FilteredTracks`` (may be a subset of ``tracks``).
    settings : dict
        ``image_data`` (typed ImageData attributes), ``basic_settings``, ``detector_settings``,
        ``initial_spot_filter``, ``spot_filters``, ``tracker_settings`` (flat: ``TRACKER_NAME``,
        ``LINKING_MAX_DISTANCE``, ``MAX_FRAME_GAP``, ``ALLOW_TRACK_SPLITTING``,
        ``LINKING_FEATURE_PENALTIES`` ...), ``track_filters``, ``analyzers``, ``gui_state``,
        ``display_settings`` (parsed JSON, or the raw text) and any other element as a dict.
    feature_declarations : dict
        ``{"spot"|"edge"|"track": {FEATURE: {"name", "shortname", "dimension", "isint"}}}``.
    spatial_units, time_units : str
        Normalised (:func:`normalize_spatial_units`, :func:`normalize_time_units`).
    raw_spatial_units, raw_time_units : str
        As written in the file.
    log : str
        ``<Log>`` text.
    """

    version: str
    spots: pd.DataFrame
    edges: pd.DataFrame
    tracks: dict[int, TrackMateTrack]
    filtered_track_ids: list[int]
    settings: dict[str, Any]
    feature_declarations: dict[str, dict[str, dict[str, Any]]]
    spatial_units: str
    time_units: str
    raw_spatial_units: str = ""
    raw_time_units: str = ""
    log: str = ""

    @property
    def image_data(self) -> dict[str, Any]:
        """Typed ``Settings/ImageData`` attributes (empty when absent)."""
        return dict(self.settings.get("image_data", {}))

    @property
    def frame_interval(self) -> float:
        """``ImageData.timeinterval`` (1.0 when absent or not positive)."""
        ti = self.image_data.get("timeinterval")
        return float(ti) if isinstance(ti, (int, float)) and ti > 0 and math.isfinite(ti) else 1.0

    @property
    def ndim(self) -> int:
        """3 when the image has several slices or any spot has z ≠ 0, else 2."""
        ns = self.image_data.get("nslices")
        if isinstance(ns, int) and ns > 1:
            return 3
        return 3 if len(self.spots) and bool((self.spots["z"] != 0).any()) else 2

    def track_table(self) -> pd.DataFrame:
        """One row per ``<Track>``: ``track_id``, ``name``, ``filtered`` and every track feature."""
        rows = []
        filt = set(self.filtered_track_ids)
        for tid, tr in sorted(self.tracks.items()):
            rows.append({"track_id": tid, "name": tr.name, "filtered": tid in filt, **tr.features})
        return pd.DataFrame(rows)

    def to_track_data(self, *, tracks: str = "all") -> TrackData:
        """Convert to the project's :class:`~vollseg_dask.io.tracks.TrackData`.

        Parameters
        ----------
        tracks : {"all", "filtered"}
            Keep the edges of every track, or only of the tracks in ``FilteredTracks`` (spots of
            other tracks then stay as unlinked spots).

        Returns
        -------
        TrackData
            ``track_id`` = TrackMate ``TRACK_ID``; ``tracklet_id`` derived from the edges; edges
            oriented forward in time with their kind (link/gap/split/merge); ``tracks`` table =
            :func:`~vollseg_dask.io.tracks.summarize_tracks` joined with TrackMate's track features.
        """
        if tracks not in ("all", "filtered"):
            raise InvalidDataError(f"tracks must be 'all' or 'filtered', got {tracks!r}")
        from vollseg_dask.io.tracks import classify_edges

        spots = self.spots.copy()
        edges = self.edges.copy()
        if tracks == "filtered":
            edges = edges[edges["track_id"].isin(self.filtered_track_ids)]
        t_of = pd.Series(spots["t"].to_numpy(), index=spots["spot_id"].to_numpy())
        ts = t_of.reindex(edges["source_spot_id"]).to_numpy()
        tt = t_of.reindex(edges["target_spot_id"]).to_numpy()
        same = ts == tt
        if same.any():
            i = int(np.flatnonzero(same)[0])
            raise InvalidDataError(
                f"edge {int(edges['source_spot_id'].iloc[i])} - {int(edges['target_spot_id'].iloc[i])} "
                f"joins two spots of frame {int(ts[i])}"
            )
        swap = tt < ts
        if swap.any():
            s = edges["source_spot_id"].to_numpy().copy()
            d = edges["target_spot_id"].to_numpy().copy()
            s[swap], d[swap] = d[swap], s[swap]
            edges["source_spot_id"], edges["target_spot_id"] = s, d
        edges = edges.reset_index(drop=True)
        spot_track = pd.Series(edges["track_id"].to_numpy(), index=edges["source_spot_id"].to_numpy())
        spot_track = pd.concat(
            [spot_track, pd.Series(edges["track_id"].to_numpy(), index=edges["target_spot_id"].to_numpy())]
        )
        spot_track = spot_track[~spot_track.index.duplicated()]
        spots["track_id"] = spot_track.reindex(spots["spot_id"]).fillna(-1).to_numpy().astype(np.int64)
        _, tracklet_id, tracklets = derive_lineage(spots["spot_id"].to_numpy(), spots["t"].to_numpy(), edges)
        spots["tracklet_id"] = tracklet_id
        # tracklets carry TrackMate's track IDs
        head_track = pd.Series(spots["track_id"].to_numpy(), index=tracklet_id)
        head_track = head_track[head_track.index >= 0]
        head_track = head_track[~head_track.index.duplicated()]
        tracklets["track_id"] = head_track.reindex(tracklets["tracklet_id"]).to_numpy().astype(np.int64)
        edges["kind"] = classify_edges(spots["spot_id"].to_numpy(), spots["t"].to_numpy(), edges)
        spots["label"] = -1
        edges_out = edges.drop(columns=["track_id"])
        summary = summarize_tracks(spots, edges_out, self.frame_interval)
        feats = self.track_table()
        if len(feats):
            feats = feats.drop(columns=["name", "filtered"]).drop(columns=["TRACK_ID"], errors="ignore")
            summary = summary.merge(feats, on="track_id", how="left")
        return TrackData(
            spots=spots,
            edges=edges_out,
            tracks=summary,
            tracklets=tracklets,
            spatial_units=self.spatial_units,
            time_units=self.time_units,
            frame_interval=self.frame_interval,
            ndim=self.ndim,
            tracker_config=_tracker_config_of(self.settings.get("tracker_settings", {})),
        )


def _tracker_config_of(settings: Mapping[str, Any]) -> dict[str, Any]:
    """TrackMate tracker settings as the tracker's snake_case config keys (``TRACKER_NAME`` dropped)."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if k == "TRACKER_NAME":
            continue
        out[k.lower()] = dict(v) if isinstance(v, Mapping) else v
    return out


class _Columns:
    """Column-wise accumulator for rows with varying attribute sets (pads missing values with NaN)."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {}
        self.n = 0

    def add(self, row: Mapping[str, Any]) -> None:
        for k, v in row.items():
            col = self.cols.get(k)
            if col is None:
                col = self.cols[k] = [np.nan] * self.n
            col.append(v)
        self.n += 1
        for col in self.cols.values():
            if len(col) < self.n:
                col.append(np.nan)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({k: v for k, v in self.cols.items()}, index=pd.RangeIndex(self.n))


def _num(value: str) -> float | None:
    """Float of a TrackMate attribute value (``NaN``, ``Infinity`` accepted), None if not numeric."""
    try:
        return float(value)
    except ValueError:
        return None


def _typed(value: str) -> Any:
    """Typed settings value: bool for true/false, int, float, else the string."""
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


_IMAGE_INT = {"width", "height", "nslices", "nframes"}
_IMAGE_FLOAT = {"pixelwidth", "pixelheight", "voxeldepth", "timeinterval"}
_PENALTY_KEYS = {
    "Linking": "LINKING_FEATURE_PENALTIES",
    "GapClosing": "GAP_CLOSING_FEATURE_PENALTIES",
    "TrackSplitting": "SPLITTING_FEATURE_PENALTIES",
    "TrackMerging": "MERGING_FEATURE_PENALTIES",
}


def _parse_filter(el: Any) -> dict[str, Any]:
    return {
        "feature": el.get("feature"),
        "value": _typed(el.get("value", "nan")),
        "isabove": el.get("isabove", "true").lower() == "true",
    }


def _parse_tracker_settings(el: Any) -> dict[str, Any]:
    out: dict[str, Any] = {k: _typed(v) for k, v in el.attrib.items()}
    for child in el:
        if not isinstance(child.tag, str):
            continue
        out.update({k: _typed(v) for k, v in child.attrib.items()})
        for fp in child.iter("FeaturePenalties"):
            key = _PENALTY_KEYS.get(child.tag, f"{child.tag.upper()}_FEATURE_PENALTIES")
            out[key] = {p.get("feature"): float(p.get("value", "nan")) for p in fp.iter("FeaturePenalty")}
    for key in _PENALTY_KEYS.values():
        out.setdefault(key, {})
    return out


def _parse_settings(el: Any) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for child in el:
        if not isinstance(child.tag, str):
            continue
        tag = child.tag
        if tag == "ImageData":
            d: dict[str, Any] = {}
            for k, v in child.attrib.items():
                if k in _IMAGE_INT:
                    try:
                        d[k] = int(v)
                    except ValueError:
                        d[k] = int(float(v))
                elif k in _IMAGE_FLOAT:
                    d[k] = float(v)
                else:
                    d[k] = v
            s["image_data"] = d
        elif tag == "BasicSettings":
            s["basic_settings"] = {k: _typed(v) for k, v in child.attrib.items()}
        elif tag == "DetectorSettings":
            s["detector_settings"] = {k: _typed(v) for k, v in child.attrib.items()}
        elif tag == "InitialSpotFilter":
            s["initial_spot_filter"] = _parse_filter(child)
        elif tag == "SpotFilterCollection":
            s["spot_filters"] = [_parse_filter(f) for f in child.iter("Filter")]
        elif tag == "TrackerSettings":
            s["tracker_settings"] = _parse_tracker_settings(child)
        elif tag == "TrackFilterCollection":
            s["track_filters"] = [_parse_filter(f) for f in child.iter("Filter")]
        elif tag == "AnalyzerCollection":
            s["analyzers"] = {
                kind: [a.get("key") for a in child.iter(f"{kind.capitalize()}Analyzers") for a in a.iter("Analyzer")]
                for kind in ("spot", "edge", "track")
            }
        else:
            s[tag] = {k: _typed(v) for k, v in child.attrib.items()}
    return s


def _finish_table(cols: _Columns, declared: Mapping[str, Mapping[str, Any]], rename: Mapping[str, str]) -> pd.DataFrame:
    df = cols.frame()
    for feat, decl in declared.items():
        col = rename.get(feat, feat)
        if decl.get("isint") and col in df.columns:
            values = df[col]
            if values.dtype.kind == "f" and values.notna().all() and np.all(np.mod(values.to_numpy(), 1) == 0):
                df[col] = values.astype(np.int64)
    return df.rename(columns=rename)


def read_trackmate_xml(path: str | os.PathLike[str]) -> TrackMateData:
    """Read a TrackMate XML file, streaming (``lxml.etree.iterparse``).

    Parameters
    ----------
    path : path-like
        The ``.xml`` file.

    Returns
    -------
    TrackMateData

    Raises
    ------
    StoreNotFoundError
        The file does not exist.
    InvalidDataError
        Not a TrackMate file (root is not ``<TrackMate>``), a ``Spot`` without ``ID``/``FRAME``, an
        ``Edge`` without spot IDs, an edge naming a spot absent from ``AllSpots``, or malformed XML.
    """
    from lxml import etree

    p = Path(path)
    if not p.is_file():
        raise StoreNotFoundError(f"TrackMate XML file not found: {p}")

    version = ""
    raw_space = raw_time = ""
    log_text = ""
    declarations: dict[str, dict[str, dict[str, Any]]] = {"spot": {}, "edge": {}, "track": {}}
    spots = _Columns()
    edges = _Columns()
    track_heads: list[tuple[int, str, dict[str, float], int, int]] = []
    filtered: list[int] = []
    settings: dict[str, Any] = {}
    current_track: tuple[int, str, dict[str, float], int] | None = None
    n_declared_spots: int | None = None
    stack: list[str] = []
    decl_kind = {"SpotFeatures": "spot", "EdgeFeatures": "edge", "TrackFeatures": "track"}

    try:
        context = etree.iterparse(str(p), events=("start", "end"), huge_tree=True, remove_comments=True)
        for event, el in context:
            tag = el.tag
            if not isinstance(tag, str):
                continue
            if event == "start":
                if not stack and tag != "TrackMate":
                    raise InvalidDataError(f"{p} is not a TrackMate XML file: root element is <{tag}>")
                stack.append(tag)
                if tag == "TrackMate":
                    version = el.get("version", "")
                elif tag == "Model":
                    raw_space = el.get("spatialunits", "")
                    raw_time = el.get("timeunits", "")
                elif tag == "AllSpots" and el.get("nspots") is not None:
                    n_declared_spots = int(el.get("nspots"))
                elif tag == "Track" and len(stack) >= 2 and stack[-2] == "AllTracks":
                    feats: dict[str, float] = {}
                    for k, v in el.attrib.items():
                        if k == "name":
                            continue
                        f = _num(v)
                        if f is not None:
                            feats[_FEATURE_ALIASES.get(k, k)] = f
                    tid_raw = feats.get("TRACK_ID", feats.get("TRACK_INDEX", float(len(track_heads))))
                    current_track = (int(tid_raw), el.get("name", f"Track_{int(tid_raw)}"), feats, edges.n)
                continue

            # ---- end events -------------------------------------------------------------
            stack.pop()
            parent = stack[-1] if stack else ""
            if tag == "Spot":
                row: dict[str, Any] = {}
                sid = el.get("ID")
                if sid is None:
                    raise InvalidDataError(f"{p}: a <Spot> has no ID attribute")
                row["spot_id"] = int(sid)
                for k, v in el.attrib.items():
                    if k in ("ID", "name"):
                        continue
                    f = _num(v)
                    if f is not None:
                        row[_FEATURE_ALIASES.get(k, k)] = f
                if "FRAME" not in row:
                    raise InvalidDataError(f"{p}: spot {sid} has no FRAME attribute")
                row["name"] = el.get("name", f"ID{sid}")
                spots.add(row)
                el.clear()
                while el.getprevious() is not None:
                    del el.getparent()[0]
            elif tag == "Edge":
                row = {}
                for k, v in el.attrib.items():
                    f = _num(v)
                    if f is not None:
                        row[_FEATURE_ALIASES.get(k, k)] = f
                if "SPOT_SOURCE_ID" not in row or "SPOT_TARGET_ID" not in row:
                    raise InvalidDataError(f"{p}: an <Edge> lacks SPOT_SOURCE_ID or SPOT_TARGET_ID: {dict(el.attrib)}")
                row["track_id"] = current_track[0] if current_track is not None else -1
                edges.add(row)
                el.clear()
                while el.getprevious() is not None:
                    del el.getparent()[0]
            elif tag == "Track" and current_track is not None:
                tid, name, feats, start = current_track
                track_heads.append((tid, name, feats, start, edges.n))
                current_track = None
                el.clear()
            elif tag == "TrackID" and parent == "FilteredTracks":
                if el.get("TRACK_ID") is not None:
                    filtered.append(int(el.get("TRACK_ID")))
                el.clear()
            elif tag == "Feature" and parent in decl_kind:
                feat = el.get("feature")
                if feat:
                    declarations[decl_kind[parent]][_FEATURE_ALIASES.get(feat, feat)] = {
                        "name": el.get("name", feat),
                        "shortname": el.get("shortname", feat),
                        "dimension": el.get("dimension", "NONE"),
                        "isint": el.get("isint", "false").lower() == "true",
                    }
            elif tag == "SpotsInFrame":
                el.clear()
            elif tag == "Log" and parent == "TrackMate":
                log_text = el.text or ""
                el.clear()
            elif tag == "Settings" and parent == "TrackMate":
                settings.update(_parse_settings(el))
                el.clear()
            elif tag == "GUIState" and parent == "TrackMate":
                settings["gui_state"] = el.get("state")
            elif tag == "DisplaySettings" and parent == "TrackMate":
                text = el.text or ""
                try:
                    settings["display_settings"] = json.loads(text)
                except ValueError:
                    settings["display_settings"] = text
                el.clear()
    except etree.XMLSyntaxError as exc:
        raise InvalidDataError(f"{p}: malformed XML: {exc}") from exc

    spot_df = _finish_table(
        spots,
        declarations["spot"],
        {"POSITION_X": "x", "POSITION_Y": "y", "POSITION_Z": "z", "FRAME": "t", "RADIUS": "radius", "QUALITY": "quality"},
    )
    if spot_df.empty:
        spot_df = pd.DataFrame({"spot_id": [], "t": [], "x": [], "y": [], "z": [], "name": []})
    for c in ("x", "y", "z"):
        if c not in spot_df.columns:
            spot_df[c] = 0.0
        spot_df[c] = spot_df[c].astype(np.float64)
    spot_df["spot_id"] = spot_df["spot_id"].astype(np.int64)
    spot_df["t"] = spot_df["t"].astype(np.int32)
    front = ["spot_id", "t", "x", "y", "z", "radius", "quality", "name"]
    front = [c for c in front if c in spot_df.columns]
    spot_df = spot_df[front + [c for c in spot_df.columns if c not in front]]
    if n_declared_spots is not None and n_declared_spots != len(spot_df):
        log.warning("%s: AllSpots nspots=%d but %d <Spot> elements", p, n_declared_spots, len(spot_df))
    if spot_df["spot_id"].duplicated().any():
        dup = int(spot_df.loc[spot_df["spot_id"].duplicated(), "spot_id"].iloc[0])
        raise InvalidDataError(f"{p}: spot ID {dup} appears more than once")

    edge_df = _finish_table(
        edges,
        declarations["edge"],
        {"SPOT_SOURCE_ID": "source_spot_id", "SPOT_TARGET_ID": "target_spot_id", "LINK_COST": "cost"},
    )
    if edge_df.empty:
        edge_df = pd.DataFrame({"source_spot_id": [], "target_spot_id": [], "track_id": [], "cost": []})
    for c in ("source_spot_id", "target_spot_id", "track_id"):
        edge_df[c] = edge_df[c].astype(np.int64)
    if "cost" not in edge_df.columns:
        edge_df["cost"] = np.nan
    front = ["source_spot_id", "target_spot_id", "track_id", "cost"]
    edge_df = edge_df[front + [c for c in edge_df.columns if c not in front]]
    known = set(spot_df["spot_id"].tolist())
    for c in ("source_spot_id", "target_spot_id"):
        unknown = ~edge_df[c].isin(known)
        if unknown.any():
            raise InvalidDataError(f"{p}: edge {c} {int(edge_df.loc[unknown, c].iloc[0])} is not in AllSpots")

    tracks: dict[int, TrackMateTrack] = {}
    for tid, name, feats, start, stop in track_heads:
        rows = np.arange(start, stop)
        sub = edge_df.iloc[start:stop]
        sids = np.unique(np.concatenate([sub["source_spot_id"].to_numpy(), sub["target_spot_id"].to_numpy()]))
        if tid in tracks:
            raise InvalidDataError(f"{p}: TRACK_ID {tid} appears more than once in AllTracks")
        tracks[tid] = TrackMateTrack(track_id=tid, name=name, features=feats, edge_rows=rows, spot_ids=sids)

    return TrackMateData(
        version=version,
        spots=spot_df,
        edges=edge_df,
        tracks=tracks,
        filtered_track_ids=filtered,
        settings=settings,
        feature_declarations=declarations,
        spatial_units=normalize_spatial_units(raw_space or None),
        time_units=normalize_time_units(raw_time or None),
        raw_spatial_units=raw_space,
        raw_time_units=raw_time,
        log=log_text,
    )


# ==============================================================================================
# Writing
# ==============================================================================================

# TrackMate's declarations of the features we write (names as they appear in TrackMate files).
_KNOWN_SPOT = {
    "QUALITY": ("Quality", "Quality", "QUALITY", False),
    "POSITION_X": ("X", "X", "POSITION", False),
    "POSITION_Y": ("Y", "Y", "POSITION", False),
    "POSITION_Z": ("Z", "Z", "POSITION", False),
    "POSITION_T": ("T", "T", "TIME", False),
    "FRAME": ("Frame", "Frame", "NONE", True),
    "RADIUS": ("Radius", "R", "LENGTH", False),
    "VISIBILITY": ("Visibility", "Visibility", "NONE", True),
}
_KNOWN_EDGE = {
    "SPOT_SOURCE_ID": ("Source spot ID", "Source ID", "NONE", True),
    "SPOT_TARGET_ID": ("Target spot ID", "Target ID", "NONE", True),
    "LINK_COST": ("Edge cost", "Cost", "COST", False),
    "EDGE_TIME": ("Edge time", "Edge T", "TIME", False),
    "EDGE_X_LOCATION": ("Edge X", "Edge X", "POSITION", False),
    "EDGE_Y_LOCATION": ("Edge Y", "Edge Y", "POSITION", False),
    "EDGE_Z_LOCATION": ("Edge Z", "Edge Z", "POSITION", False),
    "DISPLACEMENT": ("Displacement", "Disp.", "LENGTH", False),
    "SPEED": ("Speed", "Speed", "VELOCITY", False),
}
_KNOWN_TRACK = {
    "TRACK_INDEX": ("Track index", "Index", "NONE", True),
    "TRACK_ID": ("Track ID", "ID", "NONE", True),
    "NUMBER_SPOTS": ("Number of spots in track", "N spots", "NONE", True),
    "NUMBER_GAPS": ("Number of gaps", "N gaps", "NONE", True),
    "NUMBER_SPLITS": ("Number of split events", "N splits", "NONE", True),
    "NUMBER_MERGES": ("Number of merge events", "N merges", "NONE", True),
    "NUMBER_COMPLEX": ("Number of complex points", "N complex", "NONE", True),
    "LONGEST_GAP": ("Longest gap", "Lgst gap", "NONE", True),
    "TRACK_DURATION": ("Track duration", "Duration", "TIME", False),
    "TRACK_START": ("Track start", "Track start", "TIME", False),
    "TRACK_STOP": ("Track stop", "Track stop", "TIME", False),
    "TRACK_DISPLACEMENT": ("Track displacement", "Track disp.", "LENGTH", False),
    "TRACK_X_LOCATION": ("Track mean X", "Track X", "POSITION", False),
    "TRACK_Y_LOCATION": ("Track mean Y", "Track Y", "POSITION", False),
    "TRACK_Z_LOCATION": ("Track mean Z", "Track Z", "POSITION", False),
    "TRACK_MEAN_SPEED": ("Track mean speed", "Mean sp.", "VELOCITY", False),
    "TRACK_MAX_SPEED": ("Track max speed", "Max speed", "VELOCITY", False),
    "TRACK_MIN_SPEED": ("Track min speed", "Min speed", "VELOCITY", False),
    "TRACK_MEDIAN_SPEED": ("Track median speed", "Med. speed", "VELOCITY", False),
    "TRACK_STD_SPEED": ("Track std speed", "Std speed", "VELOCITY", False),
    "TOTAL_DISTANCE_TRAVELED": ("Total distance traveled", "Total dist.", "LENGTH", False),
}
# snake-case columns of the project's tables that have a TrackMate name
_SPOT_RENAME = {"radius": "RADIUS", "radius_um": "RADIUS", "quality": "QUALITY", "label": "LABEL",
                "tracklet_id": "TRACKLET_ID", "visibility": "VISIBILITY"}
_SPOT_SKIP = {"spot_id", "t", "x", "y", "z", "track_id", "name"}
_INTENSITY_RE = re.compile(r"^(mean|median|min|max|total|std|sum)_intensity_c(\d+)$")
_EDGE_SKIP = {"source_spot_id", "target_spot_id", "cost", "kind", "track_id"}
_TRACK_RENAME = {"n_spots": "NUMBER_SPOTS", "n_divisions": "NUMBER_SPLITS", "duration": "TRACK_DURATION",
                 "displacement": "TRACK_DISPLACEMENT", "total_distance": "TOTAL_DISTANCE_TRAVELED",
                 "mean_speed": "TRACK_MEAN_SPEED"}
_TRACK_SKIP = {"track_id", "start_t", "end_t", "dividing"}


def spot_feature_key(column: str) -> str:
    """TrackMate feature name of a spot column.

    ``radius``/``radius_um`` → ``RADIUS``, ``quality`` → ``QUALITY``, ``label`` → ``LABEL``,
    ``mean_intensity_c0`` → ``MEAN_INTENSITY_CH1`` (TrackMate counts channels from 1; likewise
    median/min/max/total/std), an all-uppercase name is kept, anything else is upper-cased with
    characters that XML names cannot hold replaced by ``_``.
    """
    if column in _SPOT_RENAME:
        return _SPOT_RENAME[column]
    m = _INTENSITY_RE.match(column)
    if m:
        stat = {"sum": "TOTAL"}.get(m.group(1), m.group(1).upper())
        return f"{stat}_INTENSITY_CH{int(m.group(2)) + 1}"
    return _xml_name(column.upper())


def _xml_name(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not clean or not (clean[0].isalpha() or clean[0] == "_"):
        clean = "F_" + clean
    return clean


def _dimension_of(column: str) -> str:
    c = column.lower()
    if c.endswith("_um3") or "volume" in c:
        return "VOLUME"
    if c.endswith("_um2") or "area" in c:
        return "AREA"
    if "intensity" in c:
        return "INTENSITY"
    if "speed" in c or "velocity" in c:
        return "VELOCITY"
    if c.endswith("_um") or "radius" in c or "distance" in c or "diameter" in c:
        return "LENGTH"
    return "NONE"


def _fmt_float(v: float) -> str:
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return repr(v)


def _format_column(values: np.ndarray, isint: bool, what: str) -> list[str]:
    """Strings of one feature column; integer features without decimals."""
    if isint:
        arr = np.asarray(values)
        if arr.dtype.kind in "iub":
            return [str(int(v)) for v in arr.tolist()]
        arr = arr.astype(np.float64)
        finite = np.isfinite(arr)
        if np.any(np.mod(arr[finite], 1) != 0):
            bad = arr[finite][np.mod(arr[finite], 1) != 0][0]
            raise InvalidDataError(f"integer feature {what} holds the non-integer value {float(bad)!r}")
        return [str(int(v)) if math.isfinite(v) else _fmt_float(v) for v in arr.tolist()]
    return [_fmt_float(v) for v in np.asarray(values, dtype=np.float64).tolist()]


def _fmt_setting(v: Any) -> str:
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return _fmt_float(float(v))
    return str(v)


@dataclass
class _Feature:
    column: str | None  # source column, None for computed features
    key: str
    name: str
    shortname: str
    dimension: str
    isint: bool


def _declare(key: str, column: str | None, isint: bool, known: Mapping[str, tuple[str, str, str, bool]],
             override: Mapping[str, Mapping[str, Any]] | None) -> _Feature:
    if override and key in override:
        o = override[key]
        return _Feature(column, key, str(o.get("name", key)), str(o.get("shortname", key)),
                        str(o.get("dimension", "NONE")), bool(o.get("isint", isint)))
    if key in known:
        n, s, d, i = known[key]
        return _Feature(column, key, n, s, d, i)
    pretty = (column or key).replace("_", " ")
    pretty = pretty[:1].upper() + pretty[1:].lower() if pretty.isupper() else pretty[:1].upper() + pretty[1:]
    return _Feature(column, key, pretty, pretty[:16], _dimension_of(column or key), isint)


# Tracker settings ------------------------------------------------------------------------------

_TRACKER_LAYOUT: dict[str | None, list[str]] = {
    None: ["TRACKER_NAME", "CUTOFF_PERCENTILE", "ALTERNATIVE_LINKING_COST_FACTOR", "BLOCKING_VALUE"],
    "Linking": ["LINKING_MAX_DISTANCE"],
    "GapClosing": ["ALLOW_GAP_CLOSING", "GAP_CLOSING_MAX_DISTANCE", "MAX_FRAME_GAP"],
    "TrackSplitting": ["ALLOW_TRACK_SPLITTING", "SPLITTING_MAX_DISTANCE"],
    "TrackMerging": ["ALLOW_TRACK_MERGING", "MERGING_MAX_DISTANCE"],
}
#: TrackMate's documented defaults of the LAP tracker, used for keys the caller does not give.
TRACKER_DEFAULTS: dict[str, Any] = {
    "TRACKER_NAME": "SPARSE_LAP_TRACKER",
    "CUTOFF_PERCENTILE": 0.9,
    "ALTERNATIVE_LINKING_COST_FACTOR": 1.05,
    "BLOCKING_VALUE": math.inf,
    "LINKING_MAX_DISTANCE": 15.0,
    "ALLOW_GAP_CLOSING": True,
    "GAP_CLOSING_MAX_DISTANCE": 15.0,
    "MAX_FRAME_GAP": 2,
    "ALLOW_TRACK_SPLITTING": False,
    "SPLITTING_MAX_DISTANCE": 15.0,
    "ALLOW_TRACK_MERGING": False,
    "MERGING_MAX_DISTANCE": 15.0,
    "LINKING_FEATURE_PENALTIES": {},
    "GAP_CLOSING_FEATURE_PENALTIES": {},
    "SPLITTING_FEATURE_PENALTIES": {},
    "MERGING_FEATURE_PENALTIES": {},
}
_TRACKER_KEYS = set(TRACKER_DEFAULTS)


def _flatten(d: Mapping[str, Any], out: dict[str, Any]) -> None:
    for k, v in d.items():
        key = str(k).upper()
        if isinstance(v, Mapping) and not key.endswith("FEATURE_PENALTIES"):
            _flatten(v, out)
        else:
            out[key] = v


def tracker_settings_from_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """TrackMate ``TrackerSettings`` keys found in a tracker configuration.

    Nested dictionaries are searched; a key matches when its upper-case form is a TrackMate LAP
    key (``linking_max_distance`` → ``LINKING_MAX_DISTANCE``, ``max_frame_gap``,
    ``allow_track_splitting``, ``linking_feature_penalties`` ...). Feature-penalty keys are
    mapped with :func:`spot_feature_key`. This reads the keys of
    :class:`vollseg_dask.tracking.config.TrackerConfig` and of :meth:`TrackMateData.to_track_data`.
    """
    if not config:
        return {}
    flat: dict[str, Any] = {}
    _flatten(config, flat)
    out = {k: v for k, v in flat.items() if k in _TRACKER_KEYS}
    for k in list(out):
        if k.endswith("FEATURE_PENALTIES") and isinstance(out[k], Mapping):
            out[k] = {spot_feature_key(str(f)): float(w) for f, w in out[k].items()}
    return out


def _write_tracker_settings(xf: Any, settings: Mapping[str, Any], etree: Any) -> None:
    s = dict(TRACKER_DEFAULTS)
    s.update(settings)
    placed = {k for keys in _TRACKER_LAYOUT.values() for k in keys} | {
        "LINKING_FEATURE_PENALTIES", "GAP_CLOSING_FEATURE_PENALTIES",
        "SPLITTING_FEATURE_PENALTIES", "MERGING_FEATURE_PENALTIES",
    }
    root_attrs = {k: _fmt_setting(s[k]) for k in _TRACKER_LAYOUT[None]}
    root_attrs.update({k: _fmt_setting(v) for k, v in s.items() if k not in placed and not isinstance(v, Mapping)})
    with xf.element("TrackerSettings", root_attrs):
        for tag in ("Linking", "GapClosing", "TrackSplitting", "TrackMerging"):
            el = etree.Element(tag, {k: _fmt_setting(s[k]) for k in _TRACKER_LAYOUT[tag]})
            fp = etree.SubElement(el, "FeaturePenalties")
            for feat, w in dict(s.get(_PENALTY_KEYS[tag]) or {}).items():
                etree.SubElement(fp, "FeaturePenalty", {"feature": str(feat), "value": _fmt_float(w)})
            xf.write("\n      ")
            xf.write(el)
        xf.write("\n    ")


# The writer --------------------------------------------------------------------------------------


def _spot_features(data: TrackData, first: pd.DataFrame,
                   override: Mapping[str, Mapping[str, Any]] | None) -> tuple[list[_Feature], str | None, str | None]:
    """Declared spot features (computed ones first), the radius and quality source columns."""
    cols = [c for c in data.spot_columns() if c not in _SPOT_SKIP]
    numeric = []
    for c in cols:
        if c in first.columns and (first[c].dtype.kind in "iufb"):
            numeric.append(c)
        elif c in first.columns:
            log.debug("spot column %r is not numeric: not written to TrackMate XML", c)
    radius_col = next((c for c in ("RADIUS", "radius", "radius_um") if c in numeric), None)
    quality_col = next((c for c in ("QUALITY", "quality") if c in numeric), None)
    feats = [
        _declare("QUALITY", quality_col, False, _KNOWN_SPOT, override),
        _declare("POSITION_X", "x", False, _KNOWN_SPOT, override),
        _declare("POSITION_Y", "y", False, _KNOWN_SPOT, override),
        _declare("POSITION_Z", "z", False, _KNOWN_SPOT, override),
        _declare("POSITION_T", None, False, _KNOWN_SPOT, override),
        _declare("FRAME", "t", True, _KNOWN_SPOT, override),
        _declare("RADIUS", radius_col, False, _KNOWN_SPOT, override),
        _declare("VISIBILITY", "VISIBILITY" if "VISIBILITY" in numeric else None, True, _KNOWN_SPOT, override),
    ]
    taken = {f.key: f.column for f in feats}
    for c in numeric:
        if c in (radius_col, quality_col, "VISIBILITY", "POSITION_T", "FRAME", "POSITION_X", "POSITION_Y", "POSITION_Z"):
            continue
        if c in ("radius", "radius_um", "quality", "RADIUS", "QUALITY"):
            continue  # a second radius/quality column: the first one wins
        key = spot_feature_key(c)
        if key in taken:
            raise InvalidDataError(f"spot columns {taken[key]!r} and {c!r} both map to TrackMate feature {key}")
        isint = first[c].dtype.kind in "iub" or bool(override and override.get(key, {}).get("isint"))
        feats.append(_declare(key, c, isint, _KNOWN_SPOT, override))
        taken[key] = c
    return feats, radius_col, quality_col


def _default_radius(frame: pd.DataFrame) -> np.ndarray:
    if "volume_um3" in frame.columns:
        v = frame["volume_um3"].to_numpy(np.float64)
        return np.cbrt(3.0 * np.maximum(v, 0) / (4.0 * math.pi))
    return np.ones(len(frame))


def write_trackmate_xml(
    path: str | os.PathLike[str],
    data: TrackData,
    *,
    image_data: Mapping[str, Any] | None = None,
    tracker_settings: Mapping[str, Any] | None = None,
    spatial_units: str | None = None,
    time_units: str | None = None,
    filtered_track_ids: Iterable[int] | None = None,
    feature_declarations: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    display_settings: str | Mapping[str, Any] | None = None,
    version: str = TRACKMATE_FORMAT_VERSION,
) -> Path:
    """Write tracks as a TrackMate XML file that Fiji TrackMate opens, streaming.

    Parameters
    ----------
    path : path-like
        Output ``.xml`` (written aside and renamed into place).
    data : TrackData
        Tracks, in memory or lazily opened (spots then stream frame by frame from ``spots/``;
        only ``spot_id, t, x, y, z, track_id`` of all spots are held in memory, to number spots
        and compute edge and track features).
    image_data : mapping, optional
        ``Settings/ImageData`` attributes (``filename``, ``folder``, ``width``, ``height``,
        ``nslices``, ``nframes``, ``pixelwidth``, ``pixelheight``, ``voxeldepth``,
        ``timeinterval``). Default: the image's own dimensions and calibration from
        ``data.image`` (:func:`image_data_from_calibration`), with no file name (Fiji then opens
        the tracks on an empty image of that size) and the OME-Zarr's location in ``<Log>``;
        missing ones are derived from the spots (extent, frames, frame interval).
    tracker_settings : mapping, optional
        TrackMate tracker keys (``LINKING_MAX_DISTANCE``, ``MAX_FRAME_GAP``,
        ``ALLOW_TRACK_SPLITTING``, ``LINKING_FEATURE_PENALTIES`` = {feature: weight} ...). Default:
        :func:`tracker_settings_from_config` of ``data.tracker_config``; TrackMate's defaults fill
        whatever is missing.
    spatial_units, time_units : str, optional
        Model units; default ``data.spatial_units`` / ``data.time_units`` (µm / sec).
    filtered_track_ids : iterable of int, optional
        Tracks listed in ``FilteredTracks``; default all.
    feature_declarations : mapping, optional
        ``{"spot"|"edge"|"track": {FEATURE: {name, shortname, dimension, isint}}}`` overriding our
        declarations (e.g. :attr:`TrackMateData.feature_declarations` for a faithful round trip).
    display_settings : str or mapping, optional
        ``DisplaySettings`` JSON.
    version : str
        Root ``version`` attribute.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    InvalidDataError
        More than 2³¹−1 spots (TrackMate IDs are int32), duplicate spot IDs, edges to unknown spots or
        not forward in time, a ``track_id`` shared by two lineages (or two ``track_id`` in one
        lineage), a non-integer value in an integer feature, or spot columns whose TrackMate names
        collide.
    """
    from lxml import etree

    out = Path(path)
    fi = float(data.frame_interval)
    decl_over = feature_declarations or {}
    s_units = spatial_units or data.spatial_units
    t_units = time_units or data.time_units

    # -- all spots, few columns: numbering, lineages, edge and track features -----------------
    core = data.load_spots(["spot_id", "x", "y", "z", "track_id"])
    n = len(core)
    if n > INT32_MAX:
        raise InvalidDataError(
            f"{n} spots exceed TrackMate's int32 spot IDs (at most {INT32_MAX}); split the data in time"
        )
    order = np.argsort(core["spot_id"].to_numpy(), kind="stable")
    core = core.iloc[order].reset_index(drop=True)  # row i has dense ID i
    sids = core["spot_id"].to_numpy(np.int64)
    if n > 1 and np.any(sids[1:] == sids[:-1]):
        raise InvalidDataError(f"spot_id {int(sids[1:][sids[1:] == sids[:-1]][0])} appears more than once")
    tt = core["t"].to_numpy(np.int64)
    xyz = core[["x", "y", "z"]].to_numpy(np.float64)
    edges = data.edges
    comp_track, _, _ = derive_lineage(sids, tt, edges)  # validates edges, components numbered 0..
    src = np.searchsorted(sids, edges["source_spot_id"].to_numpy(np.int64))
    dst = np.searchsorted(sids, edges["target_spot_id"].to_numpy(np.int64))
    track_of_spot = _track_ids(comp_track, core["track_id"].to_numpy(np.int64))

    # -- edge features ------------------------------------------------------------------------
    dt = (tt[dst] - tt[src]).astype(np.float64)
    disp = np.linalg.norm(xyz[dst] - xyz[src], axis=1)
    edge_cols: dict[str, np.ndarray] = {
        "SPOT_SOURCE_ID": src.astype(np.int64),
        "SPOT_TARGET_ID": dst.astype(np.int64),
        "LINK_COST": edges["cost"].to_numpy(np.float64),
        "EDGE_TIME": (tt[src] + tt[dst]) / 2.0 * fi,
        "EDGE_X_LOCATION": (xyz[src, 0] + xyz[dst, 0]) / 2.0,
        "EDGE_Y_LOCATION": (xyz[src, 1] + xyz[dst, 1]) / 2.0,
        "EDGE_Z_LOCATION": (xyz[src, 2] + xyz[dst, 2]) / 2.0,
        "DISPLACEMENT": disp,
        "SPEED": disp / (dt * fi),
    }
    edge_feats = [_declare(k, None, k in ("SPOT_SOURCE_ID", "SPOT_TARGET_ID"), _KNOWN_EDGE, decl_over.get("edge"))
                  for k in edge_cols]
    for c in edges.columns:
        if c in _EDGE_SKIP or edges[c].dtype.kind not in "iufb":
            continue
        key = _xml_name(c.upper())
        if key in edge_cols:
            continue  # recomputed from the spots
        edge_cols[key] = edges[c].to_numpy()
        edge_feats.append(_declare(key, c, edges[c].dtype.kind in "iub", _KNOWN_EDGE, decl_over.get("edge")))

    # -- track features ---------------------------------------------------------------------
    track_df = _track_features(track_of_spot, tt, xyz, src, dst, disp, dt, fi)
    if data.tracks is not None and len(track_df):
        extra = data.tracks.set_index("track_id")
        for c in extra.columns:
            if c in _TRACK_SKIP or extra[c].dtype.kind not in "iufb":
                continue
            key = _TRACK_RENAME.get(c, _xml_name(c.upper()))
            if key in track_df.columns:
                continue
            track_df[key] = extra[c].reindex(track_df["TRACK_ID"]).to_numpy()
    track_feats = [
        _declare(k, None, k in _KNOWN_TRACK and _KNOWN_TRACK[k][3] or track_df[k].dtype.kind in "iub",
                 _KNOWN_TRACK, decl_over.get("track"))
        for k in track_df.columns
    ]
    all_track_ids = track_df["TRACK_ID"].to_numpy(np.int64)
    if filtered_track_ids is None:
        filtered = all_track_ids.tolist()
    else:
        filtered = [int(x) for x in filtered_track_ids]
        unknown = sorted(set(filtered) - set(all_track_ids.tolist()))
        if unknown:
            raise InvalidDataError(f"filtered_track_ids names track(s) {unknown[:5]} that do not exist")

    # -- spot features (declared up front from the schema and the first frame) ----------------
    frames = data.frames()
    first = next(data.iter_frames(), (0, core.iloc[:0]))[1] if frames else core.iloc[:0]
    spot_feats, radius_col, quality_col = _spot_features(data, first, decl_over.get("spot"))
    available = set(data.spot_columns())
    spot_cols_needed = sorted(
        {f.column for f in spot_feats if f.column} | ({"spot_id", "name", "volume_um3"} & available)
    )

    # -- image data -------------------------------------------------------------------------
    cal_image = image_data_from_calibration(data.image, fi) if data.image else {}
    img = _image_data({**cal_image, **dict(image_data or {})}, xyz, tt, fi, data.ndim)
    source_note = ""
    if data.image and data.image.get("store"):
        source_note = (f"Image: OME-Zarr {data.image['store']}"
                       + (" (Fiji cannot open OME-Zarr: ImageData names no file unless a TIFF was exported).\n"
                          if not img["filename"] else ".\n"))

    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    min_quality = math.inf
    try:
        with etree.xmlfile(str(tmp), encoding="UTF-8") as xf:
            xf.write_declaration()
            with xf.element("TrackMate", {"version": version}):
                import vollseg_dask

                xf.write("\n  ")
                lg = etree.Element("Log")
                lg.text = (f"Written by vollseg-dask {vollseg_dask.__version__} "
                           f"(TrackMate XML file format {TRACKMATE_FORMAT_VERSION}).\n"
                           f"{n} spots, {len(edges)} edges, {len(track_df)} tracks.\n{source_note}")
                xf.write(lg)
                xf.write("\n  ")
                with xf.element("Model", {"spatialunits": s_units, "timeunits": t_units}):
                    xf.write("\n    ")
                    _write_declarations(xf, etree, spot_feats, edge_feats, track_feats)
                    xf.write("\n    ")
                    with xf.element("AllSpots", {"nspots": str(n)}):
                        for t, frame in data.iter_frames(spot_cols_needed):
                            dense = np.searchsorted(sids, frame["spot_id"].to_numpy(np.int64))
                            strings = []
                            for f in spot_feats:
                                if f.key == "POSITION_T":
                                    vals: np.ndarray = frame["t"].to_numpy(np.float64) * fi
                                elif f.key == "RADIUS" and f.column is None:
                                    vals = _default_radius(frame)
                                elif f.key == "QUALITY" and f.column is None:
                                    vals = np.ones(len(frame))
                                elif f.key == "VISIBILITY" and f.column is None:
                                    vals = np.ones(len(frame), np.int64)
                                else:
                                    vals = frame[f.column].to_numpy()
                                if f.key == "QUALITY" and len(vals):
                                    q = np.asarray(vals, np.float64)
                                    if np.isfinite(q).any():
                                        min_quality = min(min_quality, float(np.nanmin(q[np.isfinite(q)])))
                                strings.append(_format_column(vals, f.isint, f"{f.key} (column {f.column})"))
                            names = (frame["name"].astype(str).tolist() if "name" in frame.columns
                                     else [f"ID{d}" for d in dense.tolist()])
                            xf.write("\n      ")
                            with xf.element("SpotsInFrame", {"frame": str(int(t))}):
                                keys = [f.key for f in spot_feats]
                                for i, d in enumerate(dense.tolist()):
                                    attrs = {"ID": str(d), "name": names[i]}
                                    attrs.update(zip(keys, (col[i] for col in strings), strict=True))
                                    xf.write("\n        ")
                                    xf.write(etree.Element("Spot", attrs))
                                xf.write("\n      ")
                        xf.write("\n    ")
                    xf.write("\n    ")
                    _write_tracks(xf, etree, track_df, edge_cols, edge_feats, track_feats, track_of_spot, src, tt)
                    xf.write("\n    ")
                    with xf.element("FilteredTracks"):
                        for tid in filtered:
                            xf.write("\n      ")
                            xf.write(etree.Element("TrackID", {"TRACK_ID": str(int(tid))}))
                        xf.write("\n    ")
                    xf.write("\n  ")
                xf.write("\n  ")
                _write_settings(xf, etree, img, tracker_settings, data, min_quality)
                xf.write("\n  ")
                xf.write(etree.Element("GUIState", {"state": "ConfigureViews"}))
                if display_settings is not None:
                    xf.write("\n  ")
                    ds = etree.Element("DisplaySettings")
                    ds.text = display_settings if isinstance(display_settings, str) else json.dumps(
                        dict(display_settings), indent=2, ensure_ascii=False)
                    xf.write(ds)
                xf.write("\n")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _track_ids(comp_track: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Track ID of each spot (-1 unlinked): the caller's ``track_id`` when it names lineages
    one-to-one and fits int32, else the component number."""
    linked = comp_track >= 0
    if not linked.any():
        return comp_track
    pairs = pd.DataFrame({"comp": comp_track[linked], "tid": given[linked]}).drop_duplicates()
    if (pairs["tid"] >= 0).all():
        per_comp = pairs.groupby("comp")["tid"].nunique()
        per_tid = pairs.groupby("tid")["comp"].nunique()
        if (per_comp > 1).any():
            c = int(per_comp[per_comp > 1].index[0])
            ids = sorted(pairs.loc[pairs["comp"] == c, "tid"].tolist())
            raise InvalidDataError(f"one connected lineage carries several track_id values {ids[:5]}")
        if (per_tid > 1).any():
            raise InvalidDataError(f"track_id {int(per_tid[per_tid > 1].index[0])} is shared by two disconnected lineages")
        if pairs["tid"].max() <= INT32_MAX:
            lut = pd.Series(pairs["tid"].to_numpy(), index=pairs["comp"].to_numpy())
            out = np.full(len(comp_track), -1, np.int64)
            out[linked] = lut.reindex(comp_track[linked]).to_numpy()
            return out
        log.warning("track_id values exceed int32: TrackMate tracks renumbered 0..%s", int(pairs["comp"].max()))
    return comp_track


def _track_features(track_of_spot: np.ndarray, tt: np.ndarray, xyz: np.ndarray, src: np.ndarray, dst: np.ndarray,
                    disp: np.ndarray, dt: np.ndarray, fi: float) -> pd.DataFrame:
    linked = np.flatnonzero(track_of_spot >= 0)
    if len(linked) == 0:
        return pd.DataFrame({k: pd.Series([], dtype="int64" if v[3] else "float64") for k, v in _KNOWN_TRACK.items()})
    n = len(track_of_spot)
    outdeg = np.bincount(src, minlength=n)
    indeg = np.bincount(dst, minlength=n)
    sp = pd.DataFrame({"tid": track_of_spot[linked], "t": tt[linked], "i": linked,
                       "x": xyz[linked, 0], "y": xyz[linked, 1], "z": xyz[linked, 2],
                       "split": (outdeg[linked] >= 2) & (indeg[linked] < 2),
                       "merge": (indeg[linked] >= 2) & (outdeg[linked] < 2),
                       "complex": (indeg[linked] >= 2) & (outdeg[linked] >= 2)})
    g = sp.groupby("tid", sort=True)
    ordered = sp.sort_values(["tid", "t", "i"], kind="stable")
    first = ordered.groupby("tid").head(1).set_index("tid")
    last_t = g["t"].max()
    last = ordered[ordered["t"].to_numpy() == last_t.reindex(ordered["tid"]).to_numpy()].groupby("tid").head(1).set_index("tid")
    ed = pd.DataFrame({"tid": track_of_spot[src], "disp": disp, "speed": disp / (dt * fi), "gap": dt - 1})
    eg = ed.groupby("tid")
    ids = g.size().index
    df = pd.DataFrame({"TRACK_ID": ids.to_numpy(np.int64)})
    df["TRACK_INDEX"] = np.arange(len(ids), dtype=np.int64)
    df["NUMBER_SPOTS"] = g.size().to_numpy().astype(np.int64)
    df["NUMBER_GAPS"] = eg["gap"].apply(lambda s: int((s > 0).sum())).reindex(ids).fillna(0).to_numpy().astype(np.int64)
    df["NUMBER_SPLITS"] = g["split"].sum().to_numpy().astype(np.int64)
    df["NUMBER_MERGES"] = g["merge"].sum().to_numpy().astype(np.int64)
    df["NUMBER_COMPLEX"] = g["complex"].sum().to_numpy().astype(np.int64)
    df["LONGEST_GAP"] = eg["gap"].max().reindex(ids).fillna(0).to_numpy().astype(np.int64)
    start = g["t"].min().to_numpy() * fi
    stop = g["t"].max().to_numpy() * fi
    df["TRACK_DURATION"] = stop - start
    df["TRACK_START"] = start.astype(np.float64)
    df["TRACK_STOP"] = stop.astype(np.float64)
    df["TRACK_DISPLACEMENT"] = np.linalg.norm(
        last.loc[ids, ["x", "y", "z"]].to_numpy() - first.loc[ids, ["x", "y", "z"]].to_numpy(), axis=1)
    df["TRACK_X_LOCATION"] = g["x"].mean().to_numpy()
    df["TRACK_Y_LOCATION"] = g["y"].mean().to_numpy()
    df["TRACK_Z_LOCATION"] = g["z"].mean().to_numpy()
    df["TRACK_MEAN_SPEED"] = eg["speed"].mean().reindex(ids).to_numpy()
    df["TRACK_MAX_SPEED"] = eg["speed"].max().reindex(ids).to_numpy()
    df["TRACK_MIN_SPEED"] = eg["speed"].min().reindex(ids).to_numpy()
    df["TRACK_MEDIAN_SPEED"] = eg["speed"].median().reindex(ids).to_numpy()
    df["TRACK_STD_SPEED"] = eg["speed"].std(ddof=1).reindex(ids).to_numpy()
    df["TOTAL_DISTANCE_TRAVELED"] = eg["disp"].sum().reindex(ids).fillna(0.0).to_numpy()
    return df


def image_data_from_calibration(calibration: Mapping[str, Any], frame_interval: float | None = None) -> dict[str, Any]:
    """``ImageData`` attributes of an image calibration (:mod:`vollseg_dask.io.calibration`).

    Dimensions from ``shape`` (``x`` → ``width``, ``y`` → ``height``, ``z`` → ``nslices``, ``t`` →
    ``nframes``), pixel sizes from ``voxel_size`` (z, y, x), ``timeinterval`` from
    ``frame_interval`` (argument, else the calibration's). No ``filename``/``folder``: an OME-Zarr
    is not a file Fiji opens.
    """
    out: dict[str, Any] = {}
    shape = dict(calibration.get("shape") or {})
    for axis, key in (("x", "width"), ("y", "height"), ("z", "nslices"), ("t", "nframes")):
        if axis in shape:
            out[key] = int(shape[axis])
    vs = calibration.get("voxel_size")
    if vs:
        out["voxeldepth"], out["pixelheight"], out["pixelwidth"] = (float(v) for v in vs)
    fi = frame_interval if frame_interval is not None else calibration.get("frame_interval")
    if fi:
        out["timeinterval"] = float(fi)
    return out


def _image_data(given: Mapping[str, Any] | None, xyz: np.ndarray, tt: np.ndarray, fi: float, ndim: int) -> dict[str, Any]:
    g = dict(given or {})
    unknown = set(g) - ({"filename", "folder"} | _IMAGE_INT | _IMAGE_FLOAT)
    if unknown:
        raise InvalidDataError(f"image_data has unknown key(s) {sorted(unknown)}")
    pw = float(g.get("pixelwidth", 1.0))
    ph = float(g.get("pixelheight", pw))
    vd = float(g.get("voxeldepth", 1.0))
    for k, v in (("pixelwidth", pw), ("pixelheight", ph), ("voxeldepth", vd)):
        if not (math.isfinite(v) and v > 0):
            raise InvalidDataError(f"image_data {k} must be finite and > 0, got {v!r}")

    def extent(col: int, size: float) -> int:
        if len(xyz) == 0:
            return 1
        hi = np.nanmax(xyz[:, col])
        return int(math.floor(hi / size)) + 1 if math.isfinite(hi) and hi > 0 else 1

    img: dict[str, Any] = {
        "filename": str(g.get("filename", "")),
        "folder": str(g.get("folder", "")),
        "width": int(g.get("width", extent(0, pw))),
        "height": int(g.get("height", extent(1, ph))),
        "nslices": int(g.get("nslices", extent(2, vd) if ndim == 3 else 1)),
        "nframes": int(g.get("nframes", int(tt.max()) + 1 if len(tt) else 1)),
        "pixelwidth": pw,
        "pixelheight": ph,
        "voxeldepth": vd,
        "timeinterval": float(g.get("timeinterval", fi)),
    }
    for k in _IMAGE_INT:
        if img[k] < 1:
            raise InvalidDataError(f"image_data {k} must be ≥ 1, got {img[k]!r}")
    return img


def _write_declarations(xf: Any, etree: Any, spot: list[_Feature], edge: list[_Feature], track: list[_Feature]) -> None:
    decl = etree.Element("FeatureDeclarations")
    decl.text = "\n      "
    for tag, feats in (("SpotFeatures", spot), ("EdgeFeatures", edge), ("TrackFeatures", track)):
        group = etree.SubElement(decl, tag)
        group.text = "\n        "
        for i, f in enumerate(feats):
            el = etree.SubElement(group, "Feature", {
                "feature": f.key, "name": f.name, "shortname": f.shortname,
                "dimension": f.dimension, "isint": "true" if f.isint else "false",
            })
            el.tail = "\n        " if i < len(feats) - 1 else "\n      "
        if not feats:
            group.text = None
        group.tail = "\n      " if tag != "TrackFeatures" else "\n    "
    xf.write(decl)


def _write_tracks(xf: Any, etree: Any, track_df: pd.DataFrame, edge_cols: dict[str, np.ndarray],
                  edge_feats: list[_Feature], track_feats: list[_Feature], track_of_spot: np.ndarray,
                  src: np.ndarray, tt: np.ndarray) -> None:
    edge_str = {f.key: _format_column(edge_cols[f.key], f.isint, f"edge feature {f.key}") for f in edge_feats}
    track_str = {f.key: _format_column(track_df[f.key].to_numpy(), f.isint, f"track feature {f.key}")
                 for f in track_feats}
    e_tid = track_of_spot[src] if len(src) else np.zeros(0, np.int64)
    order = np.lexsort((edge_cols["SPOT_TARGET_ID"], src, tt[src] if len(src) else src, e_tid))
    bounds = np.searchsorted(e_tid[order], track_df["TRACK_ID"].to_numpy(np.int64), side="left")
    ends = np.searchsorted(e_tid[order], track_df["TRACK_ID"].to_numpy(np.int64), side="right")
    ekeys = [f.key for f in edge_feats]
    with xf.element("AllTracks"):
        for row in range(len(track_df)):
            tid = int(track_df["TRACK_ID"].iat[row])
            attrs = {"name": f"Track_{tid}"}
            attrs.update({f.key: track_str[f.key][row] for f in track_feats})
            xf.write("\n      ")
            with xf.element("Track", attrs):
                for j in order[bounds[row]:ends[row]].tolist():
                    xf.write("\n        ")
                    xf.write(etree.Element("Edge", {k: edge_str[k][j] for k in ekeys}))
                xf.write("\n      ")
        xf.write("\n    ")


def _write_settings(xf: Any, etree: Any, img: Mapping[str, Any], tracker_settings: Mapping[str, Any] | None,
                    data: TrackData, min_quality: float) -> None:
    with xf.element("Settings"):
        xf.write("\n    ")
        xf.write(etree.Element("ImageData", {k: _fmt_setting(v) for k, v in img.items()}))
        xf.write("\n    ")
        xf.write(etree.Element("BasicSettings", {
            "xstart": "0", "xend": str(img["width"] - 1), "ystart": "0", "yend": str(img["height"] - 1),
            "zstart": "0", "zend": str(img["nslices"] - 1), "tstart": "0", "tend": str(img["nframes"] - 1),
        }))
        xf.write("\n    ")
        xf.write(etree.Element("DetectorSettings", {
            "DETECTOR_NAME": "LABEL_IMAGE_DETECTOR", "TARGET_CHANNEL": "1", "SIMPLIFY_CONTOURS": "true",
        }))
        # a threshold below every spot's quality, so that no reader re-applying it drops a spot
        thr = 0.0 if not math.isfinite(min_quality) or min_quality > 0 else math.floor(min_quality) - 1.0
        xf.write("\n    ")
        xf.write(etree.Element("InitialSpotFilter", {"feature": "QUALITY", "value": _fmt_float(thr), "isabove": "true"}))
        xf.write("\n    ")
        xf.write(etree.Element("SpotFilterCollection"))
        xf.write("\n    ")
        settings = dict(tracker_settings) if tracker_settings is not None else tracker_settings_from_config(
            data.tracker_config)
        unknown = {k for k in settings if not isinstance(k, str) or k != k.upper()}
        if unknown:
            raise InvalidDataError(f"tracker_settings keys must be TrackMate keys (upper case), got {sorted(map(str, unknown))}")
        _write_tracker_settings(xf, settings, etree)
        xf.write("\n    ")
        xf.write(etree.Element("TrackFilterCollection"))
        xf.write("\n    ")
        ac = etree.Element("AnalyzerCollection")
        for tag in ("SpotAnalyzers", "EdgeAnalyzers", "TrackAnalyzers"):
            etree.SubElement(ac, tag)
        xf.write(ac)
        xf.write("\n  ")
