"""The TRACKS_DIR data model: write/read round trip, laziness, atomicity, lineage helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from vollseg_dask.errors import InvalidDataError, StoreExistsError, StoreNotFoundError
from vollseg_dask.io.tracks import (
    TrackData,
    TracksWriter,
    classify_edges,
    derive_lineage,
    read_tracks,
    summarize_tracks,
    with_lineage,
    write_tracks,
)


def _data() -> TrackData:
    # A (t0-2) divides into B (t3-4) and C (t3-4); D has a gap t0 -> t2; E unlinked
    spots = pd.DataFrame({
        "spot_id": [10, 11, 12, 13, 14, 15, 16, 20, 21, 30],
        "t": [0, 1, 2, 3, 4, 3, 4, 0, 2, 1],
        "x": [0.0, 1.0, 2.0, 3.0, 4.0, 2.0, 2.0, 10.0, 13.0, 50.0],
        "y": [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 4.0, 50.0],
        "z": 0.0,
        "label": [1, 1, 1, 1, 1, 2, 2, 3, 3, 4],
    })
    spots["volume_um3"] = np.linspace(10, 20, len(spots))
    spots["inside_tissue"] = [True] * 9 + [False]
    edges = pd.DataFrame({"source_spot_id": [10, 11, 12, 13, 12, 15, 20],
                          "target_spot_id": [11, 12, 13, 14, 15, 16, 21],
                          "cost": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 25.0]})
    return with_lineage(TrackData(spots=spots, edges=edges, frame_interval=2.0, ndim=2,
                                  tracker_config={"linking_max_distance": 5.0}))


def test_lineage_helpers() -> None:
    d = _data()
    s = d.spots.set_index("spot_id")
    assert s.loc[[10, 11, 12, 13, 14, 15, 16], "track_id"].nunique() == 1
    assert s.loc[30, "track_id"] == -1 and s.loc[30, "tracklet_id"] == -1
    tl = d.tracklets.set_index("tracklet_id")
    a, b, c, dd = (int(s.loc[i, "tracklet_id"]) for i in (10, 13, 15, 20))
    assert len({a, b, c, dd}) == 4 and s.loc[21, "tracklet_id"] == dd  # gap continues the tracklet
    assert tl.loc[b, "parent_tracklet_id"] == a and tl.loc[c, "parent_tracklet_id"] == a
    assert tl.loc[a, "parent_tracklet_id"] == -1 and tl.loc[dd, "n_spots"] == 2
    kinds = dict(zip(zip(d.edges["source_spot_id"], d.edges["target_spot_id"], strict=True),
                     classify_edges(d.spots["spot_id"], d.spots["t"], d.edges), strict=True))
    assert kinds[(12, 13)] == kinds[(12, 15)] == "split" and kinds[(20, 21)] == "gap" and kinds[(10, 11)] == "link"
    tr = d.tracks.set_index("track_id").loc[int(s.loc[20, "track_id"])]
    assert tr["duration"] == 4.0 and tr["displacement"] == 5.0 and tr["total_distance"] == 5.0
    assert tr["mean_speed"] == pytest.approx(5.0 / 4.0) and tr["n_divisions"] == 0
    assert d.tracks.set_index("track_id").loc[int(s.loc[10, "track_id"]), "n_divisions"] == 1
    with pytest.raises(InvalidDataError, match="does not go forward in time"):
        derive_lineage(np.array([1, 2]), np.array([1, 0]), pd.DataFrame({"source_spot_id": [1], "target_spot_id": [2]}))
    with pytest.raises(InvalidDataError, match="spot_id 5 that is not in the spot table"):
        derive_lineage(np.array([1, 2]), np.array([0, 1]), pd.DataFrame({"source_spot_id": [1], "target_spot_id": [5]}))
    assert summarize_tracks(d.spots[d.spots["track_id"] < 0], d.edges.iloc[:0]).empty


def test_round_trip_and_layout(tmp_path: Path) -> None:
    d = _data()
    root = write_tracks(tmp_path / "tracks", d)
    assert sorted(p.name for p in root.iterdir()) == ["edges.parquet", "spots", "tracker_config.yaml",
                                                      "tracklets.parquet", "tracks.parquet"]
    assert sorted(p.name for p in (root / "spots").iterdir()) == [f"t={t}" for t in range(5)]
    # an independent reader sees a hive-partitioned dataset with the fixed schema
    dset = ds.dataset(root / "spots", format="parquet", partitioning="hive")
    table = dset.to_table().to_pandas()
    assert len(table) == 10 and set(table["t"].astype(int)) == set(range(5))
    schema = pq.read_schema(next((root / "spots" / "t=0").iterdir()))
    assert str(schema.field("spot_id").type) == "int64" and str(schema.field("x").type) == "double"
    assert "t" not in schema.names
    back = read_tracks(root)
    pd.testing.assert_frame_equal(back.spots, d.load_spots())
    pd.testing.assert_frame_equal(back.edges, d.edges)
    pd.testing.assert_frame_equal(back.tracks, d.tracks)
    pd.testing.assert_frame_equal(back.tracklets, d.tracklets)
    assert (back.frame_interval, back.ndim, back.spatial_units, back.time_units) == (2.0, 2, "µm", "sec")
    assert back.tracker_config == {"linking_max_distance": 5.0}
    assert back.spots["t"].dtype == np.int32 and back.spots["inside_tissue"].dtype == bool


def test_lazy_frames_and_columns(tmp_path: Path) -> None:
    write_tracks(tmp_path / "tracks", _data())
    lazy = read_tracks(tmp_path / "tracks", lazy=True)
    assert lazy.is_lazy and lazy.frames() == [0, 1, 2, 3, 4]
    assert lazy.spot_columns()[:8] == ["spot_id", "t", "x", "y", "z", "label", "track_id", "tracklet_id"]
    frames = list(lazy.iter_frames(["spot_id", "x"]))
    assert [t for t, _ in frames] == [0, 1, 2, 3, 4]
    assert list(frames[0][1].columns) == ["t", "spot_id", "x"]
    assert frames[0][1]["spot_id"].tolist() == [10, 20]
    pd.testing.assert_frame_equal(lazy.materialize().spots, read_tracks(tmp_path / "tracks").spots)


def test_atomic_and_overwrite(tmp_path: Path) -> None:
    d = _data()
    target = tmp_path / "tracks"
    write_tracks(target, d)
    with pytest.raises(StoreExistsError):
        write_tracks(target, d)
    # a failure mid-way leaves the previous folder untouched and no temporary folder behind
    with pytest.raises(RuntimeError, match="boom"), TracksWriter(target, overwrite=True) as w:
        w.write_spots_frame(0, d.spots[d.spots["t"] == 0])
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tracks"]
    assert len(read_tracks(target).spots) == 10
    # overwrite from the lazy view of the same folder
    write_tracks(target, read_tracks(target, lazy=True), overwrite=True)
    assert len(read_tracks(target).spots) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tracks"]


def test_validation_errors(tmp_path: Path) -> None:
    d = _data()
    with pytest.raises(InvalidDataError, match="lacks required column"):
        TrackData(spots=d.spots.drop(columns="x"), edges=d.edges)
    with pytest.raises(InvalidDataError, match="unknown value"):
        TrackData(spots=d.spots, edges=d.edges.assign(kind="jump"))
    with pytest.raises(InvalidDataError, match="spot_id 10 appears more than once"):
        write_tracks(tmp_path / "x", TrackData(spots=pd.concat([d.spots, d.spots.iloc[:1]]), edges=d.edges))
    with pytest.raises(InvalidDataError, match="frame_interval"):
        TrackData(spots=d.spots, frame_interval=0)
    with pytest.raises(InvalidDataError, match="t=3 hold rows with t=4"), TracksWriter(tmp_path / "y") as w:
        w.write_spots_frame(3, d.spots[d.spots["t"] >= 3])
    with pytest.raises(StoreNotFoundError, match="missing"):
        (tmp_path / "z").mkdir()
        read_tracks(tmp_path / "z")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z"]


def test_streamed_edges_equal_whole_table(tmp_path: Path) -> None:
    """``write_edges_chunk`` appends one row group per chunk; the store reads back exactly as the
    one written with ``write_edges`` (same table, same metadata), empty chunks skipped."""
    d = _data()
    whole = write_tracks(tmp_path / "whole", d)
    edges = d.edges.assign(weight=np.arange(len(d.edges), dtype=np.float64))  # an edge feature too
    chunks = [edges.iloc[:3], edges.iloc[3:3], edges.iloc[3:4], edges.iloc[4:]]
    with TracksWriter(tmp_path / "streamed", spatial_units=d.spatial_units, time_units=d.time_units,
                      frame_interval=d.frame_interval, ndim=d.ndim) as w:
        for t, frame in d.iter_frames():
            w.write_spots_frame(t, frame)
        rows = [w.write_edges_chunk(c) for c in chunks]
        # nothing is visible before the block ends
        assert not (tmp_path / "streamed").exists()
    assert rows == [3, 0, 1, len(edges) - 4]
    f = pq.ParquetFile(tmp_path / "streamed" / "edges.parquet")
    assert f.num_row_groups == 3 and [f.metadata.row_group(i).num_rows for i in range(3)] == [3, 1, len(edges) - 4]
    back = read_tracks(tmp_path / "streamed")
    pd.testing.assert_frame_equal(back.edges, read_tracks(whole).edges.assign(weight=edges["weight"]))
    assert (back.frame_interval, back.ndim, back.time_units) == (d.frame_interval, d.ndim, d.time_units)
    pd.testing.assert_frame_equal(back.spots, read_tracks(whole).spots)


def test_streamed_edges_errors_and_empty(tmp_path: Path) -> None:
    d = _data()
    # only empty chunks: the writer's own empty edge table
    with TracksWriter(tmp_path / "empty") as w:
        assert w.write_edges_chunk(d.edges.iloc[:0]) == 0
    assert len(read_tracks(tmp_path / "empty").edges) == 0
    # a chunk with other columns than the first, or a type that cannot be cast: named, nothing left behind
    with pytest.raises(InvalidDataError, match=r"differ in \['weight'\]"), TracksWriter(tmp_path / "a") as w:
        w.write_edges_chunk(d.edges.iloc[:2])
        w.write_edges_chunk(d.edges.iloc[2:].assign(weight=1.0))
    with pytest.raises(InvalidDataError, match="column 'weight'"), TracksWriter(tmp_path / "b") as w:
        w.write_edges_chunk(d.edges.iloc[:2].assign(weight=1.0))
        w.write_edges_chunk(d.edges.iloc[2:].assign(weight="heavy"))
    with pytest.raises(InvalidDataError, match="unknown value"), TracksWriter(tmp_path / "c") as w:
        w.write_edges_chunk(d.edges.assign(kind="jump"))
    # whole and streamed edges do not mix, in either order
    with pytest.raises(InvalidDataError, match="already written whole"), TracksWriter(tmp_path / "d") as w:
        w.write_edges(d.edges)
        w.write_edges_chunk(d.edges)
    with pytest.raises(InvalidDataError, match=r"already streamed in 1 chunk"), TracksWriter(tmp_path / "e") as w:
        w.write_edges_chunk(d.edges)
        w.write_edges(d.edges)
    with pytest.raises(RuntimeError, match="context manager"):
        TracksWriter(tmp_path / "f").write_edges_chunk(d.edges)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
