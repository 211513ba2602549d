"""Bad input: every case gets a clear error naming the problem, or the documented behaviour.

The table of cases and behaviours is in ``docs/architecture.md`` (section *Bad input*). Volumes are
tiny and predictions come from the ground-truth predictor, except where model folders are the point
(those tests never load TensorFlow: folders are inspected, not built).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vollseg_dask.config import load_config, parse_config
from vollseg_dask.errors import (
    AxesError,
    ConfigError,
    DTypeError,
    InvalidDataError,
    ModelNotFoundError,
)
from vollseg_dask.io.omezarr import open_image, open_labels, write_image
from vollseg_dask.networks.folders import bundled_model_dir
from vollseg_dask.pipeline import RunConfig, run
from vollseg_dask.predictors.ground_truth import GroundTruthPredictor
from vollseg_dask.segmentation import SegmentationConfig, segment
from vollseg_dask.segmentation.testing import voronoi_tissue, write_test_store

TRACK = {"LINKING_MAX_DISTANCE": 5.0, "GAP_CLOSING_MAX_DISTANCE": 6.0, "MAX_FRAME_GAP": 2}


def _run_config(path: Path | str, out: Path, **over) -> RunConfig:
    data = {
        "input": {"path": str(path)},
        "output": str(out),
        "cluster": {"kind": "threads"},
        "predictor": {"kind": "ground-truth"},
        "segment": {"block_shape": (8, 32, 32)},
        "track": TRACK,
        "analyze": {"track_plots": 1},
        **over,
    }
    return RunConfig.model_validate(data)


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    """(z, y, x) = (8, 32, 32) uint32 labels of about 10 touching cells."""
    return voronoi_tissue((8, 32, 32), 10, seed=1, membrane=True).astype(np.uint32)


# ------------------------------------------------------------------------------------------------
# Unknown configuration keys: the key and its section are named
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, key, section", [
    ({"segment": {"blok_shape": [8, 8, 8]}}, "blok_shape", "segment"),
    ({"track": {"LINKING_MAX_DISTANC": 3}}, "LINKING_MAX_DISTANC", "track"),
    ({"measure": {"chanels": [0]}}, "chanels", "measure"),
    ({"predictor": {"model": "x"}}, "model", "predictor"),
    ({"cluster": {"slurm": {"queu": "q"}}}, "queu", "cluster.slurm"),
], ids=["segment", "track", "measure", "predictor", "nested"])
def test_unknown_key_names_key_and_section(data, key, section):
    with pytest.raises(ConfigError) as info:
        parse_config(RunConfig, {"input": {"path": "x"}, **data})
    msg = str(info.value)
    assert f"unknown key {key!r} in section {section!r}" in msg
    # what is allowed is the section's keys, not the top level's
    assert f"allowed in {section}:" in msg and "allowed at top level" not in msg


def test_unknown_keys_of_standalone_configs(tmp_path):
    from vollseg_dask.networks.training import TrainingConfig
    from vollseg_dask.tracking.config import TrackerConfig

    with pytest.raises(ConfigError, match="unknown key 'halo_xy'"):
        segment(str(tmp_path / "never-opened.zarr"), "cells", None, {"halo_xy": 3})
    with pytest.raises(ConfigError, match="unknown key 'MAX_FRAME_GAPS'"):
        parse_config(TrackerConfig, {"MAX_FRAME_GAPS": 2})
    with pytest.raises(ConfigError, match="unknown key 'Epochz'"):
        parse_config(TrainingConfig, {"Epochz": 3})
    # a YAML file names itself, the key and the section
    cfg = tmp_path / "run.yaml"
    cfg.write_text("input:\n  path: x\nsegment:\n  mode: vollseg\n  halo_z: 2\n")
    with pytest.raises(ConfigError, match=r"run\.yaml(.|\n)*unknown key 'halo_z' in section 'segment'"):
        load_config(RunConfig, cfg)


# ------------------------------------------------------------------------------------------------
# Axes and dimensionality
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axes, shape", [("yx", (32, 32)), ("tyx", (2, 32, 32)), ("tcyx", (2, 2, 32, 32))])
def test_segmenting_a_2d_image_names_shape_and_axes(tmp_path, axes, shape):
    store = tmp_path / "flat.zarr"
    write_image(store, np.ones(shape, np.uint16), axes=axes, scale=(1.0,) * len(axes))
    with pytest.raises(AxesError) as info:
        segment(str(store), "cells", GroundTruthPredictor(str(store)), SegmentationConfig(), client={"kind": "threads"})
    msg = str(info.value)
    assert f"axes {axes!r}" in msg and f"shape {shape}" in msg and "3-D volume" in msg
    assert not (store / "labels").exists()  # refused before any work


def test_pipeline_refuses_2d_tiff_before_converting(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "flat.tif", np.ones((32, 40), np.uint16))
    # a 6-D array has no default axes
    np.save(inputs / "sixd.npy", np.zeros((2, 2, 2, 2, 8, 8), np.uint8))
    report = run(_run_config(inputs, tmp_path / "out"))
    status = {d.name: (d.status, d.reason) for d in report.datasets}
    assert status["flat"][0] == "failed" and status["sixd"][0] == "failed"
    assert status["flat"][1].startswith("AxesError") and "'yx'" in status["flat"][1] and "(32, 40)" in status["flat"][1]
    assert status["sixd"][1].startswith("AxesError") and "(2, 2, 2, 2, 8, 8)" in status["sixd"][1]
    assert not (tmp_path / "out" / "flat" / "image.zarr").exists()  # nothing converted


def test_axes_that_do_not_match_the_data(tmp_path):
    from vollseg_dask.io.ingest import convert

    # user-given axes with the wrong count, or repeating a letter
    with pytest.raises(AxesError, match=r"'TZYX' name 4 dimensions but the input has shape \(8, 16, 16\)"):
        convert(np.zeros((8, 16, 16), np.uint8), tmp_path / "a.zarr", axes="TZYX")
    with pytest.raises(AxesError, match="repeated axes"):
        convert(np.zeros((2, 8, 16, 16), np.uint8), tmp_path / "b.zarr", axes="ZZYX")
    # an OME-Zarr whose axes metadata names fewer axes than its array has dimensions
    store = tmp_path / "meta.zarr"
    write_image(store, np.zeros((2, 8, 16, 16), np.uint16), axes="tzyx", scale=(1.0, 1.0, 1.0, 1.0))
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    ms = meta["attributes"]["ome"]["multiscales"][0]
    ms["axes"] = ms["axes"][1:]  # drop t
    for ds in ms["datasets"]:
        for tr in ds["coordinateTransformations"]:
            if tr["type"] == "scale":
                tr["scale"] = tr["scale"][1:]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AxesError, match=r"\(2, 8, 16, 16\).*'zyx'"):
        open_image(store)
    report = run(_run_config(store, tmp_path / "out", stages=["ingest", "segment"]))
    assert report.datasets[0].status == "failed" and report.datasets[0].reason.startswith("AxesError")


def test_multichannel_image_without_chosen_channel_warns_and_uses_channel_0(tmp_path, tissue, caplog):
    store = tmp_path / "two.zarr"
    write_test_store(store, tissue[None])
    img = np.asarray(open_image(store).data)  # (t, z, y, x)
    two = tmp_path / "two_c.zarr"
    write_image(two, np.stack([img, img[..., ::-1]], axis=1), axes="tczyx", scale=(1.0,) * 5)
    shutil.copytree(store / "labels", two / "labels")
    # the copied labels group has no c axis: the ground-truth predictor reads it by (t, z, y, x)
    cfg = SegmentationConfig(block_shape=(8, 32, 32))
    with caplog.at_level(logging.WARNING, logger="vollseg_dask.validation"):
        segment(str(two), "cells", GroundTruthPredictor(str(two)), cfg, client={"kind": "threads"},
                show_progress=False)
    assert any("2 channels" in r.message and "segmenting channel 0" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vollseg_dask.validation"):
        segment(str(two), "cells1", GroundTruthPredictor(str(two)), SegmentationConfig(block_shape=(8, 32, 32),
                channel=1), client={"kind": "threads"}, show_progress=False)
    assert not any("channels" in r.message for r in caplog.records)  # chosen on purpose: no warning
    with pytest.raises(ConfigError, match=r"channel 2 out of range: .* has 2 channel\(s\)"):
        segment(str(two), "cells2", GroundTruthPredictor(str(two)), SegmentationConfig(channel=2),
                client={"kind": "threads"})


# ------------------------------------------------------------------------------------------------
# NaN/Inf, constant and empty volumes
# ------------------------------------------------------------------------------------------------


def test_nan_and_inf_name_the_time_point_and_count():
    from vollseg_dask.stats import global_percentiles

    img = np.ones((3, 4, 8, 8), np.float32)
    img[1, 0, 0, :2] = np.nan
    img[1, 2, 3, 3] = np.inf
    with pytest.raises(InvalidDataError, match=r"2 NaN and 1 Inf values at t=1"):
        global_percentiles(img, "tzyx")
    img[1] = 1.0
    img[2, 1, 1, 1] = -np.inf
    with pytest.raises(InvalidDataError, match=r"0 NaN and 1 Inf values at t=2"):
        global_percentiles(img, "tzyx", method="approx")


def test_pipeline_with_networks_refuses_nan_before_any_block(tmp_path):
    """The network path normalises with global percentiles: a NaN fails the data set at S0."""
    img = np.random.default_rng(0).random((2, 8, 16, 16)).astype(np.float32)
    img[1, 3, 4, 5] = np.nan
    np.save(tmp_path / "nan.npy", img)
    report = run(_run_config(tmp_path / "nan.npy", tmp_path / "out", predictor={"kind": "network"},
                             stages=["ingest", "segment"]))
    ds = report.datasets[0]
    assert ds.status == "failed" and ds.reason.startswith("InvalidDataError")
    assert "1 NaN and 0 Inf values at t=1" in ds.reason
    assert not (tmp_path / "out" / "nan" / "image.zarr" / "labels").exists()


def test_constant_volume_normalisation_never_divides_by_zero(caplog):
    from vollseg_dask.networks._unet import normalize
    from vollseg_dask.predictors.network import NetworkPredictor
    from vollseg_dask.stats import global_percentiles

    img = np.zeros((2, 4, 8, 8), np.uint16)
    img[1] = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)
    table = global_percentiles(img, "tzyx", q=(1.0, 99.8))
    assert table.loc[0, ["p1", "p99.8"]].tolist() == [0.0, 0.0]
    pred = NetworkPredictor(bundled_model_dir("stardist"), bundled_model_dir("unet"))
    with caplog.at_level(logging.WARNING, logger="vollseg_dask.predictors.network"):
        pred.set_percentiles(table)
    assert any("are equal at t=0" in r.message for r in caplog.records)
    lo, hi = pred._lohi(0, "stardist")
    assert (lo, hi) == (0.0, 1.0)  # widened to a unit range
    assert pred._lohi(1, "stardist") == tuple(float(v) for v in table.loc[1, ["p1", "p99.8"]])
    x = normalize(img[0], lo, hi)
    assert np.isfinite(x).all() and not x.any()


def test_all_zero_volume_runs_to_empty_valid_outputs(tmp_path, caplog):
    """Zero cells: empty labels and tables, a TrackMate XML that opens, and the summary says 0 cells."""
    from vollseg_dask.io.trackmate_xml import read_trackmate_xml
    from vollseg_dask.io.tracks import read_tracks

    store = Path(write_test_store(tmp_path / "empty.zarr", np.zeros((2, 8, 32, 32), np.uint32)))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="vollseg_dask.pipeline"):
        report = run(_run_config(store, out))
    assert report.ok, report.summary()
    ds = report.datasets[0]
    assert ds.counts == {"cells": 0, "spots": 0, "tracks": 0}
    assert "found    0 cells, 0 spots, 0 tracks" in report.summary()
    assert json.loads((out / "summary.json").read_text())["datasets"][0]["counts"]["cells"] == 0
    assert any("no cells found" in r.message for r in caplog.records)
    assert not np.asarray(open_labels(store, "cells").data).any()
    assert len(pd.read_parquet(out / "empty" / "cells")) == 0
    assert len(read_tracks(out / "empty" / "tracks").spots) == 0
    xml = read_trackmate_xml(out / "empty" / "tracks.xml")
    assert len(xml.spots) == 0 and len(xml.edges) == 0
    assert (out / "empty" / "ctc" / "res_track.txt").read_text().strip() == ""


def test_single_time_point_segments_measures_and_tracks_without_edges(tmp_path, tissue):
    from vollseg_dask.io.trackmate_xml import read_trackmate_xml

    store = Path(write_test_store(tmp_path / "one.zarr", tissue[None]))
    report = run(_run_config(store, tmp_path / "out"))
    assert report.ok, report.summary()
    n = len(np.unique(tissue)) - 1
    ds = report.datasets[0]
    assert ds.counts["cells"] == ds.counts["spots"] == n and ds.counts["tracks"] == 0
    xml = read_trackmate_xml(tmp_path / "out" / "one" / "tracks.xml")
    assert len(xml.spots) == n and len(xml.edges) == 0


# ------------------------------------------------------------------------------------------------
# Model folders: refused by name before any block (and before any data set is touched)
# ------------------------------------------------------------------------------------------------


def _models(tmp_path: Path, edit=None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of the bundled stardist/ and unet/ folders, with ``edit(kind, config)`` applied."""
    root = tmp_path / "models"
    for kind in ("stardist", "unet"):
        shutil.copytree(bundled_model_dir(kind), root / kind)
        cfg_path = root / kind / "config.json"
        if edit is not None:
            cfg = json.loads(cfg_path.read_text())
            edit(kind, cfg)
            cfg_path.write_text(json.dumps(cfg))
    for rel in drop:
        target = root / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return root


