"""TrackMate XML reader and writer against files written by Fiji TrackMate (and forks)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lxml import etree

from vollseg_dask.errors import InvalidDataError, StoreNotFoundError
from vollseg_dask.io import trackmate_xml as tmx
from vollseg_dask.io.trackmate_xml import read_trackmate_xml, write_trackmate_xml
from vollseg_dask.io.tracks import TrackData, read_tracks, write_tracks

# (spots, tracks in AllTracks, tracks in FilteredTracks, edges) as counted in the files themselves
EXPECTED = {
    "biotracks/FakeTracks_example1.xml": (243, 4, 4, 230),
    "biotracks/FakeTracks_example2.xml": (133, 5, 5, 128),
    "laptrack/trackmate_tracks_with_gap_closing.xml": (134, 5, 5, 128),
    "laptrack/trackmate_tracks_with_merging.xml": (134, 4, 4, 129),
    "laptrack/trackmate_tracks_with_splitting.xml": (134, 3, 3, 130),
    "laptrack/trackmate_tracks_with_splitting_merging.xml": (183, 4, 4, 180),
    "laptrack/trackmate_tracks_without_gap_closing.xml": (134, 6, 6, 127),
    "napatrackmater/tracks.xml": (686, 32, 9, 646),
    "pycellin/Celegans-5pc-17timepoints.xml": (87, 4, 4, 83),
    "pycellin/FakeTracks.xml": (107, 7, 2, 89),
}
FILES = sorted(EXPECTED)


def _xml(shared_data: Path, rel: str) -> Path:
    p = shared_data / "trackmate_xml" / rel
    if not p.is_file():
        pytest.skip(f"{p} missing from VOLLSEG_TEST_DATA")
    return p


@pytest.fixture(scope="module")
def parsed(shared_data: Path) -> dict[str, tmx.TrackMateData]:
    return {rel: read_trackmate_xml(_xml(shared_data, rel)) for rel in FILES}


def _reference_tree(path: Path) -> etree._Element:
    """Independent reference: the whole tree with lxml's plain parser."""
    return etree.parse(str(path)).getroot()


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", FILES)
def test_read_counts_and_values_match_the_file(shared_data: Path, parsed, rel: str) -> None:
    data = parsed[rel]
    n_spots, n_tracks, n_filtered, n_edges = EXPECTED[rel]
    assert len(data.spots) == n_spots
    assert len(data.tracks) == n_tracks
    assert len(data.filtered_track_ids) == n_filtered
    assert len(data.edges) == n_edges
    root = _reference_tree(_xml(shared_data, rel))
    ref = {int(s.get("ID")): s for s in root.iter("Spot")}
    assert set(data.spots["spot_id"]) == set(ref)
    for row in data.spots.itertuples(index=False):
        s = ref[row.spot_id]
        assert row.t == int(s.get("FRAME"))
        assert row.x == float(s.get("POSITION_X"))
        assert row.y == float(s.get("POSITION_Y"))
        assert row.z == float(s.get("POSITION_Z"))
    ref_edges = {
        (int(e.get("SPOT_SOURCE_ID")), int(e.get("SPOT_TARGET_ID")), int(tr.get("TRACK_ID")))
        for tr in root.iter("Track")
        for e in tr.iter("Edge")
    }
    got = set(zip(data.edges["source_spot_id"], data.edges["target_spot_id"], data.edges["track_id"], strict=True))
    assert got == ref_edges
    assert data.filtered_track_ids == [int(x.get("TRACK_ID")) for x in root.iter("TrackID")]
    assert data.version == root.get("version")


