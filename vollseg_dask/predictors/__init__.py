"""Sources of network outputs for the segmentation engine.

:class:`~vollseg_dask.predictors.base.Predictor` is the interface (one call per (t, block));
:class:`~vollseg_dask.predictors.ground_truth.GroundTruthPredictor` derives the outputs from
ground-truth labels for tests and benchmarks. The network-backed predictor lives beside them.
Names are loaded lazily so that importing this package loads neither SciPy nor TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BlockPrediction": "vollseg_dask.predictors.base",
    "Predictor": "vollseg_dask.predictors.base",
    "validate_prediction": "vollseg_dask.predictors.base",
    "make_rays": "vollseg_dask.predictors.base",
    "GroundTruthPredictor": "vollseg_dask.predictors.ground_truth",
    "ground_truth_maps": "vollseg_dask.predictors.ground_truth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vollseg_dask.predictors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
