"""Building blocks of ``scripts/evaluate_real_data.py`` and fine-tuning from existing weights.

Real-data tests read ``VOLLSEG_TEST_DATA`` through the ``shared_data`` fixture (skipped when absent).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from vollseg_dask.errors import ConfigError, ModelNotFoundError, ShapeError

ROOT = Path(__file__).resolve().parents[1]
PLANTSEG = ("segmentation", "plantseg")


@pytest.fixture(scope="module")
def ev():
    """The script as a module (it lives in scripts/, not in the package)."""
    spec = importlib.util.spec_from_file_location("evaluate_real_data", ROOT / "scripts" / "evaluate_real_data.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------- splitting
@pytest.mark.parametrize("shape", [(32, 128, 128), (5, 7, 9), (1, 3, 2)])
def test_split_x_is_disjoint_and_covers(ev, shape):
    train, test = ev.split_x(shape)
    cover = np.zeros(shape, np.int8)
    cover[train] += 1
    cover[test] += 2
    assert set(np.unique(cover)) == {1, 2}  # each voxel in exactly one part, both parts present
    assert train[2].stop == test[2].start == round(shape[2] / 2)
    assert train[:2] == test[:2] == (slice(0, shape[0]), slice(0, shape[1]))


def test_split_x_refuses_an_empty_part(ev):
    with pytest.raises(ShapeError, match="empty part"):
        ev.split_x((4, 4, 1))
    with pytest.raises(ShapeError, match="empty part"):
        ev.split_x((4, 4, 10), fraction=0.0)


def test_nearest_index_maps_back_onto_the_coarse_cell(ev):
    idx = ev.nearest_index(10, 4)
    assert idx.tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]  # centre (i + 0.5) / 10 in cell [j/4, (j+1)/4)
    assert ev.nearest_index(7, 7).tolist() == list(range(7))


# ----------------------------------------------------------------------------------------- ingest
@pytest.mark.realdata
@pytest.mark.parametrize("key, shape, voxel, n_cells", [
    ("ovule", (32, 128, 128), (0.235, 0.15, 0.15), 50),
    ("nuclei_1135", (100, 100, 100), (0.2837, 0.1268, 0.1268), 54),
    ("nuclei_1136", (100, 100, 100), (0.2837, 0.1276, 0.1276), 32),
])
def test_ingest_gives_documented_shape_voxel_and_labels(ev, shared_data, tmp_path, key, shape, voxel, n_cells):
    import h5py

    from vollseg_dask.io.omezarr import open_image, open_labels

    h5 = ev.data_path(shared_data, ev.DATA[key])
    store, vs = ev.ingest(h5, tmp_path / "s.zarr")
    img, gt = open_image(store, 0), open_labels(store, ev.GT_NAME)
    assert img.shape == gt.shape == shape and img.axes == gt.axes == "zyx"
    assert vs == pytest.approx(voxel, abs=1e-4) and img.voxel_size == pytest.approx(voxel, abs=1e-4)
    lab = np.asarray(gt.data.compute())
    assert len(np.unique(lab[lab > 0])) == n_cells
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(np.asarray(img.data.compute()), f["raw"][...])
        np.testing.assert_array_equal(lab, f["label"][...])


@pytest.mark.realdata
def test_ingested_split_parts_are_the_disjoint_halves(ev, shared_data, tmp_path):
    from vollseg_dask.io.omezarr import open_image, open_labels

    h5 = ev.data_path(shared_data, ev.DATA["ovule"])
    whole = ev.read_ground_truth(h5)
    tr, te = ev.split_x(whole.shape)
    s_tr, vs_tr = ev.ingest(h5, tmp_path / "train.zarr", tr)
    s_te, vs_te = ev.ingest(h5, tmp_path / "test.zarr", te)
    assert vs_tr == vs_te == pytest.approx((0.235, 0.15, 0.15))
    lab_tr = np.asarray(open_labels(s_tr, ev.GT_NAME).data.compute())
    lab_te = np.asarray(open_labels(s_te, ev.GT_NAME).data.compute())
    np.testing.assert_array_equal(np.concatenate([lab_tr, lab_te], axis=2), whole)
    raw = np.concatenate([open_image(s_tr, 0).data.compute(), open_image(s_te, 0).data.compute()], axis=2)
    np.testing.assert_array_equal(raw, open_image(ev.ingest(h5, tmp_path / "w.zarr")[0], 0).data.compute())


# ----------------------------------------------------------------------------------------- end to end
@pytest.mark.realdata
def test_bundled_stardist_on_ovule_matches_stardist_matching(ev, shared_data, tmp_path):
    """Bundled models, stardist mode, ovule resampled to the synthetic cell size (the setting where the
    bundled StarDist finds cells): the script's metrics equal stardist.matching on the same arrays."""
    pytest.importorskip("stardist")
    from stardist.matching import matching

    from vollseg_dask.io.omezarr import open_labels
    from vollseg_dask.metrics import binary_mse, binary_ssim

    h5 = ev.data_path(shared_data, ev.DATA["ovule"])
    store, vs = ev.ingest(h5, tmp_path / "ovule.zarr")
    gt = ev.read_ground_truth(h5)
    factors = ev.zoom_factors("cell_matched", vs, gt, ev.synthetic_cell_extent())
    assert all(0.2 < f < 0.7 for f in factors)  # ovule cells are 2-3x larger in voxels than the synthetic ones
    small = ev.resampled_store(store, factors, tmp_path / "small.zarr")
    name, secs, n_obj = ev.segment_mode(small, "sd", ev.bundled_predictor(), {"mode": "stardist"}, target=store)
    pred = np.asarray(open_labels(store, name).data.compute())
    assert pred.shape == gt.shape and n_obj == len(np.unique(pred[pred > 0])) > 0
    rec = ev.row_record(ev.evaluate_labels(store, name))
    assert sorted(rec["per_tau"]) == [f"{t / 10:.1f}" for t in range(1, 10)]
    n_tp = 0
    for tau, m in rec["per_tau"].items():
        ref = matching(gt, pred, thresh=float(tau))
        assert (m["tp"], m["fp"], m["fn"], m["n_true"], m["n_pred"]) == (ref.tp, ref.fp, ref.fn, ref.n_true, ref.n_pred)
        for k in ("precision", "recall", "f1", "accuracy", "mean_matched_score"):
            assert 0.0 <= m[k] <= 1.0
            assert m[k] == pytest.approx(getattr(ref, k), abs=1e-6)
        n_tp += m["tp"]
    assert n_tp > 0  # a comparison on all-zero counts would prove nothing
    assert rec["mse"] == pytest.approx(binary_mse(pred, gt)) and 0 <= rec["mse"] <= 1
    assert rec["ssim"] == pytest.approx(binary_ssim(pred, gt), abs=1e-6) and -1 <= rec["ssim"] <= 1


