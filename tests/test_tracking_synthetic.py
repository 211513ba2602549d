"""The tracker on the synthetic generator's lineages, scored with the Cell Tracking Challenge's tools,
and the same result however the work is split (windows, Parquet part files, Dask schedulers).

Pipeline under test, end to end: :func:`~vollseg_dask.synthetic.write_synthetic` (OME-Zarr with
``labels/ground_truth``, label = CTC track id) -> :func:`~vollseg_dask.measure.measure_cells` on the
ground-truth labels -> small Gaussian position noise -> a Parquet spot table partitioned by ``t``
-> :func:`~vollseg_dask.tracking.track` (gap closing and splitting on) -> :func:`~vollseg_dask.io.ctc.write_ctc`
with the ground-truth label images relabelled through each spot's ``label`` -> py-ctcmetrics
(validation, TRA, division metrics ``BC``) and, where installed, traccuracy.

The reference CTC folder (``TRA/man_track.txt`` + ``man_trackNNN.tif``) is written here straight
from the store's ``man_track.txt`` and label array, not with ``write_ctc``, so that the exporter
under test is not its own reference.

Two kinds of division cannot be made by TrackMate's LAP tracker, whose splitting links a middle
spot of one segment (a spot with a predecessor and a successor) to the start of another segment
of two or more spots: a mother in the first frame, and a daughter seen in one frame only (born in
the last frame). Division precision and recall are therefore scored on the interior frames
``1 .. T-2`` (ground truth and result cropped alike after tracking the whole movie), and
separately by matching mother -> daughter events on the whole movie against the divisions the
tracker can represent; the whole-movie numbers are also checked against that count.

Scenario: compact cells (one lattice site each, ~5 µm), 0.5 µm/frame motion, 0.1 µm position
noise. With the generator's rod and L/U-shaped multi-site cells, a division moves a daughter's
centroid by up to half the rod length (up to ~5 µm) while neighbouring centroids can be ~2 µm
away; a centroid-distance LAP (ours, and laptrack alike) then finds ~90% of the divisions only.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile

from vollseg_dask.errors import TrackingError
from vollseg_dask.io.ctc import write_ctc
from vollseg_dask.io.omezarr import open_labels
from vollseg_dask.io.tracks import TrackData, read_tracks
from vollseg_dask.tracking import TrackerConfig, track

pytest.importorskip("ctc_metrics", reason="py-ctcmetrics not installed (pip install py-ctcmetrics)")

#: ~430 cells per frame, 10 frames, ~220 divisions; written in a few seconds.
SYNTHETIC = dict(
    shape=(10, 16, 80, 80),
    voxel_size=(1.0, 0.5, 0.5),
    cell_diameter_um=5.0,
    tissue_radii=(1.2, 1.0, 1.0),
    lattice_jitter=0.25,
    chain_probability=0.0,
    speed_um_per_frame=0.5,
    jitter_um=0.2,
    division_rate=0.08,
    seed=7,
    chunks=(16, 80, 80),
)
NOISE_UM = 0.1
#: Links up to 2 µm (4x the motion, < half the cell spacing), daughters up to 3 µm from the mother.
CONFIG = TrackerConfig(
    linking_max_distance=2.0,
    gap_closing_max_distance=2.0,
    max_frame_gap=2,
    allow_track_splitting=True,
    splitting_max_distance=3.0,
    frame_interval=60.0,
    time_units="sec",
)
SPOT_SHIFT = 1 << 32  # spot_id = t * 2**32 + label when the table has no spot_id (driver rule)


# ---------------------------------------------------------------------------------------------
# Fixtures: one store, one cell table, the spot table in two partitionings, the reference
# ---------------------------------------------------------------------------------------------


def write_spot_dataset(df: pd.DataFrame, root: Path, parts_per_frame: int, seed: int) -> Path:
    """Hive dataset ``root/t=<t>/part-<k>.parquet``, rows shuffled across ``parts_per_frame`` files."""
    rng = np.random.default_rng(seed)
    for t, frame in df.groupby("t"):
        folder = root / f"t={int(t)}"
        folder.mkdir(parents=True)
        frame = frame.drop(columns="t").iloc[rng.permutation(len(frame))]
        for k, rows in enumerate(np.array_split(np.arange(len(frame)), parts_per_frame)):
            frame.iloc[rows].to_parquet(folder / f"part-{k}.parquet", index=False)
    return root


def write_reference_ctc(store: Path, labels: np.ndarray, first: int, last: int, seq: Path) -> Path:
    """CTC ground truth ``seq/TRA`` of frames ``first .. last`` (renumbered from 0), labels 1..N.

    Tracks are clipped to the frame range; a track whose parent ended before ``first`` becomes a root.
    """
    man = np.loadtxt(store / "man_track.txt", dtype=np.int64, ndmin=2)
    lab, begin, end, parent = man.T
    keep = (end >= first) & (begin <= last)
    ids = np.sort(lab[keep])
    tra = seq / "TRA"
    tra.mkdir(parents=True)
    with open(tra / "man_track.txt", "w", encoding="utf-8") as fh:
        for L, B, E, P in zip(lab[keep], begin[keep], end[keep], parent[keep], strict=True):
            p = int(np.searchsorted(ids, P)) + 1 if P in ids else 0
            fh.write(
                f"{int(np.searchsorted(ids, L)) + 1} {max(B, first) - first} {min(E, last) - first} {p}\n"
            )
    for t in range(first, last + 1):
        frame = np.asarray(labels[t])
        fg = frame > 0
        idx = np.searchsorted(ids, frame[fg])
        assert np.array_equal(ids[np.minimum(idx, len(ids) - 1)], frame[fg]), (
            f"frame {t} has labels not in man_track"
        )
        out = np.zeros(frame.shape, np.uint16)
        out[fg] = idx + 1
        tifffile.imwrite(tra / f"man_track{t - first:03d}.tif", out)
    return seq


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from vollseg_dask.measure import measure_cells
    from vollseg_dask.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("synthetic_tracking")
    store = write_synthetic(
        root / "syn.zarr", SYNTHETIC, scheduler="threads", num_workers=2, progress=False
    ).path
    measure_cells(store, root / "cells", labels="ground_truth", channels=[])
    cells = pd.read_parquet(root / "cells")
    cells["t"] = cells["t"].astype(np.int64)
    cells = cells.sort_values(["t", "label"], ignore_index=True)
    rng = np.random.default_rng(2024)
    for axis in ("z", "y", "x"):
        cells[f"centroid_{axis}_um"] += rng.normal(0.0, NOISE_UM, len(cells))
    labels = open_labels(store, "ground_truth").data
    assert labels.shape[0] == SYNTHETIC["shape"][0]
    n_t = labels.shape[0]
    return {
        "root": root,
        "store": store,
        "cells": cells,
        "labels": labels,
        "lineage": pd.read_parquet(store / "ground_truth_lineage.parquet"),
        "spots_1": write_spot_dataset(cells, root / "spots_1", 1, seed=1),
        "spots_3": write_spot_dataset(cells, root / "spots_3", 3, seed=2),
        "gt_full": write_reference_ctc(store, labels, 0, n_t - 1, root / "gt_full"),
        "gt_inner": write_reference_ctc(store, labels, 1, n_t - 2, root / "gt_inner"),
    }


@pytest.fixture(scope="module")
def baseline(scene: dict[str, Any]) -> Path:
    return track(scene["spots_1"], scene["root"] / "tracks", CONFIG, progress=False).path


@pytest.fixture(scope="module")
def inner(scene: dict[str, Any], baseline: Path) -> dict[str, Any]:
    """The baseline's CTC export of the interior frames and its py-ctcmetrics scores."""
    res = scene["root"] / "res_inner"
    return {"res": res, "scores": export_and_score(baseline, scene, res, inner=True)}