def test_read_quirks(parsed) -> None:
    cel = parsed["pycellin/Celegans-5pc-17timepoints.xml"]
    assert (cel.spatial_units, cel.time_units) == ("µm", "min")
    assert cel.ndim == 3 and cel.frame_interval == 2.0
    assert cel.image_data["nframes"] == 17 and cel.image_data["pixelwidth"] == pytest.approx(0.1984666072986889)
    assert "P1" in set(cel.spots["name"])  # spot names (cell names) kept
    # TrackMate's misspelt MANUAL_EGE_COLOR is read under its proper name
    assert "MANUAL_EDGE_COLOR" in cel.feature_declarations["edge"]
    assert "MANUAL_EGE_COLOR" not in cel.feature_declarations["edge"]

    fake = parsed["pycellin/FakeTracks.xml"]
    assert (fake.raw_spatial_units, fake.spatial_units) == ("micrometer", "µm")
    assert (fake.raw_time_units, fake.time_units) == ("second", "sec")
    assert fake.version.startswith("8.0.0-SNAPSHOT")
    assert fake.filtered_track_ids == [0, 4]
    assert set(fake.tracks) - set(fake.filtered_track_ids)  # tracks outside FilteredTracks are read
    ts = fake.settings["tracker_settings"]
    assert ts["LINKING_MAX_DISTANCE"] == 10.0 and ts["MAX_FRAME_GAP"] == 2
    assert ts["ALLOW_TRACK_SPLITTING"] is True and ts["BLOCKING_VALUE"] == np.inf
    assert ts["LINKING_FEATURE_PENALTIES"] == {}
    assert fake.feature_declarations["edge"]["DIRECTIONAL_CHANGE_RATE"]["shortname"] == "γ rate"
    assert fake.spots["VISIBILITY"].dtype == np.int64  # declared isint
    assert fake.settings["display_settings"]["name"] == "CurrentDisplaySettings"
    assert "Tinevez" in fake.log

    napa = parsed["napatrackmater/tracks.xml"]
    assert napa.version == "2.0.0" and napa.time_units == "frame" and napa.spatial_units == "pixel"
    assert napa.ndim == 3
    assert napa.settings["tracker_settings"]["ALLOW_TRACK_MERGING"] is False
    assert napa.settings["tracker_settings"]["SPLITTING_MAX_DISTANCE"] == 55.0

    old = parsed["biotracks/FakeTracks_example1.xml"]
    assert old.version == "3.4.2" and "ESTIMATED_DIAMETER" in old.spots.columns
    assert old.tracks[0].features["NUMBER_MERGES"] == 1.0


def test_to_track_data_lineage(parsed) -> None:
    cel = parsed["pycellin/Celegans-5pc-17timepoints.xml"]
    td = cel.to_track_data()
    # 4 divisions in this embryo (PROVENANCE.md): 4 split edges pairs
    outdeg = td.edges.groupby("source_spot_id").size()
    assert int((outdeg >= 2).sum()) == 4
    assert int(td.tracks["n_divisions"].sum()) == 4
    assert set(td.edges["kind"]) <= {"link", "split"}
    assert (td.edges["kind"] == "split").sum() == 8
    # every tracklet of a dividing lineage except the roots has a parent
    tl = td.tracklets
    assert (tl["parent_tracklet_id"] >= 0).sum() == 8
    filtered = parsed["pycellin/FakeTracks.xml"].to_track_data(tracks="filtered")
    assert set(filtered.spots.loc[filtered.spots["track_id"] >= 0, "track_id"]) == {0, 4}


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        read_trackmate_xml(tmp_path / "nope.xml")
    bad = tmp_path / "bad.xml"
    bad.write_text("<NotTrackMate/>", encoding="utf-8")
    with pytest.raises(InvalidDataError, match="not a TrackMate"):
        read_trackmate_xml(bad)
    broken = tmp_path / "broken.xml"
    broken.write_text("<TrackMate><Model>", encoding="utf-8")
    with pytest.raises(InvalidDataError, match="malformed"):
        read_trackmate_xml(broken)
    dangling = tmp_path / "dangling.xml"
    dangling.write_text(
        '<TrackMate version="7"><Model><AllSpots nspots="1"><SpotsInFrame frame="0">'
        '<Spot ID="1" name="a" FRAME="0" POSITION_X="1" POSITION_Y="2" POSITION_Z="0"/></SpotsInFrame></AllSpots>'
        '<AllTracks><Track name="T" TRACK_ID="0"><Edge SPOT_SOURCE_ID="1" SPOT_TARGET_ID="9"/></Track></AllTracks>'
        "</Model></TrackMate>",
        encoding="utf-8",
    )
    with pytest.raises(InvalidDataError, match="9 is not in AllSpots"):
        read_trackmate_xml(dangling)


