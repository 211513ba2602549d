"""StarDist probability and NMS thresholds chosen on validation volumes, written to ``thresholds.json``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vollseg_dask.errors import ConfigError, ShapeError
from vollseg_dask.networks._unet import normalize, volume_percentiles
from vollseg_dask.networks.data import TrainingSource, sources_from_files, sources_from_store

__all__ = ["optimize_thresholds", "validation_volumes"]


def validation_volumes(images: Sequence[Any] | None = None, labels: Sequence[Any] | None = None, *,
                       store: str | os.PathLike[str] | None = None, labels_name: str = "ground_truth",
                       timepoints: Sequence[int] | None = None, channel: int = 0, pmin: float = 1.0,
                       pmax: float = 99.8) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Normalised validation volumes and their labels, from arrays, files, or an OME-Zarr store.

    Parameters
    ----------
    images, labels : sequence of (array or path), optional
        Raw volumes (z, y, x) and instance labels (TIFF/.npy paths or arrays).
    store, labels_name, timepoints, channel : optional
        Instead of ``images``: an OME-Zarr image, its labels group and the time points to use.
    pmin, pmax : float
        Normalisation percentiles of each whole volume (the model's training percentiles).

    Returns
    -------
    (list of float32 (z, y, x), list of int (z, y, x))
    """
    if (images is None) == (store is None):
        raise ConfigError("give either validation images (with labels) or a store, not both / neither")
    if store is not None:
        srcs: list[TrainingSource] = sources_from_store(store, labels_name, timepoints, channel, pmin=pmin, pmax=pmax)
    else:
        if labels is None or len(labels) != len(images):
            raise ConfigError(f"need one label volume per image: {len(images)} images, "
                              f"{0 if labels is None else len(labels)} labels")
        if all(isinstance(i, (str, os.PathLike)) for i in images):
            srcs = sources_from_files(images, labels, pmin=pmin, pmax=pmax)  # type: ignore[arg-type]
        else:
            srcs = []
            for k, (img, lab) in enumerate(zip(images, labels, strict=True)):
                img, lab = np.asarray(img), np.asarray(lab)
                if img.ndim != 3 or img.shape != lab.shape:
                    raise ShapeError(f"validation pair {k}: image {img.shape} and labels {lab.shape} "
                                     f"must be the same 3D shape")
                srcs.append(TrainingSource(f"array {k}", img, lab, (1.0, 1.0, 1.0),
                                           *volume_percentiles(img, pmin, pmax)))
    full = (slice(None),) * 3
    X = [normalize(np.asarray(s.image[full]), s.lo, s.hi) for s in srcs]
    Y = [s.read_labels(full) for s in srcs]
    return X, Y


def optimize_thresholds(model_dir: str | os.PathLike[str], images: Sequence[Any] | None = None,
                        labels: Sequence[Any] | None = None, *, store: str | os.PathLike[str] | None = None,
                        labels_name: str = "ground_truth", timepoints: Sequence[int] | None = None,
                        channel: int = 0, nms_threshs: Sequence[float] = (0.3, 0.4, 0.5),
                        iou_threshs: Sequence[float] = (0.3, 0.5, 0.7),
                        n_tiles: tuple[int, int, int] | None = None, pmin: float = 1.0,
                        pmax: float = 99.8, max_candidates: int = 3000) -> dict[str, float]:
    """Optimise a StarDist3D folder's thresholds on validation volumes and write ``thresholds.json``.

    Uses stardist's ``StarDist3D.optimize_thresholds``: for each NMS threshold in ``nms_threshs``,
    the probability threshold maximising the F1 score averaged over ``iou_threshs``; the best pair
    is kept.

    Parameters
    ----------
    model_dir : path
        StarDist3D model folder (validated with :func:`~vollseg_dask.networks.folders.inspect_model_folder`).
    images, labels, store, labels_name, timepoints, channel, pmin, pmax
        Validation data, see :func:`validation_volumes`.
    nms_threshs, iou_threshs : sequence of float
        Candidates / IoU thresholds, each in (0, 1).
    n_tiles : tuple of 3 int or None
        Tiling of the prediction.
    max_candidates : int
        At most this many candidates per volume at the lowest probability tried (bounds NMS cost).

    Returns
    -------
    dict
        ``{"prob": float, "nms": float}``, as written to ``model_dir/thresholds.json``.
    """
    from vollseg_dask.networks.folders import load_model_folder
    from vollseg_dask.networks.training import optimize_stardist_thresholds

    for name, vals in (("nms_threshs", nms_threshs), ("iou_threshs", iou_threshs)):
        if not vals or any(not 0 < float(v) < 1 for v in vals):
            raise ConfigError(f"{name} must be values in (0, 1), got {list(vals)}")
    model = load_model_folder(model_dir, "stardist")
    X, Y = validation_volumes(images, labels, store=store, labels_name=labels_name, timepoints=timepoints,
                              channel=channel, pmin=pmin, pmax=pmax)
    th = optimize_stardist_thresholds(model, X, Y, tuple(float(v) for v in nms_threshs),
                                      tuple(float(v) for v in iou_threshs), n_tiles=n_tiles,
                                      max_candidates=max_candidates)
    written = Path(model_dir) / "thresholds.json"
    if not written.is_file():  # stardist writes into its logdir, which is model_dir
        raise ConfigError(f"stardist did not write {written}")
    return th
