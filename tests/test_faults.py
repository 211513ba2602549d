"""Fault tolerance of the whole run: a killed worker, a killed run, corrupt and missing input chunks.

Every faulty run is compared with one uninterrupted run of the same configuration on its own copy of
the same synthetic store: labels (every pyramid level, decoded) and cell-table files must be
byte-identical. The lock and read-only output cases live in ``tests/test_pipeline.py``
(``test_second_run_on_same_output_is_refused``, ``test_stale_lock_of_dead_process_is_taken_over``,
``test_unwritable_output_fails_before_work``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from vollseg_dask.errors import CorruptChunkError
from vollseg_dask.io.omezarr import chunk_file, missing_chunks, open_image, read_region
from vollseg_dask.pipeline import RunConfig, run

SHAPE = (3, 16, 48, 48)
CHUNKS = (8, 24, 24)  # 8 image chunks per time point


def _config(store: Path, out: Path, **over) -> RunConfig:
    data = {
        "input": {"path": str(store)},
        "output": str(out),
        "stages": ["ingest", "segment", "measure"],
        "cluster": {"kind": "threads"},
        "predictor": {"kind": "ground-truth"},
        "segment": {"block_shape": CHUNKS, "halo": (4, 8, 8)},
        # one time point per measure batch: a failure at t=2 leaves t=0 and t=1 finished
        "measure": {"batch_times": 1},
        **over,
    }
    return RunConfig.model_validate(data)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hashes(store: Path, out: Path) -> dict[str, str]:
    """SHA-256 of every labels level (decoded values, dtype and shape) and of every cell-table file."""
    h: dict[str, str] = {}
    group = zarr.open_group(str(store / "labels" / "cells"), mode="r")
    for name, arr in sorted(group.arrays()):
        a = np.ascontiguousarray(arr[...])
        h[f"labels/{name}"] = _sha(a.tobytes() + f"{a.dtype}{a.shape}".encode())
    cells = out / "syn" / "cells"
    for p in sorted(cells.glob("t_*/*")):  # visible partitions only: hidden ones are half-written
        if not p.name.startswith((".", "_")):
            h[f"cells/{p.relative_to(cells)}"] = _sha(p.read_bytes())
    h["btrackmate.csv"] = _sha((out / "syn" / "cells_btrackmate.csv").read_bytes())
    return h


def _markers(store: Path, stage: str) -> list[Path]:
    """Done-markers of the segmentation's scratch folder: a run's (``out/syn/scratch/segment``) or a
    direct ``segment`` call's (beside the store)."""
    from vollseg_dask.segmentation.layout import default_scratch

    found = []
    for scratch in (store.parent / "out" / "syn" / "scratch" / "segment", default_scratch(store, "cells")):
        found += (scratch / "done" / stage).glob("*.json")
    return sorted(found)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    from vollseg_dask.synthetic import SyntheticConfig, write_synthetic

    path = tmp_path_factory.mktemp("faults") / "syn.ome.zarr"
    write_synthetic(path, SyntheticConfig(shape=SHAPE, n_cells=20, seed=3, chunks=CHUNKS), progress=False,
                    scheduler="synchronous")
    return path


@pytest.fixture(scope="module")
def reference(pristine, tmp_path_factory) -> dict[str, object]:
    """Hashes of an uninterrupted run (``hashes``) and its number of segmentation tasks (``n_tasks``)."""
    root = tmp_path_factory.mktemp("reference")
    store = root / "syn.ome.zarr"
    shutil.copytree(pristine, store)
    report = run(_config(store, root / "out"))
    assert report.ok, report.summary()
    h = _hashes(store, root / "out")
    assert len([k for k in h if k.startswith("cells/")]) == SHAPE[0]  # one part file per t
    manifest = json.loads((root / "out" / "syn" / "manifest.json").read_text())
    return {"hashes": h, "n_tasks": manifest["segment_blocks"]["n_tasks"]}


def _copy(pristine: Path, tmp_path: Path) -> Path:
    store = tmp_path / "syn.ome.zarr"
    shutil.copytree(pristine, store)
    return store


def _image_array(store: Path) -> zarr.Array:
    img = open_image(store)
    return zarr.open_array(store=str(store), path=img.path, mode="r")


