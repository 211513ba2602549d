"""The chunked VollSeg driver: modes and accuracy, tiling of every mode, resume, errors, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from vollseg_dask.errors import ConfigError, StoreExistsError
from vollseg_dask.io.omezarr import open_labels
from vollseg_dask.predictors.ground_truth import GroundTruthPredictor
from vollseg_dask.segmentation import SegmentationConfig, segment
from vollseg_dask.segmentation import tasks as seg_tasks
from vollseg_dask.segmentation.testing import voronoi_tissue, write_test_store

THREADS = {"kind": "threads", "n_workers": 2}


def _labels(store, name, level=0) -> np.ndarray:
    return np.asarray(open_labels(store, name, level).data)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> tuple[str, np.ndarray]:
    lab = voronoi_tissue((24, 48, 48), 60, seed=5, min_distance=5, membrane=True)
    path = tmp_path_factory.mktemp("seg") / "small.zarr"
    write_test_store(path, np.stack([lab, lab[:, ::-1]]), chunks=(1, 8, 16, 16))
    return str(path), lab


def _pred(store, **kw) -> GroundTruthPredictor:
    base = dict(n_rays=32, drop_fraction=0.2, merge_fraction=0.05, seed=7)
    base.update(kw)
    return GroundTruthPredictor(store, **base)


@pytest.mark.parametrize("cfg", [
    dict(mode="stardist"),
    dict(mode="unet", connectivity=6),
    dict(mode="vollseg", refine_mask=True, flood="distance", marker_radius=1, min_size=20, min_z_extent=2),
], ids=["stardist", "unet6", "vollseg-refine-distance-filters"])
def test_every_mode_is_tiling_invariant(small_store, cfg):
    store, _ = small_store
    pred = _pred(store, false_rate=0.2)
    name = "m" + hashlib.md5(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]
    whole = segment(store, name + "w", pred, SegmentationConfig(block_shape=(24, 48, 48), **cfg), client=THREADS,
                    show_progress=False)
    tiled = segment(store, name + "t", pred,
                    SegmentationConfig(block_shape=(12, 20, 26), grid_origin=(1, 0, 3), **cfg),
                    client=THREADS, show_progress=False, shuffle_blocks=3)
    assert whole.n_blocks == 1 and tiled.n_blocks == 27
    assert tiled.all_certified
    a, b = _labels(store, name + "w"), _labels(store, name + "t")
    assert a.max() > 20
    np.testing.assert_array_equal(a, b)
    assert whole.n_objects == tiled.n_objects
    # label pyramid: nearest picks only, never a new value
    lvl1 = _labels(store, name + "t", 1)
    assert set(np.unique(lvl1)) <= set(np.unique(b))


def test_block_nms_fallback_equals_global_nms_here(small_store):
    store, _ = small_store
    pred = _pred(store, false_rate=0.5)
    g = segment(store, "nmsg", pred, SegmentationConfig(block_shape=(24, 48, 48)), client=THREADS,
                show_progress=False)
    # block-wise NMS (budget exceeded) on a ragged, offset grid
    b = segment(store, "nmsb", pred, SegmentationConfig(block_shape=(12, 20, 26), grid_origin=(1, 0, 3),
                                                         nms_scope="auto", nms_memory_budget_mb=1e-4),
                client=THREADS, show_progress=False)
    assert set(g.nms_scope.values()) == {"global"} and set(b.nms_scope.values()) == {"block"}
    np.testing.assert_array_equal(_labels(store, "nmsg"), _labels(store, "nmsb"))


def test_killed_run_resumes_to_identical_output(small_store, monkeypatch):
    store, _ = small_store
    pred = _pred(store)
    cfg = SegmentationConfig(block_shape=(12, 24, 24), halo=(8, 8, 8))
    clean = segment(store, "clean", pred, cfg, client=THREADS, show_progress=False)
    ref = _sha(_labels(store, "clean"))

    real = seg_tasks.watershed
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated worker death")
        return real(*args, **kwargs)

    monkeypatch.setattr(seg_tasks, "watershed", dying)
    with pytest.raises(RuntimeError, match="simulated"):
        segment(store, "resumed", pred, cfg, client=THREADS, show_progress=False)
    monkeypatch.setattr(seg_tasks, "watershed", real)
    # a unit that was killed after writing part of its chunk: garbage in its core, no marker
    from vollseg_dask.segmentation.layout import RunLayout

    lay = RunLayout(store, "resumed")
    done = {p.name for p in (lay.path / "done" / "ws").glob("*.json")}
    assert 0 < len(done) < clean.n_blocks * 2
    prov = lay.open_array("prov", "r+")
    prov[0, 0:12, 0:24, 0:24] = np.uint64(12345)
    (lay.path / "done" / "ws" / "t0.0.0.0.json").unlink(missing_ok=True)
    resumed = segment(store, "resumed", pred, cfg, client=THREADS, show_progress=False)
    assert _sha(_labels(store, "resumed")) == ref
    assert 0 < resumed.n_tasks < clean.n_tasks
    again = segment(store, "resumed", pred, cfg, client=THREADS, show_progress=False)
    assert again.n_tasks == 0 and again.n_objects == clean.n_objects


def test_stop_after_each_stage_then_resume(small_store):
    store, _ = small_store
    pred = _pred(store)
    cfg = SegmentationConfig(block_shape=(12, 24, 24))
    ref = segment(store, "ref", pred, cfg, client=THREADS, show_progress=False)
    for stage in ("predict", "components", "seeds", "watershed"):
        r = segment(store, "staged", pred, cfg, client=THREADS, show_progress=False, stop_after=stage)
        assert not r.completed
    r = segment(store, "staged", pred, cfg, client=THREADS, show_progress=False)
    assert r.completed
    np.testing.assert_array_equal(_labels(store, "staged"), _labels(store, "ref"))
    assert r.n_objects == ref.n_objects
    # the configuration and the run's status are saved with the result; the scratch folder is gone
    from vollseg_dask.segmentation.layout import default_scratch

    assert not default_scratch(store, "staged").exists()
    assert not (Path(store) / ".vollseg").exists()
    import zarr

    attrs = zarr.open_group(str(Path(store) / "labels" / "staged"), mode="r").attrs.asdict()["vollseg_dask"]
    assert attrs["complete"] is True
    assert SegmentationConfig.model_validate(attrs["segmentation_config"]) == cfg
    run = attrs["run"]
    assert run["n_exact"] + len(run["certificates"]) == 2 * r.n_blocks
    assert run["n_objects"] == {"0": r.n_objects[0], "1": r.n_objects[1]}
    assert attrs["segmentation_config"]["block_shape"] == [12, 24, 24]


def test_existing_outputs_are_protected(small_store):
    store, _ = small_store
    pred = _pred(store)
    before = _sha(_labels(store, "ground_truth"))
    with pytest.raises(StoreExistsError):
        segment(store, "ground_truth", pred, SegmentationConfig(block_shape=(12, 24, 24)), client=THREADS,
                show_progress=False)
    assert _sha(_labels(store, "ground_truth")) == before
    segment(store, "cfgchange", pred, SegmentationConfig(block_shape=(12, 24, 24)), client=THREADS,
            show_progress=False, stop_after="predict")
    with pytest.raises(ConfigError, match="another configuration"):
        segment(store, "cfgchange", pred, SegmentationConfig(block_shape=(12, 24, 24), min_size=5), client=THREADS,
                show_progress=False)
    r = segment(store, "cfgchange", pred, SegmentationConfig(block_shape=(12, 24, 24), min_size=5), client=THREADS,
                show_progress=False, overwrite=True)
    assert r.completed
    with pytest.raises(ConfigError, match="channel"):
        segment(store, "x", pred, SegmentationConfig(channel=2), client=THREADS, show_progress=False)
    with pytest.raises(ConfigError, match="unknown key"):
        segment(store, "x", pred, {"blok_shape": [1, 2, 3]}, client=THREADS, show_progress=False)
    with pytest.raises(ConfigError, match="stop_after"):
        segment(store, "x", pred, None, client=THREADS, show_progress=False, stop_after="nonsense")


def test_cli_models_without_network_predictor_says_so(tmp_path, monkeypatch):
    """Until the network predictor is installed, --models raises a clear error instead of pretending."""
    import sys
    import types

    from vollseg_dask.cli.segment import network_predictor
    from vollseg_dask.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "vollseg_dask.predictors.network", types.ModuleType("empty"))
    with pytest.raises(MissingDependencyError, match="not available"):
        network_predictor(str(tmp_path))


def test_cli_segment(small_store, tmp_path):
    from click.testing import CliRunner

    from vollseg_dask.cli import main
    from vollseg_dask.errors import ModelNotFoundError

    store, _ = small_store
    runner = CliRunner()
    res = runner.invoke(main, ["segment", store, "--out", "cli", "--predictor", "ground-truth", "--block", "12,24,24",
                               "--mode", "unet", "--workers", "1", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["certified"] and summary["blocks"] == 8
    assert _labels(store, "cli").max() == int(summary["n_objects"]["0"])
    res = runner.invoke(main, ["segment", store, "--out", "cli2", "--models", str(tmp_path / "nope")])
    assert isinstance(res.exception, ModelNotFoundError)
    res = runner.invoke(main, ["segment", store, "--out", "cli2"])
    assert isinstance(res.exception, ConfigError)
    # the options the bundled models need override the config and are saved with the labels
    res = runner.invoke(main, ["segment", store, "--out", "cli3", "--predictor", "ground-truth", "--block", "12,24,24",
                               "--foreground-threshold", "0.2", "--merge-threshold", "0.5", "--workers", "1"])
    assert res.exit_code == 0, res.output
    import zarr

    saved = zarr.open_group(f"{store}/labels/cli3", mode="r").attrs["vollseg_dask"]["segmentation_config"]
    assert saved["foreground_threshold"] == 0.2 and saved["merge_threshold"] == 0.5
    res = runner.invoke(main, ["segment", store, "--out", "cli4", "--predictor", "ground-truth",
                               "--merge-threshold", "1.5"])
    assert res.exit_code == 2 and "1.5" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: vollseg\nhalo_size: 3\n")
    res = runner.invoke(main, ["segment", store, "--out", "cli2", "--predictor", "ground-truth", "--config", str(bad)])
    assert isinstance(res.exception, ConfigError) and "halo_size" in str(res.exception)


def test_certificates_and_halo_escalation_are_truthful(small_store):
    """Tiny halo caps with merged U-Net components: blocks escalate; a block certified exact equals
    the untiled run on its core; blocks that still disagree are reported, not hidden."""
    from vollseg_dask.plan import plan_blocks

    store, _ = small_store
    pred = _pred(store, merge_fraction=0.05)
    segment(store, "escw", pred, SegmentationConfig(block_shape=(24, 48, 48)), client=THREADS, show_progress=False)
    ref = _labels(store, "escw")
    plan = plan_blocks((24, 48, 48), (12, 24, 24))
    cfg = SegmentationConfig(block_shape=(12, 24, 24), halo=(2, 4, 4), max_escalations=2)
    tiled = segment(store, "esct", pred, cfg, client=THREADS, show_progress=False)
    out = _labels(store, "esct")
    levels = {c["level"] for c in tiled.certificates.values()}
    statuses = {c["status"] for c in tiled.certificates.values()}
    assert max(levels) >= 1, tiled.certificates  # some blocks needed a larger halo
    assert "exact" in statuses and statuses - {"exact"}
    n_exact = 0
    for key, cert in tiled.certificates.items():
        t, bkey = key.split(".", 1)
        core = next(b.core for b in plan if b.key == bkey)
        if cert["status"] == "exact":
            n_exact += 1
            # final ranks may differ between runs: compare the partitions through a bijection
            a, b = ref[int(t)][core], out[int(t)][core]
            pairs = np.unique(np.stack([a.ravel(), b.ravel()], axis=1), axis=0)
            assert len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1])), key
    assert n_exact > 0
    # the escalation plan was persisted: a re-run reads it back and does no work
    again = segment(store, "esct", pred, cfg, client=THREADS, show_progress=False)
    # (a finished run's result lists the blocks that are not exact by construction)
    assert again.n_tasks == 0 and again.certificates == {k: c for k, c in tiled.certificates.items()
                                                         if c["status"] != "exact"}
    # an even smaller cap leaves disagreement: counted and reported
    worse = segment(store, "escx", pred, cfg.model_copy(update={"halo": (1, 2, 2)}), client=THREADS,
                    show_progress=False)
    bad = [c for c in worse.certificates.values() if c["status"] == "disagree"]
    assert bad and all(c["n_disagree"] > 0 and c["level"] == 2 for c in bad) and not worse.all_certified


def test_halo_escalation_beyond_the_worker_memory_budget_is_named(small_store, monkeypatch, caplog):
    """A block whose doubled read region would not fit the worker memory budget is named in a warning
    with the settings to change; the labels stay those of an unconstrained run (the same bytes on
    any cluster)."""
    import logging

    from vollseg_dask.segmentation import tasks as T

    assert T.ws_max_read_voxels(2**30) > T.ws_max_read_voxels(2**29) > 0 == T.ws_max_read_voxels(2**20)
    store, _ = small_store
    pred = _pred(store, merge_fraction=0.05)
    cfg = SegmentationConfig(block_shape=(12, 24, 24), halo=(2, 4, 4), max_escalations=2)
    free = segment(store, "escf", pred, cfg, client=THREADS, show_progress=False)
    # level-0 read regions are at most 16 x 32 x 32 voxels, level 1 needs 20 x 40 x 40
    monkeypatch.setattr(T, "ws_max_read_voxels", lambda limit: 16 * 32 * 32)
    with caplog.at_level(logging.WARNING, logger="vollseg_dask.segmentation.driver"):
        res = segment(store, "escm", pred, cfg, client=THREADS, show_progress=False)
    assert "memory limit" in caplog.text and "memory_limit" in caplog.text
    assert res.certificates == free.certificates
    np.testing.assert_array_equal(_labels(store, "escm"), _labels(store, "escf"))
