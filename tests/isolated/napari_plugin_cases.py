"""napari plugin: npe2 manifest, reader of a run folder, TrackAnalysisWidget (headless).

napari's canvas needs OpenGL. Qt's ``offscreen`` platform has none here (napari then fails in
``get_gl_extensions``), so these tests run Qt on an X server: the current ``DISPLAY`` or, when there is
none, an ``Xvfb`` started for this module (``apt install xvfb``). Without either, Qt is set to
``offscreen`` and the viewer tests skip, naming the reason. Reader and manifest tests need no Qt.
Set ``VOLLSEG_NAPARI_SCREENSHOT=PATH`` to keep the viewer screenshot (docs/img/napari_widget.png).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from vollseg_dask.analysis import DISTANCE_COLUMN, add_boundary_distance
from vollseg_dask.io.omezarr import build_pyramid, create_labels, write_image
from vollseg_dask.io.tracks import TrackData, write_tracks

MANIFEST = Path(__file__).resolve().parents[2] / "vollseg_dask" / "napari" / "napari.yaml"
HAVE_NAPARI = importlib.util.find_spec("napari") is not None
needs_napari = pytest.mark.skipif(
    not HAVE_NAPARI, reason="napari is not installed: pip install 'vollseg-dask[napari]'"
)

T, Z, Y, X = 10, 8, 40, 48
VOXEL = (2.0, 1.0, 1.0)  # µm (z, y, x)
FRAME_INTERVAL = 5.0  # s
CENTRE = np.array([8.0, 20.0, 24.0])  # tissue sphere centre, µm (z, y, x)
RADIUS = 19.0


def _cells() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Track 0: mother A (t0-3) divides into A1, A2 (t4-9), moving apart. Track 1: B (t0-9) moving
    towards the tissue edge. Total intensity oscillates with known periods."""
    rows = []
    sid = 1

    def add(ts: range, path: Any, label: int, period: float) -> list[int]:
        nonlocal sid
        out = []
        for t in ts:
            z, y, x = path(t)
            inten = 5000 + 1500 * np.sin(2 * np.pi * t * FRAME_INTERVAL / period)
            rows.append((sid, t, x, y, z, label, inten))
            out.append(sid)
            sid += 1
        return out

    a = add(range(0, 4), lambda t: (8.0, 20.0, 16.0 + t), 1, 20.0)
    a1 = add(range(4, T), lambda t: (8.0, 20.0 - 1.5 * (t - 3), 19.0 + (t - 3)), 2, 15.0)
    a2 = add(range(4, T), lambda t: (8.0, 20.0 + 1.5 * (t - 3), 19.0 + (t - 3)), 3, 25.0)
    b = add(range(0, T), lambda t: (8.0, 8.0 + 0.3 * t, 28.0 + 1.6 * t), 4, 10.0)
    spots = pd.DataFrame(rows, columns=["spot_id", "t", "x", "y", "z", "label", "total_intensity_c0"])
    edges = []
    for ch in (a, a1, a2, b):
        edges += list(zip(ch[:-1], ch[1:], strict=True))
    edges += [(a[-1], a1[0]), (a[-1], a2[0])]
    return spots, pd.DataFrame(edges, columns=["source_spot_id", "target_spot_id"])


def _tissue() -> np.ndarray:
    zz, yy, xx = np.meshgrid(
        *(np.arange(n) * v for n, v in zip((Z, Y, X), VOXEL, strict=True)), indexing="ij"
    )
    return (zz - CENTRE[0]) ** 2 + (yy - CENTRE[1]) ** 2 + (xx - CENTRE[2]) ** 2 <= RADIUS**2