# ---------------------------------------------------------------------------------------------
# Writing: round trips and validity
# ---------------------------------------------------------------------------------------------


def _partition(spot_ids: np.ndarray, groups: np.ndarray) -> set[frozenset[int]]:
    df = pd.DataFrame({"s": spot_ids, "g": groups})
    df = df[df["g"] >= 0]
    return {frozenset(v.tolist()) for _, v in df.groupby("g")["s"]}


@pytest.mark.parametrize("rel", FILES)
def test_round_trip_every_shared_file(parsed, tmp_path: Path, rel: str) -> None:
    src = parsed[rel]
    out = write_trackmate_xml(
        tmp_path / "out.xml",
        src.to_track_data(),
        image_data=src.image_data,
        filtered_track_ids=src.filtered_track_ids,
        feature_declarations=src.feature_declarations,
        spatial_units=src.raw_spatial_units,
        time_units=src.raw_time_units,
    )
    back = read_trackmate_xml(out)
    assert (back.raw_spatial_units, back.raw_time_units) == (src.raw_spatial_units, src.raw_time_units)
    # spot IDs are renumbered densely by rank of the original ID
    old_ids = np.sort(src.spots["spot_id"].to_numpy())
    assert np.array_equal(np.sort(back.spots["spot_id"].to_numpy()), np.arange(len(old_ids)))
    a = src.spots.assign(new_id=np.searchsorted(old_ids, src.spots["spot_id"])).sort_values("new_id")
    b = back.spots.sort_values("spot_id")
    assert np.array_equal(a["t"].to_numpy(), b["t"].to_numpy())
    for c in ("x", "y", "z", "radius", "quality"):
        np.testing.assert_array_equal(a[c].to_numpy(), b[c].to_numpy())
    assert list(a["name"]) == list(b["name"])
    # edges (as unordered spot pairs) and track membership
    remap = dict(zip(old_ids.tolist(), range(len(old_ids)), strict=True))
    e_src = {frozenset((remap[s], remap[t])) for s, t in zip(src.edges["source_spot_id"], src.edges["target_spot_id"], strict=True)}
    e_back = {frozenset((s, t)) for s, t in zip(back.edges["source_spot_id"], back.edges["target_spot_id"], strict=True)}
    assert e_src == e_back
    np.testing.assert_allclose(
        back.edges.sort_values(["source_spot_id", "target_spot_id"])["cost"].to_numpy(),
        src.edges.assign(s=src.edges["source_spot_id"].map(remap), d=src.edges["target_spot_id"].map(remap))
        .sort_values(["s", "d"])["cost"].to_numpy(),
    )
    members_src = {tid: frozenset(remap[s] for s in tr.spot_ids.tolist()) for tid, tr in src.tracks.items()}
    members_back = {tid: frozenset(tr.spot_ids.tolist()) for tid, tr in back.tracks.items()}
    assert members_src == members_back
    assert back.filtered_track_ids == src.filtered_track_ids
    assert back.image_data == src.image_data
    for k in ("LINKING_MAX_DISTANCE", "MAX_FRAME_GAP", "ALLOW_TRACK_SPLITTING", "ALLOW_TRACK_MERGING",
              "GAP_CLOSING_MAX_DISTANCE", "ALLOW_GAP_CLOSING"):
        assert back.settings["tracker_settings"][k] == src.settings["tracker_settings"][k]
    # TrackMate's own branching counts agree with ours
    for tid, tr in src.tracks.items():
        for f in ("NUMBER_SPOTS", "NUMBER_SPLITS", "NUMBER_MERGES", "NUMBER_GAPS", "LONGEST_GAP", "NUMBER_COMPLEX"):
            if f in tr.features:
                assert back.tracks[tid].features[f] == tr.features[f], (tid, f)


