"""Upstream VollSeg users' model folders: a csbdeep CARE U-Net and an ``n2v`` package N2V folder.

The CARE folder is made by csbdeep itself (``csbdeep.models.CARE`` + ``Config``, a tiny network
trained for one short epoch on tiny data); the N2V folder is written in the ``n2v`` package's format
(its ``N2VConfig`` keys, ``means``/``stds`` as strings, legacy-HDF5 ``weights_best.h5``), since the
package itself cannot be installed beside stardist (DESIGN §5). Both run through ``segment`` with a
StarDist3D folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from vollseg_dask.errors import ConfigError, ModelNotFoundError

VOL = (8, 48, 40)


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
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    z, y, x = np.meshgrid(*[np.arange(n) for n in VOL], indexing="ij")
    clean = 400.0 * ((np.sin(y / 3.0) * np.cos(x / 4.0) > 0.3) & (np.abs(z - 4) < 3)) + 100
    return (clean + rng.normal(0, 30, VOL)).clip(0).astype(np.uint16)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, cache_env, image) -> dict[str, Path]:
    from csbdeep.models import CARE, Config

    from vollseg_dask.networks._tf import set_seed
    from vollseg_dask.networks.folders import quiet_stdout
    from vollseg_dask.networks.upstream import build_n2v_package_network
    from vollseg_dask.predictors.network import _save_legacy_h5, write_random_model_folders

    root = tmp_path_factory.mktemp("upstream")
    set_seed(0)
    out = write_random_model_folders(root / "random", n2v=False, stardist_depth=1, unet_depth=1,
                                     output_gain=300.0, seed=2)
    # --- CARE, as upstream VollSeg trains its U-Net: CARE Config on (image, binary mask) pairs
    x = (image.astype(np.float32) - 100) / 400
    y = (image > 300).astype(np.float32)
    X = np.stack([x[:, :16, :16], x[:, 16:32, :16], x[:, :16, 16:32], x[:, 16:32, 16:32]])[..., None]
    Y = np.stack([y[:, :16, :16], y[:, 16:32, :16], y[:, :16, 16:32], y[:, 16:32, 16:32]])[..., None]
    conf = Config("ZYXC", n_channel_in=1, n_channel_out=1, unet_n_depth=1, unet_n_first=4, train_epochs=1,
                  train_steps_per_epoch=2, train_batch_size=2, train_tensorboard=False)
    assert conf.unet_residual and conf.unet_last_activation == "linear"
    with quiet_stdout():
        care = CARE(conf, "care", basedir=str(root))
        care.train(X[:3], Y[:3], validation_data=(X[3:], Y[3:]))
    assert (root / "care" / "weights_best.h5").is_file()
    out["care"] = root / "care"
    # --- n2v package folder: N2VConfig's keys as its vars() are saved, weights as legacy HDF5
    cfg = {"means": ["180.5"], "stds": ["120.25"], "n_dim": 3, "axes": "ZYXC", "n_channel_in": 1,
           "n_channel_out": 1, "unet_residual": False, "unet_n_depth": 2, "unet_kern_size": 3, "unet_n_first": 4,
           "unet_last_activation": "linear", "unet_input_shape": [None, None, None, 1], "train_loss": "mse",
           "train_epochs": 10, "train_steps_per_epoch": 10, "train_learning_rate": 0.0004, "train_batch_size": 4,
           "train_tensorboard": True, "train_checkpoint": "weights_best.h5",
           "train_reduce_lr": {"factor": 0.5, "patience": 10}, "batch_norm": True, "n2v_perc_pix": 0.198,
           "n2v_patch_shape": [16, 32, 32], "n2v_manipulator": "uniform_withCP", "n2v_neighborhood_radius": 5,
           "single_net_per_channel": True, "blurpool": False, "skip_skipone": False, "structN2Vmask": None,
           "probabilistic": False}
    net = build_n2v_package_network(cfg)
    rng = np.random.default_rng(1)
    for layer in net.layers:  # batch-norm statistics that matter
        if layer.__class__.__name__ == "BatchNormalization":
            g, b, m, v = layer.get_weights()
            layer.set_weights([g, b, rng.normal(0, 0.1, m.shape).astype(np.float32),
                               rng.uniform(0.5, 2, v.shape).astype(np.float32)])
    (root / "n2v").mkdir()
    (root / "n2v" / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    _save_legacy_h5(net, root / "n2v" / "weights_best.h5")
    out["n2v"] = root / "n2v"
    return out


def _table(img: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"p1": [np.percentile(img, 1)], "p99.8": [np.percentile(img, 99.8)]})


FULL = tuple(slice(0, n) for n in VOL)


def test_folders_are_recognised(folders):
    from vollseg_dask.networks.folders import inspect_model_folder

    care = inspect_model_folder(folders["care"], "unet")
    assert care.flavour == "care" and care.norm == (1.0, 99.8)
    n2v = inspect_model_folder(folders["n2v"], "n2v")
    assert n2v.flavour == "n2v-package" and n2v.fixed_norm == (180.5, 120.25)
    with pytest.raises(ConfigError, match="n2v"):
        inspect_model_folder(folders["n2v"], "unet")
    cfg = json.loads((folders["n2v"] / "config.json").read_text())
    bad = folders["n2v"].parent / "bad_n2v"
    bad.mkdir(exist_ok=True)
    (bad / "weights_best.h5").write_bytes((folders["n2v"] / "weights_best.h5").read_bytes())
    (bad / "config.json").write_text(json.dumps({**cfg, "unet_n_first": 8}))
    from vollseg_dask.networks.folders import load_model_folder

    with pytest.raises(ConfigError, match="do not fit"):
        load_model_folder(bad, "n2v")


def test_n2v_package_normalisation(folders, image):
    """Denoising = (x - mean) / std -> network -> y * std + mean, as N2V.predict does."""
    from vollseg_dask.networks.folders import load_model_folder
    from vollseg_dask.predictors.network import NetworkPredictor

    pred = NetworkPredictor(folders["stardist"], folders["unet"], folders["n2v"], percentiles_table=_table(image))
    got = pred.denoise_block(image, t=0, read=FULL, core=FULL, volume_shape=VOL)
    net = load_model_folder(folders["n2v"], "n2v")
    x = ((image.astype(np.float32) - 180.5) / 120.25)[None, ..., None]
    ref = np.asarray(net.keras_model(x, training=False))[0, ..., 0] * 120.25 + 180.5
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)
    assert np.abs(got - image).max() > 1  # the network did something


def test_care_mask_is_global_otsu_and_tiled_equals_untiled(folders, image, tmp_path):
    """The CARE mask: output > Otsu threshold of the whole time point's output, whatever the blocks."""
    from skimage.filters import threshold_otsu

    from vollseg_dask.io import convert
    from vollseg_dask.kernels.otsu import otsu_from_prefix_histogram, prefix_histogram
    from vollseg_dask.networks.folders import load_model_folder
    from vollseg_dask.predictors.network import NetworkPredictor

    store = tmp_path / "img.zarr"
    convert(image[None], store, axes="tzyx", chunks=(1, 8, 16, 16))
    pred = NetworkPredictor(folders["stardist"], folders["care"])
    pred.prepare(str(store), n_t=1, volume_shape=VOL)
    thr = float(pred.care_thresholds[0])
    # reference: the whole volume through csbdeep's CARE network in one pass
    net = load_model_folder(folders["care"], "unet")
    lo, hi = np.percentile(image, [1, 99.8])
    x = ((image.astype(np.float32) - lo) / (hi - lo))[None, ..., None]
    out = np.asarray(net.keras_model(x, training=False))[0, ..., 0]
    assert thr == otsu_from_prefix_histogram(prefix_histogram(out))
    assert abs(thr - threshold_otsu(out)) <= 0.01 * (out.max() - out.min())
    whole = pred.predict_block(image, t=0, read=FULL, core=FULL, volume_shape=VOL, prob_threshold=0.5)
    np.testing.assert_array_equal(whole.foreground, (out > np.float32(thr)).astype(np.float32))
    assert 0 < whole.foreground.mean() < 1
    halo = pred.halo
    for z0, y0, x0 in ((0, 0, 0), (0, 24, 0), (4, 24, 16)):
        core = (slice(z0, min(VOL[0], z0 + 4)), slice(y0, y0 + 24), slice(x0, min(VOL[2], x0 + 24)))
        read = tuple(slice(max(0, c.start - h), min(n, c.stop + h)) for c, h, n in zip(core, halo, VOL, strict=True))
        blk = pred.predict_block(image[read], t=0, read=read, core=core, volume_shape=VOL, prob_threshold=0.5)
        np.testing.assert_array_equal(blk.foreground, whole.foreground[core])
    fixed = NetworkPredictor(folders["stardist"], folders["care"], unet_threshold=0.25,
                             percentiles_table=_table(image))
    blk = fixed.predict_block(image, t=0, read=FULL, core=FULL, volume_shape=VOL, prob_threshold=0.5)
    np.testing.assert_array_equal(blk.foreground, (out > np.float32(0.25)).astype(np.float32))
    assert fixed.describe()["unet_threshold"] == 0.25


