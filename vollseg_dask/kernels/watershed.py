"""Deterministic marker-controlled watershed, block certificates and object size tables.

Kernels of stages S5 (watershed per block) and S6 (size filters, relabelling). Pure NumPy,
SciPy and scikit-image; no Dask, no files.

Why a deterministic variant of skimage's watershed
--------------------------------------------------
``skimage.segmentation.watershed`` floods from a priority queue ordered by (value, age): every
pixel pushed during the flood gets a fresh, increasing ``age``, but *all marker pixels are pushed
with age 0*. Two marker pixels with equal values therefore tie, and the binary heap pops tied
elements in an order that depends on the heap's history, i.e. on every other element pushed so
far, including those of other mask components and of whatever else the block holds. A voxel
adjacent to two such markers can then take either label depending on the block's extent, so plain
skimage is *not* guaranteed translation invariant (the raster order of the marker push is, but the
heap does not preserve it). Non-marker pixels are safe: their ages are unique and, inside one mask
component, their relative order only depends on that component's own flood.

:func:`watershed_keys` removes the marker ties without changing anything else: the image is
replaced by an integer key that sorts by (value, marker before non-marker, global raster order of
the marker pixel), encoded exactly in float64. All remaining comparisons are then strict, so the
flood of one mask component is a pure function of that component's values and markers, whatever
block it is computed in. :func:`seeded_watershed` feeds those keys to skimage's C flood.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from vollseg_dask.errors import InvalidDataError, ShapeError
from vollseg_dask.kernels.components import structure

__all__ = [
    "watershed_keys",
    "seeded_watershed",
    "cut_faces",
    "certify_block",
    "core_components",
    "size_table",
    "select_objects",
    "interface_table",
    "merge_groups",
    "PROB_SCALE",
    "dilation_footprint",
    "expansion_rounds",
    "expand_labels",
]


def _order_key_u32(values: np.ndarray) -> np.ndarray | None:
    """Order-preserving unsigned 32-bit keys of float32 / (u)int8-32 values, else None.

    Floats: the IEEE bit pattern with the sign bit flipped (positive) or all bits flipped
    (negative) sorts like the value; ``+ 0`` first turns -0.0 into +0.0, which compare equal.
    """
    if values.dtype == np.float32:
        bits = (values + np.float32(0)).view(np.uint32)
        return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000)).astype(np.int64)
    if values.dtype.kind == "u" and values.dtype.itemsize <= 4:
        return values.astype(np.int64)
    if values.dtype.kind == "i" and values.dtype.itemsize <= 4:
        return values.astype(np.int64) + 2**31
    return None


def watershed_keys(image: np.ndarray, markers: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Tie-free flooding keys with the same order as ``image`` except among tied marker pixels.

    Parameters
    ----------
    image : numpy.ndarray, shape (z, y, x), real
        Flooding values (lower floods first), finite.
    markers : numpy.ndarray, shape of ``image``
        Non-zero on marker pixels.
    mask : numpy.ndarray, shape of ``image``, bool, optional
        Only these voxels get keys (others 0: they are never flooded); saves sorting the rest.

    Returns
    -------
    numpy.ndarray, shape of ``image``, float64
        ``rank(value) * (K + 1) + m`` where K is the number of marker pixels, ``m`` is the raster
        rank of a marker pixel among the markers (0..K-1), or K for other pixels, and ``rank`` is
        an order-preserving integer of the value: its 32-bit order key for float32 and <= 32-bit
        integer images with fewer than 2**21 marker pixels (no sort: profiled, the sort was 30 % of a
        block's watershed), else its dense rank among the masked values. Exact integers
        (< 2**53), so comparisons equal comparisons of the tuple (value, is_not_marker, marker
        raster rank): both encodings give skimage the same flood.
    """
    image = np.asarray(image)
    markers = np.asarray(markers)
    if image.shape != markers.shape:
        raise ShapeError(f"image {image.shape} and markers {markers.shape} differ in shape")
    sel = np.ones(image.size, bool) if mask is None else np.asarray(mask, bool).ravel()
    if sel.size != image.size:
        raise ShapeError(f"mask {np.shape(mask)} and image {image.shape} differ in shape")
    idx = np.flatnonzero(sel)
    flat = image.ravel()[idx]
    if flat.size and flat.dtype.kind == "f" and not np.isfinite(flat).all():
        raise InvalidDataError("watershed image holds NaN or infinite values")
    is_marker = markers.ravel()[idx] != 0
    k = int(is_marker.sum())
    rank = _order_key_u32(flat) if k + 1 < 2**21 else None
    if rank is None:
        order = np.argsort(flat, kind="stable")
        sv = flat[order]
        dense_sorted = np.cumsum(np.r_[False, sv[1:] != sv[:-1]]) if sv.size else np.zeros(0, np.int64)
        rank = np.empty(flat.size, np.int64)
        rank[order] = dense_sorted
        n_levels = int(dense_sorted[-1]) + 1 if sv.size else 0
        if n_levels * (k + 1) >= 2**53:
            raise ShapeError(f"block too large for exact watershed keys ({n_levels} levels x {k + 1} markers)")
    sub = np.full(flat.size, k, np.int64)
    sub[is_marker] = np.arange(k, dtype=np.int64)  # raster order = global coordinate order
    out = np.zeros(image.size, np.float64)
    out[idx] = (rank * (k + 1) + sub).astype(np.float64)
    return out.reshape(image.shape)


