"""Units from the store to every export, and GEFF (written, validated by ``geff``, read back, tracked).

A store whose frame interval is 9.5 *minutes* goes through ``measure → track → export`` with no
tracker config: TrackMate XML, GEFF, napari and the analysis all say minutes, and the XML's
``ImageData`` describes the real image (dimensions and calibration).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from vollseg_dask.cli import main

SHAPE = (3, 4, 32, 40)          # t, z, y, x
SCALE = (9.5, 2.0, 0.5, 0.25)   # minutes, µm


def _run(*args: str):
    res = CliRunner().invoke(main, list(args), catch_exceptions=True)
    assert res.exit_code == 0, (res.output, res.exception)
    return res


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Store in minutes → cell table → tracks (no tracker config)."""
    from vollseg_dask.io.omezarr import create_image, create_labels
    from vollseg_dask.measure import measure_cells
    from vollseg_dask.runtime import get_client

    tmp = tmp_path_factory.mktemp("units")
    store = tmp / "img.zarr"
    create_image(store, shape=SHAPE, dtype="uint16", axes="tzyx", scale=SCALE,
                 units={"t": "minute", "z": "micrometer", "y": "micrometer", "x": "micrometer"})
    lab = np.zeros(SHAPE, np.uint32)
    lab[0, 1:3, 4:10, 4:10] = 1                  # mother, moves right, divides at t=1 -> t=2
    lab[1, 1:3, 4:10, 6:12] = 1
    lab[2, 1:3, 2:7, 8:14] = 1                   # daughter 1
    lab[2, 1:3, 9:14, 8:14] = 2                  # daughter 2
    lab[:, 2:4, 20:26, 28:34] = 3                # a still cell
    create_labels(store, "cells")[:] = lab
    with get_client({"kind": "threads", "n_workers": 1}):
        measure_cells(store, tmp / "cells", labels="cells", channels=[], tissue_mask=None)
    res = _run("track", str(tmp / "cells"), "--out", str(tmp / "tracks"), "--no-progress", "--json")
    return {"tmp": tmp, "store": store, "cells": tmp / "cells", "tracks": tmp / "tracks",
            "summary": json.loads(res.output)}


def test_cell_table_reads_with_plain_pandas(pipeline) -> None:
    df = pd.read_parquet(pipeline["cells"])
    assert df["t"].dtype == np.int64
    assert sorted((df["t"] - 1).unique().tolist()) == [-1, 0, 1]


def test_track_takes_units_from_the_store(pipeline, tmp_path: Path) -> None:
    from vollseg_dask.io.tracks import read_tracks

    s = pipeline["summary"]
    assert (s["frame_interval"], s["time_units"], s["spatial_units"]) == (9.5, "min", "µm")
    data = read_tracks(pipeline["tracks"], lazy=True)
    assert (data.frame_interval, data.time_units) == (9.5, "min")
    assert data.image["shape"] == {"t": 3, "z": 4, "y": 32, "x": 40}
    assert data.image["labels"] == "cells"
    # the CLI overrides
    res = _run("track", str(pipeline["cells"]), "--out", str(tmp_path / "t2"), "--no-progress", "--json",
               "--frame-interval", "30", "--time-unit", "seconds")
    s2 = json.loads(res.output)
    assert (s2["frame_interval"], s2["time_units"]) == (30.0, "sec")


def test_trackmate_xml_has_the_image_and_units(pipeline, tmp_path: Path) -> None:
    import tifffile

    from vollseg_dask.io.trackmate_xml import read_trackmate_xml

    out = tmp_path / "tm.xml"
    _run("export", str(pipeline["tracks"]), "--format", "trackmate", str(out))
    tm = read_trackmate_xml(out)
    assert (tm.raw_spatial_units, tm.raw_time_units) == ("µm", "min")
    img = tm.image_data
    assert (img["width"], img["height"], img["nslices"], img["nframes"]) == (40, 32, 4, 3)
    assert (img["pixelwidth"], img["pixelheight"], img["voxeldepth"], img["timeinterval"]) == (0.25, 0.5, 2.0, 9.5)
    assert img.get("filename", "") == ""  # an OME-Zarr is not a file Fiji opens
    text = out.read_text(encoding="utf-8")
    assert f"OME-Zarr {pipeline['store']}" in text
    assert len(tm.spots) == 7 and len(tm.tracks) == 2
    pytrackmate = pytest.importorskip("pytrackmate", reason="pytrackmate not installed")
    spots = pytrackmate.trackmate_peak_import(str(out), get_tracks=True)
    assert len(spots) == 7
    # with the image as TIFF: ImageData names it, and the TIFF carries the calibration
    out2 = tmp_path / "tm_img.xml"
    _run("export", str(pipeline["tracks"]), "--format", "trackmate", str(out2), "--image-tiff")
    img2 = read_trackmate_xml(out2).image_data
    assert img2["filename"] == "tm_img.tif" and Path(img2["folder"]) == tmp_path.resolve()
    with tifffile.TiffFile(tmp_path / "tm_img.tif") as tf:
        ij = tf.imagej_metadata
        assert tf.series[0].shape == (3, 4, 32, 40)
        assert ij["finterval"] == 9.5 and ij["spacing"] == 2.0


