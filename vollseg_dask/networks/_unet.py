"""Shared machinery of the project's csbdeep-U-Net models (semantic U-Net and Noise2Void).

Both are csbdeep's CARE U-Net (:func:`csbdeep.internals.nets.common_unet`: 3D convolutions,
isotropic 2x pooling, ``unet_n_depth`` levels, ``unet_n_first`` filters doubling per level),
held by composition so that this module imports neither TensorFlow nor csbdeep.

A model folder holds

* ``config.json`` - the model's :class:`UNetFolderConfig` subclass as JSON (csbdeep's key
  names for the architecture, plus ``model_type``, normalisation and training records);
* ``weights_best.h5`` - Keras weights in the legacy HDF5 layout (what csbdeep 0.8.2 and
  stardist 0.9.2 write under Keras 3 for a name not ending in ``.weights.h5``; loaded back by
  ``keras.Model.load_weights``); ``weights_last.h5`` - the weights after the last epoch.

Intensities: a network sees ``(x - lo) / (hi - lo)`` where ``lo``/``hi`` are the
``norm_pmin``/``norm_pmax`` percentiles of the *whole* time point (the segmentation engine passes
its exact global percentiles; never per-tile values).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from vollseg_dask.config import StrictModel
from vollseg_dask.errors import ConfigError, InvalidDataError, ModelNotFoundError, ShapeError

__all__ = [
    "UNetFolderConfig",
    "KerasUNet",
    "normalize",
    "denormalize",
    "volume_percentiles",
    "WEIGHTS_BEST",
    "WEIGHTS_LAST",
    "CONFIG_JSON",
]

LOG = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
WEIGHTS_BEST = "weights_best.h5"
WEIGHTS_LAST = "weights_last.h5"

#: csbdeep's receptive-field radii (voxels) of ``common_unet`` for (depth, kernel, pool=2)
_RF_POOL2 = {(1, 3): 9, (1, 5): 17, (1, 7): 25, (2, 3): 22, (2, 5): 43, (2, 7): 62,
             (3, 3): 46, (3, 5): 92, (3, 7): 138, (4, 3): 94, (4, 5): 188, (4, 7): 282}


class UNetFolderConfig(StrictModel):
    """Contents of ``config.json`` of a project U-Net model folder (common part)."""

    model_type: str = Field(description="Which model this folder holds (set by the subclass).")
    axes: Literal["ZYXC"] = Field("ZYXC", description="Network axes (csbdeep convention, channel last).")
    n_dim: Literal[3] = Field(3, description="Spatial dimensions of the network.")
    n_channel_in: int = Field(1, ge=1, description="Input channels.")
    n_channel_out: int = Field(1, ge=1, description="Output channels.")
    unet_n_depth: int = Field(2, ge=1, le=4, description="U-Net levels (NetworkDepth).")
    unet_kern_size: int = Field(3, ge=1, description="Convolution kernel size, all axes (Kernel).")
    unet_n_first: int = Field(16, ge=1, description="Filters at the first level (startfilter).")
    unet_residual: bool = Field(False, description="Add the input to the output before the activation.")
    unet_last_activation: Literal["linear", "relu", "sigmoid"] = Field(
        "linear", description="Activation of the output layer.")
    norm_pmin: float = Field(1.0, ge=0, le=100, description="Low percentile mapped to 0 (per time point).")
    norm_pmax: float = Field(99.8, ge=0, le=100, description="High percentile mapped to 1 (per time point).")
    voxel_size: tuple[float, float, float] | None = Field(
        None, description="Voxel size (z, y, x) in micrometres of the training data, if known.")
    train_epochs: int | None = Field(None, description="Epochs trained (record).")
    train_steps_per_epoch: int | None = Field(None, description="Steps per epoch (record).")
    train_batch_size: int | None = Field(None, description="Batch size (record).")
    train_learning_rate: float | None = Field(None, description="Adam learning rate (record).")
    train_patch_shape: tuple[int, int, int] | None = Field(None, description="Training patch (z, y, x).")
    train_seconds: float | None = Field(None, description="Wall-clock training time in seconds (record).")
    train_data: str | None = Field(None, description="Free text: what the model was trained on.")
    vollseg_dask_version: str | None = Field(None, description="Package version that wrote the folder.")

    @field_validator("unet_kern_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 != 1:
            raise ValueError(f"unet_kern_size must be odd, got {v}")
        return v


def volume_percentiles(image: np.ndarray, pmin: float, pmax: float) -> tuple[float, float]:
    """Percentiles of a whole volume (``np.percentile``, linear interpolation).

    Parameters
    ----------
    image : numpy.ndarray, any shape
        A whole time point (never a tile of one).
    pmin, pmax : float
        Percentiles in [0, 100].

    Returns
    -------
    (float, float)
        ``(lo, hi)`` in the image's intensity units.
    """
    arr = np.asarray(image)
    if arr.size == 0:
        raise InvalidDataError("cannot compute percentiles of an empty image")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidDataError("image holds NaN or Inf values")
    lo, hi = np.percentile(arr, [pmin, pmax])
    return float(lo), float(hi)


def normalize(image: np.ndarray, lo: float, hi: float, eps: float = 1e-20) -> np.ndarray:
    """Map intensities linearly so that ``lo -> 0`` and ``hi -> 1`` (csbdeep's ``normalize_mi_ma``).

    Parameters
    ----------
    image : numpy.ndarray, any shape, any real dtype
    lo, hi : float
        Intensities (image units) mapped to 0 and 1.

    Returns
    -------
    numpy.ndarray, same shape, float32
    """
    x = np.asarray(image, dtype=np.float32)
    return ((x - np.float32(lo)) / np.float32(hi - lo + eps)).astype(np.float32, copy=False)


def denormalize(x: np.ndarray, lo: float, hi: float, eps: float = 1e-20) -> np.ndarray:
    """Inverse of :func:`normalize` (float32)."""
    return (np.asarray(x, np.float32) * np.float32(hi - lo + eps) + np.float32(lo)).astype(np.float32)


def _package_version() -> str:
    from vollseg_dask import __version__

    return __version__


class _BestWeights:
    """Keras callback factory: save the legacy-HDF5 weights at the lowest ``val_loss`` (and last)."""

    @staticmethod
    def make(model: KerasUNet, folder: Path) -> Any:
        import keras

        class BestWeights(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.best = np.inf

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                logs = logs or {}
                val = logs.get("val_loss", logs.get("loss"))
                if val is not None and np.isfinite(val) and val < self.best:
                    self.best = float(val)
                    model.save_weights(folder / WEIGHTS_BEST)

        return BestWeights()


class KerasUNet:
    """A csbdeep ``common_unet`` with its folder config; base of :class:`UNet` and :class:`N2V`.

    Parameters
    ----------
    config : UNetFolderConfig
        Architecture, normalisation and records.
    folder : path or None
        Model folder (where :meth:`save` writes and :meth:`load` read).
    """

    config_class: ClassVar[type[UNetFolderConfig]] = UNetFolderConfig
    model_type: ClassVar[str] = ""

    def __init__(self, config: UNetFolderConfig, folder: str | os.PathLike[str] | None = None) -> None:
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        if config.model_type != self.model_type:
            raise ConfigError(f"config model_type {config.model_type!r} is not {self.model_type!r}")
        self.config = config
        self.folder = Path(folder) if folder is not None else None
        self.keras_model = self._build()

    # ------------------------------------------------------------------ building / IO
    def _build(self) -> Any:
        from vollseg_dask.networks._tf import import_tf

        import_tf()
        from csbdeep.internals.nets import common_unet

        c = self.config
        return common_unet(n_dim=3, n_depth=c.unet_n_depth, kern_size=c.unet_kern_size,
                           n_first=c.unet_n_first, n_channel_out=c.n_channel_out,
                           residual=c.unet_residual, prob_out=False,
                           last_activation=c.unet_last_activation)((None, None, None, c.n_channel_in))

    @property
    def div_by(self) -> int:
        """Each spatial size fed to the network must be a multiple of this (2 ** depth)."""
        return 2 ** self.config.unet_n_depth

    @property
    def halo(self) -> tuple[int, int, int]:
        """Receptive-field radius (z, y, x) in voxels: csbdeep's ``tile_overlap`` for this U-Net."""
        key = (self.config.unet_n_depth, self.config.unet_kern_size)
        if key not in _RF_POOL2:
            raise ConfigError(f"no receptive field known for depth/kernel {key}")
        r = _RF_POOL2[key]
        return (r, r, r)

    def save_weights(self, path: str | os.PathLike[str]) -> Path:
        """Write the weights as legacy Keras HDF5 (the layout csbdeep writes under Keras 3)."""
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        with h5py.File(tmp, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, self.keras_model)
        os.replace(tmp, p)
        return p

    def save_config(self, folder: str | os.PathLike[str] | None = None) -> Path:
        """Write ``config.json`` into the model folder."""
        folder = Path(folder) if folder is not None else self.folder
        if folder is None:
            raise ConfigError("no model folder given")
        folder.mkdir(parents=True, exist_ok=True)
        if self.config.vollseg_dask_version is None:
            self.config.vollseg_dask_version = _package_version()
        path = folder / CONFIG_JSON
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.config.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def save(self, folder: str | os.PathLike[str] | None = None) -> Path:
        """Write ``config.json`` and ``weights_best.h5``; returns the folder."""
        folder = Path(folder) if folder is not None else self.folder
        if folder is None:
            raise ConfigError("no model folder given")
        self.folder = folder
        self.save_config(folder)
        self.save_weights(folder / WEIGHTS_BEST)
        return folder

    @classmethod
    def read_config(cls, folder: str | os.PathLike[str]) -> UNetFolderConfig:
        """Read and validate ``config.json`` of ``folder`` (no TensorFlow)."""
        folder = Path(folder)
        path = folder / CONFIG_JSON
        if not folder.is_dir():
            raise ModelNotFoundError(f"model folder not found: {folder}")
        if not path.is_file():
            raise ModelNotFoundError(f"model folder {folder} has no {CONFIG_JSON}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        kind = data.get("model_type") if isinstance(data, dict) else None
        if kind != cls.model_type:
            raise ConfigError(f"{path} holds model_type {kind!r}, expected {cls.model_type!r} "
                              f"(is this the folder of another kind of model?)")
        from vollseg_dask.config import parse_config

        return parse_config(cls.config_class, data, source=str(path))

    @classmethod
    def load(cls, folder: str | os.PathLike[str], weights: str = WEIGHTS_BEST) -> KerasUNet:
        """Build the network from ``folder/config.json`` and load ``folder/<weights>``.

        Raises
        ------
        ModelNotFoundError
            Naming the missing folder, ``config.json`` or weights file.
        ConfigError
            If the folder holds another kind of model.
        """
        folder = Path(folder)
        config = cls.read_config(folder)
        wpath = folder / weights
        if not wpath.is_file():
            raise ModelNotFoundError(f"model folder {folder} has no weights file {weights}")
        model = cls(config, folder)
        try:
            model.keras_model.load_weights(str(wpath))
        except (ValueError, KeyError, OSError) as exc:
            raise ConfigError(f"weights {wpath} do not fit the network in {folder / CONFIG_JSON}: {exc}") from exc
        return model

    # ------------------------------------------------------------------ prediction
    def _predict_normalized(self, x: np.ndarray, n_tiles: tuple[int, int, int] | None = None) -> np.ndarray:
        """Network output for a normalised volume.

        Parameters
        ----------
        x : numpy.ndarray, shape (z, y, x), float32
            Normalised input.
        n_tiles : tuple of 3 int or None
            Tiles per axis (csbdeep's overlapping tiling with receptive-field overlap).

        Returns
        -------
        numpy.ndarray, shape (z, y, x) (or (z, y, x, c) if several output channels), float32
        """
        from csbdeep.data import PadAndCropResizer
        from csbdeep.internals.predict import predict_tiled

        x = np.asarray(x, np.float32)
        if x.ndim != 3:
            raise ShapeError(f"expected a (z, y, x) volume, got shape {x.shape}")
        if n_tiles is None:
            n_tiles = (1, 1, 1)
        n_tiles = tuple(int(t) for t in n_tiles)
        if len(n_tiles) != 3 or min(n_tiles) < 1:
            raise ConfigError(f"n_tiles must be 3 positive integers, got {n_tiles}")
        axes = "ZYXC"
        resizer = PadAndCropResizer()
        div = (self.div_by,) * 3 + (1,)
        xc = resizer.before(x[..., None], axes, div)
        r = self.halo[0]
        out = predict_tiled(self.keras_model, xc, n_tiles=n_tiles + (1,), block_sizes=div,
                            tile_overlaps=(r, r, r, 0), axes_in=axes, axes_out=axes)
        out = resizer.after(out, axes)
        out = np.asarray(out, np.float32)
        return out[..., 0] if out.shape[-1] == 1 else out

    # ------------------------------------------------------------------ training
    def _compile(self, loss: Callable | str, learning_rate: float, metrics: list | None = None) -> None:
        import keras

        self.keras_model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                                 loss=loss, metrics=metrics or [])

    def _fit(self, batches: Iterator[tuple[np.ndarray, np.ndarray]],
             validation: tuple[np.ndarray, np.ndarray] | None, *, epochs: int, steps_per_epoch: int,
             verbose: int = 0) -> dict[str, list[float]]:
        """Run ``keras.Model.fit`` on a batch generator; keep the best weights in the folder."""
        import keras

        callbacks: list[Any] = [keras.callbacks.TerminateOnNaN()]
        if self.folder is not None:
            self.save_config()
            callbacks.append(_BestWeights.make(self, self.folder))
        t0 = time.perf_counter()
        hist = self.keras_model.fit(batches, validation_data=validation, epochs=int(epochs),
                                    steps_per_epoch=int(steps_per_epoch), callbacks=callbacks, shuffle=False,
                                    verbose=verbose)
        seconds = time.perf_counter() - t0
        history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        if any(not np.isfinite(v) for v in history.get("loss", [])) or not history.get("loss"):
            raise InvalidDataError(f"{type(self).__name__} training diverged (loss {history.get('loss')})")
        self.config.train_seconds = round(seconds, 2)
        self.config.train_epochs = int(epochs)
        self.config.train_steps_per_epoch = int(steps_per_epoch)
        if self.folder is not None:
            self.save_weights(self.folder / WEIGHTS_LAST)
            if not (self.folder / WEIGHTS_BEST).is_file():
                self.save_weights(self.folder / WEIGHTS_BEST)
            # continue from the best epoch, as csbdeep does after training
            self.keras_model.load_weights(str(self.folder / WEIGHTS_BEST))
            self.save_config()
        return history
