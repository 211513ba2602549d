"""Chunked VollSeg segmentation (stages S1-S6): StarDist NMS, U-Net components, seed pooling,
certified block-wise watershed, size filters and relabelling.

``from vollseg_dask.segmentation import segment, SegmentationConfig``. The driver is imported
lazily, so reading the configuration model loads neither Dask nor SciPy.
"""

from __future__ import annotations

import importlib
from typing import Any

from vollseg_dask.segmentation.config import SegmentationConfig

_LAZY = {
    "segment": "vollseg_dask.segmentation.driver",
    "SegmentationResult": "vollseg_dask.segmentation.driver",
    "STAGES": "vollseg_dask.segmentation.driver",
}

__all__ = ["SegmentationConfig", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vollseg_dask.segmentation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
