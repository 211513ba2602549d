"""Worker-side units of the segmentation run: one function per (t, block, stage) or (t, stage).

Each unit reads its inputs (its own halo included) straight from the zarr arrays and Parquet
tables of the run folder, writes whole chunks of its block core and then its done-marker, and
returns a small dict. Units never hold a dense array larger than their read region.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from vollseg_dask.kernels import components as kc
from vollseg_dask.kernels import seeds as ks
from vollseg_dask.kernels import watershed as kw
from vollseg_dask.plan import Block
from vollseg_dask.segmentation.config import SegmentationConfig
from vollseg_dask.segmentation.layout import RunLayout, read_arrays, read_table, write_arrays, write_table

__all__ = ["RunContext"]


@functools.lru_cache(maxsize=8)
def _rays(rays_json: str):
    # The predictor's own rays (a StarDist model's may be anisotropic): candidates' distances are
    # only meaningful along the rays the network was trained with.
    import json

    from stardist.rays3d import rays_from_json

    return rays_from_json(json.loads(rays_json))


@dataclass(frozen=True)
class RunContext:
    """Everything a unit needs besides its block: small and picklable."""

    layout: RunLayout
    image_store: str
    image_path: str
    image_axes: str
    volume_shape: tuple[int, int, int]
    n_t: int
    config: SegmentationConfig
    n_rays: int
    rays_json: str  # JSON of the predictor's StarDist rays (``Rays_Base.to_json()``)
    prob_threshold: float
    nms_threshold: float
    out_path: str  # level-0 array path of the output labels inside the store
    out_axes: str
    out_channels: int
    #: the intermediate arrays are stored shifted by ``pad`` voxels so that the block grid (which may
    #: have any origin) falls on their chunk grid: no two units ever write the same chunk
    pad: tuple[int, int, int] = (0, 0, 0)

    @property
    def rays(self):
        return _rays(self.rays_json)

    def _index(self, t: int, region) -> tuple:
        return (t, *(slice(s.start + p, s.stop + p) for s, p in zip(region, self.pad, strict=True)))

    def read(self, name: str, t: int, region) -> np.ndarray:
        """Intermediate array ``name`` at time ``t`` over a global region."""
        return np.asarray(self.layout.open_array(name)[self._index(t, region)])

    def write(self, name: str, t: int, region, values: np.ndarray) -> None:
        """Write a block core of intermediate array ``name`` (whole chunks: cores are chunk-aligned)."""
        self.layout.open_array(name, "r+")[self._index(t, region)] = values


def _core(block: Block) -> tuple[slice, slice, slice]:
    return tuple(block.core)  # type: ignore[return-value]


def _image_index(ctx: RunContext, t: int, region) -> tuple:
    idx: list[Any] = []
    spatial = iter(region)
    for a in ctx.image_axes:
        if a == "t":
            idx.append(t)
        elif a == "c":
            idx.append(ctx.config.channel)
        else:
            idx.append(next(spatial))
    return tuple(idx)


def _grow_high(block: Block, shape) -> tuple[slice, ...]:
    return tuple(slice(c.start, min(n, c.stop + 1)) for c, n in zip(block.core, shape, strict=True))


def _grow(region, by, shape) -> tuple[slice, ...]:
    return tuple(slice(max(0, s.start - b), min(n, s.stop + b)) for s, b, n in zip(region, by, shape, strict=True))


# --------------------------------------------------------------------------------------- S1


def predict(ctx: RunContext, predictor, t: int, block: Block) -> dict[str, Any]:
    """S1: network outputs of one block's core -> prob / mask / distance arrays + candidates table."""
    from vollseg_dask.predictors.base import validate_prediction

    lay = ctx.layout
    key = block.key
    done = lay.read_marker("predict", t, key)
    if done is not None:
        return done
    image = None
    if predictor.needs_image:
        import zarr

        from vollseg_dask.io.omezarr import read_region

        arr = zarr.open_array(store=ctx.image_store, path=ctx.image_path, mode="r")
        image = read_region(arr, _image_index(ctx, t, block.read), what=f"image {ctx.image_store}")
    pred = predictor.predict_block(image, t=t, read=tuple(block.read), core=_core(block),
                                   volume_shape=ctx.volume_shape, prob_threshold=ctx.prob_threshold)
    pred = validate_prediction(pred, block.shape, block.core, ctx.n_rays)
    if not (np.isfinite(pred.prob).all() and np.isfinite(pred.foreground).all()):
        from vollseg_dask.errors import InvalidDataError

        raise InvalidDataError(f"predictor maps of t={t} block {key} hold NaN or infinite values")
    ctx.write("prob", t, block.core, pred.prob)
    ctx.write("mask", t, block.core, (pred.foreground > ctx.config.unet_threshold).astype(np.uint8))
    if ctx.config.flood == "distance":
        if pred.distance is None:
            from vollseg_dask.errors import ConfigError

            raise ConfigError("flood='distance' needs a predictor that returns a distance map")
        ctx.write("distance", t, block.core, pred.distance)
    keep = pred.cand_prob >= ctx.prob_threshold
    pts = pred.points[keep]
    write_table(lay.table("candidates", t, key),
                {"z": pts[:, 0], "y": pts[:, 1], "x": pts[:, 2], "prob": pred.cand_prob[keep]},
                list_columns={"dist": pred.dist[keep]})
    info = {"n_candidates": int(keep.sum()), "voxels": int(block.size)}
    lay.mark_done("predict", t, key, info)
    return info


