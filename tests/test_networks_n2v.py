"""Noise2Void: masking kernels against brute-force checks, the masked loss, and a short real training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vollseg_dask.errors import ConfigError, ModelNotFoundError, ShapeError
from vollseg_dask.networks.n2v import (
    masked_mse_numpy,
    n2v_mask_batch,
    n2v_neighbour_positions,
    n2v_sample_positions,
)

# ------------------------------------------------------------------------------------------ kernels


def test_sample_positions_distinct_and_count(rng):
    shape = (8, 16, 12)
    pos = n2v_sample_positions(shape, 2.0, rng)
    n_expected = round(np.prod(shape) * 2.0 / 100)
    assert pos.shape == (n_expected, 3)
    assert len({tuple(p) for p in pos}) == n_expected  # distinct
    assert (pos >= 0).all() and (pos < np.array(shape)).all()
    # at least one voxel even for a tiny fraction
    assert len(n2v_sample_positions((2, 2, 2), 0.01, rng)) == 1
    with pytest.raises(ConfigError, match="n2v_perc_pix"):
        n2v_sample_positions(shape, 0.0, rng)


@pytest.mark.parametrize("shape,radius", [((8, 16, 12), 2), ((3, 5, 5), 3), ((1, 9, 9), 1), ((2, 2, 2), 5)])
def test_neighbours_in_window_never_self(rng, shape, radius):
    # every voxel of the patch, many times: neighbours must be in the window, in the patch, not self
    coords = np.stack(np.unravel_index(np.arange(np.prod(shape)), shape), -1)
    coords = np.repeat(coords, 20, axis=0)
    nb = n2v_neighbour_positions(coords, shape, radius, rng)
    assert nb.shape == coords.shape
    assert (nb >= 0).all() and (nb < np.array(shape)).all()
    assert (np.abs(nb - coords) <= radius).all()
    assert (nb != coords).any(axis=1).all()
    # a singleton axis never moves
    for ax, s in enumerate(shape):
        if s == 1:
            assert (nb[:, ax] == 0).all()


def test_neighbour_offsets_uniform_in_interior(rng):
    # away from borders, every non-zero offset of the 5x5x5 window is equally likely (124 offsets)
    shape, r = (21, 21, 21), 2
    coords = np.tile([[10, 10, 10]], (124 * 400, 1))
    off = n2v_neighbour_positions(coords, shape, r, rng) - 10
    keys, counts = np.unique(off, axis=0, return_counts=True)
    assert len(keys) == 124 and not (keys == 0).all(axis=1).any()
    # chi-square-like bound: counts ~ Binomial(49600, 1/124), sd ~ 20
    assert np.abs(counts - 400).max() < 100


def test_neighbours_reject_bad_input(rng):
    with pytest.raises(ShapeError, match="no neighbours"):
        n2v_neighbour_positions(np.zeros((1, 3), int), (1, 1, 1), 2, rng)
    with pytest.raises(ShapeError):
        n2v_neighbour_positions(np.zeros((1, 2), int), (4, 4, 4), 2, rng)


def test_mask_batch_replaces_only_masked_with_neighbour_values(rng):
    # unique values let us recover where each replacement came from
    B, shape, radius = 3, (6, 10, 8), 2
    patches = (np.arange(B * np.prod(shape), dtype=np.float32).reshape((B, *shape)) + 0.5)
    X, Y = n2v_mask_batch(patches, 3.0, radius, rng)
    assert X.shape == (B, *shape, 1) and Y.shape == (B, *shape, 2)
    assert X.dtype == np.float32 and Y.dtype == np.float32
    np.testing.assert_array_equal(Y[..., 0], patches)  # target = original
    mask = Y[..., 1]
    assert set(np.unique(mask)) == {0.0, 1.0}
    changed = X[..., 0] != patches
    # exactly the masked voxels change (values are unique, so a replacement always differs)
    np.testing.assert_array_equal(changed, mask == 1)
    for b in range(B):
        n_masked = int(mask[b].sum())
        assert n_masked == round(np.prod(shape) * 3.0 / 100)
        for pos in np.argwhere(mask[b] == 1):
            src = np.argwhere(patches[b] == X[b][tuple(pos)][0])
            assert len(src) == 1, "replacement must be a value of the same patch"
            src = src[0]
            assert (src != pos).any() and (np.abs(src - pos) <= radius).all()


def test_masked_loss_only_counts_masked_voxels(rng):
    pytest.importorskip("tensorflow")
    from vollseg_dask.networks._tf import import_tf

    import_tf(1)
    from vollseg_dask.networks.n2v import masked_mse

    patches = rng.random((2, 4, 8, 8)).astype(np.float32)
    _, Y = n2v_mask_batch(patches, 5.0, 2, rng)
    pred = rng.random((2, 4, 8, 8, 1)).astype(np.float32)
    ref = masked_mse_numpy(Y, pred)
    # brute force reference
    m = Y[..., 1] == 1
    assert ref == pytest.approx(float(((Y[..., 0] - pred[..., 0])[m] ** 2).mean()), rel=1e-6)
    got = float(masked_mse(Y, pred))
    assert got == pytest.approx(ref, rel=1e-5)
    # changing predictions at unmasked voxels does not change the loss
    pred2 = pred.copy()
    pred2[..., 0][~m] += 100.0
    assert float(masked_mse(Y, pred2)) == pytest.approx(ref, rel=1e-5)
    pred3 = pred.copy()
    pred3[..., 0][m] += 1.0
    assert float(masked_mse(Y, pred3)) > ref + 0.5


# ------------------------------------------------------------------------------------------ model


def _noisy_volume(seed=0):
    from scipy import ndimage as ndi

    r = np.random.default_rng(seed)
    clean = ndi.gaussian_filter(r.random((32, 48, 48)), 2.5)
    clean = ((clean - clean.min()) / (clean.max() - clean.min())).astype(np.float32)
    noisy = (clean + r.normal(0, 0.2, clean.shape)).astype(np.float32)
    return clean, noisy


def test_n2v_denoises_after_short_training(tmp_path):
    pytest.importorskip("stardist")
    from vollseg_dask.networks._tf import import_tf, set_seed

    import_tf(2)
    from vollseg_dask.networks.folders import inspect_model_folder, load_model_folder
    from vollseg_dask.networks.n2v import N2V, N2VConfig

    set_seed(0)
    clean, noisy = _noisy_volume()
    patches = np.stack([noisy[z:z + 16, y:y + 16, x:x + 16]
                        for z in (0, 16) for y in (0, 16, 32) for x in (0, 16, 32)])
    folder = tmp_path / "n2v"
    model = N2V(N2VConfig(unet_n_depth=2, unet_n_first=8, n2v_perc_pix=3.0), folder)
    hist = model.train(patches[:-2], patches[-2:], epochs=3, steps_per_epoch=10, batch_size=4,
                       learning_rate=2e-3, seed=0)
    assert len(hist["loss"]) == 3 and len(hist["val_loss"]) == 3
    assert {"config.json", "weights_best.h5", "weights_last.h5"} <= {p.name for p in folder.iterdir()}
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "vollseg_dask.n2v" and cfg["train_epochs"] == 3
    assert cfg["train_seconds"] > 0

    # the image is already in [0, 1]-ish units: pass lo=0, hi=1 so the output is comparable
    den = model.predict(noisy, lo=0.0, hi=1.0)
    assert den.shape == noisy.shape and den.dtype == np.float32
    mse_noisy = float(((noisy - clean) ** 2).mean())
    mse_den = float(((den - clean) ** 2).mean())
    assert mse_den < 0.5 * mse_noisy, (mse_noisy, mse_den)

    # folder round trip: same output, also via the generic loader; tiled prediction agrees
    again = load_model_folder(folder, "n2v")
    assert isinstance(again, N2V)
    np.testing.assert_allclose(again.predict(noisy, 0.0, 1.0), den, atol=1e-5)
    tiled = again.predict(noisy, 0.0, 1.0, n_tiles=(1, 2, 2))
    np.testing.assert_allclose(tiled, den, atol=1e-4)
    info = inspect_model_folder(folder, "n2v")
    assert info.weights.name == "weights_best.h5" and info.norm == (1.0, 99.8)
    # the folder of one kind is refused as another
    with pytest.raises(ConfigError, match="not a vollseg-dask unet model"):
        inspect_model_folder(folder, "unet")
    with pytest.raises(ConfigError, match="not a StarDist model"):
        inspect_model_folder(folder, "stardist")
    (folder / "weights_best.h5").unlink()
    (folder / "weights_last.h5").unlink()
    with pytest.raises(ModelNotFoundError, match="weights_best.h5"):
        load_model_folder(folder, "n2v")
