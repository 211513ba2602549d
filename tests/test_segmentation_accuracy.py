"""Accuracy of the three modes with a perturbed ground-truth predictor (F1 at IoU 0.5 and 0.7)."""

from __future__ import annotations

import numpy as np

from vollseg_dask.io.omezarr import open_labels
from vollseg_dask.predictors.ground_truth import GroundTruthPredictor
from vollseg_dask.segmentation import SegmentationConfig, segment
from vollseg_dask.segmentation.testing import voronoi_tissue, write_test_store

THREADS = {"kind": "threads", "n_workers": 2}


def _labels(store, name, level=0) -> np.ndarray:
    return np.asarray(open_labels(store, name, level).data)


def test_vollseg_beats_stardist_and_unet_with_missing_stardist_objects(tmp_path):
    """20 % of StarDist objects removed: seed pooling recovers most of them (F1 at IoU 0.5 and 0.7)."""
    from stardist.matching import matching

    gt = voronoi_tissue((40, 96, 96), 150, seed=3, min_distance=8, membrane=True)
    store = write_test_store(tmp_path / "f1.zarr", gt, chunks=(1, 20, 48, 48))
    pred = GroundTruthPredictor(store, n_rays=64, drop_fraction=0.2, merge_fraction=0.03, seed=7)
    f1 = {}
    for mode in ("vollseg", "stardist", "unet"):
        r = segment(store, mode, pred, SegmentationConfig(mode=mode, block_shape=(20, 48, 48)), client=THREADS,
                    show_progress=False)
        assert r.completed and r.all_certified
        out = _labels(store, mode)[0]
        assert out.dtype == np.uint32 and out.max() == r.n_objects[0]
        f1[mode] = [matching(gt, out, thresh=th).f1 for th in (0.5, 0.7)]
    print("F1 at IoU 0.5 / 0.7:", {k: [round(v, 3) for v in vs] for k, vs in f1.items()})
    for i in range(2):
        assert f1["vollseg"][i] > f1["stardist"][i]
        assert f1["vollseg"][i] > f1["unet"][i]
    assert f1["vollseg"][1] > 0.85
