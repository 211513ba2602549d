"""Scale-aware inference: blocks resampled to the model grid in global coordinates, tiled == untiled."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from vollseg_dask.predictors.network import NetworkPredictor
from vollseg_dask.predictors.rescale import (
    model_length,
    ray_length_factors,
    resample,
    scaled_rays,
    to_model,
    to_store,
)

VOL = (10, 52, 44)
FULL = tuple(slice(0, n) for n in VOL)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from vollseg_dask.predictors.network import write_random_model_folders

    old = os.environ.get("VOLLSEG_CACHE_DIR")
    os.environ["VOLLSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("rfcache"))
    yield write_random_model_folders(tmp_path_factory.mktemp("models"), n2v=False, stardist_depth=1,
                                     unet_depth=1, output_gain=300.0, seed=4)
    if old is None:
        os.environ.pop("VOLLSEG_CACHE_DIR", None)
    else:
        os.environ["VOLLSEG_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(8)
    z, y, x = np.meshgrid(*[np.arange(n) for n in VOL], indexing="ij")
    clean = 300 * (np.sin(y / 3.0) * np.cos(x / 5.0) > 0.2) + 200
    return (clean + rng.poisson(40, VOL)).astype(np.uint16)


def test_resample_is_linear_and_anchored():
    x = np.arange(20, dtype=np.float32)[None, None, :] * np.ones((1, 1, 1), np.float32)
    s = 0.5
    n = model_length(20, s)
    assert n == 10
    out = resample(x, (slice(0, 1), slice(0, 1), slice(0, 20)), (1, 1, 20), (slice(0, 1), slice(0, 1), slice(0, n)),
                   (1.0, 1.0, s), "to_model")[0, 0]
    np.testing.assert_allclose(out, to_store(np.arange(n), s).clip(0, 19), atol=1e-5)  # a ramp resamples to itself
    part = resample(x[..., 3:15], (slice(0, 1), slice(0, 1), slice(3, 15)), (1, 1, 20),
                    (slice(0, 1), slice(0, 1), slice(2, 7)), (1.0, 1.0, s), "to_model")[0, 0]
    assert np.array_equal(part, out[2:7])  # same bits from a sub-block
    back = to_model(to_store(np.arange(5.0), 0.37), 0.37)
    np.testing.assert_allclose(back, np.arange(5.0), atol=1e-12)


def test_scaled_rays_directions_and_lengths():
    from stardist.rays3d import Rays_GoldenSpiral

    rays = Rays_GoldenSpiral(32, anisotropy=(4.0, 1.0, 1.0))
    s = (0.5, 0.4, 0.4)
    r2 = scaled_rays(rays.to_json(), s)
    f = ray_length_factors(rays.to_json(), s)
    v = rays.vertices.astype(np.float64)
    np.testing.assert_allclose(r2.vertices * f[:, None], v / np.asarray(s), atol=1e-5)


@pytest.mark.parametrize("scale", [(0.5, 0.4, 0.4), (1.5, 1.25, 1.25)])
def test_tiled_equals_untiled_under_rescaling(models, image, scale):
    table = pd.DataFrame({"p1": [np.percentile(image, 1)], "p99.8": [np.percentile(image, 99.8)]})
    pred = NetworkPredictor(models["stardist"], models["unet"], percentiles_table=table, scale=scale)
    pred._scale = pred.resolve_scale((1.0, 1.0, 1.0))  # what prepare() does from the store's voxel size
    assert pred.scaled and pred.scale == scale
    pred.receptive_fields()
    whole = pred.predict_block(image, t=0, read=FULL, core=FULL, volume_shape=VOL, prob_threshold=0.3)
    assert whole.prob.shape == VOL and len(whole.points) > 0
    halo = pred.halo
    pts, n_blocks = [], 0
    for zs in ((0, 6), (6, 10)):
        for ys in ((0, 17), (17, 40), (40, 52)):
            for xs in ((0, 23), (23, 44)):
                core = (slice(*zs), slice(*ys), slice(*xs))
                read = tuple(slice(max(0, c.start - h), min(n, c.stop + h)) for c, h, n in zip(core, halo, VOL, strict=True))
                blk = pred.predict_block(image[read], t=0, read=read, core=core, volume_shape=VOL, prob_threshold=0.3)
                assert np.array_equal(blk.prob, whole.prob[core]), core
                assert np.array_equal(blk.foreground, whole.foreground[core]), core
                assert np.array_equal(blk.distance, whole.distance[core]), core
                pts.append((blk.points, blk.cand_prob, blk.dist))
                n_blocks += 1
    p = np.concatenate([a for a, _, _ in pts])
    order = np.lexsort(p.T[::-1])
    np.testing.assert_array_equal(p[order], whole.points)
    np.testing.assert_array_equal(np.concatenate([b for _, b, _ in pts])[order], whole.cand_prob)
    np.testing.assert_array_equal(np.concatenate([c for _, _, c in pts])[order], whole.dist)
    assert pred.describe()["scale"] == list(scale)


def test_auto_scale_from_voxel_sizes(models, tmp_path):
    from vollseg_dask.networks.folders import bundled_model_dir, read_model_scale, write_model_scale

    assert read_model_scale(bundled_model_dir("stardist"))["voxel_size"] == (2.0, 0.5, 0.5)
    write_model_scale(models["stardist"], (2.0, 0.5, 0.5), 9.0)
    try:
        pred = NetworkPredictor(models["stardist"], models["unet"])
        assert pred.resolve_scale((1.0, 0.2, 0.2)) == pytest.approx((0.5, 0.4, 0.4))
        assert pred.resolve_scale((2.0, 0.5, 0.5)) == (1.0, 1.0, 1.0)
        od = NetworkPredictor(models["stardist"], models["unet"], object_diameter=18.0)
        assert od.resolve_scale((2.0, 0.5, 0.5)) == pytest.approx((0.5, 0.5, 0.5))
        assert NetworkPredictor(models["stardist"], models["unet"], scale=None).resolve_scale((1, 1, 1)) is None
    finally:
        (models["stardist"] / "model_scale.json").unlink()
