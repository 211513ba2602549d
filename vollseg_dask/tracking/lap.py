"""Sparse linear assignment in Jaqaman's block form (the LAP of both tracker steps).

Given ``k`` candidate assignments ``(row r_i, column c_i, cost w_i)`` between R "sources" and C
"targets", the square ``(R + C) x (C + R)`` matrix of Jaqaman et al. (2008) is::

                 targets (C)              no-link of a source (R)
    sources  [ candidate costs w        | alternative on the diagonal ]
    aux (C)  [ alternative on diagonal  | transposed candidates = auxiliary cost ]

Every source either takes one candidate or its own no-link cell; every target is either taken or
pays its no-link cell; the lower-right block (the transposed candidate pattern, every entry the
auxiliary cost) lets the auxiliary rows of taken targets pair with the auxiliary columns of linking
sources. A chosen link therefore costs ``w + auxiliary`` against ``2 * alternative`` for leaving both
ends free. Only the stored entries exist (forbidden = never stored), so the matrix is solved with
SciPy's sparse Jonker-Volgenant (LAPJVsp), ``min_weight_full_bipartite_matching``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching

from vollseg_dask.errors import TrackingError

__all__ = ["solve_jaqaman", "candidate_components"]


def _compress(values: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.intp]]:
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq, inverse.astype(np.intp)


def solve_jaqaman(
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    costs: NDArray[np.float64],
    alternative_cost: float,
    auxiliary_cost: float,
) -> NDArray[np.bool_]:
    """Solve one Jaqaman LAP and say which candidates are chosen.

    Parameters
    ----------
    rows, cols : ndarray of int, shape (k,)
        Source and target identifiers of each candidate (any integers; sources and targets are
        separate name spaces). A (row, col) pair may appear once only.
    costs : ndarray of float, shape (k,)
        Candidate costs, finite and > 0.
    alternative_cost : float
        No-link cost of every source and every target (> 0).
    auxiliary_cost : float
        Value of every entry of the lower-right block (> 0).

    Returns
    -------
    ndarray of bool, shape (k,)
        True where the candidate is an assignment of the optimal solution. Each row and each column
        is chosen at most once.
    """
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    costs = np.asarray(costs, dtype=np.float64)
    k = costs.shape[0]
    if rows.shape != (k,) or cols.shape != (k,):
        raise TrackingError(
            f"rows {rows.shape}, cols {cols.shape} and costs {costs.shape} must have one length"
        )
    if k == 0:
        return np.zeros(0, dtype=bool)
    if not (np.isfinite(costs).all() and (costs > 0).all()):
        bad = costs[~(np.isfinite(costs) & (costs > 0))][0]
        raise TrackingError(f"candidate costs must be finite and > 0, found {bad!r}")
    for name, value in (("alternative_cost", alternative_cost), ("auxiliary_cost", auxiliary_cost)):
        if not (np.isfinite(value) and value > 0):
            raise TrackingError(f"{name} must be finite and > 0, got {value!r}")
    _, r = _compress(rows)
    _, c = _compress(cols)
    n_r = int(r.max()) + 1
    n_c = int(c.max()) + 1
    if np.unique(r.astype(np.int64) * n_c + c).size != k:
        raise TrackingError("duplicate (source, target) candidates given to the LAP")
    ar = np.arange(n_r, dtype=np.intp)
    ac = np.arange(n_c, dtype=np.intp)
    i = np.concatenate([r, ar, n_r + ac, n_r + c])
    j = np.concatenate([c, n_c + ar, ac, n_c + r])
    w = np.concatenate(
        [
            costs,
            np.full(n_r, alternative_cost),
            np.full(n_c, alternative_cost),
            np.full(k, auxiliary_cost),
        ]
    )
    size = n_r + n_c
    matrix = coo_matrix((w, (i, j)), shape=(size, size)).tocsr()
    row_ind, col_ind = min_weight_full_bipartite_matching(matrix)
    assigned = np.full(size, -1, dtype=np.intp)
    assigned[row_ind] = col_ind
    return assigned[r] == c


def candidate_components(rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.intp]:
    """Connected component of every candidate in the bipartite source/target graph.

    Parameters
    ----------
    rows, cols : ndarray of int, shape (k,)
        Source and target identifiers (separate name spaces).

    Returns
    -------
    ndarray of intp, shape (k,)
        Component label of each candidate, numbered by first appearance in the input order.
        With one shared alternative and auxiliary cost, the Jaqaman LAP is block-diagonal over
        these components, so solving them one by one gives the global optimum.
    """
    k = len(rows)
    if k == 0:
        return np.zeros(0, dtype=np.intp)
    _, r = _compress(np.asarray(rows))
    _, c = _compress(np.asarray(cols))
    n_r = int(r.max()) + 1
    n_c = int(c.max()) + 1
    graph = coo_matrix((np.ones(k), (r, n_r + c)), shape=(n_r + n_c, n_r + n_c))
    _, labels = connected_components(graph, directed=False)
    lab = labels[r]
    # Renumber by first appearance so the labels do not depend on identifier values.
    _, first = np.unique(lab, return_index=True)
    order = np.argsort(first, kind="stable")
    remap = np.empty(order.size, dtype=np.intp)
    remap[order] = np.arange(order.size)
    uniq = np.unique(lab)
    return remap[np.searchsorted(uniq, lab)]
