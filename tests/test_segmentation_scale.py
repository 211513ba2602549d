"""More than 65,535 cells in one time point: uint32 labels, no 16-bit ceiling anywhere."""

from __future__ import annotations

import numpy as np
import pytest

from vollseg_dask.io.omezarr import open_labels
from vollseg_dask.predictors.ground_truth import GroundTruthPredictor
from vollseg_dask.segmentation import SegmentationConfig, segment
from vollseg_dask.segmentation.testing import grid_cells, write_test_store


@pytest.mark.slow
def test_more_than_65535_cells_in_one_time_point(tmp_path):
    shape = (36, 300, 300)
    # 12 * 75 * 75 = 67,500 box cells of 2x3x3 voxels separated by one background plane (a membrane)
    gt = grid_cells(shape, (3, 4, 4), gap=1)
    n_cells = int(gt.max())
    assert n_cells > 65_535
    store = write_test_store(tmp_path / "many.zarr", gt, chunks=(1, 36, 100, 100))
    pred = GroundTruthPredictor(store, n_rays=8, halo=6)
    # tiny cells: marker balls of radius 2 would reach across the one-voxel membranes
    r = segment(store, "cells", pred, SegmentationConfig(block_shape=(36, 100, 100), halo=(4, 8, 8), marker_radius=0),
                client={"kind": "threads", "n_workers": 2}, show_progress=False)
    assert r.n_objects[0] == n_cells and r.all_certified
    out = np.asarray(open_labels(store, "cells").data)[0]
    assert out.dtype == np.uint32 and int(out.max()) == n_cells
    # a bijection between ground-truth cells and output labels (on the U-Net mask voxels)
    fg = out != 0
    pairs = np.unique(np.stack([gt[fg].astype(np.uint64), out[fg].astype(np.uint64)], axis=1), axis=0)
    assert len(pairs) == n_cells
    assert len(np.unique(pairs[:, 0])) == n_cells and len(np.unique(pairs[:, 1])) == n_cells
    # labels are ranks of coordinate IDs: raster order of the cells' seeds
    first = np.unique(out[fg], return_index=True)[1]
    assert np.all(np.diff(np.flatnonzero(fg)[first]) > 0)
