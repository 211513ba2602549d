"""NetworkPredictor normalisation: exact global per-t percentiles, never per tile; engine wiring.

The image has a bright half and a dim half, so every block's own percentiles differ from the
volume's; time point 1 is an affine copy of time point 0 (``2 x + 100``), so per-t global
normalisation must give the same network outputs for both.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from vollseg_dask.errors import ConfigError
from vollseg_dask.plan import plan_blocks
from vollseg_dask.predictors.network import NetworkPredictor

ATOL = 1e-5
VOL = (20, 56, 64)
FULL = tuple(slice(0, n) for n in VOL)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from vollseg_dask.predictors.network import write_random_model_folders

    old = os.environ.get("VOLLSEG_CACHE_DIR")
    os.environ["VOLLSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("rfcache"))
    yield write_random_model_folders(tmp_path_factory.mktemp("models"), n2v=False, stardist_depth=1,
                                     unet_depth=1, output_gain=300.0, seed=2)
    if old is None:
        os.environ.pop("VOLLSEG_CACHE_DIR", None)
    else:
        os.environ["VOLLSEG_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(9)
    z, y, x = np.meshgrid(*[np.arange(n) for n in VOL], indexing="ij")
    v = 200 + 150 * (np.sin(y / 3.0) * np.cos(x / 4.0) * np.cos(z / 2.5) > 0) + rng.normal(0, 30, VOL)
    v[:, :, 32:] *= 4.0  # bright right half: per-block percentiles differ from the volume's
    t0 = v.clip(0, 6000).astype(np.uint16)
    t1 = (2 * t0.astype(np.int64) + 100).astype(np.uint16)
    return np.stack([t0, t1])


@pytest.fixture(scope="module")
def store(tmp_path_factory, volume):
    from vollseg_dask.io.omezarr import write_image

    path = tmp_path_factory.mktemp("store") / "img.ome.zarr"
    write_image(path, volume, axes="tzyx", scale=(1.0, 1.0, 0.5, 0.5), chunks=(1, 10, 28, 32))
    return str(path)


@pytest.fixture(scope="module")
def predictor(models, store):
    p = NetworkPredictor(models["stardist"], models["unet"])
    p.prepare(store, n_t=2, volume_shape=VOL)
    return p


def test_prepare_computes_exact_global_percentiles_per_t(predictor, volume):
    for t in range(2):
        for kind in ("stardist", "unet"):
            lo, hi = predictor._lohi(t, kind)
            np.testing.assert_array_equal([lo, hi], np.percentile(volume[t], [1, 99.8]))


def test_affine_copy_gives_the_same_outputs(predictor, volume):
    a = predictor.predict_block(volume[0], t=0, read=FULL, core=FULL, volume_shape=VOL, prob_threshold=0.5)
    b = predictor.predict_block(volume[1], t=1, read=FULL, core=FULL, volume_shape=VOL, prob_threshold=0.5)
    assert a.prob.std() > 0.05 and a.foreground.std() > 0.05
    np.testing.assert_allclose(b.prob, a.prob, atol=1e-4, rtol=0)
    np.testing.assert_allclose(b.foreground, a.foreground, atol=1e-4, rtol=0)


def test_tiled_equals_untiled_where_tile_percentiles_differ(models, predictor, volume):
    t = 1
    ref = predictor.predict_block(volume[t], t=t, read=FULL, core=FULL, volume_shape=VOL, prob_threshold=0.5)
    plan = plan_blocks(VOL, (20, 28, 20), predictor.halo)
    glob = np.percentile(volume[t], [1, 99.8])
    fg = np.full(VOL, np.nan, np.float32)
    prob = np.full(VOL, np.nan, np.float32)
    gap = []
    for b in plan:
        img = volume[t][b.read]
        gap.append(np.abs(np.percentile(img, [1, 99.8]) - glob).max() / (glob[1] - glob[0]))
        p = predictor.predict_block(img, t=t, read=b.read, core=b.core, volume_shape=VOL, prob_threshold=0.5)
        fg[b.core], prob[b.core] = p.foreground, p.prob
    assert sorted(gap)[-2] > 0.1  # tiles whose own percentiles are > 10 % of the range off the global ones
    np.testing.assert_allclose(fg, ref.foreground, atol=ATOL, rtol=0)
    np.testing.assert_allclose(prob, ref.prob, atol=ATOL, rtol=0)

    # what per-tile normalisation would have produced: visibly different (seams)
    b = plan.blocks[int(np.argmax(gap))]
    own = np.percentile(volume[t][b.read], [1, 99.8])
    tile_norm = NetworkPredictor(models["stardist"], models["unet"],
                                 percentiles_table=pd.DataFrame({"p1": [0.0, own[0]], "p99.8": [1.0, own[1]]}))
    p = tile_norm.predict_block(volume[t][b.read], t=t, read=b.read, core=b.core, volume_shape=VOL,
                                prob_threshold=0.5)
    assert np.abs(p.foreground - ref.foreground[b.core]).max() > 0.05


def test_percentiles_table_must_match_time_points(models, store):
    p = NetworkPredictor(models["stardist"], models["unet"], percentiles_table=pd.DataFrame({"p1": [0.0], "p99.8": [1.0]}))
    with pytest.raises(ConfigError, match="1] rows"):
        p.prepare(store, n_t=2, volume_shape=VOL)
    with pytest.raises(ConfigError, match="lacks column 'p99.8'"):
        NetworkPredictor(models["stardist"], models["unet"], percentiles_table=pd.DataFrame({"p1": [0.0]}))


def test_engine_stage_s1_runs_the_predictor(models, store, predictor, volume):
    """segment(..., stop_after="predict") with this predictor writes the untiled maps."""
    from vollseg_dask.segmentation import SegmentationConfig, segment
    from vollseg_dask.segmentation.layout import RunLayout

    p = NetworkPredictor.from_models_dir(models["stardist"].parent)
    cfg = SegmentationConfig(block_shape=(10, 28, 32), prob_threshold=0.6)
    res = segment(store, "net", p, cfg, client={"kind": "threads", "n_workers": 1}, stop_after="predict",
                  show_progress=False)
    assert res.n_blocks == 8
    lay = RunLayout(store, "net")
    for t in range(2):
        ref = predictor.predict_block(volume[t], t=t, read=FULL, core=FULL, volume_shape=VOL, prob_threshold=0.6)
        np.testing.assert_allclose(np.asarray(lay.open_array("prob")[t]), ref.prob, atol=ATOL, rtol=0)
        np.testing.assert_array_equal(np.asarray(lay.open_array("mask")[t]), (ref.foreground > 0.5).astype(np.uint8))


@pytest.mark.realdata
def test_real_confocal_nuclei_tiled_equals_untiled(shared_data, models, tmp_path):
    """Real noisy confocal nuclei (PlantSeg ``1135_mini.h5``, uint8): global percentiles from the
    store, tiled == untiled over ragged blocks."""
    import h5py

    from vollseg_dask.io.omezarr import write_image

    with h5py.File(shared_data / "segmentation" / "plantseg" / "1135_mini.h5", "r") as f:
        raw = np.asarray(f["raw"][20:56, :, :])
    vol = raw.shape
    store = tmp_path / "nuclei.ome.zarr"
    write_image(store, raw, axes="zyx", scale=(0.284, 0.127, 0.127), chunks=(12, 50, 50))
    p = NetworkPredictor(models["stardist"], models["unet"])
    p.prepare(str(store), n_t=1, volume_shape=vol)
    np.testing.assert_array_equal(p._lohi(0, "unet"), np.percentile(raw, [1, 99.8]))
    full = tuple(slice(0, n) for n in vol)
    ref = p.predict_block(raw, t=0, read=full, core=full, volume_shape=vol, prob_threshold=0.9)
    assert ref.foreground.std() > 0.02 and ref.prob.std() > 0.02
    prob = np.full(vol, np.nan, np.float32)
    fg = np.full(vol, np.nan, np.float32)
    n_pts = 0
    plan = plan_blocks(vol, (36, 45, 60), p.halo)
    for b in plan:
        o = p.predict_block(raw[b.read], t=0, read=b.read, core=b.core, volume_shape=vol, prob_threshold=0.9)
        prob[b.core], fg[b.core] = o.prob, o.foreground
        n_pts += len(o.points)
    assert len(plan) == 6
    np.testing.assert_allclose(prob, ref.prob, atol=ATOL, rtol=0)
    np.testing.assert_allclose(fg, ref.foreground, atol=ATOL, rtol=0)
    assert abs(n_pts - len(ref.points)) <= int(np.sum(np.abs(ref.cand_prob - 0.9) <= ATOL))