# ------------------------------------------------------------------------------------------------
# 1. A worker killed mid-stage
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_killed_mid_segmentation_give_identical_output(pristine, reference, tmp_path):
    """Two workers; the busiest is killed when the first unit is done, the other one right after.

    The first kill moves its tasks to the surviving worker; the second leaves, for a moment, no
    worker holding anything the run computed or shared (a scattered predictor was lost for good
    then and failed the run: it now travels as a recomputable task).
    """
    distributed = pytest.importorskip("distributed")
    store = _copy(pristine, tmp_path)
    out = tmp_path / "out"
    n_units = SHAPE[0] * 8
    kills: list[dict[str, int]] = []

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
                                  dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        stop = threading.Event()

        def kill(addr: str) -> None:
            busy = client.processing()
            kills.append({"pid": pids.pop(addr), "in_flight": len(busy.get(addr, ())),
                          "done": len(_markers(store, "predict")), "final": len(_markers(store, "final"))})
            os.kill(kills[-1]["pid"], signal.SIGKILL)

        def killer() -> None:
            while not stop.is_set() and pids:
                done = len(_markers(store, "predict"))
                if not kills and done:
                    busy = client.processing()
                    kill(max(sorted(pids), key=lambda a: len(busy.get(a, ()))))
                elif kills and done > kills[0]["done"]:
                    kill(next(iter(pids)))  # the survivor, as soon as it finished one more unit
                time.sleep(0.002)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            report = run(_config(store, out), client=client)
        finally:
            stop.set()
            thread.join()
        after = set(client.run(os.getpid).values())

    assert len(kills) == 2, f"expected two kills during the segmentation, got {kills}"
    assert all(k["final"] == 0 and k["done"] < n_units for k in kills)  # both mid-stage
    assert kills[0]["in_flight"] >= 1  # the first died holding tasks, which the scheduler gave to others
    assert not after & {k["pid"] for k in kills}  # the nannies replaced the killed processes
    assert report.ok, report.summary()
    assert _hashes(store, out) == reference["hashes"]


# ------------------------------------------------------------------------------------------------
# 2. The whole run killed
# ------------------------------------------------------------------------------------------------


def _cells_done(out: Path) -> list[Path]:
    return sorted((out / "syn" / "cells").glob("t_*/_SUCCESS"))


@pytest.mark.slow
@pytest.mark.parametrize(("cluster", "kill_in"), [
    ({"kind": "threads"}, "segment"),
    ({"kind": "local", "n_workers": 1, "threads_per_worker": 1, "memory_limit": "1GiB"}, "measure"),
], ids=["threads-segment", "localcluster-measure"])
def test_killed_run_process_resumes_to_identical_output(pristine, reference, tmp_path, cluster, kill_in):
    psutil = pytest.importorskip("psutil")
    from vollseg_dask.config import save_config

    store = _copy(pristine, tmp_path)
    out = tmp_path / "out"
    cfg = _config(store, out, cluster=cluster)
    cfg_file = tmp_path / "run.yaml"
    save_config(cfg, cfg_file)
    started = {"segment": lambda: _markers(store, "predict"), "measure": lambda: _cells_done(out)}[kill_in]
    log = tmp_path / "child.log"
    with open(log, "wb") as fh:
        child = subprocess.Popen([sys.executable, "-m", "vollseg_dask", "run", str(cfg_file)], stdout=fh, stderr=fh)
    try:
        deadline = time.monotonic() + 120
        while not started():
            assert child.poll() is None, f"the run ended before it could be killed: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no {kill_in} unit finished within 120 s"
            time.sleep(0.005)
        tree = psutil.Process(child.pid).children(recursive=True)  # worker processes of a LocalCluster
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # the dead run's workers go with it: none keeps writing while the next run resumes
    _, alive = psutil.wait_procs(tree, timeout=20)
    assert not alive, f"processes of the killed run still alive: {alive}"
    if kill_in == "segment":
        assert not _markers(store, "final"), "the segmentation finished before the kill"
    else:
        assert len(_cells_done(out)) < SHAPE[0], "the measurement finished before the kill"
    n_done = len(_markers(store, "predict"))
    n_cells_done = len(_cells_done(out))
    lock = out / ".vollseg.lock"
    assert json.loads(lock.read_text())["pid"] == child.pid  # the dead run's lock is still there

    report = run(cfg)  # takes the stale lock over and resumes
    assert report.ok, report.summary()
    assert not lock.exists()
    assert _hashes(store, out) == reference["hashes"]
    manifest = json.loads((out / "syn" / "manifest.json").read_text())
    if kill_in == "segment":
        # resumed: the units finished before the kill were not submitted again
        assert manifest["segment_blocks"]["n_tasks"] <= reference["n_tasks"] - n_done
    else:
        stages = report.datasets[0].stages
        assert stages["segment"]["status"] == "skipped"
        # resumed: only the time points not finished before the kill were measured
        assert stages["measure"]["voxels"] == (SHAPE[0] - n_cells_done) * int(np.prod(SHAPE[1:]))


