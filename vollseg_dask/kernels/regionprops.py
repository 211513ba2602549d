"""Per-cell attributes from exact, decomposable per-block partial aggregates.

A labels volume too large for memory is measured block by block:

1. :func:`block_partials` turns one block (labels and, optionally, intensities) into a
   small table with one row per label present in the block: voxel count, sums of the
   global voxel coordinates and of their pairwise products (raw second moments),
   bounding box, and per channel the intensity sum, sum of squares, minimum and maximum.
2. :func:`reduce_partials` merges any number of such tables by label. Counts, coordinate
   moments and integer intensity sums are ``int64`` and merged by integer addition, so the
   merge is *exact* and independent of block shape and order; minima and maxima are exact
   too. Floating intensity sums (float images, or integers wider than 16 bits) are merged
   in ``float64`` in a fixed order (by label, then input order), so they are deterministic
   for a given block grid and differ across grids only by rounding (~1e-16 relative).
3. :func:`finalize` turns the merged table into cell attributes (centroid, volume,
   bounding box, extents, equivalent diameter, principal axis lengths, intensity mean /
   total / min / max / std) using the anisotropic voxel size.

Conventions (these match ``skimage.measure.regionprops`` with ``spacing``):

- Coordinates are voxel indices ``(z, y, x)``; a voxel is a point at its index (no
  sub-voxel extent is added to the second moments).
- Bounding boxes are half-open: ``bbox_z1`` is one past the last voxel.
- Label 0 is background and never reported.
- The covariance uses the population normalisation (divide by the voxel count); principal
  axis lengths are those of the solid ellipsoid with the same second moments,
  ``L_i = sqrt(20 * lambda_i)`` with ``lambda_i`` the covariance eigenvalues in µm²
  (skimage's ``axis_major_length`` / ``axis_minor_length``).
- Intensity standard deviation is the population one (``ddof=0``, as ``np.std``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from vollseg_dask.errors import DTypeError, InvalidDataError, ShapeError

__all__ = [
    "MOMENT_COLUMNS",
    "block_partials",
    "reduce_partials",
    "finalize",
    "partial_columns",
    "surface_area",
]

#: Integer columns of a partial table that merge by addition.
MOMENT_COLUMNS: tuple[str, ...] = ("n", "sz", "sy", "sx", "szz", "syy", "sxx", "szy", "szx", "syx")
_BBOX_MIN = ("z0", "y0", "x0")
_BBOX_MAX = ("z1", "y1", "x1")

# Lookup-table compaction (bincount over raw label values) is used while the largest label
# is at most this many times the block size; beyond, labels are compacted by sorting.
_LUT_FACTOR = 4
# Voxels per internal slab: bounds the temporaries (a few int64 arrays of this length).
_SLAB_VOXELS = 1 << 20


def partial_columns(n_channels: int) -> list[str]:
    """Column names of a partial table for ``n_channels`` intensity channels, in order."""
    cols = ["label", *MOMENT_COLUMNS, *_BBOX_MIN, *_BBOX_MAX]
    for c in range(n_channels):
        cols += [f"sum_c{c}", f"sumsq_c{c}", f"min_c{c}", f"max_c{c}"]
    return cols


def _exact_int_intensity(dtype: np.dtype) -> bool:
    # Squares of <=16-bit integers fit int64 with room for 2**31 voxels: exact sums.
    return dtype.kind in "biu" and dtype.itemsize <= 2


def _check_labels(labels: np.ndarray) -> None:
    if labels.ndim != 3:
        raise ShapeError(f"labels block must be 3-D (z, y, x), got shape {labels.shape}")
    if labels.dtype.kind not in "ui":
        raise DTypeError(f"labels must have an integer dtype, got {labels.dtype}")


def _as_channels(intensity: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if intensity is None:
        return None
    arr = np.asarray(intensity)
    if arr.ndim == 3:
        arr = arr[np.newaxis]
    if arr.ndim != 4 or arr.shape[1:] != shape:
        raise ShapeError(
            f"intensity block must be (z, y, x) or (c, z, y, x) matching labels {shape}, got {arr.shape}"
        )
    if arr.dtype.kind not in "biuf":
        raise DTypeError(f"intensity must be numeric (int/uint/float), got {arr.dtype}")
    return arr


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map labels to 1..K (0 stays background); return (compact int32 array, sorted labels)."""
    flat = labels.reshape(-1)
    from vollseg_dask.checks import check_labels_nonnegative

    check_labels_nonnegative(flat, "measured labels")
    top = int(flat.max()) if flat.size else 0
    if top == 0:
        return np.zeros(labels.shape, np.int32), np.zeros(0, np.uint64)
    if top <= _LUT_FACTOR * flat.size + (1 << 16):
        # Fast path: a dense lookup table over 0..top (bounded by a few times the block size).
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=top + 1)
        present = np.flatnonzero(counts[1:]) + 1
        lut = np.zeros(top + 1, np.int32)
        lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
        return lut[flat].reshape(labels.shape), present.astype(np.uint64)
    # Large (e.g. coordinate-derived, 64-bit) IDs: compact by sorting.
    uniq, inv = np.unique(flat, return_inverse=True)
    inv = inv.astype(np.int32, copy=False).reshape(labels.shape)
    if uniq[0] == 0:
        return inv, uniq[1:].astype(np.uint64)
    return inv + 1, uniq.astype(np.uint64)


