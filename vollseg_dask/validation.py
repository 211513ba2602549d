"""Up-front checks of inputs that would otherwise fail late or silently (issue "Bad input").

Each check is cheap (metadata only, never voxel data) and runs before any block is processed:
:func:`vollseg_dask.pipeline.run` calls :func:`check_models` once before the first data set and
:func:`check_source_volume` before converting or segmenting each one; the segmentation driver calls
:func:`check_volume_axes` and :func:`check_channel`. The behaviour for every bad-input case is
listed in ``docs/architecture.md`` (section *Bad input*).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from vollseg_dask.errors import AxesError, ConfigError, ModelNotFoundError

__all__ = ["check_volume_axes", "check_channel", "check_source_volume", "check_models"]

LOG = logging.getLogger(__name__)


def check_volume_axes(axes: str, shape: Sequence[int], what: str) -> None:
    """Refuse an image that is not a 3-D volume (optionally with ``t`` and ``c``).

    Parameters
    ----------
    axes : str
        Lower-case axes of the image, e.g. ``"tczyx"``.
    shape : sequence of int
        Its shape (same length as ``axes``).
    what : str
        Name of the image in the message (a path or data set name).

    Raises
    ------
    AxesError
        ``z``, ``y`` or ``x`` is missing; the message names the axes, the shape and what to do.
    """
    missing = [a for a in "zyx" if a not in axes]
    if missing:
        raise AxesError(
            f"{what} has axes {axes!r} and shape {tuple(int(s) for s in shape)}: segmentation needs a 3-D volume "
            f"(axes z, y, x, optionally t and c) but '{''.join(missing)}' is missing; a 2-D image or a 2-D "
            f"time series cannot be segmented (if a stack was read as time or channels, give its axes explicitly, "
            f"e.g. input.axes='ZYX')"
        )


def check_channel(axes: str, shape: Sequence[int], channel: int, chosen: bool, what: str) -> None:
    """Check the channel fed to the networks; warn when several exist and none was chosen.

    Parameters
    ----------
    axes, shape : str, sequence of int
        The image's axes and shape.
    channel : int
        The channel that will be used.
    chosen : bool
        Whether the user set the channel explicitly (otherwise it is the default 0).
    what : str
        Name of the image in the message.

    Raises
    ------
    ConfigError
        ``channel`` does not exist.
    """
    n_c = int(shape[axes.index("c")]) if "c" in axes else 1
    if not 0 <= int(channel) < n_c:
        raise ConfigError(f"channel {channel} out of range: {what} has {n_c} channel(s) (axes {axes!r}, "
                          f"shape {tuple(int(s) for s in shape)})")
    if n_c > 1 and not chosen:
        # documented default, but silent use of channel 0 of a multi-channel image is a common mistake
        LOG.warning("%s has %d channels (axes %r); segmenting channel 0 - set segment.channel to choose another",
                    what, n_c, axes)


def check_source_volume(path: str | os.PathLike[str], *, axes: str | None = None, dataset: str | None = None) -> None:
    """Refuse an input file or store that is not a 3-D volume, before converting it.

    Reads metadata only (TIFF tags, HDF5 attributes, ``.npy`` header or OME-Zarr attributes).

    Parameters
    ----------
    path : path-like
        OME-Zarr store, TIFF, HDF5 or ``.npy`` file.
    axes : str, optional
        Axes given by the user for non-Zarr inputs (see :func:`vollseg_dask.io.ingest.convert`).
    dataset : str, optional
        HDF5 dataset or TIFF series.

    Raises
    ------
    AxesError
        The axes do not describe the data (e.g. 6 dimensions with no axes given), or the input has
        no z, y or x axis (a 2-D image or time series).
    """
    p = Path(path)
    if p.is_dir():
        from vollseg_dask.io.omezarr import open_image

        img = open_image(p, 0)  # raises AxesError when the axes metadata do not match the array
        check_volume_axes(img.axes, img.shape, str(p))
        return
    from vollseg_dask.io.ingest import check_source_metadata, inspect_source, resolve_source_axes

    info = inspect_source(p, dataset)
    check_source_metadata(info, axes)
    src_axes = resolve_source_axes(info.shape, axes, info.axes)
    check_volume_axes(src_axes, info.shape, str(p))


def check_models(models: str | os.PathLike[str], *, denoise: bool, stardist: str | None = None,
                 unet: str | None = None, n2v: str | None = None, need_unet: bool = True) -> None:
    """Check a models folder (``stardist/``, ``unet/``, optionally ``n2v/``) without TensorFlow.

    Parameters
    ----------
    models : path or ``"bundled"``
        As ``PredictorConfig.models``.
    denoise : bool
        Whether a Noise2Void model is required.
    stardist, unet, n2v : path, optional
        Single model folders replacing that network of ``models`` (``PredictorConfig``).
    need_unet : bool
        Whether a U-Net is required (every mode but ``stardist``).

    Raises
    ------
    ModelNotFoundError
        The folder, a needed sub-folder, its ``config.json`` or its weights are missing.
    ConfigError
        A sub-folder holds another kind of model, a 2-D model, or one with more than one input channel.
    """
    from vollseg_dask.networks.folders import bundled_model_dir, inspect_model_folder

    given = {k: Path(v).expanduser() for k, v in (("stardist", stardist), ("unet", unet), ("n2v", n2v))
             if v is not None}
    wanted = [k for k in ("stardist", "unet") if k not in given and (k == "stardist" or need_unet)]
    if denoise and "n2v" not in given:
        wanted.append("n2v")
    if str(models) == "bundled":
        folders = {k: bundled_model_dir(k) for k in wanted}
    else:
        root = Path(models).expanduser()
        if wanted and not root.is_dir():
            raise ModelNotFoundError(f"models folder not found: {root} (expected sub-folders stardist/, unet/ "
                                     f"and, for denoising, n2v/)")
        folders = {k: root / k for k in wanted}
        for kind, sub in folders.items():
            if not sub.is_dir():
                raise ModelNotFoundError(f"models folder {root} has no {kind}/ sub-folder ({sub})")
    for kind, sub in {**folders, **given}.items():
        inspect_model_folder(sub, kind)
