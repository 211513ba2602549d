"""The embedded demo: its config, a reused store, and a small end-to-end run (ground-truth predictor)."""

from __future__ import annotations

import pytest

from vollseg_dask.demo import demo_config, run_demo
from vollseg_dask.errors import StoreExistsError


def test_demo_config_uses_the_bundled_models_and_stardist_foreground(tmp_path):
    cfg = demo_config(tmp_path / "s.zarr", tmp_path / "out")
    assert cfg.predictor.kind == "network" and cfg.predictor.models == "bundled"
    assert cfg.segment.mode == "vollseg" and cfg.segment.foreground_threshold == pytest.approx(0.1)
    assert cfg.segment.merge_threshold == pytest.approx(0.33)
    assert cfg.track.allow_track_splitting and cfg.track.allow_gap_closing


def test_small_demo_runs_end_to_end_and_refuses_a_foreign_store(tmp_path):
    text = run_demo(tmp_path / "demo", shape=(2, 16, 48, 48), n_cells=12, predictor="ground-truth", n_workers=1)
    assert "accuracy against the synthetic ground truth" in text
    f1 = [float(line.split("F1 ")[1].split()[0]) for line in text.splitlines() if line.strip().startswith("IoU 0.5")]
    assert len(f1) == 1 and f1[0] > 0.8  # the ground-truth predictor on its own tissue
    for sub in ("demo.ome.zarr", "tracks"):
        assert any(p.name == sub for p in (tmp_path / "demo").rglob(sub)), sub
    # a second call resumes on the same store; other settings are refused instead of mixing data
    assert "accuracy" in run_demo(tmp_path / "demo", shape=(2, 16, 48, 48), n_cells=12, predictor="ground-truth",
                                  n_workers=1)
    with pytest.raises(StoreExistsError, match="choose another --out"):
        run_demo(tmp_path / "demo", shape=(2, 16, 48, 48), n_cells=13, predictor="ground-truth", synthetic_only=True)
