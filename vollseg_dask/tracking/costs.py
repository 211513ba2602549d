"""Linking costs of TrackMate's LAP tracker: squared distance times squared feature penalty.

Pure NumPy kernels. A cost is ``d^2 * P^2`` with ``P = 1 + sum_f 3 * w_f * |a_f - b_f| / (a_f + b_f)``
(that is ``1.5 * w_f * |a_f - b_f|`` over the mean of the two values), as published in the TrackMate
documentation. A cost of exactly zero (two spots at the same place) becomes :data:`SMALLEST_COST`,
the smallest positive *normal* double (2.2e-308): a sparse LAP cannot hold a zero weight, and a
normal number keeps ``1.05 * cost`` (the alternative cost of a frame pair whose only candidate is
such a pair) strictly above the cost, which the smallest subnormal (Java's ``Double.MIN_VALUE``)
would not, turning the link into a tie.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from vollseg_dask.errors import TrackingError

__all__ = ["SMALLEST_COST", "penalty_factor", "pair_costs", "candidate_pairs"]

#: Smallest positive normal float64: what a zero cost becomes.
SMALLEST_COST: float = float(np.finfo(np.float64).tiny)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]


def penalty_factor(features_a: FloatArray, features_b: FloatArray, weights: FloatArray) -> FloatArray:
    """Feature-penalty factor ``P`` of each spot pair.

    Parameters
    ----------
    features_a, features_b : ndarray, shape (k, F)
        Feature values of the two spots of each of ``k`` pairs (F features, any positive unit).
    weights : ndarray, shape (F,)
        Penalty weight of each feature (>= 0).

    Returns
    -------
    ndarray, shape (k,)
        ``1 + sum_f 3 * w_f * |a_f - b_f| / (a_f + b_f)``; a feature with ``a == b`` adds 0 and a
        feature with ``a != b`` and ``a + b <= 0`` makes the factor infinite (the pair cannot link).
    """
    fa = np.asarray(features_a, dtype=np.float64)
    fb = np.asarray(features_b, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if fa.shape != fb.shape or fa.ndim != 2 or fa.shape[1] != w.shape[0]:
        raise TrackingError(f"feature arrays must both be (k, {w.shape[0]}), got {fa.shape} and {fb.shape}")
    if fa.shape[1] == 0:
        return np.ones(fa.shape[0], dtype=np.float64)
    diff = np.abs(fa - fb)
    total = fa + fb
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, np.where(total > 0, diff / total, np.inf))
    return 1.0 + 3.0 * (ratio * w).sum(axis=1)


def pair_costs(
    xyz_a: FloatArray,
    xyz_b: FloatArray,
    features_a: FloatArray | None = None,
    features_b: FloatArray | None = None,
    weights: FloatArray | None = None,
) -> FloatArray:
    """Linking cost of each of ``k`` spot pairs given row by row.

    Parameters
    ----------
    xyz_a, xyz_b : ndarray, shape (k, D)
        Positions (micrometres) of the two spots of each pair.
    features_a, features_b : ndarray, shape (k, F), optional
        Feature values for the penalties; omitted means no penalty.
    weights : ndarray, shape (F,), optional
        Penalty weights.

    Returns
    -------
    ndarray, shape (k,)
        ``d^2 * P^2`` (squared micrometres), zeros replaced by :data:`SMALLEST_COST`.
    """
    a = np.asarray(xyz_a, dtype=np.float64)
    b = np.asarray(xyz_b, dtype=np.float64)
    delta = a - b
    # Summed coordinate by coordinate (x, then y, then z) like a plain loop, so the last bits agree
    # with TrackMate's exported costs.
    d2 = np.zeros(a.shape[0], dtype=np.float64)
    for k in range(a.shape[1]):
        d2 += delta[:, k] * delta[:, k]
    if weights is not None and len(weights) > 0:
        p = penalty_factor(features_a, features_b, weights)  # type: ignore[arg-type]
        d2 = d2 * (p * p)
    d2[d2 == 0] = SMALLEST_COST
    return d2


def candidate_pairs(xyz_a: FloatArray, xyz_b: FloatArray, max_distance: float) -> tuple[IntArray, IntArray]:
    """Index pairs ``(i, j)`` whose distance may be within ``max_distance`` (a superset, KD-tree).

    Parameters
    ----------
    xyz_a : ndarray, shape (n, D)
    xyz_b : ndarray, shape (m, D)
        Positions in micrometres.
    max_distance : float
        Search radius (micrometres). The result may hold pairs slightly beyond it (the radius is
        padded against rounding); callers apply the exact cut-off on the cost.

    Returns
    -------
    ia, ib : ndarray of intp, shape (k,)
        Sorted by ``(ia, ib)``.
    """
    a = np.asarray(xyz_a, dtype=np.float64)
    b = np.asarray(xyz_b, dtype=np.float64)
    if a.shape[0] == 0 or b.shape[0] == 0:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty.copy()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise TrackingError("spot positions must be finite (found NaN or infinity)")
    radius = max_distance * (1.0 + 1e-9) + 1e-12
    tree_a = cKDTree(a)
    tree_b = cKDTree(b)
    found = tree_a.sparse_distance_matrix(tree_b, radius, output_type="ndarray")
    ia = found["i"].astype(np.intp)
    ib = found["j"].astype(np.intp)
    order = np.lexsort((ib, ia))
    ia, ib = ia[order], ib[order]
    if ia.size > 1:
        keep = np.ones(ia.size, dtype=bool)
        keep[1:] = (ia[1:] != ia[:-1]) | (ib[1:] != ib[:-1])
        ia, ib = ia[keep], ib[keep]
    return ia, ib
