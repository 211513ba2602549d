"""Exception hierarchy of vollseg-dask.

Every error the library raises on purpose is a :class:`VollSegError`. Each
subclass also inherits the built-in exception a caller would naturally catch
(``ValueError``, ``FileNotFoundError`` ...), following zarr-python 3, so that
``except ValueError`` keeps working for code that does not know this package.
"""

from __future__ import annotations

__all__ = [
    "VollSegError",
    "ConfigError",
    "AxesError",
    "ShapeError",
    "DTypeError",
    "InvalidDataError",
    "StoreNotFoundError",
    "StoreExistsError",
    "ModelNotFoundError",
    "MissingDependencyError",
    "CorruptChunkError",
    "LockedError",
    "TrackingError",
]


class VollSegError(Exception):
    """Base class of every error raised deliberately by vollseg-dask."""


class ConfigError(VollSegError, ValueError):
    """A configuration file or value is invalid (unknown key, wrong type, bad range)."""


class AxesError(VollSegError, ValueError):
    """Axes are unknown, repeated, out of order, or do not match the data's dimensionality."""


class ShapeError(VollSegError, ValueError):
    """An array has a shape the operation cannot accept."""


class DTypeError(VollSegError, TypeError):
    """An array has a dtype the operation cannot accept (e.g. float labels)."""


class InvalidDataError(VollSegError, ValueError):
    """Data values are unusable (NaN/Inf, empty volume, ...)."""


class StoreNotFoundError(VollSegError, FileNotFoundError):
    """An input store, file, dataset or group does not exist."""


class StoreExistsError(VollSegError, FileExistsError):
    """An output already exists and overwriting was not requested."""


class ModelNotFoundError(VollSegError, FileNotFoundError):
    """A model folder is missing or lacks ``config.json``/weights."""


class MissingDependencyError(VollSegError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class CorruptChunkError(VollSegError, OSError):
    """A stored chunk cannot be read or decoded; the message names the chunk."""


class LockedError(VollSegError, RuntimeError):
    """Another run holds the lock on an output folder."""


class TrackingError(VollSegError, ValueError):
    """Tracking input or settings are inconsistent."""


def require(module: str, extra: str) -> object:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"napari"``.
    extra : str
        The ``pip install vollseg-dask[EXTRA]`` extra that provides it.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on environment
        raise MissingDependencyError(
            f"{module!r} is required for this feature; install it with "
            f"`pip install 'vollseg-dask[{extra}]'`"
        ) from exc