# ---------------------------------------------------------------------------------------------
# Scoring helpers
# ---------------------------------------------------------------------------------------------


def ctc_scores(res: Path, gt_seq: Path) -> dict[str, float]:
    """py-ctcmetrics: validity, TRA, and division precision/recall from the counts behind ``BC(0)``.

    (``evaluate_sequence`` with ``"BC"`` computes BC(0..3), four times the cost; only BC(0) is used.)
    """
    from ctc_metrics.metrics import raw_division_metrics
    from ctc_metrics.scripts.evaluate import calculate_metrics, load_data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp, ref, traj, segm, _, valid = load_data(str(res), str(gt_seq), True, False, threads=1)
        r = calculate_metrics(comp, ref, traj, segm, metrics=["Valid", "TRA"], is_valid=valid)
        tp, fp, fn = raw_division_metrics(comp, ref, traj["mapped_ref"], traj["mapped_comp"], i=0)
    return {
        "valid": int(r["Valid"]),
        "TRA": float(r["TRA"]),
        "div_tp": int(tp),
        "div_fp": int(fp),
        "div_fn": int(fn),
        "div_precision": tp / max(tp + fp, 1),
        "div_recall": tp / max(tp + fn, 1),
    }


def crop(data: TrackData, first: int, last: int) -> TrackData:
    """Spots of frames ``first .. last`` (renumbered from 0) and the edges between them; lineage
    IDs are re-derived from the kept edges."""
    spots = data.load_spots()
    spots = spots[(spots["t"] >= first) & (spots["t"] <= last)]
    spots = spots.drop(columns=["track_id", "tracklet_id"]).assign(t=spots["t"] - first)
    kept = spots["spot_id"].to_numpy()
    e = data.edges
    e = e[np.isin(e["source_spot_id"], kept) & np.isin(e["target_spot_id"], kept)]
    return TrackData(spots=spots, edges=e, ndim=3)


