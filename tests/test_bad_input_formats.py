"""Wrong input refused, and every failure one ``error:`` line (issue 14, points 5 and 6; issue 17 point 6)."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vollseg_dask.errors import AxesError, InvalidDataError


def _imagej(path: Path, data: np.ndarray, axes: str) -> Path:
    import tifffile

    tifffile.imwrite(path, data, imagej=True, metadata={"axes": axes})
    return path


def test_imagej_tiff_whose_metadata_contradict_the_pages_is_refused(tmp_path):
    """Before: converted with exit 0, two frames merged into one volume (tifffile logged an ERROR)."""
    from vollseg_dask.io.ingest import convert

    good = _imagej(tmp_path / "good.tif", np.arange(2 * 3 * 8 * 8, dtype=np.uint16).reshape(2, 3, 8, 8), "TZYX")
    raw = good.read_bytes()
    bad = tmp_path / "bad.tif"
    bad.write_bytes(raw.replace(b"slices=3", b"slices=6"))  # 6 slices x 2 frames != 6 images
    with pytest.raises(AxesError, match=r"slices 6 x frames 2 = 12 images, but images=6.*--axes"):
        convert(bad, tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()
    # with the axes given by the user it is a warning, and the good file converts as before
    img = convert(good, tmp_path / "good.zarr")
    assert img.axes == "tzyx" and img.shape == (2, 3, 8, 8)


def test_truncated_tiff_is_refused(tmp_path):
    """Before: a TiffFileError traceback from deep inside the conversion."""
    from vollseg_dask.io.ingest import convert

    good = _imagej(tmp_path / "good.tif", np.ones((2, 3, 8, 8), np.uint16), "TZYX")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(InvalidDataError, match="cut.tif is truncated"):
        convert(cut, tmp_path / "cut.zarr")


def test_mask_tagged_with_channels_but_no_time_warns(tmp_path, caplog):
    """Issue 17: masks tagged ZCYX were written as czyx (5, 20, ...) beside a TZYX image, silently."""
    from vollseg_dask.io.ingest import convert

    mask = _imagej(tmp_path / "mask.tif", np.zeros((4, 5, 8, 8), np.uint16), "ZCYX")
    with caplog.at_level(logging.WARNING, logger="vollseg_dask.io.ingest"):
        convert(mask, tmp_path / "mask.zarr", pyramid_method="nearest")
    msgs = [r.getMessage() for r in caplog.records if "label image" in r.getMessage()]
    assert len(msgs) == 1 and "5 channels" in msgs[0] and "--axes ZTYX" in msgs[0]


@pytest.mark.parametrize(("frames", "bad"), [([0, 1, -1], "-1"), ([0, 1.5, 2], "1.5"), (["0", "1", "abc"], "'abc'")])
def test_bad_frames_are_refused_with_one_message(tmp_path, frames, bad):
    """Before: t = -1 gave an invalid CTC line and FRAME=\"-1\" in the XML; 'abc' a ValueError traceback."""
    from vollseg_dask.io.spot_source import open_spots

    csv = tmp_path / "spots.csv"
    pd.DataFrame({"t": frames, "x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0], "z": [0.0, 0.0, 0.0]}).to_csv(
        csv, index=False)
    with pytest.raises(InvalidDataError, match=rf"spot table column 't'.*{bad.strip(chr(39))}"):
        open_spots(csv)


def test_non_numeric_spot_coordinate_is_refused(tmp_path):
    from vollseg_dask.io.spot_source import open_spots

    csv = tmp_path / "spots.csv"
    pd.DataFrame({"t": [0, 1], "x": ["1.0", "abc"], "y": [1.0, 2.0], "z": [0.0, 0.0]}).to_csv(csv, index=False)
    with pytest.raises(InvalidDataError, match=r"column 'x' holds a value that is not a number: 'abc' \(row 1\)"):
        open_spots(csv)


def test_negative_labels_are_refused_alike_by_measure_and_the_ground_truth_predictor():
    """Before: the ground-truth predictor accepted negative labels that measure refused."""
    from vollseg_dask.kernels.regionprops import block_partials
    from vollseg_dask.predictors.ground_truth import ground_truth_maps

    labels = np.zeros((4, 8, 8), np.int32)
    labels[1:3, 2:5, 2:5] = -3
    core = (slice(0, 4), slice(0, 8), slice(0, 8))
    with pytest.raises(InvalidDataError, match=r"labels must be >= 0 \(0 = background\); found -3"):
        block_partials(labels)
    from vollseg_dask.predictors.base import make_rays

    with pytest.raises(InvalidDataError, match=r"labels must be >= 0 \(0 = background\); found -3"):
        ground_truth_maps(labels, read=core, core=core, volume_shape=(4, 8, 8), t=0, rays=make_rays(8))


def _strip_scale(store: Path) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    ms = meta["attributes"]["ome"]["multiscales"][0]
    for d in ms["datasets"]:
        d["coordinateTransformations"] = [t for t in d.get("coordinateTransformations", []) if t["type"] != "scale"]
        if not d["coordinateTransformations"]:
            d["coordinateTransformations"] = [{"type": "identity"}]
    ms.pop("coordinateTransformations", None)
    (store / "zarr.json").write_text(json.dumps(meta))


def test_store_without_scale_warns_once_and_the_manifest_records_it(tmp_path, caplog):
    """Before: silently 1 µm voxels."""
    from vollseg_dask.io.omezarr import write_image
    from vollseg_dask.pipeline import RunConfig, run

    store = tmp_path / "img.zarr"
    write_image(store, np.ones((2, 4, 16, 16), np.uint16), axes="tzyx", scale=(1.0, 2.0, 0.5, 0.5))
    _strip_scale(store)
    with caplog.at_level(logging.WARNING, logger="vollseg_dask.io.omezarr"):
        report = run(RunConfig.model_validate({"input": {"path": str(store)}, "output": str(tmp_path / "out"),
                                               "stages": ["ingest"], "cluster": {"kind": "threads"}}))
    assert report.ok
    warned = [r for r in caplog.records if "no coordinateTransformations 'scale'" in r.getMessage()]
    assert len(warned) == 1
    manifest = json.loads((tmp_path / "out" / "img" / "manifest.json").read_text())
    assert manifest["assumed_scale"]["scale"] == [1.0, 1.0, 1.0, 1.0]


def test_store_without_axes_says_what_the_metadata_name(tmp_path):
    """Before: an error claiming the store names 'tczyx'."""
    from vollseg_dask.io.omezarr import open_image, write_image

    store = tmp_path / "img.zarr"
    write_image(store, np.ones((2, 4, 16, 16), np.uint16), axes="tzyx", scale=None)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["ome"]["multiscales"][0].pop("axes")
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(AxesError, match="names no axes .* the array has 4 dimensions"):
        open_image(store)


# ------------------------------------------------------------------------------------------------
# 6. one error: line
# ------------------------------------------------------------------------------------------------


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from vollseg_dask.cli import run as cli_run

    with pytest.raises(SystemExit) as exc:
        cli_run(argv)
    return int(exc.value.code or 0), capsys.readouterr().err


def test_cli_failures_are_one_error_line(tmp_path, capsys):
    good = _imagej(tmp_path / "good.tif", np.ones((2, 3, 8, 8), np.uint16), "TZYX")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[:300])
    code, err = _cli(["convert", str(cut), str(tmp_path / "cut.zarr"), "--no-progress"], capsys)
    lines = [ln for ln in err.splitlines() if not ln.split(" ", 3)[2:3] == ["ERROR"]]  # tifffile's own log lines
    assert code == 2 and [ln for ln in lines if ln.startswith("error:")] == lines[-1:] and "truncated" in lines[-1]
    assert "Traceback" not in err
    # a parse error of another format (a CSV spot value 'abc')
    csv = tmp_path / "spots.csv"
    pd.DataFrame({"t": [0, 1], "x": ["1", "abc"], "y": [1.0, 2.0], "z": [0.0, 0.0]}).to_csv(csv, index=False)
    code, err = _cli(["track", str(csv), "--out", str(tmp_path / "tracks")], capsys)
    assert code == 2 and err.strip().startswith("error:") and "'abc'" in err and "Traceback" not in err
    # the traceback only with -v
    code, err = _cli(["-v", "track", str(csv), "--out", str(tmp_path / "tracks")], capsys)
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error:")


