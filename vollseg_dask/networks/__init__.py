"""The VollSeg networks, training side: Noise2Void, the semantic U-Net, StarDist3D, model folders.

* :mod:`~vollseg_dask.networks.n2v` - Noise2Void (blind-spot masking) on csbdeep's U-Net;
* :mod:`~vollseg_dask.networks.unet` - the semantic U-Net (sigmoid, binary cross-entropy);
* :mod:`~vollseg_dask.networks.training` - patches (.npz) and training from a :class:`TrainingConfig`;
* :mod:`~vollseg_dask.networks.thresholds` - StarDist threshold optimisation on validation volumes;
* :mod:`~vollseg_dask.networks.folders` - model folder validation/loading and the bundled models.

Names are loaded lazily: importing this package imports neither TensorFlow, csbdeep nor stardist.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "N2V": "vollseg_dask.networks.n2v",
    "N2VConfig": "vollseg_dask.networks.n2v",
    "train_n2v": "vollseg_dask.networks.n2v",
    "n2v_mask_batch": "vollseg_dask.networks.n2v",
    "UNet": "vollseg_dask.networks.unet",
    "UNetConfig": "vollseg_dask.networks.unet",
    "train_unet": "vollseg_dask.networks.unet",
    "unet_target": "vollseg_dask.networks.unet",
    "TrainingConfig": "vollseg_dask.networks.training",
    "TrainingResult": "vollseg_dask.networks.training",
    "train_from_config": "vollseg_dask.networks.training",
    "train_stardist": "vollseg_dask.networks.training",
    "generate_patches": "vollseg_dask.networks.training",
    "load_npz": "vollseg_dask.networks.training",
    "save_npz": "vollseg_dask.networks.training",
    "optimize_thresholds": "vollseg_dask.networks.thresholds",
    "MODEL_KINDS": "vollseg_dask.networks.folders",
    "ModelFolderInfo": "vollseg_dask.networks.folders",
    "inspect_model_folder": "vollseg_dask.networks.folders",
    "load_model_folder": "vollseg_dask.networks.folders",
    "bundled_model_dir": "vollseg_dask.networks.folders",
    "stardist_rays": "vollseg_dask.networks.folders",
    "normalize": "vollseg_dask.networks._unet",
    "volume_percentiles": "vollseg_dask.networks._unet",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vollseg_dask.networks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
