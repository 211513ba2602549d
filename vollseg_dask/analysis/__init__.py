"""Track analysis (S9): distance to the tissue boundary, motion, intensity oscillations, divisions.

Kernels (pure NumPy/pandas): :mod:`~vollseg_dask.analysis.signal` (moving average, normalisation,
FFT), :mod:`~vollseg_dask.analysis.motion` (speed, displacement, MSD),
:mod:`~vollseg_dask.analysis.lineage` (divisions, dividing vs non-dividing, tracklet roles),
:mod:`~vollseg_dask.analysis.boundary` (distance to the tissue boundary from a mask). Whole-data
tables: :func:`analyze_tracks` (:mod:`~vollseg_dask.analysis.core`). Figures (matplotlib, Agg, no
pyplot): :mod:`~vollseg_dask.analysis.plots`. Files: :func:`write_analysis` and :func:`run_analysis`
(:mod:`~vollseg_dask.analysis.output`). ``vollseg-dask analyze`` is the command line.

Importing this package imports neither matplotlib nor napari; the plot and output modules load on
first use.
"""

from __future__ import annotations

from typing import Any

from vollseg_dask.analysis.boundary import DISTANCE_COLUMN, add_boundary_distance, boundary_distance_at
from vollseg_dask.analysis.core import (
    DEFAULT_MAX_LAG,
    TABLES,
    TrackAnalysis,
    analyze_tracks,
    default_intensity_column,
    load_track_data,
    select_track,
    trackmate_to_track_data,
)
from vollseg_dask.analysis.lineage import classify_tracks, division_events, per_frame_counts, tracklet_lineage
from vollseg_dask.analysis.motion import (
    displacement_from_start,
    mean_squared_displacement,
    path_length,
    step_speeds,
)
from vollseg_dask.analysis.signal import (
    NORMALIZATIONS,
    Spectrum,
    amplitude_spectrum,
    intensity_spectrum,
    moving_average,
    normalize_signal,
    resample_to_frames,
)

__all__ = [
    "DEFAULT_MAX_LAG",
    "DISTANCE_COLUMN",
    "NORMALIZATIONS",
    "TABLES",
    "Spectrum",
    "TrackAnalysis",
    "add_boundary_distance",
    "amplitude_spectrum",
    "analyze_tracks",
    "boundary_distance_at",
    "classify_tracks",
    "default_intensity_column",
    "displacement_from_start",
    "division_events",
    "intensity_spectrum",
    "load_track_data",
    "mean_squared_displacement",
    "moving_average",
    "normalize_signal",
    "path_length",
    "per_frame_counts",
    "resample_to_frames",
    "run_analysis",
    "select_track",
    "step_speeds",
    "trackmate_to_track_data",
    "tracklet_lineage",
    "write_analysis",
]


def __getattr__(name: str) -> Any:
    if name in ("write_analysis", "run_analysis"):
        from vollseg_dask.analysis import output

        return getattr(output, name)
    raise AttributeError(f"module 'vollseg_dask.analysis' has no attribute {name!r}")
