"""Tiling invariance of the whole VollSeg pipeline on a tissue of more than 500 cells.

Block-wise runs (aligned, ragged, 1-voxel offset grids; shuffled block order; 1 and 2 distributed
workers) must give labels byte-identical to the same pipeline run as one block over the volume,
with cells centred on block faces, 4-block edges and 8-block corners, and every block certified.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from vollseg_dask.io.omezarr import open_labels
from vollseg_dask.plan import plan_blocks
from vollseg_dask.predictors.ground_truth import GroundTruthPredictor
from vollseg_dask.segmentation import SegmentationConfig, segment
from vollseg_dask.segmentation.testing import voronoi_tissue, write_test_store

SHAPE = (40, 128, 128)
ALIGNED = (20, 64, 64)
RAGGED = (15, 50, 45)
OFFSET = (1, 1, 1)
# cell centres on seams: face of the aligned grid, its 4-block edge and 8-block corner, the offset
# grid's 8-block corner, the ragged grid's 8-block corners
SEAM_POINTS = np.array([
    [20, 40, 40], [20, 64, 40], [20, 64, 64], [21, 65, 65], [15, 50, 45], [30, 50, 90], [15, 100, 45],
])


def _sha(store: str, name: str) -> str:
    data = np.asarray(open_labels(store, name).data)
    assert data.dtype == np.uint32
    return hashlib.sha256(data.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def tissue(tmp_path_factory):
    gt = voronoi_tissue(SHAPE, 650, seed=11, min_distance=5, membrane=True, extra_points=SEAM_POINTS)
    store = write_test_store(tmp_path_factory.mktemp("tiling") / "t.zarr", gt, chunks=(1, 20, 64, 64))
    return store, gt


@pytest.mark.slow
def test_blockwise_equals_untiled_for_every_grid_order_and_worker_count(tissue):
    from distributed import Client, LocalCluster

    store, gt = tissue
    n_cells = len(np.unique(gt)) - 1
    assert n_cells >= 500
    # seam cells really straddle the seams
    for p in SEAM_POINTS:
        assert gt[tuple(p)] != 0
    plan = plan_blocks(SHAPE, ALIGNED)
    corner = gt == gt[20, 64, 64]
    assert len({plan.block_containing(v).key for v in np.argwhere(corner)}) == 8

    pred = GroundTruthPredictor(store, n_rays=32, drop_fraction=0.2, merge_fraction=0.02, false_rate=0.1,
                                noise=0.02, seed=5)
    common: dict = {}  # default halo cap: every block reads its components whole
    threads = {"kind": "threads", "n_workers": 2}
    ref = segment(store, "untiled", pred, SegmentationConfig(block_shape=SHAPE, **common), client=threads,
                  show_progress=False)
    assert ref.n_blocks == 1 and ref.n_objects[0] >= 500
    ref_hash = _sha(store, "untiled")

    runs = {
        "ragged": (SegmentationConfig(block_shape=RAGGED, **common), threads, None),
        "offset": (SegmentationConfig(block_shape=ALIGNED, grid_origin=OFFSET, **common), threads, 1),
    }
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c1, \
            Client(c1) as client1:
        runs["aligned-1worker"] = (SegmentationConfig(block_shape=ALIGNED, **common), client1, None)
        for name in ("aligned-1worker",):
            cfg, cl, shuffle = runs[name]
            r = segment(store, name, pred, cfg, client=cl, show_progress=False, shuffle_blocks=shuffle)
            assert r.all_certified and _sha(store, name) == ref_hash, name
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c2, \
            Client(c2) as client2:
        runs["aligned-2workers-shuffled"] = (SegmentationConfig(block_shape=ALIGNED, **common), client2, 7)
        for name in ("ragged", "offset", "aligned-2workers-shuffled"):
            cfg, cl, shuffle = runs[name]
            if name == "aligned-2workers-shuffled":
                cl = client2
            r = segment(store, name, pred, cfg, client=cl, show_progress=False, shuffle_blocks=shuffle)
            print(name, {k: round(v["wall_s"], 2) for k, v in r.timings.items()})
            statuses = {c["status"] for c in r.certificates.values()}
            assert r.all_certified, (name, statuses)
            assert r.n_blocks > 1
            assert _sha(store, name) == ref_hash, name
            assert r.n_objects == ref.n_objects
    # each seam cell is found as one object that really spans several blocks of the tiled grids
    out = np.asarray(open_labels(store, "offset").data)[0]
    plans = [plan, plan_blocks(SHAPE, ALIGNED, origin=OFFSET), plan_blocks(SHAPE, RAGGED)]
    for p in SEAM_POINTS:
        cell = gt == gt[tuple(p)]
        vals, counts = np.unique(out[cell], return_counts=True)
        best = vals[np.argmax(counts)]
        assert best != 0 and counts.max() >= 0.5 * cell.sum()
        for grid in plans:  # the seam point's own grid puts the object in several blocks
            spans = {grid.block_containing(v).key for v in np.argwhere(out == best)}
            if len(spans) >= 2:
                break
        else:
            raise AssertionError(f"seam cell at {p.tolist()} lies in one block of every grid")