def test_unexpected_exception_is_one_error_line(monkeypatch, tmp_path, capsys):
    from vollseg_dask.cli import convert as convert_cli

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("vollseg_dask.io.ingest.convert", boom)
    del convert_cli
    good = _imagej(tmp_path / "good.tif", np.ones((2, 3, 8, 8), np.uint16), "TZYX")
    code, err = _cli(["convert", str(good), str(tmp_path / "x.zarr"), "--no-progress"], capsys)
    assert code == 2 and err.strip() == ("error: OSError: [Errno 28] No space left on device  "
                                         "(-v shows the traceback)")


def test_disk_full_while_writing_the_manifest_is_reported_not_raised(tmp_path, monkeypatch):
    """Before: the failure handler's own manifest write raised OSError, leaving .manifest.json.tmp-*."""
    from vollseg_dask import pipeline
    from vollseg_dask.io import atomic
    from vollseg_dask.io.omezarr import write_image

    store = tmp_path / "img.zarr"
    write_image(store, np.ones((2, 4, 16, 16), np.uint16), axes="tzyx", scale=(1.0, 1.0, 0.5, 0.5))
    real = atomic.Path.write_text

    def full(self, *a, **k):
        if self.name.startswith(".manifest.json"):
            real(self, "{", encoding="utf-8")  # a part was written before the disk filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(atomic.Path, "write_text", full)
    report = pipeline.run(pipeline.RunConfig.model_validate({
        "input": {"path": str(store)}, "output": str(tmp_path / "out"), "stages": ["ingest"],
        "cluster": {"kind": "threads"}}))
    ds = report.datasets[0]
    assert ds.status == "failed" and "No space left on device" in ds.reason
    assert not list((tmp_path / "out").rglob(".manifest.json*"))
    shutil.rmtree(tmp_path / "out")