def _check_valid_trackmate(path: Path) -> etree._Element:
    """Structural checks of a written file, on the plain parsed tree."""
    raw = path.read_text(encoding="utf-8")
    root = etree.fromstring(raw.encode("utf-8"))
    assert root.tag == "TrackMate" and root.get("version")
    model = root.find("Model")
    assert model is not None and model.get("spatialunits") and model.get("timeunits")
    decl = model.find("FeatureDeclarations")
    isint = {
        kind: {f.get("feature") for f in decl.find(kind) if f.get("isint") == "true"}
        for kind in ("SpotFeatures", "EdgeFeatures", "TrackFeatures")
    }
    declared = {f.get("feature") for f in decl.iter("Feature")}
    for f in decl.iter("Feature"):
        assert set(f.attrib) == {"feature", "name", "shortname", "dimension", "isint"}
    int_re = re.compile(r"^-?\d+$")
    spots = list(model.find("AllSpots").iter("Spot"))
    assert int(model.find("AllSpots").get("nspots")) == len(spots)
    ids = [int(s.get("ID")) for s in spots]
    assert sorted(ids) == list(range(len(ids)))  # dense int32
    assert max(ids, default=0) <= 2**31 - 1
    for s in spots:
        for req in ("POSITION_X", "POSITION_Y", "POSITION_Z", "POSITION_T", "FRAME", "RADIUS", "QUALITY", "VISIBILITY"):
            assert req in s.attrib
        for k, v in s.attrib.items():
            if k == "name":
                continue
            assert k == "ID" or k in declared, k
            if k in isint["SpotFeatures"]:
                assert int_re.match(v), (k, v)
            else:
                float(v)  # numeric
    tracks = list(model.find("AllTracks").iter("Track"))
    frame = {int(s.get("ID")): int(s.get("FRAME")) for s in spots}
    seen_spots: set[int] = set()
    for tr in tracks:
        for k, v in tr.attrib.items():
            if k in isint["TrackFeatures"]:
                assert int_re.match(v), (k, v)
        # one Track = one connected lineage
        adj: dict[int, set[int]] = {}
        for e in tr.iter("Edge"):
            for k, v in e.attrib.items():
                if k in isint["EdgeFeatures"]:
                    assert int_re.match(v), (k, v)
            a, b = int(e.get("SPOT_SOURCE_ID")), int(e.get("SPOT_TARGET_ID"))
            assert frame[b] > frame[a]
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
        start = next(iter(adj))
        todo, comp = [start], {start}
        while todo:
            for m in adj[todo.pop()] - comp:
                comp.add(m)
                todo.append(m)
        assert comp == set(adj)
        assert not (comp & seen_spots)  # a spot belongs to one track
        seen_spots |= comp
    track_ids = {int(tr.get("TRACK_ID")) for tr in tracks}
    assert {int(x.get("TRACK_ID")) for x in model.find("FilteredTracks")} <= track_ids
    img = root.find("Settings/ImageData")
    assert img is not None
    assert set(img.attrib) == {"filename", "folder", "width", "height", "nslices", "nframes",
                               "pixelwidth", "pixelheight", "voxeldepth", "timeinterval"}
    for k in ("width", "height", "nslices", "nframes"):
        assert int_re.match(img.get(k))
    ts = root.find("Settings/TrackerSettings")
    assert ts is not None and ts.find("Linking") is not None and ts.find("GapClosing") is not None
    return root


