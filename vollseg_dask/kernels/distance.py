"""Signed Euclidean distance to a tissue boundary, with anisotropic voxels.

Definition (used everywhere in vollseg-dask)
--------------------------------------------
For a binary tissue mask ``M`` on a voxel grid with voxel size ``v = (vz, vy, vx)`` µm,
the signed distance of a voxel ``p`` is

- ``+ min |p - q|`` over voxels ``q`` with ``M(q) = 0`` when ``M(p) = 1`` (inside), and
- ``- min |p - q|`` over voxels ``q`` with ``M(q) = 1`` when ``M(p) = 0`` (outside),

with ``|.|`` the Euclidean norm in µm between voxel centres. This is exactly
``scipy.ndimage.distance_transform_edt(mask, sampling=v)`` inside and minus the same on the
complement outside. The array border is *not* a boundary (tissue cut by the field of
view is not tissue edge). A cell is sampled at the voxel nearest to its centroid
(:func:`nearest_voxel`, round half up), so ``inside_tissue`` and the sign of the distance
always agree with the mask at that voxel.

Coarse evaluation with a proven error bound
-------------------------------------------
When a time point's mask is too large for one exact transform, :func:`pool_mask` reduces
it to boxes of ``f = (fz, fy, fx)`` voxels, recording per box whether *all* voxels are
inside and whether *any* is. Let ``c_I`` be the nominal centre of box ``I`` (``I*f +
(f-1)/2``) and ``H = 0.5 * |(f - 1) * v|`` the half-diagonal of a box in µm. For an inside
voxel ``p`` in a fully-inside box ``I``, every background voxel lies in a box that is not
fully inside, and each such box holds a background voxel within ``H`` of its centre, so

``|d(p) - D_all(I)| <= |p - c_I| + H <= 2 H``,

where ``D_all`` is the exact transform of the coarse "all inside" grid with sampling
``f * v`` (symmetrically, with the "any inside" grid, outside). :func:`coarse_distance`
returns ``D`` and this per-point bound. A voxel in a *mixed* box is within ``|p - c_I| +
H`` of a voxel of the other phase; :func:`crop_radius` gives the crop that makes
:func:`signed_distance_at` exact for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vollseg_dask.errors import InvalidDataError, ShapeError

__all__ = [
    "signed_distance",
    "nearest_voxel",
    "signed_distance_at",
    "pool_mask",
    "coarse_distance",
    "crop_radius",
    "box_half_diagonal",
    "auto_tissue_mask",
]


def _voxel(voxel_size: Sequence[float]) -> tuple[float, float, float]:
    try:
        vs = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise ShapeError(f"voxel_size must be 3 positive numbers (z, y, x) in µm, got {voxel_size!r}") from None
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise ShapeError(f"voxel_size must be 3 positive numbers (z, y, x) in µm, got {voxel_size!r}")
    return vs  # type: ignore[return-value]


def _mask3(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ShapeError(f"tissue mask must be 3-D (z, y, x), got shape {m.shape}")
    return m.astype(bool, copy=False)


def _edt(phase: np.ndarray, sampling: Sequence[float]) -> np.ndarray:
    """Distance from every voxel to the nearest ``False`` voxel of ``phase`` (inf if none)."""
    from scipy import ndimage as ndi

    if phase.all():
        return np.full(phase.shape, np.inf)
    return ndi.distance_transform_edt(phase, sampling=sampling)


def signed_distance(mask: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """Exact signed distance of every voxel to the tissue boundary.

    Parameters
    ----------
    mask : ndarray, shape (Z, Y, X)
        Tissue mask (non-zero = tissue).
    voxel_size : sequence of 3 float
        Voxel size ``(z, y, x)`` in µm.

    Returns
    -------
    ndarray of float64, shape (Z, Y, X)
        µm, positive inside, negative outside (see the module docstring);
        ``+inf`` everywhere if the mask is all tissue, ``-inf`` if it holds none.
    """
    m = _mask3(mask)
    vs = _voxel(voxel_size)
    out = _edt(m, vs)
    outside = ~m
    if outside.any():
        out[outside] = -_edt(outside, vs)[outside]
    return out


def nearest_voxel(points: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Index of the voxel nearest to each point (round half up), clipped to the array.

    Parameters
    ----------
    points : ndarray, shape (N, 3)
        Positions ``(z, y, x)`` in voxel units (e.g. centroids).
    shape : sequence of 3 int
        Array shape.

    Returns
    -------
    ndarray of int64, shape (N, 3)
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(p).all():
        raise InvalidDataError("points must be finite to be sampled")
    idx = np.floor(p + 0.5).astype(np.int64)
    return np.clip(idx, 0, np.asarray(shape, dtype=np.int64) - 1)


def signed_distance_at(
    mask: np.ndarray,
    voxel_size: Sequence[float],
    voxels: np.ndarray,
    offset: Sequence[int] = (0, 0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Exact signed distance and inside flag at given voxels of a mask (or of a crop).

    Parameters
    ----------
    mask : ndarray, shape (Z, Y, X)
        Tissue mask, or a crop of it starting at global voxel ``offset``.
    voxel_size : sequence of 3 float
        Voxel size in µm.
    voxels : ndarray of int, shape (N, 3)
        Global voxel indices to sample; all must lie inside the crop.
    offset : sequence of 3 int
        Global index of ``mask[0, 0, 0]``.

    Returns
    -------
    distance : ndarray of float64, shape (N,)
        µm, positive inside. Exact for the whole mask; for a crop, exact whenever the
        nearest voxel of the other phase lies in the crop (guaranteed by
        :func:`crop_radius`).
    inside : ndarray of bool, shape (N,)

    Notes
    -----
    Only the phase-distance transforms needed are computed; memory is about 20 bytes per
    voxel of the crop (scipy's feature transform plus the float64 result).
    """
    m = _mask3(mask)
    vs = _voxel(voxel_size)
    v = np.asarray(voxels, dtype=np.int64).reshape(-1, 3) - np.asarray(offset, dtype=np.int64)
    if len(v) and ((v < 0).any() or (v >= np.asarray(m.shape)).any()):
        raise ShapeError(f"voxels fall outside the mask crop of shape {m.shape} at offset {tuple(offset)}")
    inside = m[v[:, 0], v[:, 1], v[:, 2]] if len(v) else np.zeros(0, bool)
    dist = np.zeros(len(v), np.float64)
    if inside.any():
        d_in = _edt(m, vs)
        dist[inside] = d_in[v[inside, 0], v[inside, 1], v[inside, 2]]
        del d_in
    if (~inside).any():
        d_out = _edt(~m, vs)
        o = ~inside
        dist[o] = -d_out[v[o, 0], v[o, 1], v[o, 2]]
    return dist, inside


