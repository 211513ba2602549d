"""Determinism of the whole pipeline (segment → measure → track → export), DESIGN §3.

The same inputs and run settings must give byte-identical outputs whatever the segmentation block
shape (ragged blocks that do not divide the volume included), the grid origin, the measurement
blocks and time batches, the order in which blocks are submitted, and the number and kind of
workers. Compared per run:

* the final labels: SHA-256 of every pyramid level's bytes, all time points;
* the tissue mask (``tissue_mask="auto"``), SHA-256 of its bytes;
* the cell table: SHA-256 of its content sorted by ``(t, label)``, and the Parquet file bytes too
  (pyarrow writes no timestamp into Parquet metadata: ``created_by`` and the schema only);
* the track store: spots (sorted by spot ID), edges (sorted by source, target), tracks and tracklets;
* the exports: TrackMate XML, CTC ``res_track.txt`` + masks and napari tracks, file bytes;
* the track analysis: its tables (file bytes) and ``analysis.json`` less the path it read from.

The TrackMate XML holds no date; its ``<Log>`` names the package version, which is the same for
every run in one environment, so the file bytes are compared as they are.

The segmentation-level tiling invariance on a large tissue is in ``test_segmentation_tiling.py``;
this file checks that measurement, tracking and export keep it, on a tiny synthetic movie.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from vollseg_dask.pipeline import RunConfig, run

SHAPE = (3, 16, 48, 48)  # t, z, y, x
TRACK = {
    "LINKING_MAX_DISTANCE": 6.0,
    "GAP_CLOSING_MAX_DISTANCE": 6.0,
    "MAX_FRAME_GAP": 2,
    "ALLOW_TRACK_SPLITTING": True,
    "SPLITTING_MAX_DISTANCE": 8.0,
}
# (block shape, grid origin): aligned blocks that divide the volume, and ragged ones on a shifted grid
ALIGNED = ((8, 24, 24), (0, 0, 0))
RAGGED = ((9, 26, 30), (4, 7, 11))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from vollseg_dask.synthetic import SyntheticConfig, write_synthetic

    path = tmp_path_factory.mktemp("determinism") / "syn.ome.zarr"
    write_synthetic(path, SyntheticConfig(shape=SHAPE, n_cells=24, seed=7, division_rate=0.2), progress=False,
                    scheduler="synchronous")
    return path


def _config(store: Path, out: Path, labels: str, grid: tuple, cluster: dict[str, Any],
            stages: list[str] | None = None, measure: dict[str, Any] | None = None,
            track: dict[str, Any] | None = None) -> RunConfig:
    block, origin = grid
    data: dict[str, Any] = {
        "input": {"path": str(store)},
        "output": str(out),
        "labels_name": labels,
        "cluster": cluster,
        "predictor": {"kind": "ground-truth"},
        "segment": {"block_shape": block, "grid_origin": origin, "halo": (8, 16, 16)},
        # every run computes its own tissue mask (a labels group of its own) and surface areas
        "measure": {"tissue_mask": "auto", "tissue_name": f"tissue_{labels}", "surface": True, **(measure or {})},
        "track": {**TRACK, **(track or {})},
        "analyze": {"track_plots": 0},
        "export": {"formats": ["trackmate", "ctc", "napari", "geff"]},
    }
    if stages is not None:
        data["stages"] = stages
    return RunConfig.model_validate(data)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _table_sha(df: pd.DataFrame, keys: list[str]) -> str:
    """SHA-256 of a table's content: column names, dtypes and values, rows sorted by ``keys``."""
    df = df.sort_values(keys, kind="stable").reset_index(drop=True)
    df = df[sorted(df.columns)]
    head = repr([(c, str(df[c].dtype)) for c in df.columns]).encode()
    return _sha(head + pd.util.hash_pandas_object(df, index=True).to_numpy().tobytes())


def _files_sha(root: Path) -> dict[str, str]:
    """SHA-256 of every visible file below ``root`` (dot-files are done-markers holding timestamps)."""
    return {str(p.relative_to(root)): _sha(p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)}