def _synthetic(rng: np.random.Generator) -> TrackData:
    """Two lineages in 3D: A divides at t=2 (daughters B, C), D has a gap (t=1 missing)."""
    base = 2**40
    rows = [
        # spot_id, t, x, y, z, label, track, tracklet
        (base + 1, 0, 10.0, 10.0, 5.0, 3, 7, 0),
        (base + 2, 1, 11.0, 10.5, 5.0, 4, 7, 0),
        (base + 3, 2, 12.0, 11.0, 5.5, 2, 7, 0),
        (base + 4, 3, 14.0, 13.0, 5.5, 1, 7, 1),
        (base + 5, 4, 15.0, 14.0, 6.0, 5, 7, 1),
        (base + 6, 3, 10.0, 9.0, 5.0, 6, 7, 2),
        (base + 7, 4, 9.0, 8.0, 5.0, 2, 7, 2),
        (base + 10, 0, 40.0, 40.0, 1.0, 9, 3, 3),
        (base + 11, 2, 41.0, 42.0, 1.5, 8, 3, 3),
        (base + 12, 3, 42.0, 43.0, 2.0, 7, 3, 3),
        (base + 20, 1, 60.0, 5.0, 0.0, 11, -1, -1),
    ]
    spots = pd.DataFrame(rows, columns=["spot_id", "t", "x", "y", "z", "label", "track_id", "tracklet_id"])
    spots["volume_um3"] = rng.uniform(50, 150, len(spots))
    spots["mean_intensity_c0"] = rng.uniform(0, 1000, len(spots))
    spots["mean_intensity_c0"] = spots["mean_intensity_c0"].astype(float)
    spots.loc[2, "mean_intensity_c0"] = np.nan
    spots["n_voxels"] = rng.integers(10, 1000, len(spots)).astype(np.int64)
    spots["inside_tissue"] = True
    edges = pd.DataFrame(
        {
            "source_spot_id": [base + 1, base + 2, base + 3, base + 4, base + 3, base + 6, base + 10, base + 11],
            "target_spot_id": [base + 2, base + 3, base + 4, base + 5, base + 6, base + 7, base + 11, base + 12],
            "cost": [1.25, 1.5, 8.5, 2.0, 5.0, 2.0, 5.0, 3.0],
            "kind": ["link", "link", "split", "link", "split", "link", "gap", "link"],
        }
    )
    tracklets = pd.DataFrame(
        {"tracklet_id": [0, 1, 2, 3], "track_id": [7, 7, 7, 3], "parent_tracklet_id": [-1, 0, 0, -1],
         "start_t": [0, 3, 3, 0], "end_t": [2, 4, 4, 3], "n_spots": [3, 2, 2, 3]}
    )
    return TrackData(spots=spots, edges=edges, tracklets=tracklets, frame_interval=30.0, ndim=3,
                     tracker_config={"linking": {"linking_max_distance": 12.5, "linking_feature_penalties": {"mean_intensity_c0": 1.0}},
                                     "gap_closing": {"max_frame_gap": 3}, "allow_track_splitting": True, "workers": 2})


def test_write_synthetic_valid_and_read_back(rng, tmp_path: Path) -> None:
    data = _synthetic(rng)
    out = write_trackmate_xml(tmp_path / "syn.xml", data)
    root = _check_valid_trackmate(out)
    back = read_trackmate_xml(out)
    assert (back.spatial_units, back.time_units) == ("µm", "sec")
    assert len(back.spots) == 11 and len(back.tracks) == 2
    assert sorted(back.tracks) == [3, 7]  # our track IDs kept (they fit int32)
    assert back.tracks[7].features["NUMBER_SPLITS"] == 1 and back.tracks[3].features["NUMBER_GAPS"] == 1
    assert back.tracks[3].features["LONGEST_GAP"] == 1
    assert back.tracks[7].features["TRACK_DURATION"] == 4 * 30.0
    # dense IDs follow the rank of the int64 spot IDs
    order = np.argsort(data.spots["spot_id"].to_numpy())
    exp = data.spots.iloc[order].reset_index(drop=True)
    got = back.spots.sort_values("spot_id").reset_index(drop=True)
    np.testing.assert_array_equal(got[["x", "y", "z"]].to_numpy(), exp[["x", "y", "z"]].to_numpy())
    np.testing.assert_array_equal(got["POSITION_T"].to_numpy(), exp["t"].to_numpy() * 30.0)
    np.testing.assert_array_equal(got["LABEL"].to_numpy(), exp["label"].to_numpy())
    np.testing.assert_array_equal(got["N_VOXELS"].to_numpy(), exp["n_voxels"].to_numpy())
    np.testing.assert_allclose(got["MEAN_INTENSITY_CH1"].to_numpy(), exp["mean_intensity_c0"].to_numpy())
    np.testing.assert_allclose(got["radius"].to_numpy(), np.cbrt(3 * exp["volume_um3"].to_numpy() / (4 * np.pi)))
    assert got["INSIDE_TISSUE"].dtype == np.int64 and (got["INSIDE_TISSUE"] == 1).all()
    spot_el = next(s for s in root.iter("Spot") if s.get("MEAN_INTENSITY_CH1") == "NaN")
    assert spot_el.get("FRAME") == "2" and spot_el.get("VISIBILITY") == "1"
    # edge features computed from positions
    e = back.edges.set_index(["source_spot_id", "target_spot_id"]).loc[(0, 1)]
    assert e["cost"] == 1.25 and e["EDGE_TIME"] == 15.0
    assert e["DISPLACEMENT"] == pytest.approx(np.hypot(1.0, 0.5)) and e["SPEED"] == pytest.approx(np.hypot(1.0, 0.5) / 30)
    # tracker settings found in the nested tracker config, TrackMate defaults for the rest
    ts = back.settings["tracker_settings"]
    assert ts["LINKING_MAX_DISTANCE"] == 12.5 and ts["MAX_FRAME_GAP"] == 3 and ts["ALLOW_TRACK_SPLITTING"] is True
    assert ts["LINKING_FEATURE_PENALTIES"] == {"MEAN_INTENSITY_CH1": 1.0}
    assert ts["ALLOW_TRACK_MERGING"] is False and ts["ALTERNATIVE_LINKING_COST_FACTOR"] == 1.05
    assert "WORKERS" not in ts
    img = back.image_data
    assert img["nframes"] == 5 and img["width"] == 61 and img["nslices"] == 7 and img["timeinterval"] == 30.0


