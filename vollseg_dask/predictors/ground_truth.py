"""A predictor that derives StarDist and U-Net outputs from ground-truth labels, for tests and benchmarks.

It is *not* a replacement for the networks; it exercises the segmentation engine with maps whose
ideal answer is known, plus controlled, seeded perturbations:

* **StarDist probability** - per object, the Euclidean distance transform (:func:`object_edt`)
  normalised by its maximum (1 at the object's centre, falling towards its border), 0 on background;
* **StarDist candidates** - one per object, at the object's EDT maximum (first in raster order),
  with its exact ray lengths (:func:`vollseg_dask.kernels.seeds.ray_distances`, equal to StarDist's
  ``star_dist3D``);
* **U-Net foreground** - 1 inside objects except a thin boundary between *touching* objects, which
  is background: what a U-Net trained on membrane data predicts. For each 26-adjacent voxel pair
  with two different non-zero labels, the raster-earlier voxel is background, which separates the
  objects under 26-connectivity;
* **distance map** - the unnormalised EDT.

Perturbations, all pure functions of (seed, t, label or global coordinates) so that every tiling
gives the same maps:

* ``drop_fraction`` - objects StarDist "misses": no candidate and zero probability;
* ``merge_fraction`` - touching object pairs whose boundary the U-Net "misses" (merged components);
* ``false_rate`` - false candidates: each cell of a fixed global 16³ lattice holds one with this
  probability, at a hashed position inside tissue, with a small sphere as its shape and a
  probability below every true one;
* ``noise`` - additive Gaussian noise (std) on the probability and foreground maps.

The predictor reads the labels over core + :attr:`halo`; the halo must exceed the largest object
(every object reaching the core must lie inside the read region, which is checked).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from vollseg_dask.errors import ConfigError, DTypeError, InvalidDataError
from vollseg_dask.predictors.base import BlockPrediction, Predictor

__all__ = [
    "GroundTruthPredictor",
    "ground_truth_maps",
    "hash_uniform",
    "membrane_boundary",
    "object_edt",
    "unet_foreground",
    "FALSE_CELL",
]

#: side of the global lattice cells that may hold a false candidate
FALSE_CELL = 16

_STREAM_DROP = 1
_STREAM_MERGE = 2
_STREAM_NOISE_PROB = 3
_STREAM_NOISE_FG = 4
_STREAM_FALSE = 5


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_uniform(seed: int, *keys: Any) -> np.ndarray:
    """Deterministic uniforms in [0, 1) from a seed and integer keys (arrays broadcast).

    A counter-based generator: the value for given keys never depends on which other values are
    drawn, so blocks draw their share of a global random field independently.
    """
    h = _mix(np.asarray([seed], dtype=np.uint64))
    for k in keys:
        h = _mix(h ^ np.asarray(k).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _gaussian(seed: int, stream: int, t: int, lin: np.ndarray) -> np.ndarray:
    u1 = hash_uniform(seed, stream, t, lin, 1)
    u2 = hash_uniform(seed, stream, t, lin, 2)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def _linear_index(shape_core: Sequence[int], origin: Sequence[int], volume_shape: Sequence[int]) -> np.ndarray:
    Z, Y, X = (int(v) for v in volume_shape)
    z = np.arange(origin[0], origin[0] + shape_core[0], dtype=np.int64)[:, None, None]
    y = np.arange(origin[1], origin[1] + shape_core[1], dtype=np.int64)[None, :, None]
    x = np.arange(origin[2], origin[2] + shape_core[2], dtype=np.int64)[None, None, :]
    return (z * Y + y) * X + x


def membrane_boundary(labels: np.ndarray, *, seed: int = 0, t: int = 0, merge_fraction: float = 0.0,
                      connectivity: int = 26) -> np.ndarray:
    """Voxels a membrane U-Net would call background: the raster-earlier voxel of every touching pair.

    Parameters
    ----------
    labels : numpy.ndarray, shape (z, y, x), integer
        Ground-truth labels (0 = background).
    seed, t : int
        Perturbation seed and time index.
    merge_fraction : float
        Fraction of touching label pairs left unseparated (by a hash of the pair).
    connectivity : {6, 26}
        Touching pairs considered: face neighbours only (a one-voxel wall that separates objects
        under 6-connectivity) or all 26 neighbours (separates them under 26-connectivity too, at the
        price of a thicker wall where interfaces are oblique).

    Returns
    -------
    numpy.ndarray, shape (z, y, x), bool
        True on boundary voxels. The last plane along each axis has no forward neighbours inside the
        array, so compute on a region grown by one voxel and crop.
    """
    from vollseg_dask.kernels.components import forward_offsets

    labels = np.asarray(labels)
    out = np.zeros(labels.shape, bool)
    for d in forward_offsets(connectivity):
        src = tuple(slice(max(0, -v), s - max(0, v)) for v, s in zip(d, labels.shape, strict=True))
        dst = tuple(slice(max(0, v), s - max(0, -v)) for v, s in zip(d, labels.shape, strict=True))
        a = labels[src]
        b = labels[dst]
        touch = (a != 0) & (b != 0) & (a != b)
        if merge_fraction > 0 and touch.any():
            lo = np.minimum(a[touch], b[touch]).astype(np.uint64)
            hi = np.maximum(a[touch], b[touch]).astype(np.uint64)
            merged = hash_uniform(seed, _STREAM_MERGE, t, lo, hi) < merge_fraction
            idx = np.flatnonzero(touch.ravel())
            touch.ravel()[idx[merged]] = False
        out[src] |= touch
    return out


def unet_foreground(labels: np.ndarray, *, seed: int = 0, t: int = 0, merge_fraction: float = 0.0,
                    connectivity: int = 26) -> np.ndarray:
    """Ideal membrane U-Net mask: objects minus the boundaries between touching objects.

    For a merged pair (``merge_fraction``, hashed per pair) the boundary is kept as foreground and
    a background gap between the two objects (a membrane of the ground truth) is filled, so the two
    objects form one component, as when a U-Net misses a faint membrane.

    Parameters
    ----------
    labels : numpy.ndarray, shape (z, y, x), integer
    seed, t : int
    merge_fraction : float
    connectivity : {6, 26}
        Of the boundary (see :func:`membrane_boundary`).

    Returns
    -------
    numpy.ndarray, shape (z, y, x), bool
        Valid one voxel inside the array border (compute on a grown region and crop).
    """
    labels = np.asarray(labels)
    fg = (labels != 0) & ~membrane_boundary(labels, seed=seed, t=t, merge_fraction=merge_fraction,
                                            connectivity=connectivity)
    if merge_fraction > 0:
        big = np.iinfo(labels.dtype).max if labels.dtype.kind in "iu" else np.inf
        lo = ndimage.minimum_filter(np.where(labels == 0, big, labels), size=3, mode="nearest")
        hi = ndimage.maximum_filter(labels, size=3, mode="nearest")
        gap = (labels == 0) & (hi != 0) & (lo != big) & (lo != hi)
        if gap.any():
            a = lo[gap].astype(np.uint64)
            b = hi[gap].astype(np.uint64)
            bridged = hash_uniform(seed, _STREAM_MERGE, t, a, b) < merge_fraction
            idx = np.flatnonzero(gap.ravel())
            fg.ravel()[idx[bridged]] = True
    return fg


def object_edt(labels: np.ndarray, volume_faces: Sequence[tuple[bool, bool]] | None = None) -> np.ndarray:
    """Euclidean distance of every object voxel to the nearest voxel outside the objects' interiors.

    The "outside" is the background, the voxels of an object that face (6-adjacent) a different
    object, and, on faces of ``labels`` that are the volume's border (``volume_faces``), everything
    beyond the array. One EDT for all objects (no per-object loop); inside each object it falls to
    0-1 at the object's surface and peaks at its centre.

    Parameters
    ----------
    labels : numpy.ndarray, shape (z, y, x), integer
    volume_faces : sequence of 3 (bool, bool), optional
        Per axis, whether the low/high face of the array is the volume border (default: all).

    Returns
    -------
    numpy.ndarray, shape (z, y, x), float32
        0 on background. Exact for every object that lies inside the array away from faces that
        are not volume borders.
    """
    labels = np.asarray(labels)
    faces = volume_faces if volume_faces is not None else [(True, True)] * 3
    pad = [(int(lo), int(hi)) for lo, hi in faces]
    lp = np.pad(labels, pad)
    inner = lp != 0
    for ax in range(3):
        a = np.moveaxis(lp, ax, 0)
        m = np.moveaxis(inner, ax, 0)
        touch = (a[:-1] != a[1:]) & (a[:-1] != 0) & (a[1:] != 0)
        m[:-1] &= ~touch
        m[1:] &= ~touch
    d = ndimage.distance_transform_edt(inner).astype(np.float32)
    d[lp == 0] = 0
    crop = tuple(slice(lo, d.shape[ax] - hi) for ax, (lo, hi) in enumerate(pad))
    return d[crop]


def ground_truth_maps(labels: np.ndarray, *, read: Sequence[slice], core: Sequence[slice],
                      volume_shape: Sequence[int], t: int, rays, seed: int = 0, drop_fraction: float = 0.0,
                      merge_fraction: float = 0.0, false_rate: float = 0.0, false_radius: float = 3.0,
                      noise: float = 0.0, prob_threshold: float = 0.5, boundary: int = 26) -> BlockPrediction:
    """Predictor outputs for one block's core from ground-truth labels over its read region.

    Parameters
    ----------
    labels : numpy.ndarray, shape (z, y, x), integer
        Ground truth over ``read``.
    read, core : sequence of 3 slice
        Global slices; every object reaching the core must lie inside ``read`` away from its cut
        faces (else :class:`InvalidDataError` names the object and the halo it needs).
    volume_shape : sequence of 3 int
        Shape of one time point.
    t : int
        Time index.
    rays : stardist.rays3d.Rays_Base
        Rays of the candidates' distances.
    seed, drop_fraction, merge_fraction, false_rate, false_radius, noise
        Perturbations (see module docstring).
    prob_threshold : float
        Candidates below it are not returned.
    boundary : {6, 26}
        Connectivity under which the U-Net's walls separate touching objects (pair it with
        ``SegmentationConfig.connectivity``).

    Returns
    -------
    BlockPrediction
    """
    from vollseg_dask.kernels.seeds import ray_distances

    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise DTypeError(f"ground-truth labels must be integers, got {labels.dtype}")
    from vollseg_dask.checks import check_labels_nonnegative

    check_labels_nonnegative(labels, "ground-truth labels")
    read = tuple(read)
    core = tuple(core)
    cir = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, read, strict=True))
    core_shape = tuple(c.stop - c.start for c in core)
    vol = tuple(int(v) for v in volume_shape)
    R = len(rays)

    core_ids = np.unique(labels[cir])
    core_ids = core_ids[core_ids != 0]
    # objects reaching the core must be complete (not touching a cut face of the read region)
    for ax in range(3):
        for cut, idx in ((read[ax].start > 0, 0), (read[ax].stop < vol[ax], labels.shape[ax] - 1)):
            if not cut:
                continue
            bad = np.intersect1d(np.unique(np.take(labels, idx, axis=ax)), core_ids)
            if bad.size:
                raise InvalidDataError(
                    f"ground-truth object {int(bad[0])} reaches block core {[(c.start, c.stop) for c in core]} but "
                    f"is cut by the read region {[(r.start, r.stop) for r in read]}; the predictor halo must "
                    "exceed the largest object"
                )
    faces = [(read[ax].start == 0, read[ax].stop == vol[ax]) for ax in range(3)]
    edt_read = object_edt(labels, faces)
    edt = edt_read[cir]
    drop = hash_uniform(seed, _STREAM_DROP, t, core_ids.astype(np.uint64)) < drop_fraction \
        if drop_fraction > 0 else np.zeros(core_ids.size, bool)
    core_lo = np.array([c.start for c in core])
    read_lo = np.array([r.start for r in read])
    prob = np.zeros(core_shape, np.float32)
    pts = np.zeros((0, 3), np.int64)
    if core_ids.size:
        # per-object maximum and its first voxel in raster order (over the read region: whole objects)
        dmax = np.asarray(ndimage.maximum(edt_read, labels, core_ids), np.float64)
        inobj = np.isin(labels, core_ids)
        which = np.searchsorted(core_ids, np.where(inobj, labels, core_ids[0]))
        at_max = inobj & (edt_read == dmax[which].astype(np.float32))
        lin = np.arange(labels.size, dtype=np.int64).reshape(labels.shape)
        first = np.asarray(ndimage.minimum(lin, np.where(at_max, labels, 0), core_ids), np.int64)
        centres = np.stack(np.unravel_index(first, labels.shape), axis=1) + read_lo
        inobj_c = inobj[cir]
        keep_obj = ~drop
        kept_vox = inobj_c & keep_obj[which[cir]]
        # an object without interior voxels (a one-slice plate) has dmax 0: it is all "centre", prob 1
        den = dmax[which[cir]][kept_vox]
        num = edt[kept_vox].astype(np.float64)
        prob[kept_vox] = np.divide(num, den, out=np.ones_like(num), where=den > 0).astype(np.float32)
        own = ((centres >= core_lo) & (centres < core_lo + np.array(core_shape))).all(axis=1)
        pts = centres[own & keep_obj]
    fg = unet_foreground(labels, seed=seed, t=t, merge_fraction=merge_fraction,
                         connectivity=boundary)[cir].astype(np.float32)

    lin = _linear_index(core_shape, core_lo, vol)
    if noise > 0:
        prob = np.clip(prob + noise * _gaussian(seed, _STREAM_NOISE_PROB, t, lin), 0, 1).astype(np.float32)
        fg = np.clip(fg + noise * _gaussian(seed, _STREAM_NOISE_FG, t, lin), 0, 1).astype(np.float32)

    if len(pts):
        cprob = prob[tuple((pts - core_lo).T)].astype(np.float32)
        dist = ray_distances(labels, pts - read_lo, rays)
    else:
        cprob = np.zeros(0, np.float32)
        dist = np.zeros((0, R), np.float32)

    if false_rate > 0:
        fp, fprob = _false_candidates(labels, read, core, vol, t, seed, false_rate, prob_threshold)
        if len(fp):
            pts = np.concatenate([pts, fp])
            cprob = np.concatenate([cprob, fprob])
            dist = np.concatenate([dist, np.full((len(fp), R), false_radius, np.float32)])
    keep = cprob >= prob_threshold
    return BlockPrediction(prob=prob, foreground=fg, points=pts[keep], cand_prob=cprob[keep], dist=dist[keep],
                           distance=edt.astype(np.float32), info={"objects": int(core_ids.size),
                                                                   "dropped": int(drop.sum())})


def _false_candidates(labels: np.ndarray, read: Sequence[slice], core: Sequence[slice], vol: Sequence[int], t: int,
                      seed: int, rate: float, prob_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    c0 = np.array([c.start for c in core]) // FALSE_CELL
    c1 = (np.array([c.stop for c in core]) - 1) // FALSE_CELL
    grids = np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(c0, c1, strict=True)], indexing="ij")
    cells = np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
    n_cells = np.array([math.ceil(v / FALSE_CELL) for v in vol], np.int64)
    cell_lin = (cells[:, 0] * n_cells[1] + cells[:, 1]) * n_cells[2] + cells[:, 2]
    present = hash_uniform(seed, _STREAM_FALSE, t, cell_lin, 0) < rate
    cells, cell_lin = cells[present], cell_lin[present]
    pos = np.stack([np.floor(hash_uniform(seed, _STREAM_FALSE, t, cell_lin, 1 + a) * FALSE_CELL).astype(np.int64)
                    for a in range(3)], axis=1) + cells * FALSE_CELL
    lo = np.array([c.start for c in core])
    hi = np.array([c.stop for c in core])
    inside = ((pos >= lo) & (pos < hi)).all(axis=1)
    pos, cell_lin = pos[inside], cell_lin[inside]
    rlo = np.array([r.start for r in read])
    in_tissue = labels[tuple((pos - rlo).T)] != 0 if len(pos) else np.zeros(0, bool)
    pos, cell_lin = pos[in_tissue], cell_lin[in_tissue]
    # below every true centre (true centres have probability 1 before noise)
    p = prob_threshold + (0.9 - prob_threshold) * hash_uniform(seed, _STREAM_FALSE, t, cell_lin, 9)
    return pos.reshape(-1, 3), np.maximum(p, prob_threshold).astype(np.float32)


class GroundTruthPredictor(Predictor):
    """Predictor reading ground-truth labels from the store (see module docstring).

    Parameters
    ----------
    store : str
        OME-Zarr store holding the labels group.
    labels : str
        Name of the ground-truth labels group (default ``"ground_truth"``).
    halo : int or sequence of 3 int
        Context read around each block; must exceed the largest object extent. ``None``: measured
        in :meth:`prepare` (largest bounding box + 2, scanned slab by slab).
    n_rays : int
        Rays of the candidates.
    seed, drop_fraction, merge_fraction, false_rate, false_radius, noise
        Perturbations.
    boundary : {6, 26}
        Connectivity under which the U-Net walls separate touching objects (26, the default,
        matches the default component connectivity; 6 gives thinner walls on anisotropic data).
    """

    needs_image = False

    def __init__(self, store: str, labels: str = "ground_truth", *, halo: int | Sequence[int] | None = None,
                 n_rays: int = 96, seed: int = 0, drop_fraction: float = 0.0, merge_fraction: float = 0.0,
                 false_rate: float = 0.0, false_radius: float = 3.0, noise: float = 0.0,
                 boundary: int = 26) -> None:
        for name, v in (("drop_fraction", drop_fraction), ("merge_fraction", merge_fraction), ("false_rate", false_rate)):
            if not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {v}")
        if boundary not in (6, 26):
            raise ConfigError(f"boundary connectivity must be 6 or 26, got {boundary!r}")
        if noise < 0 or false_radius <= 0:
            raise ConfigError(f"noise must be >= 0 and false_radius > 0 (got {noise}, {false_radius})")
        self.store = str(store)
        self.labels_name = labels
        self._halo = None if halo is None else (tuple(int(h) for h in halo) if not isinstance(halo, int) else (halo,) * 3)
        self._n_rays = int(n_rays)
        self.seed = int(seed)
        self.drop_fraction = float(drop_fraction)
        self.merge_fraction = float(merge_fraction)
        self.false_rate = float(false_rate)
        self.false_radius = float(false_radius)
        self.noise = float(noise)
        self.boundary = int(boundary)
        self._rays = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_rays"] = None
        return state

    @property
    def halo(self) -> tuple[int, int, int]:
        if self._halo is None:
            raise ConfigError("GroundTruthPredictor halo is unknown: pass halo= or call prepare() first")
        return self._halo  # type: ignore[return-value]

    @property
    def n_rays(self) -> int:
        return self._n_rays

    @property
    def rays(self):
        if self._rays is None:
            self._rays = super().rays
        return self._rays

    def _open(self):
        from vollseg_dask.io.omezarr import open_labels

        return open_labels(self.store, self.labels_name)

    def prepare(self, store: str, *, n_t: int, volume_shape: tuple[int, int, int]) -> None:
        lab = self._open()
        spatial = tuple(lab.shape[lab.axes.index(a)] for a in "zyx")
        if spatial != tuple(volume_shape):
            raise InvalidDataError(f"ground truth {self.labels_name!r} has spatial shape {spatial}, image {volume_shape}")
        if self._halo is None:
            self._halo = (self._measure_extent(lab) + 2,) * 3

    def _measure_extent(self, lab) -> int:
        """Largest object extent along any axis, scanned in z-slabs (memory: one slab)."""
        arr = lab.zarr_array()
        axes = lab.axes
        n_t = lab.shape[axes.index("t")] if "t" in axes else 1
        Z = lab.shape[axes.index("z")]
        slab = max(1, int(lab.data.chunksize[axes.index("z")]))
        largest = 1
        for t in range(n_t):
            lo_hi: dict[int, list[int]] = {}
            for z0 in range(0, Z, slab):
                block = np.asarray(arr[_index(axes, t, slice(z0, min(Z, z0 + slab)))])
                u, inv = np.unique(block, return_inverse=True)
                boxes = ndimage.find_objects(inv.reshape(block.shape) + 1)
                for j, lbl in enumerate(u):
                    if lbl == 0 or boxes[j] is None:
                        continue
                    b = boxes[j]
                    cur = [b[0].start + z0, b[0].stop + z0, b[1].start, b[1].stop, b[2].start, b[2].stop]
                    prev = lo_hi.get(int(lbl))
                    if prev is not None:
                        cur = [min(prev[0], cur[0]), max(prev[1], cur[1]), min(prev[2], cur[2]),
                               max(prev[3], cur[3]), min(prev[4], cur[4]), max(prev[5], cur[5])]
                    lo_hi[int(lbl)] = cur
            for v in lo_hi.values():
                largest = max(largest, v[1] - v[0], v[3] - v[2], v[5] - v[4])
        return largest

    def predict_block(self, image: np.ndarray | None, *, t: int, read: tuple[slice, slice, slice],
                      core: tuple[slice, slice, slice], volume_shape: tuple[int, int, int],
                      prob_threshold: float) -> BlockPrediction:
        lab = self._open()
        labels = np.asarray(lab.zarr_array()[_index(lab.axes, t, *read)])
        return ground_truth_maps(labels, read=read, core=core, volume_shape=volume_shape, t=t, rays=self.rays,
                                 seed=self.seed, drop_fraction=self.drop_fraction,
                                 merge_fraction=self.merge_fraction, false_rate=self.false_rate,
                                 false_radius=self.false_radius, noise=self.noise, prob_threshold=prob_threshold,
                                 boundary=self.boundary)

    def describe(self) -> dict[str, Any]:
        d = super().describe() if self._halo is not None else {"class": type(self).__name__, "n_rays": self.n_rays}
        d.update(labels=self.labels_name, seed=self.seed, drop_fraction=self.drop_fraction,
                 merge_fraction=self.merge_fraction, false_rate=self.false_rate, false_radius=self.false_radius,
                 noise=self.noise, boundary=self.boundary)
        return d


def _index(axes: str, t: int, *zyx: slice) -> tuple:
    """Index tuple for a (t, [c], z, y, x)-like array: time ``t``, channel 0, spatial slices."""
    idx: list[Any] = []
    spatial = iter(zyx if len(zyx) == 3 else (zyx[0], slice(None), slice(None)))
    for a in axes:
        if a == "t":
            idx.append(t)
        elif a == "c":
            idx.append(0)
        else:
            idx.append(next(spatial))
    return tuple(idx)
