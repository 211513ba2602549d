"""``vollseg-dask export`` with click's CliRunner: TrackMate XML, CTC and napari outputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from click.testing import CliRunner

from vollseg_dask.cli import main
from vollseg_dask.errors import InvalidDataError, StoreExistsError, StoreNotFoundError
from vollseg_dask.io.tracks import TrackData, write_tracks

VOXEL = (2.0, 0.5, 0.5)  # z, y, x in µm
SHAPE = (4, 3, 16, 16)   # t, z, y, x


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A labels group with 3 objects (one divides at t=2) and the matching TRACKS_DIR."""
    from vollseg_dask.io.omezarr import create_image, create_labels

    labels = np.zeros(SHAPE, np.uint32)
    labels[0:2, 0:2, 2:6, 2:6] = 4            # mother, t 0-1
    labels[2:4, 0:2, 0:3, 8:12] = 6           # daughter 1, t 2-3
    labels[2:4, 1:3, 10:14, 2:5] = 8          # daughter 2, t 2-3
    labels[:, 2, 14:16, 14:16] = 11           # a cell never linked (one spot per frame, no edges)
    store = tmp_path / "img.zarr"
    create_image(store, shape=SHAPE, dtype="uint16", axes="tzyx", scale=(5.0, *VOXEL))
    arr = create_labels(store, "cells")
    arr[:] = labels
    rows = []
    for t in range(SHAPE[0]):
        for lab in np.unique(labels[t])[1:]:
            zz, yy, xx = np.nonzero(labels[t] == lab)
            rows.append((t * 100 + int(lab), t, xx.mean() * VOXEL[2], yy.mean() * VOXEL[1], zz.mean() * VOXEL[0], int(lab)))
    spots = pd.DataFrame(rows, columns=["spot_id", "t", "x", "y", "z", "label"])
    spots["volume_um3"] = 1.0 * np.arange(1, len(spots) + 1)
    edges = pd.DataFrame({"source_spot_id": [4, 104, 104, 206, 208], "target_spot_id": [104, 206, 208, 306, 308],
                          "cost": [1.0, 2.0, 3.0, 4.0, 5.0]})
    tracks_dir = write_tracks(tmp_path / "tracks", TrackData(spots=spots, edges=edges, frame_interval=5.0))
    return tracks_dir, store, labels


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def test_export_trackmate_with_labels(inputs, tmp_path: Path) -> None:
    from vollseg_dask.io.trackmate_xml import read_trackmate_xml

    tracks_dir, store, _ = inputs
    out = tmp_path / "tm.xml"
    res = _run("export", str(tracks_dir), "--format", "trackmate", str(out), "--labels", f"{store}:cells")
    assert res.exit_code == 0, res.output
    assert "TrackMate XML written" in res.output
    tm = read_trackmate_xml(out)
    assert len(tm.spots) == 10 and len(tm.tracks) == 1 and len(tm.edges) == 5
    img = tm.image_data
    assert (img["width"], img["height"], img["nslices"], img["nframes"]) == (16, 16, 3, 4)
    assert (img["voxeldepth"], img["pixelheight"], img["pixelwidth"], img["timeinterval"]) == (2.0, 0.5, 0.5, 5.0)
    assert tm.tracks[0].features["NUMBER_SPLITS"] == 1
    # without --labels the file is written too, image size derived from the spots
    res = _run("export", str(tracks_dir), "--format", "trackmate", str(tmp_path / "plain.xml"))
    assert res.exit_code == 0, res.output


def test_export_ctc_with_labels(inputs, tmp_path: Path) -> None:
    tracks_dir, store, labels = inputs
    out = tmp_path / "01_RES"
    res = _run("export", str(tracks_dir), "--format", "ctc", str(out), "--labels", f"{store}:cells")
    assert res.exit_code == 0, res.output
    lines = (out / "res_track.txt").read_text().splitlines()
    # mother 1 (t0-1); at t0 the unlinked cell is 2; daughters 3, 4 (t2-3) with parent 1; then the
    # unlinked cell's spots at t1, t2, t3 (one-frame tracks)
    assert lines == ["1 0 1 0", "2 0 0 0", "3 1 1 0", "4 2 3 1", "5 2 3 1", "6 2 2 0", "7 3 3 0"]
    masks = [tifffile.imread(out / f"mask{t:03d}.tif") for t in range(4)]
    assert np.array_equal(masks[0] == 1, labels[0] == 4) and np.array_equal(masks[3] == 4, labels[3] == 6)
    assert np.array_equal(masks[3] == 7, labels[3] == 11)
    with tifffile.TiffFile(out / "mask000.tif") as tf:  # 3 grey z-planes, not one RGB image
        assert len(tf.pages) == 3 and tf.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
    pytest.importorskip("ctc_metrics", reason="py-ctcmetrics not installed")
    from ctc_metrics.scripts.validate import validate_sequence

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert validate_sequence(str(out), threads=1)["Valid"] == 1
    res = _run("export", str(tracks_dir), "--format", "ctc", str(tmp_path / "linked"), "--linked-only")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "linked" / "res_track.txt").read_text().splitlines() == ["1 0 1 0", "2 2 3 1", "3 2 3 1"]
    assert not list((tmp_path / "linked").glob("*.tif"))


def test_export_napari(inputs, tmp_path: Path) -> None:
    from vollseg_dask.io.napari_tracks import read_napari_tracks

    tracks_dir, _, _ = inputs
    out = tmp_path / "tracks.npz"
    res = _run("export", str(tracks_dir), "--format", "napari", str(out))
    assert res.exit_code == 0, res.output
    data, props, graph = read_napari_tracks(out)
    assert data.shape == (6, 5)  # linked spots only
    mother = int(data[props["spot_id"] == 4, 0][0])
    daughters = sorted(int(data[props["spot_id"] == s, 0][0]) for s in (206, 208))
    assert graph == {daughters[0]: [mother], daughters[1]: [mother]}
    res = _run("export", str(tracks_dir), "--format", "napari", str(out), "--overwrite", "--include-unlinked")
    assert res.exit_code == 0, res.output
    assert read_napari_tracks(out)[0].shape == (10, 5)


def test_export_errors(inputs, tmp_path: Path) -> None:
    tracks_dir, store, _ = inputs
    (tmp_path / "taken.xml").write_text("x")
    res = _run("export", str(tracks_dir), "--format", "trackmate", str(tmp_path / "taken.xml"))
    assert isinstance(res.exception, StoreExistsError)
    assert (tmp_path / "taken.xml").read_text() == "x"
    res = _run("export", str(tracks_dir), "--format", "ctc", str(tmp_path / "c"), "--labels", str(store))
    assert isinstance(res.exception, InvalidDataError) and "STORE:NAME" in str(res.exception)
    res = _run("export", str(tracks_dir), "--format", "ctc", str(tmp_path / "c"), "--labels", f"{store}:nuclei")
    assert isinstance(res.exception, StoreNotFoundError) and "nuclei" in str(res.exception)
    res = _run("export", str(tracks_dir), "--format", "excel", str(tmp_path / "c"))
    assert res.exit_code == 2 and "excel" in res.output
    res = _run("export", str(tmp_path / "nope"), "--format", "ctc", str(tmp_path / "c"))
    assert res.exit_code == 2
    assert not (tmp_path / "c").exists()
    assert "export" in _run("--help").output
