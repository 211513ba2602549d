"""Isolated runs (issue 14, points 1 and 7): state lives in the run's scratch folder, never in the
input store; one writer per labels group; incomplete labels are refused; leftovers are swept.

Small synthetic stores, the ground-truth predictor and the threaded scheduler keep each case to
seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from vollseg_dask.errors import InvalidDataError, LockedError
from vollseg_dask.pipeline import RunConfig, run

SHAPE = (2, 12, 32, 32)
CHUNKS = (12, 32, 32)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    from vollseg_dask.synthetic import SyntheticConfig, write_synthetic

    path = tmp_path_factory.mktemp("iso") / "syn.ome.zarr"
    write_synthetic(path, SyntheticConfig(shape=SHAPE, n_cells=8, seed=3, chunks=CHUNKS), progress=False,
                    scheduler="synchronous")
    return path


def _copy(pristine: Path, tmp_path: Path, name: str = "syn.ome.zarr") -> Path:
    store = tmp_path / name
    shutil.copytree(pristine, store)
    return store


def _config(store: Path, out: Path, **over) -> RunConfig:
    data = {
        "input": {"path": str(store)},
        "output": str(out),
        "stages": ["ingest", "segment", "measure"],
        "cluster": {"kind": "threads"},
        "predictor": {"kind": "ground-truth"},
        "segment": {"block_shape": CHUNKS},
        **over,
    }
    return RunConfig.model_validate(data)


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def _table_hash(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((out / "syn" / "cells").glob("t=*/part-0.parquet")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_run_writes_only_the_labels_group_into_the_input_store(pristine, tmp_path):
    store = _copy(pristine, tmp_path)
    before = _tree(store)
    out = tmp_path / "out"
    report = run(_config(store, out))
    assert report.ok, report.summary()
    added = _tree(store) - before
    # only the requested labels group (and nothing hidden: no state, lock or staging folder)
    assert added and all(p == "labels/cells" or p.startswith("labels/cells/") for p in added), sorted(added)
    assert not any(Path(p).name.startswith(".") for p in added)
    assert not (store / ".vollseg").exists()
    assert "cells" in zarr.open_group(str(store / "labels"), mode="r").attrs.asdict()["ome"]["labels"]
    # the scratch folder inside the output is removed once the data set completes
    assert not (out / "syn" / "scratch").exists()
    # ... unless asked to keep it
    out2 = tmp_path / "out2"
    store2 = _copy(pristine, tmp_path, "syn2.ome.zarr")
    report = run(_config(store2, out2, keep_intermediates=True, labels_name="kept"))
    assert report.ok
    assert (out2 / "syn2" / "scratch" / "segment" / "fingerprint.json").is_file()


def test_scratch_folder_can_be_elsewhere(pristine, tmp_path):
    store = _copy(pristine, tmp_path)
    scratch = tmp_path / "node-local"
    report = run(_config(store, tmp_path / "out", scratch=str(scratch), keep_intermediates=True))
    assert report.ok
    assert (scratch / "syn" / "segment" / "done").is_dir()
    assert not (tmp_path / "out" / "syn" / "scratch").exists()


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3, 1.0, 2.0])
def test_two_runs_on_one_store_never_mix(pristine, tmp_path, delay):
    """Two runs, different outputs and settings, one input store: each ends with its own correct
    result, or the second is refused naming the holder; never 'done' with a mixture."""
    refs = {}
    for tag, over in (("a", {}), ("b", {"segment": {"block_shape": CHUNKS, "min_size": 400}})):
        s = _copy(pristine, tmp_path / f"ref_{tag}")
        rep = run(_config(s, tmp_path / f"ref_{tag}" / "out", **over))
        assert rep.ok
        refs[tag] = (rep.datasets[0].counts["cells"], _table_hash(tmp_path / f"ref_{tag}" / "out"))
    assert refs["a"][0] != refs["b"][0]  # the two settings give different answers

    store = _copy(pristine, tmp_path)
    reports: dict[str, object] = {}

    def go(tag: str, over: dict, wait: float) -> None:
        time.sleep(wait)
        reports[tag] = run(_config(store, tmp_path / f"out_{tag}", **over))

    threads = [threading.Thread(target=go, args=("a", {}, 0.0)),
               threading.Thread(target=go, args=("b", {"segment": {"block_shape": CHUNKS, "min_size": 400}}, delay))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    n_ok = 0
    for tag in ("a", "b"):
        rep = reports[tag]
        ds = rep.datasets[0]
        if ds.status == "done":
            n_ok += 1
            assert (ds.counts["cells"], _table_hash(tmp_path / f"out_{tag}")) == refs[tag], tag
        else:
            assert "LockedError" in ds.reason and f"pid {os.getpid()} on {socket.gethostname()} since" in ds.reason
    assert n_ok >= 1


def test_second_writer_of_a_labels_group_is_refused_naming_the_holder(pristine, tmp_path):
    from vollseg_dask.predictors.ground_truth import GroundTruthPredictor
    from vollseg_dask.segmentation import segment

    store = _copy(pristine, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = store / "labels" / ".cells.lock"
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": time.time()}))
        pred = GroundTruthPredictor(str(store), "ground_truth")
        with pytest.raises(LockedError, match=rf"labels 'cells' of .* is in use .*pid {holder.pid} on "
                                              rf"{socket.gethostname()} since 20\d\d-"):
            segment(store, "cells", pred, {"block_shape": CHUNKS}, {"kind": "threads"}, show_progress=False)
        assert not (store / "labels" / "cells").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is taken over
    res = segment(store, "cells", GroundTruthPredictor(str(store), "ground_truth"), {"block_shape": CHUNKS},
                  {"kind": "threads"}, show_progress=False)
    assert res.completed and not (store / "labels" / ".cells.lock").exists()


def test_labels_flagged_incomplete_are_refused_by_readers(pristine, tmp_path):
    from vollseg_dask.evaluate import evaluate_store
    from vollseg_dask.io.omezarr import create_labels, open_labels
    from vollseg_dask.measure import measure_cells

    store = _copy(pristine, tmp_path)
    create_labels(store, "half", dtype="uint32")
    zarr.open_group(str(store / "labels" / "half"), mode="r+").attrs.update(
        {"vollseg_dask": {"complete": False}})
    with pytest.raises(InvalidDataError, match="'half' .* incomplete"):
        open_labels(store, "half")
    with pytest.raises(InvalidDataError, match="incomplete"):
        measure_cells(store, tmp_path / "cells", labels="half")
    with pytest.raises(InvalidDataError, match="incomplete"):
        evaluate_store(store, "half", "ground_truth")
    from click.testing import CliRunner

    from vollseg_dask.cli import main

    res = CliRunner().invoke(main, ["info", str(store)])
    assert res.exit_code == 0 and "labels/half: INCOMPLETE" in res.output


def test_leftovers_of_a_killed_run_are_swept(pristine, tmp_path):
    store = _copy(pristine, tmp_path)
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / "syn" / "analysis").mkdir(parents=True)
    junk = [out / "syn" / f".manifest.json.tmp-{dead.pid}-0123abcd",
            out / f".summary.json.tmp-{dead.pid}-89abcdef",
            out / "syn" / f".analysis.tmp-{dead.pid}-deadbeef"]
    junk[0].write_text("{")
    junk[1].write_text("{")
    junk[2].mkdir()
    mine = out / "syn" / f".keep.tmp-{os.getpid()}-0000aaaa"  # a live process's temporary is left alone
    mine.write_text("x")
    report = run(_config(store, out))
    assert report.ok
    assert not any(p.exists() for p in junk)
    assert mine.exists()
    assert {p.name for p in out.rglob(".*.tmp-*")} == {mine.name}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_input_store_fails_with_a_clear_message(pristine, tmp_path):
    store = _copy(pristine, tmp_path)
    for p in [store, *store.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)
    try:
        report = run(_config(store, tmp_path / "out"))
        assert not report.ok
        assert "read-only input store" in report.datasets[0].reason
    finally:
        for p in [store, *store.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)


def test_stale_state_folder_in_store_is_not_used(pristine, tmp_path):
    """Labels of an identical finished run are reused by a second run from another output folder
    (no state is needed for that: the labels carry their fingerprint)."""
    store = _copy(pristine, tmp_path)
    first = run(_config(store, tmp_path / "out1"))
    second = run(_config(store, tmp_path / "out2"))
    assert first.ok and second.ok
    assert second.datasets[0].counts == first.datasets[0].counts
    a = np.asarray(zarr.open_array(str(store / "labels" / "cells" / "0"), mode="r")[...])
    assert a.max() > 0
