"""The whole pipeline as one resumable run (``vollseg_dask.pipeline``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from vollseg_dask.config import parse_config
from vollseg_dask.errors import ConfigError, LockedError, StoreNotFoundError
from vollseg_dask.pipeline import RunConfig, resolve_inputs, run, run_lock

TRACK = {
    "LINKING_MAX_DISTANCE": 5.0,
    "GAP_CLOSING_MAX_DISTANCE": 6.0,
    "MAX_FRAME_GAP": 2,
    "ALLOW_TRACK_SPLITTING": True,
    "SPLITTING_MAX_DISTANCE": 8.0,
}


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory) -> Path:
    from vollseg_dask.synthetic import SyntheticConfig, write_synthetic

    path = tmp_path_factory.mktemp("pipe") / "syn.ome.zarr"
    write_synthetic(path, SyntheticConfig(shape=(3, 16, 64, 64), n_cells=40, seed=3), progress=False,
                    scheduler="synchronous")
    return path


def _config(store: Path, out: Path, **over) -> RunConfig:
    data = {
        "input": {"path": str(store)},
        "output": str(out),
        "cluster": {"kind": "threads"},
        "predictor": {"kind": "ground-truth"},
        "segment": {"block_shape": (16, 32, 32), "halo": (8, 16, 16)},
        "track": TRACK,
        "analyze": {"track_plots": 1},
        **over,
    }
    return RunConfig.model_validate(data)


def _digest(root: Path) -> dict[str, str]:
    """SHA-256 of every visible file below ``root`` (relative path -> hash)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        # dot- and underscore-files are markers and manifests (they hold timestamps), not results
        if p.is_file() and not any(part.startswith((".", "_")) for part in rel.parts):
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _label_and_table_hashes(store: Path, out: Path) -> dict[str, str]:
    h = {f"labels/{k}": v for k, v in _digest(store / "labels" / "cells").items()}
    h.update({f"cells/{k}": v for k, v in _digest(out / "syn" / "cells").items()})
    h.update({f"tracks/{k}": v for k, v in _digest(out / "syn" / "tracks").items()})
    return h


def test_end_to_end_then_resume_is_identical(synthetic_store, tmp_path):
    store = tmp_path / "syn.ome.zarr"
    shutil.copytree(synthetic_store, store)
    out = tmp_path / "out"
    report = run(_config(store, out))
    assert report.ok, report.summary()
    ds = report.datasets[0]
    for key in ("labels", "cells", "tracks", "analysis", "trackmate", "ctc", "napari"):
        assert Path(ds.outputs[key]).exists(), key
    manifest = json.loads((out / "syn" / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"ingest", "segment", "measure", "track", "analyze", "export"}
    assert manifest["segment_blocks"]["all_certified"]
    assert manifest["versions"]["numpy"] == np.__version__
    assert (out / "run_config.yaml").is_file() and (out / "summary.json").is_file()
    assert not (out / ".vollseg.lock").exists()
    from vollseg_dask.io.tracks import read_tracks

    tracks = read_tracks(out / "syn" / "tracks")
    assert tracks.frame_interval == 60.0  # taken from the image's t scale (synthetic default)
    assert len(tracks.spots) > 0 and (tracks.spots["track_id"] >= 0).mean() > 0.9
    first = _label_and_table_hashes(store, out)

    again = run(_config(store, out))
    assert all(rec["status"] == "skipped" for rec in again.datasets[0].stages.values())
    assert _label_and_table_hashes(store, out) == first

    # A crash after segmentation: later stages' markers and outputs gone -> rerun gives the same bytes.
    shutil.rmtree(out / "syn" / ".done")
    shutil.rmtree(out / "syn" / "cells")
    shutil.rmtree(out / "syn" / "tracks")
    resumed = run(_config(store, out))
    assert resumed.ok
    assert _label_and_table_hashes(store, out) == first

    # A changed tracker setting invalidates tracking and everything after it, not segmentation.
    changed = run(_config(store, out, track={**TRACK, "LINKING_MAX_DISTANCE": 4.0}))
    stages = changed.datasets[0].stages
    assert stages["segment"]["status"] == "skipped" and stages["measure"]["status"] == "skipped"
    assert stages["track"]["status"] == "done" and stages["export"]["status"] == "done"


def test_second_run_on_same_output_is_refused(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(LockedError, match="in use by another run"):
            with run_lock(tmp_path):
                pass
    assert not (tmp_path / ".vollseg.lock").exists()


def test_stale_lock_of_dead_process_is_taken_over(tmp_path):
    import socket

    (tmp_path / ".vollseg.lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / ".vollseg.lock").read_text())["pid"] == os.getpid()


def test_batch_mode_failure_does_not_stop_the_others(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    np.save(inputs / "a_good.npy", np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8))
    (inputs / "b_broken.npy").write_bytes(b"this is not a numpy file")
    np.save(inputs / "c_good.npy", np.ones((4, 8, 8), dtype=np.uint8))
    cfg = _config(inputs, tmp_path / "out", stages=["ingest"])
    report = run(cfg)
    status = {d.name: d.status for d in report.datasets}
    assert status == {"a_good": "done", "b_broken": "failed", "c_good": "done"}
    broken = next(d for d in report.datasets if d.name == "b_broken")
    assert broken.reason and "b_broken" in report.summary()
    assert (tmp_path / "out" / "c_good" / "image.zarr").is_dir()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [d["status"] for d in summary["datasets"]] == ["done", "failed", "done"]


def test_bad_config_and_inputs(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(RunConfig, {"input": {"path": "x"}, "segmnet": {}})
    with pytest.raises(ConfigError, match="unknown key"):
        run({"input": {"path": "x"}, "track": {"LINKING_MAX_DISTANC": 3}})
    with pytest.raises(StoreNotFoundError, match="matches no file"):
        resolve_inputs(str(tmp_path / "nothing*.tif"))
    with pytest.raises(StoreNotFoundError, match="holds no input"):
        resolve_inputs(str(tmp_path))


def test_unwritable_output_fails_before_work(tmp_path, synthetic_store):
    # A path below a regular file cannot be created, whoever runs the test (root included).
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(StoreNotFoundError, match="not writable"):
        run(_config(synthetic_store, blocker / "out"))
    assert not (synthetic_store / "labels" / "cells").exists()