def seeded_watershed(image: np.ndarray, markers: np.ndarray, mask: np.ndarray, *,
                     connectivity: int = 1) -> np.ndarray:
    """Marker-controlled watershed restricted to a mask, with deterministic tie-breaking.

    Parameters
    ----------
    image : numpy.ndarray, shape (z, y, x), real
        Flooding values; lower values are flooded first (pass ``-probability``).
    markers : numpy.ndarray, shape (z, y, x), uint64
        Marker IDs (0 = none). Markers outside ``mask`` are dropped.
    mask : numpy.ndarray, shape (z, y, x), bool
        Voxels that may be labelled.
    connectivity : {1, 2, 3}
        skimage connectivity (1 = 6-neighbourhood, 3 = 26-neighbourhood).

    Returns
    -------
    numpy.ndarray, shape (z, y, x), uint64
        Marker ID of the basin of every mask voxel reached from a marker, else 0.
    """
    from skimage.segmentation import watershed

    image = np.asarray(image)
    markers = np.asarray(markers)
    mask = np.asarray(mask, bool)
    if not (image.shape == markers.shape == mask.shape) or image.ndim != 3:
        raise ShapeError(f"image {image.shape}, markers {markers.shape}, mask {mask.shape} must be equal 3-D shapes")
    markers = np.where(mask, markers, 0).astype(np.uint64)
    ids = np.unique(markers[markers != 0])
    if ids.size == 0:
        return np.zeros(image.shape, np.uint64)
    if ids.size >= 2**31 - 1:  # pragma: no cover - skimage stores int32 markers
        raise ShapeError(f"{ids.size} markers in one block exceed skimage's int32 markers")
    local = np.zeros(image.shape, np.int32)
    nz = markers != 0
    local[nz] = (np.searchsorted(ids, markers[nz]) + 1).astype(np.int32)
    keys = watershed_keys(image, local, mask)
    out_local = watershed(keys, local, mask=mask, connectivity=connectivity)
    lut = np.concatenate([[np.uint64(0)], ids])
    return lut[out_local]


def cut_faces(read: Sequence[slice], shape: Sequence[int]) -> tuple[tuple[bool, bool], ...]:
    """Per axis, whether the read region's low/high face is cut (the volume continues beyond it)."""
    return tuple((s.start > 0, s.stop < n) for s, n in zip(read, shape, strict=True))


def core_components(mask: np.ndarray, core_in_read: Sequence[slice], faces: Sequence[tuple[bool, bool]], *,
                    connectivity: int = 1) -> tuple[np.ndarray, bool, int]:
    """The mask components that reach a block's core, and whether they are whole in the read region.

    The flood of one mask component depends only on that component's values and markers (with
    :func:`seeded_watershed`'s tie-breaking), so a block floods only the components that reach its
    core, and its core is provably exact when none of them touches a cut face of the read region.

    Parameters
    ----------
    mask : numpy.ndarray, shape (z, y, x), bool
        Mask over the read region.
    core_in_read : sequence of 3 slice
        The core inside the read region.
    faces : sequence of (bool, bool)
        From :func:`cut_faces`.
    connectivity : {1, 2, 3}
        The watershed's connectivity (1 = 6-neighbourhood).

    Returns
    -------
    keep : numpy.ndarray, shape (z, y, x), bool
        Voxels of the components that reach the core.
    exact : bool
    n_unsafe : int
        Core voxels whose component touches a cut face (0 when exact).
    """
    mask = np.asarray(mask, bool)
    conn = {1: 6, 3: 26}.get(connectivity)
    st = structure(conn) if conn is not None else ndimage.generate_binary_structure(3, connectivity)
    lab, n = ndimage.label(mask, structure=st)
    reach = np.zeros(n + 1, bool)  # per local component of this read region only
    reach[np.unique(lab[tuple(core_in_read)])] = True
    reach[0] = False
    keep = reach[lab]
    cut = np.zeros(n + 1, bool)
    for ax, (lo, hi) in enumerate(faces):
        for is_cut, idx in ((lo, 0), (hi, -1)):
            if is_cut:
                cut[np.unique(np.take(lab, idx, axis=ax))] = True
    cut[0] = False
    n_unsafe = int((cut & reach)[lab[tuple(core_in_read)]].sum())
    return keep, n_unsafe == 0, n_unsafe


