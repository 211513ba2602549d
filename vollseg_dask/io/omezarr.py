"""OME-Zarr images and label groups: NGFF 0.5 (zarr v3) written by default, 0.4 (zarr v2) read and written.

Layout written by :func:`create_image` (NGFF 0.5)::

    store/                 zarr.json  {"attributes": {"ome": {"version": "0.5", "multiscales": [...]}}}
    store/0, store/1, ...  level arrays; level k is level 0 downsampled by 2**k in y and x only
    store/labels/          {"ome": {"version": "0.5", "labels": ["cells", ...]}}
    store/labels/cells/    {"ome": {"version": "0.5", "multiscales": [...], "image-label": {...}}}
    store/labels/cells/0, 1, ...

Axes are always a subset of ``tczyx`` in that order and end with ``yx``. Scales are micrometres on
z/y/x, the frame interval on t and 1.0 on c. Every write of a whole image goes to a hidden sibling
folder that is renamed into place only when complete, so an interrupted write never looks like a
valid image; arrays are created before the group metadata that makes them visible as an image.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vollseg_dask.errors import (
    AxesError,
    ConfigError,
    DTypeError,
    InvalidDataError,
    ShapeError,
    StoreExistsError,
    StoreNotFoundError,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import dask.array
    import zarr

__all__ = [
    "AXES_ORDER",
    "OmeImage",
    "open_image",
    "open_labels",
    "list_labels",
    "create_image",
    "create_labels",
    "write_image",
    "build_pyramid",
    "validate_axes",
    "default_chunks",
    "level_shape",
    "downsample_mean_yx",
    "downsample_nearest_yx",
    "read_region",
    "chunk_file",
    "missing_chunks",
    "checksum_codecs",
    "array_digest",
    "array_digests",
    "labels_fingerprints_t",
    "labels_fingerprint",
    "commit_labels",
    "labels_state",
]

LOG = logging.getLogger(__name__)

AXES_ORDER = "tczyx"
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_DEFAULT_UNITS = {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
# Units the NGFF spec (0.4, 0.5) allows: UDUNITS-2 names for space and time axes.
SPACE_UNITS = frozenset(
    "angstrom attometer centimeter decimeter exameter femtometer foot gigameter hectometer inch "
    "kilometer megameter meter micrometer mile millimeter nanometer parsec petameter picometer "
    "terameter yard yoctometer yottameter zeptometer zettameter".split()
)
TIME_UNITS = frozenset(
    "attosecond centisecond day decisecond exasecond femtosecond gigasecond hectosecond hour "
    "kilosecond megasecond microsecond millisecond minute nanosecond petasecond picosecond second "
    "terasecond yoctosecond yottasecond zeptosecond zettasecond".split()
)
NGFF_VERSIONS = ("0.4", "0.5")
PYRAMID_METHODS = ("mean", "nearest")


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def validate_axes(axes: str, ndim: int | None = None, shape: Sequence[int] | None = None) -> str:
    """Normalise and check an axes string.

    Parameters
    ----------
    axes : str
        Axis letters, case-insensitive, e.g. ``"TZYX"``. Must be a subset of ``tczyx`` in that
        order, without repeats, ending in ``yx``.
    ndim : int, optional
        Dimensionality the axes must match.
    shape : sequence of int, optional
        Shape of the data, named in the error message when ``ndim`` does not match.

    Returns
    -------
    str
        The lowercase axes.

    Raises
    ------
    AxesError
        Naming the unknown, repeated or misordered letters, or the shape/axes mismatch.
    """
    if not isinstance(axes, str) or not axes:
        raise AxesError(f"axes must be a non-empty string such as 'tzyx', got {axes!r}")
    ax = axes.lower()
    unknown = sorted({a for a in ax if a not in AXES_ORDER})
    if unknown:
        raise AxesError(f"unknown axes {unknown} in {axes!r}: allowed letters are t, c, z, y, x")
    repeated = sorted({a for a in ax if ax.count(a) > 1})
    if repeated:
        raise AxesError(f"repeated axes {repeated} in {axes!r}")
    expected = "".join(a for a in AXES_ORDER if a in ax)
    if ax != expected:
        raise AxesError(f"axes {axes!r} are out of order: they must follow t,c,z,y,x, i.e. {expected!r}")
    if not ax.endswith("yx"):
        raise AxesError(f"axes {axes!r} must contain y and x (an image is at least 2-D)")
    if ndim is not None and len(ax) != ndim:
        shape_txt = f"shape {tuple(shape)}" if shape is not None else f"{ndim}-D data"
        raise AxesError(f"axes {axes!r} name {len(ax)} dimensions but the data has {shape_txt}")
    return ax


def _validate_scale(scale: Sequence[float] | None, axes: str) -> tuple[float, ...]:
    if scale is None:
        return tuple(1.0 for _ in axes)
    try:
        values = tuple(float(s) for s in scale)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"scale must be a sequence of numbers, got {scale!r}") from exc
    if len(values) != len(axes):
        raise ConfigError(f"scale {values} has {len(values)} values but axes {axes!r} have {len(axes)}")
    bad = [f"{a}={v}" for a, v in zip(axes, values, strict=True) if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ConfigError(f"scale values must be finite and > 0, got {', '.join(bad)} (axes {axes!r})")
    return values


def _validate_units(units: Mapping[str, str] | None, axes: str) -> dict[str, str]:
    out = {a: _DEFAULT_UNITS[a] for a in axes if a in _DEFAULT_UNITS}
    for key, unit in (units or {}).items():
        if key not in axes:
            raise AxesError(f"unit given for axis {key!r} which is not in axes {axes!r}")
        if key == "c":
            raise ConfigError("the channel axis has no unit")
        allowed = TIME_UNITS if key == "t" else SPACE_UNITS
        if unit not in allowed:
            kind = "time" if key == "t" else "space"
            raise ConfigError(f"unit {unit!r} for axis {key!r} is not an NGFF {kind} unit (e.g. "
                              f"{'second, minute' if key == 't' else 'micrometer, nanometer'})")
        out[key] = unit
    return out


def _validate_dtype(dtype: Any, *, labels: bool) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise DTypeError(f"not a dtype: {dtype!r}") from exc
    if labels and dt.kind not in "iu":
        raise DTypeError(f"labels must have an integer dtype, got {dt} (cast or relabel first)")
    if not labels and dt.kind not in "biuf":
        raise DTypeError(f"image dtype must be bool, integer or float, got {dt}")
    return dt


def _validate_shape(shape: Sequence[int], axes: str) -> tuple[int, ...]:
    try:
        shp = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"shape must be a sequence of integers, got {shape!r}") from exc
    validate_axes(axes, len(shp), shp)
    if any(s < 1 for s in shp):
        raise ShapeError(f"every dimension must be >= 1, got shape {shp} for axes {axes!r}")
    return shp


def default_chunks(shape: Sequence[int], axes: str, dtype: Any = "uint16") -> tuple[int, ...]:
    """Chunk shape used when none is given: one time point and channel, up to 32×256×256 voxels.

    Parameters
    ----------
    shape : sequence of int
        Array shape, one entry per axis.
    axes : str
        Axes of ``shape`` (subset of ``tczyx``).
    dtype : dtype-like
        Unused today beyond documentation of intent (chunks stay a few MiB for 1-4 byte types).

    Returns
    -------
    tuple of int
        Chunk shape, each entry clipped to the array extent.
    """
    target = {"t": 1, "c": 1, "z": 32, "y": 256, "x": 256}
    return tuple(min(int(s), target[a]) for a, s in zip(axes, shape, strict=True))


def _normalise_chunks(chunks: Sequence[int | None] | int | None, shape: tuple[int, ...], axes: str,
                      what: str = "chunks") -> tuple[int, ...]:
    if chunks is None:
        return default_chunks(shape, axes)
    if isinstance(chunks, int | np.integer):
        chunks = [int(chunks)] * len(shape)
    chunks = list(chunks)
    if len(chunks) != len(shape):
        raise ShapeError(f"{what} {tuple(chunks)} have {len(chunks)} entries but shape {shape} "
                         f"(axes {axes!r}) has {len(shape)}")
    out = []
    for a, c, s in zip(axes, chunks, shape, strict=True):
        if c is None or c == -1:  # full extent
            c = s
        if not isinstance(c, int | np.integer) or c < 1:
            raise ShapeError(f"{what} entry for axis {a!r} must be a positive integer, got {c!r}")
        out.append(min(int(c), s))
    return tuple(out)


def _normalise_shards(shards: Sequence[int | None] | None, chunks: tuple[int, ...],
                      shape: tuple[int, ...], axes: str) -> tuple[int, ...] | None:
    if shards is None:
        return None
    shards = list(shards)
    if len(shards) != len(shape):
        raise ShapeError(f"shards {tuple(shards)} have {len(shards)} entries but shape {shape} "
                         f"(axes {axes!r}) has {len(shape)}")
    out = []
    for a, sh, c, s in zip(axes, shards, chunks, shape, strict=True):
        if sh is None or sh == -1:
            sh = -(-s // c) * c  # whole axis, rounded up to whole chunks
        if not isinstance(sh, int | np.integer) or sh < 1:
            raise ShapeError(f"shard entry for axis {a!r} must be a positive integer, got {sh!r}")
        if sh % c:
            raise ShapeError(f"shard size {sh} on axis {a!r} is not a multiple of the chunk size {c} "
                             f"(shards {tuple(shards)}, chunks {chunks})")
        out.append(int(sh))
    return tuple(out)


def level_shape(shape: Sequence[int], axes: str, level: int) -> tuple[int, ...]:
    """Shape of pyramid level ``level``: y and x divided by ``2**level`` (rounded up), others kept.

    Parameters
    ----------
    shape : sequence of int
        Level-0 shape.
    axes : str
        Axes of ``shape``.
    level : int
        Pyramid level, >= 0.

    Returns
    -------
    tuple of int
    """
    f = 2**level
    return tuple(-(-int(s) // f) if a in "yx" else int(s) for a, s in zip(axes, shape, strict=True))


def _clean(value: float) -> float:
    # 0.5 * 3 * 0.2 = 0.30000000000000004: 15 significant digits keep the stored JSON readable.
    return float(f"{value:.15g}")


def _level_scale(scale: Sequence[float], axes: str, level: int) -> list[float]:
    # Multiplying by a power of two is exact in binary floating point: no rounding needed.
    return [float(s) * (2**level if a in "yx" else 1) for a, s in zip(axes, scale, strict=True)]


def _level_chunking(chunks: tuple[int, ...], shards: tuple[int, ...] | None,
                    shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    # Lower levels keep the level-0 chunking, clipped to their (smaller) extent; shards stay whole chunks.
    ck = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    if shards is None:
        return ck, None
    sk = tuple(min(sh, -(-s // c) * c) for sh, c, s in zip(shards, ck, shape, strict=True))
    return ck, sk


# --------------------------------------------------------------------------------------------------
# Chunk reads that name a corrupt chunk
# --------------------------------------------------------------------------------------------------


def _unit_shape(arr: zarr.Array) -> tuple[int, ...]:
    """Storage unit (shard when sharded, else chunk): the unit that is one file in the store."""
    return tuple(int(c) for c in (arr.shards or arr.chunks))


def chunk_file(arr: zarr.Array, coords: Sequence[int]) -> tuple[str, Path | None]:
    """Key and file of the storage unit at grid position ``coords`` of ``arr``.

    Parameters
    ----------
    arr : zarr.Array
        Any zarr array (v2 or v3, sharded or not).
    coords : sequence of int
        Position in the grid of storage units (shards when sharded), one per axis.

    Returns
    -------
    key : str
        The chunk key inside the array, e.g. ``"c/1/0/2/3"`` (v3) or ``"1.0.2.3"`` (v2).
    file : pathlib.Path or None
        The file holding it when the store is a local folder, else None.
    """
    key = arr.metadata.encode_chunk_key(tuple(int(c) for c in coords))
    root = getattr(arr.store, "root", None)
    file = None if root is None else Path(str(root)) / arr.path / key
    return key, file


def _index_ranges(index: Any, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """Per-axis [start, stop) of a basic index (ints and unit-step slices); None for anything else."""
    if not isinstance(index, tuple):
        index = (index,)
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (len(shape) - len(index) + 1) + index[k + 1:]
    index = index + (slice(None),) * (len(shape) - len(index))
    if len(index) != len(shape):
        return None
    out = []
    for i, n in zip(index, shape, strict=True):
        if isinstance(i, int | np.integer):
            j = int(i) + n if int(i) < 0 else int(i)
            out.append((j, j + 1))
        elif isinstance(i, slice) and i.step in (None, 1):
            start, stop, _ = i.indices(n)
            out.append((start, max(start, stop)))
        else:
            return None
    return out


def _locate_bad_chunk(arr: zarr.Array, index: Any, exc: BaseException, what: str | None) -> BaseException:
    """Re-read ``arr[index]`` one storage unit at a time; a unit that fails alone becomes the error.

    Returns a :class:`CorruptChunkError` naming the array, chunk key, grid position and file, or
    ``exc`` itself when no single unit fails (the error was not about the stored bytes).
    """
    from vollseg_dask.errors import CorruptChunkError

    ranges = _index_ranges(index, tuple(int(s) for s in arr.shape))
    if ranges is None:
        return exc
    unit = _unit_shape(arr)
    per_axis = [range(lo // u, -(-hi // u)) for (lo, hi), u in zip(ranges, unit, strict=True)]
    for coords in np.ndindex(*(len(r) for r in per_axis)):
        pos = tuple(r[c] for r, c in zip(per_axis, coords, strict=True))
        sel = tuple(slice(p * u, min((p + 1) * u, int(n))) for p, u, n in zip(pos, unit, arr.shape, strict=True))
        try:
            arr[sel]
        except Exception as err:  # noqa: BLE001 - any decoder's error: the codec libraries raise what they like
            key, file = chunk_file(arr, pos)
            label = f"{what} " if what else ""
            where = f"file {file}" if file is not None else f"store {arr.store}"
            return CorruptChunkError(
                f"{label}array {arr.path or '/'!r}: chunk {key!r} (grid position {pos}, voxels "
                f"{[(s.start, s.stop) for s in sel]}) cannot be read or decoded ({type(err).__name__}: {err}); "
                f"{where}. Restore that chunk (or re-convert the input) and run again: finished work is kept"
            )
    return exc


def read_region(arr: zarr.Array, index: Any, *, what: str | None = None) -> np.ndarray:
    """``numpy.asarray(arr[index])``, with a chunk that cannot be decoded named in the error.

    The one place where the readers of images and labels (segmentation units, measurement,
    ``OmeImage.data``) turn a codec's error (zstd, blosc, a truncated file ...) into a
    :class:`~vollseg_dask.errors.CorruptChunkError` naming the array path, the chunk key, its grid
    position and its file. Only when the read fails are the storage units re-read one by one to find
    the culprit, so the normal path costs nothing.

    Parameters
    ----------
    arr : zarr.Array
        Array to read (v2 or v3, sharded or not).
    index : tuple of int / slice
        Basic index (ints and unit-step slices; anything else is passed through unchanged).
    what : str, optional
        Words naming the array in the message, e.g. ``"image /data/x.ome.zarr"``.

    Returns
    -------
    numpy.ndarray
        ``arr[index]``.

    Raises
    ------
    CorruptChunkError
        A storage unit inside ``index`` cannot be read or decoded.

    Notes
    -----
    A *missing* chunk is not an error to zarr (it reads as the fill value); see
    :func:`missing_chunks` for the up-front check of an input image.
    """
    try:
        return np.asarray(arr[index])
    except Exception as exc:
        from vollseg_dask.errors import VollSegError

        if isinstance(exc, VollSegError):
            raise
        err = _locate_bad_chunk(arr, index, exc, what)
        if err is exc:
            raise
        raise err from exc


class _NamedChunkReader:
    """Array-like view of a zarr array for :func:`dask.array.from_array` whose reads go through
    :func:`read_region` (a corrupt chunk is named).

    Dask's own ``getter`` calls ``__getitem__``, so Dask still fuses a later slice into the read
    (reading a plane of a shard reads that plane's chunks, not the whole shard).
    """

    def __init__(self, arr: zarr.Array) -> None:
        self.arr = arr
        self.shape = tuple(int(n) for n in arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        return read_region(self.arr, index)


def checksum_codecs(zarr_format: int) -> Any:
    """Compressors of every array the project writes: zstd with its content checksum on.

    A chunk whose bytes changed after writing then fails to decode (zstd compares the checksum of
    the decompressed data), and :func:`read_region` names it in a
    :class:`~vollseg_dask.errors.CorruptChunkError`, instead of decoding to wrong values.
    """
    if zarr_format == 3:
        from zarr.codecs import ZstdCodec

        return (ZstdCodec(level=0, checksum=True),)
    from numcodecs import Zstd

    return Zstd(level=0, checksum=True)


def array_digests(arr: zarr.Array) -> list[str]:
    """Cheap digest of a local array's content per index of its first axis (per time point).

    Each covers the array's metadata and, for every chunk file holding that index, its key, size
    and first and last 32 bytes: 64 bytes read per chunk file, not the data. The chunks the project
    writes end with zstd's content checksum, so for them this is a digest of the content; for other
    compressed chunks a change of content changes the compressed bytes' length or tail in practice.
    A chunk rewritten with the same bytes (a restored backup) keeps its digest. Changes inside
    uncompressed data that keep both ends of every chunk are not seen here.

    Parameters
    ----------
    arr : zarr.Array
        Array in a local folder store (other stores: the metadata only).

    Returns
    -------
    list of str
        ``arr.shape[0]`` digests of 16 hex digits (one for a 0-d array).
    """
    import hashlib
    import json

    meta = json.dumps(arr.metadata.to_dict(), sort_keys=True, default=str).encode()
    n0 = int(arr.shape[0]) if arr.ndim else 1
    unit0 = _unit_shape(arr)[0] if arr.ndim else 1
    rows: dict[int, list[tuple[str, int, bytes]]] = {}
    root = getattr(arr.store, "root", None)
    if root is not None:
        folder = Path(str(root)) / arr.path
        for dirpath, _, files in os.walk(folder):
            rel = os.path.relpath(dirpath, folder)
            prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for f in files:
                key = prefix + f
                if f in ("zarr.json", ".zarray", ".zattrs", ".zgroup") or f.endswith(".partial"):
                    continue
                parts = key.split("/")
                first = parts[1] if parts[0] == "c" and len(parts) > 1 else parts[0].split(".")[0]
                row = int(first) if first.isdigit() else -1
                with open(os.path.join(dirpath, f), "rb") as fh:
                    head = fh.read(32)
                    size = fh.seek(0, os.SEEK_END)
                    fh.seek(max(size - 32, 0))
                    tail = fh.read(32)
                rows.setdefault(row, []).append((key, size, head + tail))
    out = []
    for i in range(n0):
        h = hashlib.sha256(meta)
        for key, size, ends in sorted(rows.get(i // unit0, [])):
            h.update(f"{key}:{size}:".encode() + ends)
        out.append(h.hexdigest()[:16])
    return out


def array_digest(arr: zarr.Array) -> str:
    """One digest of a local array's content (:func:`array_digests` of every index, combined)."""
    import hashlib

    return hashlib.sha256(":".join(array_digests(arr)).encode()).hexdigest()[:16]


def missing_chunks(arr: zarr.Array, limit: int = 10) -> tuple[int, list[str]]:
    """Storage units of a local array that have no file (zarr would read them as the fill value).

    Parameters
    ----------
    arr : zarr.Array
        Array in a local folder store (other stores: ``(0, [])``, nothing is checked).
    limit : int
        How many missing keys to return by name.

    Returns
    -------
    n_missing : int
        Number of storage units without a file.
    keys : list of str
        The first ``limit`` of their chunk keys, in grid order.
    """
    root = getattr(arr.store, "root", None)
    if root is None:
        return 0, []
    folder = Path(str(root)) / arr.path
    unit = _unit_shape(arr)
    grid = tuple(-(-int(n) // u) for n, u in zip(arr.shape, unit, strict=True))
    present: set[str] = set()
    for dirpath, _, files in os.walk(folder):
        rel = os.path.relpath(dirpath, folder)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        present.update(prefix + f for f in files)
    if math.prod(grid) == 0:
        return 0, []
    missing: list[str] = []
    n = 0
    for pos in np.ndindex(*grid):
        key = arr.metadata.encode_chunk_key(pos)
        if key not in present:
            n += 1
            if len(missing) < limit:
                missing.append(key)
    return n, missing


# --------------------------------------------------------------------------------------------------
# Store paths and metadata
# --------------------------------------------------------------------------------------------------


def _as_path(store: str | os.PathLike[str]) -> Path:
    if not isinstance(store, str | os.PathLike):
        raise TypeError(f"store must be a path, got {type(store).__name__}")
    return Path(store).expanduser().absolute()


def _is_zarr_node(path: Path) -> bool:
    return any((path / n).is_file() for n in ("zarr.json", ".zgroup", ".zarray"))


def _check_target(path: Path, overwrite: bool) -> None:
    """Refuse to clobber an existing store unless asked; never delete a non-zarr folder."""
    if not path.exists():
        return
    if path.is_dir() and not any(path.iterdir()):
        return
    if not overwrite:
        raise StoreExistsError(f"output {path} already exists; pass overwrite=True (--overwrite) to replace it")
    if not (path.is_dir() and _is_zarr_node(path)):
        raise StoreExistsError(f"output {path} exists and is not a zarr store; refusing to delete it")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _axes_meta(axes: str, units: Mapping[str, str]) -> list[dict[str, str]]:
    out = []
    for a in axes:
        entry = {"name": a, "type": _AXIS_TYPES[a]}
        if a in units:
            entry["unit"] = units[a]
        out.append(entry)
    return out


def _multiscale_meta(axes: str, scale: Sequence[float], units: Mapping[str, str], n_levels: int,
                     name: str, version: str) -> dict[str, Any]:
    datasets = [
        {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": _level_scale(scale, axes, k)}]}
        for k in range(n_levels)
    ]
    ms: dict[str, Any] = {"name": name, "axes": _axes_meta(axes, units), "datasets": datasets}
    if version == "0.4":
        ms["version"] = "0.4"
    return ms


def _wrap(version: str, payload: dict[str, Any]) -> dict[str, Any]:
    """NGFF 0.5 keeps everything under ``ome`` with one version; 0.4 puts keys at top level."""
    if version == "0.5":
        return {"ome": {"version": "0.5", **payload}}
    return payload


def _ome_attrs(group: zarr.Group) -> tuple[str, dict[str, Any]]:
    """Return (ngff version, the dict holding multiscales/labels) of a group, 0.4 or 0.5."""
    attrs = group.attrs.asdict()
    if "ome" in attrs:
        ome = dict(attrs["ome"])
        return str(ome.get("version", "0.5")), ome
    version = "0.4"
    ms = attrs.get("multiscales")
    if ms:
        version = str(ms[0].get("version", "0.4"))
    elif "image-label" in attrs:
        version = str(attrs["image-label"].get("version", "0.4"))
    return version, attrs


def _open_group(path: Path, mode: str = "r") -> zarr.Group:
    import zarr

    if not path.exists():
        raise StoreNotFoundError(f"OME-Zarr store not found: {path}")
    try:
        return zarr.open_group(str(path), mode=mode)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise InvalidDataError(f"{path} is not a zarr group: {exc}") from exc


def _parse_multiscales(group_path: Path) -> tuple[str, dict[str, Any], zarr.Group]:
    group = _open_group(group_path)
    version, ome = _ome_attrs(group)
    ms_list = ome.get("multiscales")
    if not ms_list:
        raise InvalidDataError(f"{group_path} holds no NGFF 'multiscales' metadata (not an OME-Zarr image, "
                               f"or an incomplete write)")
    return version, ms_list[0], group


def _axes_from_meta(ms: dict[str, Any], where: Path) -> tuple[str, dict[str, str]]:
    raw = ms.get("axes")
    if raw is None:  # NGFF <= 0.3: implicit 5-D (the caller checks the array has 5 dimensions)
        raw = list(AXES_ORDER)
    names: list[str] = []
    units: dict[str, str] = {}
    for entry in raw:
        name = entry if isinstance(entry, str) else entry.get("name", "")
        names.append(str(name).lower())
        if isinstance(entry, dict) and entry.get("unit"):
            units[str(name).lower()] = str(entry["unit"])
    try:
        if not all(len(n) == 1 for n in names):
            raise AxesError(f"axis names must be single letters from {AXES_ORDER!r}")
        axes = validate_axes("".join(names))
    except AxesError as exc:
        raise AxesError(f"{where}: axes {names} are not supported ({exc})") from None
    return axes, units


_WARNED_SCALE: set[str] = set()


def _has_scale(ms: dict[str, Any], level: int) -> bool:
    """Whether the metadata give a ``scale`` transform for this level (else 1 is assumed)."""
    for transforms in (ms["datasets"][level].get("coordinateTransformations", []),
                       ms.get("coordinateTransformations", [])):
        if any(isinstance(tr, dict) and tr.get("type") == "scale" for tr in transforms or []):
            return True
    return False


def _scale_from_meta(ms: dict[str, Any], level: int, ndim: int) -> tuple[float, ...]:
    scale = np.ones(ndim)
    for transforms in (ms["datasets"][level].get("coordinateTransformations", []),
                       ms.get("coordinateTransformations", [])):
        for tr in transforms:
            if tr.get("type") == "scale":
                scale = scale * np.asarray(tr["scale"], dtype=float)
    return tuple(float(s) for s in scale)


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OmeImage:
    """One level of an OME-Zarr image or labels group, as a lazy Dask array plus its metadata.

    Attributes
    ----------
    data : dask.array.Array
        Lazy array of the requested level; Dask chunks are the zarr storage units (shards when
        sharded, else chunks) so that a task maps to whole storage units.
    axes : str
        Lowercase subset of ``tczyx`` in that order, e.g. ``"tzyx"``.
    scale : tuple of float
        One per axis: µm for z/y/x, the frame interval for t, 1.0 for c (at this level).
    units : dict of str to str
        NGFF unit per axis that has one, e.g. ``{"t": "second", "z": "micrometer"}``.
    store : pathlib.Path
        Store root folder.
    path : str
        Array path inside the store, e.g. ``"0"`` or ``"labels/cells/0"``.
    level : int
        Pyramid level of ``data``.
    n_levels : int
        Number of pyramid levels in the multiscales metadata.
    ngff_version : str
        ``"0.4"`` or ``"0.5"``.
    scale_assumed : bool
        The metadata hold no scale: ``scale`` is 1 on every axis by assumption.
    """

    data: dask.array.Array
    axes: str
    scale: tuple[float, ...]
    units: dict[str, str]
    store: Path
    path: str
    level: int
    n_levels: int
    ngff_version: str = "0.5"
    scale_assumed: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``data``."""
        return tuple(int(s) for s in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        """Dtype of ``data``."""
        return np.dtype(self.data.dtype)

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """(z, y, x) voxel size in µm at this level; 1.0 for an absent axis."""
        return tuple(  # type: ignore[return-value]
            self.scale[self.axes.index(a)] if a in self.axes else 1.0 for a in "zyx"
        )

    @property
    def frame_interval(self) -> float | None:
        """Scale of the t axis (in ``units['t']``), or None without a t axis."""
        return self.scale[self.axes.index("t")] if "t" in self.axes else None

    @property
    def chunks(self) -> tuple[int, ...]:
        """Zarr chunk shape (the inner chunk when sharded)."""
        return tuple(int(c) for c in self._zarr(mode="r").chunks)

    @property
    def shards(self) -> tuple[int, ...] | None:
        """Zarr shard shape, or None when the array is not sharded."""
        sh = self._zarr(mode="r").shards
        return None if sh is None else tuple(int(s) for s in sh)

    @property
    def storage_unit(self) -> tuple[int, ...]:
        """Smallest independently writable block: the shard shape when sharded, else the chunk."""
        return self.shards or self.chunks

    def _zarr(self, mode: str) -> zarr.Array:
        import zarr

        return zarr.open_array(store=str(self.store), path=self.path, mode=mode)

    def zarr_array(self) -> zarr.Array:
        """Underlying zarr array, opened for reading and writing (block writes by a driver)."""
        return self._zarr(mode="r+")


def _open_level(root: Path, group_rel: str, level: int) -> OmeImage:
    import dask.array as da
    import zarr

    group_path = root / group_rel if group_rel else root
    version, ms, _ = _parse_multiscales(group_path)
    datasets = ms.get("datasets") or []
    n_levels = len(datasets)
    if not isinstance(level, int | np.integer) or not 0 <= level < n_levels:
        raise StoreNotFoundError(f"level {level!r} not found in {group_path}: it has {n_levels} level(s) "
                                 f"(0..{n_levels - 1})")
    axes, units = _axes_from_meta(ms, group_path)
    rel = datasets[level]["path"]
    path = f"{group_rel}/{rel}" if group_rel else str(rel)
    try:
        arr = zarr.open_array(store=str(root), path=path, mode="r")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise StoreNotFoundError(f"array {path!r} of level {level} missing in {root}: {exc}") from exc
    if arr.ndim != len(axes):
        if ms.get("axes") is None:
            raise AxesError(f"{root}/{path}: the multiscales metadata names no axes (NGFF <= 0.3 implies "
                            f"{AXES_ORDER!r}), but the array has {arr.ndim} dimensions, shape {arr.shape}; "
                            "add NGFF 'axes' metadata, or re-convert the data with `vollseg-dask convert --axes`")
        raise AxesError(f"{root}/{path}: array has shape {arr.shape} but the metadata names axes {axes!r}")
    scale = _scale_from_meta(ms, level, arr.ndim)
    if not _has_scale(ms, level):
        key = str(group_path)
        if key not in _WARNED_SCALE:
            _WARNED_SCALE.add(key)
            LOG.warning("%s has no coordinateTransformations 'scale': assuming 1 per axis (1 µm voxels, "
                        "frame interval 1); set the scale in the store's metadata if that is wrong", group_path)
    unit_chunks = arr.shards if arr.shards is not None else arr.chunks
    # from_zarr's graph, reading through read_region: a chunk the codec cannot decode is named
    from dask.base import tokenize

    name = "from-zarr-" + tokenize(arr, path, {}, unit_chunks)
    data = da.from_array(_NamedChunkReader(arr), chunks=unit_chunks, name=name,
                         meta=np.empty((0,) * arr.ndim, dtype=arr.dtype))
    return OmeImage(data=data, axes=axes, scale=scale, units=units, store=root, path=path, level=int(level),
                    n_levels=n_levels, ngff_version=version, scale_assumed=not _has_scale(ms, level))


def open_image(store: str | os.PathLike[str], level: int = 0) -> OmeImage:
    """Open one level of an OME-Zarr image (NGFF 0.4 on zarr v2 or 0.5 on zarr v3).

    Parameters
    ----------
    store : path-like
        Folder of the store root (the group holding ``multiscales``).
    level : int
        Pyramid level, 0 = full resolution.

    Returns
    -------
    OmeImage

    Raises
    ------
    StoreNotFoundError
        The folder or the requested level does not exist.
    InvalidDataError
        The folder is not a zarr group with multiscales metadata.
    AxesError
        The axes are not a subset of ``tczyx`` in order.
    """
    return _open_level(_as_path(store), "", level)


def _check_label_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or name.strip() != name:
        raise ConfigError(f"invalid labels name {name!r}: use a non-empty name without '/' or leading '.'")
    return name


def open_labels(store: str | os.PathLike[str], name: str, level: int = 0) -> OmeImage:
    """Open one level of the labels group ``store/labels/<name>``.

    Parameters
    ----------
    store : path-like
        Image store root.
    name : str
        Labels group name, as listed by :func:`list_labels`.
    level : int
        Pyramid level.

    Returns
    -------
    OmeImage
        ``path`` is ``"labels/<name>/<level path>"``.

    Raises
    ------
    StoreNotFoundError
        Naming the labels groups that do exist.
    InvalidDataError
        The group is flagged incomplete (``attrs["vollseg_dask"]["complete"] is False``).
    """
    root = _as_path(store)
    _check_label_name(name)
    lab_dir = root / "labels" / name
    if not lab_dir.is_dir() and not (root / "labels" / f".{name}.lock").exists():
        from vollseg_dask.io.atomic import recover_dir

        recover_dir(lab_dir)  # a replacement killed between its two renames, and no writer now
    if not lab_dir.is_dir():
        if not root.exists():
            raise StoreNotFoundError(f"OME-Zarr store not found: {root}")
        raise StoreNotFoundError(f"labels {name!r} not found in {root}; available: {list_labels(root)}")
    if labels_state(root, name).get("complete") is False:
        raise InvalidDataError(
            f"labels {name!r} in {root} are incomplete: the segmentation that writes them was interrupted "
            "(or still runs); segment again to finish or replace them"
        )
    return _open_level(root, f"labels/{name}", level)


def list_labels(store: str | os.PathLike[str]) -> list[str]:
    """Names listed in the store's ``labels`` group (empty list when there is none).

    Parameters
    ----------
    store : path-like
        Image store root.

    Returns
    -------
    list of str
    """
    root = _as_path(store)
    if not root.exists():
        raise StoreNotFoundError(f"OME-Zarr store not found: {root}")
    if not (root / "labels").is_dir():
        return []
    _, ome = _ome_attrs(_open_group(root / "labels"))
    return [str(n) for n in ome.get("labels", [])]


# --------------------------------------------------------------------------------------------------
# Creating and writing
# --------------------------------------------------------------------------------------------------


def _create_levels(group: zarr.Group, *, shape: tuple[int, ...], dtype: np.dtype, axes: str,
                   chunks: tuple[int, ...], shards: tuple[int, ...] | None, n_levels: int,
                   fill_value: Any, version: str) -> list[zarr.Array]:
    arrays = []
    for k in range(n_levels):
        shp = level_shape(shape, axes, k)
        ck, sk = _level_chunking(chunks, shards, shp)
        kwargs: dict[str, Any] = {"shape": shp, "dtype": dtype, "chunks": ck, "fill_value": fill_value,
                                  "compressors": checksum_codecs(3 if version == "0.5" else 2)}
        if version == "0.5":
            kwargs["dimension_names"] = list(axes)
            if sk is not None:
                kwargs["shards"] = sk
        else:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}  # NGFF 0.4 nested chunk keys
        arrays.append(group.create_array(str(k), **kwargs))
    return arrays


def _check_common(*, n_levels: int, ngff_version: str, shards: Any) -> None:
    if ngff_version not in NGFF_VERSIONS:
        raise ConfigError(f"ngff_version must be one of {NGFF_VERSIONS}, got {ngff_version!r}")
    if not isinstance(n_levels, int | np.integer) or n_levels < 1:
        raise ConfigError(f"n_levels must be an integer >= 1, got {n_levels!r}")
    if shards is not None and ngff_version == "0.4":
        raise ConfigError("sharding needs zarr v3 (NGFF 0.5); it is not available with ngff_version='0.4'")


def create_image(store: str | os.PathLike[str], *, shape: Sequence[int], dtype: Any, axes: str,
                 scale: Sequence[float] | None, chunks: Sequence[int] | int | None = None,
                 shards: Sequence[int] | None = None, units: Mapping[str, str] | None = None,
                 n_levels: int = 1, overwrite: bool = False, fill_value: Any = 0,
                 ngff_version: str = "0.5", name: str = "image") -> zarr.Array:
    """Create an empty OME-Zarr image: level arrays ``"0"``, ``"1"``, ... plus multiscales metadata.

    Parameters
    ----------
    store : path-like
        Folder to create (must be absent or empty unless ``overwrite``).
    shape : sequence of int
        Level-0 shape, one entry per axis.
    dtype : dtype-like
        Bool, integer or float.
    axes : str
        Subset of ``tczyx`` in order, ending with ``yx``.
    scale : sequence of float or None
        Level-0 scale per axis (µm for z/y/x, frame interval for t, 1.0 for c); None = all 1.0.
    chunks : sequence of int, int or None
        Zarr chunk shape (entries -1/None = full extent); None picks :func:`default_chunks`.
    shards : sequence of int, optional
        Shard shape (zarr v3 only), a multiple of ``chunks`` on every axis.
    units : mapping, optional
        NGFF unit per axis; defaults ``micrometer`` for z/y/x and ``second`` for t.
    n_levels : int
        Pyramid levels; level k is downsampled by ``2**k`` in y and x only.
    overwrite : bool
        Replace an existing zarr store at ``store``.
    fill_value : scalar
        Value of never-written chunks.
    ngff_version : {"0.5", "0.4"}
        0.5 writes zarr v3 with metadata under ``ome``; 0.4 writes zarr v2.
    name : str
        Multiscale name stored in the metadata.

    Returns
    -------
    zarr.Array
        Level-0 array, open for block writes.

    Raises
    ------
    AxesError, ShapeError, DTypeError, ConfigError, StoreExistsError
    """
    import zarr

    root = _as_path(store)
    axes = validate_axes(axes)
    shp = _validate_shape(shape, axes)
    dt = _validate_dtype(dtype, labels=False)
    sc = _validate_scale(scale, axes)
    un = _validate_units(units, axes)
    _check_common(n_levels=n_levels, ngff_version=ngff_version, shards=shards)
    ck = _normalise_chunks(chunks, shp, axes)
    sk = _normalise_shards(shards, ck, shp, axes)
    _check_target(root, overwrite)
    if root.exists():
        _remove(root)
    zarr_format = 3 if ngff_version == "0.5" else 2
    group = zarr.open_group(str(root), mode="w", zarr_format=zarr_format)
    arrays = _create_levels(group, shape=shp, dtype=dt, axes=axes, chunks=ck, shards=sk, n_levels=n_levels,
                            fill_value=fill_value, version=ngff_version)
    # Metadata last: until here the folder is not an OME-Zarr image.
    ms = _multiscale_meta(axes, sc, un, n_levels, name, ngff_version)
    group.attrs.update(_wrap(ngff_version, {"multiscales": [ms]}))
    return arrays[0]


def create_labels(store: str | os.PathLike[str], name: str, *, dtype: Any = "uint32",
                  chunks: Sequence[int] | int | None = None, shards: Sequence[int] | None = None,
                  overwrite: bool = False, fill_value: int = 0, staging: str | None = None) -> zarr.Array:
    """Create an empty labels group ``store/labels/<name>`` beside the image.

    It gets the image's shape, axes, scale, units and number of levels, NGFF ``image-label``
    metadata pointing back to the image, and its name is appended to ``store/labels``'s list
    (last, so an incomplete group is never listed).

    Parameters
    ----------
    store : path-like
        Image store root (must hold an image).
    name : str
        Labels group name (no ``/``).
    dtype : dtype-like
        Integer dtype (default uint32).
    chunks, shards : sequence of int, optional
        Storage layout; None = the image's level-0 chunks (and shards when both are None).
    overwrite : bool
        Replace an existing labels group of that name.
    fill_value : int
        Value of never-written chunks (background).
    staging : str, optional
        Build the group in the hidden folder ``store/labels/<staging>`` instead (replacing whatever is
        there), not listed; :func:`commit_labels` later swaps it in as ``name`` in one rename.

    Returns
    -------
    zarr.Array
        Level-0 labels array, open for block writes.

    Raises
    ------
    DTypeError
        Non-integer dtype.
    StoreExistsError
        The labels group exists and ``overwrite`` is False.
    """
    import zarr

    root = _as_path(store)
    _check_label_name(name)
    dt = _validate_dtype(dtype, labels=True)
    image = open_image(root, 0)
    version = image.ngff_version
    axes = image.axes
    shp = image.shape
    if chunks is None:
        ck = image.chunks
        shards = image.shards if shards is None else shards
    else:
        ck = _normalise_chunks(chunks, shp, axes)
    _check_common(n_levels=image.n_levels, ngff_version=version, shards=shards)
    sk = _normalise_shards(shards, ck, shp, axes)

    label_dir = root / "labels" / (staging or name)
    if staging is not None:
        if not staging.startswith("."):
            raise ConfigError(f"a staging folder must be hidden (start with '.'), got {staging!r}")
        if label_dir.exists():
            _remove(label_dir)
    elif label_dir.exists() and any(label_dir.iterdir()):
        if not overwrite:
            raise StoreExistsError(f"labels {name!r} already exist in {root}; pass overwrite=True to replace them")
        _remove(label_dir)
    zarr_format = 3 if version == "0.5" else 2
    labels_group = zarr.open_group(str(root / "labels"), mode="a", zarr_format=zarr_format)
    group = zarr.open_group(str(label_dir), mode="w", zarr_format=zarr_format)
    arrays = _create_levels(group, shape=shp, dtype=dt, axes=axes, chunks=ck, shards=sk, n_levels=image.n_levels,
                            fill_value=fill_value, version=version)
    # Level scales only: a nearest-pick label pyramid has no half-pixel shift.
    lms = _multiscale_meta(axes, image.scale, image.units, image.n_levels, name, version)
    image_label: dict[str, Any] = {"source": {"image": "../../"}}
    if version == "0.4":
        image_label["version"] = "0.4"
    group.attrs.update(_wrap(version, {"multiscales": [lms], "image-label": image_label}))
    if staging is None:
        _list_label(labels_group, version, name)
    return arrays[0]


def _list_label(labels_group: zarr.Group, version: str, name: str) -> None:
    _, lattrs = _ome_attrs(labels_group)
    names = [str(n) for n in lattrs.get("labels", [])]
    if name not in names:
        names.append(name)
        labels_group.attrs.update(_wrap(version, {"labels": names}))


def commit_labels(store: str | os.PathLike[str], name: str, staging: str) -> None:
    """Swap the finished labels group built in ``store/labels/<staging>`` in as ``name``.

    The old group (if any) is moved aside and deleted only after the new one is in place
    (:func:`vollseg_dask.io.atomic.commit_dir`); then ``name`` is listed in ``store/labels``.
    """
    import zarr

    from vollseg_dask.io.atomic import commit_dir

    root = _as_path(store)
    _check_label_name(name)
    src = root / "labels" / staging
    if not src.is_dir():
        raise StoreNotFoundError(f"no staged labels at {src}")
    commit_dir(src, root / "labels" / name)
    version = open_image(root, 0).ngff_version
    labels_group = zarr.open_group(str(root / "labels"), mode="a", zarr_format=3 if version == "0.5" else 2)
    _list_label(labels_group, version, name)


def labels_state(store: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """What vollseg-dask recorded on a labels group (``attrs["vollseg_dask"]``; empty for foreign ones)."""
    import zarr

    path = _as_path(store) / "labels" / name
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    except (FileNotFoundError, ValueError, KeyError):
        return {}
    rec = attrs.get("vollseg_dask")
    return dict(rec) if isinstance(rec, dict) else {}


def labels_fingerprints_t(store: str | os.PathLike[str], name: str) -> list[str]:
    """Identity of a labels group's content per time point: what its segmentation recorded, else
    :func:`array_digests` of its level 0 (one entry for labels without a t axis)."""
    import zarr

    rec = labels_state(store, name)
    if isinstance(rec.get("fingerprints_t"), list):
        return [str(v) for v in rec["fingerprints_t"]]
    lab = open_labels(store, name, 0)
    arr = zarr.open_array(store=str(lab.store), path=lab.path, mode="r")
    return array_digests(arr) if "t" in lab.axes else [array_digest(arr)]


def labels_fingerprint(store: str | os.PathLike[str], name: str) -> str:
    """Identity of a labels group's content: the fingerprint its segmentation recorded (settings
    and input digest), else :func:`array_digest` of its level 0 (labels written by other tools)."""
    import zarr

    rec = labels_state(store, name)
    if rec.get("fingerprint"):
        return str(rec["fingerprint"])
    lab = open_labels(store, name, 0)
    return array_digest(zarr.open_array(store=str(lab.store), path=lab.path, mode="r"))


def _aligned(chunks: tuple[tuple[int, ...], ...], unit: tuple[int, ...]) -> bool:
    """True when every Dask block boundary (except the array end) falls on a storage-unit boundary."""
    for axis_chunks, u in zip(chunks, unit, strict=True):
        edges = np.cumsum(axis_chunks)[:-1]
        if np.any(edges % u):
            return False
    return True


def _store_lock_free(source: dask.array.Array, target: zarr.Array) -> None:
    """Store a Dask array into zarr; blocks must cover whole storage units so no lock is needed."""
    import dask.array as da

    unit = tuple(target.shards or target.chunks)
    if not _aligned(source.chunks, unit):
        source = source.rechunk(unit)
    da.store(source, target, lock=False, compute=True)


def _sibling_temp(root: Path, tag: str) -> Path:
    from vollseg_dask.io.atomic import sibling_temp

    return sibling_temp(root, tag)


def _commit(tmp: Path, root: Path) -> None:
    """Move a finished store into place; an existing one is moved aside first, then deleted."""
    from vollseg_dask.io.atomic import commit_dir

    commit_dir(tmp, root)


@contextmanager
def _joined_local_threads() -> Iterator[None]:
    """Run local threaded computations on a private pool that is joined on exit.

    When a task fails, Dask's threaded scheduler raises at once while sibling tasks may still be
    writing; joining the pool before cleaning up guarantees that nothing recreates the temporary
    store after it is deleted. Other schedulers (a distributed Client, "synchronous") are used
    unchanged.
    """
    from concurrent.futures import ThreadPoolExecutor

    import dask
    import dask.threaded
    from dask.base import get_scheduler
    from dask.system import CPU_COUNT

    if get_scheduler() not in (None, dask.threaded.get):
        yield
        return
    pool = ThreadPoolExecutor(max_workers=dask.config.get("num_workers", None) or CPU_COUNT)
    try:
        with dask.config.set(pool=pool):
            yield
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def write_image(store: str | os.PathLike[str], data: np.ndarray | dask.array.Array, *, axes: str,
                scale: Sequence[float] | None, chunks: Sequence[int] | int | None = None,
                pyramid_method: str = "mean", **create_kwargs: Any) -> OmeImage:
    """Write a NumPy or Dask array as a new OME-Zarr image, block by block, then build its pyramid.

    The store is assembled in a hidden sibling folder and renamed into place at the end, so an
    interrupted write leaves no valid-looking image at ``store`` (and keeps an old one intact).

    Parameters
    ----------
    store : path-like
        Output folder.
    data : numpy.ndarray or dask.array.Array
        Image data; a Dask array is never computed as a whole.
    axes : str
        Axes of ``data`` (subset of ``tczyx`` in order).
    scale : sequence of float or None
        Level-0 scale per axis.
    chunks : sequence of int, int or None
        Zarr chunk shape, see :func:`create_image`.
    pyramid_method : {"mean", "nearest"}
        Downsampling of levels >= 1 (``"nearest"`` for label-like data).
    **create_kwargs
        Passed to :func:`create_image`: ``shards``, ``units``, ``n_levels``, ``overwrite``,
        ``fill_value``, ``ngff_version``, ``name``.

    Returns
    -------
    OmeImage
        Level 0 of the written image.
    """
    import dask.array as da

    for key in ("shape", "dtype"):
        if key in create_kwargs:
            raise ConfigError(f"write_image takes {key} from the data; do not pass {key}=")
    if pyramid_method not in PYRAMID_METHODS:
        raise ConfigError(f"pyramid_method must be one of {PYRAMID_METHODS}, got {pyramid_method!r}")
    if not isinstance(data, np.ndarray | da.Array):
        data = np.asarray(data)
    axes = validate_axes(axes, data.ndim, data.shape)
    root = _as_path(store)
    _check_target(root, bool(create_kwargs.get("overwrite", False)))
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling_temp(root, "tmp")
    try:
        with _joined_local_threads():
            target = create_image(tmp, shape=data.shape, dtype=data.dtype, axes=axes, scale=scale, chunks=chunks,
                                  **{**create_kwargs, "overwrite": False})
            unit = tuple(target.shards or target.chunks)
            src = data if isinstance(data, da.Array) else da.from_array(data, chunks=unit)
            _store_lock_free(src, target)
            build_pyramid(tmp, "", method=pyramid_method)
        _commit(tmp, root)
    except BaseException:
        _remove(tmp)
        raise
    return open_image(root, 0)


# --------------------------------------------------------------------------------------------------
# Pyramid
# --------------------------------------------------------------------------------------------------


def downsample_mean_yx(block: np.ndarray) -> np.ndarray:
    """Average 2×2 windows over the last two axes (y, x), keeping the dtype.

    Parameters
    ----------
    block : numpy.ndarray, shape (..., Y, X)
        Input whose first row/column sits on an even global index.

    Returns
    -------
    numpy.ndarray, shape (..., ceil(Y/2), ceil(X/2))
        Mean of each window; a window cut by an odd edge averages the pixels it has. Integer
        results are rounded half to even; bool is treated as 0/1 and thresholded at 0.5.
    """
    y, x = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, y % 2), (0, x % 2)]
    # Edge replication makes the mean of a cut window equal the mean of its real pixels.
    work = np.pad(block, pad, mode="edge") if (y % 2 or x % 2) else block
    yy, xx = work.shape[-2:]
    shaped = work.reshape(*work.shape[:-2], yy // 2, 2, xx // 2, 2)
    mean = shaped.mean(axis=(-3, -1), dtype=np.float64)
    if block.dtype.kind == "b":
        return mean > 0.5
    if block.dtype.kind in "iu":
        info = np.iinfo(block.dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(block.dtype)
    return mean.astype(block.dtype)


def downsample_nearest_yx(block: np.ndarray) -> np.ndarray:
    """Pick every second pixel in y and x (the top-left of each 2×2 window).

    Parameters
    ----------
    block : numpy.ndarray, shape (..., Y, X)
        Input whose first row/column sits on an even global index.

    Returns
    -------
    numpy.ndarray, shape (..., ceil(Y/2), ceil(X/2))
        A copy; every value also occurs in ``block``, so labels never gain new IDs.
    """
    return np.ascontiguousarray(block[..., ::2, ::2])


def _set_translations(group: zarr.Group, version: str, method: str) -> None:
    """Record where level-k pixel centres sit: shifted by (2**k-1)/2 level-0 pixels for 'mean'."""
    _, ome = _ome_attrs(group)
    ms_list = [dict(m) for m in ome["multiscales"]]
    ms = ms_list[0]
    axes = [a["name"] if isinstance(a, dict) else a for a in ms["axes"]]
    base = _scale_from_meta({"datasets": ms["datasets"]}, 0, len(axes))
    datasets = []
    for k, ds in enumerate(ms["datasets"]):
        ds = dict(ds)
        trs = [tr for tr in ds.get("coordinateTransformations", []) if tr.get("type") != "translation"]
        if k > 0 and method == "mean":
            shift = [_clean(0.5 * (2**k - 1) * base[i]) if a in ("y", "x") else 0.0 for i, a in enumerate(axes)]
            trs.append({"type": "translation", "translation": shift})
        ds["coordinateTransformations"] = trs
        datasets.append(ds)
    ms["datasets"] = datasets
    rest = {k: v for k, v in ome.items() if k not in ("version", "multiscales")}
    group.attrs.update(_wrap(version, {**rest, "multiscales": ms_list}))


def build_pyramid(store: str | os.PathLike[str], path: str = "", method: str = "mean") -> None:
    """Fill levels >= 1 block by block, each from the level above.

    Parameters
    ----------
    store : path-like
        Store root.
    path : str
        ``""`` for the image, ``"labels/<name>"`` for a labels group.
    method : {"mean", "nearest"}
        ``"mean"`` (2×2 average, dtype kept) for images; ``"nearest"`` (strided pick) for labels,
        so that a lower level never holds a label that level 0 lacks. ``"mean"`` on a labels group
        is refused. The per-level ``translation`` metadata is rewritten to match the method.

    Raises
    ------
    ConfigError
        Unknown method, or ``"mean"`` requested for a labels group.
    """
    import dask.array as da
    import zarr

    if method not in PYRAMID_METHODS:
        raise ConfigError(f"method must be one of {PYRAMID_METHODS}, got {method!r}")
    root = _as_path(store)
    group_path = root / path if path else root
    version, ms, group = _parse_multiscales(group_path)
    _, ome = _ome_attrs(group)
    if "image-label" in ome and method != "nearest":
        raise ConfigError(f"{group_path} is a labels group: its pyramid must use method='nearest', not {method!r}")
    axes, _ = _axes_from_meta(ms, group_path)
    paths = [ds["path"] for ds in ms["datasets"]]
    kernel = downsample_mean_yx if method == "mean" else downsample_nearest_yx
    for k in range(1, len(paths)):
        src = zarr.open_array(store=str(group_path), path=str(paths[k - 1]), mode="r")
        dst = zarr.open_array(store=str(group_path), path=str(paths[k]), mode="r+")
        expected = level_shape(src.shape, axes, 1)
        if tuple(dst.shape) != expected:
            raise ShapeError(f"{group_path}/{paths[k]} has shape {dst.shape}; level {k} must be {expected} "
                             f"(level {k - 1} {src.shape} halved in y and x)")
        unit = tuple(dst.shards or dst.chunks)
        dst_chunks = da.core.normalize_chunks(unit, dst.shape)
        # Source blocks of twice the target unit in y/x start on even indices, as the kernels need.
        src_unit = tuple(2 * u if a in "yx" else u for a, u in zip(axes, unit, strict=True))
        source = da.from_zarr(src).rechunk(src_unit)
        down = source.map_blocks(kernel, chunks=dst_chunks, dtype=dst.dtype,
                                 meta=np.empty((0,) * dst.ndim, dtype=dst.dtype))
        da.store(down, dst, lock=False, compute=True)
    _set_translations(_open_group(group_path, mode="r+"), version, method)
