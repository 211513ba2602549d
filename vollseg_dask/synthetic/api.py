"""In-memory face of the generator: render regions, lineage, seed and centroid tables.

These functions take a :class:`SyntheticConfig` (or a dict of its fields) and return NumPy arrays
or pandas tables; they build the cell table of exactly the region asked for, so rendering a
region costs about as much as that region. :func:`~vollseg_dask.synthetic.write.write_synthetic`
uses the same kernels block by block.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from vollseg_dask.config import parse_config
from vollseg_dask.errors import ShapeError
from vollseg_dask.synthetic.cells import (
    CellTable,
    build_cell_table,
    cell_table_for_region,
    grow_tiles,
    lineage_rows,
    site_positions,
    tiles_for_box,
)
from vollseg_dask.synthetic.config import SyntheticConfig
from vollseg_dask.synthetic.geometry import cell_to_lab
from vollseg_dask.synthetic.render import Region, add_noise, leaf_centres, render_region
from vollseg_dask.synthetic.scene import Scene, build_scene

__all__ = [
    "as_config",
    "scene_for",
    "normalise_region",
    "table_for_region",
    "render_labels",
    "render_image",
    "lineage",
    "iter_lineage",
    "seed_table",
    "true_centroids",
    "LINEAGE_COLUMNS",
]

LINEAGE_COLUMNS = ("track_id", "start", "end", "parent")


def as_config(config: SyntheticConfig | dict[str, Any] | None) -> SyntheticConfig:
    """Validate ``config`` (a model, a dict of fields, or None for the defaults); raises ConfigError."""
    if isinstance(config, SyntheticConfig):
        return config
    return parse_config(SyntheticConfig, config or {})


@lru_cache(maxsize=16)
def _scene_from_json(text: str) -> Scene:
    return build_scene(SyntheticConfig.model_validate_json(text))


def scene_for(config: SyntheticConfig | dict[str, Any] | None) -> Scene:
    """Derived :class:`~vollseg_dask.synthetic.scene.Scene` of a config (cached per config)."""
    return _scene_from_json(as_config(config).model_dump_json())


def normalise_region(config: SyntheticConfig, region: Sequence[Sequence[int]] | None) -> Region:
    """Region ``((z0, z1), (y0, y1), (x0, x1))`` checked against the image shape; None = whole frame."""
    dims = config.shape[1:]
    if region is None:
        return ((0, dims[0]), (0, dims[1]), (0, dims[2]))
    reg = tuple((int(a), int(b)) for a, b in region)
    if len(reg) != 3 or any(not 0 <= a < b <= n for (a, b), n in zip(reg, dims, strict=False)):
        raise ShapeError(f"region must be three half-open ranges inside the frame {tuple(dims)}, got {region!r}")
    return reg  # type: ignore[return-value]


def table_for_region(scene: Scene, region: Region) -> CellTable:
    """Cell table of every cluster that can appear in ``region`` at any frame."""
    lo = np.array([a for a, _ in region], float) * scene.voxel
    hi = (np.array([b for _, b in region], float) - 1.0) * scene.voxel
    return cell_table_for_region(scene, lo, hi)


def _check_t(config: SyntheticConfig, t: int) -> int:
    if not 0 <= int(t) < config.shape[0]:
        raise ShapeError(f"frame t={t} is outside 0..{config.shape[0] - 1}")
    return int(t)


def render_labels(config: SyntheticConfig | dict[str, Any] | None, t: int,
                  region: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Ground-truth labels (uint32, ``(z, y, x)``) of frame ``t`` in ``region`` (default: whole frame).

    A label is a track id (``man_track.txt`` convention); 0 is background.
    """
    cfg = as_config(config)
    t = _check_t(cfg, t)
    reg = normalise_region(cfg, region)
    scene = scene_for(cfg)
    return render_region(scene, table_for_region(scene, reg), t, reg, intensity=False).labels


