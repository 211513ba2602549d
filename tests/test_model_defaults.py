"""Model folders carry their segmentation defaults; fine-tuning checks init_from before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from vollseg_dask.cli import main
from vollseg_dask.config import load_config
from vollseg_dask.errors import ConfigError
from vollseg_dask.networks.folders import (
    bundled_model_dir,
    inspect_model_folder,
    read_segmentation_defaults,
    write_segmentation_defaults,
)
from vollseg_dask.segmentation import SegmentationConfig
from vollseg_dask.segmentation.config import apply_model_defaults


def test_bundled_models_carry_their_settings():
    info = inspect_model_folder(bundled_model_dir("stardist"), "stardist")
    assert info.segmentation_defaults == {"mode": "vollseg", "foreground_threshold": 0.1, "merge_threshold": 0.33}
    # the README's and the demo's settings are these
    from vollseg_dask.demo import demo_config

    seg = demo_config(Path("s.zarr"), Path("out")).segment
    assert seg.foreground_threshold == 0.1 and seg.merge_threshold == 0.33


def test_user_settings_win_over_model_defaults():
    defaults = {"mode": "vollseg", "foreground_threshold": 0.1, "merge_threshold": 0.33}
    cfg, applied = apply_model_defaults(SegmentationConfig(), defaults)
    assert applied == defaults and cfg.foreground_threshold == 0.1 and cfg.merge_threshold == 0.33
    user = SegmentationConfig(merge_threshold=0.5, mode="stardist")
    cfg, applied = apply_model_defaults(user, defaults)
    assert applied == {"foreground_threshold": 0.1}
    assert cfg.mode == "stardist" and cfg.merge_threshold == 0.5
    cfg, applied = apply_model_defaults(SegmentationConfig(), defaults, given={"foreground_threshold"})
    assert cfg.foreground_threshold is None and "foreground_threshold" not in applied


def test_defaults_file_roundtrip_and_refusal(tmp_path: Path):
    write_segmentation_defaults(tmp_path, {"mask_dilation": [1, 2, 2]}, source="test", measured={"f1": 0.5})
    assert read_segmentation_defaults(tmp_path) == {"mask_dilation": [1, 2, 2]}
    (tmp_path / "segmentation_defaults.json").write_text(json.dumps({"settings": {"halo_z": 3}}))
    with pytest.raises(ConfigError, match="halo_z"):
        read_segmentation_defaults(tmp_path)
    assert read_segmentation_defaults(tmp_path / "nothing") == {}


def test_create_config_train_fits_the_bundled_models(tmp_path: Path):
    from vollseg_dask.networks.training import TrainingConfig, check_init_compatibility

    out = tmp_path / "train.yaml"
    res = CliRunner().invoke(main, ["create-config", str(out), "--kind", "train", "--init-from", "bundled",
                                    "--store", "mine.zarr", "--labels", "masks"])
    assert res.exit_code == 0, (res.output, res.exception)
    cfg = load_config(TrainingConfig, out)
    assert cfg.init_from == "bundled" and cfg.store == "mine.zarr" and cfg.labels_name == "masks"
    assert cfg.unet_start_filter == 8 and tuple(cfg.anisotropy) == (4.0, 1.0, 1.0)  # what the bundled need
    check_init_compatibility(cfg)  # passes


def test_train_names_every_key_to_change_before_training(tmp_path: Path):
    data = {"store": str(tmp_path / "does_not_exist.zarr"), "init_from": "bundled", "network_depth": 3,
            "patch_z": 16, "rays": 64, "model_dir": str(tmp_path / "m")}
    cfg_file = tmp_path / "t.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(main, ["train", str(cfg_file)])
    assert isinstance(res.exception, ConfigError), res.output
    msg = str(res.exception)
    for key, value in (("network_depth", "2"), ("rays", "32"), ("unet_start_filter", "8"),
                       ("anisotropy", "[4.0, 1.0, 1.0]")):
        assert f"{key}: {value}" in msg, msg
    assert not (tmp_path / "m").exists()  # nothing trained, no data read
