"""napari plugin of vollseg-dask (npe2 manifest ``napari.yaml`` in this folder).

- Reader (:mod:`vollseg_dask.napari._reader`): a run's output folder → image, labels and tracks layers.
- Widget :class:`TrackAnalysisWidget` (:mod:`vollseg_dask.napari._widget`): track list, highlighted
  track, distance-to-boundary and intensity/FFT plots, saving plots, CSV and an animation.

Registering the plugin: the package declares ``[project.entry-points."napari.manifest"]``
``vollseg-dask = "vollseg_dask.napari:napari.yaml"``. Importing this package imports neither napari
nor Qt; the widget module does (install with ``pip install 'vollseg-dask[napari]'``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrackAnalysisWidget", "get_reader", "read_run", "find_run_parts"]


def __getattr__(name: str) -> Any:
    if name == "TrackAnalysisWidget":
        from vollseg_dask.errors import require

        require("napari", "napari")
        from vollseg_dask.napari._widget import TrackAnalysisWidget

        return TrackAnalysisWidget
    if name in ("get_reader", "read_run", "find_run_parts"):
        from vollseg_dask.napari import _reader

        return getattr(_reader, name)
    raise AttributeError(f"module 'vollseg_dask.napari' has no attribute {name!r}")