def _stardist_2d(kind, cfg):
    if kind == "stardist":
        cfg.update(n_dim=2, axes="YXC")


def _two_channel_unet(kind, cfg):
    if kind == "unet":
        cfg["n_channel_in"] = 2


def _two_channel_stardist(kind, cfg):
    if kind == "stardist":
        cfg["n_channel_in"] = 2


@pytest.mark.parametrize("make, error, pattern", [
    (lambda p: p / "missing", ModelNotFoundError, r"models folder not found: .*missing"),
    (lambda p: _models(p, drop=("unet",)), ModelNotFoundError, r"has no unet/ sub-folder"),
    (lambda p: _models(p, drop=("stardist/config.json",)), ModelNotFoundError, r"stardist model folder .*stardist has no config\.json"),
    (lambda p: _models(p, drop=("unet/weights_best.h5",)), ModelNotFoundError, r"unet has no weights file"),
    (lambda p: _models(p, edit=_stardist_2d), ConfigError, r"stardist holds a 2D StarDist model"),
    (lambda p: _models(p, edit=_two_channel_unet), ConfigError, r"unet: unet model with 2 input channels"),
    (lambda p: _models(p, edit=_two_channel_stardist), ConfigError, r"stardist: StarDist model with 2 input channels"),
], ids=["no-folder", "no-unet", "no-config", "no-weights", "stardist-2d", "unet-2ch", "stardist-2ch"])
def test_bad_model_folders_fail_the_run_before_any_data_set(tmp_path, tissue, make, error, pattern):
    models = make(tmp_path)
    store = Path(write_test_store(tmp_path / "s.zarr", tissue[None]))
    cfg = _run_config(store, tmp_path / "out", predictor={"kind": "network", "models": str(models)})
    with pytest.raises(error, match=pattern):
        run(cfg)
    assert not (store / "labels" / "cells").exists() and not (tmp_path / "out").exists()