# --------------------------------------------------------------------------------------- S2


def _kept_table(ctx: RunContext, t: int, pts: np.ndarray, prob: np.ndarray,
                dist: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    ids = kc.coordinate_ids(pts, ctx.volume_shape, t, kc.NS_SEED)
    bb = ks.polyhedron_bboxes(pts, dist, ctx.rays) if len(pts) else np.zeros((0, 6), np.int64)
    order = np.lexsort((ids, pts[:, 0])) if len(pts) else np.zeros(0, np.intp)
    cols = {"id": ids, "z": pts[:, 0], "y": pts[:, 1], "x": pts[:, 2], "prob": prob.astype(np.float32),
            "bz0": bb[:, 0], "by0": bb[:, 1], "bx0": bb[:, 2], "bz1": bb[:, 3], "by1": bb[:, 4], "bx1": bb[:, 5]}
    return {k: v[order] for k, v in cols.items()}, dist[order]


def _read_candidates(ctx: RunContext, t: int, keys: list[str] | None = None):
    lay = ctx.layout
    paths = lay.tables("candidates", t) if keys is None else [lay.table("candidates", t, k) for k in keys]
    if not paths:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.float32), np.zeros((0, ctx.n_rays), np.float32)
    tab = read_table(paths)
    if not tab or len(tab["z"]) == 0:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.float32), np.zeros((0, ctx.n_rays), np.float32)
    pts = np.stack([tab["z"], tab["y"], tab["x"]], axis=1).astype(np.int64)
    return pts, tab["prob"].astype(np.float32), tab["dist"].astype(np.float32).reshape(len(pts), ctx.n_rays)


def _canonical(pts, prob, dist, shape):
    """Sort candidates by global linear index (duplicates at one voxel: keep the most probable)."""
    if len(pts) == 0:
        return pts, prob, dist
    Y, X = shape[1], shape[2]
    lin = (pts[:, 0] * Y + pts[:, 1]) * X + pts[:, 2]
    order = np.lexsort((-prob.astype(np.float64), lin))
    lin, pts, prob, dist = lin[order], pts[order], prob[order], dist[order]
    first = np.r_[True, lin[1:] != lin[:-1]]
    return pts[first], prob[first], dist[first]


def nms_global(ctx: RunContext, t: int) -> dict[str, Any]:
    """S2: StarDist NMS over all candidates of time point ``t`` (exact)."""
    lay = ctx.layout
    done = lay.read_marker("nms", t)
    if done is not None:
        return done
    pts, prob, dist = _canonical(*_read_candidates(ctx, t), ctx.volume_shape)
    start = time.perf_counter()
    keep = ks.nms_sparse(pts, prob, dist, ctx.rays, shape=ctx.volume_shape, nms_thresh=ctx.nms_threshold)
    nms_s = time.perf_counter() - start  # StarDist's own NMS: the profile's largest S2-S6 cost
    cols, d = _kept_table(ctx, t, pts[keep], prob[keep], dist[keep])
    write_table(lay.table("stardist", t), cols, list_columns={"dist": d})
    info = {"scope": "global", "n_candidates": int(len(pts)), "n_kept": int(keep.sum()), "nms_s": round(nms_s, 3)}
    lay.mark_done("nms", t, None, info)
    return info


