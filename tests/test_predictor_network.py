"""NetworkPredictor (StarDist3D + U-Net): tiled == untiled, measured halo, interface, pickling, errors.

Networks are small and untrained (random weights, last convolution scaled so that outputs span a
trained network's range): the architecture, hence the receptive field and the tiling behaviour, is
that of a trained model. The "untiled" reference is one block holding the whole volume
(read == core == volume).

Float tolerance: tiles see different window sizes, so the runtime may order float operations
differently; outputs are compared with ``ATOL`` (probabilities in [0, 1]) and ``DIST_RTOL``
(ray lengths). On the CPU (oneDNN) the measured difference is exactly 0.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pandas as pd
import pytest

from vollseg_dask.errors import ConfigError, ModelNotFoundError, ShapeError
from vollseg_dask.plan import plan_blocks
from vollseg_dask.predictors.base import validate_prediction
from vollseg_dask.predictors.network import NetworkPredictor, plan_network_tiles, tile_input

ATOL = 1e-5
DIST_RTOL = 1e-4
VOL = (26, 76, 70)


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    old = os.environ.get("VOLLSEG_CACHE_DIR")
    os.environ["VOLLSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("rfcache"))
    yield
    if old is None:
        os.environ.pop("VOLLSEG_CACHE_DIR", None)
    else:
        os.environ["VOLLSEG_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def models(tmp_path_factory, cache_env):
    from vollseg_dask.predictors.network import write_random_model_folders

    return write_random_model_folders(tmp_path_factory.mktemp("models"), n2v=False, stardist_depth=1,
                                      unet_depth=2, output_gain=1000.0, seed=3)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(7)
    z, y, x = np.meshgrid(*[np.arange(n) for n in VOL], indexing="ij")
    blobs = 400 * np.sin(y / 5.0) * np.cos(x / 7.0) * np.sin(z / 4.0) + 600
    return (blobs + rng.normal(0, 80, VOL)).clip(0, 4000).astype(np.uint16)


def _table(img: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"p1": [np.percentile(img, 1)], "p99.8": [np.percentile(img, 99.8)]})


@pytest.fixture(scope="module")
def predictor(models, image):
    return NetworkPredictor(models["stardist"], models["unet"], percentiles_table=_table(image))


@pytest.fixture(scope="module")
def untiled(predictor, image):
    full = tuple(slice(0, n) for n in VOL)
    pred = predictor.predict_block(image, t=0, read=full, core=full, volume_shape=VOL, prob_threshold=0.5)
    assert pred.prob.std() > 0.05 and pred.foreground.std() > 0.05  # outputs span a realistic range
    thr = float(np.quantile(pred.prob, 0.97))
    pred = predictor.predict_block(image, t=0, read=full, core=full, volume_shape=VOL, prob_threshold=thr)
    return pred, thr


def _assemble(predictor, image, block_shape, thr, halo=None, origin=None):
    plan = plan_blocks(VOL, block_shape, predictor.halo if halo is None else halo, origin=origin)
    prob = np.full(VOL, np.nan, np.float32)
    fg = np.full(VOL, np.nan, np.float32)
    dmap = np.full(VOL, np.nan, np.float32)
    pts, cps, dists, infos = [], [], [], []
    for b in plan:
        p = predictor.predict_block(image[b.read], t=0, read=b.read, core=b.core, volume_shape=VOL, prob_threshold=thr)
        p = validate_prediction(p, b.shape, b.core, predictor.n_rays)
        prob[b.core], fg[b.core], dmap[b.core] = p.prob, p.foreground, p.distance
        pts.append(p.points)
        cps.append(p.cand_prob)
        dists.append(p.dist)
        infos.append(p.info)
    return prob, fg, dmap, np.concatenate(pts), np.concatenate(cps), np.concatenate(dists), len(plan), infos


def _compare_candidates(ref, pts, cps, dists, thr):
    key = {tuple(p): i for i, p in enumerate(ref.points.tolist())}
    got = {tuple(p): i for i, p in enumerate(pts.tolist())}
    assert len(got) == len(pts), "a candidate was emitted by two blocks"
    for p in set(key) ^ set(got):  # only borderline probabilities may flip
        v = ref.cand_prob[key[p]] if p in key else cps[got[p]]
        assert abs(float(v) - thr) <= ATOL, f"candidate {p} (prob {v}) differs between tiled and untiled"
    common = sorted(set(key) & set(got))
    assert len(common) > 50
    i = np.array([key[p] for p in common])
    j = np.array([got[p] for p in common])
    np.testing.assert_allclose(cps[j], ref.cand_prob[i], atol=ATOL, rtol=0)
    np.testing.assert_allclose(dists[j], ref.dist[i], rtol=DIST_RTOL, atol=1e-6)


# ----------------------------------------------------------------------------- tiling kernels (no TF)


@pytest.mark.parametrize("want", [((0, 26), (0, 76), (0, 70)), ((5, 19), (13, 60), (1, 70)), ((25, 26), (0, 1), (69, 70))])
@pytest.mark.parametrize("max_vox", [1 << 30, 20_000])
def test_plan_network_tiles_partition_alignment(want, max_vox):
    want = tuple(slice(a, b) for a, b in want)
    div, halo = (2, 4, 4), (6, 8, 12)
    tiles = plan_network_tiles(want, div=div, halo=halo, volume_shape=VOL, max_tile_voxels=max_vox)
    cover = np.zeros(VOL, np.int32)
    padded = [-(-n // d) * d for n, d in zip(VOL, div, strict=True)]
    for t in tiles:
        cover[t.core] += 1
        for ax in range(3):
            c, w = t.core[ax], t.tile[ax]
            assert w.start % div[ax] == 0 and (w.stop % div[ax] == 0 or w.stop == padded[ax])
            assert w.start <= max(0, c.start - halo[ax]) and w.stop >= min(padded[ax], c.stop + halo[ax])
            assert w.stop <= padded[ax]
    assert (cover[want] == 1).all() and cover.sum() == np.prod([w.stop - w.start for w in want])
    if max_vox == 1 << 30:
        assert len(tiles) == 1
    if max_vox == 20_000 and want[0].stop - want[0].start > 20:
        assert len(tiles) > 1
        assert len({t.shape for t in tiles}) == 1  # one shape: batchable


def test_tile_input_reflects_past_volume_end():
    x = np.arange(10.0)[:, None, None] * np.ones((1, 2, 2))
    out = tile_input(x, (slice(0, 10), slice(0, 2), slice(0, 2)), (slice(8, 12), slice(0, 2), slice(0, 2)))
    np.testing.assert_array_equal(out[:, 0, 0], [8, 9, 8, 7])  # the volume reflected about its last voxel


# ----------------------------------------------------------------------------- tiled == untiled


def test_halo_is_measured_and_rounded(predictor):
    rfs = predictor.receptive_fields()
    assert set(rfs) == {"stardist", "unet"}
    for rf in rfs.values():
        assert all(h >= r and h % d == 0 and h - r < d for h, r, d in zip(rf.halo, rf.radius, rf.div, strict=True))
    assert predictor.halo == tuple(max(a, b) for a, b in zip(rfs["stardist"].halo, rfs["unet"].halo, strict=True))
    assert rfs["stardist"].grid == (1, 2, 2) and rfs["unet"].div == (4, 4, 4)


@pytest.mark.parametrize("block_shape,origin", [((26, 38, 35), None), ((11, 76, 29), None), ((26, 25, 70), (0, 7, 0)),
                                                ((26, 76, 35), (0, 0, 1))])
def test_tiled_equals_untiled(predictor, image, untiled, block_shape, origin):
    ref, thr = untiled
    prob, fg, dmap, pts, cps, dists, n_blocks, _ = _assemble(predictor, image, block_shape, thr, origin=origin)
    assert n_blocks > 1
    np.testing.assert_allclose(prob, ref.prob, atol=ATOL, rtol=0)
    np.testing.assert_allclose(fg, ref.foreground, atol=ATOL, rtol=0)
    np.testing.assert_allclose(dmap, ref.distance, rtol=DIST_RTOL, atol=1e-6)
    _compare_candidates(ref, pts, cps, dists, thr)


def test_block_split_into_batched_tiles(models, image, untiled):
    ref, thr = untiled
    small = NetworkPredictor(models["stardist"], models["unet"], percentiles_table=_table(image),
                             max_tile_voxels=100_000, batch_size=3)
    prob, fg, _, pts, cps, dists, _, infos = _assemble(small, image, (26, 76, 35), thr)
    for i in infos:  # several tiles per block, tiles of one shape batched together
        assert i["tiles"]["stardist"] > 4 and i["tiles"]["unet"] > 4
        assert i["batches"]["stardist"] < i["tiles"]["stardist"] and i["batches"]["unet"] < i["tiles"]["unet"]
    np.testing.assert_allclose(prob, ref.prob, atol=ATOL, rtol=0)
    np.testing.assert_allclose(fg, ref.foreground, atol=ATOL, rtol=0)
    _compare_candidates(ref, pts, cps, dists, thr)


def test_halo_at_measured_radius_is_exact_and_below_it_is_not(models, image, untiled, predictor):
    """A halo equal to the measured radius (not rounded up) is exact; one voxel less is not."""
    ref, thr = untiled
    rfs = predictor.receptive_fields()
    radius = tuple(max(a, b) for a, b in zip(rfs["stardist"].radius, rfs["unet"].radius, strict=True))
    worst = {}
    for short in (0, 1, 6):
        halo = tuple(r - short for r in radius)
        p = NetworkPredictor(models["stardist"], models["unet"], percentiles_table=_table(image), halo=halo)
        prob, fg, _, _, _, _, _, _ = _assemble(p, image, (26, 38, 35), thr)
        diff = np.maximum(np.abs(fg - ref.foreground), np.abs(prob - ref.prob))
        worst[short] = float(diff.max())
        if short:
            # the error sits at the seams (y = 38, x = 35), not inside the blocks
            seam = np.zeros(VOL, bool)
            seam[:, 38 - radius[1]:38 + radius[1], :] = True
            seam[:, :, 35 - radius[2]:35 + radius[2]] = True
            assert diff[~seam].max() <= ATOL
    assert worst[0] <= ATOL, worst
    assert worst[1] > 10 * ATOL, worst  # measured: ~1.6e-3 (prob) with one voxel missing
    assert worst[6] > 1e-2, worst  # measured: ~2e-2


def test_validate_prediction_and_info(predictor, image):
    plan = plan_blocks(VOL, (13, 40, 40), predictor.halo)
    b = plan.blocks[-1]
    p = predictor.predict_block(image[b.read], t=0, read=b.read, core=b.core, volume_shape=VOL, prob_threshold=0.5)
    p = validate_prediction(p, b.shape, b.core, predictor.n_rays)
    assert p.prob.dtype == p.foreground.dtype == p.distance.dtype == np.float32
    assert p.points.dtype == np.int64 and p.dist.shape == (len(p.points), 32)
    assert (p.dist > 0).all() and (p.cand_prob >= 0.5).all()
    assert ((p.points % np.array([1, 2, 2])) == 0).all()  # centres on the model grid
    assert np.array_equal(p.points, p.points[np.lexsort(p.points.T[::-1])])
    assert p.info["device"] in ("CPU", "GPU") and p.info["tiles"] == {"stardist": 1, "unet": 1}
    assert p.info["batches"] == {"stardist": 1, "unet": 1}
    d = predictor.describe()
    assert d["halo"] == list(predictor.halo) and d["models"]["stardist"]["sha256"]


def test_read_region_smaller_than_halo_is_rejected(predictor, image):
    core = (slice(5, 10), slice(30, 40), slice(30, 40))
    with pytest.raises(ShapeError, match="halo"):
        predictor.predict_block(image[core], t=0, read=core, core=core, volume_shape=VOL, prob_threshold=0.5)


# ----------------------------------------------------------------------------- pickling, errors


def test_pickle_holds_no_tensorflow(predictor, image, untiled):
    from vollseg_dask.runtime import cached_keys

    assert any(k.startswith("vollseg-network:stardist") for k in cached_keys())  # models were used
    data = pickle.dumps(predictor)
    assert len(data) < 20_000, len(data)
    for word in (b"keras", b"tensorflow", b"LoadedNetwork", b"StarDist3D"):
        assert word not in data
    clone = pickle.loads(data)
    full = tuple(slice(0, n) for n in VOL)
    p = clone.predict_block(image, t=0, read=full, core=full, volume_shape=VOL, prob_threshold=untiled[1])
    np.testing.assert_array_equal(p.prob, untiled[0].prob)


def test_missing_and_wrong_model_folders(models, tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        NetworkPredictor(tmp_path / "nope", models["unet"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        NetworkPredictor(models["stardist"], empty)
    with pytest.raises(ConfigError, match="not a StarDist"):
        NetworkPredictor(models["unet"], models["unet"])
    with pytest.raises(ModelNotFoundError, match="stardist/"):
        NetworkPredictor.from_models_dir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="models folder not found"):
        NetworkPredictor.from_models_dir(tmp_path / "missing")
    p = NetworkPredictor.from_models_dir(models["stardist"].parent)
    assert p.kinds == ("stardist", "unet") and p.n_rays == 32
    assert p.prob_threshold == 0.5 and p.nms_threshold == 0.4


def test_predict_without_percentiles_is_rejected(models, image):
    p = NetworkPredictor(models["stardist"], models["unet"])
    full = tuple(slice(0, n) for n in VOL)
    with pytest.raises(ConfigError, match="prepare"):
        p.predict_block(image, t=0, read=full, core=full, volume_shape=VOL, prob_threshold=0.5)


@pytest.mark.parametrize("n,pad_lo,pad_hi,start", [(10, 0, 7, 0), (1, 0, 3, 0), (3, 2, 9, 0), (6, 0, 5, 4)])
def test_tile_input_equals_numpy_reflect_pad(n, pad_lo, pad_hi, start):
    x = np.random.default_rng(n).random((n, 3, 2))
    padded = np.pad(x, ((pad_lo, pad_hi), (0, 0), (0, 0)), mode="reflect")
    region = (slice(100, 100 + n), slice(0, 3), slice(0, 2))
    tile = (slice(100 - pad_lo + start, 100 + n + pad_hi), slice(0, 3), slice(0, 2))
    np.testing.assert_array_equal(tile_input(x, region, tile), padded[start:])


def test_singleton_z_and_ragged_volume(predictor, image):
    """A single z plane (padded by reflection to the divisibility) and odd y/x sizes."""
    vol = (1, 45, 37)
    img = np.ascontiguousarray(image[:1, :45, :37])
    full = tuple(slice(0, n) for n in vol)
    ref = predictor.predict_block(img, t=0, read=full, core=full, volume_shape=vol, prob_threshold=0.5)
    plan = plan_blocks(vol, (1, 20, 15), predictor.halo)
    prob = np.full(vol, np.nan, np.float32)
    fg = np.full(vol, np.nan, np.float32)
    for b in plan:
        p = predictor.predict_block(img[b.read], t=0, read=b.read, core=b.core, volume_shape=vol, prob_threshold=0.5)
        prob[b.core], fg[b.core] = p.prob, p.foreground
    assert len(plan) == 9
    np.testing.assert_allclose(prob, ref.prob, atol=ATOL, rtol=0)
    np.testing.assert_allclose(fg, ref.foreground, atol=ATOL, rtol=0)


def test_tile_budget_follows_the_worker_memory_headroom():
    """Network tiles and batches shrink with the headroom under the worker's limit (batch first)."""
    from vollseg_dask.predictors.network import (
        DEFAULT_MAX_TILE_VOXELS,
        NETWORK_BYTES_PER_VOXEL,
        NETWORK_RESERVE_BYTES,
        tile_budget,
    )
    from vollseg_dask.runtime import MEMORY_TARGET_FRACTION, memory_headroom

    assert tile_budget(64 * 2**30, 4) == (DEFAULT_MAX_TILE_VOXELS, 4)
    two = NETWORK_RESERVE_BYTES + 2 * DEFAULT_MAX_TILE_VOXELS * NETWORK_BYTES_PER_VOXEL
    assert tile_budget(two, 4) == (DEFAULT_MAX_TILE_VOXELS, 2)
    tile, batch = tile_budget(2**29, 4)
    assert batch == 1 and tile * NETWORK_BYTES_PER_VOXEL + NETWORK_RESERVE_BYTES <= 2**29
    assert tile_budget(0, 4) == (1 << 18, 1)
    # headroom: the target fraction of the limit minus what the process holds
    assert memory_headroom(10 * 2**30, 2**30) == int(MEMORY_TARGET_FRACTION * 10 * 2**30) - 2**30
    assert memory_headroom(2**30, 2**30) == 0