# ----------------------------------------------------------------------------------------- fine-tuning
def _nuclei_store(tmp_path: Path) -> Path:
    from stardist.data import test_image_nuclei_3d

    from vollseg_dask.io.omezarr import create_labels, write_image

    img, lbl = test_image_nuclei_3d(return_mask=True)
    store = tmp_path / "nuclei.zarr"
    write_image(store, img, axes="zyx", scale=(2.0, 0.5, 0.5))
    create_labels(store, "ground_truth", dtype="uint16")[...] = lbl.astype(np.uint16)
    return store


def _weights(folder: Path, kind: str) -> list[np.ndarray]:
    from vollseg_dask.networks.folders import load_model_folder

    return [np.asarray(w) for w in load_model_folder(folder, kind).keras_model.get_weights()]


def test_init_from_bundled_starts_from_the_bundled_weights(tmp_path):
    """With a vanishing learning rate, fine-tuned weights stay the bundled ones (a random
    initialisation would differ by far more than the tolerance)."""
    pytest.importorskip("stardist")
    from vollseg_dask.networks.folders import bundled_model_dir
    from vollseg_dask.networks.training import TrainingConfig, train_from_config

    store = _nuclei_store(tmp_path)
    common = dict(store=str(store), PatchZ=8, PatchY=32, PatchX=32, n_patches_per_image=2, n_augmented_copies=0,
                  validation_split=0.5, TrainSTAR=True, TrainUNET=True, NetworkDepth=2, Kernel=3, startfilter=16,
                  unet_start_filter=8, Rays=32, grid=(1, 2, 2), star_conv_after_unet=64, Epochs=1,
                  steps_per_epoch=1, LearningRate=1e-12, optimize_thresholds=False, model_dir=str(tmp_path / "m"),
                  anisotropy=(4.0, 1.0, 1.0))
    train_from_config(TrainingConfig(model_name="ft", init_from="bundled", **common))
    for kind in ("stardist", "unet"):
        ref = _weights(bundled_model_dir(kind), kind)
        got = _weights(tmp_path / "m" / "ft" / kind, kind)
        assert len(got) == len(ref)
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_init_from_errors_name_the_problem(tmp_path):
    pytest.importorskip("stardist")
    from vollseg_dask.networks.training import TrainingConfig, init_weights_path, train_from_config

    with pytest.raises(ModelNotFoundError, match="fine-tuning needs .*nowhere.*unet"):
        init_weights_path(tmp_path / "nowhere", "unet")
    assert init_weights_path(None, "unet") is None
    store = _nuclei_store(tmp_path)
    cfg = TrainingConfig(store=str(store), PatchZ=8, PatchY=32, PatchX=32, n_patches_per_image=2,
                         n_augmented_copies=0, validation_split=0.5, TrainSTAR=False, TrainUNET=True,
                         unet_start_filter=4, Epochs=1, steps_per_epoch=1, init_from="bundled",
                         model_dir=str(tmp_path / "m"))
    # refused before any training, naming the key and the value the initial U-Net needs
    with pytest.raises(ConfigError, match=r"unet_start_filter: 8 \(you have 4\)"):
        train_from_config(cfg)  # the bundled U-Net has 8 first-level filters, not 4
