"""Tissue mask per time point, stored as an OME-Zarr labels group, and how to read one back.

Two sources of a tissue mask:

* a user's mask: a labels group of the same store (non-zero = tissue), or another OME-Zarr
  store whose level-0 image (channel 0) has the same (z, y, x) shape, with one mask per time
  point or a single static one;
* ``auto`` (:func:`make_tissue_mask`): Gaussian smoothing (sigma in µm), Otsu threshold of
  the histogram of the whole smoothed time point (or a given threshold), holes filled,
  largest component kept (:func:`vollseg_dask.kernels.distance.auto_tissue_mask`).

Why ``auto`` works on a pyramid level rather than block by block: hole filling and "largest
component" are global decisions on connectivity, and the mask is a smooth object at the
scale of the smoothing. Each time point is therefore computed in one task on the finest
pyramid level whose (z, y, x) volume fits ``max_voxels`` (level 0 whenever it fits), then
written to level 0 of the labels group block by block by nearest replication (a level-k
voxel covers ``2**k x 2**k`` level-0 voxels in y and x), and the labels pyramid is built
with nearest picking, which gives back exactly the working-level mask at level k.

The group is marked complete (attribute ``vollseg.tissue_mask.complete``, with the settings
and the threshold of every time point) only after every block and the pyramid are written;
:func:`make_tissue_mask` recomputes an incomplete or differently-configured group.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from vollseg_dask.config import StrictModel
from vollseg_dask.errors import ConfigError, ShapeError, StoreNotFoundError

__all__ = ["TissueConfig", "TissueSource", "make_tissue_mask", "open_tissue_source", "choose_level"]

LOG = logging.getLogger(__name__)
ATTR_KEY = "vollseg"


class TissueConfig(StrictModel):
    """Settings of the automatic tissue mask."""

    channel: int = Field(0, ge=0, description="Image channel the mask is computed from.")
    sigma_um: float = Field(2.0, ge=0, description="Gaussian smoothing sigma in µm (same on every axis).")
    threshold: float | None = Field(
        None, description="Tissue = smoothed > threshold (image units); None = Otsu on the whole time point."
    )
    n_bins: int = Field(256, ge=2, description="Histogram bins of the Otsu threshold.")
    fill_holes: bool = Field(True, description="Fill cavities not connected to the array border.")
    keep_largest: bool = Field(True, description="Keep only the largest 26-connected component.")
    max_voxels: int = Field(
        1 << 24,
        ge=1,
        description="Largest (z, y, x) volume processed in one task; above it a coarser pyramid level is used.",
    )


def choose_level(shapes_zyx: Sequence[Sequence[int]], max_voxels: int) -> int:
    """Index of the finest level whose (z, y, x) volume is at most ``max_voxels`` (else the coarsest)."""
    for k, shp in enumerate(shapes_zyx):
        if int(np.prod(shp)) <= max_voxels:
            return k
    LOG.warning("no pyramid level fits max_voxels=%d; using the coarsest level %d", max_voxels, len(shapes_zyx) - 1)
    return len(shapes_zyx) - 1


def _index(axes: str, t: int | None, zyx: tuple[slice, slice, slice], c: int | None = 0) -> tuple:
    """Indexing tuple for an array with ``axes`` (subset of tczyx): pick t and c, slice z/y/x."""
    sel: list[Any] = []
    for a in axes:
        if a == "t":
            sel.append(0 if t is None else t)
        elif a == "c":
            sel.append(0 if c is None else c)
        else:
            sel.append(zyx["zyx".index(a)])
    return tuple(sel)


def _zyx_shape(axes: str, shape: Sequence[int]) -> tuple[int, int, int]:
    return tuple(shape[axes.index(a)] if a in axes else 1 for a in "zyx")  # type: ignore[return-value]


@dataclass(frozen=True)
class TissueSource:
    """Where a tissue mask is read from (picklable: tasks open the array themselves).

    Attributes
    ----------
    store : str
        Store root of the mask array.
    path : str
        Array path inside the store (level 0).
    axes : str
        Axes of that array (subset of ``tczyx``); a missing t axis means one static mask.
    shape_zyx : tuple of int
    n_t : int or None
        Number of time points, None for a static mask.
    description : str
        Human-readable origin (for manifests and messages).
    """

    store: str
    path: str
    axes: str
    shape_zyx: tuple[int, int, int]
    n_t: int | None
    description: str

    def array(self):  # -> zarr.Array
        import zarr

        return zarr.open_array(store=self.store, path=self.path, mode="r")

    def read(self, t: int, zyx: tuple[slice, slice, slice] | None = None, arr: Any = None) -> np.ndarray:
        """Boolean mask of time point ``t`` over ``zyx`` (default everything), shape (Z, Y, X)."""
        if self.n_t is not None and not 0 <= t < self.n_t:
            raise ShapeError(f"time point {t} is outside the tissue mask {self.description} ({self.n_t} time points)")
        region = zyx or tuple(slice(0, n) for n in self.shape_zyx)
        a = self.array() if arr is None else arr
        block = np.asarray(a[_index(self.axes, t if self.n_t is not None else None, region)])
        return block.reshape(tuple(s.stop - s.start for s in region)) != 0


def open_tissue_source(store: str | os.PathLike[str], mask: str, shape_zyx: Sequence[int],
                       n_t: int | None) -> TissueSource:
    """Resolve a user's tissue-mask argument: a labels-group name of ``store`` or another store's path.

    Raises
    ------
    StoreNotFoundError
        Neither a labels group of that name nor a store at that path exists.
    ShapeError
        The mask's (z, y, x) shape or time-point count does not match the labels.
    """
    from vollseg_dask.io.omezarr import list_labels, open_image, open_labels

    root = Path(store)
    if mask in list_labels(root):
        img = open_labels(root, mask, 0)
        desc = f"labels/{mask} of {root}"
    elif Path(mask).exists():
        img = open_image(mask, 0)
        desc = f"image of {mask}"
    else:
        raise StoreNotFoundError(
            f"tissue mask {mask!r} is neither a labels group of {root} (available: {list_labels(root)}) "
            "nor an existing OME-Zarr store path; use 'auto' to compute one"
        )
    shp = _zyx_shape(img.axes, img.shape)
    if tuple(shp) != tuple(shape_zyx):
        raise ShapeError(f"tissue mask {desc} has (z, y, x) shape {shp}, the labels have {tuple(shape_zyx)}")
    mt = img.shape[img.axes.index("t")] if "t" in img.axes else None
    if mt is not None and n_t is not None and mt < n_t:
        raise ShapeError(f"tissue mask {desc} has {mt} time points, the labels have {n_t}")
    if mt is not None and mt == 1 and (n_t or 1) > 1:
        mt = None  # a single time point serves as a static mask
    return TissueSource(store=str(img.store), path=img.path, axes=img.axes, shape_zyx=tuple(shp), n_t=mt,
                        description=desc)


# ----------------------------------------------------------------------------------------------
# Automatic mask
# ----------------------------------------------------------------------------------------------


def _mask_task(store: str, image_path: str, axes: str, t: int | None, channel: int, voxel_size: tuple,
               cfg: dict[str, Any]) -> tuple[np.ndarray, float]:
    import zarr

    from vollseg_dask.kernels.distance import auto_tissue_mask

    arr = zarr.open_array(store=store, path=image_path, mode="r")
    shp = _zyx_shape(axes, arr.shape)
    vol = np.asarray(arr[_index(axes, t, tuple(slice(0, n) for n in shp), c=channel)]).reshape(shp)
    return auto_tissue_mask(vol, voxel_size, cfg["sigma_um"], cfg["threshold"], n_bins=cfg["n_bins"],
                            fill_holes=cfg["fill_holes"], keep_largest=cfg["keep_largest"])


def _write_block_task(coarse: tuple[np.ndarray, float], store: str, path: str, axes: str, t: int | None,
                      core: tuple[slice, slice, slice], level: int) -> int:
    import zarr

    mask = coarse[0]
    zs, ys, xs = core
    # Level-k voxel (z, j, i) covers level-0 rows j*2**k ... (nearest replication).
    yi = np.arange(ys.start, ys.stop) >> level
    xi = np.arange(xs.start, xs.stop) >> level
    block = mask[zs][:, yi][:, :, xi].astype(np.uint8)
    arr = zarr.open_array(store=store, path=path, mode="r+")
    n_c = arr.shape[axes.index("c")] if "c" in axes else None
    if n_c is None:
        arr[_index(axes, t, core)] = block
    else:
        # Labels groups mirror the image's axes: write the same mask on every channel index.
        sel = list(_index(axes, t, core))
        sel[axes.index("c")] = slice(0, n_c)
        arr[tuple(sel)] = np.broadcast_to(block, (n_c, *block.shape))
    return int(block.sum())


def _threshold_of(result: tuple[np.ndarray, float]) -> float:
    return result[1]


def _existing_complete(store: Path, name: str, settings: dict[str, Any]) -> bool:
    import zarr

    from vollseg_dask.io.omezarr import list_labels

    if name not in list_labels(store):
        return False
    attrs = dict(zarr.open_group(str(store / "labels" / name), mode="r").attrs)
    rec = attrs.get(ATTR_KEY, {}).get("tissue_mask", {})
    return bool(rec.get("complete")) and rec.get("settings") == settings


def make_tissue_mask(store: str | os.PathLike[str], *, name: str = "tissue_mask",
                     config: TissueConfig | None = None, block: Sequence[int] | None = None,
                     overwrite: bool = False) -> dict[str, Any]:
    """Compute the automatic tissue mask of every time point into ``store/labels/<name>``.

    Runs on the current Dask scheduler (a distributed client when one is active).

    Parameters
    ----------
    store : path-like
        OME-Zarr image store.
    name : str
        Labels group to write.
    config : TissueConfig, optional
    block : sequence of 3 int, optional
        Level-0 write block (rounded up to the labels chunk); default 4 chunks per axis.
    overwrite : bool
        Recompute even when a complete mask with the same settings exists.

    Returns
    -------
    dict
        ``{"name", "level", "thresholds": {t: value}, "reused": bool}``.
    """
    import dask
    import zarr

    from vollseg_dask.io.omezarr import build_pyramid, create_labels, level_shape, open_image, open_labels
    from vollseg_dask.plan import plan_blocks

    cfg = config or TissueConfig()
    root = Path(store)
    image = open_image(root, 0)
    if "c" in image.axes and cfg.channel >= image.shape[image.axes.index("c")]:
        raise ConfigError(f"tissue channel {cfg.channel} does not exist: the image has "
                          f"{image.shape[image.axes.index('c')]} channel(s)")
    if "c" not in image.axes and cfg.channel != 0:
        raise ConfigError(f"tissue channel {cfg.channel} does not exist: the image has no channel axis")
    shapes = [_zyx_shape(image.axes, level_shape(image.shape, image.axes, k)) for k in range(image.n_levels)]
    level = choose_level(shapes, cfg.max_voxels)
    settings = {**cfg.model_dump(), "level": level}
    if not overwrite and _existing_complete(root, name, settings):
        attrs = dict(zarr.open_group(str(root / "labels" / name), mode="r").attrs)
        rec = attrs[ATTR_KEY]["tissue_mask"]
        return {"name": name, "level": level, "thresholds": rec.get("thresholds", {}), "reused": True}

    work = open_image(root, level)
    vs = work.voxel_size
    n_t = image.shape[image.axes.index("t")] if "t" in image.axes else None
    target = create_labels(root, name, dtype="uint8", overwrite=True)
    labels_path = open_labels(root, name, 0).path
    unit = tuple(target.shards or target.chunks)
    unit_zyx = _zyx_shape(image.axes, unit)
    blk = tuple(block) if block is not None else tuple(4 * u for u in unit_zyx)
    plan = plan_blocks(shapes[0], blk, chunks=unit_zyx)
    cfg_d = cfg.model_dump()
    writes, masks = [], []
    for t in range(n_t if n_t is not None else 1):
        tt = t if n_t is not None else None
        coarse = dask.delayed(_mask_task)(str(root), work.path, work.axes, tt, cfg.channel, vs, cfg_d)
        masks.append(coarse)
        for b in plan:
            writes.append(dask.delayed(_write_block_task)(coarse, str(root), labels_path, image.axes, tt,
                                                          b.core, level))
    thresholds_list, _ = dask.compute([dask.delayed(_threshold_of)(m) for m in masks], writes)
    build_pyramid(root, f"labels/{name}", method="nearest")
    thresholds = {int(t): float(v) for t, v in enumerate(thresholds_list)}
    group = zarr.open_group(str(root / "labels" / name), mode="a")
    rec = dict(group.attrs.get(ATTR_KEY, {}))
    rec["tissue_mask"] = {"complete": True, "settings": settings, "thresholds": {str(k): v for k, v in thresholds.items()}}
    group.attrs[ATTR_KEY] = rec
    return {"name": name, "level": level, "thresholds": thresholds, "reused": False}