def _chunk_ranges(start: int, stop: int, size: int) -> list[tuple[int, int, int]]:
    """Storage chunks ``(index, a, b)`` (clipped to ``[.., n)`` by the caller) that meet ``[start, stop)``."""
    return [(i, i * size, (i + 1) * size) for i in range(start // size, (stop - 1) // size + 1)]


def render_image(config: SyntheticConfig | dict[str, Any] | None, t: int,
                 region: Sequence[Sequence[int]] | None = None, *, noise: bool = True) -> np.ndarray:
    """Image of frame ``t`` in ``region``: ``(c, z, y, x)`` with a nucleus channel, else ``(z, y, x)``.

    Parameters
    ----------
    noise : bool
        True: uint16 camera counts, noise drawn per storage chunk (``config.spatial_chunks``) exactly
        as :func:`~vollseg_dask.synthetic.write.write_synthetic` writes them. False: float64
        expected counts (offset + photons × intensity).
    """
    cfg = as_config(config)
    t = _check_t(cfg, t)
    reg = normalise_region(cfg, region)
    scene = scene_for(cfg)
    dims = cfg.shape[1:]
    if noise:
        # Render the chunk-aligned cover of the region, noise per chunk, then crop.
        ck = cfg.spatial_chunks
        cover = tuple((r[0] // c * c, min(((r[1] - 1) // c + 1) * c, n)) for r, c, n in zip(reg, ck, dims, strict=True))
        table = table_for_region(scene, cover)  # type: ignore[arg-type]
        rendered = render_region(scene, table, t, cover, intensity=True)  # type: ignore[arg-type]
        img = np.empty(rendered.intensity.shape, np.uint16)
        for ch in range(cfg.n_channels):
            for iz, az, bz in _chunk_ranges(*cover[0], ck[0]):
                for iy, ay, by in _chunk_ranges(*cover[1], ck[1]):
                    for ix, ax, bx in _chunk_ranges(*cover[2], ck[2]):
                        sl = (slice(az - cover[0][0], min(bz, dims[0]) - cover[0][0]),
                              slice(ay - cover[1][0], min(by, dims[1]) - cover[1][0]),
                              slice(ax - cover[2][0], min(bx, dims[2]) - cover[2][0]))
                        img[(ch, *sl)] = add_noise(scene, rendered.intensity[(ch, *sl)], t, ch, (iz, iy, ix))
        crop = tuple(slice(r[0] - c[0], r[1] - c[0]) for r, c in zip(reg, cover, strict=True))
        out = img[(slice(None), *crop)]
    else:
        rendered = render_region(scene, table_for_region(scene, reg), t, reg, intensity=True)
        out = cfg.offset + scene.photons * rendered.intensity
    return out if cfg.nucleus_channel else out[0]


def _lineage_tiles(scene: Scene) -> np.ndarray:
    """Tiles that can hold a cell: sites whose anchor can fall inside the field of view."""
    extent = (np.array(scene.shape[1:], float) - 1.0) * scene.voxel
    pad = scene.reach + scene.max_jitter + float(np.linalg.norm(scene.voxel))
    return tiles_for_box(scene, -pad * np.ones(3), extent + pad)


def iter_lineage(config: SyntheticConfig | dict[str, Any] | None, *, slab_tiles: int = 2) -> Iterator[pd.DataFrame]:
    """Lineage in pieces (slabs of lattice tiles along z), each a DataFrame like :func:`lineage`.

    Memory stays bounded by one slab, whatever the volume; pieces are disjoint.
    """
    scene = scene_for(config)
    tiles = _lineage_tiles(scene)
    if len(tiles) == 0:
        return
    for i0 in range(int(tiles[:, 0].min()), int(tiles[:, 0].max()) + 1, slab_tiles):
        core = tiles[(tiles[:, 0] >= i0) & (tiles[:, 0] < i0 + slab_tiles)]
        table = build_cell_table(scene, core, grow_tiles(scene, core))
        rows = lineage_rows(scene, table)
        yield pd.DataFrame({k: rows[k].astype(np.int64) for k in LINEAGE_COLUMNS})


def lineage(config: SyntheticConfig | dict[str, Any] | None) -> pd.DataFrame:
    """Ground-truth lineage: one row per track, ``track_id, start, end, parent`` (int64), sorted by id.

    ``track_id`` is the label value in every frame ``start..end`` (inclusive); ``parent`` is the
    mother's track id (0 for none). A division ends the mother at ``t`` and starts both daughters
    at ``t + 1``; the same rows are written to ``man_track.txt`` as ``L B E P``.
    """
    parts = list(iter_lineage(config))
    if not parts:
        return pd.DataFrame({k: np.zeros(0, np.int64) for k in LINEAGE_COLUMNS})
    return pd.concat(parts, ignore_index=True).sort_values("track_id", ignore_index=True)


def seed_table(config: SyntheticConfig | dict[str, Any] | None, t: int) -> pd.DataFrame:
    """Cells alive at frame ``t`` with the lab position (µm) of their generating point.

    Columns ``t, track_id, parent, z, y, x, n_sites, generation``. The point is the middle site of
    a chain cell or the anchor of a plane-split daughter: inside the cell, close to (not equal to)
    its centroid; see :func:`true_centroids` for exact centroids.
    """
    cfg = as_config(config)
    t = _check_t(cfg, t)
    scene = scene_for(cfg)
    table = table_for_region(scene, normalise_region(cfg, None))
    ci, node = np.nonzero(table.exists & table.alive[:, None] & (table.start <= t) & (table.end >= t))
    Y_all = site_positions(scene, table.sites, t)
    own = Y_all[table.members[ci, table.lo[ci, node]]]
    centre = leaf_centres(scene, table, ci, node, Y_all, own)
    x = cell_to_lab(centre, t, scene.flow, scene.warp) if len(centre) else np.zeros((0, 3))
    tid = table.head[ci] * scene.M + node
    df = pd.DataFrame({
        "t": np.full(len(tid), t, np.int64), "track_id": tid.astype(np.int64),
        "parent": np.where(node > 1, table.head[ci] * scene.M + node // 2, 0).astype(np.int64),
        "z": x[:, 0], "y": x[:, 1], "x": x[:, 2],
        "n_sites": (table.hi[ci, node] - table.lo[ci, node]).astype(np.int64),
        "generation": np.floor(np.log2(np.maximum(node, 1))).astype(np.int64),
    })
    return df.sort_values("track_id", ignore_index=True)


def true_centroids(config: SyntheticConfig | dict[str, Any] | None, times: Iterable[int] | None = None, *,
                   slab: int = 8) -> pd.DataFrame:
    """Exact centroids of the ground-truth labels: ``t, track_id, z, y, x`` (µm), ``volume`` (voxels).

    Rendered ``slab`` z-slices at a time and reduced with ``np.unique``/``np.bincount``, so memory
    stays one slab whatever the frame size. The centroid is the mean of voxel centres, a voxel
    ``(i, j, k)`` being at ``(i·vz, j·vy, k·vx)``.
    """
    cfg = as_config(config)
    scene = scene_for(cfg)
    Z, Y, X = cfg.shape[1:]
    frames = range(cfg.shape[0]) if times is None else [_check_t(cfg, t) for t in times]
    table = table_for_region(scene, normalise_region(cfg, None))
    out = []
    for t in frames:
        ids_acc: list[np.ndarray] = []
        sums_acc: list[np.ndarray] = []
        for z0 in range(0, Z, slab):
            reg = ((z0, min(z0 + slab, Z)), (0, Y), (0, X))
            lab = render_region(scene, table, t, reg, intensity=False).labels
            fg = np.flatnonzero(lab.ravel())
            if len(fg) == 0:
                continue
            ids, inv = np.unique(lab.ravel()[fg], return_inverse=True)
            zi, yi, xi = np.unravel_index(fg, lab.shape)
            sums = np.stack([np.bincount(inv, minlength=len(ids)).astype(float)]
                            + [np.bincount(inv, weights=w.astype(float), minlength=len(ids))
                               for w in (zi + z0, yi, xi)], axis=1)
            ids_acc.append(ids)
            sums_acc.append(sums)
        if not ids_acc:
            continue
        ids = np.concatenate(ids_acc)
        sums = np.concatenate(sums_acc)
        uid, inv = np.unique(ids, return_inverse=True)
        tot = np.zeros((len(uid), 4))
        np.add.at(tot, inv, sums)
        cen = tot[:, 1:] / tot[:, :1] * scene.voxel
        out.append(pd.DataFrame({"t": np.full(len(uid), t, np.int64), "track_id": uid.astype(np.int64),
                                 "z": cen[:, 0], "y": cen[:, 1], "x": cen[:, 2],
                                 "volume": tot[:, 0].astype(np.int64)}))
    if not out:
        return pd.DataFrame({"t": [], "track_id": [], "z": [], "y": [], "x": [], "volume": []})
    return pd.concat(out, ignore_index=True)