def _outputs(store: Path, out: Path, labels: str) -> dict[str, Any]:
    """Every compared output of one run, as hashes."""
    import zarr

    from vollseg_dask.io.cell_table import read_cell_table
    from vollseg_dask.io.tracks import read_tracks

    group = zarr.open_group(str(store / "labels" / labels), mode="r")
    levels = sorted(k for k in group.array_keys())
    assert levels, f"no label arrays in {labels}"
    h: dict[str, Any] = {}
    for k in levels:
        arr = np.asarray(group[k][...])
        h[f"labels/{k}"] = (arr.shape, str(arr.dtype), _sha(arr.tobytes()))
    lab0 = np.asarray(group[levels[0]][...])
    assert lab0.max() > 0, "empty segmentation: nothing is compared"
    tissue = np.asarray(zarr.open_group(str(store / "labels" / f"tissue_{labels}"), mode="r")["0"][...])
    assert 0 < tissue.sum() < tissue.size
    h["tissue"] = _sha(tissue.tobytes())

    ds = out / "syn"
    cells = read_cell_table(ds / "cells")
    assert len(cells) > 10 and cells["surface_area_um2"].notna().all()
    assert (cells["distance_to_boundary_um"] > 0).all()  # the tissue distance was measured
    h["cells"] = _table_sha(cells, ["t", "label"])
    h["cells/files"] = _files_sha(ds / "cells")
    h["btrackmate.csv"] = _sha((ds / "cells_btrackmate.csv").read_bytes())

    tr = read_tracks(ds / "tracks")
    assert len(tr.edges) > 10
    h["spots"] = _table_sha(tr.spots, ["spot_id"])
    h["edges"] = _table_sha(tr.edges, ["source_spot_id", "target_spot_id"])
    h["tracks"] = _table_sha(tr.tracks, ["track_id"])
    h["tracklets"] = _table_sha(tr.tracklets, ["tracklet_id"])
    h["tracks/files"] = _files_sha(ds / "tracks")
    # the settings record names the scheduler and window size; the results must not depend on them
    assert h["tracks/files"].pop("tracker_config.yaml")
    # the image calibration names the run's own labels group (each run here writes its own)
    assert json.loads((ds / "tracks" / "image.json").read_text())["labels"] == labels
    h["tracks/files"].pop("image.json")
    h["tracks.xml"] = _sha((ds / "tracks.xml").read_bytes())
    h["ctc"] = _files_sha(ds / "ctc")
    h["napari"] = _sha((ds / "napari_tracks.npz").read_bytes())
    h["geff"] = _files_sha(ds / "tracks.geff")  # array chunks (dot-files hold metadata naming the labels group)
    assert h["geff"], "no GEFF arrays"
    # analysis: its tables; the plots are images (their bytes hold no result a test could name)
    h["analysis/tables"] = _files_sha(ds / "analysis" / "tables")
    assert h["analysis/tables"], "the analysis wrote no tables"
    summary = json.loads((ds / "analysis" / "analysis.json").read_text())
    summary.pop("source")  # the tracks folder it read: differs by output folder, not by result
    h["analysis.json"] = summary
    return h


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _blocks(out: Path) -> int:
    return int(json.loads((out / "syn" / "manifest.json").read_text())["segment_blocks"]["n_blocks"])


THREADS1 = {"kind": "threads", "n_workers": 1}
THREADS2 = {"kind": "threads", "n_workers": 2}


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("ref")
    report = run(_config(store, out, "ref", ALIGNED, THREADS1))
    assert report.ok, report.summary()
    assert _blocks(out) == 8
    return _outputs(store, out, "ref")


def test_two_runs_are_identical(store, reference, tmp_path):
    report = run(_config(store, tmp_path, "again", ALIGNED, THREADS1))
    assert report.ok, report.summary()
    assert _diff(_outputs(store, tmp_path, "again"), reference) == []


def test_ragged_blocks_shifted_grid_and_two_threads(store, reference, tmp_path):
    # measurement blocks, time batches and surface tasks cut differently too
    measure = {"block": (5, 16, 24), "batch_times": 1, "surface_tasks": 3}
    report = run(_config(store, tmp_path, "ragged", RAGGED, THREADS2, measure=measure))
    assert report.ok, report.summary()
    assert _blocks(tmp_path) == 3 * 3 * 3  # cuts z 4, 13; y 7, 33; x 11, 41
    assert _diff(_outputs(store, tmp_path, "ragged"), reference) == []


def test_shuffled_block_order(store, reference, tmp_path):
    # run() submits blocks in plan order: segment with a shuffled order, then the rest of the pipeline
    from vollseg_dask.predictors.ground_truth import GroundTruthPredictor
    from vollseg_dask.segmentation import segment

    cfg = _config(store, tmp_path, "shuffled", RAGGED, THREADS2,
                  stages=["ingest", "measure", "track", "analyze", "export"])
    pred = GroundTruthPredictor(str(store), cfg.predictor.ground_truth)
    res = segment(store, "shuffled", pred, cfg.segment, client=THREADS2, shuffle_blocks=20261124,
                  show_progress=False)
    assert res.all_certified and res.n_blocks > 8
    report = run(cfg)
    assert report.ok, report.summary()
    assert _diff(_outputs(store, tmp_path, "shuffled"), reference) == []


def test_distributed_two_processes(store, reference, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        # frame-pair links on the cluster too, one frame pair per batch
        track = {"scheduler": "distributed", "window_frames": 1}
        report = run(_config(store, tmp_path, "dist", ALIGNED, THREADS1, track=track), client=client)
    assert report.ok, report.summary()
    # the run used the cluster: the manifest has the memory of the client and of both workers
    assert len(json.loads((tmp_path / "syn" / "manifest.json").read_text())["peak_rss_bytes"]) == 3
    assert _diff(_outputs(store, tmp_path, "dist"), reference) == []