def test_written_file_read_by_pytrackmate(rng, tmp_path: Path, parsed) -> None:
    pytrackmate = pytest.importorskip("pytrackmate", reason="pytrackmate not installed (pip install pytrackmate)")
    for name, data in (("syn", _synthetic(rng)), ("napa", parsed["napatrackmater/tracks.xml"].to_track_data())):
        out = write_trackmate_xml(tmp_path / f"{name}.xml", data)
        ours = read_trackmate_xml(out)
        theirs = pytrackmate.trackmate_peak_import(str(out), get_tracks=True)
        assert len(theirs) == len(ours.spots)
        theirs = theirs.sort_values("spot_id").reset_index(drop=True)
        mine = ours.spots.sort_values("spot_id").reset_index(drop=True)
        np.testing.assert_array_equal(theirs["spot_id"].to_numpy(), mine["spot_id"].to_numpy())
        np.testing.assert_array_equal(theirs["t_stamp"].to_numpy(), mine["t"].to_numpy())
        np.testing.assert_array_equal(theirs[["x", "y", "z"]].to_numpy(), mine[["x", "y", "z"]].to_numpy())
        # pytrackmate's per-track label partitions the tracked spots like our tracks
        track_of = np.full(len(mine), -1)
        for tid, tr in ours.tracks.items():
            track_of[np.searchsorted(mine["spot_id"].to_numpy(), tr.spot_ids)] = tid
        tracked = track_of >= 0
        assert _partition(mine["spot_id"].to_numpy()[tracked], theirs["label"].to_numpy()[tracked]) == _partition(
            mine["spot_id"].to_numpy()[tracked], track_of[tracked]
        )


def test_lazy_tracks_dir_gives_identical_file(rng, tmp_path: Path) -> None:
    data = _synthetic(rng)
    a = write_trackmate_xml(tmp_path / "mem.xml", data)
    write_tracks(tmp_path / "tracks", data)
    lazy = read_tracks(tmp_path / "tracks", lazy=True)
    assert lazy.spots is None
    b = write_trackmate_xml(tmp_path / "lazy.xml", lazy)
    assert a.read_bytes() == b.read_bytes()


