"""Noise2Void (Krull, Buchholz & Jug, CVPR 2019) on csbdeep's U-Net, inside the project.

The ``n2v`` package cannot be installed beside stardist 0.9 (DESIGN §5), so the method lives here:

* **Blind-spot masking** (:func:`n2v_mask_batch`): in every training patch a fraction
  ``perc_pix`` % of the voxels is chosen at random (without repetition); each chosen voxel's
  value is replaced by the *original* value of a random other voxel of the
  ``(2r+1)^3`` window around it (never itself; reflected at the patch border, so it stays in the
  window). The network input is the patch with these replacements.
* **Loss only on masked voxels** (:func:`masked_mse`): the target holds the original patch and a
  mask channel; the loss is the mean squared error over masked voxels only, so the network
  cannot learn the identity and learns to predict a voxel from its surroundings.
* Trained from the noisy data alone. Saved as a standard model folder (``config.json`` +
  ``weights_best.h5``, see :mod:`vollseg_dask.networks._unet`); :meth:`N2V.load` and
  :meth:`N2V.predict` (csbdeep's overlapping tiling for large volumes).

Pure NumPy kernels (:func:`n2v_sample_positions`, :func:`n2v_neighbour_positions`,
:func:`n2v_mask_batch`, :func:`masked_mse_numpy`) are separate from the Keras model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from vollseg_dask.errors import ConfigError, InvalidDataError, ShapeError
from vollseg_dask.networks._unet import (
    KerasUNet,
    UNetFolderConfig,
    denormalize,
    normalize,
    volume_percentiles,
)
from vollseg_dask.networks.data import augment_together

__all__ = [
    "N2VConfig",
    "N2V",
    "n2v_sample_positions",
    "n2v_neighbour_positions",
    "n2v_mask_batch",
    "masked_mse",
    "masked_mse_numpy",
    "train_n2v",
]

LOG = logging.getLogger(__name__)


class N2VConfig(UNetFolderConfig):
    """``config.json`` of a Noise2Void model folder."""

    model_type: Literal["vollseg_dask.n2v"] = Field("vollseg_dask.n2v", description="Folder kind.")
    unet_last_activation: Literal["linear", "relu", "sigmoid"] = Field(
        "linear", description="Output activation (N2V regresses intensities: linear).")
    n2v_perc_pix: float = Field(0.2, gt=0, le=50, description="Percent of voxels masked per patch.")
    n2v_neighborhood_radius: int = Field(2, ge=1, le=10,
                                         description="Radius r of the (2r+1)^3 replacement window.")


# ---------------------------------------------------------------------------------------- kernels
def n2v_sample_positions(shape: Sequence[int], perc_pix: float, rng: np.random.Generator) -> np.ndarray:
    """Random distinct voxels of a patch to mask.

    Parameters
    ----------
    shape : sequence of int
        Spatial patch shape, e.g. (z, y, x).
    perc_pix : float
        Percent of voxels to mask, in (0, 100]; at least one voxel is masked.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, shape (n, len(shape)), int64
        Distinct coordinates, ``n = max(1, round(prod(shape) * perc_pix / 100))``.
    """
    shape = tuple(int(s) for s in shape)
    if not shape or min(shape) < 1:
        raise ShapeError(f"invalid patch shape {shape}")
    if not 0 < perc_pix <= 100:
        raise ConfigError(f"n2v_perc_pix must be in (0, 100], got {perc_pix}")
    size = int(np.prod(shape))
    n = max(1, int(round(size * perc_pix / 100.0)))
    flat = rng.choice(size, size=n, replace=False)
    return np.stack(np.unravel_index(np.sort(flat), shape), axis=-1).astype(np.int64)


def n2v_neighbour_positions(coords: np.ndarray, shape: Sequence[int], radius: int,
                            rng: np.random.Generator) -> np.ndarray:
    """For each coordinate, a uniformly random *other* voxel of its ``(2r+1)^d`` window.

    Offsets are drawn uniformly among the window's non-zero offsets (the radius is clipped to
    ``size - 1`` per axis); a neighbour outside the patch is reflected back in (``-1 -> 1``), which
    keeps it inside the window; a draw that reflects onto the voxel itself is redrawn.

    Parameters
    ----------
    coords : numpy.ndarray, shape (n, d), int
        Voxels to replace.
    shape : sequence of int
        Spatial patch shape (d values).
    radius : int
        Window radius r >= 1 in voxels.
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, shape (n, d), int64
        Neighbour coordinates, each differing from its voxel and within ``r`` on every axis.
    """
    coords = np.asarray(coords, dtype=np.int64)
    shape_a = np.asarray(shape, dtype=np.int64)
    if coords.ndim != 2 or coords.shape[1] != len(shape_a):
        raise ShapeError(f"coords of shape {coords.shape} do not match a {len(shape_a)}-d patch")
    if radius < 1:
        raise ConfigError(f"n2v_neighborhood_radius must be >= 1, got {radius}")
    if (shape_a <= 1).all():
        raise ShapeError(f"patch of shape {tuple(shape)} has no neighbours to sample")
    radii = np.minimum(int(radius), shape_a - 1)
    window = 2 * radii + 1
    n_win = int(np.prod(window))
    centre = int(np.ravel_multi_index(tuple(radii), tuple(window)))
    out = np.empty_like(coords)
    todo = np.arange(len(coords))
    while todo.size:
        idx = rng.integers(0, n_win - 1, size=todo.size)
        idx = idx + (idx >= centre)  # skip the centre: uniform over the other offsets
        off = np.stack(np.unravel_index(idx, tuple(window)), axis=-1) - radii
        nb = coords[todo] + off
        nb = np.abs(nb)
        nb = np.where(nb >= shape_a, 2 * (shape_a - 1) - nb, nb)
        same = (nb == coords[todo]).all(axis=1)
        out[todo[~same]] = nb[~same]
        todo = todo[same]
    return out


def n2v_mask_batch(patches: np.ndarray, perc_pix: float, radius: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blind-spot inputs and masked targets for a batch of single-channel patches.

    Parameters
    ----------
    patches : numpy.ndarray, shape (B, *spatial), float
        Normalised patches.
    perc_pix : float
        Percent of voxels masked per patch.
    radius : int
        Replacement window radius.
    rng : numpy.random.Generator

    Returns
    -------
    X : numpy.ndarray, shape (B, *spatial, 1), float32
        Patches whose masked voxels hold the original value of a random neighbour.
    Y : numpy.ndarray, shape (B, *spatial, 2), float32
        Channel 0: the original patches; channel 1: 1.0 at masked voxels, 0.0 elsewhere.
    """
    p = np.asarray(patches, dtype=np.float32)
    if p.ndim < 2:
        raise ShapeError(f"expected a batch (B, *spatial), got shape {p.shape}")
    X = p.copy()
    mask = np.zeros_like(p)
    spatial = p.shape[1:]
    for b in range(p.shape[0]):
        pos = n2v_sample_positions(spatial, perc_pix, rng)
        nb = n2v_neighbour_positions(pos, spatial, radius, rng)
        pos_t, nb_t = tuple(pos.T), tuple(nb.T)
        X[b][pos_t] = p[b][nb_t]
        mask[b][pos_t] = 1.0
    return X[..., None], np.stack([p, mask], axis=-1)