def test_segment_cli_with_upstream_folders(folders, image, tmp_path):
    from vollseg_dask.cli import main
    from vollseg_dask.io import convert, open_labels

    store = tmp_path / "img.zarr"
    convert(image[None], store, axes="tzyx", chunks=(1, 8, 16, 16))
    args = ["segment", str(store), "--stardist", str(folders["stardist"]), "--unet", str(folders["care"]),
            "--n2v", str(folders["n2v"]), "--out", "cells", "--block", "8,24,24", "--threads", "--json",
            "--scratch", str(tmp_path / "scratch"), "--keep-intermediates"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, (res.output, res.exception)
    lab = open_labels(store, "cells")
    assert lab.shape == (1, *VOL)
    manifest = json.loads(next((tmp_path / "scratch").rglob("manifest.json")).read_text())
    models = json.dumps(manifest)
    assert "care" in models and "n2v-package" in models and "mean_std" in models
    # StarDist alone: no U-Net needed
    res = CliRunner().invoke(main, ["segment", str(store), "--stardist", str(folders["stardist"]), "--mode",
                                    "stardist", "--out", "sd", "--block", "8,48,40", "--threads"])
    assert res.exit_code == 0, (res.output, res.exception)
    res = CliRunner().invoke(main, ["segment", str(store), "--stardist", str(folders["stardist"]), "--out", "x"])
    assert isinstance(res.exception, ModelNotFoundError) and "only mode 'stardist'" in str(res.exception)


def test_run_with_upstream_folders(folders, image, tmp_path):
    """``run``'s predictor section takes the same single folders (segment stage only here)."""
    from vollseg_dask.io import convert, open_labels
    from vollseg_dask.pipeline import RunConfig, run

    store = tmp_path / "img.zarr"
    convert(image[None], store, axes="tzyx", chunks=(1, 8, 16, 16))
    cfg = RunConfig.model_validate({
        "input": {"path": str(store)}, "output": str(tmp_path / "out"), "cluster": {"kind": "threads"},
        "stages": ["ingest", "segment"],
        "predictor": {"kind": "network", "stardist": str(folders["stardist"]), "unet": str(folders["care"]),
                      "n2v": str(folders["n2v"])},
        "segment": {"block_shape": (8, 24, 24)}})
    run(cfg)
    assert open_labels(store, "cells").shape == (1, *VOL)
    bad = cfg.model_copy(update={"predictor": cfg.predictor.model_copy(update={"unet": str(folders["n2v"])})})
    with pytest.raises(ConfigError, match="n2v"):
        run(bad)  # an n2v folder where a U-Net belongs: refused before any data set
