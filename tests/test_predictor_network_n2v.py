"""NetworkPredictor with Noise2Void first: the denoiser's reach adds to the halo; tiled == untiled.

Untrained networks whose last convolution is scaled (``output_gain``) so that outputs span a
realistic range. The untiled reference is one block over the whole volume. Tolerances: ``ATOL``
on probabilities, ``DEN_ATOL`` (a fraction of the intensity range) on denoised intensities; the
CPU gives exactly equal values.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from vollseg_dask.plan import plan_blocks
from vollseg_dask.predictors.network import NetworkPredictor

ATOL = 1e-5
VOL = (22, 60, 58)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from vollseg_dask.predictors.network import write_random_model_folders

    old = os.environ.get("VOLLSEG_CACHE_DIR")
    os.environ["VOLLSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("rfcache"))
    yield write_random_model_folders(tmp_path_factory.mktemp("models"), n2v=True, stardist_depth=1,
                                     unet_depth=1, n2v_depth=1, output_gain=300.0, n2v_gain=3.0,
                                     seed=11)
    if old is None:
        os.environ.pop("VOLLSEG_CACHE_DIR", None)
    else:
        os.environ["VOLLSEG_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(5)
    z, y, x = np.meshgrid(*[np.arange(n) for n in VOL], indexing="ij")
    clean = 300 * (np.sin(y / 4.0) * np.cos(x / 6.0) > 0.2) * (np.sin(z / 3.0) > -0.5) + 200
    return (clean + rng.poisson(60, VOL)).astype(np.uint16)


@pytest.fixture(scope="module")
def table(image):
    return pd.DataFrame({"p1": [np.percentile(image, 1)], "p99.8": [np.percentile(image, 99.8)]})


@pytest.fixture(scope="module")
def predictor(models, table):
    return NetworkPredictor(models["stardist"], models["unet"], models["n2v"], percentiles_table=table)


FULL = tuple(slice(0, n) for n in VOL)


@pytest.fixture(scope="module")
def untiled(predictor, image):
    den = predictor.denoise_block(image, t=0, read=FULL, core=FULL, volume_shape=VOL)
    pred = predictor.predict_block(image, t=0, read=FULL, core=FULL, volume_shape=VOL, prob_threshold=0.5)
    thr = float(np.quantile(pred.prob, 0.95))
    pred = predictor.predict_block(image, t=0, read=FULL, core=FULL, volume_shape=VOL, prob_threshold=thr)
    return den, pred, thr


def test_halo_is_n2v_plus_max_of_the_others(predictor):
    rfs = predictor.receptive_fields()
    assert predictor.kinds == ("n2v", "stardist", "unet")
    expect = tuple(n + max(s, u) for n, s, u in zip(rfs["n2v"].halo, rfs["stardist"].halo, rfs["unet"].halo, strict=True))
    assert predictor.halo == expect
    assert rfs["n2v"].radius == (9, 9, 9)  # csbdeep's receptive field of a depth-1, kernel-3 U-Net


def test_denoised_output_is_realistic_and_used(models, table, image, untiled):
    den, pred, _ = untiled
    lo, hi = float(table["p1"][0]), float(table["p99.8"][0])
    assert den.dtype == np.float32 and den.shape == VOL
    assert 0.1 * (hi - lo) < den.std() < 3 * (hi - lo)  # a realistic intensity spread
    assert 0.03 < pred.prob.std() and 0.03 < pred.foreground.std()
    plain = NetworkPredictor(models["stardist"], models["unet"], percentiles_table=table)
    p = plain.predict_block(image, t=0, read=FULL, core=FULL, volume_shape=VOL, prob_threshold=0.5)
    assert np.abs(p.prob - pred.prob).max() > 1e-2  # the chain really feeds the denoised image


@pytest.mark.parametrize("block_shape", [(11, 30, 29), (22, 17, 58), (8, 60, 25)])
def test_denoise_tiled_equals_untiled_with_the_n2v_halo_only(predictor, image, table, untiled, block_shape):
    den, _, _ = untiled
    tol = 1e-5 * float(table["p99.8"][0] - table["p1"][0])
    plan = plan_blocks(VOL, block_shape, predictor.receptive_fields()["n2v"].halo)
    out = np.full(VOL, np.nan, np.float32)
    for b in plan:
        out[b.core] = predictor.denoise_block(image[b.read], t=0, read=b.read, core=b.core, volume_shape=VOL)
    assert len(plan) > 1
    np.testing.assert_allclose(out, den, atol=tol, rtol=0)


@pytest.mark.parametrize("block_shape", [(22, 30, 29), (9, 60, 58)])
def test_chain_tiled_equals_untiled(predictor, image, untiled, block_shape):
    _, ref, thr = untiled
    plan = plan_blocks(VOL, block_shape, predictor.halo)
    prob = np.full(VOL, np.nan, np.float32)
    fg = np.full(VOL, np.nan, np.float32)
    pts, cps, dists = [], [], []
    for b in plan:
        p = predictor.predict_block(image[b.read], t=0, read=b.read, core=b.core, volume_shape=VOL, prob_threshold=thr)
        prob[b.core], fg[b.core] = p.prob, p.foreground
        pts.append(p.points)
        cps.append(p.cand_prob)
        dists.append(p.dist)
    assert len(plan) > 1
    np.testing.assert_allclose(prob, ref.prob, atol=ATOL, rtol=0)
    np.testing.assert_allclose(fg, ref.foreground, atol=ATOL, rtol=0)
    pts, cps, dists = np.concatenate(pts), np.concatenate(cps), np.concatenate(dists)
    key = {tuple(p): i for i, p in enumerate(ref.points.tolist())}
    got = {tuple(p): i for i, p in enumerate(pts.tolist())}
    assert len(got) == len(pts)
    for p in set(key) ^ set(got):  # only probabilities within ATOL of the threshold may flip
        v = ref.cand_prob[key[p]] if p in key else cps[got[p]]
        assert abs(float(v) - thr) <= ATOL
    common = sorted(set(key) & set(got))
    assert len(common) > 50
    i, j = np.array([key[p] for p in common]), np.array([got[p] for p in common])
    np.testing.assert_allclose(cps[j], ref.cand_prob[i], atol=ATOL, rtol=0)
    np.testing.assert_allclose(dists[j], ref.dist[i], rtol=1e-4, atol=1e-6)


def test_from_models_dir_uses_n2v_when_present(models, table):
    root = models["stardist"].parent
    assert NetworkPredictor.from_models_dir(root, percentiles_table=table).kinds == ("n2v", "stardist", "unet")
    assert NetworkPredictor.from_models_dir(root, use_n2v=False).kinds == ("stardist", "unet")
