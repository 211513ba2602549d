"""Bring existing masks (TIFF, HDF5, ``.npy``, zarr) into an image store as a labels group.

``vollseg-dask convert MASKS STORE --as-labels NAME`` lands here. The masks are read with the
readers of :mod:`vollseg_dask.io.ingest` (same axes and dataset handling as images), checked
against the image already in ``STORE`` (integer dtype, axes, shape), written slab by slab into
``STORE/labels/NAME`` with :func:`vollseg_dask.io.omezarr.create_labels`, and the pyramid is filled
by nearest picking (:func:`vollseg_dask.io.omezarr.build_pyramid`), so no level holds a label that
level 0 lacks. Masks without a ``c`` axis given to an image with channels hold the same labels for
every channel (the layout of every labels group in this project).

While it is written the group's attributes say ``vollseg_dask.complete: false`` (as the segmentation
driver's do); they say ``true`` once every level is written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from vollseg_dask.errors import AxesError, DTypeError, InvalidDataError, ShapeError

__all__ = ["import_labels"]

LOG = logging.getLogger(__name__)


def _zarr_source(path: Path) -> Any:
    """A Dask array over a plain zarr array (or the level-0 array of an OME-Zarr labels/image group)."""
    import dask.array as da
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return da.from_zarr(node)
    from vollseg_dask.io.omezarr import _parse_multiscales

    _, ms, _ = _parse_multiscales(path)
    return da.from_zarr(zarr.open_array(store=str(path), path=str(ms["datasets"][0]["path"]), mode="r"))


def _check_nonnegative(block: np.ndarray) -> np.ndarray:
    if block.dtype.kind == "i" and block.size and int(block.min()) < 0:
        raise InvalidDataError(f"masks hold negative values (smallest {int(block.min())}); labels must be >= 0")
    return block


def import_labels(masks: str | os.PathLike[str] | np.ndarray, store: str | os.PathLike[str], name: str, *,
                  axes: str | None = None, dataset: str | int | None = None, overwrite: bool = False,
                  max_slab_bytes: int = 64 * 2**20) -> Path:
    """Write masks as the labels group ``store/labels/<name>`` of an existing image store.

    Parameters
    ----------
    masks : path-like or numpy.ndarray
        Integer masks: TIFF, HDF5 (``dataset``), ``.npy``, a zarr array or OME-Zarr group (``.zarr``
        folder), or an array. Background is 0.
    store : path-like
        OME-Zarr image store that receives the labels.
    name : str
        Labels group name.
    axes : str, optional
        Axes of the masks in their own order (e.g. ``"TZYX"``); default from the file's metadata,
        else by ndim (as :func:`vollseg_dask.io.ingest.convert`).
    dataset : str or int, optional
        HDF5 dataset name or TIFF series index.
    overwrite : bool
        Replace an existing labels group of that name.
    max_slab_bytes : int
        Memory budget of one read block.

    Returns
    -------
    pathlib.Path
        ``store/labels/<name>``.

    Raises
    ------
    DTypeError
        The masks are not of an integer (or bool) dtype; float masks are refused, not rounded.
    AxesError
        The masks' axes differ from the image's (a missing ``c`` axis is allowed).
    ShapeError
        The masks' shape differs from the image's.
    InvalidDataError
        Negative label values (found while writing; the group is then left marked incomplete).
    StoreNotFoundError, StoreExistsError
        No image in ``store``; the labels group exists and ``overwrite`` is False.
    """
    import dask.array as da
    import zarr

    from vollseg_dask.io.ingest import inspect_source, plan_slab, resolve_source_axes
    from vollseg_dask.io.omezarr import AXES_ORDER, build_pyramid, create_labels, open_image, validate_axes

    image = open_image(store, 0)
    src_path = None if isinstance(masks, np.ndarray) else Path(masks)
    if src_path is not None and src_path.is_dir():
        source: Any = _zarr_source(src_path)
    else:
        source = masks
    info = inspect_source(source, dataset)
    what = info.description
    if info.dtype.kind not in "biu":
        raise DTypeError(f"masks {what} have dtype {info.dtype}; labels need an integer dtype (float masks are "
                         f"refused: relabel or cast them to integers first)")
    src_axes = resolve_source_axes(info.shape, axes, info.axes)
    order = sorted(range(len(src_axes)), key=lambda i: AXES_ORDER.index(src_axes[i]))
    out_axes = validate_axes("".join(src_axes[i] for i in order))
    out_shape = tuple(info.shape[i] for i in order)
    want_axes = image.axes
    broadcast_c = "c" in want_axes and "c" not in out_axes
    if out_axes != (want_axes.replace("c", "") if broadcast_c else want_axes):
        raise AxesError(f"masks {what} have axes {out_axes!r} (shape {out_shape}); the image in {store} has axes "
                        f"{want_axes!r} (shape {image.shape}): pass --axes to name the masks' axes")
    want_shape = tuple(n for a, n in zip(want_axes, image.shape, strict=True) if not (broadcast_c and a == "c"))
    if out_shape != want_shape:
        raise ShapeError(f"masks {what} have shape {out_shape} (axes {out_axes!r}); the image in {store} has "
                         f"{want_shape} there: masks must cover the image voxel for voxel")

    from vollseg_dask.locks import hold_lock

    # one writer per labels group: the same lock as segment and run (names the holder when refused)
    (Path(store) / "labels").mkdir(exist_ok=True)
    with hold_lock(Path(store) / "labels" / f".{name}.lock", f"labels {name!r} of {store}"):
        dtype = np.dtype("uint8") if info.dtype.kind == "b" else info.dtype
        target = create_labels(store, name, dtype=dtype, overwrite=overwrite)
        group = zarr.open_group(str(Path(store) / "labels" / name), mode="r+")
        group.attrs.update({"vollseg_dask": {"complete": False, "source": str(what)}})
        unit = tuple(int(u) for u in (target.shards or target.chunks))
        unit_no_c = tuple(u for a, u in zip(want_axes, unit, strict=True) if not (broadcast_c and a == "c"))
        block = plan_slab(out_shape, out_axes, unit_no_c, dtype.itemsize, max_slab_bytes)
        src_block = [0] * len(order)
        for out_i, src_i in enumerate(order):
            src_block[src_i] = block[out_i]
        try:
            reader = info.reader
            if isinstance(reader, da.Array):
                data = reader.rechunk(tuple(src_block))
            elif isinstance(reader, np.ndarray):
                data = da.from_array(reader, chunks=tuple(src_block))
            else:
                data = da.from_array(reader, chunks=tuple(src_block), lock=False, fancy=False, asarray=True,
                                     meta=np.empty((0,) * len(src_block), dtype=info.dtype))
            data = data.transpose(order).map_blocks(_check_nonnegative, dtype=info.dtype).astype(dtype)
            if broadcast_c:
                ci = want_axes.index("c")
                nc = image.shape[ci]
                chunks = list(data.chunks)
                chunks.insert(ci, tuple(min(unit[ci], nc - k) for k in range(0, nc, unit[ci])))
                data = da.broadcast_to(da.expand_dims(data, ci), image.shape, chunks=tuple(chunks))
            da.store(data, target, lock=False, compute=True)
        finally:
            close = getattr(info.reader, "close", None)
            if callable(close):
                close()
        build_pyramid(store, f"labels/{name}", method="nearest")
        group.attrs.update({"vollseg_dask": {"complete": True, "source": str(what)}})
        LOG.info("imported %s as labels %r of %s (axes %s, shape %s, dtype %s)", what, name, store, want_axes,
                 image.shape, dtype)
        return Path(store) / "labels" / name
