"""The out-of-core tracking driver: parity, streaming == in-memory, structure, filters, store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vollseg_dask.config import load_config
from vollseg_dask.errors import StoreExistsError, TrackingError
from vollseg_dask.io.tracks import derive_lineage, read_tracks, summarize_tracks
from vollseg_dask.tracking import TrackerConfig, lap_track, track
from vollseg_dask.tracking._testing import random_lineages, score_tracking

FIXTURES = [
    "trackmate_tracks_without_gap_closing",
    "trackmate_tracks_with_gap_closing",
    "trackmate_tracks_with_splitting",
    "trackmate_tracks_with_merging",
    "trackmate_tracks_with_splitting_merging",
]

DIVISION_CONFIG = TrackerConfig(
    linking_max_distance=5.0,
    gap_closing_max_distance=5.0,
    max_frame_gap=2,
    allow_track_splitting=True,
    splitting_max_distance=6.0,
)


def edge_keys(edges: pd.DataFrame) -> list[tuple[int, int, str]]:
    return sorted(
        zip(
            edges["source_spot_id"].tolist(),
            edges["target_spot_id"].tolist(),
            edges["kind"].astype(str).tolist(),
            strict=True,
        )
    )


def write_partitioned(df: pd.DataFrame, root: Path, parts_per_frame: int = 1, seed: int = 0) -> Path:
    """A hive dataset ``root/t=<int>/part-<k>.parquet`` with rows shuffled across part files."""
    rng = np.random.default_rng(seed)
    for t, frame in df.groupby("t"):
        folder = root / f"t={int(t)}"
        folder.mkdir(parents=True)
        frame = frame.drop(columns="t").sample(frac=1.0, random_state=int(rng.integers(1 << 30)))
        for k, chunk in enumerate(np.array_split(np.arange(len(frame)), parts_per_frame)):
            frame.iloc[chunk].to_parquet(folder / f"part-{k}.parquet", index=False)
    (root / "_manifest.json").write_text("{}")  # ignored by the reader, like the cell table's
    return root


def check_store_consistency(path: Path) -> None:
    """Track and tracklet IDs and statistics equal the data model's own derivation from the edges."""
    data = read_tracks(path)
    spots, edges = data.spots, data.edges
    track_id, tracklet_id, tracklets = derive_lineage(
        spots["spot_id"].to_numpy(), spots["t"].to_numpy(), edges
    )
    np.testing.assert_array_equal(track_id, spots["track_id"].to_numpy())
    np.testing.assert_array_equal(tracklet_id, spots["tracklet_id"].to_numpy())
    pd.testing.assert_frame_equal(tracklets, data.tracklets, check_dtype=False)
    expected = summarize_tracks(spots, edges, data.frame_interval)
    pd.testing.assert_frame_equal(expected, data.tracks, check_dtype=False, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# TrackMate parity through the driver
# ---------------------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize("name", FIXTURES)
def test_driver_reproduces_trackmate(shared_data: Path, tmp_path: Path, name: str) -> None:
    from vollseg_dask.tracking._fixtures import read_trackmate_minimal

    xml = shared_data / "trackmate_xml" / "laptrack" / f"{name}.xml"
    if not xml.is_file():
        pytest.skip(f"{xml} is absent")
    tm = read_trackmate_minimal(xml)
    config = TrackerConfig.from_trackmate(tm.settings, window_frames=4)
    result = track(tm.spots, tmp_path / "tracks", config, progress=False)
    data = read_tracks(result.path)
    ours = set(zip(data.edges["source_spot_id"], data.edges["target_spot_id"], strict=True))
    assert ours == set(zip(tm.edges["source_spot_id"], tm.edges["target_spot_id"], strict=True))
    assert result.n_spots == len(tm.spots)
    check_store_consistency(result.path)


# ---------------------------------------------------------------------------------------------
# Streaming equals in-memory
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lineage_movie() -> pd.DataFrame:
    syn = random_lineages(25, 30, miss_rate=0.03, noise=0.2, seed=11)
    return syn.spots.drop(columns="cell")


@pytest.mark.parametrize("window", [1, 3, 64])
def test_streaming_equals_in_memory(lineage_movie: pd.DataFrame, tmp_path: Path, window: int) -> None:
    config = DIVISION_CONFIG.model_copy(update={"allow_track_merging": True, "window_frames": window})
    reference = lap_track(lineage_movie, config)
    assert {"gap", "split"} <= set(reference["kind"])
    result = track(lineage_movie, tmp_path / "t", config, progress=False)
    got = read_tracks(result.path).edges
    assert edge_keys(got) == edge_keys(reference)
    merged = got.merge(reference, on=["source_spot_id", "target_spot_id"])
    np.testing.assert_array_equal(merged["cost_x"], merged["cost_y"])
    check_store_consistency(result.path)


def test_edges_written_in_row_groups(
    lineage_movie: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edges stream to disk in row groups (7 rows here); the file reads back whole and typed."""
    import pyarrow.parquet as pq

    from vollseg_dask.tracking import driver

    monkeypatch.setattr(driver._EdgeStream.__init__, "__defaults__", (7,))
    result = track(lineage_movie, tmp_path / "t", DIVISION_CONFIG, progress=False)
    assert pq.ParquetFile(result.path / "edges.parquet").num_row_groups > 10
    got = read_tracks(result.path).edges
    assert edge_keys(got) == edge_keys(lap_track(lineage_movie, DIVISION_CONFIG))
    assert sum(result.n_edges.values()) == len(got)
    assert str(got["kind"].dtype) in {"object", "str", "string"} and got["source_spot_id"].dtype == np.int64


def test_partitioned_parquet_equals_dataframe(lineage_movie: pd.DataFrame, tmp_path: Path) -> None:
    config = DIVISION_CONFIG.model_copy(update={"window_frames": 4})
    a = track(lineage_movie, tmp_path / "a", config, progress=False)
    root = write_partitioned(lineage_movie, tmp_path / "table", parts_per_frame=3)
    b = track(root, tmp_path / "b", config, progress=False)
    da, db = read_tracks(a.path), read_tracks(b.path)
    pd.testing.assert_frame_equal(da.edges, db.edges)
    pd.testing.assert_frame_equal(da.spots, db.spots)
    pd.testing.assert_frame_equal(da.tracks, db.tracks)
    pd.testing.assert_frame_equal(da.tracklets, db.tracklets)


def test_missing_frames_and_empty_frames(tmp_path: Path) -> None:
    # Frame 3 holds no spot at all, frame 5 holds only spots that the filter drops.
    rows = [(t, float(t), 0.0, 100.0) for t in range(8) if t != 3]
    rows += [(5, 30.0, 30.0, 1.0)]
    df = pd.DataFrame(rows, columns=["t", "x", "y", "volume_um3"])
    cfg = TrackerConfig(
        linking_max_distance=2.0, gap_closing_max_distance=3.0, max_frame_gap=2, min_volume=10.0
    )
    result = track(df, tmp_path / "o", cfg, progress=False)
    assert result.n_spots_dropped == 1
    assert edge_keys(read_tracks(result.path).edges) == edge_keys(
        lap_track(df[df["volume_um3"] >= 10].assign(spot_id=lambda d: d["t"].to_numpy(np.int64) << 32), cfg)
    )
    assert result.n_tracks == 1 and result.n_edges["gap"] == 1


# ---------------------------------------------------------------------------------------------
# Structure: tracklets, divisions, minimum tracklet length
# ---------------------------------------------------------------------------------------------


def _division_with_branches(short_len: int, long_len: int = 6) -> pd.DataFrame:
    """A mother (frames 0..4, x = t) divides after frame 4 into a daughter continuing along y=0 for
    ``long_len`` frames and one along y=3 for ``short_len`` frames."""
    rows = [(t, float(t), 0.0) for t in range(0, 5)]
    rows += [(t, float(t), 0.0) for t in range(5, 5 + long_len)]
    rows += [(t, float(t), 3.0) for t in range(5, 5 + short_len)]
    return pd.DataFrame(rows, columns=["t", "x", "y"])


CFG_SPLIT = TrackerConfig(
    linking_max_distance=2.0, allow_track_splitting=True, splitting_max_distance=4.0, allow_gap_closing=False
)


def test_division_structure(tmp_path: Path) -> None:
    result = track(_division_with_branches(short_len=4), tmp_path / "o", CFG_SPLIT, progress=False)
    data = read_tracks(result.path)
    assert result.n_tracks == 1 and result.n_dividing_tracks == 1 and result.n_tracklets == 3
    tl = data.tracklets.sort_values("tracklet_id")
    assert tl["parent_tracklet_id"].tolist() == [-1, 0, 0]
    assert tl["n_spots"].tolist() == [5, 6, 4] or tl["n_spots"].tolist() == [5, 4, 6]
    tracks = data.tracks
    assert tracks["n_divisions"].tolist() == [1] and tracks["dividing"].tolist() == [True]
    assert (
        tracks["n_spots"].tolist() == [15]
        and tracks["start_t"].tolist() == [0]
        and tracks["end_t"].tolist() == [10]
    )
    check_store_consistency(result.path)


@pytest.mark.parametrize(
    ("short_len", "n", "removed"), [(2, 2, True), (2, 1, False), (3, 3, True), (3, 2, False), (2, 0, False)]
)
def test_min_tracklet_length_removes_short_branches(
    tmp_path: Path, short_len: int, n: int, removed: bool
) -> None:
    """A daughter present in k frames after the division spans k frames (end_t - t_mother = k);
    it is removed when k <= N."""
    cfg = CFG_SPLIT.model_copy(update={"min_tracklet_length": n})
    result = track(_division_with_branches(short_len=short_len), tmp_path / "o", cfg, progress=False)
    data = read_tracks(result.path)
    branch = data.spots[data.spots["y"] == 3.0]
    assert result.n_removed_branches == int(removed)
    if removed:
        assert (branch["track_id"] == -1).all() and (branch["tracklet_id"] == -1).all()
        assert not data.edges["target_spot_id"].isin(branch["spot_id"]).any()
        assert set(data.edges["kind"]) == {"link"}
        # The mother and the surviving daughter are now one tracklet.
        assert result.n_tracklets == 1 and result.n_dividing_tracks == 0
        assert data.tracks["n_spots"].tolist() == [11]
    else:
        assert (branch["track_id"] == 0).all()
        assert result.n_tracklets == 3 and result.n_dividing_tracks == 1
    check_store_consistency(result.path)


def test_min_tracklet_length_can_remove_both_daughters(tmp_path: Path) -> None:
    df = _division_with_branches(short_len=2, long_len=2)
    cfg = CFG_SPLIT.model_copy(update={"min_tracklet_length": 2})
    result = track(df, tmp_path / "o", cfg, progress=False)
    data = read_tracks(result.path)
    assert result.n_removed_branches == 2
    assert (data.spots.loc[data.spots["t"] >= 5, "track_id"] == -1).all()
    assert data.tracks["n_spots"].tolist() == [5] and data.tracks["end_t"].tolist() == [4]
    check_store_consistency(result.path)


# ---------------------------------------------------------------------------------------------
# Synthetic lineages with known divisions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_synthetic_lineages_are_recovered(tmp_path: Path, seed: int) -> None:
    syn = random_lineages(40, 40, noise=0.1, seed=seed)
    result = track(syn.spots.drop(columns="cell"), tmp_path / "o", DIVISION_CONFIG, progress=False)
    scores = score_tracking(syn, read_tracks(result.path).edges)
    assert scores["n_true_divisions"] >= 20
    assert scores["division_recall"] >= 0.95 and scores["division_precision"] >= 0.95, scores
    assert scores["link_recall"] >= 0.99 and scores["link_precision"] >= 0.99, scores


def test_synthetic_lineages_with_missed_detections(tmp_path: Path) -> None:
    syn = random_lineages(40, 40, noise=0.1, miss_rate=0.02, seed=4)
    assert (syn.edges["kind"] == "gap").sum() >= 20
    result = track(syn.spots.drop(columns="cell"), tmp_path / "o", DIVISION_CONFIG, progress=False)
    scores = score_tracking(syn, read_tracks(result.path).edges)
    assert scores["link_recall"] >= 0.99 and scores["link_precision"] >= 0.99, scores
    # A division next to a missed detection can lose its daughter to a gap closing.
    assert scores["division_recall"] >= 0.85 and scores["division_precision"] >= 0.85, scores


# ---------------------------------------------------------------------------------------------
# Inputs, filters, outputs, errors
# ---------------------------------------------------------------------------------------------


def test_ids_labels_features_and_2d(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "t": [0, 0, 1, 1],
            "x": [0.0, 10.0, 1.0, 11.0],
            "y": [0.0, 0.0, 0.0, 0.0],
            "label": [3, 7, 7, 3],
            "area": [5.0, 6.0, 7.0, 8.0],
        }
    )
    result = track(df, tmp_path / "o", TrackerConfig(linking_max_distance=2.0), progress=False)
    data = read_tracks(result.path)
    s = data.spots.sort_values(["t", "label"])
    assert s["spot_id"].tolist() == [3, 7, (1 << 32) + 3, (1 << 32) + 7]
    assert (s["z"] == 0).all() and data.ndim == 2 and "area" in s.columns
    assert edge_keys(data.edges) == [(3, (1 << 32) + 7, "link"), (7, (1 << 32) + 3, "link")]
    # the record holds the units used: a CSV names no image, so 1 frame and µm
    assert load_config(TrackerConfig, result.path / "tracker_config.yaml") == TrackerConfig(
        linking_max_distance=2.0, frame_interval=1.0, time_units="frame", spatial_units="µm"
    )


def test_spot_filters(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "t": [0, 0, 0, 1, 1, 1],
            "x": [0.0, 10.0, 20.0, 0.5, 10.5, 20.5],
            "y": 0.0,
            "z": 0.0,
            "volume_um3": [50.0, 5.0, 50.0, 50.0, 5.0, 50.0],
            "mean_intensity": [10.0, 10.0, 99.0, 10.0, 10.0, 99.0],
            "inside_tissue": [True, True, True, True, True, False],
        }
    )
    cfg = TrackerConfig(
        min_volume=10.0, max_intensity=50.0, inside_tissue_only=True, linking_max_distance=2.0
    )
    result = track(df, tmp_path / "o", cfg, progress=False)
    spots = read_tracks(result.path).spots
    assert sorted(spots["x"].tolist()) == [0.0, 0.5] and result.n_spots_dropped == 4
    with pytest.raises(TrackingError, match="inside_tissue"):
        track(df.drop(columns="inside_tissue"), tmp_path / "p", cfg, progress=False)


def test_errors_leave_nothing_behind(tmp_path: Path) -> None:
    df = pd.DataFrame({"t": [0, 1], "x": [0.0, np.nan], "y": [0.0, 0.0]})
    with pytest.raises(TrackingError, match="non-finite position"):
        track(df, tmp_path / "o", TrackerConfig(), progress=False)
    assert list(tmp_path.iterdir()) == []
    ok = pd.DataFrame({"t": [0, 1], "x": [0.0, 1.0], "y": [0.0, 0.0]})
    track(ok, tmp_path / "o", TrackerConfig(), progress=False)
    with pytest.raises(StoreExistsError):
        track(ok, tmp_path / "o", TrackerConfig(), progress=False)
    track(ok, tmp_path / "o", TrackerConfig(), overwrite=True, progress=False)
    with pytest.raises(TrackingError, match="QUALITY"):
        track(ok, tmp_path / "q", TrackerConfig(linking_feature_penalties={"QUALITY": 1.0}), progress=False)
    dup = pd.DataFrame({"t": [0, 0], "x": [0.0, 1.0], "y": [0.0, 0.0], "spot_id": [4, 4]})
    with pytest.raises(TrackingError, match="spot_id 4"):
        track(dup, tmp_path / "d", TrackerConfig(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
