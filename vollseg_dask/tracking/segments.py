"""Step 2 of the LAP tracker: linking track segments (gap closing, splitting, merging).

Pure kernels on NumPy arrays and pandas tables.

A *segment* is a chain of frame-to-frame links. Its first spot is its *start*, its last its *end*,
and every other spot a *middle* spot (a segment of one or two spots has none). Candidates:

- **gap closing** (``kind="gap"``): end of a segment at frame ``t`` -> start of another segment at
  ``t + 1 .. t + MAX_FRAME_GAP``, with ``cost <= GAP_CLOSING_MAX_DISTANCE**2``;
- **splitting** (``kind="split"``): middle spot at ``t - 1`` -> start of another segment at ``t``
  (a division; the middle spot is the mother), ``cost <= SPLITTING_MAX_DISTANCE**2``;
- **merging** (``kind="merge"``): end of a segment at ``t`` -> middle spot at ``t + 1``,
  ``cost <= MERGING_MAX_DISTANCE**2``.

Each candidate is an edge ``source_spot_id -> target_spot_id`` (source earlier in time). The LAP
rows are the distinct sources (segment ends and mother middles), the columns the distinct targets
(segment starts and merge middles): a spot is either an end or a middle, never both, so its id
names its row, and likewise for columns. All no-link costs are one value, ``factor`` times the
``CUTOFF_PERCENTILE`` percentile of all candidate costs, and the lower-right block holds one value too,
the smallest candidate cost (as in the frame-to-frame matrix); hence the LAP is block-diagonal over
the connected components of the candidate graph, which :func:`link_segments` solves one at a time.

Single-spot segments (a spot with no frame-to-frame link at all) take part in gap closing only,
never in splitting or merging: this is what TrackMate does on the laptrack fixtures, where the one
split and the one merge offered to a lone spot are refused although their costs are below the
alternative cost. (A lone spot "dividing off" a track is usually a spurious detection.)
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vollseg_dask.errors import TrackingError
from vollseg_dask.tracking.costs import candidate_pairs, pair_costs
from vollseg_dask.tracking.lap import candidate_components, solve_jaqaman

__all__ = [
    "CANDIDATE_COLUMNS",
    "timed_candidates",
    "segment_alternative_cost",
    "trackmate_percentile",
    "link_segments",
    "empty_candidates",
]

logger = logging.getLogger(__name__)

#: Columns of a segment-candidate table (and of the chosen-edges table returned).
CANDIDATE_COLUMNS: tuple[str, ...] = (
    "source_spot_id",
    "target_spot_id",
    "source_t",
    "target_t",
    "cost",
    "kind",
)


def empty_candidates() -> pd.DataFrame:
    """An empty candidate table with the right dtypes."""
    return pd.DataFrame(
        {
            "source_spot_id": np.empty(0, np.int64),
            "target_spot_id": np.empty(0, np.int64),
            "source_t": np.empty(0, np.int64),
            "target_t": np.empty(0, np.int64),
            "cost": np.empty(0, np.float64),
            "kind": pd.Series([], dtype=object),
        }
    )


def timed_candidates(
    xyz_a: NDArray[np.float64],
    t_a: NDArray[np.int64],
    xyz_b: NDArray[np.float64],
    t_b: NDArray[np.int64],
    *,
    min_dt: int,
    max_dt: int,
    max_distance: float,
    features_a: NDArray[np.float64] | None = None,
    features_b: NDArray[np.float64] | None = None,
    weights: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Pairs ``(i, j)`` with ``min_dt <= t_b[j] - t_a[i] <= max_dt`` and ``cost <= max_distance**2``.

    Parameters
    ----------
    xyz_a : ndarray, shape (n, D)
    t_a : ndarray of int, shape (n,)
        Positions (micrometres) and frames of the sources (segment ends or mother middles).
    xyz_b : ndarray, shape (m, D)
    t_b : ndarray of int, shape (m,)
        Positions and frames of the targets (segment starts or merge middles).
    min_dt, max_dt : int
        Allowed frame differences (1..MAX_FRAME_GAP for gap closing, 1..1 for splitting/merging).
    max_distance : float
        Cut-off distance (micrometres); the cut-off is inclusive on the cost.
    features_a, features_b : ndarray, shape (n, F) and (m, F), optional
    weights : ndarray, shape (F,), optional
        Feature penalties.

    Returns
    -------
    ia, ib, cost : ndarrays of shape (k,)
        Sorted by ``(ia, ib)``.
    """
    a = np.asarray(xyz_a, dtype=np.float64)
    b = np.asarray(xyz_b, dtype=np.float64)
    ta = np.asarray(t_a, dtype=np.int64)
    tb = np.asarray(t_b, dtype=np.int64)
    out_a: list[NDArray[np.intp]] = []
    out_b: list[NDArray[np.intp]] = []
    if a.shape[0] and b.shape[0]:
        frames_b = {int(f): np.flatnonzero(tb == f) for f in np.unique(tb)}
        for fa in np.unique(ta):
            idx_a = np.flatnonzero(ta == fa)
            for dt in range(min_dt, max_dt + 1):
                idx_b = frames_b.get(int(fa) + dt)
                if idx_b is None:
                    continue
                pa, pb = candidate_pairs(a[idx_a], b[idx_b], max_distance)
                out_a.append(idx_a[pa])
                out_b.append(idx_b[pb])
    if not out_a:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty.copy(), np.empty(0, dtype=np.float64)
    ia = np.concatenate(out_a)
    ib = np.concatenate(out_b)
    use_pen = weights is not None and len(weights) > 0
    cost = pair_costs(
        a[ia],
        b[ib],
        np.asarray(features_a)[ia] if use_pen else None,
        np.asarray(features_b)[ib] if use_pen else None,
        weights if use_pen else None,
    )
    keep = cost <= max_distance * max_distance
    ia, ib, cost = ia[keep], ib[keep], cost[keep]
    order = np.lexsort((ib, ia))
    return ia[order], ib[order], cost[order]


