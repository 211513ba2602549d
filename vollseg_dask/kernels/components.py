"""Connected components with coordinate-derived IDs, face merging and sorted-map relabelling.

Pure NumPy/SciPy kernels behind stage S3 (U-Net mask components across blocks) and the
relabelling steps of S6. No Dask, no files.

Identity from coordinates
-------------------------
A provisional object ID is a pure function of global voxel coordinates
(:func:`coordinate_ids`): ``namespace << 60 | t << 40 | (1 + linear index)`` in a ``uint64``.
A component labelled inside one block takes the ID of its smallest voxel *in that block*;
after the cross-block merge (:func:`merge_equivalences`) every global component takes the
smallest ID of its parts, which is the ID of its smallest voxel in the whole volume. A tiled run
and an untiled run therefore produce the same IDs without any coordination, and relabelling
uses per-block sorted maps (:func:`relabel_sorted`), never a lookup table sized by the largest ID.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from vollseg_dask.errors import ConfigError, DTypeError, ShapeError

__all__ = [
    "LINEAR_BITS",
    "T_BITS",
    "NAMESPACE_SHIFT",
    "NS_COMPONENT",
    "NS_SEED",
    "coordinate_ids",
    "decode_ids",
    "structure",
    "label_components",
    "forward_offsets",
    "face_pairs",
    "merge_equivalences",
    "relabel_sorted",
    "box_reach",
]

#: bits of the linear voxel index (volumes up to 2**40 - 1 voxels per time point)
LINEAR_BITS = 40
#: bits of the time index
T_BITS = 20
NAMESPACE_SHIFT = LINEAR_BITS + T_BITS
#: namespace of U-Net connected components
NS_COMPONENT = 2
#: namespace of watershed seeds / StarDist objects
NS_SEED = 1


def coordinate_ids(coords: np.ndarray, shape: Sequence[int], t: int, namespace: int) -> np.ndarray:
    """Provisional IDs from global voxel coordinates.

    Parameters
    ----------
    coords : numpy.ndarray, shape (N, 3), integer
        Global (z, y, x) voxel coordinates, each inside ``shape``.
    shape : sequence of 3 int
        Shape (Z, Y, X) of one time point of the volume.
    t : int
        Time index, ``0 <= t < 2**20``.
    namespace : int
        Small tag (0..15) separating kinds of objects (components, seeds).

    Returns
    -------
    numpy.ndarray, shape (N,), uint64
        ``namespace << 60 | t << 40 | (1 + z*Y*X + y*X + x)``; never 0.
    """
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ShapeError(f"coords must have shape (N, 3), got {coords.shape}")
    if coords.size and coords.dtype.kind not in "iu":
        raise DTypeError(f"coords must be integers, got dtype {coords.dtype}")
    Z, Y, X = (int(s) for s in shape)
    if Z * Y * X >= (1 << LINEAR_BITS):
        raise ShapeError(f"volume {tuple(shape)} has {Z * Y * X} voxels per time point; at most 2**40 - 1 fit an ID")
    if not 0 <= int(t) < (1 << T_BITS):
        raise ShapeError(f"time index {t} outside 0..{(1 << T_BITS) - 1}")
    if not 0 <= int(namespace) < 16:
        raise ConfigError(f"namespace {namespace} outside 0..15")
    c = coords.astype(np.int64, copy=False)
    if c.size and (c.min(axis=0) < 0).any() or c.size and (c.max(axis=0) >= np.array([Z, Y, X])).any():
        raise ShapeError(f"coordinates outside the volume {tuple(shape)}")
    lin = (c[:, 0] * Y + c[:, 1]) * X + c[:, 2]
    high = (np.uint64(namespace) << np.uint64(NAMESPACE_SHIFT)) | (np.uint64(t) << np.uint64(LINEAR_BITS))
    return (lin.astype(np.uint64) + np.uint64(1)) | high


def decode_ids(ids: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`coordinate_ids`.

    Returns
    -------
    coords : numpy.ndarray, shape (N, 3), int64
    t : numpy.ndarray, shape (N,), int64
    namespace : numpy.ndarray, shape (N,), int64
    """
    ids = np.asarray(ids, dtype=np.uint64)
    Z, Y, X = (int(s) for s in shape)
    lin = (ids & np.uint64((1 << LINEAR_BITS) - 1)).astype(np.int64) - 1
    t = ((ids >> np.uint64(LINEAR_BITS)) & np.uint64((1 << T_BITS) - 1)).astype(np.int64)
    ns = (ids >> np.uint64(NAMESPACE_SHIFT)).astype(np.int64)
    z, rem = np.divmod(lin, Y * X)
    y, x = np.divmod(rem, X)
    return np.stack([z, y, x], axis=1), t, ns


