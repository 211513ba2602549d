"""Distance of cells to the tissue boundary.

The measure stage stores ``distance_to_boundary_um`` for every cell (signed, µm, positive inside the
tissue; the definition is in :mod:`vollseg_dask.kernels.distance`), and the tracker carries it on the
spots. :func:`add_boundary_distance` computes the same column from a tissue mask for track data that
lacks it (e.g. tracks read from a TrackMate file), with the same definition and the same sampling
(the voxel nearest to the spot's position).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from vollseg_dask.errors import InvalidDataError, ShapeError
from vollseg_dask.kernels.distance import nearest_voxel, signed_distance_at

__all__ = ["DISTANCE_COLUMN", "boundary_distance_at", "add_boundary_distance"]

#: Spot column holding the signed distance to the tissue boundary (µm, positive inside).
DISTANCE_COLUMN = "distance_to_boundary_um"


def boundary_distance_at(mask: np.ndarray, voxel_size: Sequence[float], zyx_um: np.ndarray) -> np.ndarray:
    """Signed distance to the boundary of a 3-D tissue mask at physical positions.

    Parameters
    ----------
    mask : numpy.ndarray, shape (Z, Y, X)
        Tissue mask (non-zero = tissue), voxel ``(0, 0, 0)`` centred at the origin.
    voxel_size : sequence of 3 float
        ``(z, y, x)`` voxel size in µm.
    zyx_um : numpy.ndarray, shape (N, 3)
        Positions ``(z, y, x)`` in µm.

    Returns
    -------
    numpy.ndarray of float64, shape (N,)
        µm, positive inside, sampled at the voxel nearest to each position (positions outside the
        array are clipped to its border).
    """
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ShapeError(f"tissue mask must be 3-D (z, y, x), got shape {m.shape}")
    vs = np.asarray(voxel_size, dtype=np.float64)
    if vs.shape != (3,) or not np.all(vs > 0):
        raise ShapeError(f"voxel_size must be 3 positive numbers (z, y, x) in µm, got {voxel_size!r}")
    p = np.asarray(zyx_um, dtype=np.float64).reshape(-1, 3)
    vox = nearest_voxel(p / vs, m.shape)
    dist, _ = signed_distance_at(m, tuple(vs), vox)
    return dist


def add_boundary_distance(
    spots: pd.DataFrame, mask: np.ndarray, voxel_size: Sequence[float], *, ndim: int = 3
) -> pd.DataFrame:
    """Return ``spots`` with :data:`DISTANCE_COLUMN` computed from a tissue mask.

    Parameters
    ----------
    spots : pandas.DataFrame
        ``t`` (frame) and ``x``, ``y``, ``z`` in µm.
    mask : numpy.ndarray
        One mask for all frames, shape ``(Z, Y, X)`` (``(Y, X)`` for 2-D data), or one per frame,
        shape ``(T, Z, Y, X)`` (``(T, Y, X)``) indexed by the spots' ``t``.
    voxel_size : sequence of float
        ``(z, y, x)`` (``(y, x)`` for 2-D data) in µm.
    ndim : {2, 3}
        Spatial dimensions of the data.

    Returns
    -------
    pandas.DataFrame
        A copy with the column set (replaced when present).
    """
    if ndim not in (2, 3):
        raise InvalidDataError(f"ndim must be 2 or 3, got {ndim!r}")
    m = np.asarray(mask)
    vs = [float(v) for v in voxel_size]
    if len(vs) != ndim:
        raise ShapeError(f"voxel_size must have {ndim} values for {ndim}-D data, got {voxel_size!r}")
    if m.ndim not in (ndim, ndim + 1):
        raise ShapeError(
            f"tissue mask for {ndim}-D data must have {ndim} or {ndim + 1} axes, got shape {m.shape}"
        )
    per_frame = m.ndim == ndim + 1
    if ndim == 2:
        m = m[:, None] if per_frame else m[None]
        vs = [1.0, *vs]
    out = spots.copy()
    zyx = out[["z", "y", "x"]].to_numpy(np.float64).copy()
    if ndim == 2:
        zyx[:, 0] = 0.0
    dist = np.full(len(out), np.nan)
    if not per_frame:
        dist[:] = boundary_distance_at(m, vs, zyx)
    else:
        t = out["t"].to_numpy(np.int64)
        bad = (t < 0) | (t >= m.shape[0])
        if bad.any():
            raise ShapeError(
                f"spot frame {int(t[bad][0])} is outside the tissue mask's {m.shape[0]} frame(s)"
            )
        for ti in np.unique(t):
            sel = t == ti
            dist[sel] = boundary_distance_at(m[ti], vs, zyx[sel])
    out[DISTANCE_COLUMN] = dist
    return out
