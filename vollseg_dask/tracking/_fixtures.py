"""Minimal TrackMate XML reading for the tracker's parity tests and the ``track`` command.

Reads only what the tracker needs: spots (id, frame, position, numeric features, visibility), edges
(source, target, cost) and the LAP tracker settings. The full reader/writer of the format is
:mod:`vollseg_dask.io.trackmate_xml`; :func:`read_trackmate_minimal` is the fallback when that module
is absent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vollseg_dask.errors import StoreNotFoundError, TrackingError

__all__ = ["MinimalTrackMate", "read_trackmate_minimal", "tracker_settings_from_xml"]


@dataclass
class MinimalTrackMate:
    """Spots, edges and tracker settings of a TrackMate XML file."""

    spots: pd.DataFrame
    edges: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def read_trackmate_minimal(path: str | os.PathLike[str]) -> MinimalTrackMate:
    """Read spots, edges and tracker settings from a TrackMate XML file.

    Returns
    -------
    MinimalTrackMate
        ``spots``: ``spot_id`` (int64), ``t`` (int64, TrackMate's FRAME), ``x``, ``y``, ``z``
        (float64, the file's spatial unit), ``visible`` (bool) and every other numeric attribute
        under its TrackMate name; ``edges``: ``source_spot_id``, ``target_spot_id`` (int64),
        ``cost`` (float64, LINK_COST); ``settings``: the flat TrackMate LAP keys.
    """
    from lxml import etree

    if not os.path.isfile(path):
        raise StoreNotFoundError(f"TrackMate XML not found: {path}")
    tree = etree.parse(str(path))
    root = tree.getroot()
    rows: list[dict[str, Any]] = []
    for spot in root.iter("Spot"):
        attrs = dict(spot.attrib)
        row: dict[str, Any] = {}
        for key, value in attrs.items():
            if key in {"name", "ID", "FRAME"}:
                continue
            row[key] = _number(value)
        row["spot_id"] = int(attrs["ID"])
        row["t"] = int(float(attrs["FRAME"]))
        rows.append(row)
    spots = pd.DataFrame(rows)
    if len(spots):
        spots = spots.rename(columns={"POSITION_X": "x", "POSITION_Y": "y", "POSITION_Z": "z"})
        spots["visible"] = spots.get("VISIBILITY", pd.Series(1.0, index=spots.index)).fillna(1.0) != 0
        spots = spots.astype({"spot_id": np.int64, "t": np.int64})
        lead = ["spot_id", "t", "x", "y", "z", "visible"]
        spots = spots[[c for c in lead if c in spots.columns] + [c for c in spots.columns if c not in lead]]
    edge_rows = [
        (int(e.get("SPOT_SOURCE_ID")), int(e.get("SPOT_TARGET_ID")), _number(e.get("LINK_COST", "nan")))
        for e in root.iter("Edge")
    ]
    edges = pd.DataFrame(edge_rows, columns=["source_spot_id", "target_spot_id", "cost"]).astype(
        {"source_spot_id": np.int64, "target_spot_id": np.int64, "cost": np.float64}
    )
    return MinimalTrackMate(spots=spots, edges=edges, settings=tracker_settings_from_xml(root))


def tracker_settings_from_xml(root: Any) -> dict[str, Any]:
    """Flatten ``Settings/TrackerSettings`` into TrackMate's keys (penalties as dicts)."""
    node = root.find(".//TrackerSettings")
    if node is None:
        raise TrackingError("the TrackMate XML has no Settings/TrackerSettings element")
    out: dict[str, Any] = dict(node.attrib)
    penalty_keys = {
        "Linking": "LINKING_FEATURE_PENALTIES",
        "GapClosing": "GAP_CLOSING_FEATURE_PENALTIES",
        "TrackSplitting": "SPLITTING_FEATURE_PENALTIES",
        "TrackMerging": "MERGING_FEATURE_PENALTIES",
    }
    for child in node:
        out.update(child.attrib)
        if child.tag in penalty_keys:
            pen = {}
            for fp in child.iter("FeaturePenalty"):
                pen[fp.get("feature")] = float(fp.get("value"))
            out[penalty_keys[child.tag]] = pen
    return out
