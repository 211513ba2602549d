"""vollseg-dask: chunked VollSeg segmentation and TrackMate-style tracking of 3D+t microscopy.

Importing the package is cheap: TensorFlow, napari and Qt are loaded only when a
feature that needs them is first used.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from vollseg_dask.errors import VollSegError

try:
    __version__ = version("vollseg-dask")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["VollSegError", "__version__"]