def test_stardist_folder_given_where_a_unet_is_expected(tmp_path):
    from vollseg_dask.predictors.network import NetworkPredictor

    sd = bundled_model_dir("stardist")
    with pytest.raises(ConfigError, match=r"stardist is not a vollseg-dask unet model folder.*StarDist3D"):
        NetworkPredictor(sd, sd)
    models = tmp_path / "m"
    models.mkdir()
    shutil.copytree(sd, models / "stardist")
    shutil.copytree(sd, models / "unet")
    with pytest.raises(ConfigError, match="not a vollseg-dask unet model folder"):
        NetworkPredictor.from_models_dir(models)
    # the reverse: a U-Net where StarDist is expected
    with pytest.raises(ConfigError, match=r"unet is not a StarDist model folder"):
        NetworkPredictor(bundled_model_dir("unet"), bundled_model_dir("unet"))


# ------------------------------------------------------------------------------------------------
# Float labels
# ------------------------------------------------------------------------------------------------


def _float_labels_store(tmp_path: Path, tissue: np.ndarray) -> Path:
    """A store whose ``ground_truth`` labels group was written (by another tool) as float32."""
    import zarr

    store = Path(write_test_store(tmp_path / "f.zarr", tissue[None]))
    group = zarr.open_group(store / "labels" / "ground_truth", mode="r+")
    old = group["0"]
    group.create_array("0", shape=old.shape, dtype="float32", chunks=old.chunks, overwrite=True)[...] = tissue[None]
    return store


