"""Step 1 of the LAP tracker: frame-to-frame linking of one frame pair (pure kernel)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from vollseg_dask.errors import TrackingError
from vollseg_dask.tracking.costs import candidate_pairs, pair_costs
from vollseg_dask.tracking.lap import solve_jaqaman

__all__ = ["FrameLinks", "link_frames", "frame_candidates"]


@dataclass(frozen=True)
class FrameLinks:
    """Links chosen between frame ``t`` (sources) and frame ``t + 1`` (targets).

    Attributes
    ----------
    source, target : ndarray of intp, shape (L,)
        Row indices into the two frames' spot arrays, sorted by ``source``.
    cost : ndarray of float64, shape (L,)
        Link costs (squared micrometres times the squared penalty factor).
    alternative_cost : float
        The no-link cost used for this pair (NaN when there was no candidate).
    n_candidates : int
        Number of candidate links the LAP saw.
    """

    source: NDArray[np.intp]
    target: NDArray[np.intp]
    cost: NDArray[np.float64]
    alternative_cost: float
    n_candidates: int


def frame_candidates(
    xyz_a: NDArray[np.float64],
    xyz_b: NDArray[np.float64],
    max_distance: float,
    features_a: NDArray[np.float64] | None = None,
    features_b: NDArray[np.float64] | None = None,
    weights: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Candidate links of a frame pair: every pair with ``cost < max_distance**2`` (strict).

    Parameters
    ----------
    xyz_a : ndarray, shape (n, D)
    xyz_b : ndarray, shape (m, D)
        Spot positions (micrometres) in frames ``t`` and ``t + 1``.
    max_distance : float
        ``LINKING_MAX_DISTANCE`` (micrometres).
    features_a, features_b : ndarray, shape (n, F) and (m, F), optional
    weights : ndarray, shape (F,), optional
        Feature penalties.

    Returns
    -------
    ia, ib, cost : ndarrays of shape (k,)
        Candidate index pairs (sorted by ``ia`` then ``ib``) and their costs.
    """
    ia, ib = candidate_pairs(xyz_a, xyz_b, max_distance)
    if ia.size == 0:
        return ia, ib, np.empty(0, dtype=np.float64)
    use_pen = weights is not None and len(weights) > 0
    cost = pair_costs(
        np.asarray(xyz_a, dtype=np.float64)[ia],
        np.asarray(xyz_b, dtype=np.float64)[ib],
        None if not use_pen else np.asarray(features_a)[ia],
        None if not use_pen else np.asarray(features_b)[ib],
        weights if use_pen else None,
    )
    keep = cost < max_distance * max_distance
    return ia[keep], ib[keep], cost[keep]


def link_frames(
    xyz_a: NDArray[np.float64],
    xyz_b: NDArray[np.float64],
    *,
    max_distance: float,
    features_a: NDArray[np.float64] | None = None,
    features_b: NDArray[np.float64] | None = None,
    weights: NDArray[np.float64] | None = None,
    alternative_cost_factor: float = 1.05,
) -> FrameLinks:
    """Link the spots of frame ``t`` to those of frame ``t + 1`` as TrackMate's LAP tracker does.

    Candidates are pairs with ``cost < max_distance**2``; the no-link (alternative) cost of every
    spot is ``alternative_cost_factor`` times the largest candidate cost of this frame pair; the
    lower-right block of the Jaqaman matrix holds the smallest candidate cost. The LAP is solved
    sparsely (only candidates are stored).

    Parameters
    ----------
    xyz_a : ndarray, shape (n, D)
    xyz_b : ndarray, shape (m, D)
        Spot positions (micrometres) in frames ``t`` and ``t + 1``; D is 2 or 3.
    max_distance : float
        ``LINKING_MAX_DISTANCE`` (micrometres), > 0.
    features_a, features_b : ndarray, shape (n, F) and (m, F), optional
        Feature values for ``LINKING_FEATURE_PENALTIES``.
    weights : ndarray, shape (F,), optional
        Penalty weights, in the order of the feature columns.
    alternative_cost_factor : float
        ``ALTERNATIVE_LINKING_COST_FACTOR`` (1.05 in TrackMate).

    Returns
    -------
    FrameLinks
        Chosen links as row indices into the two frames.
    """
    a = np.asarray(xyz_a, dtype=np.float64)
    b = np.asarray(xyz_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise TrackingError(
            f"positions must be (n, D) and (m, D) with the same D, got {a.shape} and {b.shape}"
        )
    if not max_distance > 0:
        raise TrackingError(f"max_distance must be > 0, got {max_distance!r}")
    ia, ib, cost = frame_candidates(a, b, max_distance, features_a, features_b, weights)
    if ia.size == 0:
        empty = np.empty(0, dtype=np.intp)
        return FrameLinks(empty, empty.copy(), np.empty(0), float("nan"), 0)
    alternative = alternative_cost_factor * float(cost.max())
    auxiliary = float(cost.min())
    chosen = solve_jaqaman(ia, ib, cost, alternative, auxiliary)
    return FrameLinks(ia[chosen], ib[chosen], cost[chosen], alternative, int(ia.size))
