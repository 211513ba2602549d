"""Cell Tracking Challenge export/import, checked with py-ctcmetrics on genuine CTC ground truth."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import tifffile

from vollseg_dask.errors import InvalidDataError, StoreExistsError, StoreNotFoundError
from vollseg_dask.io import ctc as ctc_mod
from vollseg_dask.io.ctc import ctc_tracks_from, mask_name, read_ctc, read_ctc_tracks, write_ctc
from vollseg_dask.io.tracks import TrackData


def _gt(shared_data: Path, which: str = "fluo_simulated") -> Path:
    p = shared_data / "ctc" / "fluo_n2dh_sim_tra" / which / "TRA"
    if not p.is_dir():
        pytest.skip(f"{p} missing from VOLLSEG_TEST_DATA")
    return p


def _ctc_metrics():
    return pytest.importorskip("ctc_metrics", reason="py-ctcmetrics not installed (pip install py-ctcmetrics)")


def _validate(res: Path) -> int:
    _ctc_metrics()
    from ctc_metrics.scripts.validate import validate_sequence

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(validate_sequence(str(res), threads=1)["Valid"])


def _evaluate(res: Path, gt_seq: Path, metrics: list[str]) -> dict:
    _ctc_metrics()
    from ctc_metrics.scripts.evaluate import evaluate_sequence

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_sequence(str(res), str(gt_seq), metrics=list(metrics), threads=1)


def test_read_ground_truth(shared_data: Path) -> None:
    gt = read_ctc(_gt(shared_data).parent)  # a sequence folder with TRA/ inside is accepted
    assert gt.n_frames == 65 and len(gt.mask_paths) == 65
    assert len(gt.tracks) == 95
    n_children = gt.tracks[gt.tracks["parent"] > 0].groupby("parent").size()
    assert int((n_children == 2).sum()) == 28  # 28 divisions (PROVENANCE.md)
    td = gt.to_track_data()
    assert td.ndim == 2 and len(td.tracklets) == 95
    assert (td.edges["kind"] == "split").sum() == 56
    # one spot per label per frame inside [B, E], at the label's centroid
    assert len(td.spots) == int((gt.tracks["end"] - gt.tracks["begin"] + 1).sum())
    m = gt.read_mask(10)
    lab = int(np.unique(m[m > 0])[0])
    yy, xx = np.nonzero(m == lab)
    row = td.spots[(td.spots["t"] == 10) & (td.spots["label"] == lab)].iloc[0]
    assert (row["y"], row["x"]) == pytest.approx((yy.mean(), xx.mean()))
    # lineage roots: daughters of track 1 (51, 52) belong to track 1
    assert set(td.spots.loc[td.spots["label"].isin([51, 52]), "track_id"]) == {1}


def test_read_edge_cases(shared_data: Path) -> None:
    ec = read_ctc(_gt(shared_data, "edge_cases"))
    assert ec.tracks.values.tolist() == [[20, 0, 0, 0], [10, 0, 0, 0], [30, 2, 2, 20], [31, 2, 2, 20]]
    td = ec.to_track_data()
    assert sorted(zip(td.edges["source_spot_id"] % 2**32, td.edges["target_spot_id"] % 2**32, td.edges["kind"],
                      strict=True)) == [(20, 30, "split"), (20, 31, "split")]
    tracks, labels = ctc_tracks_from(td)
    # relabelled 1.. by (begin, tracklet): 10 -> 1, 20 -> 2, 30 -> 3, 31 -> 4
    assert tracks.values.tolist() == [[1, 0, 0, 0], [2, 0, 0, 0], [3, 2, 2, 2], [4, 2, 2, 2]]


def _permuted_gt(gt: ctc_mod.CTCData, rng: np.random.Generator) -> tuple[TrackData, np.ndarray]:
    """GT as TrackData with shuffled tracklet IDs and segmentation labels, so that nothing in the
    writer can lean on the GT numbering."""
    td = gt.to_track_data()
    masks = np.stack([gt.read_mask(t) for t in range(gt.n_frames)]).astype(np.int32)
    lab_perm = np.zeros(int(masks.max()) + 1, np.int32)
    lab_perm[1:] = rng.permutation(np.arange(1000, 1000 + len(lab_perm) - 1))
    masks = lab_perm[masks]
    tl_ids = td.tracklets["tracklet_id"].to_numpy()
    tl_perm = dict(zip(tl_ids.tolist(), rng.permutation(len(tl_ids)).tolist(), strict=True))
    tl_perm[-1] = -1
    spots = td.spots.assign(label=lab_perm[td.spots["label"].to_numpy()],
                            tracklet_id=td.spots["tracklet_id"].map(tl_perm))
    tracklets = td.tracklets.assign(tracklet_id=td.tracklets["tracklet_id"].map(tl_perm),
                                    parent_tracklet_id=td.tracklets["parent_tracklet_id"].map(tl_perm))
    return TrackData(spots=spots, edges=td.edges, tracklets=tracklets, ndim=2), masks


def test_ground_truth_round_trip_validates_and_scores_tra_1(shared_data: Path, tmp_path: Path, rng) -> None:
    _ctc_metrics()
    gt_dir = _gt(shared_data)
    gt = read_ctc(gt_dir)
    data, masks = _permuted_gt(gt, rng)
    res = write_ctc(tmp_path / "01_RES", data, da.from_array(masks, chunks=(1, 345, 628)))
    assert sorted(p.name for p in res.iterdir())[:2] == ["mask000.tif", "mask001.tif"]
    assert len(list(res.glob("mask*.tif"))) == 65 and (res / "res_track.txt").is_file()
    assert tifffile.imread(res / "mask000.tif").dtype == np.uint16
    assert _validate(res) == 1
    scores = _evaluate(res, gt_dir.parent, ["TRA", "DET"])
    assert scores["TRA"] == 1.0 and scores["DET"] == 1.0
    # and our reader sees the same lineage structure
    back = read_ctc(res)
    assert len(back.tracks) == 95
    assert int((back.tracks[back.tracks["parent"] > 0].groupby("parent").size() == 2).sum()) == 28


def test_tra_detects_a_wrong_lineage(shared_data: Path, tmp_path: Path) -> None:
    """Sanity check of the scoring used above: a lost division does not score 1."""
    _ctc_metrics()
    src = _gt(shared_data, "edge_cases")
    gt_seq = tmp_path / "gt"
    (gt_seq / "TRA").mkdir(parents=True)
    shutil.copy(src / "tracks.txt", gt_seq / "TRA" / "man_track.txt")
    for t in range(3):
        shutil.copy(src / f"00{t}.tif", gt_seq / "TRA" / f"man_track00{t}.tif")
    ec = read_ctc(src)
    td = ec.to_track_data()
    masks = np.stack([ec.read_mask(t) for t in range(3)])
    good = write_ctc(tmp_path / "good", td, masks)
    assert _validate(good) == 1
    assert _evaluate(good, gt_seq, ["TRA"])["TRA"] == 1.0
    orphan = TrackData(spots=td.spots, edges=td.edges.iloc[1:],
                       tracklets=td.tracklets.assign(parent_tracklet_id=np.where(td.tracklets["tracklet_id"] == 31, -1,
                                                                                 td.tracklets["parent_tracklet_id"])),
                       ndim=2)
    bad = write_ctc(tmp_path / "bad", orphan, masks)
    assert (bad / "res_track.txt").read_text().splitlines()[3] == "4 2 2 0"
    assert _evaluate(bad, gt_seq, ["TRA"])["TRA"] < 1.0


def _gap_data() -> tuple[TrackData, np.ndarray]:
    """3D: mother (seg label 5) at t=0,1 divides into A (t=2, gap, t=4) and B (t=2..4); one unlinked spot."""
    labels = np.zeros((5, 6, 8, 8), np.uint32)
    labels[0:2, 1:3, 1:3, 1:3] = 5      # mother
    labels[2:5, 1:3, 0:2, 5:7] = 7      # daughter A (object present at t=3 too, but no spot: gap)
    labels[2:5, 3:5, 5:7, 0:2] = 9      # daughter B
    labels[3, 5, 7, 7] = 11             # unlinked object
    labels[1, 0, 7, 0] = 99             # object of no spot: must become background
    spots = pd.DataFrame({
        "spot_id": [100, 101, 200, 202, 300, 301, 302, 400],
        "t": [0, 1, 2, 4, 2, 3, 4, 3],
        "x": 1.0, "y": 1.0, "z": 1.0,
        "label": [5, 5, 7, 7, 9, 9, 9, 11],
    })
    edges = pd.DataFrame({"source_spot_id": [100, 101, 200, 101, 300, 301],
                          "target_spot_id": [101, 200, 202, 300, 301, 302]})
    return TrackData(spots=spots, edges=edges), labels


def test_gap_starts_new_label_and_masks_are_relabelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, labels = _gap_data()
    monkeypatch.setattr(ctc_mod, "_SLAB_BYTES", 1)  # one z-plane per slab
    out = write_ctc(tmp_path / "res", data, da.from_array(labels, chunks=(1, 2, 8, 8)))
    lines = (out / "res_track.txt").read_text().splitlines()
    # mother 1 (0-1); daughters by tracklet order: A part 1 (2), B (2-4); A part 2 (4) after the gap;
    # unlinked spot (3)
    assert lines == ["1 0 1 0", "2 2 2 1", "3 2 4 1", "4 3 3 0", "5 4 4 2"]
    m = {t: tifffile.imread(out / mask_name(t, 5)) for t in range(5)}
    assert m[0].shape == (6, 8, 8) and m[0].dtype == np.uint16
    assert set(np.unique(m[1])) == {0, 1}  # object 99 of no spot is background
    assert np.array_equal(m[2] == 2, labels[2] == 7) and np.array_equal(m[2] == 3, labels[2] == 9)
    assert set(np.unique(m[3])) == {0, 3, 4}  # A has no spot at t=3: not written
    assert np.array_equal(m[4] == 5, labels[4] == 7)
    assert _validate(out) == 1
    back = read_ctc(out)
    assert back.tracks.values.tolist() == [[1, 0, 1, 0], [2, 2, 2, 1], [3, 2, 4, 1], [4, 3, 3, 0], [5, 4, 4, 2]]
    only_linked = write_ctc(tmp_path / "linked", data, labels, include_unlinked=False)
    assert "4 3 3 0" not in (only_linked / "res_track.txt").read_text()


def test_write_errors_leave_nothing(tmp_path: Path) -> None:
    data, labels = _gap_data()
    (tmp_path / "exists").mkdir()
    with pytest.raises(StoreExistsError):
        write_ctc(tmp_path / "exists", data, labels)
    no_label = TrackData(spots=data.spots.assign(label=np.where(data.spots["spot_id"] == 300, -1, data.spots["label"])),
                         edges=data.edges)
    with pytest.raises(InvalidDataError, match="spot 300 has label -1"):
        write_ctc(tmp_path / "a", no_label, labels)
    absent = TrackData(spots=data.spots.assign(label=np.where(data.spots["spot_id"] == 302, 42, data.spots["label"])),
                       edges=data.edges)
    with pytest.raises(InvalidDataError, match="spot 302: object 42 is not in labels frame 4"):
        write_ctc(tmp_path / "b", absent, labels)
    with pytest.raises(InvalidDataError, match="labels has 3 frames"):
        write_ctc(tmp_path / "c", data, labels[:3])
    with pytest.raises(InvalidDataError, match="must be integers"):
        write_ctc(tmp_path / "d", data, labels.astype(float))
    twice = TrackData(spots=data.spots, edges=data.edges,
                      tracklets=pd.DataFrame({"tracklet_id": [0], "track_id": [0], "parent_tracklet_id": [-1],
                                              "start_t": [0], "end_t": [4], "n_spots": [8]}))
    twice.spots["tracklet_id"] = 0
    with pytest.raises(InvalidDataError, match="tracklet 0 has two spots in frame 2"):
        write_ctc(tmp_path / "e", twice)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_track_file_validation(tmp_path: Path) -> None:
    p = tmp_path / "res_track.txt"
    p.write_text("1 0 3 0\n2 4 5 1\n")
    assert read_ctc_tracks(p).values.tolist() == [[1, 0, 3, 0], [2, 4, 5, 1]]
    for text, msg in (("1 0 3\n", "expected 4 integers"), ("1 0 3 0\n1 4 5 0\n", "label 1 appears twice"),
                      ("1 5 3 0\n", "ends before it begins"), ("1 0 3 7\n", "names parent 7")):
        p.write_text(text)
        with pytest.raises(InvalidDataError, match=msg):
            read_ctc_tracks(p)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreNotFoundError, match="none of the CTC track files"):
        read_ctc(tmp_path / "empty")
    with pytest.raises(StoreNotFoundError, match="CTC folder not found"):
        read_ctc(tmp_path / "nope")
    assert mask_name(7, 65) == "mask007.tif" and mask_name(7, 1001) == "mask0007.tif"