def nms_block(ctx: RunContext, t: int, block: Block, neighbour_keys: list[str], halo: int) -> dict[str, Any]:
    """S2 fallback: NMS on the candidates within ``halo`` of a block; keep those centred in its core."""
    lay = ctx.layout
    done = lay.read_marker("nms_block", t, block.key)
    if done is not None:
        return done
    pts, prob, dist = _canonical(*_read_candidates(ctx, t, neighbour_keys), ctx.volume_shape)
    region = _grow(block.core, (halo,) * 3, ctx.volume_shape)
    lo = np.array([s.start for s in region])
    hi = np.array([s.stop for s in region])
    near = ((pts >= lo) & (pts < hi)).all(axis=1) if len(pts) else np.zeros(0, bool)
    pts, prob, dist = pts[near], prob[near], dist[near]
    start = time.perf_counter()
    keep = ks.nms_sparse(pts, prob, dist, ctx.rays, shape=ctx.volume_shape, nms_thresh=ctx.nms_threshold)
    nms_s = time.perf_counter() - start
    clo = np.array([s.start for s in block.core])
    chi = np.array([s.stop for s in block.core])
    own = ((pts >= clo) & (pts < chi)).all(axis=1) if len(pts) else np.zeros(0, bool)
    sel = keep & own
    cols, d = _kept_table(ctx, t, pts[sel], prob[sel], dist[sel])
    write_table(lay.table("stardist_blocks", t, block.key), cols, list_columns={"dist": d})
    info = {"n_candidates": int(own.sum()), "n_kept": int(sel.sum()), "nms_s": round(nms_s, 3)}
    lay.mark_done("nms_block", t, block.key, info)
    return info


def nms_gather(ctx: RunContext, t: int, keys: list[str]) -> dict[str, Any]:
    """S2 fallback: concatenate the per-block NMS survivors of ``t`` into one table."""
    lay = ctx.layout
    done = lay.read_marker("nms", t)
    if done is not None:
        return done
    tab = read_table([lay.table("stardist_blocks", t, k) for k in keys])
    dist = tab.pop("dist").reshape(-1, ctx.n_rays) if tab else np.zeros((0, ctx.n_rays), np.float32)
    order = np.lexsort((tab["id"], tab["z"])) if len(tab.get("id", [])) else np.zeros(0, np.intp)
    write_table(lay.table("stardist", t), {k: v[order] for k, v in tab.items()}, list_columns={"dist": dist[order]})
    info = {"scope": "block", "n_kept": int(len(order))}
    lay.mark_done("nms", t, None, info)
    return info


def _polyhedra_in(ctx: RunContext, t: int, region, ids: np.ndarray | None = None):
    """Kept polyhedra whose bounding box intersects ``region`` (optionally restricted to ``ids``)."""
    lay = ctx.layout
    filters = [("bz0", "<", int(region[0].stop)), ("bz1", ">=", int(region[0].start)),
               ("by0", "<", int(region[1].stop)), ("by1", ">=", int(region[1].start)),
               ("bx0", "<", int(region[2].stop)), ("bx1", ">=", int(region[2].start))]
    tab = read_table(lay.table("stardist", t), filters=filters)
    if not tab or len(tab["id"]) == 0:
        return np.zeros((0, 3), np.int64), np.zeros((0, ctx.n_rays), np.float32), np.zeros(0), np.zeros(0, np.uint64)
    pts = np.stack([tab["z"], tab["y"], tab["x"]], axis=1).astype(np.int64)
    dist = tab["dist"].reshape(len(pts), ctx.n_rays)
    sid = tab["id"].astype(np.uint64)
    if ids is not None:
        sel = np.isin(sid, ids)
        pts, dist, sid, prob = pts[sel], dist[sel], sid[sel], tab["prob"][sel]
    else:
        prob = tab["prob"]
    return pts, dist, prob, sid


def render(ctx: RunContext, t: int, block: Block) -> dict[str, Any]:
    """StarDist mode: render the kept polyhedra into the block core (highest probability wins)."""
    lay = ctx.layout
    done = lay.read_marker("render", t, block.key)
    if done is not None:
        return done
    pts, dist, prob, sid = _polyhedra_in(ctx, t, block.core)
    lab = ks.render_polyhedra(block.core, pts, dist, prob, sid, ctx.rays, volume_shape=ctx.volume_shape)
    ctx.write("prov", t, block.core, lab)
    info = {"exact": True, "status": "exact", "n_polyhedra": int(len(pts)), "level": 0}
    lay.mark_done("render", t, block.key, info)
    return info


