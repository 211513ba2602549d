"""Track analysis dock widget for napari.

:class:`TrackAnalysisWidget` lists the tracks of a tracks layer opened by the vollseg-dask reader
(or given with :meth:`TrackAnalysisWidget.set_track_data`). Selecting a track

- draws it on top of the others in a ``selected track`` tracks layer (thick, full tail), moves the
  time slider to its first frame and centres the camera on it (2-D hyperstack and 3-D views; the
  ``3D view`` button switches between them);
- plots its distance to the tissue boundary over time (one curve per tracklet, divisions dotted) and
  the intensity of each tracklet with its amplitude spectrum (dominant frequency dashed), computed
  by :func:`vollseg_dask.analysis.analyze_tracks` with the moving-average and normalisation chosen
  in the widget.

Buttons save the two plots (PNG and SVG), the analysis tables of the track (CSV) and an animation
of the view over the track's frames (GIF; MP4 when ``imageio-ffmpeg`` is installed).

This module imports napari and Qt; nothing else in vollseg-dask does.
"""

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import napari
import numpy as np
import pandas as pd
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from vollseg_dask.analysis import (
    TrackAnalysis,
    analyze_tracks,
    classify_tracks,
    division_events,
    select_track,
)
from vollseg_dask.analysis.plots import plot_track_distance, plot_track_intensity
from vollseg_dask.errors import InvalidDataError, MissingDependencyError
from vollseg_dask.io.tracks import TrackData, with_lineage
from vollseg_dask.napari._reader import METADATA_KEY, SOURCE_KEY
from vollseg_dask.tracking.napari import to_napari_tracks

__all__ = ["TrackAnalysisWidget", "HIGHLIGHT_LAYER"]

log = logging.getLogger(__name__)

