"""Motion of one cell along a tracklet: speed, displacement, mean squared displacement (pure NumPy).

Positions are in the track data's spatial unit (µm normally), times in its time unit: a step from
frame ``t_a`` to ``t_b`` lasts ``(t_b - t_a) * frame_interval``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vollseg_dask.errors import InvalidDataError, ShapeError

__all__ = [
    "step_speeds",
    "displacement_from_start",
    "path_length",
    "frame_grid",
    "squared_displacement_sums",
    "mean_squared_displacement",
]


def _track(t: ArrayLike, xyz: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    tt = np.asarray(t)
    p = np.asarray(xyz, dtype=np.float64)
    if p.ndim != 2 or tt.ndim != 1 or len(tt) != len(p):
        raise ShapeError(f"t must have shape (n,) and xyz shape (n, d); got {tt.shape} and {p.shape}")
    if len(tt) and not np.all(np.diff(tt) > 0):
        i = int(np.flatnonzero(np.diff(tt) <= 0)[0])
        raise InvalidDataError(
            f"frames must increase strictly along a tracklet; frame {int(tt[i + 1])} follows {int(tt[i])}"
        )
    return tt.astype(np.int64), p


def _dt(frame_interval: float) -> float:
    dt = float(frame_interval)
    if not np.isfinite(dt) or dt <= 0:
        raise InvalidDataError(f"frame_interval must be finite and > 0, got {frame_interval!r}")
    return dt


def step_speeds(t: ArrayLike, xyz: ArrayLike, frame_interval: float) -> NDArray[np.float64]:
    """Speed of each step, assigned to the step's arriving spot.

    Parameters
    ----------
    t : array_like of int, shape (n,)
        Increasing frame indices.
    xyz : array_like, shape (n, d)
        Positions (spatial unit).
    frame_interval : float
        Time per frame.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
        ``|p_i - p_{i-1}| / ((t_i - t_{i-1}) * frame_interval)``; NaN for the first spot.
    """
    tt, p = _track(t, xyz)
    dt = _dt(frame_interval)
    out = np.full(len(tt), np.nan)
    if len(tt) > 1:
        out[1:] = np.linalg.norm(np.diff(p, axis=0), axis=1) / (np.diff(tt) * dt)
    return out


def displacement_from_start(xyz: ArrayLike) -> NDArray[np.float64]:
    """Distance of every position from the first one.

    Parameters
    ----------
    xyz : array_like, shape (n, d)

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
    """
    p = np.asarray(xyz, dtype=np.float64)
    if p.ndim != 2:
        raise ShapeError(f"xyz must have shape (n, d), got {p.shape}")
    return np.linalg.norm(p - p[:1], axis=1) if len(p) else np.zeros(0)


def path_length(xyz: ArrayLike) -> float:
    """Sum of step lengths of a path of shape (n, d) (0 for fewer than two points)."""
    p = np.asarray(xyz, dtype=np.float64)
    if p.ndim != 2:
        raise ShapeError(f"xyz must have shape (n, d), got {p.shape}")
    return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum()) if len(p) > 1 else 0.0


def frame_grid(t: ArrayLike, xyz: ArrayLike) -> NDArray[np.float64]:
    """Positions on every frame from the first to the last, NaN at missing frames.

    Returns
    -------
    numpy.ndarray of float64, shape (t_max - t_min + 1, d)
    """
    tt, p = _track(t, xyz)
    if len(tt) == 0:
        return np.zeros((0, p.shape[1]))
    grid = np.full((int(tt[-1] - tt[0]) + 1, p.shape[1]), np.nan)
    grid[tt - tt[0]] = p
    return grid


def squared_displacement_sums(
    t: ArrayLike, xyz: ArrayLike, max_lag: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Sums and counts of squared displacements over all pairs of spots ``k`` frames apart.

    Sums (rather than means) pool exactly across tracklets: the MSD of several tracklets at lag
    ``k`` is ``sum of sums / sum of counts``.

    Parameters
    ----------
    t : array_like of int, shape (n,)
        Increasing frames (gaps allowed: only pairs whose frames differ by exactly ``k`` count).
    xyz : array_like, shape (n, d)
    max_lag : int
        Largest lag in frames (>= 1).

    Returns
    -------
    sums : numpy.ndarray of float64, shape (max_lag,)
        ``sum |p(t + k) - p(t)|^2`` for ``k = 1 .. max_lag`` (spatial unit squared).
    counts : numpy.ndarray of int64, shape (max_lag,)
        Number of pairs at each lag.
    """
    if isinstance(max_lag, bool) or not isinstance(max_lag, int | np.integer) or max_lag < 1:
        raise InvalidDataError(f"max_lag must be an integer >= 1 frame, got {max_lag!r}")
    grid = frame_grid(t, xyz)
    sums = np.zeros(int(max_lag))
    counts = np.zeros(int(max_lag), np.int64)
    for k in range(1, min(int(max_lag), len(grid) - 1) + 1):
        sq = np.sum((grid[k:] - grid[:-k]) ** 2, axis=1)
        ok = np.isfinite(sq)
        sums[k - 1] = sq[ok].sum()
        counts[k - 1] = int(ok.sum())
    return sums, counts


def mean_squared_displacement(
    t: ArrayLike, xyz: ArrayLike, frame_interval: float, max_lag: int | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Time-averaged mean squared displacement of one path.

    ``MSD(k) = mean over pairs (i, j) with t_j - t_i = k of |p_j - p_i|^2``. For a straight path at
    constant speed ``v``, ``MSD(tau) = (v tau)^2``.

    Parameters
    ----------
    t : array_like of int, shape (n,)
    xyz : array_like, shape (n, d)
    frame_interval : float
    max_lag : int, optional
        Largest lag in frames; default ``t_max - t_min``.

    Returns
    -------
    lag_time : numpy.ndarray of float64, shape (L,)
        ``k * frame_interval`` for ``k = 1 .. L``.
    msd : numpy.ndarray of float64, shape (L,)
        Spatial unit squared; NaN at lags without a pair.
    counts : numpy.ndarray of int64, shape (L,)
    """
    tt = np.asarray(t)
    dt = _dt(frame_interval)
    span = int(tt.max() - tt.min()) if len(tt) else 0
    lag = span if max_lag is None else int(max_lag)
    if lag < 1:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    sums, counts = squared_displacement_sums(t, xyz, lag)
    with np.errstate(invalid="ignore", divide="ignore"):
        msd = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return np.arange(1, lag + 1) * dt, msd, counts
