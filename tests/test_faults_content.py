"""Resume checks content, and corruption is detected (issue 14, points 3 and 4)."""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from vollseg_dask.errors import CorruptChunkError
from vollseg_dask.io.omezarr import open_image, open_labels, read_region
from vollseg_dask.pipeline import RunConfig, run
from vollseg_dask.segmentation import segment

SHAPE = (2, 12, 32, 32)
CHUNKS = (12, 16, 16)
THREADS = {"kind": "threads"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    from vollseg_dask.synthetic import SyntheticConfig, write_synthetic

    path = tmp_path_factory.mktemp("content") / "syn.ome.zarr"
    write_synthetic(path, SyntheticConfig(shape=SHAPE, n_cells=8, seed=7, chunks=CHUNKS), progress=False,
                    scheduler="synchronous")
    return path


def _copy(pristine: Path, tmp_path: Path) -> Path:
    store = tmp_path / "syn.ome.zarr"
    shutil.copytree(pristine, store)
    return store


def _config(store: Path, out: Path, **over) -> RunConfig:
    return RunConfig.model_validate({
        "input": {"path": str(store)}, "output": str(out), "stages": ["ingest", "segment", "measure"],
        "cluster": THREADS, "predictor": {"kind": "ground-truth"}, "segment": {"block_shape": CHUNKS}, **over})


def _pred(store: Path, gt: str = "ground_truth"):
    from vollseg_dask.predictors.ground_truth import GroundTruthPredictor

    return GroundTruthPredictor(str(store), gt)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_replaced_image_of_same_shape_is_segmented_again(pristine, tmp_path):
    """Before: the fingerprint held config, shape and axes only: every stage 'skipped', old result."""
    store = _copy(pristine, tmp_path)
    out = tmp_path / "out"
    first = run(_config(store, out))
    assert first.ok
    # a new image of the same shape (here: the old one with t=1 inverted): new content
    img = open_image(store)
    arr = zarr.open_array(store=str(store), path=img.path, mode="r+")
    data = np.asarray(arr[...])
    data[1] = data[1].max() - data[1]
    arr[...] = data
    second = run(_config(store, out))
    assert second.ok
    stages = second.datasets[0].stages
    assert stages["ingest"]["status"] == "done" and stages["segment"]["status"] == "done"


def test_changed_labels_are_measured_again(pristine, tmp_path):
    """Before: measure into an existing table resumed by time point without looking at the labels:
    '0 rows in 0 time point(s)', exit 0, a table describing the old labels."""
    from vollseg_dask.io.cell_table import read_cell_table
    from vollseg_dask.measure import MeasureConfig, measure_cells

    store = _copy(pristine, tmp_path)
    segment(store, "seg", _pred(store), {"block_shape": CHUNKS}, THREADS, show_progress=False)
    table = tmp_path / "cells"
    cfg = MeasureConfig(labels="seg")
    measure_cells(store, table, config=cfg)
    n_before = len(read_cell_table(table))
    # the labels are replaced by another segmentation (bigger minimum size: fewer cells)
    segment(store, "seg", _pred(store), {"block_shape": CHUNKS, "min_size": 400}, THREADS, overwrite=True,
            show_progress=False)
    res = measure_cells(store, table, config=cfg)
    assert res.n_rows > 0 and sorted(res.rows) == [0, 1]
    lab = open_labels(store, "seg").data.compute()
    n_now = sum(len(np.unique(lab[t])) - 1 for t in range(SHAPE[0]))
    assert len(read_cell_table(table)) == n_now != n_before


def test_deleted_intermediate_chunks_are_recomputed_on_resume(pristine, tmp_path, caplog):
    """Before: done-markers were trusted: chunks deleted between a kill and the resume gave fewer
    cells, exit 0. Now the markers' recorded outputs are checked and the units run again."""
    from vollseg_dask.segmentation.layout import RunLayout

    store = _copy(pristine, tmp_path)
    cfg = {"block_shape": CHUNKS}
    ref = segment(store, "ref", _pred(store), cfg, THREADS, show_progress=False)
    scratch = tmp_path / "scratch"
    segment(store, "cells", _pred(store), cfg, THREADS, stop_after="watershed", scratch=scratch, show_progress=False)
    lay = RunLayout(store, "cells", scratch)
    chunks = sorted(p for p in (lay.path / "prov").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert chunks
    for p in chunks[::2]:
        p.unlink()
    with caplog.at_level(logging.WARNING):
        res = segment(store, "cells", _pred(store), cfg, THREADS, scratch=scratch, show_progress=False)
    assert any("missing since the unit finished" in r.getMessage() for r in caplog.records)
    assert res.n_objects == ref.n_objects
    a, b = open_labels(store, "cells").data.compute(), open_labels(store, "ref").data.compute()
    assert _sha(a) == _sha(b)


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
def test_every_one_byte_flip_in_a_chunk_we_wrote_is_detected(tmp_path, ngff):
    """Before: zstd without checksum: 25 of 60 random flips decoded silently (one changed 27,014 voxels)."""
    from vollseg_dask.io.omezarr import chunk_file, write_image

    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, size=(1, 8, 64, 64), dtype=np.uint16)
    store = tmp_path / "img.zarr"
    write_image(store, data, axes="tzyx", scale=None, chunks=(1, 8, 64, 64), ngff_version=ngff)
    arr = zarr.open_array(store=str(store), path="0", mode="r")
    _, file = chunk_file(arr, (0, 0, 0, 0))
    raw = file.read_bytes()
    pick = random.Random(1)
    silent = []
    for _ in range(60):
        k = pick.randrange(len(raw))
        flipped = bytearray(raw)
        flipped[k] ^= 1 << pick.randrange(8)
        file.write_bytes(bytes(flipped))
        try:
            got = read_region(zarr.open_array(store=str(store), path="0", mode="r"), (slice(None),) * 4)
        except CorruptChunkError:
            continue
        if not np.array_equal(got, data):
            silent.append(k)
    file.write_bytes(raw)
    assert silent == []


def test_image_chunk_deleted_after_the_ingest_check_is_an_error(pristine, tmp_path, monkeypatch, caplog):
    """Before: every cell at that t got mean intensity 0, no warning."""
    from vollseg_dask import pipeline
    from vollseg_dask.io.omezarr import chunk_file

    store = _copy(pristine, tmp_path)
    img = open_image(store)
    _, file = chunk_file(zarr.open_array(store=str(store), path=img.path, mode="r"),
                         (1,) + (0,) * (len(img.axes) - 1))
    real = pipeline._STAGE_FUNCS["segment"]

    def segment_then_lose_a_chunk(ds, client, resume):
        n = real(ds, client, resume)
        file.unlink()  # e.g. a sync tool removing it while the run goes on
        return n

    monkeypatch.setitem(pipeline._STAGE_FUNCS, "segment", segment_then_lose_a_chunk)
    report = run(_config(store, tmp_path / "out"))
    ds = report.datasets[0]
    assert ds.status == "failed" and "disappeared since the ingest check" in ds.reason
    # the next run sees the image changed: the ingest check warns about the chunk (foreign store)
    monkeypatch.setitem(pipeline._STAGE_FUNCS, "segment", real)
    with caplog.at_level(logging.WARNING, logger="vollseg_dask.pipeline"):
        again = run(_config(store, tmp_path / "out"))
    assert again.ok and any("have no file" in r.getMessage() for r in caplog.records)