def structure(connectivity: int) -> np.ndarray:
    """3×3×3 structuring element: ``connectivity`` 6 (faces) or 26 (faces, edges, corners)."""
    if connectivity == 6:
        return ndimage.generate_binary_structure(3, 1)
    if connectivity == 26:
        return ndimage.generate_binary_structure(3, 3)
    raise ConfigError(f"connectivity must be 6 or 26, got {connectivity!r}")


def label_components(
    mask: np.ndarray,
    *,
    offset: Sequence[int],
    shape: Sequence[int],
    t: int,
    connectivity: int = 26,
    namespace: int = NS_COMPONENT,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Label the connected components of one block's mask with coordinate-derived IDs.

    Parameters
    ----------
    mask : numpy.ndarray, shape (z, y, x), bool
        Foreground of the block (its core only: components are merged across blocks later).
    offset : sequence of 3 int
        Global coordinates of ``mask[0, 0, 0]``.
    shape : sequence of 3 int
        Shape of the whole volume at one time point.
    t : int
        Time index (goes into the IDs).
    connectivity : {6, 26}
        Voxel adjacency.
    namespace : int
        ID namespace, default :data:`NS_COMPONENT`.

    Returns
    -------
    labels : numpy.ndarray, shape of ``mask``, uint64
        0 on background, else the ID of the component's smallest global voxel (raster order).
    table : dict of numpy.ndarray
        One row per component, sorted by ``id``: ``id`` (uint64), ``count`` (int64 voxels),
        ``sum_z``, ``sum_y``, ``sum_x`` (int64 sums of global coordinates, for exact centroids),
        ``z0, y0, x0, z1, y1, x1`` (int64 global bounding box, inclusive).
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ShapeError(f"mask must be 3-D (z, y, x), got shape {mask.shape}")
    if mask.dtype != bool:
        mask = mask != 0
    lab, n = ndimage.label(mask, structure=structure(connectivity))
    out = np.zeros(mask.shape, np.uint64)
    off = np.asarray(offset, np.int64)
    if n == 0:
        return out, _empty_table()
    flat = lab.ravel()
    # The first voxel of each label in raster order is its smallest voxel, locally and globally
    # (raster order inside a box is the restriction of the global raster order).
    first = np.zeros(n + 1, np.int64)
    _, first_idx = np.unique(flat, return_index=True)
    has_bg = flat.min() == 0
    first[1:] = first_idx[1:] if has_bg else first_idx
    local = np.stack(np.unravel_index(first[1:], mask.shape), axis=1)
    ids = coordinate_ids(local + off, shape, t, namespace)
    lut = np.concatenate([[np.uint64(0)], ids])
    out = lut[lab]
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(np.int64)
    zz, yy, xx = np.indices(mask.shape, dtype=np.int64) if mask.size < 2**26 else _indices_big(mask.shape)
    sums = [
        np.rint(np.bincount(flat, weights=(c.ravel() + o), minlength=n + 1)[1:]).astype(np.int64)
        for c, o in zip((zz, yy, xx), off, strict=True)
    ]
    boxes = ndimage.find_objects(lab)
    bb = np.array([[s.start for s in b] + [s.stop - 1 for s in b] for b in boxes], np.int64)
    bb[:, :3] += off
    bb[:, 3:] += off
    table = {
        "id": ids,
        "count": counts,
        "sum_z": sums[0],
        "sum_y": sums[1],
        "sum_x": sums[2],
        "z0": bb[:, 0],
        "y0": bb[:, 1],
        "x0": bb[:, 2],
        "z1": bb[:, 3],
        "y1": bb[:, 4],
        "x1": bb[:, 5],
    }
    order = np.argsort(ids, kind="stable")
    return out, {k: v[order] for k, v in table.items()}


def _indices_big(shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:  # pragma: no cover - huge blocks
    return tuple(np.broadcast_to(np.arange(s, dtype=np.int64).reshape([-1 if i == a else 1 for i in range(3)]), shape)
                 for a, s in enumerate(shape))


def _empty_table() -> dict[str, np.ndarray]:
    t = {"id": np.zeros(0, np.uint64)}
    for k in ("count", "sum_z", "sum_y", "sum_x", "z0", "y0", "x0", "z1", "y1", "x1"):
        t[k] = np.zeros(0, np.int64)
    return t


def forward_offsets(connectivity: int) -> list[tuple[int, int, int]]:
    """Neighbour offsets whose first non-zero component is +1 (3 for 6-, 13 for 26-connectivity)."""
    st = structure(connectivity)
    out = []
    for d in itertools.product((-1, 0, 1), repeat=3):
        if not any(d) or not st[d[0] + 1, d[1] + 1, d[2] + 1]:
            continue
        first = next(v for v in d if v)
        if first == 1:
            out.append(d)
    return out


def face_pairs(labels: np.ndarray, core_shape: Sequence[int], connectivity: int = 26) -> np.ndarray:
    """Pairs of different IDs that touch across the high faces of a block's core.

    Parameters
    ----------
    labels : numpy.ndarray, shape (z, y, x), uint64
        Provisional labels over the block's core grown by one voxel on its *high* side along each
        axis where the volume continues (those voxels belong to the neighbours and hold their IDs).
    core_shape : sequence of 3 int
        Shape of the core; ``labels.shape[a]`` is ``core_shape[a]`` or ``core_shape[a] + 1``.
    connectivity : {6, 26}

    Returns
    -------
    numpy.ndarray, shape (M, 2), uint64
        Unique pairs ``(a, b)`` with ``a < b``, both non-zero, that are adjacent somewhere.

    Notes
    -----
    Every adjacent voxel pair of the volume lies in the grown core of the block that holds their
    component-wise minimum corner, and crosses one of that core's high faces unless both voxels
    are in the core (then they share an ID). So the union over blocks finds every cross-block
    adjacency; duplicates between blocks are harmless.
    """
    labels = np.asarray(labels)
    core_shape = tuple(int(c) for c in core_shape)
    if labels.ndim != 3 or any(s - c not in (0, 1) for s, c in zip(labels.shape, core_shape, strict=True)):
        raise ShapeError(f"labels shape {labels.shape} must be the core shape {core_shape} plus 0 or 1 per axis")
    st = structure(connectivity)
    chunks = []
    for ax in range(3):
        if labels.shape[ax] == core_shape[ax]:
            continue  # volume ends here: no neighbour on this side
        ce = core_shape[ax]
        sl = [slice(None)] * 3
        sl[ax] = slice(ce - 1, ce + 1)
        slab = labels[tuple(sl)]
        for d in itertools.product((-1, 0, 1), repeat=3):
            if d[ax] != 1 or not st[d[0] + 1, d[1] + 1, d[2] + 1]:
                continue
            src = tuple(slice(max(0, -v), s - max(0, v)) for v, s in zip(d, slab.shape, strict=True))
            dst = tuple(slice(max(0, v), s - max(0, -v)) for v, s in zip(d, slab.shape, strict=True))
            a = slab[src].ravel()
            b = slab[dst].ravel()
            keep = (a != 0) & (b != 0) & (a != b)
            if keep.any():
                chunks.append(np.stack([np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])], axis=1))
    if not chunks:
        return np.zeros((0, 2), np.uint64)
    return np.unique(np.concatenate(chunks), axis=0).astype(np.uint64)


