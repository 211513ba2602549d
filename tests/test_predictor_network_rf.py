"""Receptive-field measurement: known synthetic operators, StarDist's and csbdeep's own estimates, caching."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from vollseg_dask.predictors.receptive_field import (
    ReceptiveField,
    folder_digest,
    load_cached_receptive_field,
    measure_receptive_field,
    receptive_field_cache_dir,
    store_cached_receptive_field,
)


def _window_sum(x: np.ndarray, axis: int, lo: int, hi: int) -> np.ndarray:
    """out[o] = sum of x[o + k] for k in [lo, hi] along ``axis`` (zeros outside)."""
    out = np.zeros_like(x)
    n = x.shape[axis]
    for k in range(lo, hi + 1):
        if abs(k) >= n:
            continue
        src = [slice(None)] * x.ndim
        dst = [slice(None)] * x.ndim
        src[axis] = slice(max(0, k), n + min(0, k))
        dst[axis] = slice(max(0, -k), n - max(0, k))
        out[tuple(dst)] += x[tuple(src)]
    return out


def test_asymmetric_window_is_measured_exactly():
    # output o depends on z in [o-4, o+1], y in [o-3, o+3], x in [o, o]
    def forward(b):
        return [_window_sum(_window_sum(b, 1, -4, 1), 2, -3, 3)]

    rf = measure_receptive_field(forward, div=(1, 1, 1))
    assert rf.before == (4, 3, 0) and rf.after == (1, 3, 0)
    assert rf.radius == (4, 3, 0) and rf.halo == (4, 3, 0)


def test_pooling_phases_and_grid_repeat():
    """2x2 mean pooling in y, x (grid (1, 2, 2)): a full-resolution voxel depends on its cell's other
    voxel, below or above it depending on its phase - only visible when every phase is probed."""
    def forward(b):
        B, Z, Y, X, C = b.shape
        return [b.reshape(B, Z, Y // 2, 2, X // 2, 2, C).mean(axis=(3, 5))]

    rf = measure_receptive_field(forward, div=(1, 2, 2), grid=(1, 2, 2))
    assert rf.before == (0, 1, 1) and rf.after == (0, 1, 1)
    assert rf.halo == (0, 2, 2)  # rounded up to the divisibility


def test_probe_grows_until_the_reach_fits():
    def forward(b):
        return [_window_sum(b, 3, -40, 40)]

    rf = measure_receptive_field(forward, div=(1, 1, 1), shape=(8, 8, 32))
    assert rf.radius == (0, 0, 40) and rf.probe_shape[2] > 81


def test_constant_network_has_zero_reach(caplog):
    with caplog.at_level(logging.WARNING):
        rf = measure_receptive_field(lambda b: [np.zeros_like(b)], div=(2, 2, 2), shape=(8, 8, 8))
    assert rf.radius == (0, 0, 0) and "does not change" in caplog.text


def test_receptive_field_dict_round_trip():
    rf = ReceptiveField(before=(1, 2, 3), after=(3, 2, 1), div=(2, 4, 4), grid=(1, 2, 2), probe_shape=(8, 16, 16))
    d = rf.to_dict()
    assert d["halo"] == [4, 4, 4] and json.loads(json.dumps(d))
    assert ReceptiveField.from_dict(d) == rf


# ----------------------------------------------------------------------------- real networks


def test_stardist_measurement_covers_stardists_own_estimate(tmp_path):
    """StarDist estimates its reach from one impulse on a zero volume (``_compute_receptive_field``);
    probing every pooling phase on a random background must reach at least as far, and not more
    than one divisibility step farther."""
    from stardist.models import Config3D, StarDist3D

    from vollseg_dask.networks._tf import set_seed
    from vollseg_dask.predictors.network import _save_legacy_h5, load_network

    set_seed(1)
    conf = Config3D(n_rays=32, grid=(1, 2, 2), unet_n_depth=2, unet_n_filter_base=8, train_tensorboard=False)
    sd = StarDist3D(conf, name="sd", basedir=str(tmp_path))
    _save_legacy_h5(sd.keras_model, tmp_path / "sd" / "weights_best.h5")
    theirs = sd._compute_receptive_field()  # [(below, above) per axis] of the changed outputs
    net = load_network(tmp_path / "sd", "stardist")
    rf = measure_receptive_field(net.forward, div=net.div, grid=net.grid)
    assert net.div == (4, 8, 8)
    for ax, (below, above) in enumerate(theirs):
        assert rf.after[ax] >= below and rf.before[ax] >= above, (rf, theirs)
        assert rf.radius[ax] < max(below, above) + net.div[ax], (rf, theirs)
    assert rf.halo == (28, 56, 56)  # measured radius (26, 51, 51) rounded up to (4, 8, 8)


@pytest.mark.parametrize("depth,table", [(1, 9), (2, 22)])
def test_csbdeep_unet_measurement_matches_its_tile_overlap(tmp_path, depth, table):
    """csbdeep's tile overlap of its U-Net (kernel 3) is 9 (depth 1) and 22 (depth 2)."""
    from vollseg_dask.networks.unet import UNet, UNetConfig
    from vollseg_dask.predictors.network import load_network

    UNet(UNetConfig(unet_n_depth=depth, unet_n_first=8), tmp_path / "u").save()
    net = load_network(tmp_path / "u", "unet")
    rf = measure_receptive_field(net.forward, div=net.div)
    assert all(table <= r < table + d for r, d in zip(rf.radius, net.div, strict=True)), rf


# ----------------------------------------------------------------------------- caching


def test_disk_cache_round_trip_and_invalidation(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLLSEG_CACHE_DIR", str(tmp_path / "cache"))
    cfg, w = tmp_path / "config.json", tmp_path / "weights_best.h5"
    cfg.write_text("{}")
    w.write_bytes(b"abc")
    digest = folder_digest(cfg, w)
    rf = ReceptiveField(before=(1, 2, 3), after=(1, 2, 3), div=(2, 2, 2), grid=(1, 1, 1), probe_shape=(8, 8, 8))
    assert load_cached_receptive_field("unet", digest) is None
    path = store_cached_receptive_field("unet", digest, rf)
    assert path is not None and path.parent == receptive_field_cache_dir()
    assert load_cached_receptive_field("unet", digest) == rf
    w.write_bytes(b"abd")  # other weights: another digest, no cached value
    assert folder_digest(cfg, w) != digest and load_cached_receptive_field("unet", folder_digest(cfg, w)) is None
    monkeypatch.setenv("VOLLSEG_CACHE_DIR", "")
    assert receptive_field_cache_dir() is None and store_cached_receptive_field("unet", digest, rf) is None


def test_predictor_reads_the_disk_cache_without_loading_networks(tmp_path, monkeypatch):
    from vollseg_dask.predictors.network import NetworkPredictor, write_random_model_folders
    from vollseg_dask.runtime import cached_keys, clear_cache

    monkeypatch.setenv("VOLLSEG_CACHE_DIR", str(tmp_path / "cache"))
    m = write_random_model_folders(tmp_path / "m", n2v=False, stardist_depth=1, unet_depth=1)
    first = NetworkPredictor(m["stardist"], m["unet"]).receptive_fields()
    assert len(list((tmp_path / "cache" / "receptive_field").glob("*.json"))) == 2
    clear_cache()
    second = NetworkPredictor(m["stardist"], m["unet"]).receptive_fields()
    assert second == first
    assert not [k for k in cached_keys() if k.startswith("vollseg-network:")]
