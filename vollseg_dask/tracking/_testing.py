"""Synthetic cell lineages with known truth, for the tracker's tests and benchmark.

A plain NumPy random walk: cells start on a jittered grid, take Gaussian steps, divide (two
daughters placed on either side of the mother along a random direction), and may be missed by the
"detector" for single frames. The truth is every spot's cell and every true edge (including the
edge over a missed frame and both mother -> daughter edges).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["SyntheticLineages", "random_lineages", "score_tracking"]


@dataclass
class SyntheticLineages:
    """Spots and true lineage of a synthetic movie.

    Attributes
    ----------
    spots : DataFrame
        ``spot_id`` (int64), ``t`` (int64), ``x``, ``y`` (, ``z``) (micrometres, with detection
        noise), ``cell`` (true cell id), ``MEAN_INTENSITY`` (a positive feature).
    edges : DataFrame
        True edges ``source_spot_id``, ``target_spot_id``, ``kind`` ("link", "gap" over missed
        frames, "split" for both mother -> daughter edges).
    mothers : ndarray of int64
        Spot IDs of the mothers (last spot before each division).
    """

    spots: pd.DataFrame
    edges: pd.DataFrame
    mothers: np.ndarray


def random_lineages(
    n_cells: int,
    n_frames: int,
    *,
    ndim: int = 3,
    spacing: float = 25.0,
    step: float = 0.5,
    division_rate: float = 0.02,
    min_cycle: int = 8,
    daughter_distance: float = 6.0,
    miss_rate: float = 0.0,
    death_rate: float = 0.0,
    noise: float = 0.0,
    seed: int = 0,
) -> SyntheticLineages:
    """Simulate ``n_cells`` founder cells over ``n_frames`` frames.

    Parameters
    ----------
    n_cells, n_frames : int
        Founders and frames.
    ndim : int
        2 or 3 spatial dimensions.
    spacing : float
        Grid spacing of the founders (micrometres).
    step : float
        Standard deviation of each coordinate's step per frame (micrometres).
    division_rate : float
        Probability per frame that a cell at least ``min_cycle`` frames old, detected in the two
        previous frames, divides (never into the last two frames: a daughter seen in one frame
        only is a lone spot, which TrackMate's splitting never links).
    min_cycle : int
        Frames between a cell's birth and its division.
    daughter_distance : float
        Distance between the two daughters at birth (micrometres).
    miss_rate : float
        Probability that a cell is not detected in a frame (never in its first two frames, never
        right before a division, never twice in a row).
    death_rate : float
        Probability per frame that a cell at least two frames old disappears for good (its track
        ends); ``death_rate == division_rate`` keeps the population about constant.
    noise : float
        Standard deviation of the detection noise per coordinate (micrometres).
    seed : int
        Random seed.
    """
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n_cells ** (1.0 / ndim)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * ndim, indexing="ij"), axis=-1).reshape(-1, ndim)[
        :n_cells
    ]
    pos = grid * spacing + rng.uniform(-0.1, 0.1, (n_cells, ndim)) * spacing
    cell = np.arange(n_cells, dtype=np.int64)
    age = rng.integers(0, min_cycle, n_cells)
    last_spot = np.full(n_cells, -1, np.int64)
    last_seen = np.full(n_cells, -1, np.int64)
    prev_seen = np.full(n_cells, -1, np.int64)  # the detection before last_seen
    parent_spot = np.full(n_cells, -1, np.int64)  # mother's spot for cells not yet seen
    next_cell = n_cells
    next_spot = 0
    spot_parts: list[pd.DataFrame] = []
    edge_parts: list[pd.DataFrame] = []
    mothers: list[np.ndarray] = []
    intensity = rng.uniform(80.0, 120.0, n_cells)
    for t in range(n_frames):
        if t > 0:
            if death_rate > 0:
                alive = ~((age >= 2) & (rng.random(cell.size) < death_rate))
                pos, cell, age, intensity = pos[alive], cell[alive], age[alive], intensity[alive]
                last_spot, last_seen, prev_seen = last_spot[alive], last_seen[alive], prev_seen[alive]
                parent_spot = parent_spot[alive]
            pos = pos + rng.normal(0.0, step, pos.shape)
            age = age + 1
            can = (age >= min_cycle) & (last_seen == t - 1) & (prev_seen == t - 2) & (t < n_frames - 2)
            divide = np.flatnonzero(can & (rng.random(cell.size) < division_rate))
            if divide.size:
                u = rng.normal(size=(divide.size, ndim))
                u /= np.linalg.norm(u, axis=1, keepdims=True)
                half = 0.5 * daughter_distance * u
                mothers.append(last_spot[divide].copy())
                new_pos = pos[divide] - half
                pos[divide] = pos[divide] + half
                n_new = divide.size
                parent_spot[divide] = last_spot[divide]
                pos = np.concatenate([pos, new_pos])
                cell[divide] = np.arange(next_cell, next_cell + n_new)
                cell = np.concatenate([cell, np.arange(next_cell + n_new, next_cell + 2 * n_new)])
                next_cell += 2 * n_new
                age[divide] = 0
                age = np.concatenate([age, np.zeros(n_new, age.dtype)])
                last_spot = np.concatenate([last_spot, np.full(n_new, -1, np.int64)])
                last_seen = np.concatenate([last_seen, np.full(n_new, -1, np.int64)])
                prev_seen[divide] = -1
                prev_seen = np.concatenate([prev_seen, np.full(n_new, -1, np.int64)])
                parent_spot = np.concatenate([parent_spot, mothers[-1]])
                intensity = np.concatenate([intensity, intensity[divide]])
        seen = np.ones(cell.size, dtype=bool)
        if miss_rate > 0 and t > 0:
            may_miss = (age >= 2) & (last_seen == t - 1)
            seen = ~(may_miss & (rng.random(cell.size) < miss_rate))
        idx = np.flatnonzero(seen)
        ids = np.arange(next_spot, next_spot + idx.size, dtype=np.int64)
        next_spot += idx.size
        obs = pos[idx] + (rng.normal(0.0, noise, (idx.size, ndim)) if noise > 0 else 0.0)
        frame = pd.DataFrame({"spot_id": ids, "t": np.full(idx.size, t, np.int64)})
        for k, c in enumerate(["x", "y", "z"][:ndim]):
            frame[c] = obs[:, k]
        frame["cell"] = cell[idx]
        frame["MEAN_INTENSITY"] = intensity[idx]
        spot_parts.append(frame)
        # True edges into this frame.
        born = parent_spot[idx] >= 0
        src = np.where(born, parent_spot[idx], last_spot[idx])
        has = src >= 0
        kind = np.where(born, "split", np.where(t - last_seen[idx] > 1, "gap", "link"))
        edge_parts.append(
            pd.DataFrame({"source_spot_id": src[has], "target_spot_id": ids[has], "kind": kind[has]})
        )
        last_spot[idx] = ids
        prev_seen[idx] = last_seen[idx]
        last_seen[idx] = t
        parent_spot[idx] = -1
    spots = pd.concat(spot_parts, ignore_index=True)
    edges = pd.concat(edge_parts, ignore_index=True)
    return SyntheticLineages(
        spots=spots,
        edges=edges,
        mothers=np.concatenate(mothers) if mothers else np.empty(0, np.int64),
    )


def score_tracking(truth: SyntheticLineages, edges: pd.DataFrame) -> dict[str, float]:
    """Link and division scores of predicted ``edges`` against the truth.

    Returns
    -------
    dict
        ``link_recall`` / ``link_precision`` (true edges found / predicted edges that are true),
        ``division_recall`` / ``division_precision`` (true mothers predicted with two successors /
        predicted mothers that are true), and the counts.
    """
    true = set(zip(truth.edges["source_spot_id"], truth.edges["target_spot_id"], strict=True))
    pred = set(zip(edges["source_spot_id"], edges["target_spot_id"], strict=True))
    hits = len(true & pred)
    outdeg = edges.groupby("source_spot_id").size()
    pred_mothers = set(outdeg[outdeg >= 2].index.tolist())
    true_mothers = set(truth.mothers.tolist())
    return {
        "link_recall": hits / max(len(true), 1),
        "link_precision": hits / max(len(pred), 1),
        "division_recall": len(true_mothers & pred_mothers) / max(len(true_mothers), 1),
        "division_precision": len(true_mothers & pred_mothers) / max(len(pred_mothers), 1),
        "n_true_edges": float(len(true)),
        "n_pred_edges": float(len(pred)),
        "n_true_divisions": float(len(true_mothers)),
        "n_pred_divisions": float(len(pred_mothers)),
    }