def test_napari_export_states_units(pipeline, tmp_path: Path) -> None:
    from vollseg_dask.io.napari_tracks import load

    out = tmp_path / "tracks.npz"
    _run("export", str(pipeline["tracks"]), "--format", "napari", str(out))
    data, kwargs, kind = load(out)
    assert kind == "tracks" and data.shape[1] == 5
    assert kwargs["metadata"]["units"] == {"spatial_units": "µm", "time_units": "min", "frame_interval": 9.5}
    assert set(kwargs) >= {"properties", "graph"}


def test_analysis_in_minutes(pipeline, tmp_path: Path) -> None:
    from vollseg_dask.analysis import run_analysis

    a = run_analysis(pipeline["tracks"], tmp_path / "analysis", formats=())
    assert (a.time_units, a.frame_interval) == ("min", 9.5)


def test_geff_validated_read_back_and_tracked(pipeline, tmp_path: Path) -> None:
    geff = pytest.importorskip("geff", reason="geff not installed")
    from geff.core_io import read_to_memory
    from geff.validate.data import ValidationConfig

    from vollseg_dask.io.geff import read_geff
    from vollseg_dask.io.tracks import read_tracks

    out = tmp_path / "tracks.geff"
    _run("export", str(pipeline["tracks"]), "--format", "geff", str(out))
    geff.validate_structure(str(out))
    mem = read_to_memory(str(out), data_validation=ValidationConfig(graph=True, lineage=True, tracklet=True))
    meta = mem["metadata"]
    axes = {a.name: a for a in meta.axes}
    assert axes["t"].type == "time" and axes["t"].unit == "frame"
    assert axes["t"].scale == 9.5 and axes["t"].scaled_unit == "minute"
    assert all(axes[a].type == "space" and axes[a].unit == "micrometer" for a in "zyx")
    assert meta.track_node_props == {"lineage": "track_id", "tracklet": "tracklet_id"}
    (rel,) = meta.related_objects
    assert rel.type == "labels" and rel.node_prop == "seg_id"
    assert (out / rel.path).resolve() == (pipeline["store"] / "labels" / "cells").resolve()
    assert {"volume_um3", "seg_id", "t"} <= set(mem["node_props"])
    # read back: nodes, edges, lineage
    ref = read_tracks(pipeline["tracks"])
    g = read_geff(out)
    assert len(g.spots) == len(ref.spots) and len(g.edges) == len(ref.edges)
    a = ref.spots.set_index("spot_id")[["track_id", "tracklet_id", "label"]].sort_index()
    b = g.spots.set_index("spot_id")[["track_id", "tracklet_id", "label"]].sort_index()
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    key = ["source_spot_id", "target_spot_id"]
    e1 = ref.edges.sort_values(key).reset_index(drop=True)
    e2 = g.edges.sort_values(key).reset_index(drop=True)
    assert e1[key].equals(e2[key]) and list(e1["kind"]) == list(e2["kind"])
    np.testing.assert_allclose(e1["cost"], e2["cost"])
    td = g.to_track_data()
    assert (td.time_units, td.frame_interval, td.spatial_units) == ("min", 9.5, "µm")
    # track reads a GEFF (positions and features) and gets the same edges, in minutes
    res = _run("track", str(out), "--out", str(tmp_path / "from_geff"), "--no-progress", "--json")
    s = json.loads(res.output)
    assert (s["frame_interval"], s["time_units"]) == (9.5, "min")
    again = read_tracks(tmp_path / "from_geff")
    assert again.edges.sort_values(key)[key].reset_index(drop=True).equals(e1[key])


def test_napari_geff_reads_our_geff(pipeline, tmp_path: Path) -> None:
    pytest.importorskip("napari_geff", reason="napari-geff not installed")
    from napari_geff._reader import get_geff_reader

    out = tmp_path / "tracks.geff"
    _run("export", str(pipeline["tracks"]), "--format", "geff", str(out))
    reader = get_geff_reader(str(out))
    assert reader is not None, "napari-geff does not accept the file"
    layers = {kind: (data, kw) for data, kw, kind in reader(str(out))}
    data, kw = layers["tracks"]
    assert len(data) == 7 and kw["scale"][0] == 9.5  # every spot; t scaled to minutes


def test_ctc_masks_carry_the_pixel_size(pipeline, tmp_path: Path) -> None:
    import tifffile

    out = tmp_path / "01_RES"
    _run("export", str(pipeline["tracks"]), "--format", "ctc", str(out), "--labels", f"{pipeline['store']}:cells")
    with tifffile.TiffFile(out / "mask000.tif") as tf:
        page = tf.pages[0]
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        np.testing.assert_allclose(page.resolution, (1e4 / 0.25, 1e4 / 0.5))
