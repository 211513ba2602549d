"""TrackMate's LAP tracker (Jaqaman et al. 2008) as pure kernels plus an out-of-core driver.

Kernels (NumPy/pandas, no files, no Dask):

- :func:`link_frames` — frame-to-frame LAP of one frame pair;
- :func:`link_segments` — gap closing / splitting / merging LAP, per connected component;
- :func:`lap_track` — both steps on an in-memory spot table (the reference implementation).

Driver: :func:`track` streams a spot table (Parquet dataset partitioned by ``t`` or a DataFrame)
two frames at a time and writes the track store (``spots/``, ``edges.parquet``,
``tracks.parquet``, ``tracklets.parquet``, ``tracker_config.yaml``).
"""

from __future__ import annotations

from typing import Any

from vollseg_dask.tracking.config import TRACKMATE_KEYS, TrackerConfig
from vollseg_dask.tracking.frames import FrameLinks, link_frames
from vollseg_dask.tracking.pipeline import lap_track
from vollseg_dask.tracking.segments import link_segments, segment_alternative_cost, trackmate_percentile

__all__ = [
    "TRACKMATE_KEYS",
    "TrackerConfig",
    "FrameLinks",
    "link_frames",
    "link_segments",
    "segment_alternative_cost",
    "trackmate_percentile",
    "lap_track",
    "track",
    "TrackingResult",
]


def __getattr__(name: str) -> Any:
    # The driver pulls in pyarrow and dask: load it only when asked for.
    if name in {"track", "TrackingResult"}:
        from vollseg_dask.tracking import driver

        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