def test_write_errors(rng, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _synthetic(rng)
    monkeypatch.setattr(tmx, "INT32_MAX", 10)
    with pytest.raises(InvalidDataError, match="11 spots exceed TrackMate's int32"):
        write_trackmate_xml(tmp_path / "x.xml", data)
    monkeypatch.undo()
    assert not list(tmp_path.iterdir())
    shared = data.spots.copy()
    shared.loc[shared["track_id"] == 3, "track_id"] = 7
    bad = TrackData(spots=shared, edges=data.edges)
    with pytest.raises(InvalidDataError, match="track_id 7 is shared by two disconnected lineages"):
        write_trackmate_xml(tmp_path / "x.xml", bad)
    frac = data.spots.copy()
    frac["n_voxels"] = frac["n_voxels"].astype(float)
    frac.loc[0, "n_voxels"] = 2.5
    with pytest.raises(InvalidDataError, match="non-integer value 2.5"):
        write_trackmate_xml(tmp_path / "x.xml", TrackData(spots=frac, edges=data.edges),
                            feature_declarations={"spot": {"N_VOXELS": {"isint": True}}})
    with pytest.raises(InvalidDataError, match="filtered_track_ids names track"):
        write_trackmate_xml(tmp_path / "x.xml", data, filtered_track_ids=[99])
    with pytest.raises(InvalidDataError, match="unknown key"):
        write_trackmate_xml(tmp_path / "x.xml", data, image_data={"pixelsize": 1.0})
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_large_ids_without_track_ids_are_renumbered(tmp_path: Path) -> None:
    spots = pd.DataFrame({"spot_id": [2**62, 2**62 + 1, 5], "t": [0, 1, 0], "x": [1.0, 2.0, 3.0], "y": 0.0, "z": 0.0,
                          "track_id": [2**40, 2**40, -1]})
    edges = pd.DataFrame({"source_spot_id": [2**62], "target_spot_id": [2**62 + 1]})
    out = write_trackmate_xml(tmp_path / "big.xml", TrackData(spots=spots, edges=edges, ndim=2))
    back = read_trackmate_xml(out)
    assert list(back.tracks) == [0]
    assert set(back.tracks[0].spot_ids.tolist()) == {1, 2}  # ranks of 2**62, 2**62+1 after 5
    assert back.image_data["nslices"] == 1


def test_tracker_settings_feed_the_tracker_config(parsed) -> None:
    """TrackMate's settings become the tracker's own config, and back."""
    config_mod = pytest.importorskip("vollseg_dask.tracking.config")
    fake = parsed["pycellin/FakeTracks.xml"]
    cfg = config_mod.TrackerConfig.model_validate(fake.to_track_data().tracker_config)
    assert cfg.linking_max_distance == 10.0 and cfg.allow_track_merging is True and cfg.max_frame_gap == 2
    back = tmx.tracker_settings_from_config(cfg.model_dump())
    src = fake.settings["tracker_settings"]
    assert {k: back[k] for k in back} == {k: src[k] for k in back}


def test_tracker_output_exports_trackmate_edges(parsed, tmp_path: Path) -> None:
    """Integration: our tracker's TRACKS_DIR, written as TrackMate XML, holds TrackMate's own edges."""
    driver = pytest.importorskip("vollseg_dask.tracking.driver")
    from vollseg_dask.tracking.config import TrackerConfig

    tm = parsed["laptrack/trackmate_tracks_with_splitting.xml"]
    cfg = TrackerConfig.from_trackmate(tm.settings["tracker_settings"])
    driver.track(tm.spots[["spot_id", "t", "x", "y", "z"]].copy(), tmp_path / "tracks", cfg, progress=False)
    out = write_trackmate_xml(tmp_path / "ours.xml", read_tracks(tmp_path / "tracks", lazy=True))
    _check_valid_trackmate(out)
    back = read_trackmate_xml(out)
    rank = {s: i for i, s in enumerate(sorted(tm.spots["spot_id"].tolist()))}
    ref = {frozenset((rank[a], rank[b])) for a, b in zip(tm.edges["source_spot_id"], tm.edges["target_spot_id"], strict=True)}
    ours = {frozenset(p) for p in zip(back.edges["source_spot_id"], back.edges["target_spot_id"], strict=True)}
    assert ours == ref
    assert back.settings["tracker_settings"]["ALLOW_TRACK_SPLITTING"] is True
    assert sum(tr.features["NUMBER_SPLITS"] for tr in back.tracks.values()) == sum(
        tr.features["NUMBER_SPLITS"] for tr in tm.tracks.values())