# --------------------------------------------------------------------------------------- S3


def cc_local(ctx: RunContext, t: int, block: Block) -> dict[str, Any]:
    """S3a: label the U-Net mask inside the block core with coordinate IDs; table of sums and boxes."""
    lay = ctx.layout
    done = lay.read_marker("cc", t, block.key)
    if done is not None:
        return done
    mask = ctx.read("mask", t, block.core) != 0
    lab, table = kc.label_components(mask, offset=block.core_offset, shape=ctx.volume_shape, t=t,
                                     connectivity=ctx.config.connectivity)
    ctx.write("cc", t, block.core, lab)
    write_table(lay.table("cc_tables", t, block.key), table)
    info = {"n_components": int(len(table["id"]))}
    lay.mark_done("cc", t, block.key, info)
    return info


def cc_edges(ctx: RunContext, t: int, block: Block) -> dict[str, Any]:
    """S3b: pairs of component IDs touching across the block's high faces."""
    lay = ctx.layout
    done = lay.read_marker("cc_edges", t, block.key)
    if done is not None:
        return done
    region = _grow_high(block, ctx.volume_shape)
    lab = ctx.read("cc", t, region)
    pairs = kc.face_pairs(lab, block.shape, ctx.config.connectivity)
    write_table(lay.table("cc_edges", t, block.key), {"a": pairs[:, 0], "b": pairs[:, 1]})
    info = {"n_pairs": int(len(pairs))}
    lay.mark_done("cc_edges", t, block.key, info)
    return info


def cc_merge(ctx: RunContext, t: int, keys: list[str]) -> dict[str, Any]:
    """S3c: union-find over the equivalences of ``t``; merged component table and per-block root maps."""
    lay = ctx.layout
    done = lay.read_marker("cc_merge", t)
    if done is not None:
        return done
    parts = []
    block_col = []
    for i, k in enumerate(keys):
        tab = read_table(lay.table("cc_tables", t, k))
        parts.append(tab)
        block_col.append(np.full(len(tab["id"]), i, np.int64))
    tab = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]} if parts else {}
    blk = np.concatenate(block_col) if block_col else np.zeros(0, np.int64)
    edges = read_table([lay.table("cc_edges", t, k) for k in keys])
    pairs = np.stack([edges["a"], edges["b"]], axis=1).astype(np.uint64) if edges and len(edges["a"]) else \
        np.zeros((0, 2), np.uint64)
    ids = tab["id"].astype(np.uint64) if tab else np.zeros(0, np.uint64)
    keys_sorted, roots = kc.merge_equivalences(ids, pairs)
    root_of = roots[np.searchsorted(keys_sorted, ids)] if len(ids) else np.zeros(0, np.uint64)
    write_table(lay.table("cc_roots", t), {"block": blk, "id": ids, "root": root_of})
    # aggregate per root: counts and sums add, boxes take min/max
    uroot, inv = np.unique(root_of, return_inverse=True)
    comp: dict[str, np.ndarray] = {"id": uroot}
    for c in ("count", "sum_z", "sum_y", "sum_x"):
        acc = np.zeros(len(uroot), np.int64)
        np.add.at(acc, inv, tab[c].astype(np.int64))
        comp[c] = acc
    for c in ("z0", "y0", "x0"):
        acc = np.full(len(uroot), np.iinfo(np.int64).max, np.int64)
        np.minimum.at(acc, inv, tab[c].astype(np.int64))
        comp[c] = acc
    for c in ("z1", "y1", "x1"):
        acc = np.full(len(uroot), -1, np.int64)
        np.maximum.at(acc, inv, tab[c].astype(np.int64))
        comp[c] = acc
    write_table(lay.table("components", t), comp)
    info = {"n_components": int(len(uroot)), "n_parts": int(len(ids)), "n_pairs": int(len(pairs))}
    lay.mark_done("cc_merge", t, None, info)
    return info


# --------------------------------------------------------------------------------------- S4