def certify_block(mask: np.ndarray, core_in_read: Sequence[slice], faces: Sequence[tuple[bool, bool]], *,
                  connectivity: int = 1) -> tuple[bool, int]:
    """Whether a block's watershed is provably exact on its core (see :func:`core_components`).

    Returns
    -------
    exact : bool
    n_unsafe : int
        Core voxels whose mask component touches a cut face (0 when exact).
    """
    _, exact, n_unsafe = core_components(mask, core_in_read, faces, connectivity=connectivity)
    return exact, n_unsafe


def size_table(labels: np.ndarray, z_offset: int = 0) -> dict[str, np.ndarray]:
    """Exact per-object voxel counts and z ranges of one block (decomposable over blocks).

    Parameters
    ----------
    labels : numpy.ndarray, shape (z, y, x), unsigned integer
        Provisional labels of a block's core.
    z_offset : int
        Global z of ``labels[0]``.

    Returns
    -------
    dict
        ``id`` (sorted, uint64), ``count`` (int64), ``zmin``, ``zmax`` (int64, global, inclusive).
        Sum ``count`` and take min/max of the ranges over blocks to get whole-volume values.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ShapeError(f"labels must be 3-D, got shape {labels.shape}")
    ids, counts = np.unique(labels, return_counts=True)
    keep = ids != 0
    ids, counts = ids[keep], counts[keep]
    zmin = np.full(ids.size, np.iinfo(np.int64).max, np.int64)
    zmax = np.full(ids.size, -1, np.int64)
    for z in range(labels.shape[0]):
        u = np.unique(labels[z])
        u = u[u != 0]
        if u.size:
            i = np.searchsorted(ids, u)
            zmin[i] = np.minimum(zmin[i], z + z_offset)
            zmax[i] = np.maximum(zmax[i], z + z_offset)
    return {"id": ids.astype(np.uint64), "count": counts.astype(np.int64), "zmin": zmin, "zmax": zmax}


#: probabilities are summed as integers (units of 2**-16) so that block partials add up exactly
PROB_SCALE = 1 << 16


def interface_table(labels: np.ndarray, prob: np.ndarray, core_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Faces between touching objects, owned by the block whose core holds the lower voxel.

    Parameters
    ----------
    labels : numpy.ndarray, shape (z, y, x), unsigned integer
        Provisional labels of a block's core grown by (up to) one voxel on the high side of each axis
        (the core is ``labels[:cz, :cy, :cx]``).
    prob : numpy.ndarray, shape of ``labels``, float in [0, 1]
        StarDist probability over the same region.
    core_shape : tuple of 3 int
        Shape of the core.

    Returns
    -------
    dict
        ``a`` < ``b`` (uint64): object pairs sharing a face; ``n`` (int64): face voxel pairs (p, p + 1
        along one axis, p in the core); ``s`` (int64): sum over them of ``min(prob[p], prob[p + 1])``
        in units of ``1 / PROB_SCALE``. Summing ``n`` and ``s`` over blocks gives whole-volume values
        exactly, whatever the block shape.
    """
    labels = np.asarray(labels)
    prob = np.asarray(prob)
    if labels.ndim != 3 or prob.shape != labels.shape:
        raise ShapeError(f"labels {labels.shape} and prob {prob.shape} must be the same 3-D shape")
    core = tuple(int(c) for c in core_shape)
    if any(c > n or c < 0 for c, n in zip(core, labels.shape, strict=True)):
        raise ShapeError(f"core_shape {core} does not fit in the region {labels.shape}")
    q = np.rint(np.clip(prob, 0.0, 1.0) * PROB_SCALE).astype(np.int64)
    pa, pb, ps = [], [], []
    for ax in range(3):
        n_ax = min(core[ax], labels.shape[ax] - 1)
        lo = [slice(0, c) for c in core]
        lo[ax] = slice(0, n_ax)
        hi = list(lo)
        hi[ax] = slice(1, n_ax + 1)
        la, lb = labels[tuple(lo)], labels[tuple(hi)]
        m = (la != lb) & (la != 0) & (lb != 0)
        if not m.any():
            continue
        x, y = la[m].astype(np.uint64), lb[m].astype(np.uint64)
        pa.append(np.minimum(x, y))
        pb.append(np.maximum(x, y))
        ps.append(np.minimum(q[tuple(lo)][m], q[tuple(hi)][m]))
    if not pa:
        return {"a": np.zeros(0, np.uint64), "b": np.zeros(0, np.uint64), "n": np.zeros(0, np.int64),
                "s": np.zeros(0, np.int64)}
    sv = np.concatenate(ps)
    pairs, n, tot = _sum_by_pair(np.concatenate(pa), np.concatenate(pb), np.ones(sv.size, np.int64), sv)
    return {"a": pairs[:, 0], "b": pairs[:, 1], "n": n, "s": tot}