# ------------------------------------------------------------------------------------------------
# 3. Corrupt or missing input chunks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["v3", "v2", "sharded"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_read_region_names_the_corrupt_chunk(tmp_path, kind, damage):
    kw = {"v3": {}, "v2": {"zarr_format": 2}, "sharded": {"shards": (1, 8, 8)}}[kind]
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(2, 8, 8), chunks=(1, 4, 4), dtype="uint16", **kw)
    values = np.arange(128, dtype=np.uint16).reshape(2, 8, 8) + 1
    arr[:] = values
    pos = (1, 0, 0) if kind == "sharded" else (1, 0, 1)
    key, file = chunk_file(arr, pos)
    assert file is not None and file.is_file()
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 8)

    with pytest.raises(CorruptChunkError) as info:
        read_region(arr, (1, slice(None), slice(2, 8)), what="image test")
    msg = str(info.value)
    assert f"chunk {key!r}" in msg and str(file) in msg and f"grid position {pos}" in msg and "image test" in msg
    assert isinstance(info.value, OSError) and info.value.__cause__ is not None
    # chunks that are intact still read
    np.testing.assert_array_equal(read_region(arr, (0, slice(None), slice(2, 8))), values[0, :, 2:8])
    # missing is not corrupt: a deleted file reads as the fill value and is listed by missing_chunks
    file.unlink()
    assert missing_chunks(arr) == (1, [key])
    unit = arr.shards or arr.chunks
    region = tuple(slice(p * u, (p + 1) * u) for p, u in zip(pos, unit, strict=True))
    assert not read_region(arr, region).any()


def test_dask_image_reads_name_the_corrupt_chunk(pristine, tmp_path):
    store = _copy(pristine, tmp_path)
    key, file = chunk_file(_image_array(store), (1, 1, 0, 1))
    file.write_bytes(b"not a zstd frame")
    img = open_image(store)
    assert int(img.data[0].sum().compute()) > 0  # other time points still read
    with pytest.raises(CorruptChunkError, match=f"chunk '{key}'.*{file}"):
        img.data[1].sum().compute()


