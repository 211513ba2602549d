"""The models shipped in ``vollseg_dask/models``: complete folders, loadable, and useful on unseen data.

The thresholds below are well under what ``scripts/train_bundled_models.py`` measured on its test
seed (see each card); here a different, never-used seed and a single frame keep the test fast.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vollseg_dask.errors import ConfigError
from vollseg_dask.networks.folders import MODEL_KINDS, bundled_model_dir, inspect_model_folder

UNSEEN_SEED = 4242  # not among the training/validation/test seeds of the bundled models


def test_bundled_folders_are_complete_and_small():
    total = 0
    for kind in MODEL_KINDS:
        folder = bundled_model_dir(kind)
        info = inspect_model_folder(folder, kind)
        assert info.weights.name == "weights_best.h5"
        card = (folder / "README.md").read_text(encoding="utf-8")
        assert "scripts/train_bundled_models.py" in card and "seed" in card
        total += sum(p.stat().st_size for p in folder.iterdir())
    assert total < 8e6  # a few MB in all
    sd = inspect_model_folder(bundled_model_dir("stardist"), "stardist")
    assert sd.thresholds_from_file and sd.n_rays == 32 and sd.anisotropy == (4.0, 1.0, 1.0)
    record = json.loads((bundled_model_dir("stardist").parent / "training_record.json").read_text())
    assert UNSEEN_SEED not in record["seeds"]["train"] + [record["seeds"]["validation"], record["seeds"]["test"]]
    assert not record["quick"]
    with pytest.raises(ConfigError, match="unknown model kind"):
        bundled_model_dir("cellpose")


@pytest.fixture(scope="module")
def unseen_frame():
    from vollseg_dask.synthetic import SyntheticConfig, render_image, render_labels

    cfg = SyntheticConfig(seed=UNSEEN_SEED, shape=(1, 32, 128, 128))
    img = render_image(cfg, 0)
    lo, hi = np.percentile(img, [1, 99.8])
    x = ((img - lo) / (hi - lo)).astype(np.float32)
    clean = ((render_image(cfg, 0, noise=False) - lo) / (hi - lo)).astype(np.float32)
    return x, clean, render_labels(cfg, 0).astype(np.int32)


def test_bundled_models_work_on_an_unseen_seed(unseen_frame):
    pytest.importorskip("stardist")
    from scipy import ndimage as ndi

    from vollseg_dask.metrics import matching
    from vollseg_dask.networks._tf import import_tf

    import_tf(2)
    from vollseg_dask.networks.folders import load_model_folder
    from vollseg_dask.networks.unet import unet_target

    x, clean, gt = unseen_frame
    n2v = load_model_folder(bundled_model_dir("n2v"), "n2v")
    den = n2v.predict_normalized(x)
    mse_noisy, mse_den = float(((x - clean) ** 2).mean()), float(((den - clean) ** 2).mean())
    assert mse_den < 0.6 * mse_noisy, (mse_noisy, mse_den)

    unet = load_model_folder(bundled_model_dir("unet"), "unet")
    mask = unet.predict_normalized(den) > unet.config.threshold
    tgt = unet_target(gt, unet.config.boundary_width, unet.config.boundary_mode) > 0
    dice = 2 * (mask & tgt).sum() / (mask.sum() + tgt.sum())
    assert dice > 0.75, dice
    # the mask lies on the tissue: little of it outside the cells
    assert (mask & (gt == 0)).sum() < 0.1 * mask.sum()

    sd = load_model_folder(bundled_model_dir("stardist"), "stardist")
    lab, _ = sd.predict_instances(den, show_tile_progress=False)
    m = matching(gt, lab, thresh=0.3).iloc[0]
    assert m["f1"] > 0.6, m.to_dict()
    assert 0.5 * m["n_true"] < m["n_pred"] < 2 * m["n_true"]
    assert ndi.label(lab > 0)[1] >= 1
