"""Training driver: config names, patch kernels, .npz, a 1-epoch run of all networks, CLI, StarDist folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from vollseg_dask.errors import ConfigError, ModelNotFoundError, ShapeError, StoreNotFoundError
from vollseg_dask.networks.data import (
    add_noise,
    anisotropy_from_voxel_size,
    augment_together,
    expand_region,
    sample_patch_corners,
)
from vollseg_dask.networks.training import TrainingConfig

# ------------------------------------------------------------------------------------ config


def test_config_accepts_paper_names_and_snake_case():
    a = TrainingConfig(BaseDir="d", NetworkDepth=3, Epochs=7, LearningRate=1e-3, PatchX=32, PatchY=32, PatchZ=8,
                       Kernel=5, Rays=64, startfilter=8, GenerateNPZ=True, TrainUNET=False, TrainSTAR=True,
                       TrainN2V=True, n2v_perc_pix=1.0, n2v_neighborhood_radius=3, boundary_width=2,
                       steps_per_epoch=3, model_dir="m", model_name="x", batch_size=4, n_patches_per_image=2)
    b = TrainingConfig(base_dir="d", network_depth=3, epochs=7, learning_rate=1e-3, patch_x=32, patch_y=32,
                       patch_z=8, kernel=5, rays=64, start_filter=8, generate_npz=True, train_unet=False,
                       train_star=True, train_n2v=True, n2v_perc_pix=1.0, n2v_neighborhood_radius=3,
                       boundary_width=2, steps_per_epoch=3, model_dir="m", model_name="x", batch_size=4,
                       n_patches_per_image=2)
    assert a == b
    assert a.patch_shape == (8, 32, 32) and a.output_dir == Path("m/x")
    assert a.npz_path == Path("m/x/training_data.npz")


@pytest.mark.parametrize("bad,match", [
    ({"BaseDir": "d", "Kernel": 4}, "Kernel must be odd"),
    ({"BaseDir": "d", "PatchZ": 10}, "PatchZ=10 must be a multiple"),
    ({"BaseDir": "d", "grid": (1, 3, 2)}, "powers of 2"),
    ({"BaseDir": "d", "store": "s"}, "exactly one of base_dir"),
    ({}, "exactly one of base_dir"),
    ({"BaseDir": "d", "TrainUNET": False, "TrainSTAR": False}, "nothing to train"),
    ({"BaseDir": "d", "Epoch": 3}, "Epoch"),
])
def test_config_errors_name_the_value(bad, match):
    from vollseg_dask.config import parse_config

    with pytest.raises(ConfigError, match=match):
        parse_config(TrainingConfig, bad)


# ------------------------------------------------------------------------------------ kernels


def test_sample_patch_corners_prefers_foreground(rng):
    shape, patch = (20, 40, 40), (4, 8, 8)
    fg = np.zeros(shape, bool)
    fg[:, :20, :20] = True

    def score(region):
        return float(fg[region].mean())

    corners = sample_patch_corners(shape, patch, 10, rng, accept=score, min_score=0.5)
    assert len(corners) == 10
    for c in corners:
        assert all(0 <= ci <= s - p for ci, s, p in zip(c, shape, patch, strict=True))
        assert score(tuple(slice(ci, ci + p) for ci, p in zip(c, patch, strict=True))) >= 0.5
    # impossible score: still n corners, the best ones
    assert len(sample_patch_corners(shape, patch, 3, rng, accept=score, min_score=2.0, max_tries=2)) == 3
    with pytest.raises(ShapeError, match="does not fit"):
        sample_patch_corners((4, 4, 4), (8, 2, 2), 1, rng)


def test_augment_together_same_transform(rng):
    x = rng.random((4, 6, 6))
    lab = np.arange(4 * 36).reshape(4, 6, 6)
    for _ in range(10):
        xa, la = augment_together((x, lab), rng)
        # the label array tells where each voxel went; the image must have moved identically
        np.testing.assert_array_equal(xa, x.reshape(-1)[la.reshape(-1)].reshape(la.shape))
    # non-square y-x: flips only, shape kept
    xa, = augment_together((rng.random((3, 4, 5)),), rng)
    assert xa.shape == (3, 4, 5)


def test_add_noise_statistics(rng):
    x = np.full((64, 64, 64), 0.5, np.float32)
    g = add_noise(x, rng, None, 0.1)
    assert abs(float(g.std()) - 0.1) < 0.005 and abs(float(g.mean()) - 0.5) < 0.005
    p = add_noise(x, rng, 40.0, 0.0)  # Poisson(20)/40: mean 0.5, variance 20/1600
    assert abs(float(p.mean()) - 0.5) < 0.005 and abs(float(p.var()) - 20 / 1600) < 0.001
    np.testing.assert_array_equal(add_noise(x, rng, None, 0.0), x)


def test_anisotropy_and_regions():
    assert anisotropy_from_voxel_size((2.0, 0.5, 0.5)) == (4.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="voxel_size"):
        anisotropy_from_voxel_size((0, 1, 1))
    read, inner = expand_region((slice(2, 6), slice(0, 4), slice(5, 10)), 3, (8, 8, 10))
    assert read == (slice(0, 8), slice(0, 7), slice(2, 10))
    assert inner == (slice(2, 6), slice(0, 4), slice(3, 8))


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def folder_pair(tmp_path_factory):
    pytest.importorskip("stardist")
    import tifffile
    from stardist.data import test_image_nuclei_3d

    img, lbl = test_image_nuclei_3d(return_mask=True)  # (31, 61, 57)
    root = tmp_path_factory.mktemp("pair")
    for sub in ("Raw", "Segmentation"):
        (root / sub).mkdir()
    crops = {"a.tif": (slice(0, 20), slice(0, 48), slice(0, 48)), "b.tif": (slice(10, 31), slice(12, 61), slice(8, 57))}
    for name, sl in crops.items():
        tifffile.imwrite(root / "Raw" / name, img[sl])
        tifffile.imwrite(root / "Segmentation" / name, lbl[sl].astype(np.uint16))
    val = tmp_path_factory.mktemp("val")
    # small: an untrained model has many candidates, and NMS cost grows with their square
    tifffile.imwrite(val / "img.tif", img[8:20, 8:40, 8:40])
    tifffile.imwrite(val / "lbl.tif", lbl[8:20, 8:40, 8:40].astype(np.uint16))
    return root, val


def _tiny_config(root: Path, out: Path, **kw) -> dict:
    cfg = {"BaseDir": str(root), "PatchZ": 8, "PatchY": 32, "PatchX": 32, "n_patches_per_image": 3,
           "NetworkDepth": 2, "startfilter": 4, "Kernel": 3, "Rays": 16, "Epochs": 1, "steps_per_epoch": 2,
           "batch_size": 2, "LearningRate": 1e-3, "TrainN2V": True, "TrainSTAR": True, "TrainUNET": True,
           "star_conv_after_unet": 8, "voxel_size": [2.0, 1.0, 1.0], "validation_split": 0.25,
           "denoised_copies": True, "model_dir": str(out), "model_name": "tiny", "optimize_thresholds": False}
    cfg.update(kw)
    return cfg


def test_cli_train_then_optimize_thresholds(folder_pair, tmp_path):
    from click.testing import CliRunner

    from vollseg_dask.cli import main

    root, val = folder_pair
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(_tiny_config(root, tmp_path / "models")))
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(cfg_path), "--json", "--threads", "2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # --json: stdout holds only the JSON (warnings go to stderr)
    base = tmp_path / "models" / "tiny"
    assert set(out["folders"]) == {"n2v", "stardist", "unet"}
    for kind in ("n2v", "stardist", "unet"):
        assert (base / kind / "config.json").is_file() and (base / kind / "weights_best.h5").is_file()
    # patches: 2 sources x 3 patches x (original + 1 augmented) + denoised copies of the originals,
    # minus the held-out quarter of the groups (1 of 6 is not 0.25 * 6 rounded: 2 groups are held out)
    assert out["n_val_patches"] == 2
    assert out["n_train_patches"] == 4 * 2 + 4
    with np.load(base / "training_data.npz") as f:
        assert f["X"].shape == (12, 8, 32, 32) and f["Y"].dtype == np.int32
        assert sorted(np.unique(f["kind"]).tolist()) == [0, 1, 2]
        meta = json.loads(str(f["meta"]))
    assert meta["voxel_size"] == [2.0, 1.0, 1.0] and meta["boundary_width"] == 1
    sd_cfg = json.loads((base / "stardist" / "config.json").read_text())
    assert sd_cfg["n_rays"] == 16 and sd_cfg["grid"] == [1, 2, 2] and sd_cfg["anisotropy"] == [2.0, 1.0, 1.0]
    assert sd_cfg["rays_json"]["kwargs"]["anisotropy"] == [2.0, 1.0, 1.0]
    assert sd_cfg["train_patch_size"] == [8, 32, 32] and sd_cfg["unet_n_filter_base"] == 4
    u_cfg = json.loads((base / "unet" / "config.json").read_text())
    assert u_cfg["unet_n_first"] == 4 and u_cfg["train_epochs"] == 1 and u_cfg["voxel_size"] == [2.0, 1.0, 1.0]

    # no thresholds were optimised: the folder loads with stardist's defaults
    from vollseg_dask.networks.folders import inspect_model_folder, load_model_folder, stardist_rays

    info = inspect_model_folder(base / "stardist", "stardist")
    assert not info.thresholds_from_file and info.thresholds == {"prob": 0.5, "nms": 0.4}
    rays = stardist_rays(info)
    assert len(rays) == 16 and rays.kwargs["anisotropy"] == (2.0, 1.0, 1.0)

    res = runner.invoke(main, ["optimize-thresholds", str(base / "stardist"), "-i", str(val / "img.tif"),
                               "-l", str(val / "lbl.tif"), "--nms", "0.3", "--nms", "0.5"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    th = json.loads(res.stdout)
    assert 0 < th["prob"] < 1 and th["nms"] in (0.3, 0.5)
    assert json.loads((base / "stardist" / "thresholds.json").read_text()) == th
    model = load_model_folder(base / "stardist", "stardist")
    assert model.thresholds.prob == pytest.approx(th["prob"]) and model.thresholds.nms == th["nms"]

    # second run reuses the patch file (GenerateNPZ false) and trains only the U-Net
    cfg2 = _tiny_config(root, tmp_path / "models", GenerateNPZ=False, TrainN2V=False, TrainSTAR=False,
                        boundary_width=2, denoised_copies=False)
    cfg_path.write_text(yaml.safe_dump(cfg2))
    res = runner.invoke(main, ["train", str(cfg_path), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out2 = json.loads(res.stdout)
    assert set(out2["folders"]) == {"unet"} and out2["n_train_patches"] == 12
    assert json.loads((base / "unet" / "config.json").read_text())["boundary_width"] == 2


def test_cli_errors(folder_pair, tmp_path):
    from click.testing import CliRunner

    from vollseg_dask.cli import main

    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"BaseDir": "x", "Epoch": 3}))
    res = runner.invoke(main, ["train", str(bad)])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError) and "Epoch" in str(res.exception)
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"BaseDir": str(tmp_path / "nowhere")}))
    res = runner.invoke(main, ["train", str(missing)])
    assert isinstance(res.exception, StoreNotFoundError) and "nowhere" in str(res.exception)
    res = runner.invoke(main, ["optimize-thresholds", str(tmp_path / "nomodel"), "--store", "s"])
    assert isinstance(res.exception, ModelNotFoundError) and "nomodel" in str(res.exception)
    res = runner.invoke(main, ["optimize-thresholds", str(tmp_path)])
    assert isinstance(res.exception, ConfigError) and "--images" in str(res.exception)


def test_stardist_2d_folder_is_refused(tmp_path):
    pytest.importorskip("stardist")
    from vollseg_dask.networks._tf import import_tf

    import_tf(2)
    from stardist.models import Config2D, StarDist2D

    from vollseg_dask.networks.folders import load_model_folder, quiet_stdout

    with quiet_stdout():
        m = StarDist2D(Config2D(n_rays=8, train_tensorboard=False, unet_n_depth=1, unet_n_filter_base=4,
                                net_conv_after_unet=4), name="sd2", basedir=str(tmp_path))
    m.keras_model.save_weights(str(tmp_path / "sd2" / "weights_best.h5"))
    with pytest.raises(ConfigError, match="2D StarDist model.*3D StarDist model"):
        load_model_folder(tmp_path / "sd2", "stardist")
    with pytest.raises(ConfigError, match="unknown model kind"):
        load_model_folder(tmp_path / "sd2", "cellpose")


def test_training_from_store(tmp_path):
    """An OME-Zarr image + labels group as training source (percentiles from the exact S0 statistics)."""
    pytest.importorskip("stardist")
    from stardist.data import test_image_nuclei_3d

    from vollseg_dask.io.omezarr import create_labels, write_image
    from vollseg_dask.networks.data import sources_from_store

    img, lbl = test_image_nuclei_3d(return_mask=True)
    data = np.stack([img, img[:, ::-1]])
    store = tmp_path / "s.zarr"
    write_image(store, data, axes="tzyx", scale=(1.0, 2.0, 0.5, 0.5))
    lab = create_labels(store, "ground_truth", dtype="uint16")
    lab[:] = np.stack([lbl, lbl[:, ::-1]]).astype(np.uint16)
    srcs = sources_from_store(store, "ground_truth", timepoints=[1])
    assert len(srcs) == 1 and srcs[0].voxel_size == (2.0, 0.5, 0.5)
    lo, hi = np.percentile(data[1], [1, 99.8])
    assert srcs[0].lo == pytest.approx(lo) and srcs[0].hi == pytest.approx(hi)
    region = (slice(0, 8), slice(0, 16), slice(0, 16))
    np.testing.assert_array_equal(srcs[0].read_labels(region), lbl[:, ::-1][region])
    with pytest.raises(ConfigError, match="out of range"):
        sources_from_store(store, "ground_truth", timepoints=[5])

    # StarDist alone from the store, validated and thresholded on a held-out time point
    from vollseg_dask.networks.training import train_from_config

    cfg = TrainingConfig(store=str(store), timepoints=[0], validation_store=str(store), validation_timepoints=[1],
                         PatchZ=8, PatchY=32, PatchX=32, n_patches_per_image=2, n_augmented_copies=0,
                         TrainSTAR=True, TrainUNET=False, Epochs=1, steps_per_epoch=1, startfilter=4, Rays=16,
                         star_conv_after_unet=8, threshold_max_candidates=100, model_dir=str(tmp_path / "m"))
    res = train_from_config(cfg)
    assert res.n_train == 2 and res.n_val == 2 and set(res.folders) == {"stardist"}
    th = json.loads((tmp_path / "m" / "vollseg" / "stardist" / "thresholds.json").read_text())
    assert th == res.thresholds and 0 < th["prob"] < 1 and th["nms"] in (0.3, 0.4, 0.5)
    sd_cfg = json.loads((tmp_path / "m" / "vollseg" / "stardist" / "config.json").read_text())
    assert sd_cfg["anisotropy"] == [4.0, 1.0, 1.0]  # from the store's voxel size (2, 0.5, 0.5)


def test_imports_do_not_load_tensorflow():
    import subprocess
    import sys

    code = ("import sys\n"
            "import vollseg_dask.networks as n, vollseg_dask.networks.training, vollseg_dask.networks.folders\n"
            "import vollseg_dask.networks.n2v, vollseg_dask.networks.unet, vollseg_dask.networks.thresholds\n"
            "import vollseg_dask.cli.train, vollseg_dask.cli.optimize_thresholds\n"
            "n.TrainingConfig; n.inspect_model_folder\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'csbdeep', 'stardist') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("mode", ["one_sided", "inner"])
def test_patch_targets_match_whole_volume_and_follow_augmentation(mode):
    pytest.importorskip("stardist")
    from stardist.data import test_image_nuclei_3d

    from vollseg_dask.networks.data import TrainingSource
    from vollseg_dask.networks.training import KIND_AUGMENTED, KIND_ORIGINAL, generate_patches
    from vollseg_dask.networks.unet import unet_target

    img, lbl = test_image_nuclei_3d(return_mask=True)
    src = TrainingSource("demo", img, lbl.astype(np.int32), (1.0, 1.0, 1.0), *np.percentile(img, [1, 99.8]))
    cfg = TrainingConfig(BaseDir="unused", PatchZ=8, PatchY=24, PatchX=24, n_patches_per_image=6,
                         n_augmented_copies=2, boundary_mode=mode, validation_split=0.0, seed=3)
    p = generate_patches([src], [], cfg)
    whole = unet_target(lbl.astype(np.int32), 1, mode)
    orig = np.flatnonzero(p.kind == KIND_ORIGINAL)
    assert len(orig) == 6 and (p.kind == KIND_AUGMENTED).sum() == 12 and len(p.X_val) == 0
    for i in orig:
        region = tuple(slice(int(c), int(c) + s) for c, s in zip(p.corner[i], (8, 24, 24), strict=True))
        np.testing.assert_array_equal(p.B[i], whole[region])  # the target with its true context
        np.testing.assert_array_equal(p.Y[i], lbl[region])
        np.testing.assert_allclose(p.X[i], (img[region] - src.lo) / (src.hi - src.lo), rtol=1e-5, atol=1e-6)
    # augmented copies: targets recomputed from the transformed labels (one-sided boundaries stay on
    # the raster-earlier side), checked away from the patch rim where context is missing
    inner = (slice(1, -1),) * 3
    for i in np.flatnonzero(p.kind == KIND_AUGMENTED):
        np.testing.assert_array_equal(p.B[i][inner], unet_target(p.Y[i], 1, mode)[inner])