def make_run(root: Path) -> Path:
    """A tiny run output folder: image.zarr (tzyx, 2 levels) with labels 'cells', and tracks/."""
    spots, edges = _cells()
    tissue = _tissue()
    spots = add_boundary_distance(spots, tissue, VOXEL)
    zz, yy, xx = np.meshgrid(
        *(np.arange(n) * v for n, v in zip((Z, Y, X), VOXEL, strict=True)), indexing="ij"
    )
    img = np.zeros((T, Z, Y, X), np.float64)
    lab = np.zeros((T, Z, Y, X), np.uint16)
    for r in spots.itertuples():
        d2 = (zz - r.z) ** 2 + (yy - r.y) ** 2 + (xx - r.x) ** 2
        img[r.t] += r.total_intensity_c0 / 30 * np.exp(-d2 / (2 * 2.5**2))
        lab[r.t][d2 <= 3.0**2] = r.label
    img += 40 * tissue[None]
    rng = np.random.default_rng(7)
    img = (img + rng.normal(0, 5, img.shape)).clip(0, 65535).astype(np.uint16)
    store = root / "image.zarr"
    write_image(store, img, axes="tzyx", scale=[FRAME_INTERVAL, *VOXEL], chunks=(1, Z, Y, X), n_levels=2)
    arr = create_labels(store, "cells", dtype="uint16")
    arr[:] = lab
    build_pyramid(store, "labels/cells", method="nearest")
    data = TrackData(spots=spots, edges=edges, frame_interval=FRAME_INTERVAL, time_units="sec")
    write_tracks(root / "tracks", data)
    (root / "notes.txt").write_text("not a run part\n")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


# ------------------------------------------------------------------------------------------------
# Manifest and reader (no Qt)
# ------------------------------------------------------------------------------------------------


@needs_napari
def test_manifest_is_valid_npe2() -> None:
    from npe2 import PluginManifest

    mf = PluginManifest.from_file(MANIFEST)
    assert mf.name == "vollseg-dask"
    cmds = {c.id: c.python_name for c in mf.contributions.commands}
    assert cmds["vollseg-dask.read_run"] == "vollseg_dask.napari._reader:get_reader"
    assert cmds["vollseg-dask.track_analysis"] == "vollseg_dask.napari._widget:TrackAnalysisWidget"
    reader = mf.contributions.readers[0]
    assert reader.accepts_directories and reader.command == "vollseg-dask.read_run"
    assert mf.contributions.widgets[0].command == "vollseg-dask.track_analysis"
    import vollseg_dask.napari._reader as r

    assert callable(r.get_reader)