def masked_mse_numpy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Reference of :func:`masked_mse`: mean of ``(target - pred)^2`` over masked voxels.

    Parameters
    ----------
    y_true : numpy.ndarray, shape (..., 2)
        Target (channel 0) and mask (channel 1).
    y_pred : numpy.ndarray, shape (..., 1)
    """
    t, m = y_true[..., 0], y_true[..., 1]
    d = (t - y_pred[..., 0]) ** 2
    return float((d * m).sum() / max(m.sum(), 1.0))


def masked_mse(y_true, y_pred):  # noqa: ANN001 - Keras tensors
    """Keras loss: squared error averaged over the masked voxels of the batch only.

    ``y_true`` has shape (B, z, y, x, 2) (target, mask), ``y_pred`` (B, z, y, x, 1).
    """
    import keras.ops as ops

    target = y_true[..., 0]
    mask = y_true[..., 1]
    pred = y_pred[..., 0]
    return ops.sum(mask * ops.square(target - pred)) / ops.maximum(ops.sum(mask), 1.0)


# ---------------------------------------------------------------------------------------- model
class N2V(KerasUNet):
    """Noise2Void denoiser: a linear-output csbdeep U-Net trained with blind-spot masking.

    Use :meth:`N2V.load` for a trained folder, :func:`train_n2v` to train one.
    """

    config_class: ClassVar[type[UNetFolderConfig]] = N2VConfig
    model_type: ClassVar[str] = "vollseg_dask.n2v"
    config: N2VConfig

    def predict(self, image: np.ndarray, lo: float | None = None, hi: float | None = None,
                n_tiles: tuple[int, int, int] | None = None) -> np.ndarray:
        """Denoise a volume.

        Parameters
        ----------
        image : numpy.ndarray, shape (z, y, x), any real dtype
        lo, hi : float or None
            Intensities mapped to 0 and 1 (the time point's ``norm_pmin``/``norm_pmax``
            percentiles). ``None``: computed from ``image`` itself (only right for a whole volume).
        n_tiles : tuple of 3 int or None
            Tiles per axis for large volumes.

        Returns
        -------
        numpy.ndarray, shape (z, y, x), float32
            Denoised intensities in the input's units.
        """
        image = np.asarray(image)
        if lo is None or hi is None:
            lo, hi = volume_percentiles(image, self.config.norm_pmin, self.config.norm_pmax)
        y = self._predict_normalized(normalize(image, lo, hi), n_tiles=n_tiles)
        return denormalize(y, lo, hi)

    def predict_normalized(self, x: np.ndarray, n_tiles: tuple[int, int, int] | None = None) -> np.ndarray:
        """Denoise an already normalised volume (z, y, x) and return it normalised (float32)."""
        return self._predict_normalized(x, n_tiles=n_tiles)

    def train(self, patches: np.ndarray, validation: np.ndarray | None = None, *, epochs: int,
              steps_per_epoch: int, batch_size: int = 4, learning_rate: float = 4e-4, seed: int = 0,
              augment: bool = True, verbose: int = 0) -> dict[str, list[float]]:
        """Train on normalised noisy patches (no clean targets).

        Parameters
        ----------
        patches : numpy.ndarray, shape (N, z, y, x), float32
            Normalised training patches; each spatial size a multiple of ``2 ** unet_n_depth``.
        validation : numpy.ndarray, shape (M, z, y, x) or None
            Normalised validation patches (masked once, deterministically); ``None`` uses
            the training loss for checkpointing.
        epochs, steps_per_epoch, batch_size, learning_rate
            Training schedule (Adam).
        seed : int
            Seed of masking and augmentation.

        Returns
        -------
        dict
            Keras history (``loss``, ``val_loss`` per epoch).
        """
        p = np.asarray(patches, np.float32)
        if p.ndim != 4 or len(p) == 0:
            raise ShapeError(f"N2V patches must have shape (N, z, y, x), got {p.shape}")
        if any(s % self.div_by for s in p.shape[1:]):
            raise ShapeError(f"N2V patch shape {p.shape[1:]} must be a multiple of {self.div_by} on every axis")
        if not np.isfinite(p).all():
            raise InvalidDataError("N2V training patches hold NaN or Inf")
        c = self.config
        rng = np.random.default_rng(seed)

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            while True:
                idx = rng.integers(0, len(p), size=batch_size)
                b = np.stack([augment_together((p[i],), rng)[0] if augment else p[i] for i in idx])
                yield n2v_mask_batch(b, c.n2v_perc_pix, c.n2v_neighborhood_radius, rng)

        val = None
        if validation is not None and len(validation):
            v = np.asarray(validation, np.float32)
            val = n2v_mask_batch(v, c.n2v_perc_pix, c.n2v_neighborhood_radius, np.random.default_rng(seed + 1))
        self._compile(masked_mse, learning_rate)
        c.train_batch_size = int(batch_size)
        c.train_learning_rate = float(learning_rate)
        c.train_patch_shape = tuple(int(s) for s in p.shape[1:])
        return self._fit(batches(), val, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose)


def train_n2v(patches: np.ndarray, folder: str | os.PathLike[str] | None, config: N2VConfig | None = None,
              validation: np.ndarray | None = None, **train_kwargs) -> N2V:
    """Build an :class:`N2V` from ``config`` (default :class:`N2VConfig`), train it, save it.

    Parameters
    ----------
    patches, validation : numpy.ndarray, shape (N, z, y, x), float32
        Normalised noisy patches.
    folder : path or None
        Model folder to write (``None``: keep in memory only).
    config : N2VConfig or None
    **train_kwargs
        Passed to :meth:`N2V.train` (``epochs``, ``steps_per_epoch``, ...).
    """
    model = N2V(config or N2VConfig(), folder)
    model.train(patches, validation, **train_kwargs)
    return model
