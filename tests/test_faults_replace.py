"""Atomic replacement (issue 14, point 2): ``--overwrite``, ``--no-resume`` and changed settings build
the new labels group / cell table beside the old one and swap only when complete.

A replacement is interrupted at every stage of the segmentation (and inside the swap itself): the
labels stay readable, equal to the old ones, until the new ones are complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from vollseg_dask.errors import CorruptChunkError
from vollseg_dask.io.omezarr import chunk_file, open_image, open_labels
from vollseg_dask.segmentation import STAGES, segment
from vollseg_dask.segmentation import tasks as seg_tasks

SHAPE = (3, 12, 32, 32)
CHUNKS = (12, 16, 16)
OLD = {"block_shape": CHUNKS}
NEW = {"block_shape": CHUNKS, "min_size": 400}
THREADS = {"kind": "threads"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    from vollseg_dask.synthetic import SyntheticConfig, write_synthetic

    path = tmp_path_factory.mktemp("replace") / "syn.ome.zarr"
    write_synthetic(path, SyntheticConfig(shape=SHAPE, n_cells=8, seed=5, chunks=CHUNKS), progress=False,
                    scheduler="synchronous")
    return path


def _pred(store: Path):
    from vollseg_dask.predictors.ground_truth import GroundTruthPredictor

    return GroundTruthPredictor(str(store), "ground_truth")


def _labels_sha(store: Path, name: str = "cells") -> str:
    lab = open_labels(store, name)  # refuses incomplete labels
    return hashlib.sha256(np.ascontiguousarray(lab.data.compute()).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def shas(pristine, tmp_path_factory) -> dict[str, str]:
    out = {}
    for tag, cfg in (("old", OLD), ("new", NEW)):
        store = tmp_path_factory.mktemp(f"ref_{tag}") / "syn.ome.zarr"
        shutil.copytree(pristine, store)
        segment(store, "cells", _pred(store), cfg, THREADS, show_progress=False)
        out[tag] = _labels_sha(store)
    assert out["old"] != out["new"]
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_overwrite_stopped_at_any_stage_keeps_the_old_labels(pristine, shas, tmp_path, stage):
    store = tmp_path / "syn.ome.zarr"
    shutil.copytree(pristine, store)
    segment(store, "cells", _pred(store), OLD, THREADS, show_progress=False)
    r = segment(store, "cells", _pred(store), NEW, THREADS, overwrite=True, stop_after=stage, show_progress=False)
    if stage == "labels":
        assert r.completed and _labels_sha(store) == shas["new"]
    else:
        assert not r.completed
        assert _labels_sha(store) == shas["old"]  # readable, complete, the old result
        # resuming the replacement finishes it
        segment(store, "cells", _pred(store), NEW, THREADS, overwrite=True, show_progress=False)
        assert _labels_sha(store) == shas["new"]


def test_overwrite_failing_while_writing_labels_keeps_the_old_ones(pristine, shas, tmp_path, monkeypatch):
    """A failure in the middle of S6 (the stage that writes the labels) leaves the old labels intact
    (before: ``labels/seg`` all zeros, flagged incomplete, read as 0 cells)."""
    store = tmp_path / "syn.ome.zarr"
    shutil.copytree(pristine, store)
    segment(store, "cells", _pred(store), OLD, THREADS, show_progress=False)
    real = seg_tasks.relabel
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(seg_tasks, "relabel", dying)
    with pytest.raises(OSError, match="No space"):
        segment(store, "cells", _pred(store), NEW, THREADS, overwrite=True, show_progress=False)
    monkeypatch.setattr(seg_tasks, "relabel", real)
    assert _labels_sha(store) == shas["old"]
    segment(store, "cells", _pred(store), NEW, THREADS, overwrite=True, show_progress=False)
    assert _labels_sha(store) == shas["new"]


def test_kill_between_the_two_renames_of_the_swap_is_recovered(pristine, shas, tmp_path, monkeypatch):
    from vollseg_dask.io import atomic

    store = tmp_path / "syn.ome.zarr"
    shutil.copytree(pristine, store)
    segment(store, "cells", _pred(store), OLD, THREADS, show_progress=False)
    real = os.replace
    state = {"n": 0}

    def replace(src, dst):
        real(src, dst)
        if Path(str(dst)).name.startswith(".cells.old-"):
            raise KeyboardInterrupt("killed between the renames")

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        segment(store, "cells", _pred(store), NEW, THREADS, overwrite=True, show_progress=False)
    monkeypatch.setattr(atomic.os, "replace", real)
    assert not (store / "labels" / "cells").exists()  # the window: neither under the final name ...
    assert _labels_sha(store) == shas["old"]  # ... yet a reader gets the old labels back
    segment(store, "cells", _pred(store), NEW, THREADS, overwrite=True, show_progress=False)
    assert _labels_sha(store) == shas["new"]
    assert not list((store / "labels").glob(".cells.*"))
    del state


def test_measure_overwrite_failing_keeps_the_old_table(pristine, tmp_path):
    """A re-measure (``--overwrite``) that fails on a corrupt chunk at t=2 keeps the old table whole
    (before: the old table was deleted first and its t=2 partition lost)."""
    from vollseg_dask.io.cell_table import read_cell_table
    from vollseg_dask.measure import MeasureConfig, measure_cells

    store = tmp_path / "syn.ome.zarr"
    shutil.copytree(pristine, store)
    table = tmp_path / "cells"
    cfg = MeasureConfig(labels="ground_truth", batch_times=1)
    measure_cells(store, table, config=cfg)
    before = read_cell_table(table)
    assert sorted(before["t"].unique()) == [0, 1, 2]
    img = open_image(store)
    arr = zarr.open_array(store=str(store), path=img.path, mode="r")
    key, file = chunk_file(arr, (2, 0, 0, 1) if "c" not in img.axes else (2, 0, 0, 0, 1))
    original = file.read_bytes()
    file.write_bytes(original[: len(original) // 2])
    with pytest.raises(CorruptChunkError):
        measure_cells(store, table, config=cfg, overwrite=True)
    after = read_cell_table(table)
    assert after.equals(before)
    assert not [p for p in table.parent.iterdir() if p.name.startswith(".cells")] or \
        (table.parent / ".cells.staging").exists()
    file.write_bytes(original)
    measure_cells(store, table, config=cfg, overwrite=True)
    assert read_cell_table(table).equals(before)
    assert not (table.parent / ".cells.staging").exists()
