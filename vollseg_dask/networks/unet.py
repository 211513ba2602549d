"""The VollSeg semantic U-Net: csbdeep's CARE U-Net with a sigmoid output, trained as binary segmentation.

Target (:func:`unet_target`): the cells' voxels minus a boundary between *touching* cells, so that
the connected components of the predicted mask separate cells (26-connectivity); the border to the
background is kept. Two boundary modes:

* ``"one_sided"`` (default): of every pair of 26-neighbouring voxels of two different cells, the
  raster-earlier voxel is background: a one-voxel gap, the least that separates the cells, so the
  mask loses the least volume (cells in anisotropic stacks are often only ~5 voxels deep in z).
  This rule is orientation dependent: targets of flipped/rotated patches are recomputed from the
  transformed labels, never transformed themselves.
* ``"inner"``: both voxels of every such pair (``skimage.segmentation.find_boundaries(mode="inner")``
  restricted to cell-cell contacts): a symmetric two-voxel gap.

``boundary_width`` > 1 dilates the boundary within the cells by ``boundary_width - 1``;
``boundary_width=0`` gives the plain foreground (``labels > 0``) of the original VollSeg.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from vollseg_dask.errors import DTypeError, InvalidDataError, ShapeError
from vollseg_dask.networks._unet import KerasUNet, UNetFolderConfig, normalize, volume_percentiles
from vollseg_dask.networks.data import augment_together

__all__ = ["UNetConfig", "UNet", "unet_target", "touching_boundaries", "train_unet"]


BoundaryMode = Literal["one_sided", "inner"]


class UNetConfig(UNetFolderConfig):
    """``config.json`` of a semantic U-Net model folder."""

    model_type: Literal["vollseg_dask.unet"] = Field("vollseg_dask.unet", description="Folder kind.")
    unet_last_activation: Literal["linear", "relu", "sigmoid"] = Field(
        "sigmoid", description="Output activation: sigmoid gives a foreground probability.")
    boundary_width: int = Field(1, ge=0, le=10,
                                description="Width (voxels) of the cell-cell boundary removed from the target.")
    boundary_mode: BoundaryMode = Field(
        "one_sided", description="one_sided: the raster-earlier voxel of each touching pair; inner: both voxels.")
    threshold: float = Field(0.5, gt=0, lt=1, description="Foreground probability threshold of the mask.")


def _forward_half(fp: np.ndarray) -> np.ndarray:
    """Footprint offsets whose first non-zero component is +1 (the raster-later neighbours)."""
    out = np.zeros_like(fp)
    c = np.array(fp.shape) // 2
    for idx in zip(*np.nonzero(fp), strict=True):
        d = np.array(idx) - c
        nz = d[d != 0]
        if nz.size and nz[0] > 0:
            out[idx] = True
    return out


def touching_boundaries(labels: np.ndarray, connectivity: int | None = None, one_sided: bool = False) -> np.ndarray:
    """Voxels of a cell that touch a *different* cell (not the background).

    Parameters
    ----------
    labels : numpy.ndarray, shape (z, y, x) (any dimensionality), integer
        Instance labels, 0 = background.
    connectivity : int or None
        Neighbourhood (``scipy.ndimage.generate_binary_structure``): 1 = faces, ndim = full
        (default).
    one_sided : bool
        Only look at raster-later neighbours (offsets whose first non-zero component is +1): of
        each touching pair only the earlier voxel is marked.

    Returns
    -------
    numpy.ndarray, same shape, bool
        True where a voxel of label ``l > 0`` has a (forward, if ``one_sided``) neighbour of
        label ``m > 0``, ``m != l``; outside the array counts as background. Two-sided, it equals
        ``skimage.segmentation.find_boundaries(labels, mode="inner")`` minus the voxels whose only
        foreign neighbour is background.
    """
    from scipy import ndimage as ndi

    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise DTypeError(f"labels must be integers, got dtype {lab.dtype}")
    fp = ndi.generate_binary_structure(lab.ndim, lab.ndim if connectivity is None else connectivity)
    if one_sided:
        fp = _forward_half(fp)
    lab64 = lab.astype(np.int64)
    # background becomes a value above every label (not int64's max: scipy's min filter overflows on it)
    big = int(lab64.max(initial=0)) + 1
    hi = ndi.maximum_filter(lab64, footprint=fp, mode="constant", cval=0)
    lo = ndi.minimum_filter(np.where(lab64 == 0, big, lab64), footprint=fp, mode="constant", cval=big)
    fg = lab64 > 0
    return fg & (((hi != lab64) & (hi != 0)) | ((lo != lab64) & (lo != big)))


def unet_target(labels: np.ndarray, boundary_width: int = 1, mode: BoundaryMode = "one_sided",
                connectivity: int | None = None) -> np.ndarray:
    """Binary U-Net target: cells minus the boundaries between touching cells.

    Parameters
    ----------
    labels : numpy.ndarray, shape (z, y, x), integer
        Instance labels, 0 = background.
    boundary_width : int
        0: plain ``labels > 0``. Widths above 1 dilate the boundary within the cells by
        ``boundary_width - 1`` (same connectivity).
    mode : {"one_sided", "inner"}
        See the module docstring.
    connectivity : int or None
        Neighbourhood of the contact test and of the dilation (default: full, which separates
        the cells' components under 26-connectivity).

    Returns
    -------
    numpy.ndarray, same shape, uint8 (0/1)
        Outside the array counts as background: compute on a region grown by
        ``boundary_width + 1`` voxels and crop, to get what the whole volume gives.
    """
    from scipy import ndimage as ndi

    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise DTypeError(f"labels must be integers, got dtype {lab.dtype}")
    if boundary_width < 0:
        raise ValueError(f"boundary_width must be >= 0, got {boundary_width}")
    if mode not in ("one_sided", "inner"):
        raise ValueError(f"boundary mode must be 'one_sided' or 'inner', got {mode!r}")
    fg = lab > 0
    if boundary_width == 0:
        return fg.astype(np.uint8)
    b = touching_boundaries(lab, connectivity, one_sided=mode == "one_sided")
    if boundary_width > 1:
        fp = ndi.generate_binary_structure(lab.ndim, lab.ndim if connectivity is None else connectivity)
        b = ndi.binary_dilation(b, structure=fp, iterations=boundary_width - 1, mask=fg)
    return (fg & ~b).astype(np.uint8)


class UNet(KerasUNet):
    """Semantic U-Net giving a foreground probability (sigmoid), trained with binary cross-entropy."""

    config_class: ClassVar[type[UNetFolderConfig]] = UNetConfig
    model_type: ClassVar[str] = "vollseg_dask.unet"
    config: UNetConfig

    def predict(self, image: np.ndarray, lo: float | None = None, hi: float | None = None,
                n_tiles: tuple[int, int, int] | None = None) -> np.ndarray:
        """Foreground probability of a volume.

        Parameters
        ----------
        image : numpy.ndarray, shape (z, y, x), any real dtype
        lo, hi : float or None
            Intensities mapped to 0 and 1 (the time point's ``norm_pmin``/``norm_pmax``
            percentiles); ``None``: computed from ``image`` itself (only right for a whole volume).
        n_tiles : tuple of 3 int or None

        Returns
        -------
        numpy.ndarray, shape (z, y, x), float32 in [0, 1]
        """
        image = np.asarray(image)
        if lo is None or hi is None:
            lo, hi = volume_percentiles(image, self.config.norm_pmin, self.config.norm_pmax)
        return self._predict_normalized(normalize(image, lo, hi), n_tiles=n_tiles)

    def predict_normalized(self, x: np.ndarray, n_tiles: tuple[int, int, int] | None = None) -> np.ndarray:
        """Foreground probability of an already normalised volume (z, y, x), float32."""
        return self._predict_normalized(x, n_tiles=n_tiles)

    def predict_mask(self, image: np.ndarray, lo: float | None = None, hi: float | None = None,
                     n_tiles: tuple[int, int, int] | None = None) -> np.ndarray:
        """Binary mask ``probability > config.threshold`` (bool, shape of ``image``)."""
        return self.predict(image, lo, hi, n_tiles) > self.config.threshold

    def train(self, X: np.ndarray, Y: np.ndarray, validation: tuple[np.ndarray, np.ndarray] | None = None, *,
              epochs: int, steps_per_epoch: int, batch_size: int = 4, learning_rate: float = 4e-4,
              seed: int = 0, augment: bool = True, verbose: int = 0) -> dict[str, list[float]]:
        """Train on normalised patches and binary targets.

        Parameters
        ----------
        X : numpy.ndarray, shape (N, z, y, x), float32
            Normalised image patches (spatial sizes multiples of ``2 ** unet_n_depth``).
        Y : numpy.ndarray, shape (N, z, y, x), 0/1
            Targets (:func:`unet_target`).
        validation : (Xv, Yv) or None
        epochs, steps_per_epoch, batch_size, learning_rate, seed, augment
            Schedule (Adam, binary cross-entropy); augmentation: flips and y-x rotations, only when
            the targets do not depend on orientation (``boundary_mode="inner"`` or width 0).
        """
        import keras

        X = np.asarray(X, np.float32)
        Y = np.asarray(Y)
        if X.ndim != 4 or X.shape != Y.shape or len(X) == 0:
            raise ShapeError(f"U-Net X {X.shape} and Y {Y.shape} must both be (N, z, y, x)")
        if any(s % self.div_by for s in X.shape[1:]):
            raise ShapeError(f"U-Net patch shape {X.shape[1:]} must be a multiple of {self.div_by} on every axis")
        if not np.isfinite(X).all():
            raise InvalidDataError("U-Net training patches hold NaN or Inf")
        Y = (Y > 0).astype(np.float32)
        rng = np.random.default_rng(seed)
        # one-sided boundaries depend on orientation: flipping a target would move them to the
        # other side, so such targets are only augmented where they are made (from the labels)
        c0 = self.config
        augment = augment and (c0.boundary_mode == "inner" or c0.boundary_width == 0)

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            while True:
                idx = rng.integers(0, len(X), size=batch_size)
                pairs = [augment_together((X[i], Y[i]), rng) if augment else (X[i], Y[i]) for i in idx]
                yield (np.stack([p[0] for p in pairs])[..., None], np.stack([p[1] for p in pairs])[..., None])

        val = None
        if validation is not None and len(validation[0]):
            val = (np.asarray(validation[0], np.float32)[..., None],
                   (np.asarray(validation[1]) > 0).astype(np.float32)[..., None])
        self._compile("binary_crossentropy", learning_rate, metrics=[keras.metrics.BinaryAccuracy(name="acc")])
        c = self.config
        c.train_batch_size = int(batch_size)
        c.train_learning_rate = float(learning_rate)
        c.train_patch_shape = tuple(int(s) for s in X.shape[1:])
        return self._fit(batches(), val, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose)


def train_unet(X: np.ndarray, Y: np.ndarray, folder: str | os.PathLike[str] | None,
               config: UNetConfig | None = None, validation: tuple[np.ndarray, np.ndarray] | None = None,
               **train_kwargs) -> UNet:
    """Build a :class:`UNet` from ``config`` (default :class:`UNetConfig`), train and save it."""
    model = UNet(config or UNetConfig(), folder)
    model.train(X, Y, validation, **train_kwargs)
    return model
