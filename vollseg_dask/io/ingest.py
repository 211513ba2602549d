"""Ingest TIFF (incl. BigTIFF, ImageJ hyperstacks, OME-TIFF), HDF5, ``.npy`` and NumPy arrays into OME-Zarr.

The input is never loaded whole: it is wrapped as a Dask array whose blocks are slabs aligned to
the output's storage units (chunks, or shards when sharded), each block read by a small picklable
reader that opens the file itself, and stored lock-free into zarr. Peak memory is a few slabs
(``max_slab_bytes`` each, times the number of threads), independent of the file size.

Axes and physical sizes come, in order of precedence, from the arguments, then the file's metadata
(ImageJ ``spacing``/``unit``/``finterval``/``tunit`` and X/YResolution tags, OME-XML
``PhysicalSize*``/``TimeIncrement``, TIFF resolution with inch/cm units, HDF5 ``element_size_um``
and ilastik ``axistags`` or dimension labels), then defaults (axes by ndim: 2→yx, 3→zyx, 4→tzyx,
5→tczyx; scale 1.0 with a warning).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vollseg_dask.errors import (
    AxesError,
    ConfigError,
    DTypeError,
    InvalidDataError,
    StoreNotFoundError,
)
from vollseg_dask.io.omezarr import (
    AXES_ORDER,
    OmeImage,
    _normalise_chunks,
    _normalise_shards,
    validate_axes,
    write_image,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import dask.array

__all__ = ["convert", "SourceInfo", "inspect_source", "resolve_source_axes", "check_source_metadata", "DEFAULT_AXES",
           "plan_slab"]

LOG = logging.getLogger(__name__)

DEFAULT_AXES = {2: "yx", 3: "zyx", 4: "tzyx", 5: "tczyx"}
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
_DEFAULT_SLAB_BYTES = 64 * 2**20

# Length units as written by ImageJ, OME and others -> micrometres per unit.
_LENGTH_TO_UM = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "\\u00b5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "mm": 1e3, "millimeter": 1e3,
    "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6,
    "inch": 25400.0, "in": 25400.0, "å": 1e-4, "angstrom": 1e-4,
}
# Time units -> NGFF (UDUNITS) names.
_TIME_UNITS = {
    "s": "second", "sec": "second", "secs": "second", "second": "second", "seconds": "second",
    "ms": "millisecond", "msec": "millisecond", "millisecond": "millisecond", "milliseconds": "millisecond",
    "min": "minute", "mins": "minute", "minute": "minute", "minutes": "minute",
    "h": "hour", "hr": "hour", "hrs": "hour", "hour": "hour", "hours": "hour", "d": "day", "day": "day",
    "days": "day", "µs": "microsecond", "us": "microsecond", "microsecond": "microsecond",
}


@dataclass(frozen=True)
class SourceInfo:
    """What an input says about itself, before user overrides.

    Attributes
    ----------
    shape : tuple of int
        Shape in the file's own axis order.
    dtype : numpy.dtype
        Element type.
    axes : str or None
        Lowercase axes in the file's order (any permutation of a subset of ``tczyx``), or None
        when the file does not say.
    voxel_size : dict of str to float
        Known sizes in µm keyed by ``"z"``, ``"y"``, ``"x"``.
    frame_interval : float or None
        Time between frames in ``time_unit``.
    time_unit : str or None
        NGFF time unit name.
    kind : str
        ``"tiff"``, ``"hdf5"``, ``"npy"``, ``"array"``.
    description : str
        File and dataset/series, for messages.
    conflicts : tuple of str
        Where the file's metadata contradict themselves or the data (e.g. ImageJ's
        channels × slices × frames against its image count), in words with the numbers.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str | None
    voxel_size: dict[str, float] = field(default_factory=dict)
    frame_interval: float | None = None
    time_unit: str | None = None
    kind: str = "array"
    description: str = "<array>"
    reader: Any = field(default=None, repr=False, compare=False)
    conflicts: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------
# Readers: picklable, open their file on first use in each process, return one slab per call.
# --------------------------------------------------------------------------------------------------