def seeds(ctx: RunContext, t: int) -> dict[str, Any]:
    """S4: seed table of ``t`` - StarDist centres plus pooled U-Net centroids (VollSeg)."""
    lay = ctx.layout
    done = lay.read_marker("seeds", t)
    if done is not None:
        return done
    cfg = ctx.config
    star = read_table(lay.table("stardist", t), columns=["id", "z", "y", "x", "bz0", "by0", "bx0", "bz1", "by1", "bx1"])
    spts = np.stack([star["z"], star["y"], star["x"]], axis=1).astype(np.int64) if star else np.zeros((0, 3), np.int64)
    sid = star["id"].astype(np.uint64) if star else np.zeros(0, np.uint64)
    comp = read_table(lay.table("components", t))
    n_comp = len(comp["id"]) if comp else 0
    if n_comp:
        cnt = comp["count"].astype(np.float64)
        cen = np.stack([comp["sum_z"] / cnt, comp["sum_y"] / cnt, comp["sum_x"] / cnt], axis=1)
        boxes = np.stack([comp[c] for c in ("z0", "y0", "x0", "z1", "y1", "x1")], axis=1)
    else:
        cen = np.zeros((0, 3))
        boxes = np.zeros((0, 6), np.int64)
    pts = [spts]
    ids = [sid]
    src = [np.zeros(len(spts), np.int8)]
    n_pooled = 0
    if cfg.seed_pooling and n_comp:
        pool = ks.pool_seeds(spts, boxes)
        # VollSeg rounds the centroid (half to even, as numpy.round)
        cp = np.clip(np.rint(cen[pool]).astype(np.int64), 0, np.array(ctx.volume_shape) - 1)
        pid = kc.coordinate_ids(cp, ctx.volume_shape, t, kc.NS_SEED)
        pts.append(cp)
        ids.append(pid)
        src.append(np.ones(len(cp), np.int8))
        n_pooled = int(pool.sum())
    allp = np.concatenate(pts)
    alli = np.concatenate(ids)
    alls = np.concatenate(src)
    # unique by ID (two pooled centroids may round to one voxel); keep StarDist over pooled
    order = np.lexsort((alls, alli))
    alli, allp, alls = alli[order], allp[order], alls[order]
    first = np.r_[True, alli[1:] != alli[:-1]] if len(alli) else np.zeros(0, bool)
    alli, allp, alls = alli[first], allp[first], alls[first]
    order = np.lexsort((alli, allp[:, 0]))  # sorted by z for filtered reads
    write_table(lay.table("seeds", t), {"id": alli[order], "z": allp[order, 0], "y": allp[order, 1],
                                        "x": allp[order, 2], "source": alls[order]})
    n_refine = 0
    if cfg.refine_mask:
        if star and len(sid):
            sboxes = np.stack([star[c] for c in ("bz0", "by0", "bx0", "bz1", "by1", "bx1")], axis=1)
            add = ks.select_refinement(sboxes, cen)
        else:
            add = np.zeros(0, bool)
        write_table(lay.table("refine", t), {"id": sid[add]})
        n_refine = int(add.sum())
    info = {"n_star": int(len(spts)), "n_pooled": n_pooled, "n_seeds": int(len(alli)), "n_refine": n_refine,
            "n_components": n_comp}
    lay.mark_done("seeds", t, None, info)
    return info


# --------------------------------------------------------------------------------------- S5


def _seeds_in(ctx: RunContext, t: int, region) -> tuple[np.ndarray, np.ndarray]:
    r = ctx.config.marker_radius
    grown = _grow(region, (r, r, r), ctx.volume_shape)
    filt = [("z", ">=", int(grown[0].start)), ("z", "<", int(grown[0].stop))]
    tab = read_table(ctx.layout.table("seeds", t), filters=filt, columns=["id", "z", "y", "x"])
    if not tab or len(tab["id"]) == 0:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.uint64)
    pts = np.stack([tab["z"], tab["y"], tab["x"]], axis=1).astype(np.int64)
    lo = np.array([s.start for s in grown])
    hi = np.array([s.stop for s in grown])
    sel = ((pts >= lo) & (pts < hi)).all(axis=1)
    return pts[sel], tab["id"][sel].astype(np.uint64)


#: Peak memory of one watershed unit per voxel of its read region, bytes, beyond what the worker
#: already holds: measured (RSS high-water mark over the unit's steps, after the imports; bundled-
#: network maps of a 64 x 512 x 512 frame with foreground flooding) 477 MiB for a 64 x 256 x 256 read
#: region and 1155 MiB for 64 x 512 x 512, i.e. ~54 B per voxel (flood values, markers, keys,
#: skimage's queue and output) plus ~250 MiB of read buffers and libraries touched on first use.
WS_BYTES_PER_VOXEL = 64
WS_FIXED_BYTES = 256 * 2**20
#: what a worker process is taken to hold already when the escalation limit is planned (imports,
#: caches; measured 300-340 MiB for a ground-truth worker): a constant, so that the plan does not
#: depend on a worker's momentary RSS and every run decides the same
WS_WORKER_BASELINE_BYTES = 512 * 2**20