def trackmate_percentile(values: NDArray[np.float64], fraction: float) -> float:
    """The ``fraction`` percentile of ``values`` as TrackMate takes it for the no-link cost.

    The estimate is the order statistic at position ``fraction * (n + 1)`` (1-based) of the sorted
    values, interpolated linearly between its two neighbours and clamped to the smallest / largest
    value (NumPy's ``method="weibull"``, the classical estimator of Apache Commons Math). On the
    laptrack fixtures TrackMate's choices are reproduced by this estimator (and equally by NumPy's
    ``"higher"``, ``"nearest"`` or ``"hazen"``), but not by ``"lower"``, laptrack's default, which
    refuses a merge TrackMate makes.

    Parameters
    ----------
    values : ndarray, shape (n,)
        Candidate costs, n >= 1.
    fraction : float
        In (0, 1] (``CUTOFF_PERCENTILE``).
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = v.size
    if n == 0:
        raise TrackingError("cannot take a percentile of no candidate costs")
    if not 0 < fraction <= 1:
        raise TrackingError(f"cutoff percentile must be in (0, 1], got {fraction!r}")
    if n == 1:
        return float(v[0])
    pos = fraction * (n + 1)
    if pos < 1:
        return float(v[0])
    if pos >= n:
        return float(v[-1])
    lower = int(np.floor(pos))
    frac = pos - lower
    return float(v[lower - 1] + frac * (v[lower] - v[lower - 1]))


def segment_alternative_cost(costs: NDArray[np.float64], cutoff_percentile: float, factor: float) -> float:
    """No-link cost of the segment LAP: ``factor * percentile(costs, cutoff_percentile)``.

    Parameters
    ----------
    costs : ndarray, shape (k,)
        Every segment-linking candidate cost (gap closing, splitting and merging together), k >= 1.
    cutoff_percentile : float
        ``CUTOFF_PERCENTILE`` in (0, 1].
    factor : float
        ``ALTERNATIVE_LINKING_COST_FACTOR``.
    """
    return factor * trackmate_percentile(costs, cutoff_percentile)


def _solve_windowed(
    cands: pd.DataFrame, alternative: float, auxiliary: float, window_frames: int, overlap: int
) -> NDArray[np.bool_]:
    """Approximate LAP of one huge component in time windows with anchored boundaries.

    Windows of ``window_frames`` target frames are solved in time order over the candidates whose
    target frame lies in the window or the ``overlap`` frames after it; only the decisions whose
    target frame is inside the window are kept, and those are then fixed (their source and target
    leave the later problems).
    """
    chosen = np.zeros(len(cands), dtype=bool)
    src = cands["source_spot_id"].to_numpy()
    tgt = cands["target_spot_id"].to_numpy()
    tt = cands["target_t"].to_numpy()
    cost = cands["cost"].to_numpy()
    free = np.ones(len(cands), dtype=bool)  # neither end taken by an anchored (committed) link
    t0, t1 = int(tt.min()), int(tt.max())
    for start in range(t0, t1 + 1, window_frames):
        core_end = start + window_frames
        sel = np.flatnonzero((tt >= start) & (tt < core_end + overlap) & free)
        if sel.size == 0:
            continue
        pick = solve_jaqaman(src[sel], tgt[sel], cost[sel], alternative, auxiliary)
        keep = sel[pick & (tt[sel] < core_end)]
        chosen[keep] = True
        free &= ~np.isin(src, src[keep]) & ~np.isin(tgt, tgt[keep])
    return chosen


def link_segments(
    candidates: pd.DataFrame,
    *,
    cutoff_percentile: float = 0.9,
    alternative_cost_factor: float = 1.05,
    alternative_cost: float | None = None,
    auxiliary_cost: float | None = None,
    per_component: bool = True,
    max_component_size: int | None = None,
    window_frames: int = 16,
    max_frame_gap: int = 2,
) -> pd.DataFrame:
    """Choose gap-closing, splitting and merging links among segment candidates (Jaqaman LAP).

    Parameters
    ----------
    candidates : DataFrame
        Columns :data:`CANDIDATE_COLUMNS`: ``source_spot_id``, ``target_spot_id`` (int64),
        ``source_t``, ``target_t`` (int frames), ``cost`` (float, > 0), ``kind`` in
        {"gap", "split", "merge"}. One row per candidate, as produced by the candidate pass.
    cutoff_percentile, alternative_cost_factor : float
        TrackMate's ``CUTOFF_PERCENTILE`` and ``ALTERNATIVE_LINKING_COST_FACTOR``; the no-link cost
        is ``factor * percentile(all costs)`` (see :func:`trackmate_percentile`).
    alternative_cost : float, optional
        Use this no-link cost instead (e.g. one computed over a larger candidate set).
    auxiliary_cost : float, optional
        Value of the lower-right block; default the smallest candidate cost. Pass the global value
        when ``candidates`` is a part of a larger problem.
    per_component : bool
        Solve each connected component of the candidate graph on its own (True) or everything as
        one LAP (False); both give the same optimum.
    max_component_size : int, optional
        Components with more LAP rows + columns than this are solved by the time-windowed fallback
        (approximate, logged as a warning). None: never.
    window_frames, max_frame_gap : int
        Window length and overlap (frames) of the fallback.

    Returns
    -------
    DataFrame
        The chosen candidates (all input columns kept), sorted by
        ``(source_t, source_spot_id, target_spot_id)``. ``attrs["report"]`` holds the number of
        candidates and components, the largest component (LAP rows + columns), how many components
        went to the windowed fallback, and the alternative and auxiliary costs used.
    """
    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise TrackingError(f"segment candidate table lacks columns {missing}")
    if len(candidates) == 0:
        out = candidates.copy()
        out.attrs["report"] = {"n_candidates": 0, "n_components": 0, "largest_component": 0, "n_windowed": 0}
        return out
    cands = candidates.sort_values(["source_t", "source_spot_id", "target_spot_id"], kind="stable")
    cands = cands.reset_index(drop=True)
    src = cands["source_spot_id"].to_numpy(np.int64)
    tgt = cands["target_spot_id"].to_numpy(np.int64)
    cost = cands["cost"].to_numpy(np.float64)
    for col, tcol in (("source_spot_id", "source_t"), ("target_spot_id", "target_t")):
        n_t = cands.groupby(col)[tcol].nunique()
        if (n_t > 1).any():
            raise TrackingError(
                f"spot_id {int(n_t[n_t > 1].index[0])} occurs in several frames: spot IDs must be unique"
            )
    if alternative_cost is None:
        alternative_cost = segment_alternative_cost(cost, cutoff_percentile, alternative_cost_factor)
    if auxiliary_cost is None:
        auxiliary_cost = float(cost.min())
    chosen = np.zeros(len(cands), dtype=bool)
    report = {
        "n_candidates": len(cands),
        "alternative_cost": alternative_cost,
        "auxiliary_cost": auxiliary_cost,
    }
    if not per_component:
        chosen = solve_jaqaman(src, tgt, cost, alternative_cost, auxiliary_cost)
        report.update(
            n_components=1, largest_component=np.unique(src).size + np.unique(tgt).size, n_windowed=0
        )
    else:
        comp = candidate_components(src, tgt)
        n_comp = int(comp.max()) + 1
        comp_size = np.bincount(comp, minlength=n_comp)
        report.update(n_components=n_comp, largest_component=2 if n_comp else 0, n_windowed=0)
        # One candidate alone (most components): link iff cost + auxiliary < 2 * alternative.
        single = comp_size[comp] == 1
        chosen[single] = cost[single] + auxiliary_cost < 2.0 * alternative_cost
        multi = np.flatnonzero(~single)
        order = multi[np.argsort(comp[multi], kind="stable")]
        bounds = np.flatnonzero(np.diff(comp[order])) + 1
        for idx in np.split(order, bounds) if order.size else []:
            size = np.unique(src[idx]).size + np.unique(tgt[idx]).size
            report["largest_component"] = max(report["largest_component"], size)
            if max_component_size is not None and size > max_component_size:
                logger.warning(
                    "segment-candidate component of %d LAP rows+columns exceeds max_component_size=%d: "
                    "solving it in windows of %d frames with anchored boundaries (approximate)",
                    size,
                    max_component_size,
                    window_frames,
                )
                chosen[idx] = _solve_windowed(
                    cands.iloc[idx], alternative_cost, auxiliary_cost, window_frames, max_frame_gap
                )
                report["n_windowed"] += 1
            else:
                chosen[idx] = solve_jaqaman(src[idx], tgt[idx], cost[idx], alternative_cost, auxiliary_cost)
    out = cands.loc[chosen].reset_index(drop=True)
    out.attrs["report"] = report
    return out
