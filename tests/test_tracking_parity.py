"""Golden test: our LAP tracker reproduces TrackMate's own edges on the laptrack fixtures.

The five XMLs were written by Fiji TrackMate 6.0.x on the FakeTracks image with the LAP tracker
(without / with gap closing, splitting, merging, splitting+merging); ``csv/`` holds TrackMate's
edge exports. Spots and tracker settings are read from each XML; the edges we compute must be
exactly TrackMate's, with the same costs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vollseg_dask.tracking import TrackerConfig, lap_track
from vollseg_dask.tracking._fixtures import read_trackmate_minimal

FIXTURES = [
    "trackmate_tracks_without_gap_closing",
    "trackmate_tracks_with_gap_closing",
    "trackmate_tracks_with_splitting",
    "trackmate_tracks_with_merging",
    "trackmate_tracks_with_splitting_merging",
]


def _load(shared_data: Path, name: str):
    folder = shared_data / "trackmate_xml" / "laptrack"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    tm = read_trackmate_minimal(folder / f"{name}.xml")
    csv = pd.read_csv(folder / "csv" / f"{name}_edges.csv")
    return tm, csv


@pytest.mark.realdata
@pytest.mark.parametrize("name", FIXTURES)
def test_edges_equal_trackmate(shared_data: Path, name: str) -> None:
    tm, csv = _load(shared_data, name)
    config = TrackerConfig.from_trackmate(tm.settings)
    assert config.linking_max_distance == 15.0 and config.max_frame_gap == 2
    edges = lap_track(tm.spots[tm.spots["visible"]], config)

    ours = set(zip(edges["source_spot_id"], edges["target_spot_id"], strict=True))
    xml_edges = set(zip(tm.edges["source_spot_id"], tm.edges["target_spot_id"], strict=True))
    csv_edges = set(zip(csv["spot_source_id"], csv["spot_target_id"], strict=True))
    assert xml_edges == csv_edges
    assert ours == xml_edges, f"missing {sorted(xml_edges - ours)}, extra {sorted(ours - xml_edges)}"

    merged = edges.merge(tm.edges, on=["source_spot_id", "target_spot_id"], suffixes=("", "_tm"))
    np.testing.assert_allclose(merged["cost"], merged["cost_tm"], rtol=1e-12, atol=0)


@pytest.mark.realdata
def test_fixture_kinds(shared_data: Path) -> None:
    """The fixtures exercise every kind of link, and settings that are off stay off."""
    kinds: dict[str, dict[str, int]] = {}
    for name in FIXTURES:
        tm, _ = _load(shared_data, name)
        edges = lap_track(tm.spots, TrackerConfig.from_trackmate(tm.settings))
        kinds[name] = edges["kind"].value_counts().to_dict()
    assert set(kinds["trackmate_tracks_without_gap_closing"]) == {"link"}
    assert kinds["trackmate_tracks_with_gap_closing"]["gap"] == 1
    assert kinds["trackmate_tracks_with_splitting"]["split"] == 2
    assert "merge" not in kinds["trackmate_tracks_with_splitting"]
    assert kinds["trackmate_tracks_with_merging"]["merge"] == 1
    assert kinds["trackmate_tracks_with_splitting_merging"] == {"link": 176, "split": 2, "merge": 1, "gap": 1}


@pytest.mark.realdata
def test_lower_percentile_would_break_parity(shared_data: Path) -> None:
    """Why the percentile estimator matters: NumPy's 'lower' (laptrack's default) refuses a merge
    TrackMate made, while ours keeps it."""
    from vollseg_dask.tracking import segments

    tm, _ = _load(shared_data, "trackmate_tracks_with_merging")
    config = TrackerConfig.from_trackmate(tm.settings)
    ref = set(zip(tm.edges["source_spot_id"], tm.edges["target_spot_id"], strict=True))
    original = segments.trackmate_percentile
    try:
        segments.trackmate_percentile = lambda v, p: float(np.percentile(v, 100 * p, method="lower"))
        edges = lap_track(tm.spots, config)
    finally:
        segments.trackmate_percentile = original
    assert set(zip(edges["source_spot_id"], edges["target_spot_id"], strict=True)) != ref
