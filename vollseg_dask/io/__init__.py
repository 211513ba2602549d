"""I/O and formats: OME-Zarr images and labels, TIFF/HDF5/NumPy ingest.

Names are re-exported lazily (module ``__getattr__``) so that ``import vollseg_dask.io`` loads
neither Dask nor zarr until a function is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from vollseg_dask.io.ingest import convert
    from vollseg_dask.io.omezarr import (
        OmeImage,
        build_pyramid,
        create_image,
        create_labels,
        list_labels,
        open_image,
        open_labels,
        write_image,
    )

_EXPORTS: dict[str, str] = {
    "OmeImage": "vollseg_dask.io.omezarr",
    "open_image": "vollseg_dask.io.omezarr",
    "open_labels": "vollseg_dask.io.omezarr",
    "list_labels": "vollseg_dask.io.omezarr",
    "create_image": "vollseg_dask.io.omezarr",
    "create_labels": "vollseg_dask.io.omezarr",
    "write_image": "vollseg_dask.io.omezarr",
    "build_pyramid": "vollseg_dask.io.omezarr",
    "convert": "vollseg_dask.io.ingest",
}

__all__ = [
    "OmeImage",
    "build_pyramid",
    "convert",
    "create_image",
    "create_labels",
    "list_labels",
    "open_image",
    "open_labels",
    "write_image",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vollseg_dask.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