def ws_max_read_voxels(headroom: int) -> int:
    """Largest watershed read region (voxels) that fits ``headroom`` bytes of a worker."""
    return max(0, int((headroom - WS_FIXED_BYTES) // WS_BYTES_PER_VOXEL))


def ws_rounds(cfg: SegmentationConfig) -> int:
    """Reach (voxels) of the growth into the dilated mask after the watershed; 0 without a dilation."""
    if not any(cfg.mask_dilation):
        return 0
    return kw.expansion_rounds(cfg.mask_dilation, 1 if cfg.watershed_connectivity == 6 else 3)


def watershed(ctx: RunContext, t: int, block: Block, level: int) -> dict[str, Any]:
    """S5: marker-controlled watershed of one block over its read region; writes the core + certificate."""
    lay = ctx.layout
    done = lay.read_marker("ws", t, block.key)
    if done is not None and done.get("level") == level:
        return done
    cfg = ctx.config
    read = tuple(block.read)
    conn = 1 if cfg.watershed_connectivity == 6 else 3
    rounds = ws_rounds(cfg)
    # with a mask dilation, read the mask beyond the read region so that its dilation is exact in it
    outer = _grow(read, cfg.mask_dilation, ctx.volume_shape) if rounds else read
    mask = ctx.read("mask", t, outer) != 0
    if cfg.refine_mask:
        add_ids = read_table(lay.table("refine", t)).get("id", np.zeros(0, np.uint64)).astype(np.uint64)
        if len(add_ids):
            pts, dist, prob, sid = _polyhedra_in(ctx, t, outer, ids=add_ids)
            if len(pts):
                mask |= ks.render_polyhedra(outer, pts, dist, prob, sid, ctx.rays, volume_shape=ctx.volume_shape) != 0
    dilated = None
    if rounds:
        from scipy import ndimage

        inner = tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(read, outer, strict=True))
        dilated = ndimage.binary_dilation(mask, structure=kw.dilation_footprint(cfg.mask_dilation))[inner]
        mask = mask[inner]
    prob = None
    if cfg.floods_foreground:
        # StarDist's foreground joins the flood region (and the dilated one): same read region, so
        # certification below covers it like any other part of the mask
        prob = ctx.read("prob", t, read)
        fg = prob > cfg.foreground_threshold
        mask = mask | fg
        if dilated is not None:
            dilated = dilated | fg
    source = "prob" if cfg.flood == "probability" else "distance"
    flood = -(prob if prob is not None and source == "prob" else ctx.read(source, t, read)).astype(np.float32)
    spts, sids = _seeds_in(ctx, t, read)
    markers = ks.dilate_seeds(read, spts, sids, cfg.marker_radius)
    # flood only the components that reach the core (grown by the expansion's reach): the others
    # cannot change it
    certified = tuple(block.core_in_read)
    if rounds:
        certified = tuple(slice(max(0, c.start - rounds), min(n, c.stop + rounds))
                          for c, n in zip(certified, mask.shape, strict=True))
    keep, exact, n_unsafe = kw.core_components(mask, certified, kw.cut_faces(read, ctx.volume_shape),
                                               connectivity=conn)
    lab = kw.seeded_watershed(flood, markers, keep, connectivity=conn)
    flooded = keep
    if rounds:
        # cells grow into the dilated mask (membrane walls), never into components not flooded here
        lab = kw.expand_labels(lab, flood, dilated & ~(mask & ~keep), rounds, connectivity=conn)
        flooded = keep | (lab != 0)
    ctx.write("prov", t, block.core, lab[block.core_in_read])
    if not exact:
        write_arrays(lay.ws_read(t, block.key, level), {"labels": lab, "flooded": flooded})
    info = {"level": level, "exact": bool(exact), "n_unsafe": int(n_unsafe), "n_seeds": int(len(sids)),
            "halo": [int(c.start - r.start) for c, r in zip(block.core, read, strict=True)]}
    lay.mark_done("ws", t, block.key, info)
    return info


def ws_check(ctx: RunContext, t: int, block: Block, level: int) -> int:
    """Agreement check of a block that is not provably exact.

    Compares the block's own flood with what the neighbouring blocks wrote, in a band of half the
    halo around its core (voxels far from both blocks' cut faces, where both floods should be
    reliable), on the components the block flooded. Together with the neighbours' checks this
    covers both sides of every shared face.

    Returns
    -------
    int
        Voxels of the band where the two floods differ.
    """
    lay = ctx.layout
    saved = read_arrays(lay.ws_read(t, block.key, level))
    read = tuple(block.read)
    band = tuple(slice(max(r.start, c.start - (c.start - r.start) // 2), min(r.stop, c.stop + (r.stop - c.stop) // 2))
                 for c, r in zip(block.core, read, strict=True))
    stored = ctx.read("prov", t, band)
    local = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(band, read, strict=True))
    own, flooded = saved["labels"][local], saved["flooded"][local]
    # compare where this block flooded (components reaching its core)
    return int(((own != stored) & flooded).sum())


# --------------------------------------------------------------------------------------- S6


def _source(ctx: RunContext, t: int, region, base_flats: list[int]) -> np.ndarray:
    """Provisional labels over ``region``: watershed/polyhedra IDs, or U-Net component roots.

    ``base_flats`` are the block-plan indices whose cores cover ``region`` (for the root maps).
    """
    lay = ctx.layout
    if ctx.config.mode == "unet":
        lab = ctx.read("cc", t, region)
        roots = read_table(lay.table("cc_roots", t), filters=[("block", "in", [int(b) for b in base_flats])])
        if roots and len(roots["id"]):
            order = np.argsort(roots["id"])
            return kc.relabel_sorted(lab, roots["id"][order].astype(np.uint64),
                                     roots["root"][order].astype(np.uint64), default=None)
        return lab
    return ctx.read("prov", t, region)


def sizes(ctx: RunContext, t: int, block: Block, block_flat: int) -> dict[str, Any]:
    """S6a: exact per-object voxel counts and z ranges inside one block core."""
    lay = ctx.layout
    done = lay.read_marker("sizes", t, block.key)
    if done is not None:
        return done
    cfg = ctx.config
    if cfg.merges_objects:
        # faces towards the +1 neighbours of core voxels: one voxel beyond the core on the high sides
        region = _grow_high(block, ctx.volume_shape)
        grown = _source(ctx, t, region, [block_flat])
        core_shape = tuple(c.stop - c.start for c in block.core)
        faces = kw.interface_table(grown, ctx.read("prob", t, region), core_shape)
        write_table(lay.table("interfaces", t, block.key), faces)
        lab = grown[tuple(slice(0, c) for c in core_shape)]
    else:
        lab = _source(ctx, t, block.core, [block_flat])
    tab = kw.size_table(lab, z_offset=block.core[0].start)
    write_table(lay.table("sizes", t, block.key), tab)
    info = {"n_objects": int(len(tab["id"]))}
    lay.mark_done("sizes", t, block.key, info)
    return info


def relabel(ctx: RunContext, t: int, block: Block, base_flats: list[int], keys: np.ndarray,
            values: np.ndarray) -> dict[str, Any]:
    """S6b: write final uint32 labels of one output block through its sorted map ``keys -> values``.

    Output blocks follow the labels array's own chunk grid (origin 0), whatever the grid origin of
    the other stages, so every unit writes whole chunks of the public array.
    """
    import zarr

    lay = ctx.layout
    done = lay.read_marker("relabel", t, block.key)
    if done is not None:
        return done
    lab = _source(ctx, t, block.core, base_flats)
    out = kc.relabel_sorted(lab, keys, values, default=0, out_dtype=np.uint32)
    arr = zarr.open_array(store=ctx.layout.store, path=ctx.out_path, mode="r+")
    channels = range(ctx.out_channels) if "c" in ctx.out_axes else [None]
    for c in channels:
        idx: list[Any] = []
        spatial = iter(block.core)
        for a in ctx.out_axes:
            if a == "t":
                idx.append(t)
            elif a == "c":
                idx.append(c)
            else:
                idx.append(next(spatial))
        arr[tuple(idx)] = out
    info = {"n_labels": int(np.count_nonzero(np.unique(out)))}
    lay.mark_done("relabel", t, block.key, info)
    return info