def test_reader_opens_a_run_folder(run_dir: Path) -> None:
    from vollseg_dask.napari._reader import METADATA_KEY, find_run_parts, get_reader

    parts = find_run_parts(run_dir)
    assert parts.image == run_dir / "image.zarr" and parts.tracks == run_dir / "tracks"
    reader = get_reader(str(run_dir))
    assert reader is not None
    layers = reader(str(run_dir))
    kinds = [k for _, _, k in layers]
    assert kinds == ["image", "labels", "tracks"]
    (img, img_meta, _), (lab, lab_meta, _), (trk, trk_meta, _) = layers
    assert isinstance(img, list) and len(img) == 2 and img_meta["multiscale"]
    assert tuple(img[0].shape) == (T, Z, Y, X) and tuple(img[1].shape) == (T, Z, Y // 2, X // 2)
    assert img_meta["scale"] == [1.0, *VOXEL]  # frames on t, µm in space
    assert lab_meta["name"] == "cells" and lab_meta["scale"] == [1.0, *VOXEL]
    labels0 = np.asarray(lab[0][3])
    assert set(np.unique(labels0)) == {0, 1, 4}
    spots, _ = _cells()
    assert trk.shape == (len(spots), 5)
    data = trk_meta["metadata"][METADATA_KEY]
    assert isinstance(data, TrackData) and DISTANCE_COLUMN in data.spots.columns
    # graph: both daughters have the mother as parent
    graph = trk_meta["graph"]
    assert len(graph) == 2 and len({tuple(v) for v in graph.values()}) == 1
    # a labelled voxel lies under every spot: tracks (µm) overlay the labels (scaled by the voxel size)
    lab_full = np.asarray(lab[0])
    for _tid, t, z, y, x in trk:
        idx = (int(t), *(int(round(c / v)) for c, v in zip((z, y, x), VOXEL, strict=True)))
        assert lab_full[idx] > 0
    # single parts and foreign paths
    assert [k for _, _, k in get_reader(str(run_dir / "tracks"))(str(run_dir / "tracks"))] == ["tracks"]
    assert [k for _, _, k in get_reader(str(run_dir / "image.zarr"))(str(run_dir / "image.zarr"))] == [
        "image",
        "labels",
    ]
    assert get_reader(str(run_dir / "notes.txt")) is None
    assert get_reader(str(run_dir / "missing")) is None


def test_reader_opens_trackmate_xml(shared_data: Path) -> None:
    from vollseg_dask.napari._reader import get_reader

    xml = shared_data / "trackmate_xml" / "napatrackmater" / "tracks.xml"
    if not xml.is_file():
        pytest.skip(f"{xml} is absent")
    layers = get_reader(str(xml))(str(xml))
    assert [k for _, _, k in layers] == ["tracks"]
    arr, meta, _ = layers[0]
    assert arr.shape[1] == 5
    # 11 divisions: 22 daughter tracklets with a parent in the graph
    assert sum(len(v) for v in meta["graph"].values()) == 22


# ------------------------------------------------------------------------------------------------
# Viewer and widget (Qt on an X server)
# ------------------------------------------------------------------------------------------------


def _free_display() -> int:
    for n in range(90, 200):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    raise RuntimeError("no free X display number in 90..199")


@pytest.fixture(scope="module")
def qt_display() -> Iterator[str]:
    """Choose the Qt platform before Qt starts: xcb on DISPLAY or on an Xvfb started here, else offscreen."""
    if not HAVE_NAPARI:
        pytest.skip("napari is not installed: pip install 'vollseg-dask[napari]'")
    proc = None
    old = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM")}
    if not os.environ.get("DISPLAY") and shutil.which("Xvfb"):
        n = _free_display()
        proc = subprocess.Popen(
            ["Xvfb", f":{n}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp", "-terminate"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not Path(f"/tmp/.X11-unix/X{n}").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.skip(f"Xvfb :{n} did not start")
            time.sleep(0.1)
        os.environ["DISPLAY"] = f":{n}"
    os.environ["QT_QPA_PLATFORM"] = "xcb" if os.environ.get("DISPLAY") else "offscreen"
    yield os.environ["QT_QPA_PLATFORM"]
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def viewer(qt_display: str) -> Iterator[Any]:
    import napari

    v = napari.Viewer(show=True, title="vollseg-dask test")
    v.window._qt_window.resize(1500, 900)
    try:
        probe = v.add_image(np.arange(16, dtype=np.float32).reshape(4, 4), name="gl probe")
    except Exception as exc:  # noqa: BLE001 - any GL failure means no canvas here
        v.close()
        pytest.skip(
            f"napari's canvas needs OpenGL, which Qt platform {qt_display!r} does not give here "
            f"({type(exc).__name__}: {exc}); install Xvfb or run with a DISPLAY"
        )
    v.layers.remove(probe)
    yield v
    v.close()


def _register_manifest() -> None:
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    try:
        pm.get_manifest("vollseg-dask")  # installed through the napari.manifest entry point
    except KeyError:
        pm.register(PluginManifest.from_file(MANIFEST))


def _not_uniform(img: np.ndarray, min_colours: int = 50) -> None:
    rgb = np.asarray(img)[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 5, "image is one colour"
    assert len(np.unique(rgb, axis=0)) >= min_colours


def test_widget_shows_a_track(viewer: Any, run_dir: Path, tmp_path: Path) -> None:
    import napari
    from imageio.v3 import imread
    from qtpy.QtWidgets import QApplication

    from vollseg_dask.napari._widget import HIGHLIGHT_LAYER, TrackAnalysisWidget

    _register_manifest()
    layers = viewer.open(str(run_dir), plugin="vollseg-dask")
    assert [type(ly).__name__ for ly in layers] == ["Image", "Labels", "Tracks"]
    dock, widget = viewer.window.add_plugin_dock_widget("vollseg-dask", "Track analysis")
    assert isinstance(widget, TrackAnalysisWidget)
    assert widget.layer_combo.currentText() == layers[2].name
    assert widget.track_table.rowCount() == 2
    assert [widget.track_table.item(i, 0).text() for i in range(2)] == ["0", "1"]
    assert tuple(viewer.dims.axis_labels) == ("t", "z", "y", "x")

    # select the dividing track through the table, as a user would
    table = widget.track_table
    row = next(i for i in range(table.rowCount()) if table.item(i, 1).text() == "dividing")
    table.selectRow(row)
    tid = widget.current_track
    assert tid is not None
    a = widget.analysis
    assert len(a.tracklets) == 3 and len(a.divisions) == 1
    # highlighted in its own tracks layer, time slider on its first frame
    hl = viewer.layers[HIGHLIGHT_LAYER]
    assert isinstance(hl, napari.layers.Tracks) and len(hl.data) == 4 + 6 + 6
    assert viewer.dims.current_step[0] == 0
    # distance plot: one curve per tracklet holding the spots' distances to the tissue boundary
    ax = widget.distance_figure.axes[0]
    curves = [ln for ln in ax.lines if ln.get_label().startswith("tracklet")]
    assert len(curves) == 3
    got = np.sort(np.concatenate([ln.get_ydata() for ln in curves]))
    ref = np.sort(a.timeseries[DISTANCE_COLUMN].to_numpy())
    np.testing.assert_allclose(got, ref)
    assert np.isfinite(got).all() and np.ptp(got) > 1
    # intensity and spectrum plots: one curve per tracklet, dominant frequencies marked
    ax_i, ax_f = widget.intensity_figure.axes
    assert len([ln for ln in ax_i.lines if ln.get_label().startswith("tracklet")]) == 3
    spectra = [ln for ln in ax_f.lines if len(ln.get_xdata()) > 2]
    assert len(spectra) == 3 and all(np.ptp(ln.get_ydata()) > 0 for ln in spectra)
    assert a.tracklets["dominant_frequency"].notna().all()

    # the other track, selected through the API; settings recompute it
    other = int(widget.summary.loc[~widget.summary["dividing"], "track_id"].iloc[0])
    widget.moving_average.setValue(3)
    b = widget.select_track(other)
    assert b.moving_average == 3 and len(b.tracklets) == 1
    b_curve = [ln for ln in widget.distance_figure.axes[0].lines if ln.get_label().startswith("tracklet")][0]
    assert b_curve.get_ydata()[-1] < b_curve.get_ydata()[0]  # B moves towards the edge
    widget.select_track(tid)

    # exports
    plots = widget.save_plots(tmp_path / "plots", formats=("png",), dpi=60)
    for p in plots:
        _not_uniform(imread(p))
    csvs = widget.save_csv(tmp_path / "csv")
    ts = pd.read_csv(next(p for p in csvs if p.name.endswith("timeseries.csv")))
    assert len(ts) == 16 and set(ts["track_id"]) == {tid}
    gif = widget.save_animation(tmp_path / "track.gif", fps=5)
    frames = imread(gif, index=None)
    assert frames.shape[0] == T
    _not_uniform(frames[0], min_colours=20)
    assert viewer.dims.current_step[0] == 0

    # 2D hyperstack screenshot of the whole window (widget docked), then the 3D view
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    _not_uniform(canvas, min_colours=20)
    shot = tmp_path / "napari_widget.png"
    viewer.dims.set_current_step(0, 6)
    QApplication.processEvents()  # lay out the dock widget before grabbing the window
    viewer.screenshot(str(shot), canvas_only=False, flash=False)
    full = imread(shot)
    assert full.shape[0] > 400 and full.shape[1] > 600
    _not_uniform(full)
    keep = os.environ.get("VOLLSEG_NAPARI_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep)
    widget.view3d.setChecked(True)
    assert viewer.dims.ndisplay == 3
    _not_uniform(viewer.screenshot(canvas_only=True, flash=False), min_colours=20)
    widget.view3d.setChecked(False)
    assert viewer.dims.ndisplay == 2


@pytest.mark.skipif(importlib.util.find_spec("napari_ome_zarr") is None, reason="napari-ome-zarr is not installed")
def test_napari_ome_zarr_reads_our_store(run_dir: Path) -> None:
    """The independent napari reader (napari-ome-zarr) opens our NGFF 0.5 store: image pyramid with its
    physical scale, and the labels group as a labels layer."""
    from napari_ome_zarr import napari_get_reader

    store = run_dir / "image.zarr"
    reader = napari_get_reader(str(store))
    assert reader is not None
    layers = reader(str(store))
    kinds = [kind for _, _, kind in layers]
    assert "image" in kinds and "labels" in kinds
    image = next(layer for layer in layers if layer[2] == "image")
    data, meta = image[0], image[1]
    assert len(data) == 2 and data[0].shape == (T, Z, Y, X)
    assert np.allclose(meta["scale"][-3:], VOXEL)
    labels = next(layer for layer in layers if layer[2] == "labels")
    assert int(np.asarray(labels[0][0]).max()) > 0
