"""LAP tracker kernels: costs, cut-offs, the Jaqaman LAP, segment linking, decomposition."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from vollseg_dask.config import load_config, save_config
from vollseg_dask.errors import ConfigError, TrackingError
from vollseg_dask.tracking import TrackerConfig, lap_track, link_frames, link_segments, trackmate_percentile
from vollseg_dask.tracking.costs import SMALLEST_COST, pair_costs, penalty_factor
from vollseg_dask.tracking.lap import candidate_components, solve_jaqaman
from vollseg_dask.tracking.segments import timed_candidates


def spots_table(rows: list[tuple[int, float, float]], **features: list[float]) -> pd.DataFrame:
    """Spots (t, x, y) with ids 0.. in the given order."""
    df = pd.DataFrame(rows, columns=["t", "x", "y"])
    df.insert(0, "spot_id", np.arange(len(df), dtype=np.int64))
    for name, values in features.items():
        df[name] = values
    return df


def edge_set(edges: pd.DataFrame) -> set[tuple[int, int, str]]:
    return set(zip(edges["source_spot_id"], edges["target_spot_id"], edges["kind"], strict=True))


# ---------------------------------------------------------------------------------------------
# Costs
# ---------------------------------------------------------------------------------------------


def test_penalty_formula_matches_trackmate_docs() -> None:
    a = np.array([[10.0, 2.0]])
    b = np.array([[20.0, 2.0]])
    w = np.array([1.0, 5.0])
    # 3 * 1 * 10 / 30 = 1 (one value the double of the other gives a penalty of 1), second feature equal.
    assert penalty_factor(a, b, w)[0] == pytest.approx(2.0)
    # Five times larger gives 2 (TrackMate documentation).
    assert penalty_factor(np.array([[1.0]]), np.array([[5.0]]), np.array([1.0]))[0] == pytest.approx(3.0)
    cost = pair_costs(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]]), a, b, w)
    assert cost[0] == pytest.approx(25.0 * 4.0)
    # Zero sum with different values cannot link.
    assert math.isinf(penalty_factor(np.array([[-1.0]]), np.array([[1.0]]), np.array([1.0]))[0])


def test_zero_distance_is_smallest_positive_cost() -> None:
    c = pair_costs(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 3.0]]))
    assert c[0] == SMALLEST_COST > 0
    links = link_frames(np.array([[1.0, 1.0]]), np.array([[1.0, 1.0]]), max_distance=1.0)
    assert links.source.tolist() == [0] and links.cost[0] == SMALLEST_COST


# ---------------------------------------------------------------------------------------------
# Frame-to-frame linking
# ---------------------------------------------------------------------------------------------


def test_link_frames_picks_global_optimum() -> None:
    # Greedy nearest neighbour would link a0-b0 (1.0) and leave a1 with b1 at 2.9;
    # the LAP minimises the sum of squares: a0-b1, a1-b0 (1.1^2 + 1.2^2 < 1 + 2.9^2).
    a = np.array([[0.0, 0.0], [2.0, 0.0]])
    b = np.array([[1.0, 0.0], [-1.1, 0.0]])
    links = link_frames(a, b, max_distance=5.0)
    assert sorted(zip(links.source.tolist(), links.target.tolist(), strict=True)) == [(0, 1), (1, 0)]


def test_linking_cutoff_is_strict() -> None:
    a = np.array([[0.0, 0.0]])
    b = np.array([[3.0, 4.0]])  # distance exactly 5, cost exactly 25
    assert link_frames(a, b, max_distance=5.0).source.size == 0
    assert link_frames(a, b, max_distance=5.0 + 1e-9).source.size == 1


def test_alternative_cost_refuses_a_competing_far_link() -> None:
    # a0 sits between b0 and b1; a1 far. The alternative cost (1.05 * max candidate cost) lets
    # the LAP leave a spot unlinked rather than take a very costly link.
    a = np.array([[0.0, 0.0], [10.0, 0.0]])
    b = np.array([[0.5, 0.0], [10.0, 9.0]])
    links = link_frames(a, b, max_distance=20.0)
    assert sorted(zip(links.source.tolist(), links.target.tolist(), strict=True)) == [(0, 0), (1, 1)]
    assert links.alternative_cost == pytest.approx(1.05 * max(81.0, 0.25, 9.5**2, 10.0**2 + 81.0))


def test_linking_feature_penalty_changes_the_choice() -> None:
    spots = spots_table(
        [(0, 0.0, 0.0), (1, -1.0, 0.0), (1, 1.2, 0.0)],
        MEAN_INTENSITY=[100.0, 300.0, 100.0],
    )
    plain = TrackerConfig(allow_gap_closing=False)
    assert edge_set(lap_track(spots, plain)) == {(0, 1, "link")}
    penal = TrackerConfig(allow_gap_closing=False, LINKING_FEATURE_PENALTIES={"MEAN_INTENSITY": 1.0})
    edges = lap_track(spots, penal)
    assert edge_set(edges) == {(0, 2, "link")}
    assert edges["cost"].iloc[0] == pytest.approx(1.44)
    # The penalty also pushes a pair beyond the cut-off: P = 2 doubles the distance.
    far = TrackerConfig(
        allow_gap_closing=False, linking_max_distance=1.5, LINKING_FEATURE_PENALTIES={"MEAN_INTENSITY": 1.0}
    )
    only = spots.iloc[[0, 1]].assign(MEAN_INTENSITY=[100.0, 200.0])
    assert lap_track(only, far).empty


# ---------------------------------------------------------------------------------------------
# Segment linking
# ---------------------------------------------------------------------------------------------


def _line(t0: int, t1: int, x0: float, y: float, dx: float = 1.0) -> list[tuple[int, float, float]]:
    return [(t, x0 + dx * (t - t0), y) for t in range(t0, t1 + 1)]


def test_gap_closing_and_max_frame_gap() -> None:
    rows = _line(0, 4, 0.0, 0.0) + _line(6, 9, 6.0, 0.0)  # frame 5 missing
    spots = spots_table(rows)
    edges = lap_track(
        spots, TrackerConfig(linking_max_distance=3.0, gap_closing_max_distance=3.0, max_frame_gap=2)
    )
    gap = edges[edges["kind"] == "gap"]
    assert list(zip(gap["source_spot_id"], gap["target_spot_id"], strict=True)) == [(4, 5)]
    assert gap["cost"].iloc[0] == pytest.approx(4.0)
    assert len(edges) == 8  # one connected track
    no_gap = lap_track(
        spots, TrackerConfig(linking_max_distance=3.0, gap_closing_max_distance=3.0, max_frame_gap=1)
    )
    assert "gap" not in set(no_gap["kind"])
    off = lap_track(spots, TrackerConfig(linking_max_distance=3.0, allow_gap_closing=False))
    assert len(off) == 7


def test_segment_cutoffs_are_inclusive() -> None:
    # End at (0,0) frame 0, start at (3,4) frame 2: distance exactly 5.
    ia, ib, cost = timed_candidates(
        np.array([[0.0, 0.0]]),
        np.array([0]),
        np.array([[3.0, 4.0]]),
        np.array([2]),
        min_dt=1,
        max_dt=2,
        max_distance=5.0,
    )
    assert ia.tolist() == [0] and cost.tolist() == [25.0]
    ia, _, _ = timed_candidates(
        np.array([[0.0, 0.0]]),
        np.array([0]),
        np.array([[3.0, 4.0]]),
        np.array([3]),
        min_dt=1,
        max_dt=2,
        max_distance=5.0,
    )
    assert ia.size == 0  # three frames later is beyond MAX_FRAME_GAP


def _division_movie() -> pd.DataFrame:
    # Mother track along y=0 over frames 0..8; a daughter appears at frame 4 at y=2 and runs to 8.
    rows = _line(0, 8, 0.0, 0.0) + _line(4, 8, 4.0, 2.0)
    return spots_table(rows)


def test_splitting_links_the_daughter_to_a_middle_spot() -> None:
    spots = _division_movie()
    cfg = TrackerConfig(linking_max_distance=1.5, allow_track_splitting=True, splitting_max_distance=3.0)
    edges = lap_track(spots, cfg)
    split = edges[edges["kind"] == "split"]
    # Mother spot at frame 3 (id 3, x=3) -> daughter start (id 9, frame 4): cost 1 + 4.
    assert list(zip(split["source_spot_id"], split["target_spot_id"], strict=True)) == [(3, 9)]
    assert split["cost"].iloc[0] == pytest.approx(5.0)
    off = lap_track(spots, cfg.model_copy(update={"allow_track_splitting": False}))
    assert "split" not in set(off["kind"])
    too_far = lap_track(spots, cfg.model_copy(update={"splitting_max_distance": 2.0}))
    assert "split" not in set(too_far["kind"])


def test_merging_links_an_end_to_a_middle_spot() -> None:
    # Time-reversed division: a side track ends at frame 4 next to the main track.
    rows = _line(0, 8, 0.0, 0.0) + _line(0, 4, 0.0, 2.0)
    spots = spots_table(rows)
    cfg = TrackerConfig(linking_max_distance=1.5, allow_track_merging=True, merging_max_distance=3.0)
    edges = lap_track(spots, cfg)
    merge = edges[edges["kind"] == "merge"]
    # End of the side track (id 13, frame 4, x=4) -> main track at frame 5 (id 5, x=5): cost 1 + 4.
    assert list(zip(merge["source_spot_id"], merge["target_spot_id"], strict=True)) == [(13, 5)]


def test_lone_spot_is_gap_closed_but_never_split_or_merged() -> None:
    # A lone spot (no frame link possible: its neighbours are 2 frames away or too far).
    rows = _line(0, 6, 0.0, 0.0) + [(4, 4.0, 2.0)]
    spots = spots_table(rows)
    cfg = TrackerConfig(
        linking_max_distance=1.5,
        allow_track_splitting=True,
        allow_track_merging=True,
        splitting_max_distance=3.0,
    )
    assert set(lap_track(spots, cfg)["kind"]) == {"link"}
    # The same spot continuing after a frame gap is gap-closed.
    rows2 = _line(0, 3, 0.0, 0.0) + [(5, 5.0, 0.0)]
    edges = lap_track(
        spots_table(rows2), TrackerConfig(linking_max_distance=1.5, gap_closing_max_distance=3.0)
    )
    assert (3, 4, "gap") in edge_set(edges)


def test_too_far_means_no_link() -> None:
    spots = spots_table([(0, 0.0, 0.0), (1, 20.0, 0.0), (3, 40.0, 0.0)])
    assert lap_track(spots, TrackerConfig()).empty


# ---------------------------------------------------------------------------------------------
# The LAP itself
# ---------------------------------------------------------------------------------------------


def _dense_reference(rows: np.ndarray, cols: np.ndarray, costs: np.ndarray, alt: float, aux: float) -> float:
    """Optimal total cost of the full Jaqaman matrix with a large blocking value (dense scipy)."""
    r_ids, r = np.unique(rows, return_inverse=True)
    c_ids, c = np.unique(cols, return_inverse=True)
    n, m = r_ids.size, c_ids.size
    block = 1e9
    full = np.full((n + m, m + n), block)
    full[r, c] = costs
    full[np.arange(n), m + np.arange(n)] = alt
    full[n + np.arange(m), np.arange(m)] = alt
    full[n + c, m + r] = aux
    i, j = linear_sum_assignment(full)
    return float(full[i, j].sum())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 10_000), st.integers(2, 14), st.integers(2, 14))
def test_sparse_solver_equals_dense_linear_sum_assignment(seed: int, n: int, m: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((n, m)) < 0.35
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return
    costs = rng.uniform(0.1, 10.0, rows.size)
    alt = 1.05 * float(costs.max())
    aux = float(costs.min())
    chosen = solve_jaqaman(rows, cols, costs, alt, aux)
    assert np.bincount(rows[chosen], minlength=n).max(initial=0) <= 1
    assert np.bincount(cols[chosen], minlength=m).max(initial=0) <= 1
    n_rows, n_cols = np.unique(rows).size, np.unique(cols).size
    total = (
        costs[chosen].sum()
        + aux * chosen.sum()
        + alt * (n_rows - chosen.sum())
        + alt * (n_cols - chosen.sum())
    )
    assert total == pytest.approx(_dense_reference(rows, cols, costs, alt, aux), rel=1e-12)


def _random_candidates(rng: np.random.Generator, n_spots: int, n_frames: int, extent: float) -> pd.DataFrame:
    """Segment candidates from a random cloud of segment ends/starts/middles."""
    from vollseg_dask.tracking.pipeline import segment_candidates

    t = rng.integers(0, n_frames, n_spots)
    spots = pd.DataFrame(
        {
            "spot_id": np.arange(n_spots),
            "t": t,
            "x": rng.uniform(0, extent, n_spots),
            "y": rng.uniform(0, extent, n_spots),
        }
    )
    role = rng.integers(0, 4, n_spots)  # 0 start, 1 end, 2 middle, 3 lone
    has_pred = (role == 1) | (role == 2)
    has_succ = (role == 0) | (role == 2)
    cfg = TrackerConfig(
        allow_track_splitting=True,
        allow_track_merging=True,
        gap_closing_max_distance=6.0,
        splitting_max_distance=6.0,
        merging_max_distance=6.0,
        max_frame_gap=3,
    )
    return segment_candidates(spots, has_pred, has_succ, cfg)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 100_000), st.integers(20, 160))
def test_per_component_solve_equals_global_solve(seed: int, n_spots: int) -> None:
    rng = np.random.default_rng(seed)
    cands = _random_candidates(rng, n_spots, n_frames=8, extent=40.0)
    if cands.empty:
        return
    per = link_segments(cands, per_component=True)
    glob = link_segments(cands, per_component=False)
    key = ["source_spot_id", "target_spot_id"]
    assert per[key].values.tolist() == glob[key].values.tolist()
    assert per.attrs["report"]["n_components"] >= 1
    # Components really are independent: each candidate's component has only its own rows/cols.
    comp = candidate_components(cands["source_spot_id"].to_numpy(), cands["target_spot_id"].to_numpy())
    by_src = pd.Series(comp).groupby(cands["source_spot_id"].to_numpy()).nunique()
    assert (by_src == 1).all()


def _random_table(rng: np.random.Generator, n_rows: int, n_cols: int, density: float) -> pd.DataFrame:
    mask = rng.random((n_rows, n_cols)) < density
    r, c = np.nonzero(mask)
    return pd.DataFrame(
        {
            "source_spot_id": r.astype(np.int64),
            "target_spot_id": 10_000 + c.astype(np.int64),
            "source_t": np.zeros(r.size, np.int64),
            "target_t": np.ones(r.size, np.int64),
            "cost": rng.lognormal(0.0, 1.5, r.size),  # wide spread: the alternative cost matters
            "kind": "gap",
        }
    )


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 100_000), st.integers(5, 60), st.integers(5, 60))
def test_per_component_equals_global_on_random_sparse_tables(seed: int, n_rows: int, n_cols: int) -> None:
    rng = np.random.default_rng(seed)
    cands = _random_table(rng, n_rows, n_cols, density=2.0 / max(n_rows, n_cols))
    if cands.empty:
        return
    per = link_segments(cands, per_component=True)
    glob = link_segments(cands, per_component=False)
    key = ["source_spot_id", "target_spot_id"]
    assert per[key].values.tolist() == glob[key].values.tolist()


def test_components_need_the_global_alternative_cost() -> None:
    """Solving each component with its own percentile is NOT the global solve: the test above
    would catch a driver that did so."""
    key = ["source_spot_id", "target_spot_id"]
    differs = 0
    for seed in range(10):
        cands = _random_table(np.random.default_rng(seed), 60, 60, density=1.0 / 60)
        glob = link_segments(cands, per_component=False)
        comp = candidate_components(cands["source_spot_id"].to_numpy(), cands["target_spot_id"].to_numpy())
        local = pd.concat([link_segments(cands[comp == k]) for k in np.unique(comp)])
        differs += set(map(tuple, local[key].values)) != set(map(tuple, glob[key].values))
    assert differs >= 5


def test_windowed_fallback_is_logged_and_exact_on_easy_input(caplog: pytest.LogCaptureFixture) -> None:
    # Well separated chains: the windowed solve must find the same links as the exact solve.
    rng = np.random.default_rng(3)
    cands = _random_candidates(rng, 300, n_frames=12, extent=400.0)
    exact = link_segments(cands)
    with caplog.at_level("WARNING"):
        windowed = link_segments(cands, max_component_size=2, window_frames=3, max_frame_gap=3)
    assert windowed.attrs["report"]["n_windowed"] > 0
    assert "windows" in caplog.text
    key = ["source_spot_id", "target_spot_id"]
    assert windowed[key].values.tolist() == exact[key].values.tolist()


def test_duplicate_spot_ids_across_frames_are_refused() -> None:
    cands = pd.DataFrame(
        {
            "source_spot_id": [1, 1],
            "target_spot_id": [2, 3],
            "source_t": [0, 1],
            "target_t": [1, 2],
            "cost": [1.0, 2.0],
            "kind": ["gap", "gap"],
        }
    )
    with pytest.raises(TrackingError, match="spot_id 1"):
        link_segments(cands)


# ---------------------------------------------------------------------------------------------
# Percentile and configuration
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 37])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1.0])
def test_trackmate_percentile_is_weibull(n: int, p: float) -> None:
    values = np.random.default_rng(n).uniform(0, 100, n)
    assert trackmate_percentile(values, p) == pytest.approx(np.percentile(values, 100 * p, method="weibull"))


def test_config_aliases_and_unknown_keys(tmp_path) -> None:
    a = TrackerConfig(LINKING_MAX_DISTANCE=7.0, MAX_FRAME_GAP=3, ALLOW_TRACK_SPLITTING=True)
    b = TrackerConfig(linking_max_distance=7.0, max_frame_gap=3, allow_track_splitting=True)
    assert a == b
    with pytest.raises(ValueError, match="LINKING_MAX_DISTANSE"):
        TrackerConfig(LINKING_MAX_DISTANSE=7.0)
    with pytest.raises(ValueError, match="penalty weight"):
        TrackerConfig(linking_feature_penalties={"QUALITY": -1.0})
    tm = TrackerConfig.from_trackmate(
        {
            "TRACKER_NAME": "SPARSE_LAP_TRACKER",
            "ALLOW_GAP_CLOSING": "false",
            "BLOCKING_VALUE": "Infinity",
            "CUTOFF_PERCENTILE": "0.8",
        },
        min_tracklet_length=3,
    )
    assert tm.allow_gap_closing is False and math.isinf(tm.blocking_value) and tm.cutoff_percentile == 0.8
    assert tm.to_trackmate()["CUTOFF_PERCENTILE"] == 0.8
    path = save_config(tm, tmp_path / "tracker.yaml")
    assert load_config(TrackerConfig, path) == tm
    (tmp_path / "bad.yaml").write_text("max_frame_gap: 0\n")
    with pytest.raises(ConfigError, match="max_frame_gap"):
        load_config(TrackerConfig, tmp_path / "bad.yaml")
