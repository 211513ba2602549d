"""StarDist polyhedra and VollSeg seeds: NMS, ray distances, rendering, seed pooling, marker balls.

Pure NumPy kernels behind stages S2 (StarDist NMS), S4 (seed pooling) and the marker image of S5.
StarDist's own C code does the geometry (``stardist.nms.non_maximum_suppression_3d_inds`` and
``stardist.geometry.polyhedron_to_label``); these wrappers only fix what the tiled engine needs:

* **deterministic order** - candidates are sorted by (probability descending, global linear index)
  before NMS, so ties never depend on the order blocks delivered their candidates;
* **translation-exact rendering** - StarDist computes polyhedron vertices in absolute float32
  coordinates, so rendering the same polyhedron into arrays at different offsets can flip voxels
  that lie on a face. :func:`render_polyhedra` renders each polyhedron in its own canonical frame
  (origin = integer centre minus a fixed radius) and pastes the result, which is identical for
  every block that sees it;
* **no uint16 ceiling** - labels are uint64 IDs, composited here (highest probability wins,
  ties to the smaller ID) instead of StarDist's uint16 output.

Coordinates are voxels (z, y, x), integers for object centres.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from vollseg_dask.errors import DTypeError, ShapeError

__all__ = [
    "sort_candidates",
    "nms_sparse",
    "polyhedron_extent",
    "polyhedron_bboxes",
    "ray_distances",
    "render_polyhedra",
    "boxes_containing_points",
    "points_in_any_box",
    "pool_seeds",
    "select_refinement",
    "ball_offsets",
    "dilate_seeds",
]


def _one_omp_thread():
    """StarDist's C loops use OpenMP; the engine already runs one task per block on every core, and
    OpenMP's spinning barriers collapse under that oversubscription (measured 5x slower NMS), so each
    call runs single-threaded."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-image's stack
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="openmp")


def _check_points(points: np.ndarray, name: str = "points") -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ShapeError(f"{name} must have shape (N, 3), got {points.shape}")
    return points