def merge_equivalences(ids: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union-find over an equivalence table: every ID maps to the smallest ID of its class.

    Parameters
    ----------
    ids : numpy.ndarray, shape (N,), uint64
        All provisional IDs (duplicates allowed).
    pairs : numpy.ndarray, shape (M, 2), uint64
        Equivalent pairs; every value must occur in ``ids``.

    Returns
    -------
    keys : numpy.ndarray, shape (K,), uint64
        Sorted unique IDs.
    roots : numpy.ndarray, shape (K,), uint64
        ``roots[i]`` = smallest ID equivalent to ``keys[i]``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    keys = np.unique(np.asarray(ids, np.uint64))
    pairs = np.asarray(pairs, np.uint64).reshape(-1, 2)
    if len(pairs) == 0 or len(keys) == 0:
        return keys, keys.copy()
    ia = np.searchsorted(keys, pairs[:, 0])
    ib = np.searchsorted(keys, pairs[:, 1])
    if (ia >= len(keys)).any() or (ib >= len(keys)).any() or (keys[np.minimum(ia, len(keys) - 1)] != pairs[:, 0]).any() \
            or (keys[np.minimum(ib, len(keys) - 1)] != pairs[:, 1]).any():
        raise ShapeError("an equivalence pair names an ID that is not in the ID list")
    n = len(keys)
    graph = coo_matrix((np.ones(len(ia), np.int8), (ia, ib)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # keys are sorted, so the first member of each class in key order is its smallest ID
    order = np.argsort(comp, kind="stable")
    comp_sorted = comp[order]
    starts = np.r_[0, np.flatnonzero(np.diff(comp_sorted)) + 1]
    smallest = keys[order[starts]]
    root_of_comp = np.empty(comp.max() + 1, np.uint64)
    root_of_comp[comp_sorted[starts]] = smallest
    return keys, root_of_comp[comp]


def relabel_sorted(labels: np.ndarray, keys: np.ndarray, values: np.ndarray, *, default: int | None = 0,
                   out_dtype: np.dtype | type | None = None) -> np.ndarray:
    """Map ``labels`` through a sorted table ``keys -> values`` (binary search, no dense LUT).

    Parameters
    ----------
    labels : numpy.ndarray, any shape, unsigned integer
        Values to map; 0 always maps to 0.
    keys : numpy.ndarray, shape (K,)
        Strictly increasing keys.
    values : numpy.ndarray, shape (K,)
        Image of each key.
    default : int or None
        Value for a non-zero label missing from ``keys``; ``None`` raises instead.
    out_dtype : dtype, optional
        Output dtype (default: ``values.dtype``).

    Returns
    -------
    numpy.ndarray, shape of ``labels``
    """
    labels = np.asarray(labels)
    keys = np.asarray(keys)
    values = np.asarray(values)
    if keys.shape != values.shape or keys.ndim != 1:
        raise ShapeError(f"keys {keys.shape} and values {values.shape} must be 1-D of equal length")
    dt = np.dtype(out_dtype) if out_dtype is not None else values.dtype
    out = np.zeros(labels.shape, dt)
    nz = labels != 0
    if not nz.any():
        return out
    lv = labels[nz]
    if len(keys) == 0:
        found = np.zeros(lv.shape, bool)
        idx = np.zeros(lv.shape, np.intp)
    else:
        idx = np.searchsorted(keys, lv)
        idx_c = np.minimum(idx, len(keys) - 1)
        found = keys[idx_c] == lv
        idx = idx_c
    if not found.all():
        if default is None:
            missing = np.unique(lv[~found])[:5]
            raise ShapeError(f"labels {missing.tolist()} are missing from the relabelling table")
    mapped = np.where(found, values[idx] if len(keys) else 0, default or 0).astype(dt)
    out[nz] = mapped
    return out


def box_reach(lo: np.ndarray, hi: np.ndarray, boundaries: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per block of a grid, the bounding box of all boxes that intersect its core.

    Used to size a block's read region so that every object reaching its core is whole inside it.
    Runs over (box, block) incidences only, never blocks x boxes.

    Parameters
    ----------
    lo, hi : numpy.ndarray, shape (M, 3), int
        Boxes as half-open ranges ``[lo, hi)`` (global voxels).
    boundaries : sequence of 3 sequences of int
        Per axis, the block boundaries ``0 = b_0 < b_1 < ... < b_n = shape`` (``BlockPlan.boundaries``).

    Returns
    -------
    reach_lo, reach_hi : numpy.ndarray, shape (n_z, n_y, n_x, 3), int64
        Smallest ``lo`` and largest ``hi`` over the boxes meeting each block's core; blocks met by no
        box get their own core bounds.
    """
    lo = np.asarray(lo, np.int64).reshape(-1, 3)
    hi = np.asarray(hi, np.int64).reshape(-1, 3)
    bnd = [np.asarray(b, np.int64) for b in boundaries]
    grid = tuple(len(b) - 1 for b in bnd)
    core_lo = np.stack(np.meshgrid(*[b[:-1] for b in bnd], indexing="ij"), axis=-1)
    core_hi = np.stack(np.meshgrid(*[b[1:] for b in bnd], indexing="ij"), axis=-1)
    reach_lo = core_lo.reshape(-1, 3).copy()
    reach_hi = core_hi.reshape(-1, 3).copy()
    if len(lo):
        i0 = np.stack([np.searchsorted(b, lo[:, a], side="right") - 1 for a, b in enumerate(bnd)], axis=1)
        i1 = np.stack([np.searchsorted(b, hi[:, a] - 1, side="right") - 1 for a, b in enumerate(bnd)], axis=1)
        i0 = np.clip(i0, 0, np.array(grid) - 1)
        i1 = np.clip(i1, 0, np.array(grid) - 1)
        span = i1 - i0 + 1
        n = span.prod(axis=1)
        owner = np.repeat(np.arange(len(lo)), n)
        k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        sy, sx = span[owner, 1], span[owner, 2]
        dz, rem = np.divmod(k, sy * sx)
        dy, dx = np.divmod(rem, sx)
        flat = ((i0[owner, 0] + dz) * grid[1] + (i0[owner, 1] + dy)) * grid[2] + (i0[owner, 2] + dx)
        for a in range(3):
            np.minimum.at(reach_lo[:, a], flat, lo[owner, a])
            np.maximum.at(reach_hi[:, a], flat, hi[owner, a])
    return reach_lo.reshape(*grid, 3), reach_hi.reshape(*grid, 3)