@pytest.mark.slow
def test_corrupt_image_chunk_fails_only_what_needs_it_and_resumes_after_repair(pristine, reference, tmp_path):
    store = _copy(pristine, tmp_path)
    out = tmp_path / "out"
    key, file = chunk_file(_image_array(store), (2, 1, 0, 1))
    original = file.read_bytes()
    file.write_bytes(original[: len(original) // 3])  # truncated, as by a failed copy

    report = run(_config(store, out))
    ds = report.datasets[0]
    assert not report.ok and ds.status == "failed"
    assert ds.reason.startswith("CorruptChunkError") and f"chunk {key!r}" in ds.reason and str(file) in ds.reason
    # nothing else lost: the segmentation (which reads no image with this predictor) and the cell
    # table of t=0 and t=1 are finished and equal to an uninterrupted run's; t=2 is not there
    assert ds.stages["segment"]["status"] == "done"
    got = _hashes_partial(store, out)
    ref = reference["hashes"]
    assert {k: v for k, v in got.items() if not k.startswith("cells/t_000002")} == \
        {k: v for k, v in ref.items() if k in got}
    assert not (out / "syn" / "cells" / "t_000002").exists()
    assert all(k in got for k in ref if k.startswith(("labels/", "cells/t_000000", "cells/t_000001")))
    t0_part = out / "syn" / "cells" / "t_000000" / "part-0.parquet"
    t0_stamp = t0_part.stat().st_mtime_ns

    file.write_bytes(original)  # repaired
    again = run(_config(store, out))
    assert again.ok, again.summary()
    stages = again.datasets[0].stages
    # the image changed since (repaired): the stages reading it run again, but the labels of t=0 and
    # t=1 come out the same (same per-t fingerprints), so their cell-table partitions are kept
    assert stages["ingest"]["status"] == "done" and stages["segment"]["status"] == "done"
    assert stages["measure"]["status"] == "done"
    assert t0_part.stat().st_mtime_ns == t0_stamp  # resumed: t=0 was not measured again
    assert _hashes(store, out) == ref


def _hashes_partial(store: Path, out: Path) -> dict[str, str]:
    """:func:`_hashes` of an unfinished run (no BTrackMate CSV yet)."""
    csv = out / "syn" / "cells_btrackmate.csv"
    if csv.exists():
        return _hashes(store, out)
    csv.write_bytes(b"")
    try:
        h = _hashes(store, out)
    finally:
        csv.unlink()
    h.pop("btrackmate.csv")
    return h


def test_corrupt_chunk_in_segmentation_read_is_named_and_other_blocks_kept(pristine, tmp_path):
    from vollseg_dask.predictors.ground_truth import GroundTruthPredictor
    from vollseg_dask.segmentation import segment

    class ImageReadingGroundTruth(GroundTruthPredictor):
        # the real ground-truth predictor, asking the driver for the image as a network does
        needs_image = True

    store = _copy(pristine, tmp_path)
    key, file = chunk_file(_image_array(store), (1, 0, 1, 1))
    original = file.read_bytes()
    file.write_bytes(b"\xff" * 40)
    cfg = {"block_shape": CHUNKS, "halo": (4, 8, 8)}
    pred = ImageReadingGroundTruth(str(store), "ground_truth")
    with pytest.raises(CorruptChunkError, match=f"image {store}.*chunk '{key}'"):
        segment(store, "cells", pred, cfg, {"kind": "threads"}, stop_after="predict", show_progress=False)
    done_before = _markers(store, "predict")
    assert done_before  # blocks that read intact chunks keep their results
    file.write_bytes(original)
    res = segment(store, "cells", pred, cfg, {"kind": "threads"}, stop_after="predict", show_progress=False)
    assert res.n_tasks == SHAPE[0] * 8 - len(done_before)
    assert len(_markers(store, "predict")) == SHAPE[0] * 8


def test_missing_image_chunk_is_reported_by_the_run(pristine, tmp_path, caplog):
    store = _copy(pristine, tmp_path)
    key, file = chunk_file(_image_array(store), (0, 1, 1, 0))
    file.unlink()
    with caplog.at_level(logging.WARNING, logger="vollseg_dask.pipeline"):
        report = run(_config(store, tmp_path / "out", stages=["ingest"]))
    assert report.ok
    warned = [r.getMessage() for r in caplog.records if "have no file" in r.getMessage()]
    assert len(warned) == 1 and "1 chunk(s)" in warned[0] and key in warned[0]
    manifest = json.loads((tmp_path / "out" / "syn" / "manifest.json").read_text())
    assert manifest["missing_chunks"] == {"array": open_image(store).path, "n": 1, "keys": [key]}


# ------------------------------------------------------------------------------------------------
# 4. Stale locks (a live second run is refused: tests/test_pipeline.py)
# ------------------------------------------------------------------------------------------------


def _write_lock(out: Path, pid: int, since: float) -> Path:
    import socket

    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".vollseg.lock"
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": since}))
    return lock


def test_lock_of_killed_unreaped_process_is_taken_over(tmp_path):
    psutil = pytest.importorskip("psutil")
    from vollseg_dask.pipeline import run_lock

    since = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGKILL)  # killed, not yet waited for: a zombie whose pid still exists
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        lock = _write_lock(tmp_path, child.pid, since)
        with run_lock(tmp_path):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        child.kill()
        child.wait()


def test_lock_whose_pid_was_reused_is_taken_over_but_a_live_owner_is_not(tmp_path):
    from vollseg_dask.errors import LockedError
    from vollseg_dask.pipeline import run_lock

    # a lock written before the process now holding that pid started (e.g. before a reboot)
    lock = _write_lock(tmp_path, os.getppid(), since=1.0e9)
    with run_lock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    # the same live process, lock written after it started: it owns the lock
    _write_lock(tmp_path, os.getppid(), since=time.time())
    with pytest.raises(LockedError, match=f"pid {os.getppid()}"):
        with run_lock(tmp_path):
            pass