#: Name of the layer that shows the selected track.
HIGHLIGHT_LAYER = "selected track"
_COLUMNS = ("track", "class", "divisions", "frames", "spots")


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a Qt slot, showing an error in the widget's status line and in napari instead of letting
    it escape into Qt (which aborts the process)."""

    @functools.wraps(method)
    def wrapper(self: "TrackAnalysisWidget", *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception as exc:  # noqa: BLE001 - a slot must not raise into Qt
            log.exception("track analysis widget: %s failed", method.__name__)
            self.status.setText(f"error: {exc}")
            try:
                from napari.utils.notifications import show_error

                show_error(f"vollseg-dask: {exc}")
            except Exception:  # noqa: BLE001  # pragma: no cover - notification is best effort
                pass
            return None

    return wrapper


class _NumericItem(QTableWidgetItem):
    """Table item that sorts by a number."""

    def __init__(self, text: str, key: float) -> None:
        super().__init__(text)
        self._key = key

    def __lt__(self, other: QTableWidgetItem) -> bool:  # type: ignore[override]
        if isinstance(other, _NumericItem):
            return self._key < other._key
        return super().__lt__(other)


class TrackAnalysisWidget(QWidget):
    """Dock widget: track list, highlighted track, distance and intensity/FFT plots, exports.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose tracks layers are listed (layers read by the vollseg-dask reader carry
        their :class:`~vollseg_dask.io.tracks.TrackData`).
    parent : QWidget, optional

    Attributes
    ----------
    distance_figure, intensity_figure : matplotlib.figure.Figure
        The two plots (on ``FigureCanvasQTAgg`` canvases).
    track_table : QTableWidget
        One row per track: ID, class, divisions, frames, spots.
    current_track : int or None
        Selected track ID.
    analysis : TrackAnalysis or None
        Analysis of the selected track.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.data: TrackData | None = None
        self.tracks_layer: Any = None
        self.summary: pd.DataFrame | None = None
        self.current_track: int | None = None
        self.analysis: TrackAnalysis | None = None

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("tracks layer"))
        self.layer_combo = QComboBox()
        row.addWidget(self.layer_combo, 1)
        layout.addLayout(row)

        row = QHBoxLayout()
        self.dividing_only = QCheckBox("dividing only")
        row.addWidget(self.dividing_only)
        row.addStretch(1)
        self.view3d = QPushButton("3D view")
        self.view3d.setCheckable(True)
        row.addWidget(self.view3d)
        layout.addLayout(row)

        row = QHBoxLayout()
        row.addWidget(QLabel("intensity: moving average"))
        self.moving_average = QSpinBox()
        self.moving_average.setRange(1, 99)
        self.moving_average.setValue(1)
        self.moving_average.setToolTip("Centred moving average of the intensity (frames; 1 = none)")
        row.addWidget(self.moving_average)
        self.normalize = QComboBox()
        self.normalize.addItems(["zscore", "max", "none"])
        self.normalize.setToolTip("zscore: (x-mean)/std · max: (x-mean)/max|x-mean| · none")
        row.addWidget(self.normalize)
        layout.addLayout(row)

        self.track_table = QTableWidget(0, len(_COLUMNS))
        self.track_table.setHorizontalHeaderLabels(list(_COLUMNS))
        self.track_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.track_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.track_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.track_table.verticalHeader().setVisible(False)
        self.track_table.setSortingEnabled(True)
        self.track_table.setMinimumHeight(120)
        layout.addWidget(self.track_table, 1)

        self.distance_figure = Figure(figsize=(4, 2.6), layout="constrained")
        self.distance_canvas = FigureCanvasQTAgg(self.distance_figure)
        self.distance_canvas.setMinimumHeight(200)
        layout.addWidget(self.distance_canvas, 2)
        self.intensity_figure = Figure(figsize=(4, 3.6), layout="constrained")
        self.intensity_canvas = FigureCanvasQTAgg(self.intensity_figure)
        self.intensity_canvas.setMinimumHeight(280)
        layout.addWidget(self.intensity_canvas, 3)

        row = QHBoxLayout()
        self.save_plots_button = QPushButton("Save plots…")
        self.save_csv_button = QPushButton("Save CSV…")
        self.save_animation_button = QPushButton("Save animation…")
        for b in (self.save_plots_button, self.save_csv_button, self.save_animation_button):
            row.addWidget(b)
        layout.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        self.layer_combo.currentIndexChanged.connect(self._on_layer_chosen)
        self.dividing_only.toggled.connect(self._on_filter)
        self.track_table.itemSelectionChanged.connect(self._on_row_selected)
        self.moving_average.valueChanged.connect(lambda _=None: self._refresh())
        self.normalize.currentIndexChanged.connect(lambda _=None: self._refresh())
        self.view3d.toggled.connect(self._on_view3d)
        self.save_plots_button.clicked.connect(self._ask_save_plots)
        self.save_csv_button.clicked.connect(self._ask_save_csv)
        self.save_animation_button.clicked.connect(self._ask_save_animation)
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # -- data ------------------------------------------------------------------------------------
    def _candidate_layers(self) -> list[Any]:
        return [
            ly
            for ly in self.viewer.layers
            if isinstance(ly, napari.layers.Tracks) and isinstance(ly.metadata.get(METADATA_KEY), TrackData)
        ]

    @_guarded
    def _refresh_layers(self, _event: Any = None) -> None:
        names = [ly.name for ly in self._candidate_layers()]
        current = self.layer_combo.currentText()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        self.layer_combo.blockSignals(False)
        if current in names:
            self.layer_combo.setCurrentIndex(names.index(current))
        elif names and (self.tracks_layer is None or self.tracks_layer.name not in names):
            self.layer_combo.setCurrentIndex(0)
            self._on_layer_chosen()

    @_guarded
    def _on_layer_chosen(self, _index: int | None = None) -> None:
        name = self.layer_combo.currentText()
        if not name or name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        if layer is self.tracks_layer:
            return
        self.set_track_data(layer.metadata[METADATA_KEY], layer)

    def set_track_data(self, data: TrackData, layer: Any = None) -> None:
        """Analyse and list the tracks of ``data`` (shown by ``layer``, a napari tracks layer)."""
        data = with_lineage(data)
        assert data.spots is not None
        self.data = data
        self.tracks_layer = layer
        self.current_track = None
        self.analysis = None
        spots = data.spots
        events = division_events(spots, data.edges)
        classes = classify_tracks(spots, events)
        linked = spots[spots["track_id"] >= 0]
        g = linked.groupby("track_id")
        self.summary = classes.assign(
            start_t=g["t"].min().reindex(classes["track_id"]).to_numpy(),
            end_t=g["t"].max().reindex(classes["track_id"]).to_numpy(),
            n_spots=g.size().reindex(classes["track_id"]).to_numpy(),
        )
        self._fill_table()
        self._label_axes(data.ndim)
        n_div = int(self.summary["dividing"].sum())
        self.status.setText(f"{len(self.summary)} tracks ({n_div} dividing, {len(events)} divisions)")

    @_guarded
    def _on_filter(self, _checked: bool = False) -> None:
        self._fill_table()

    def _label_axes(self, ndim: int) -> None:
        """Name the viewer's axes t, (z,) y, x when they still carry napari's default numbers."""
        dims = self.viewer.dims
        names = ("t", "z", "y", "x") if ndim == 3 else ("t", "y", "x")
        if dims.ndim == len(names) and all(str(n).lstrip("-").isdigit() for n in dims.axis_labels):
            dims.axis_labels = names

    def _fill_table(self) -> None:
        table = self.track_table
        table.blockSignals(True)
        table.setSortingEnabled(False)
        table.setRowCount(0)
        if self.summary is not None:
            rows = self.summary[self.summary["dividing"]] if self.dividing_only.isChecked() else self.summary
            table.setRowCount(len(rows))
            for i, r in enumerate(rows.itertuples(index=False)):
                items = [
                    _NumericItem(str(int(r.track_id)), float(r.track_id)),
                    QTableWidgetItem(str(r.track_class)),
                    _NumericItem(str(int(r.n_divisions)), float(r.n_divisions)),
                    _NumericItem(f"{int(r.start_t)}–{int(r.end_t)}", float(r.start_t)),
                    _NumericItem(str(int(r.n_spots)), float(r.n_spots)),
                ]
                items[0].setData(Qt.ItemDataRole.UserRole, int(r.track_id))
                for j, it in enumerate(items):
                    table.setItem(i, j, it)
        table.setSortingEnabled(True)
        table.sortItems(0, Qt.SortOrder.AscendingOrder)
        table.resizeColumnsToContents()
        table.blockSignals(False)
        self._mark_current_row()

    def _mark_current_row(self) -> None:
        if self.current_track is None:
            return
        table = self.track_table
        for i in range(table.rowCount()):
            item = table.item(i, 0)
            if item is not None and item.data(Qt.ItemDataRole.UserRole) == self.current_track:
                table.blockSignals(True)
                table.selectRow(i)
                table.blockSignals(False)
                table.scrollToItem(item)
                return

    @_guarded
    def _on_row_selected(self) -> None:
        rows = self.track_table.selectionModel().selectedRows()
        if not rows:
            return
        item = self.track_table.item(rows[0].row(), 0)
        if item is not None:
            self.select_track(int(item.data(Qt.ItemDataRole.UserRole)))

    @_guarded
    def _refresh(self) -> None:
        if self.current_track is not None:
            self.select_track(self.current_track)

    # -- selection -------------------------------------------------------------------------------
    def select_track(self, track_id: int) -> TrackAnalysis:
        """Show track ``track_id``: highlight it, jump to its first frame, plot it.

        Returns
        -------
        TrackAnalysis
            Analysis of that track alone (also in :attr:`analysis`).
        """
        if self.data is None:
            raise InvalidDataError("no tracks loaded: open a run with the vollseg-dask reader first")
        one = select_track(self.data, int(track_id))
        ma = int(self.moving_average.value())
        self.analysis = analyze_tracks(
            one, moving_average=ma if ma > 1 else None, normalize=self.normalize.currentText()
        )
        self.current_track = int(track_id)
        self._highlight(one)
        self._plot()
        self._mark_current_row()
        tl = self.analysis.tracklets
        self.status.setText(
            f"track {int(track_id)}: {len(tl)} tracklet(s), {len(self.analysis.divisions)} division(s), "
            f"frames {int(tl['start_t'].min())}–{int(tl['end_t'].max())}"
        )
        return self.analysis

    def _time_axis(self, layer: Any) -> int:
        return self.viewer.dims.ndim - layer.ndim

    def _highlight(self, one: TrackData) -> None:
        arr, props, graph = to_napari_tracks(one)
        if HIGHLIGHT_LAYER in self.viewer.layers:
            self.viewer.layers.remove(HIGHLIGHT_LAYER)
        scale = translate = None
        if self.tracks_layer is not None and self.tracks_layer in self.viewer.layers:
            scale, translate = self.tracks_layer.scale, self.tracks_layer.translate
        n_frames = int(arr[:, 1].max() - arr[:, 1].min()) + 1
        layer = self.viewer.add_tracks(
            arr,
            properties=props,
            graph=graph or None,
            name=HIGHLIGHT_LAYER,
            tail_width=6,
            tail_length=max(n_frames, 1),
            head_length=0,
            color_by="tracklet_id",
            colormap="hsv",
            scale=scale,
            translate=translate,
            blending="translucent",
        )
        first = int(np.argmin(arr[:, 1]))
        axis = self._time_axis(layer)
        self.viewer.dims.set_current_step(axis, int(arr[first, 1]))
        # layer axes are (t, [z,] y, x); data columns are (tracklet, t, [z,] y, x)
        world = np.asarray(arr[first, 2:]) * np.asarray(layer.scale)[1:] + np.asarray(layer.translate)[1:]
        self.viewer.camera.center = tuple(float(v) for v in world[-3:])
        if self.tracks_layer is not None and self.tracks_layer in self.viewer.layers:
            self.viewer.layers.selection.active = self.tracks_layer

    def _plot(self) -> None:
        assert self.analysis is not None and self.current_track is not None
        plot_track_distance(self.analysis, self.current_track, self.distance_figure)
        plot_track_intensity(self.analysis, self.current_track, self.intensity_figure)
        self.distance_canvas.draw_idle()
        self.intensity_canvas.draw_idle()

    @_guarded
    def _on_view3d(self, checked: bool) -> None:
        self.viewer.dims.ndisplay = 3 if checked else 2
        self.view3d.setText("2D view" if checked else "3D view")

    # -- exports ---------------------------------------------------------------------------------
    def _need_track(self) -> tuple[int, TrackAnalysis]:
        if self.current_track is None or self.analysis is None:
            raise InvalidDataError("select a track first")
        return self.current_track, self.analysis

    def save_plots(
        self, directory: str | os.PathLike[str], formats: tuple[str, ...] = ("png", "svg"), dpi: int = 150
    ) -> list[Path]:
        """Write the two plots of the selected track as ``track_<id>_{distance,intensity}.<fmt>``."""
        tid, _ = self._need_track()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for kind, fig in (("distance", self.distance_figure), ("intensity", self.intensity_figure)):
            for f in formats:
                p = out / f"track_{tid}_{kind}.{f}"
                fig.savefig(p, dpi=dpi)
                paths.append(p)
        return paths

    def save_csv(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write the selected track's tables (time series, tracklets, divisions, spectra, MSD) as CSV."""
        tid, a = self._need_track()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in ("timeseries", "tracklets", "divisions", "intensity", "spectra", "msd"):
            p = out / f"track_{tid}_{name}.csv"
            a.table(name).to_csv(p, index=False)
            paths.append(p)
        return paths

    def save_animation(
        self, path: str | os.PathLike[str], *, fps: float = 4.0, canvas_only: bool = True
    ) -> Path:
        """Record the view at every frame of the selected track and save it (``.gif`` or ``.mp4``).

        The time slider is stepped from the track's first to its last frame and restored after.
        """
        tid, a = self._need_track()
        import imageio.v3 as iio

        p = Path(path)
        suffix = p.suffix.lower()
        if suffix not in (".gif", ".mp4"):
            raise InvalidDataError(f"animation must be .gif or .mp4, got {p.name!r}")
        if suffix == ".mp4":
            try:
                import imageio_ffmpeg  # noqa: F401
            except ImportError:
                raise MissingDependencyError(
                    "writing .mp4 needs imageio-ffmpeg (`pip install imageio-ffmpeg`); save a .gif instead"
                ) from None
        layer = self.viewer.layers[HIGHLIGHT_LAYER]
        axis = self._time_axis(layer)
        before = self.viewer.dims.current_step
        frames = []
        t0, t1 = int(a.tracklets["start_t"].min()), int(a.tracklets["end_t"].max())
        for t in range(t0, t1 + 1):
            self.viewer.dims.set_current_step(axis, t)
            img = np.asarray(self.viewer.screenshot(canvas_only=canvas_only, flash=False))
            frames.append(img[..., :3])
        self.viewer.dims.current_step = before
        p.parent.mkdir(parents=True, exist_ok=True)
        stack = np.stack(frames)
        if suffix == ".gif":
            iio.imwrite(p, stack, duration=1000.0 / fps, loop=0)
        else:
            iio.imwrite(p, stack, fps=fps)
        self.status.setText(f"track {tid}: {len(frames)} frames written to {p}")
        return p

    def _ask_directory(self, title: str) -> str | None:
        d = QFileDialog.getExistingDirectory(self, title)
        return d or None

    @_guarded
    def _ask_save_plots(self, _checked: bool = False) -> None:
        d = self._ask_directory("Folder for the plots")
        if d:
            self.status.setText(f"wrote {len(self.save_plots(d))} plot files to {d}")

    @_guarded
    def _ask_save_csv(self, _checked: bool = False) -> None:
        d = self._ask_directory("Folder for the CSV tables")
        if d:
            self.status.setText(f"wrote {len(self.save_csv(d))} CSV files to {d}")

    @_guarded
    def _ask_save_animation(self, _checked: bool = False) -> None:
        p, _ = QFileDialog.getSaveFileName(
            self, "Save animation", f"track_{self.current_track}.gif", "GIF (*.gif);;MP4 (*.mp4)"
        )
        if p:
            self.save_animation(p)

    def source(self) -> str | None:
        """File or folder the listed tracks were read from (None when set programmatically)."""
        if self.tracks_layer is None:
            return None
        return self.tracks_layer.metadata.get(SOURCE_KEY)