def block_partials(
    labels_block: np.ndarray,
    intensity_block: np.ndarray | None = None,
    offset: Sequence[int] = (0, 0, 0),
) -> pd.DataFrame:
    """Per-label partial aggregates of one block.

    Parameters
    ----------
    labels_block : ndarray, shape (Z, Y, X), integer
        Labels of the block; 0 is background. Any integer dtype, values >= 0.
    intensity_block : ndarray, shape (Z, Y, X) or (C, Z, Y, X), optional
        Intensities of the same voxels, one image per channel. Must be finite.
    offset : sequence of 3 int
        Global voxel coordinates ``(z, y, x)`` of ``labels_block[0, 0, 0]``.

    Returns
    -------
    DataFrame
        One row per label present (sorted by label), columns :func:`partial_columns`:
        ``label`` (uint64); ``n`` voxel count; ``sz, sy, sx`` sums of global voxel
        coordinates; ``szz ... syx`` sums of their products (all int64, exact);
        ``z0, y0, x0`` first and ``z1, y1, x1`` one-past-last voxel of the bounding box
        (global, int64); per channel ``c``: ``sum_c, sumsq_c`` (int64 for <=16-bit
        integer images, float64 otherwise), ``min_c, max_c`` (float64).

    Raises
    ------
    ShapeError, DTypeError, InvalidDataError
        Wrong dimensionality or shape mismatch, non-integer labels or non-numeric
        intensities, negative labels or non-finite intensities.
    """
    labels = np.asarray(labels_block)
    _check_labels(labels)
    shape = labels.shape
    chans = _as_channels(intensity_block, shape)
    n_channels = 0 if chans is None else chans.shape[0]
    off = tuple(int(o) for o in offset)
    if len(off) != 3:
        raise ShapeError(f"offset must have 3 entries (z, y, x), got {offset!r}")
    if chans is not None and chans.dtype.kind == "f" and not np.isfinite(chans).all():
        raise InvalidDataError(f"intensity block at offset {off} holds NaN or infinite values")

    compact, label_values = _compact(labels)
    k = label_values.size
    cols = partial_columns(n_channels)
    exact_int = chans is not None and _exact_int_intensity(chans.dtype)
    if k == 0:
        empty = {c: np.zeros(0, np.int64) for c in cols}
        empty["label"] = np.zeros(0, np.uint64)
        for c in range(n_channels):
            empty[f"sum_c{c}"] = np.zeros(0, np.int64 if exact_int else np.float64)
            empty[f"sumsq_c{c}"] = np.zeros(0, np.int64 if exact_int else np.float64)
            empty[f"min_c{c}"] = np.zeros(0, np.float64)
            empty[f"max_c{c}"] = np.zeros(0, np.float64)
        return pd.DataFrame(empty, columns=cols)

    # Accumulators indexed by compact id (0 = background, dropped at the end).
    acc = {name: np.zeros(k + 1, np.int64) for name in MOMENT_COLUMNS}
    isum = [np.zeros(k + 1, np.int64 if exact_int else np.float64) for _ in range(n_channels)]
    isq = [np.zeros(k + 1, np.int64 if exact_int else np.float64) for _ in range(n_channels)]
    imin = [np.full(k + 1, np.inf) for _ in range(n_channels)]
    imax = [np.full(k + 1, -np.inf) for _ in range(n_channels)]

    plane = shape[1] * shape[2]
    step = max(1, _SLAB_VOXELS // max(plane, 1))
    for p0 in range(0, shape[0], step):
        p1 = min(shape[0], p0 + step)
        sub = compact[p0:p1]
        zz, yy, xx = np.nonzero(sub)  # foreground only: background costs one pass
        if zz.size == 0:
            continue
        lab = sub[zz, yy, xx]
        if chans is not None:
            vals = [chans[c, p0:p1][zz, yy, xx] for c in range(n_channels)]
        zz += p0 + off[0]
        yy += off[1]
        xx += off[2]
        acc["n"] += np.bincount(lab, minlength=k + 1)
        # np.add.at on int64 is exact (no 2**53 limit of float bincount weights).
        np.add.at(acc["sz"], lab, zz)
        np.add.at(acc["sy"], lab, yy)
        np.add.at(acc["sx"], lab, xx)
        np.add.at(acc["szz"], lab, zz * zz)
        np.add.at(acc["syy"], lab, yy * yy)
        np.add.at(acc["sxx"], lab, xx * xx)
        np.add.at(acc["szy"], lab, zz * yy)
        np.add.at(acc["szx"], lab, zz * xx)
        np.add.at(acc["syx"], lab, yy * xx)
        for c in range(n_channels):
            v = vals[c]
            w = v.astype(np.int64) if exact_int else v.astype(np.float64)
            np.add.at(isum[c], lab, w)
            np.add.at(isq[c], lab, w * w)
            vf = v.astype(np.float64)
            np.minimum.at(imin[c], lab, vf)
            np.maximum.at(imax[c], lab, vf)

    # Bounding boxes in one C pass over the compact array.
    from scipy import ndimage as ndi

    objs = ndi.find_objects(compact, max_label=k)
    bbox = np.array([[s.start for s in o] + [s.stop for s in o] for o in objs], dtype=np.int64)
    bbox[:, :3] += off
    bbox[:, 3:] += off

    data: dict[str, np.ndarray] = {"label": label_values}
    for name in MOMENT_COLUMNS:
        data[name] = acc[name][1:]
    for i, name in enumerate(_BBOX_MIN + _BBOX_MAX):
        data[name] = bbox[:, i]
    for c in range(n_channels):
        data[f"sum_c{c}"] = isum[c][1:]
        data[f"sumsq_c{c}"] = isq[c][1:]
        data[f"min_c{c}"] = imin[c][1:]
        data[f"max_c{c}"] = imax[c][1:]
    return pd.DataFrame(data, columns=cols)


def _n_channels(columns: Sequence[str]) -> int:
    return sum(1 for c in columns if c.startswith("sum_c"))


def reduce_partials(partials: Sequence[pd.DataFrame] | pd.DataFrame) -> pd.DataFrame:
    """Merge partial tables (from any blocks, in any grouping) into one row per label.

    Parameters
    ----------
    partials : sequence of DataFrame, or DataFrame
        Tables from :func:`block_partials` (or earlier reductions), all with the same
        channel count. The merge is associative: reducing reductions gives the same
        result as reducing everything at once.

    Returns
    -------
    DataFrame
        Same columns, one row per label, sorted by label. Sums are added, ``min``
        columns and ``z0, y0, x0`` take the minimum, ``max`` columns and ``z1, y1, x1``
        the maximum.
    """
    frames = [partials] if isinstance(partials, pd.DataFrame) else [p for p in partials if p is not None]
    if not frames:
        raise ShapeError("reduce_partials needs at least one partial table")
    nch = {_n_channels(f.columns) for f in frames}
    if len(nch) != 1:
        raise ShapeError(f"partial tables disagree on the channel count: {sorted(nch)}")
    n_channels = nch.pop()
    cols = partial_columns(n_channels)
    for f in frames:
        if list(f.columns) != cols:
            raise ShapeError(f"partial table has columns {list(f.columns)}, expected {cols}")
    frames = [f for f in frames if len(f)] or frames[:1]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if df["label"].is_unique:
        return df.sort_values("label", kind="stable").reset_index(drop=True)
    agg: dict[str, str] = {}
    for c in cols[1:]:
        if c in _BBOX_MIN or c.startswith("min_c"):
            agg[c] = "min"
        elif c in _BBOX_MAX or c.startswith("max_c"):
            agg[c] = "max"
        else:
            agg[c] = "sum"
    # sort=True orders groups by label; within a group rows keep input order (fixed float order).
    out = df.groupby("label", sort=True).agg(agg).reset_index()
    return out[cols]


def _check_voxel_size(voxel_size: Sequence[float]) -> tuple[float, float, float]:
    try:
        vs = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise ShapeError(f"voxel_size must be 3 positive numbers (z, y, x) in µm, got {voxel_size!r}") from None
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise ShapeError(f"voxel_size must be 3 positive numbers (z, y, x) in µm, got {voxel_size!r}")
    return vs  # type: ignore[return-value]


def _exact_variance(n: np.ndarray, s: np.ndarray, ss: np.ndarray) -> np.ndarray:
    """Population variance from exact integer sums, without cancellation.

    Shifting by each object's integer mean ``r`` keeps ``sum (v - r)**2 = ss - 2 r s + n r**2``
    exact in int64 for 16-bit data (up to 2**23 voxels per object); the remaining term
    ``(s - n r)**2 / n`` is below ``n / 4``. Larger objects fall back to Python integers.
    """
    if len(n) and int(n.max()) > (1 << 23):
        num = n.astype(object) * ss.astype(object) - s.astype(object) * s.astype(object)
        return np.array([float(v) for v in num], dtype=np.float64) / (n.astype(np.float64) ** 2)
    r = s // n
    centred = ss - 2 * r * s + n * r * r
    d = (s - n * r).astype(np.float64)
    nf = n.astype(np.float64)
    return (centred.astype(np.float64) - d * d / nf) / nf


def finalize(reduced: pd.DataFrame, voxel_size: Sequence[float]) -> pd.DataFrame:
    """Cell attributes from a reduced partial table.

    Parameters
    ----------
    reduced : DataFrame
        Output of :func:`reduce_partials` (one row per label).
    voxel_size : sequence of 3 float
        Voxel size ``(z, y, x)`` in µm.

    Returns
    -------
    DataFrame
        One row per label, sorted by label, columns:

        ``label`` (uint64); ``centroid_z, centroid_y, centroid_x`` (voxels);
        ``centroid_z_um, centroid_y_um, centroid_x_um`` (µm); ``volume_voxels`` (int64);
        ``volume_um3``; ``bbox_z0, bbox_y0, bbox_x0, bbox_z1, bbox_y1, bbox_x1`` (voxels,
        half-open, int64); ``extent_z_um, extent_y_um, extent_x_um`` (bbox side lengths,
        µm); ``equivalent_diameter_um`` (diameter of the sphere of equal volume);
        ``principal_axis_0_um >= principal_axis_1_um >= principal_axis_2_um`` (full
        lengths of the ellipsoid with the same second moments, µm); per channel ``k``:
        ``mean_intensity_ck, total_intensity_ck, min_intensity_ck, max_intensity_ck,
        std_intensity_ck`` (image units, float64).
    """
    vz, vy, vx = _check_voxel_size(voxel_size)
    n_channels = _n_channels(reduced.columns)
    n = reduced["n"].to_numpy(np.int64)
    if (n <= 0).any():
        raise InvalidDataError("reduced table holds a label with a non-positive voxel count")
    nf = n.astype(np.float64)
    lo = reduced[list(_BBOX_MIN)].to_numpy(np.int64)
    hi = reduced[list(_BBOX_MAX)].to_numpy(np.int64)
    # Moments are exact int64 sums; guard against overflow of the raw second moments.
    top = np.maximum(np.abs(lo), np.abs(hi)).max(axis=1).astype(np.float64)
    if len(n) and float((nf * top * top).max()) >= 2.0**62:
        raise InvalidDataError(
            "object too large for exact int64 second moments (voxel count x coordinate^2 >= 2^62)"
        )

    s1 = reduced[["sz", "sy", "sx"]].to_numpy(np.int64)
    # Shift the moments to each object's bbox corner (exact in int64) so that the
    # central moments below lose no precision to large absolute coordinates.
    r = lo
    s1s = s1 - n[:, None] * r
    centroid = r + s1s / nf[:, None]
    names = {(0, 0): "szz", (1, 1): "syy", (2, 2): "sxx", (0, 1): "szy", (0, 2): "szx", (1, 2): "syx"}
    cov = np.zeros((len(n), 3, 3), np.float64)
    spacing = (vz, vy, vx)
    for (a, b), col in names.items():
        sab = reduced[col].to_numpy(np.int64)
        shifted = sab - r[:, a] * s1[:, b] - r[:, b] * s1[:, a] + n * r[:, a] * r[:, b]
        central = (shifted - s1s[:, a].astype(np.float64) * s1s[:, b] / nf) / nf
        cov[:, a, b] = cov[:, b, a] = central * spacing[a] * spacing[b]
    eig = np.linalg.eigvalsh(cov)[:, ::-1] if len(n) else np.zeros((0, 3))
    axes = np.sqrt(20.0 * np.clip(eig, 0.0, None))

    vox_vol = vz * vy * vx
    volume_um3 = nf * vox_vol
    out: dict[str, np.ndarray] = {
        "label": reduced["label"].to_numpy(np.uint64),
        "centroid_z": centroid[:, 0],
        "centroid_y": centroid[:, 1],
        "centroid_x": centroid[:, 2],
        "centroid_z_um": centroid[:, 0] * vz,
        "centroid_y_um": centroid[:, 1] * vy,
        "centroid_x_um": centroid[:, 2] * vx,
        "volume_voxels": n,
        "volume_um3": volume_um3,
        "bbox_z0": lo[:, 0],
        "bbox_y0": lo[:, 1],
        "bbox_x0": lo[:, 2],
        "bbox_z1": hi[:, 0],
        "bbox_y1": hi[:, 1],
        "bbox_x1": hi[:, 2],
        "extent_z_um": (hi[:, 0] - lo[:, 0]) * vz,
        "extent_y_um": (hi[:, 1] - lo[:, 1]) * vy,
        "extent_x_um": (hi[:, 2] - lo[:, 2]) * vx,
        "equivalent_diameter_um": np.cbrt(6.0 * volume_um3 / np.pi),
        "principal_axis_0_um": axes[:, 0],
        "principal_axis_1_um": axes[:, 1],
        "principal_axis_2_um": axes[:, 2],
    }
    for c in range(n_channels):
        total = reduced[f"sum_c{c}"].to_numpy()
        sq = reduced[f"sumsq_c{c}"].to_numpy()
        mean = total.astype(np.float64) / nf
        if total.dtype.kind == "i":
            var = _exact_variance(n, total.astype(np.int64), sq.astype(np.int64))
        else:
            var = sq / nf - mean * mean
        out[f"mean_intensity_c{c}"] = mean
        out[f"total_intensity_c{c}"] = total.astype(np.float64)
        out[f"min_intensity_c{c}"] = reduced[f"min_c{c}"].to_numpy(np.float64)
        out[f"max_intensity_c{c}"] = reduced[f"max_c{c}"].to_numpy(np.float64)
        out[f"std_intensity_c{c}"] = np.sqrt(np.clip(var, 0.0, None))
    return pd.DataFrame(out)


def surface_area(mask: np.ndarray, voxel_size: Sequence[float]) -> float:
    """Surface area of one object by marching cubes on its binary mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (Z, Y, X)
        The object's voxels (a crop holding its whole bounding box).
    voxel_size : sequence of 3 float
        Voxel size ``(z, y, x)`` in µm.

    Returns
    -------
    float
        Area in µm² of the iso-surface at level 0.5 of the mask padded by one background
        voxel on every side (so objects touching the crop border are closed), from
        ``skimage.measure.marching_cubes`` with ``spacing=voxel_size``.

    Notes
    -----
    On a binary mask the iso-surface follows the voxel staircase: for smooth shapes it
    overestimates the true area (about +8 % to +20 % for spheres of 3-8 µm radius at
    typical anisotropies; tested), so sphericity computed from it is biased low.
    """
    from skimage.measure import marching_cubes, mesh_surface_area

    vs = _check_voxel_size(voxel_size)
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ShapeError(f"mask must be 3-D (z, y, x), got shape {m.shape}")
    if not m.any():
        raise InvalidDataError("mask is empty: no surface to measure")
    padded = np.pad(m.astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=vs)
    return float(mesh_surface_area(verts, faces))