def test_float_labels_are_refused_by_measure_and_evaluate(tmp_path, tissue):
    from vollseg_dask.evaluate import evaluate_arrays, evaluate_store
    from vollseg_dask.measure import measure_cells

    store = _float_labels_store(tmp_path, tissue)
    assert open_labels(store, "ground_truth").dtype == np.float32
    with pytest.raises(DTypeError, match=r"labels/ground_truth has dtype float32; measurement needs integer labels"):
        measure_cells(store, tmp_path / "cells", labels="ground_truth")
    assert not (tmp_path / "cells").exists()
    with pytest.raises(DTypeError, match=r"ground-truth labels must have an integer dtype, got float32"):
        evaluate_arrays(tissue, tissue.astype(np.float32))
    with pytest.raises(DTypeError, match=r"integer dtype, got float32"):
        evaluate_store(store, "ground_truth", "ground_truth")


def test_float_training_labels_convert_exactly_when_integral(tmp_path, tissue):
    tifffile = pytest.importorskip("tifffile")
    from vollseg_dask.networks.data import sources_from_folders

    for sub in ("Raw", "Segmentation"):
        (tmp_path / sub).mkdir()
    image = np.random.default_rng(1).integers(0, 1000, tissue.shape).astype(np.uint16)
    tifffile.imwrite(tmp_path / "Raw" / "a.tif", image)
    tifffile.imwrite(tmp_path / "Segmentation" / "a.tif", tissue.astype(np.float32))  # Fiji often saves float
    src = sources_from_folders(tmp_path)[0]
    whole = tuple(slice(0, s) for s in tissue.shape)
    lab = src.read_labels(whole)
    assert lab.dtype.kind == "i"
    np.testing.assert_array_equal(lab, tissue)
    bad = tissue.astype(np.float32)
    bad[0, 0, 0] = 1.5
    tifffile.imwrite(tmp_path / "Segmentation" / "a.tif", bad)
    with pytest.raises(DTypeError, match=r"labels of a\.tif are not integers \(dtype float32\)"):
        sources_from_folders(tmp_path)[0].read_labels(whole)