def sort_candidates(points: np.ndarray, prob: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Canonical order of candidates: probability descending, then global linear index ascending.

    Parameters
    ----------
    points : numpy.ndarray, shape (N, 3), integer
        Global voxel coordinates.
    prob : numpy.ndarray, shape (N,)
        Object probabilities.
    shape : sequence of 3 int
        Volume shape (for the linear index).

    Returns
    -------
    numpy.ndarray, shape (N,), intp
        Permutation.
    """
    points = _check_points(points).astype(np.int64)
    Y, X = int(shape[1]), int(shape[2])
    lin = (points[:, 0] * Y + points[:, 1]) * X + points[:, 2]
    return np.lexsort((lin, -np.asarray(prob, np.float64)))


def nms_sparse(points: np.ndarray, prob: np.ndarray, dist: np.ndarray, rays, *, shape: Sequence[int],
               nms_thresh: float = 0.4) -> np.ndarray:
    """StarDist's 3D non-maximum suppression on sparse candidates, in a deterministic order.

    Parameters
    ----------
    points : numpy.ndarray, shape (N, 3), integer
        Candidate centres (global voxels).
    prob : numpy.ndarray, shape (N,)
        Candidate probabilities.
    dist : numpy.ndarray, shape (N, R), float
        Ray lengths in voxels (positive).
    rays : stardist.rays3d.Rays_Base
        The R rays.
    shape : sequence of 3 int
        Volume shape (tie-break by global linear index).
    nms_thresh : float
        A kept polyhedron suppresses another when their overlap / smaller volume exceeds this.

    Returns
    -------
    numpy.ndarray, shape (N,), bool
        Survivors, in the input order.
    """
    from stardist.nms import non_maximum_suppression_3d_inds

    points = _check_points(points)
    dist = np.asarray(dist, np.float32)
    prob = np.asarray(prob, np.float32)
    n = len(points)
    if dist.shape != (n, len(rays)) or prob.shape != (n,):
        raise ShapeError(f"dist {dist.shape} / prob {prob.shape} do not match {n} points and {len(rays)} rays")
    keep = np.zeros(n, bool)
    if n == 0:
        return keep
    order = sort_candidates(points, prob, shape)
    # scores strictly decreasing in our order: StarDist's own argsort then cannot reorder ties
    scores = np.arange(n, 0, -1, dtype=np.float64)
    with _one_omp_thread():
        surv = non_maximum_suppression_3d_inds(
            np.maximum(dist[order], 1e-3), points[order].astype(np.float32), rays, scores,
            thresh=float(nms_thresh), use_bbox=True, use_kdtree=True, verbose=False,
        )
    keep[order] = surv
    return keep


def polyhedron_extent(dist: np.ndarray, rays) -> np.ndarray:
    """Per polyhedron, half-width along z, y, x of its vertices around the centre.

    Returns
    -------
    numpy.ndarray, shape (N, 2, 3), float64
        ``[:, 0]`` = max over rays of ``-dist*vertex`` (reach to lower coordinates),
        ``[:, 1]`` = max over rays of ``dist*vertex`` (reach to higher coordinates).
    """
    dist = np.asarray(dist, np.float64)
    v = np.asarray(rays.vertices, np.float64)  # (R, 3)
    reach = dist[:, :, None] * v[None, :, :]  # (N, R, 3)
    return np.stack([np.maximum((-reach).max(axis=1), 0), np.maximum(reach.max(axis=1), 0)], axis=1)


def polyhedron_bboxes(points: np.ndarray, dist: np.ndarray, rays) -> np.ndarray:
    """Inclusive voxel bounding boxes ``(z0, y0, x0, z1, y1, x1)`` of star-convex polyhedra.

    Rounded outward (floor / ceil), so every voxel StarDist renders is inside.

    Returns
    -------
    numpy.ndarray, shape (N, 6), int64
    """
    points = _check_points(points).astype(np.float64)
    ext = polyhedron_extent(dist, rays)
    lo = np.floor(points - ext[:, 0]).astype(np.int64)
    hi = np.ceil(points + ext[:, 1]).astype(np.int64)
    return np.concatenate([lo, hi], axis=1)


def ray_distances(labels: np.ndarray, points: np.ndarray, rays, *, max_steps: int | None = None) -> np.ndarray:
    """Star distances of the object under each point, as StarDist's ``star_dist3D`` defines them.

    From the centre, step along each unit ray in whole steps ``k * v`` (k = 1, 2, ...), rounding
    to the nearest voxel, until the voxel leaves the array or holds a different label; the
    distance is the length of that first outside voxel's integer offset (see Notes).

    Parameters
    ----------
    labels : numpy.ndarray, shape (z, y, x), integer
        Label image (any integer dtype, labels above 65535 allowed).
    points : numpy.ndarray, shape (N, 3), integer
        Centres, in ``labels``' coordinates; each must lie on a non-zero label.
    rays : stardist.rays3d.Rays_Base
        R rays (unit vectors, (z, y, x) order).
    max_steps : int, optional
        Safety bound on the ray length (default: the array diagonal).

    Returns
    -------
    numpy.ndarray, shape (N, R), float32

    Notes
    -----
    StarDist 0.9's C++ ``star_dist3D`` marches ``x += v`` in float32 and, when the rounded
    position leaves the object, returns ``sqrt(dz² + dy² + dx²)`` of the rounded integer offset.
    This function reproduces those values for any label dtype (StarDist casts labels to uint16),
    evaluated only at the given centres instead of at every voxel (tested against
    ``stardist.geometry.star_dist3D``).
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise DTypeError(f"labels must be integers, got {labels.dtype}")
    points = _check_points(points).astype(np.int64)
    n = len(points)
    verts = np.asarray(rays.vertices, np.float32)
    R = len(verts)
    out = np.zeros((n, R), np.float32)
    if n == 0:
        return out
    shape = np.array(labels.shape, np.int64)
    if ((points < 0) | (points >= shape)).any():
        raise ShapeError("a centre lies outside the label array")
    value = labels[points[:, 0], points[:, 1], points[:, 2]]
    if (value == 0).any():
        raise ShapeError(f"{int((value == 0).sum())} centre(s) lie on background")
    steps = int(max_steps or int(np.ceil(np.sqrt((shape ** 2).sum()))) + 2)
    # state per (point, ray), float32 exactly as the C++ loop accumulates
    pos = np.zeros((n, R, 3), np.float32)
    done = np.zeros((n, R), bool)
    centre = points[:, None, :]
    for _ in range(steps):
        active = ~done
        if not active.any():
            break
        pos[active] += np.broadcast_to(verts[None], (n, R, 3))[active]
        # C++: round_to_int(lrint) = round half to even, same as np.rint
        vox = centre + np.rint(pos).astype(np.int64)
        outside = ((vox < 0) | (vox >= shape)).any(axis=2)
        vc = np.clip(vox, 0, shape - 1)
        differs = labels[vc[..., 0], vc[..., 1], vc[..., 2]] != value[:, None]
        hit = active & (outside | differs)
        if hit.any():
            # stardist 0.9's C++ returns the length of the rounded offset of the first outside voxel
            r = np.rint(pos[hit]).astype(np.int64)
            out[hit] = np.sqrt((r * r).sum(axis=1).astype(np.float32))
            done |= hit
    if not done.all():
        raise ShapeError(f"ray marching did not leave the object within {steps} steps")
    return out


def _canonical_radius(dist_row: np.ndarray) -> int:
    return int(np.ceil(float(np.max(dist_row)))) + 2


def render_polyhedra(region: Sequence[slice], points: np.ndarray, dist: np.ndarray, prob: np.ndarray,
                     ids: np.ndarray, rays, *, volume_shape: Sequence[int] | None = None) -> np.ndarray:
    """Render star-convex polyhedra into a region of the volume, with a deterministic overlap rule.

    Parameters
    ----------
    region : sequence of 3 slice
        Global (z, y, x) slices of the output array.
    points : numpy.ndarray, shape (N, 3), integer
        Global centres.
    dist : numpy.ndarray, shape (N, R)
        Ray lengths (voxels, positive).
    prob : numpy.ndarray, shape (N,)
        Probabilities: where polyhedra overlap, the higher probability wins, ties to the smaller ID.
    ids : numpy.ndarray, shape (N,), uint64
        Label of each polyhedron (non-zero).
    rays : stardist.rays3d.Rays_Base
    volume_shape : sequence of 3 int, optional
        Voxels outside the volume are never rendered (no effect on the result inside).

    Returns
    -------
    numpy.ndarray, shape of ``region``, uint64
        0 where no polyhedron covers a voxel.

    Notes
    -----
    Each polyhedron is rendered by ``stardist.geometry.polyhedron_to_label`` into a cube of side
    ``2r+1`` centred on its integer centre (``r`` = ceil(max ray) + 2). The float computation is
    then the same whichever region asks for it, so overlapping blocks agree voxel for voxel.
    """

    points = _check_points(points)
    if points.size and points.dtype.kind not in "iu":
        if not np.array_equal(points, np.round(points)):
            raise DTypeError("polyhedron centres must be integer voxel coordinates")
    points = points.astype(np.int64)
    dist = np.asarray(dist, np.float32)
    prob = np.asarray(prob, np.float64)
    ids = np.asarray(ids, np.uint64)
    start = np.array([s.start for s in region], np.int64)
    stop = np.array([s.stop for s in region], np.int64)
    out_shape = tuple(int(v) for v in stop - start)
    out = np.zeros(out_shape, np.uint64)
    best = np.full(out_shape, -np.inf)
    if len(points) == 0:
        return out
    # the winner test below (higher prob, then smaller id) makes the paint order irrelevant
    with _one_omp_thread():
        _paint(out, best, start, stop, points, dist, prob, ids, rays, volume_shape)
    return out


def _paint(out, best, start, stop, points, dist, prob, ids, rays, volume_shape) -> None:
    from stardist.geometry import polyhedron_to_label

    for i in np.argsort(ids, kind="stable"):
        r = _canonical_radius(dist[i])
        lo = points[i] - r
        hi = points[i] + r + 1
        a = np.maximum(lo, start)
        b = np.minimum(hi, stop)
        if volume_shape is not None:
            a = np.maximum(a, 0)
            b = np.minimum(b, np.asarray(volume_shape, np.int64))
        if (a >= b).any():
            continue
        cube = polyhedron_to_label(dist[i:i + 1], np.full((1, 3), r, np.float32), rays, (2 * r + 1,) * 3,
                                   verbose=False) > 0
        sub = cube[tuple(slice(int(x - o0), int(y - o0)) for x, y, o0 in zip(a, b, lo, strict=True))]
        dst = tuple(slice(int(x - s), int(y - s)) for x, y, s in zip(a, b, start, strict=True))
        o = out[dst]
        pb = best[dst]
        win = sub & ((prob[i] > pb) | ((prob[i] == pb) & (ids[i] < o)))
        o[win] = ids[i]
        pb[win] = prob[i]


def boxes_containing_points(boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """For each inclusive box, whether at least one point lies inside it (spatial index, not N×M).

    Parameters
    ----------
    boxes : numpy.ndarray, shape (M, 6)
        ``(z0, y0, x0, z1, y1, x1)``, inclusive, any real dtype.
    points : numpy.ndarray, shape (N, 3)
        Point coordinates.

    Returns
    -------
    numpy.ndarray, shape (M,), bool
    """
    from scipy.spatial import cKDTree

    boxes = np.asarray(boxes, np.float64).reshape(-1, 6)
    points = _check_points(points).astype(np.float64)
    hit = np.zeros(len(boxes), bool)
    if len(boxes) == 0 or len(points) == 0:
        return hit
    tree = cKDTree(points)
    centre = (boxes[:, :3] + boxes[:, 3:]) / 2
    half = (boxes[:, 3:] - boxes[:, :3]) / 2
    # Chebyshev ball of radius max half-width covers the box; exact check on the few returned.
    radius = half.max(axis=1) + 1e-9
    lists = tree.query_ball_point(centre, radius, p=np.inf)
    lens = np.fromiter((len(c) for c in lists), np.int64, count=len(lists))
    flat = np.fromiter(itertools.chain.from_iterable(lists), np.int64, count=int(lens.sum()))
    owner = np.repeat(np.arange(len(boxes)), lens)
    p = points[flat]
    inside = (p >= boxes[owner, :3]).all(axis=1) & (p <= boxes[owner, 3:]).all(axis=1)
    hit[np.unique(owner[inside])] = True
    return hit


points_in_any_box = boxes_containing_points


def pool_seeds(star_points: np.ndarray, comp_boxes: np.ndarray) -> np.ndarray:
    """VollSeg seed pooling: which U-Net components contribute their centroid as a seed.

    A component whose (inclusive) bounding box holds no StarDist centre adds its centroid.

    Parameters
    ----------
    star_points : numpy.ndarray, shape (N, 3)
        StarDist object centres kept by NMS.
    comp_boxes : numpy.ndarray, shape (M, 6)
        Inclusive bounding boxes of the U-Net mask's connected components.

    Returns
    -------
    numpy.ndarray, shape (M,), bool
        True for the components to pool.
    """
    return ~boxes_containing_points(comp_boxes, star_points)


def select_refinement(star_boxes: np.ndarray, comp_centroids: np.ndarray) -> np.ndarray:
    """Later VollSeg refinement: StarDist cells whose box holds no U-Net centroid join the mask.

    Returns
    -------
    numpy.ndarray, shape (N,), bool
        True for the StarDist polyhedra to add to the U-Net mask.
    """
    return ~boxes_containing_points(star_boxes, comp_centroids)


def ball_offsets(radius: int) -> np.ndarray:
    """Integer offsets of ``skimage.morphology.ball(radius)`` (``dz²+dy²+dx² <= r²``), shape (B, 3)."""
    r = int(radius)
    if r < 0:
        raise ShapeError(f"ball radius must be >= 0, got {radius}")
    g = np.arange(-r, r + 1)
    dz, dy, dx = np.meshgrid(g, g, g, indexing="ij")
    keep = dz ** 2 + dy ** 2 + dx ** 2 <= r * r
    return np.stack([dz[keep], dy[keep], dx[keep]], axis=1).astype(np.int64)


def dilate_seeds(region: Sequence[slice], points: np.ndarray, ids: np.ndarray, radius: int) -> np.ndarray:
    """Marker image: each seed painted as a ball of ``radius``; where balls overlap the larger ID wins.

    Equal to grey dilation (``scipy.ndimage.grey_dilation`` with a ball footprint) of the seed
    point image over the whole volume, restricted to ``region``. Seeds outside ``region`` whose
    ball reaches into it contribute too; pass every seed within ``radius`` of the region.

    Parameters
    ----------
    region : sequence of 3 slice
        Global slices of the output.
    points : numpy.ndarray, shape (N, 3), integer
        Global seed voxels.
    ids : numpy.ndarray, shape (N,), uint64
        Marker value of each seed (non-zero, distinct).
    radius : int
        Ball radius in voxels.

    Returns
    -------
    numpy.ndarray, shape of region, uint64
    """
    points = _check_points(points).astype(np.int64)
    ids = np.asarray(ids, np.uint64)
    start = np.array([s.start for s in region], np.int64)
    shape = np.array([s.stop - s.start for s in region], np.int64)
    out = np.zeros(tuple(int(s) for s in shape), np.uint64)
    if len(points) == 0:
        return out
    off = ball_offsets(radius)
    vox = (points[:, None, :] - start + off[None, :, :]).reshape(-1, 3)
    val = np.repeat(ids, len(off))
    keep = ((vox >= 0) & (vox < shape)).all(axis=1)
    vox, val = vox[keep], val[keep]
    if len(vox) == 0:
        return out
    lin = np.ravel_multi_index(tuple(vox.T), tuple(int(s) for s in shape))
    # largest id per voxel: sort by (lin, id), keep the last of each run
    order = np.lexsort((val, lin))
    lin, val = lin[order], val[order]
    last = np.r_[lin[1:] != lin[:-1], True]
    out.ravel()[lin[last]] = val[last]
    return out
