"""Where each stage's configuration model lives, for ``create-config`` and the run config.

Kept as dotted paths so that listing them imports nothing heavy.
"""

from __future__ import annotations

import importlib

from vollseg_dask.errors import ConfigError

#: config name -> "module:Class"
CONFIG_MODELS: dict[str, str] = {
    "run": "vollseg_dask.pipeline:RunConfig",
    "cluster": "vollseg_dask.runtime:ClusterConfig",
    "synthetic": "vollseg_dask.synthetic:SyntheticConfig",
    "segment": "vollseg_dask.segmentation:SegmentationConfig",
    "measure": "vollseg_dask.measure:MeasureConfig",
    "track": "vollseg_dask.tracking:TrackerConfig",
}


def config_model(name: str) -> type:
    """Return the pydantic model class registered under ``name``."""
    try:
        target = CONFIG_MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown config kind {name!r}; choose one of {', '.join(sorted(CONFIG_MODELS))}"
        ) from None
    module, _, cls = target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"config kind {name!r} is not available in this installation ({exc})") from exc