def _factors(factors: Sequence[int]) -> tuple[int, int, int]:
    f = tuple(int(x) for x in factors)
    if len(f) != 3 or min(f) < 1:
        raise ShapeError(f"pooling factors must be 3 positive integers (z, y, x), got {factors!r}")
    return f  # type: ignore[return-value]


def pool_mask(mask: np.ndarray, factors: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Box pooling of a mask: does a box hold *any* tissue, is it *all* tissue.

    Parameters
    ----------
    mask : ndarray, shape (Z, Y, X)
        Mask, or a block of it whose origin is a multiple of ``factors``.
    factors : sequence of 3 int
        Box shape ``(fz, fy, fx)`` in voxels. The last box along an axis may be
        smaller (ragged); it is pooled over the voxels it has.

    Returns
    -------
    any_, all_ : ndarray of bool, shape ``ceil(shape / factors)``
    """
    m = _mask3(mask)
    f = _factors(factors)
    cshape = tuple(-(-n // k) for n, k in zip(m.shape, f, strict=True))
    pad = [(0, c * k - n) for c, k, n in zip(cshape, f, m.shape, strict=True)]
    view_shape = (cshape[0], f[0], cshape[1], f[1], cshape[2], f[2])
    # Pad with the neutral element of each reduction so ragged boxes pool only real voxels.
    any_ = np.pad(m, pad, constant_values=False).reshape(view_shape).any(axis=(1, 3, 5))
    all_ = np.pad(m, pad, constant_values=True).reshape(view_shape).all(axis=(1, 3, 5))
    return any_, all_


def box_half_diagonal(factors: Sequence[int], voxel_size: Sequence[float]) -> float:
    """``H = 0.5 * |(f - 1) * v|``: half the diagonal (µm) between the extreme voxel centres of a box."""
    f = np.asarray(_factors(factors), dtype=np.float64)
    v = np.asarray(_voxel(voxel_size))
    return float(0.5 * np.linalg.norm((f - 1.0) * v))


def coarse_distance(
    any_: np.ndarray,
    all_: np.ndarray,
    factors: Sequence[int],
    voxel_size: Sequence[float],
    voxels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Signed distance at fine voxels from a pooled mask, with a per-voxel error bound.

    Parameters
    ----------
    any_, all_ : ndarray of bool, shape (Zc, Yc, Xc)
        Output of :func:`pool_mask` over the whole time point.
    factors : sequence of 3 int
        Pooling box shape in voxels.
    voxel_size : sequence of 3 float
        *Fine* voxel size in µm.
    voxels : ndarray of int, shape (N, 3)
        Fine voxel indices to evaluate.

    Returns
    -------
    distance : ndarray of float64, shape (N,)
        Estimate in µm (positive inside); NaN where the voxel's box is mixed.
    bound : ndarray of float64, shape (N,)
        ``|true - estimate| <= bound`` (``|p - c_I| + H``, at most ``2 H``); for mixed
        boxes, the largest possible ``|true|`` (use :func:`crop_radius`).
    inside : ndarray of bool, shape (N,)
        Tissue flag; only meaningful where ``mixed`` is False.
    mixed : ndarray of bool, shape (N,)
        Box holds both tissue and background: refine with an exact crop.
    """
    f = np.asarray(_factors(factors), dtype=np.int64)
    vs = np.asarray(_voxel(voxel_size))
    if any_.shape != all_.shape or any_.ndim != 3:
        raise ShapeError(f"any_/all_ pooled masks must be equal 3-D shapes, got {any_.shape}, {all_.shape}")
    p = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
    box = p // f
    if len(p) and ((box < 0).any() or (box >= np.asarray(any_.shape)).any()):
        raise ShapeError(f"voxels fall outside the pooled grid {any_.shape} x factors {tuple(f)}")
    centre = box * f + (f - 1) / 2.0
    delta = np.linalg.norm((p - centre) * vs, axis=1)
    half = box_half_diagonal(f, vs)
    bi = tuple(box.T)
    a, b = any_[bi], all_[bi]
    inside = b
    mixed = a & ~b
    dist = np.full(len(p), np.nan)
    csamp = f * vs
    if inside.any():
        d_all = _edt(all_, csamp)
        dist[inside] = d_all[bi][inside]
    outside = ~a
    if outside.any():
        d_any = _edt(~any_, csamp)
        dist[outside] = -d_any[bi][outside]
    bound = delta + half
    return dist, bound, inside, mixed


def crop_radius(bound_um: float, voxel_size: Sequence[float]) -> np.ndarray:
    """Half-widths (voxels, per axis) of a crop centred on ``p`` holding every voxel within ``bound_um``.

    If the nearest voxel of the other phase is known to be at most ``bound_um`` from
    ``p``, :func:`signed_distance_at` on this crop is exact at ``p``.
    """
    vs = np.asarray(_voxel(voxel_size))
    if not np.isfinite(bound_um) or bound_um < 0:
        raise InvalidDataError(f"crop bound must be a finite non-negative distance, got {bound_um}")
    return np.ceil(bound_um / vs - 1e-9).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Automatic tissue mask
# ----------------------------------------------------------------------------------------------


def auto_tissue_mask(
    volume: np.ndarray,
    voxel_size: Sequence[float],
    sigma_um: float | Sequence[float] = 2.0,
    threshold: float | None = None,
    *,
    n_bins: int = 256,
    fill_holes: bool = True,
    keep_largest: bool = True,
) -> tuple[np.ndarray, float]:
    """Tissue mask of one time point: Gaussian smoothing, threshold, hole filling, largest component.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X)
        Image of one time point and channel (finite values).
    voxel_size : sequence of 3 float
        Voxel size ``(z, y, x)`` in µm; converts ``sigma_um`` to voxels per axis.
    sigma_um : float or sequence of 3 float
        Gaussian standard deviation in µm (0 = no smoothing).
    threshold : float, optional
        Tissue is ``smoothed > threshold``. Default: Otsu's threshold of the histogram of
        the whole smoothed volume (``n_bins`` equal bins, ``skimage.filters.threshold_otsu``).
    n_bins : int
        Histogram bins for Otsu.
    fill_holes : bool
        Fill background cavities not connected to the array border (``binary_fill_holes``,
        6-connected background).
    keep_largest : bool
        Keep only the largest 26-connected tissue component (ties: lowest label in scan order).

    Returns
    -------
    mask : ndarray of bool, shape (Z, Y, X)
    threshold : float
        The threshold used (image units).

    Raises
    ------
    InvalidDataError
        Non-finite values, or a constant volume with no threshold given.
    """
    from scipy import ndimage as ndi

    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ShapeError(f"tissue mask volume must be 3-D (z, y, x), got shape {vol.shape}")
    vs = np.asarray(_voxel(voxel_size))
    sig = np.broadcast_to(np.asarray(sigma_um, dtype=np.float64), (3,))
    if (sig < 0).any() or not np.isfinite(sig).all():
        raise ShapeError(f"sigma_um must be finite and >= 0, got {sigma_um!r}")
    work = vol.astype(np.float64)
    if not np.isfinite(work).all():
        raise InvalidDataError("tissue mask input holds NaN or infinite values")
    if (sig > 0).any():
        work = ndi.gaussian_filter(work, sigma=sig / vs, mode="nearest")
    if threshold is None:
        from skimage.filters import threshold_otsu

        if work.min() == work.max():
            raise InvalidDataError(
                f"cannot choose an Otsu threshold: the smoothed volume is constant ({work.min()}); give a threshold"
            )
        thr = float(threshold_otsu(work, nbins=int(n_bins)))
    else:
        thr = float(threshold)
    mask = work > thr
    del work
    if fill_holes and mask.any():
        mask = ndi.binary_fill_holes(mask)
    if keep_largest and mask.any():
        lab, n = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            mask = lab == int(np.argmax(sizes))
    return mask, thr
