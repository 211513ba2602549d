"""Property: a run killed (SIGKILL) at a random moment, then run again, gives outputs that hash the same
as an uninterrupted run's; meanwhile the labels it replaces stay readable (old or new, never neither).

A few seeds in CI; ``VOLLSEG_FAULT_SEEDS=50`` runs many (about 10 s each).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vollseg_dask.config import save_config
from vollseg_dask.io.omezarr import open_labels
from vollseg_dask.pipeline import RunConfig, run

SHAPE = (3, 12, 32, 32)
CHUNKS = (12, 16, 16)
SEEDS = list(range(int(os.environ.get("VOLLSEG_FAULT_SEEDS", "2"))))


def _config(store: Path, out: Path, min_size: int) -> RunConfig:
    return RunConfig.model_validate({
        "input": {"path": str(store)}, "output": str(out), "stages": ["ingest", "segment", "measure"],
        "cluster": {"kind": "threads"}, "predictor": {"kind": "ground-truth"},
        "segment": {"block_shape": CHUNKS, "min_size": min_size}, "measure": {"batch_times": 1}})


def _labels_sha(store: Path) -> str:
    lab = open_labels(store, "cells")
    return hashlib.sha256(np.ascontiguousarray(lab.data.compute()).tobytes()).hexdigest()


def _hashes(store: Path, out: Path) -> dict[str, str]:
    h = {"labels": _labels_sha(store)}
    for p in sorted((out / "syn" / "cells").glob("t=*/part-0.parquet")):
        h[str(p.relative_to(out))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return h


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A store segmented with the old settings, and the reference of an uninterrupted run with the new
    ones (its wall time as a subprocess sets the range of kill times)."""
    from vollseg_dask.synthetic import SyntheticConfig, write_synthetic

    root = tmp_path_factory.mktemp("rk")
    pristine = root / "syn.ome.zarr"
    write_synthetic(pristine, SyntheticConfig(shape=SHAPE, n_cells=8, seed=11, chunks=CHUNKS), progress=False,
                    scheduler="synchronous")
    assert run(_config(pristine, root / "old_out", 0)).ok
    old_sha = _labels_sha(pristine)
    ref = root / "ref"
    shutil.copytree(pristine, ref / "syn.ome.zarr")
    cfg_file = root / "ref.yaml"
    save_config(_config(ref / "syn.ome.zarr", ref / "out", 400), cfg_file)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "vollseg_dask", "run", str(cfg_file)], check=True, capture_output=True)
    wall = time.monotonic() - t0
    hashes = _hashes(ref / "syn.ome.zarr", ref / "out")
    assert hashes["labels"] != old_sha
    return {"pristine": pristine, "old": old_sha, "ref": hashes, "wall": wall}


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_random_kill_then_resume_gives_the_uninterrupted_outputs(setup, tmp_path, seed):
    store = tmp_path / "syn.ome.zarr"
    shutil.copytree(setup["pristine"], store)
    out = tmp_path / "out"
    cfg = _config(store, out, 400)
    cfg_file = tmp_path / "run.yaml"
    save_config(cfg, cfg_file)
    when = random.Random(seed).uniform(0.3, 1.0) * setup["wall"]
    child = subprocess.Popen([sys.executable, "-m", "vollseg_dask", "run", str(cfg_file)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        child.wait(timeout=when)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # at this moment the labels are readable: the old ones or the new ones
    assert _labels_sha(store) in (setup["old"], setup["ref"]["labels"]), f"killed at {when:.2f} s"
    report = run(cfg)
    assert report.ok, report.summary()
    assert _hashes(store, out) == setup["ref"]
    assert not list(store.rglob(".*")), "hidden leftovers in the input store"