def _sum_by_pair(a: np.ndarray, b: np.ndarray, n: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, ...]:
    """Unique ``(a, b)`` rows (shape (P, 2), sorted) with ``n`` and ``s`` summed per row (int64)."""
    pairs, inv = np.unique(np.stack([a, b], axis=1), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    nn = np.zeros(len(pairs), np.int64)
    np.add.at(nn, inv, np.asarray(n, np.int64))
    ss = np.zeros(len(pairs), np.int64)
    np.add.at(ss, inv, np.asarray(s, np.int64))
    return pairs, nn, ss


def merge_groups(a: np.ndarray, b: np.ndarray, n: np.ndarray, s: np.ndarray,
                 threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Objects to merge: those joined by faces whose mean probability is at least ``threshold``.

    Parameters
    ----------
    a, b, n, s : numpy.ndarray, shape (P,)
        Interface rows (:func:`interface_table`), possibly with repeated pairs (block partials):
        they are summed first.
    threshold : float
        Merge when ``sum(s) / sum(n) >= threshold * PROB_SCALE``.

    Returns
    -------
    ids, roots : numpy.ndarray of uint64, shape (K,)
        Sorted IDs of every object in a merged group and the smallest ID of its group.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = np.asarray(a, np.uint64), np.asarray(b, np.uint64)
    if a.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    pairs, nn, ss = _sum_by_pair(a, b, n, s)
    join = ss >= threshold * PROB_SCALE * nn
    if not join.any():
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    pj = pairs[join]
    ids, local = np.unique(pj, return_inverse=True)
    local = local.reshape(-1, 2)
    g = coo_matrix((np.ones(len(local)), (local[:, 0], local[:, 1])), shape=(len(ids), len(ids)))
    _, comp = connected_components(g, directed=False)
    root = np.full(comp.max() + 1, np.iinfo(np.uint64).max, np.uint64)
    np.minimum.at(root, comp, ids)  # ids are sorted: the smallest member of each group
    return ids, root[comp]


def select_objects(ids: np.ndarray, count: np.ndarray, zmin: np.ndarray, zmax: np.ndarray, *,
                   min_size: int = 0, max_size: int | None = None, min_z_extent: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Apply 3-D size filters and rank the survivors 1..N in ID order.

    Parameters
    ----------
    ids, count, zmin, zmax : numpy.ndarray, shape (N,)
        Whole-volume table (IDs unique).
    min_size, max_size : int
        Inclusive bounds on the voxel count (``max_size`` None = unbounded).
    min_z_extent : int
        Minimum number of z slices spanned (``zmax - zmin + 1``).

    Returns
    -------
    kept_ids : numpy.ndarray, shape (K,), uint64
        Sorted IDs that pass.
    final : numpy.ndarray, shape (K,), uint32
        Their final labels 1..K (rank in ID order).
    """
    ids = np.asarray(ids, np.uint64)
    if np.unique(ids).size != ids.size:
        raise ShapeError("size table IDs are not unique")
    keep = (np.asarray(count) >= min_size) & ((np.asarray(zmax) - np.asarray(zmin) + 1) >= min_z_extent)
    if max_size is not None:
        keep &= np.asarray(count) <= max_size
    kept = np.sort(ids[keep])
    if kept.size >= 2**32:
        raise ShapeError(f"{kept.size} objects in one time point do not fit uint32 labels")
    return kept, np.arange(1, kept.size + 1, dtype=np.uint32)


def dilation_footprint(radii: Sequence[int]) -> np.ndarray:
    """Ellipsoid with per-axis radii ``(rz, ry, rx)`` voxels (a radius 0 gives the axis no extent).

    Offsets ``o`` with ``sum((o_a / r_a)**2) <= 1`` over the axes with ``r_a > 0``. The set is closed
    under shrinking any offset towards 0, so every voxel of the dilation is joined to the centre by a
    monotone lattice path inside it.
    """
    r = [int(v) for v in radii]
    if len(r) != 3 or any(v < 0 for v in r):
        raise ShapeError(f"radii {tuple(radii)} must be 3 non-negative integers")
    grids = np.meshgrid(*[np.arange(-v, v + 1) for v in r], indexing="ij")
    q = np.zeros(grids[0].shape, np.float64)
    for g, v in zip(grids, r, strict=True):
        if v:
            q += (g / v) ** 2
    return q <= 1.0 + 1e-12


def expansion_rounds(radii: Sequence[int], connectivity: int = 1) -> int:
    """Rounds of one-voxel growth that reach every offset of :func:`dilation_footprint` (its reach).

    ``connectivity`` 1 (6-neighbourhood): the largest L1 norm of an offset; otherwise the largest
    Chebyshev norm.
    """
    fp = dilation_footprint(radii)
    off = np.argwhere(fp) - np.array(fp.shape) // 2
    if not len(off):
        return 0
    norm = np.abs(off).sum(axis=1) if connectivity == 1 else np.abs(off).max(axis=1)
    return int(norm.max())


def expand_labels(labels: np.ndarray, image: np.ndarray, allowed: np.ndarray, rounds: int, *,
                  connectivity: int = 1) -> np.ndarray:
    """Grow labels into free ``allowed`` voxels, one voxel per round, for ``rounds`` rounds.

    In each round (synchronous), every unlabelled ``allowed`` voxel with a labelled neighbour takes
    the label of the neighbour with the lowest ``image`` value, ties broken by the smallest label.
    The result at a voxel depends only on the inputs within ``rounds`` voxels of it (bounded reach,
    translation invariant), so a block computes it exactly on its core from a read region holding
    the core grown by ``rounds``.

    Parameters
    ----------
    labels : numpy.ndarray, shape (z, y, x), uint64
        Labels to grow (0 = free).
    image : numpy.ndarray, shape (z, y, x), real
        Flooding values (those of the watershed, lower = preferred), finite.
    allowed : numpy.ndarray, shape (z, y, x), bool
        Voxels that may take a label.
    rounds : int
    connectivity : {1, 3}
        1 = 6-neighbourhood, 3 = 26-neighbourhood.

    Returns
    -------
    numpy.ndarray, shape (z, y, x), uint64
    """
    lab = np.asarray(labels).astype(np.uint64, copy=True)
    image = np.asarray(image, np.float64)
    allowed = np.asarray(allowed, bool)
    if not (lab.shape == image.shape == allowed.shape) or lab.ndim != 3:
        raise ShapeError(f"labels {lab.shape}, image {image.shape}, allowed {allowed.shape} must be equal 3-D shapes")
    st = structure(6 if connectivity == 1 else 26)
    offsets = [tuple(int(v) - 1 for v in o) for o in np.argwhere(st) if tuple(o) != (1, 1, 1)]
    shape = lab.shape
    for _ in range(int(rounds)):
        free = allowed & (lab == 0)
        if not free.any():
            break
        zz, yy, xx = np.nonzero(free)
        best_val = np.full(zz.size, np.inf)
        best_lab = np.zeros(zz.size, np.uint64)
        for dz, dy, dx in offsets:
            nz, ny, nx = zz + dz, yy + dy, xx + dx
            ok = (nz >= 0) & (nz < shape[0]) & (ny >= 0) & (ny < shape[1]) & (nx >= 0) & (nx < shape[2])
            nl = np.zeros(zz.size, np.uint64)
            nv = np.full(zz.size, np.inf)
            nl[ok] = lab[nz[ok], ny[ok], nx[ok]]
            nv[ok] = image[nz[ok], ny[ok], nx[ok]]
            cand = nl != 0
            better = cand & ((nv < best_val) | ((nv == best_val) & ((best_lab == 0) | (nl < best_lab))))
            best_val = np.where(better, nv, best_val)
            best_lab = np.where(better, nl, best_lab)
        got = best_lab != 0
        if not got.any():
            break
        lab[zz[got], yy[got], xx[got]] = best_lab[got]
    return lab