def export_and_score(path: Path, scene: dict[str, Any], out: Path, inner: bool) -> dict[str, float]:
    """Write the track store at ``path`` as CTC (whole movie or interior frames) and score it."""
    n_t = scene["labels"].shape[0]
    if inner:
        res = write_ctc(out, crop(read_tracks(path, lazy=True), 1, n_t - 2), scene["labels"][1 : n_t - 1])
        return ctc_scores(res, scene["gt_inner"])
    res = write_ctc(out, read_tracks(path, lazy=True), scene["labels"])
    return ctc_scores(res, scene["gt_full"])


def division_events(edges: pd.DataFrame, lineage: pd.DataFrame, n_frames: int) -> dict[str, int]:
    """Match predicted divisions (a spot with two successors) to the true ones by their spots.

    A predicted division is right when its mother spot is the true mother's last spot and its two
    successors are the first spots of the two daughters. A true division is *representable* by
    TrackMate's splitting when the mother has a predecessor frame and both daughters are seen in at
    least two frames.
    """
    lin = lineage.set_index("track_id")
    kids = lineage[lineage["parent"] > 0]
    true: dict[int, set[int]] = {}
    representable: set[int] = set()
    for p, g in kids.groupby("parent"):
        born = int(g["start"].iloc[0])
        mother = (born - 1) * SPOT_SHIFT + int(p)
        true[mother] = {born * SPOT_SHIFT + int(d) for d in g["track_id"]}
        if born - 1 >= 1 and (g["end"] > g["start"]).all() and int(lin.loc[p, "end"]) == born - 1:
            representable.add(mother)
    succ = edges.groupby("source_spot_id")["target_spot_id"].agg(frozenset)
    predicted = {int(m): set(s) for m, s in succ.items() if len(s) >= 2}
    right = {m for m, s in predicted.items() if true.get(m) == s}
    return {
        "true": len(true),
        "representable": len(representable),
        "predicted": len(predicted),
        "right": len(right),
        "right_representable": len(right & representable),
    }


def assert_same_store(a: Path, b: Path) -> None:
    """Identical edges (order, costs, kinds), spots with their track/tracklet IDs, tracks, tracklets."""
    da, db = read_tracks(a), read_tracks(b)
    pd.testing.assert_frame_equal(da.edges, db.edges)
    pd.testing.assert_frame_equal(da.spots, db.spots)
    pd.testing.assert_frame_equal(da.tracks, db.tracks)
    pd.testing.assert_frame_equal(da.tracklets, db.tracklets)


# ---------------------------------------------------------------------------------------------
# Accuracy against the generator's ground truth
# ---------------------------------------------------------------------------------------------


def test_scene_has_what_the_scores_need(scene: dict[str, Any]) -> None:
    """A few hundred cells per frame and enough divisions for the rates to mean something."""
    per_t = scene["cells"].groupby("t").size()
    lineage = scene["lineage"]
    assert len(per_t) == SYNTHETIC["shape"][0] and per_t.min() >= 200
    assert int((lineage["parent"] > 0).sum()) // 2 >= 100
    # every measured spot is a ground-truth cell (label = CTC track id) alive in its frame
    spans = lineage.set_index("track_id").loc[scene["cells"]["label"].astype(np.int64)]
    assert (
        (spans["start"].to_numpy() <= scene["cells"]["t"]) & (scene["cells"]["t"] <= spans["end"].to_numpy())
    ).all()


def test_whole_movie_ctc_export_is_valid_and_scores_tra(scene: dict[str, Any], baseline: Path) -> None:
    s = export_and_score(baseline, scene, scene["root"] / "res_full", inner=False)
    assert s["valid"] == 1
    assert s["TRA"] >= 0.99, s
    # Divisions out of frame 0 or into the last frame cannot be made (see the module docstring):
    # everything the whole-movie BC counts as missed beyond those is a real miss, and few.
    ev = division_events(read_tracks(baseline).edges, scene["lineage"], SYNTHETIC["shape"][0])
    assert s["div_tp"] + s["div_fn"] == ev["true"]
    assert s["div_fn"] >= ev["true"] - ev["representable"]
    assert s["div_fn"] - (ev["true"] - ev["representable"]) <= 0.05 * ev["representable"], (s, ev)


