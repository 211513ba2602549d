"""Training and validation volumes: TIFF folder pairs or OME-Zarr image + labels, and patch kernels.

A :class:`TrainingSource` is one 3D volume (one file, or one time point of a store) with its
instance labels and normalisation percentiles of the *whole* volume. Patches are read from it
region by region, so an OME-Zarr source is never loaded whole.

Pure kernels: :func:`sample_patch_corners`, :func:`augment_patch_pair`, :func:`add_noise`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vollseg_dask.errors import (
    ConfigError,
    DTypeError,
    InvalidDataError,
    ShapeError,
    StoreNotFoundError,
)
from vollseg_dask.networks._unet import normalize

__all__ = [
    "TrainingSource",
    "sources_from_folders",
    "sources_from_files",
    "sources_from_store",
    "anisotropy_from_voxel_size",
    "sample_patch_corners",
    "augment_patch_pair",
    "augment_together",
    "add_noise",
    "expand_region",
]

LOG = logging.getLogger(__name__)
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class TrainingSource:
    """One (z, y, x) volume with labels, read region by region.

    Attributes
    ----------
    name : str
        For messages and records (file name or ``store[t=3]``).
    image : array-like, shape (z, y, x)
        NumPy or Dask array of raw intensities.
    labels : array-like, shape (z, y, x), integer, or None
        Instance labels (0 = background).
    voxel_size : tuple of 3 float
        (z, y, x) in µm.
    lo, hi : float
        Normalisation intensities (the volume's ``pmin``/``pmax`` percentiles).
    """

    name: str
    image: Any
    labels: Any
    voxel_size: tuple[float, float, float]
    lo: float
    hi: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]

    def read_image(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        """Normalised image over ``region`` (float32)."""
        return normalize(np.asarray(self.image[region]), self.lo, self.hi)

    def read_labels(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        """Labels over ``region`` (int32; int64 if they do not fit)."""
        if self.labels is None:
            raise ConfigError(f"training source {self.name} has no labels")
        lab = np.asarray(self.labels[region])
        if lab.dtype.kind == "f":
            if not np.array_equal(lab, np.round(lab)):
                raise DTypeError(f"labels of {self.name} are not integers (dtype {lab.dtype})")
            lab = lab.astype(np.int64)
        if lab.dtype.kind not in "iub":
            raise DTypeError(f"labels of {self.name} must be integers, got dtype {lab.dtype}")
        if lab.size and lab.max() < np.iinfo(np.int32).max:
            return lab.astype(np.int32)
        return lab.astype(np.int64)


def anisotropy_from_voxel_size(voxel_size: Sequence[float]) -> tuple[float, float, float]:
    """StarDist anisotropy (z, y, x): voxel size divided by the smallest voxel size."""
    v = np.asarray(voxel_size, float)
    if v.shape != (3,) or (v <= 0).any() or not np.isfinite(v).all():
        raise ConfigError(f"voxel_size must be 3 positive numbers (z, y, x), got {tuple(voxel_size)}")
    a = v / v.min()
    return tuple(float(round(x, 6)) for x in a)  # type: ignore[return-value]


def _check_volume(name: str, image: Any, labels: Any) -> None:
    if len(image.shape) != 3:
        raise ShapeError(f"{name}: training image must be a 3D (z, y, x) volume, got shape {tuple(image.shape)}")
    if labels is not None and tuple(labels.shape) != tuple(image.shape):
        raise ShapeError(f"{name}: labels shape {tuple(labels.shape)} differs from image shape {tuple(image.shape)}")


def _percentiles(image: np.ndarray, pmin: float, pmax: float, name: str) -> tuple[float, float]:
    arr = np.asarray(image)
    if arr.size == 0:
        raise InvalidDataError(f"{name}: empty image")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidDataError(f"{name}: image holds NaN or Inf")
    lo, hi = np.percentile(arr, [pmin, pmax])
    return float(lo), float(hi)


def sources_from_files(images: Sequence[str | os.PathLike[str]], labels: Sequence[str | os.PathLike[str]] | None,
                       *, pmin: float = 1.0, pmax: float = 99.8,
                       voxel_size: Sequence[float] | None = None) -> list[TrainingSource]:
    """Sources from explicit TIFF (or ``.npy``) files; a 4D file gives one source per time point.

    Parameters
    ----------
    images : sequence of path
        Raw volumes (z, y, x) or (t, z, y, x).
    labels : sequence of path or None
        Label volumes, same order and shapes.
    pmin, pmax : float
        Normalisation percentiles of each whole volume.
    voxel_size : 3 floats or None
        (z, y, x) µm; ``None``: read from the TIFF metadata (1.0 where absent).
    """
    import tifffile

    if labels is not None and len(labels) != len(images):
        raise ConfigError(f"{len(images)} image files but {len(labels)} label files")
    out: list[TrainingSource] = []
    for i, ipath in enumerate(images):
        ipath = Path(ipath)
        if not ipath.is_file():
            raise StoreNotFoundError(f"training image not found: {ipath}")
        lpath = None if labels is None else Path(labels[i])
        if lpath is not None and not lpath.is_file():
            raise StoreNotFoundError(f"training labels not found: {lpath} (for image {ipath.name})")

        def _read(p: Path) -> np.ndarray:
            return np.load(p) if p.suffix == ".npy" else tifffile.imread(p)

        img = _read(ipath)
        lab = None if lpath is None else _read(lpath)
        vs = tuple(float(v) for v in voxel_size) if voxel_size is not None else _tiff_voxel_size(ipath)
        if img.ndim == 4:
            if lab is not None and lab.shape != img.shape:
                raise ShapeError(f"{lpath}: labels shape {lab.shape} differs from image shape {img.shape}")
            for t in range(img.shape[0]):
                name = f"{ipath.name}[t={t}]"
                lt = None if lab is None else lab[t]
                _check_volume(name, img[t], lt)
                out.append(TrainingSource(name, img[t], lt, vs, *_percentiles(img[t], pmin, pmax, name)))
        else:
            _check_volume(ipath.name, img, lab)
            out.append(TrainingSource(ipath.name, img, lab, vs, *_percentiles(img, pmin, pmax, ipath.name)))
    return out


def _tiff_voxel_size(path: Path) -> tuple[float, float, float]:
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return (1.0, 1.0, 1.0)
    from vollseg_dask.io.ingest import inspect_source

    try:
        info = inspect_source(path)
    except Exception:  # noqa: BLE001 - metadata is optional
        return (1.0, 1.0, 1.0)
    return tuple(float(info.voxel_size.get(a, 1.0)) for a in "zyx")  # type: ignore[return-value]


def sources_from_folders(base_dir: str | os.PathLike[str], raw_dir: str = "Raw", seg_dir: str = "Segmentation",
                         **kwargs: Any) -> list[TrainingSource]:
    """Sources from ``base_dir/Raw/*.tif`` and ``base_dir/Segmentation/*.tif`` with the same file names.

    Raises
    ------
    StoreNotFoundError
        A folder is missing, holds no TIFF, or an image has no label file of the same name.
    """
    base = Path(base_dir)
    raw, seg = base / raw_dir, base / seg_dir
    for d in (raw, seg):
        if not d.is_dir():
            raise StoreNotFoundError(f"training folder not found: {d}")
    images = sorted(p for p in raw.iterdir() if p.suffix.lower() in TIFF_SUFFIXES)
    if not images:
        raise StoreNotFoundError(f"no .tif files in {raw}")
    missing = [p.name for p in images if not (seg / p.name).is_file()]
    if missing:
        raise StoreNotFoundError(f"no label file in {seg} for {', '.join(missing[:5])}"
                                 + (" ..." if len(missing) > 5 else ""))
    return sources_from_files(images, [seg / p.name for p in images], **kwargs)


def sources_from_store(store: str | os.PathLike[str], labels_name: str | None = "ground_truth",
                       timepoints: Sequence[int] | None = None, channel: int = 0, *, pmin: float = 1.0,
                       pmax: float = 99.8, voxel_size: Sequence[float] | None = None) -> list[TrainingSource]:
    """One source per time point of an OME-Zarr image and its labels group (read lazily).

    Normalisation percentiles are the exact per-time-point percentiles of
    :func:`vollseg_dask.stats.global_percentiles` (computed block by block).

    Parameters
    ----------
    store : path
        OME-Zarr image store.
    labels_name : str or None
        Labels group under ``store/labels/`` (``None``: image only, e.g. for Noise2Void).
    timepoints : sequence of int or None
        Time points to use (default all).
    channel : int
        Channel when the image has a ``c`` axis.
    """
    from vollseg_dask.io.omezarr import open_image, open_labels
    from vollseg_dask.stats import global_percentiles, percentile_column

    img = open_image(store)
    lab = open_labels(store, labels_name) if labels_name else None
    axes = img.axes
    data = img.data
    if "c" in axes:
        n_c = data.shape[axes.index("c")]
        if not 0 <= channel < n_c:
            raise ConfigError(f"channel {channel} out of range: {store} has {n_c} channels")
        data = data.take(channel, axis=axes.index("c"))
        axes = axes.replace("c", "")
    ldata, laxes = (None, None) if lab is None else (lab.data, lab.axes)
    if ldata is not None and "c" in laxes:
        ldata = ldata.take(0, axis=laxes.index("c"))
        laxes = laxes.replace("c", "")
    if axes not in ("tzyx", "zyx"):
        raise ShapeError(f"{store}: training needs a 3D image (axes zyx or tzyx), got axes {img.axes!r}")
    n_t = data.shape[0] if axes == "tzyx" else 1
    ts = list(range(n_t)) if timepoints is None else [int(t) for t in timepoints]
    bad = [t for t in ts if not 0 <= t < n_t]
    if bad:
        raise ConfigError(f"time points {bad} out of range: {store} has {n_t}")
    vs = tuple(float(v) for v in voxel_size) if voxel_size is not None else img.voxel_size
    q = (pmin, pmax)
    table = global_percentiles(data, axes, q=q, per_axis="t" if axes == "tzyx" else "")
    cols = [percentile_column(pmin), percentile_column(pmax)]
    out = []
    for t in ts:
        row = table.loc[t] if axes == "tzyx" else table.iloc[0]
        lo, hi = float(row[cols[0]]), float(row[cols[1]])
        vol = data[t] if axes == "tzyx" else data
        lvol = None
        if ldata is not None:
            lvol = ldata[t] if laxes == "tzyx" else ldata
        name = f"{Path(store).name}[t={t}]"
        _check_volume(name, vol, lvol)
        out.append(TrainingSource(name, vol, lvol, vs, lo, hi))  # type: ignore[arg-type]
    return out


# ----------------------------------------------------------------------------------------------- kernels
def sample_patch_corners(shape: Sequence[int], patch: Sequence[int], n: int, rng: np.random.Generator,
                         accept: Callable[[tuple[slice, ...]], float] | None = None,
                         min_score: float = 0.0, max_tries: int = 20) -> list[tuple[int, ...]]:
    """Random patch positions inside a volume, preferring those with enough foreground.

    Parameters
    ----------
    shape : sequence of 3 int
        Volume shape (z, y, x).
    patch : sequence of 3 int
        Patch shape; must fit in ``shape``.
    n : int
        Number of patches.
    rng : numpy.random.Generator
    accept : callable or None
        ``accept(region) -> score`` (e.g. foreground fraction). Candidates with
        ``score >= min_score`` are taken first; if fewer than ``n`` are found within
        ``max_tries * n`` draws, the best-scoring rest fill up.

    Returns
    -------
    list of tuple of int
        ``n`` corners (z0, y0, x0).
    """
    shape = tuple(int(s) for s in shape)
    patch = tuple(int(p) for p in patch)
    if len(shape) != len(patch) or any(p > s for p, s in zip(patch, shape, strict=True)):
        raise ShapeError(f"patch {patch} does not fit in a volume of shape {shape}")
    if n < 1:
        return []
    hi = np.array(shape) - np.array(patch) + 1
    chosen: list[tuple[int, ...]] = []
    rejected: list[tuple[float, tuple[int, ...]]] = []
    for _ in range(max_tries * n):
        corner = tuple(int(c) for c in rng.integers(0, hi))
        if accept is None:
            chosen.append(corner)
        else:
            region = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
            score = float(accept(region))
            if score >= min_score:
                chosen.append(corner)
            else:
                rejected.append((score, corner))
        if len(chosen) >= n:
            return chosen
    rejected.sort(key=lambda sc: -sc[0])
    chosen.extend(c for _, c in rejected[: n - len(chosen)])
    return chosen


def expand_region(region: Sequence[slice], margin: int | Sequence[int], shape: Sequence[int]
                  ) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Grow a region by ``margin`` voxels per side, clipped to ``shape``.

    Returns
    -------
    (read, inner)
        ``read``: the grown region (global); ``inner``: where ``region`` lies inside ``read``.
    """
    m = [int(margin)] * len(shape) if np.isscalar(margin) else [int(x) for x in margin]  # type: ignore[arg-type]
    read, inner = [], []
    for s, mm, n in zip(region, m, shape, strict=True):
        a, b = max(0, s.start - mm), min(int(n), s.stop + mm)
        read.append(slice(a, b))
        inner.append(slice(s.start - a, s.stop - a))
    return tuple(read), tuple(inner)


def augment_together(arrays: Sequence[np.ndarray], rng: np.random.Generator,
                     rotate: bool = True) -> list[np.ndarray]:
    """The same random flips (each axis) and 90° y-x rotation applied to several (z, y, x) arrays.

    Parameters
    ----------
    arrays : sequence of numpy.ndarray, each shape (z, y, x) (same shape)
    rng : numpy.random.Generator
    rotate : bool
        Rotate only when y == x (shape-preserving).

    Returns
    -------
    list of numpy.ndarray (contiguous copies)
    """
    out = list(arrays)
    for ax in range(3):
        if rng.random() < 0.5:
            out = [np.flip(a, ax) for a in out]
    if rotate and out[0].shape[1] == out[0].shape[2]:
        k = int(rng.integers(4))
        out = [np.rot90(a, k, axes=(1, 2)) for a in out]
    return [np.ascontiguousarray(a) for a in out]


def augment_patch_pair(x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                       rotate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`augment_together` for an image patch and its labels."""
    xa, ya = augment_together((x, y), rng, rotate)
    return xa, ya


def add_noise(x: np.ndarray, rng: np.random.Generator, poisson_peak: float | None = None,
              gaussian_sigma: float = 0.0) -> np.ndarray:
    """Poisson (shot) then Gaussian (read) noise on a normalised patch.

    Parameters
    ----------
    x : numpy.ndarray, float
        Normalised intensities (about 0..1).
    poisson_peak : float or None
        Photons at intensity 1: ``poisson(max(x, 0) * peak) / peak`` (plus the negative part kept).
        ``None`` or 0: no shot noise.
    gaussian_sigma : float
        Standard deviation of additive Gaussian noise, in normalised units.

    Returns
    -------
    numpy.ndarray, float32, same shape
    """
    out = np.asarray(x, np.float32)
    if poisson_peak:
        pos = np.clip(out, 0, None)
        out = (rng.poisson(pos * poisson_peak) / poisson_peak + (out - pos)).astype(np.float32)
    if gaussian_sigma > 0:
        out = (out + rng.normal(0.0, gaussian_sigma, out.shape)).astype(np.float32)
    return out