class _NpyReader:
    """Slab reader for ``.npy``: maps the file per call and copies out the slab.

    Mapping per call (instead of keeping one memmap) unmaps the pages after each slab, so the
    process's resident memory does not grow with the part of the file already read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        m = np.load(path, mmap_mode="r")
        self.shape: tuple[int, ...] = tuple(m.shape)
        self.dtype = np.dtype(m.dtype)
        self.ndim = len(self.shape)
        del m

    def __getitem__(self, key: Any) -> np.ndarray:
        m = np.load(self.path, mmap_mode="r")
        try:
            return np.array(m[key])
        finally:
            del m


class _CachedHandleReader:
    """Base of readers holding an open file per process (dropped when pickled, closed by ``close``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handle: tuple[Any, Any] | None = None  # (file object to close, array-like to slice)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _open(self) -> tuple[Any, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def array(self) -> Any:
        with self._lock:
            if self._handle is None:
                self._handle = self._open()
            return self._handle[1]

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle[0].close()
                self._handle = None

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array()[key])


class _H5Reader(_CachedHandleReader):
    def __init__(self, path: Path, dataset: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        super().__init__()
        self.path, self.dataset = path, dataset
        self.shape, self.dtype, self.ndim = shape, dtype, len(shape)

    def _open(self) -> tuple[Any, Any]:
        import h5py

        f = h5py.File(self.path, "r")
        return f, f[self.dataset]


class _TiffReader(_CachedHandleReader):
    def __init__(self, path: Path, series: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        super().__init__()
        self.path, self.series = path, series
        self.shape, self.dtype, self.ndim = shape, dtype, len(shape)

    def _open(self) -> tuple[Any, Any]:
        import tifffile
        import zarr

        tif = tifffile.TiffFile(self.path)
        # tifffile's zarr store decodes only the pages/tiles a slab touches.
        return tif, zarr.open(tif.series[self.series].aszarr(level=0), mode="r")


# --------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------


def _length_factor(unit: Any) -> float | None:
    if unit is None:
        return None
    text = str(unit).strip().lower()
    return _LENGTH_TO_UM.get(text)


def _time_unit(unit: Any) -> str | None:
    if unit is None:
        return None
    name = _TIME_UNITS.get(str(unit).strip().lower())
    if name is None:
        LOG.warning("unknown time unit %r: frame interval kept, unit recorded as 'second'", unit)
        return "second"
    return name


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _tiff_axes(axes: str) -> str | None:
    letters = axes.upper()
    if not set(letters) <= set("TZCYXS") or ("C" in letters and "S" in letters):
        return None  # tifffile's generic letters (Q, I, ...) carry no meaning
    return letters.replace("S", "C").lower()


def _tiff_info(path: Path, series: int) -> SourceInfo:
    import tifffile

    try:
        return _tiff_info_open(path, series)
    except tifffile.TiffFileError as exc:
        raise InvalidDataError(f"{path} is not a readable TIFF file ({exc}); a truncated or damaged copy?") from exc


def _check_not_truncated(tif: Any, path: Path, series: Any) -> None:
    """Refuse a TIFF whose image data reach past the end of the file (an interrupted copy)."""
    size = path.stat().st_size
    need = 0
    offset = getattr(series, "dataoffset", None)
    if offset is not None:  # contiguous data (ImageJ hyperstacks, tifffile's own writes)
        need = int(offset) + int(series.size) * np.dtype(series.dtype).itemsize
    else:
        for page in tif.pages:
            offs, counts = getattr(page, "dataoffsets", ()), getattr(page, "databytecounts", ())
            if len(offs):
                need = max(need, max(int(o) + int(c) for o, c in zip(offs, counts, strict=False)))
    if need > size:
        raise InvalidDataError(f"{path} is truncated: its image data need {need} bytes but the file has {size}; "
                               "an interrupted copy? Copy it again")


def _imagej_conflicts(tif: Any, series_shape: tuple[int, ...], series_axes: str) -> list[str]:
    """Where ImageJ's hyperstack metadata disagree with themselves or with the file's pages."""
    ij = tif.imagej_metadata or {}
    try:
        dims = {k: int(ij.get(k, 1)) for k in ("channels", "slices", "frames")}
        images = int(ij.get("images", 0)) or None
    except (TypeError, ValueError):
        return [f"ImageJ metadata hold non-integer sizes {dict(ij)}"]
    out = []
    product = dims["channels"] * dims["slices"] * dims["frames"]
    if images is not None and product != images:
        out.append(f"ImageJ metadata say channels {dims['channels']} x slices {dims['slices']} x frames "
                   f"{dims['frames']} = {product} images, but images={images}")
    planes = int(np.prod([n for n, a in zip(series_shape, series_axes, strict=False) if a not in "YXS"] or [1]))
    n_pages = len(tif.pages)
    if n_pages > 1 and planes != n_pages:
        out.append(f"the file has {n_pages} pages (planes) but was read as {series_axes} {series_shape} "
                   f"= {planes} planes")
    return out


def _tiff_info_open(path: Path, series: int) -> SourceInfo:
    import tifffile

    conflicts: list[str] = []
    with tifffile.TiffFile(path) as tif:
        if not 0 <= series < len(tif.series):
            raise StoreNotFoundError(f"{path} has {len(tif.series)} image series; series {series} does not exist")
        s = tif.series[series]
        shape, dtype = tuple(int(n) for n in s.shape), np.dtype(s.dtype)
        axes = _tiff_axes(s.axes)
        tags = s.keyframe.tags
        voxel: dict[str, float] = {}
        frame_interval = time_unit = None

        def resolution(tag: str) -> float | None:
            if tag not in tags:
                return None
            num, den = tags[tag].value
            return den / num if num else None  # tag holds pixels per unit

        _check_not_truncated(tif, path, s)
        if tif.is_imagej:
            ij = tif.imagej_metadata or {}
            conflicts += _imagej_conflicts(tif, shape, s.axes.upper())
            factor = _length_factor(ij.get("unit"))
            if factor is not None:
                for ax, tag in (("y", "YResolution"), ("x", "XResolution")):
                    size = resolution(tag)
                    if size:
                        voxel[ax] = size * factor
                if _positive(ij.get("spacing")):
                    voxel["z"] = float(ij["spacing"]) * factor
            if _positive(ij.get("finterval")):
                frame_interval = float(ij["finterval"])
                time_unit = _time_unit(ij.get("tunit", "sec"))
        elif tif.is_ome and tif.ome_metadata:
            image = tifffile.xml2dict(tif.ome_metadata)["OME"].get("Image", {})
            image = image[series] if isinstance(image, list) else image
            pixels = image.get("Pixels", {})
            for ax in "zyx":
                size = _positive(pixels.get(f"PhysicalSize{ax.upper()}"))
                factor = _length_factor(pixels.get(f"PhysicalSize{ax.upper()}Unit", "µm"))
                if size and factor:
                    voxel[ax] = size * factor
            if _positive(pixels.get("TimeIncrement")):
                frame_interval = float(pixels["TimeIncrement"])
                time_unit = _time_unit(pixels.get("TimeIncrementUnit", "s"))
        else:
            # Plain TIFF: resolution has a physical meaning only with an inch/cm unit.
            unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
            factor = {2: 25400.0, 3: 10000.0}.get(unit)
            for ax, tag in (("y", "YResolution"), ("x", "XResolution")):
                size = resolution(tag)
                # 1 and 72 dpi are writers' defaults, not a calibration.
                if factor is not None and size and not (unit == 2 and size in (1.0, 1 / 72)):
                    voxel[ax] = size * factor
    return SourceInfo(shape=shape, dtype=dtype, axes=axes, voxel_size=voxel, frame_interval=frame_interval,
                      time_unit=time_unit, kind="tiff", description=f"{path} (series {series})",
                      reader=_TiffReader(path, series, shape, dtype), conflicts=tuple(conflicts))


def _h5_datasets(f: Any) -> list[str]:
    import h5py

    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 and obj.dtype.kind in "biuf":
            found.append(name)

    f.visititems(visit)
    return found


def _h5_axes(ds: Any) -> str | None:
    tags = ds.attrs.get("axistags")
    if tags is not None:  # ilastik/vigra JSON
        try:
            keys = [a["key"] for a in json.loads(tags if isinstance(tags, str) else tags.decode())["axes"]]
            if all(k in AXES_ORDER for k in keys) and len(keys) == ds.ndim:
                return "".join(keys)
        except (ValueError, KeyError, TypeError, AttributeError):
            LOG.warning("%s: cannot parse 'axistags' attribute; ignoring it", ds.name)
    labels = [str(d.label).lower() for d in ds.dims]
    if all(len(lab) == 1 and lab in AXES_ORDER for lab in labels):
        return "".join(labels)
    return None


def _h5_info(path: Path, dataset: str | None) -> SourceInfo:
    import h5py

    with h5py.File(path, "r") as f:
        choices = _h5_datasets(f)
        if dataset is None:
            if len(choices) == 1:
                dataset = choices[0]
            elif "raw" in choices:  # plantseg / ilastik convention for the image beside its labels
                dataset = "raw"
                LOG.info("%s holds %s; using 'raw' (pass dataset= to choose)", path, choices)
            elif not choices:
                raise InvalidDataError(f"{path} holds no image dataset (numeric, at least 2-D)")
            else:
                raise ConfigError(f"{path} holds several image datasets {choices}; choose one with dataset=NAME "
                                  f"(--dataset NAME)")
        key = dataset.lstrip("/")
        if key not in f or not isinstance(f[key], h5py.Dataset):
            raise StoreNotFoundError(f"dataset {dataset!r} not found in {path}; image datasets: {choices}")
        ds = f[key]
        if ds.dtype.kind not in "biuf":
            raise DTypeError(f"dataset {dataset!r} in {path} has dtype {ds.dtype}; need bool, integer or float")
        shape, dtype = tuple(int(n) for n in ds.shape), np.dtype(ds.dtype)
        axes = _h5_axes(ds)
        voxel: dict[str, float] = {}
        size = ds.attrs.get("element_size_um")
        if size is None:
            size = f.attrs.get("element_size_um")
        if size is not None:
            values = [float(v) for v in np.atleast_1d(size)]
            names = "zyx"[-len(values):] if 1 <= len(values) <= 3 else ""
            if names and all(_positive(v) for v in values):
                voxel = dict(zip(names, values, strict=True))
            else:
                LOG.warning("%s: ignoring element_size_um=%s", path, values)
    return SourceInfo(shape=shape, dtype=dtype, axes=axes, voxel_size=voxel, kind="hdf5",
                      description=f"{path}:{key}", reader=_H5Reader(path, key, shape, dtype))


def inspect_source(source: str | os.PathLike[str] | np.ndarray | dask.array.Array,
                   dataset: str | int | None = None) -> SourceInfo:
    """Read shape, dtype, axes and physical sizes of an input without reading its pixels.

    Parameters
    ----------
    source : path-like, numpy.ndarray or dask.array.Array
        ``.tif/.tiff/.btf`` (series ``dataset``, default 0), ``.h5/.hdf5`` (dataset ``dataset``),
        ``.npy``, or an array.
    dataset : str or int, optional
        HDF5 dataset name, or TIFF series index.

    Returns
    -------
    SourceInfo

    Raises
    ------
    StoreNotFoundError
        Missing file, dataset or series.
    ConfigError
        Unknown file type, or several HDF5 image datasets and none chosen.
    """
    import dask.array as da

    if isinstance(source, np.ndarray | da.Array):
        if source.dtype.kind not in "biuf":
            raise DTypeError(f"array dtype must be bool, integer or float, got {source.dtype}")
        return SourceInfo(shape=tuple(int(n) for n in source.shape), dtype=np.dtype(source.dtype), axes=None,
                          kind="array", description=f"<array {source.shape} {source.dtype}>", reader=source)
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"input must be a path or an array, got {type(source).__name__}")
    path = Path(source).expanduser().absolute()
    if not path.is_file():
        raise StoreNotFoundError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        series = 0 if dataset is None else _series_index(dataset)
        return _tiff_info(path, series)
    if suffix in HDF5_SUFFIXES:
        return _h5_info(path, None if dataset is None else str(dataset))
    if suffix == ".npy":
        reader = _NpyReader(path)
        if reader.dtype.kind not in "biuf":
            raise DTypeError(f"{path} has dtype {reader.dtype}; need bool, integer or float")
        return SourceInfo(shape=reader.shape, dtype=reader.dtype, axes=None, kind="npy", description=str(path),
                          reader=reader)
    raise ConfigError(f"cannot convert {path}: unknown file type {suffix!r} "
                      f"(supported: {', '.join(TIFF_SUFFIXES + HDF5_SUFFIXES)}, .npy)")


def _series_index(dataset: str | int) -> int:
    try:
        return int(dataset)
    except (TypeError, ValueError):
        raise ConfigError(f"for a TIFF, dataset selects the series by index; got {dataset!r}") from None


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


def _axes_hint(info: SourceInfo) -> str:
    letters = (info.axes or "").upper() or "?" * len(info.shape)
    return f"the file reads as shape {info.shape} with axes {letters}"


def check_source_metadata(info: SourceInfo, axes: str | None, *, labels: bool = False) -> None:
    """Refuse an input whose metadata contradict themselves unless the user gave the axes; warn
    about a label image whose metadata name a channel axis but no time axis.

    Parameters
    ----------
    info : SourceInfo
        From :func:`inspect_source`.
    axes : str or None
        The axes the user gave (``--axes``); with them, conflicts are warnings.
    labels : bool
        The input is a label image (masks).

    Raises
    ------
    AxesError
        ``info.conflicts`` is not empty and ``axes`` is None; the message has the numbers and the
        ``--axes`` to pass.
    """
    if info.conflicts:
        what = "; ".join(info.conflicts)
        if axes is None:
            raise AxesError(f"{info.description}: the metadata contradict the data: {what}; {_axes_hint(info)}. "
                            "Converting would merge or split frames. Check the file, then pass the axes of "
                            f"the data as read, e.g. --axes {(info.axes or 'ZYX').upper()} (one letter per "
                            f"dimension of {info.shape}), or re-save it from Fiji")
        LOG.warning("%s: the metadata contradict the data (%s); using the given axes %r", info.description, what,
                    axes)
    if labels and axes is None and info.axes and "c" in info.axes and "t" not in info.axes:
        n_c = info.shape[info.axes.index("c")]
        if n_c > 1:
            suggestion = info.axes.replace("c", "t").upper()
            LOG.warning("%s: a label image whose metadata name %d channels (axes %s, shape %s) and no time axis; "
                        "masks rarely have channels: if these are time points (as in the image they belong to), "
                        "pass --axes %s", info.description, n_c, info.axes.upper(), info.shape, suggestion)


def resolve_source_axes(shape: Sequence[int], axes: str | None, metadata_axes: str | None) -> str:
    """Axes of the input in its own order: the argument, else the file's, else by dimensionality.

    Parameters
    ----------
    shape : sequence of int
        Input shape.
    axes : str or None
        User-given axes (any order, case-insensitive), e.g. ``"ZCYX"``.
    metadata_axes : str or None
        Axes the file declares.

    Returns
    -------
    str
        Lowercase axes, one letter per dimension.

    Raises
    ------
    AxesError
        Unknown or repeated letters, a count that differs from the dimensionality (naming both),
        or no default for that dimensionality.
    """
    ndim = len(shape)
    if axes is not None:
        if not isinstance(axes, str) or not axes:
            raise AxesError(f"axes must be a non-empty string such as 'TZYX', got {axes!r}")
        ax = axes.lower()
        unknown = sorted({a for a in ax if a not in AXES_ORDER})
        if unknown:
            raise AxesError(f"unknown axes {unknown} in {axes!r}: allowed letters are t, c, z, y, x")
        repeated = sorted({a for a in ax if ax.count(a) > 1})
        if repeated:
            raise AxesError(f"repeated axes {repeated} in {axes!r}")
        if len(ax) != ndim:
            raise AxesError(f"axes {axes!r} name {len(ax)} dimensions but the input has shape {tuple(shape)}")
        return ax
    if metadata_axes is not None and len(metadata_axes) == ndim:
        return metadata_axes
    if ndim not in DEFAULT_AXES:
        raise AxesError(f"input of shape {tuple(shape)} has {ndim} dimensions; give its axes explicitly "
                        f"(2 to 5 of t, c, z, y, x)")
    return DEFAULT_AXES[ndim]


def plan_slab(shape: Sequence[int], axes: str, unit: Sequence[int], itemsize: int,
              max_bytes: int = _DEFAULT_SLAB_BYTES) -> tuple[int, ...]:
    """Block shape for reading the input: storage units in t/c/z, as much of y/x as fits.

    Whole image planes make TIFF pages decode once; blocks stay multiples of the output storage
    unit so that every block writes whole chunks/shards (lock-free).

    Parameters
    ----------
    shape : sequence of int
        Output-order shape.
    axes : str
        Output axes.
    unit : sequence of int
        Output storage unit (shard or chunk shape).
    itemsize : int
        Bytes per element.
    max_bytes : int
        Memory budget of one block, in bytes (at least one storage unit is always used).

    Returns
    -------
    tuple of int
        Block shape in output order.
    """
    block = [int(u) for u in unit]
    iy, ix = axes.index("y"), axes.index("x")
    rest = math.prod(b for i, b in enumerate(block) if i not in (iy, ix)) * itemsize
    if rest * shape[iy] * shape[ix] <= max_bytes:
        block[iy], block[ix] = int(shape[iy]), int(shape[ix])
    elif rest * block[iy] * shape[ix] <= max_bytes:
        block[ix] = int(shape[ix])
        rows = max_bytes // (rest * shape[ix])
        block[iy] = max(block[iy], int(rows // block[iy] * block[iy]))
    return tuple(block)


def _validate_voxel_size(voxel_size: Sequence[float], axes: str) -> dict[str, float]:
    values = [float(v) for v in voxel_size]
    spatial = [a for a in "zyx" if a in axes]
    if len(values) == 3:
        names = "zyx"
    elif len(values) == 2 and "z" not in axes:
        names = "yx"
    else:
        raise ConfigError(f"voxel_size {tuple(values)} must give (z, y, x) in µm"
                          f"{' or (y, x)' if 'z' not in axes else ''} for axes {axes!r}")
    bad = [f"{n}={v}" for n, v in zip(names, values, strict=True) if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ConfigError(f"voxel_size values must be finite and > 0, got {', '.join(bad)}")
    return {n: v for n, v in zip(names, values, strict=True) if n in spatial}


# --------------------------------------------------------------------------------------------------
# Convert
# --------------------------------------------------------------------------------------------------


def convert(input: str | os.PathLike[str] | np.ndarray | dask.array.Array, out: str | os.PathLike[str], *,
            axes: str | None = None, voxel_size: Sequence[float] | None = None, dataset: str | int | None = None,
            chunks: Sequence[int] | int | None = None, frame_interval: float | None = None,
            overwrite: bool = False, shards: Sequence[int] | None = None, n_levels: int = 1,
            ngff_version: str = "0.5", time_unit: str | None = None, pyramid_method: str = "mean",
            max_slab_bytes: int = _DEFAULT_SLAB_BYTES) -> OmeImage:
    """Convert a TIFF, HDF5 dataset, ``.npy`` file or array into an OME-Zarr image, slab by slab.

    Parameters
    ----------
    input : path-like, numpy.ndarray or dask.array.Array
        Source. TIFF (BigTIFF, ImageJ hyperstack, OME-TIFF), HDF5, ``.npy`` (read through a
        per-slab memory map), or an in-memory array.
    out : path-like
        Output store folder; written aside and renamed into place when complete.
    axes : str, optional
        Axes of the input in its own order, e.g. ``"ZCYX"``; the output is reordered to
        ``tczyx`` order. Default: the file's metadata, else 2→yx, 3→zyx, 4→tzyx, 5→tczyx.
    voxel_size : sequence of float, optional
        (z, y, x) in µm (or (y, x) without z); overrides the file's calibration.
    dataset : str or int, optional
        HDF5 dataset name (default: the only image dataset, else ``raw``), or TIFF series index.
    chunks : sequence of int or int, optional
        Output chunk shape in output (``tczyx``-ordered) axes; default 1 per t/c, ≤32×256×256.
    frame_interval : float, optional
        Time between frames (in ``time_unit``); overrides the file's.
    overwrite : bool
        Replace an existing output store.
    shards : sequence of int, optional
        Output shard shape (zarr v3).
    n_levels : int
        Pyramid levels (y/x halved per level).
    ngff_version : {"0.5", "0.4"}
        Output format.
    time_unit : str, optional
        NGFF time unit name (``second``, ``minute``...); default the file's, else ``second``.
    pyramid_method : {"mean", "nearest"}
        Downsampling of levels >= 1.
    max_slab_bytes : int
        Memory budget per read block; peak memory is about this times the thread count.

    Returns
    -------
    OmeImage
        Level 0 of the new store.

    Raises
    ------
    StoreNotFoundError, StoreExistsError, AxesError, ConfigError, DTypeError
    """
    import dask.array as da
    from dask.base import tokenize

    info = inspect_source(input, dataset)
    check_source_metadata(info, axes, labels=pyramid_method == "nearest")
    src_axes = resolve_source_axes(info.shape, axes, info.axes)
    order = sorted(range(len(src_axes)), key=lambda i: AXES_ORDER.index(src_axes[i]))
    out_axes = validate_axes("".join(src_axes[i] for i in order))
    out_shape = tuple(info.shape[i] for i in order)

    voxel = dict(info.voxel_size)
    if voxel_size is not None:
        voxel = _validate_voxel_size(voxel_size, out_axes)
    missing = [a for a in "zyx" if a in out_axes and a not in voxel]
    if missing:
        LOG.warning("%s: no voxel size for %s in the file; using 1.0 µm (pass voxel_size=)", info.description,
                    ",".join(missing))
    interval = info.frame_interval
    if frame_interval is not None:
        interval = _validate_frame_interval(frame_interval)
    scale = []
    for a in out_axes:
        if a == "t":
            scale.append(interval if interval is not None else 1.0)
        elif a == "c":
            scale.append(1.0)
        else:
            scale.append(voxel.get(a, 1.0))
    units = {"t": time_unit or info.time_unit or "second"} if "t" in out_axes else {}

    out_chunks = _normalise_chunks(chunks, out_shape, out_axes)
    out_shards = _normalise_shards(shards, out_chunks, out_shape, out_axes)
    unit = out_shards or out_chunks
    block = plan_slab(out_shape, out_axes, unit, info.dtype.itemsize, max_slab_bytes)
    src_block = [0] * len(order)
    for out_i, src_i in enumerate(order):
        src_block[src_i] = block[out_i]

    if isinstance(info.reader, da.Array):
        source = info.reader.rechunk(tuple(src_block))
    elif isinstance(info.reader, np.ndarray):
        source = da.from_array(info.reader, chunks=tuple(src_block))
    else:
        stamp = os.stat(info.reader.path)
        name = "ingest-" + tokenize(info.description, stamp.st_size, stamp.st_mtime_ns, src_block)
        source = da.from_array(info.reader, chunks=tuple(src_block), name=name, lock=False, fancy=False,
                               asarray=True, meta=np.empty((0,) * len(src_block), dtype=info.dtype))
    data = source.transpose(order)
    LOG.info("converting %s %s as %s -> %s, axes %s, scale %s", info.description, info.shape, src_axes, out,
             out_axes, scale)
    try:
        return write_image(out, data, axes=out_axes, scale=scale, chunks=out_chunks, shards=out_shards,
                           units=units, n_levels=n_levels, overwrite=overwrite, ngff_version=ngff_version,
                           pyramid_method=pyramid_method)
    finally:
        if isinstance(info.reader, _CachedHandleReader):
            info.reader.close()


def _validate_frame_interval(value: float) -> float:
    v = _positive(value)
    if v is None:
        raise ConfigError(f"frame_interval must be a finite number > 0, got {value!r}")
    return v