def test_interior_frames_divisions_precision_and_recall(inner: dict[str, Any]) -> None:
    s = inner["scores"]
    assert s["valid"] == 1
    assert s["TRA"] >= 0.99, s
    assert s["div_tp"] >= 50, s
    assert s["div_recall"] >= 0.95, s
    assert s["div_precision"] >= 0.95, s


def test_division_events_on_the_whole_movie(scene: dict[str, Any], baseline: Path) -> None:
    """Independent of CTC: mother -> daughter events matched spot by spot."""
    ev = division_events(read_tracks(baseline).edges, scene["lineage"], SYNTHETIC["shape"][0])
    assert ev["representable"] >= 100
    assert ev["right"] == ev["right_representable"]  # nothing outside what TrackMate can link
    assert ev["right_representable"] / ev["representable"] >= 0.95, ev
    assert ev["right"] / ev["predicted"] >= 0.95, ev


def test_traccuracy_agrees(scene: dict[str, Any], inner: dict[str, Any]) -> None:
    pytest.importorskip("traccuracy", reason="traccuracy not installed (optional)")
    from traccuracy import run_metrics
    from traccuracy.loaders import load_ctc_data
    from traccuracy.matchers import CTCMatcher
    from traccuracy.metrics import CTCMetrics, DivisionMetrics

    res, ours = inner["res"], inner["scores"]
    tra = scene["gt_inner"] / "TRA"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gt = load_ctc_data(str(tra), str(tra / "man_track.txt"), name="gt")
        pred = load_ctc_data(str(res), str(res / "res_track.txt"), name="pred")
        results, _ = run_metrics(gt, pred, matcher=CTCMatcher(), metrics=[CTCMetrics(), DivisionMetrics()])
    by_name = {r["metric"]["name"]: r["results"] for r in results}
    ctc = by_name["CTCMetrics"]
    div = next(v for k, v in by_name.items() if k.startswith("Division"))
    div0 = div.get("Frame Buffer 0", div)
    assert ctc["TRA"] >= 0.99 and abs(ctc["TRA"] - ours["TRA"]) <= 0.01, (ctc, ours)
    assert div0["Division Recall"] >= 0.95 and div0["Division Precision"] >= 0.95, div0


# ---------------------------------------------------------------------------------------------
# Partition invariance: the same store whatever the split of the work
# ---------------------------------------------------------------------------------------------


def test_windows_and_part_files_give_the_same_store(scene: dict[str, Any], baseline: Path) -> None:
    root = scene["root"]
    for k, (spots, window, scheduler) in enumerate(
        [(scene["spots_3"], 1, "sync"), (scene["spots_3"], 3, "threads"), (scene["cells"], 4, "threads")]
    ):
        cfg = CONFIG.model_copy(update={"window_frames": window, "scheduler": scheduler})
        out = track(spots, root / f"variant_{k}", cfg, progress=False).path
        assert_same_store(baseline, out)


def test_processes_scheduler_gives_the_same_store(scene: dict[str, Any], baseline: Path) -> None:
    cfg = CONFIG.model_copy(update={"window_frames": 5, "scheduler": "processes"})
    out = track(scene["spots_3"], scene["root"] / "processes", cfg, progress=False).path
    assert_same_store(baseline, out)


def test_distributed_scheduler_gives_the_same_store_and_score(
    scene: dict[str, Any], baseline: Path, inner: dict[str, Any]
) -> None:
    distributed = pytest.importorskip("distributed")
    cfg = CONFIG.model_copy(update={"window_frames": 3, "scheduler": "distributed"})
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):

        def executed(dask_worker: Any) -> int:
            return int(dask_worker.state.executed_count)

        before = sum(client.run(executed).values())
        out = track(scene["spots_3"], scene["root"] / "distributed", cfg, progress=False).path
        ran = sum(client.run(executed).values()) - before
    assert ran >= SYNTHETIC["shape"][0] - 1  # one task per frame pair, run on the cluster's workers
    assert_same_store(baseline, out)
    scores = export_and_score(out, scene, scene["root"] / "res_distributed", inner=True)
    assert abs(scores["TRA"] - inner["scores"]["TRA"]) <= 0.01
    assert scores == inner["scores"]  # identical edges: identical scores


def test_distributed_without_a_client_is_an_error(scene: dict[str, Any], tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    with pytest.raises(ValueError):
        distributed.default_client()  # no client left over from another test
    cfg = CONFIG.model_copy(update={"scheduler": "distributed"})
    with pytest.raises(TrackingError, match="needs an active distributed.Client"):
        track(scene["spots_1"], tmp_path / "t", cfg, progress=False)
    assert not (tmp_path / "t").exists()
