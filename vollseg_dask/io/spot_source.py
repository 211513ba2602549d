"""Spot tables for tracking, read one frame at a time.

A *spot source* lists the frames of a spot table and returns the rows of one frame on demand, so
that the tracker never holds more than a window of frames. Sources:

- :class:`DataFrameSpots` — an in-memory pandas table (column ``t``);
- :class:`ParquetSpots` — a Parquet dataset partitioned by ``t`` (``DIR/t_<int>/*.parquet`` as the
  cell table of :mod:`vollseg_dask.io.cell_table` writes it, or hive ``DIR/t=<int>/*.parquet``;
  files and folders starting with ``.`` or ``_`` are ignored); only the requested frame's files
  are read;
- :func:`open_spots` — also a single ``.parquet`` file, a CSV of spots, a TrackMate XML or a GEFF.

A source may carry ``image``: the calibration of the image the spots came from
(:mod:`vollseg_dask.io.calibration`; from a cell table's manifest, a TrackMate XML's ``ImageData``
or a GEFF's axes), which :func:`vollseg_dask.tracking.track` uses for units when its config sets none.

Column names are normalised by :func:`normalize_spot_columns`: ``FRAME``/``frame`` become ``t``,
``POSITION_X/Y/Z`` (TrackMate) or ``centroid_{x,y,z}_um`` (cell table) become ``x``, ``y``,
``z``, ``ID`` becomes ``spot_id``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from vollseg_dask.errors import InvalidDataError, StoreNotFoundError

__all__ = [
    "SpotSource",
    "DataFrameSpots",
    "ParquetSpots",
    "open_spots",
    "normalize_spot_columns",
    "read_spot_table",
]

_RENAMES: tuple[tuple[str, str], ...] = (
    ("FRAME", "t"),
    ("frame", "t"),
    ("T", "t"),
    ("POSITION_X", "x"),
    ("POSITION_Y", "y"),
    ("POSITION_Z", "z"),
    ("position_x", "x"),
    ("position_y", "y"),
    ("position_z", "z"),
    ("centroid_x_um", "x"),
    ("centroid_y_um", "y"),
    ("centroid_z_um", "z"),
    ("X", "x"),
    ("Y", "y"),
    ("Z", "z"),
    ("ID", "spot_id"),
    ("Label", "label"),
)


def normalize_spot_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Rename known spot-column spellings to ``t``, ``x``, ``y``, ``z``, ``spot_id``, ``label``.

    A rename happens only where the target name is absent, so an explicit ``x`` always wins over
    ``centroid_x_um``. A 2D table keeps no ``z``.
    """
    rename: dict[str, str] = {}
    present = set(df.columns)
    for src, dst in _RENAMES:
        if src in present and dst not in present and dst not in rename.values():
            rename[src] = dst
    return df.rename(columns=rename) if rename else df


class SpotSource(Protocol):
    """Frames of a spot table, read one at a time."""

    @property
    def frames(self) -> list[int]:
        """Sorted frame indices that hold spots."""
        ...

    @property
    def columns(self) -> list[str]:
        """Column names (normalised), ``t`` included."""
        ...

    def read(self, t: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Rows of frame ``t`` (column ``t`` as int64), in stored order."""
        ...


class DataFrameSpots:
    """A spot source over an in-memory table."""

    def __init__(self, df: pd.DataFrame) -> None:
        df = normalize_spot_columns(df)
        if "t" not in df.columns:
            raise InvalidDataError(f"spot table has no frame column 't' (has {list(df.columns)})")
        from vollseg_dask.checks import check_frames, numeric_column

        if df["t"].isna().any():
            raise InvalidDataError("spot table column 't' holds NaN")
        t = check_frames(df["t"], "spot table column 't'")
        df = df.assign(t=t)
        for col in ("x", "y", "z"):
            if col in df.columns and df[col].dtype.kind not in "iuf":
                df = df.assign(**{col: numeric_column(df[col], f"spot table column {col!r}")})
        self._df = df.reset_index(drop=True)
        order = np.argsort(t, kind="stable")
        uniq, first = np.unique(t[order], return_index=True)
        bounds = np.r_[first, t.size]
        self._rows = {int(f): order[bounds[i] : bounds[i + 1]] for i, f in enumerate(uniq)}
        self.image: dict[str, Any] | None = None

    @property
    def frames(self) -> list[int]:
        return sorted(self._rows)

    @property
    def columns(self) -> list[str]:
        return list(self._df.columns)

    def read(self, t: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
        rows = self._rows.get(int(t))
        if rows is None:
            return self._df.iloc[:0] if columns is None else self._df.loc[:, list(columns)].iloc[:0]
        out = self._df.iloc[rows] if columns is None else self._df.iloc[rows][list(columns)]
        out = out.reset_index(drop=True)
        return out.assign(t=out["t"].astype(np.int64)) if "t" in out.columns else out


def _visible(p: Path) -> bool:
    return not p.name.startswith((".", "_"))


class ParquetSpots:
    """A spot source over a Parquet dataset partitioned by ``t`` (``DIR/t_<int>/`` or ``DIR/t=<int>/``).

    ``image`` is the calibration recorded in a cell table's ``_manifest.json`` (for tables written
    before it was recorded, read from the store the manifest names), else None.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from vollseg_dask.io.cell_table import partition_time

        root = Path(path)
        if not root.is_dir():
            raise StoreNotFoundError(f"spot dataset not found: {root}")
        parts: dict[int, list[Path]] = {}
        for d in sorted(root.iterdir()):
            if not (d.is_dir() and _visible(d) and d.name.startswith(("t=", "t_"))):
                continue
            t = partition_time(d.name)
            if t is None:
                raise InvalidDataError(f"partition folder {d} is not named t_<integer> or t=<integer>")
            files = sorted(f for f in d.iterdir() if f.is_file() and _visible(f) and f.suffix == ".parquet")
            if files:
                parts[t] = files
        if not parts:
            raise StoreNotFoundError(f"{root} holds no t=<int>/*.parquet partitions")
        self.root = root
        self._parts = parts
        self.image = _manifest_calibration(root)

    @property
    def frames(self) -> list[int]:
        return sorted(self._parts)

    @property
    def columns(self) -> list[str]:
        import pyarrow.parquet as pq

        names = [n for n in pq.read_schema(self._parts[self.frames[0]][0]).names if n != "t"]
        return list(normalize_spot_columns(pd.DataFrame(columns=["t", *names])).columns)

    def read(self, t: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = self._parts.get(int(t), [])
        tables = [pq.read_table(f) for f in files]
        if not tables:
            return pd.DataFrame({c: [] for c in (columns or self.columns)})
        table = pa.concat_tables(tables, promote_options="default")
        df = table.to_pandas()
        if "t" in df.columns:
            if len(df) and not (df["t"] == t).all():
                raise InvalidDataError(f"partition t={t} of {self.root} holds rows of another frame")
            df = df.drop(columns="t")
        df.insert(0, "t", np.full(len(df), int(t), np.int64))
        df = normalize_spot_columns(df)
        return df if columns is None else df.loc[:, list(columns)]


def _manifest_calibration(root: Path) -> dict[str, Any] | None:
    import json

    mpath = root / "_manifest.json"
    if not mpath.is_file():
        return None
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(manifest.get("image"), dict):
        return manifest["image"]
    if manifest.get("store"):
        from vollseg_dask.io.calibration import read_calibration

        return read_calibration(manifest["store"], manifest.get("labels"))
    return None


def read_spot_table(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a CSV, single Parquet file or TrackMate XML of spots into memory.

    Returns
    -------
    spots : DataFrame
        Normalised columns (:func:`normalize_spot_columns`).
    tracker_settings : dict
        TrackMate's flat LAP settings for an XML input, else empty.
    """
    p = Path(path)
    if not p.is_file():
        raise StoreNotFoundError(f"spot table not found: {p}")
    suffix = p.suffix.lower()
    settings: dict[str, Any] = {}
    if suffix == ".csv":
        df = pd.read_csv(p)
        # TrackMate's CSV export has 3 extra header rows (names, short names, units) after the first.
        if "POSITION_X" in df.columns and len(df) and not _is_number(df["POSITION_X"].iloc[0]):
            df = pd.read_csv(p, skiprows=[1, 2, 3])
        df = df.drop(columns=[c for c in df.columns if str(c).startswith("Unnamed")])
    elif suffix == ".parquet":
        df = pd.read_parquet(p)
    elif suffix == ".xml":
        df, settings, _ = _read_xml_spots(p)
    else:
        raise InvalidDataError(f"cannot read spots from {p}: expected a folder, .csv, .parquet or .xml")
    return normalize_spot_columns(df), settings


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _read_xml_spots(path: Path) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any] | None]:
    from vollseg_dask.io.trackmate_xml import read_trackmate_xml

    data = read_trackmate_xml(path)
    spots = data.spots
    if data.ndim == 2 and "z" in spots.columns:
        spots = spots.drop(columns="z")  # a 2D movie: TrackMate writes z = 0
    if "VISIBILITY" in spots.columns:
        spots = spots[spots["VISIBILITY"].fillna(1) != 0]
    img = data.image_data
    calibration = None
    if img:
        calibration = {
            "store": str(Path(str(img.get("folder", ""))) / str(img.get("filename", ""))) if img.get("filename") else None,
            "labels": None,
            "shape": {a: int(img[k]) for a, k in (("t", "nframes"), ("z", "nslices"), ("y", "height"), ("x", "width"))
                      if k in img},
            "voxel_size": [float(img.get(k, 1.0)) for k in ("voxeldepth", "pixelheight", "pixelwidth")],
            "spatial_unit": data.spatial_units,
            "frame_interval": float(data.frame_interval),
            "time_unit": data.time_units,
        }
    return spots.drop(columns=[c for c in ("name",) if c in spots.columns]), dict(
        data.settings.get("tracker_settings", {})
    ), calibration


def open_spots(obj: pd.DataFrame | str | os.PathLike[str]) -> tuple[SpotSource, dict[str, Any]]:
    """A spot source for a DataFrame, a partitioned Parquet folder, or a CSV/Parquet/XML file.

    Returns
    -------
    source : SpotSource
    tracker_settings : dict
        TrackMate's LAP settings when ``obj`` is a TrackMate XML, else empty.
    """
    if isinstance(obj, pd.DataFrame):
        return DataFrameSpots(obj), {}
    p = Path(obj)
    from vollseg_dask.io.geff import is_geff

    if is_geff(p):
        from vollseg_dask.io.geff import read_geff

        g = read_geff(p)
        src = DataFrameSpots(g.spots)
        src.image = g.image
        return src, {}
    if p.is_dir():
        return ParquetSpots(p), {}
    if p.suffix.lower() == ".xml" and p.is_file():
        df, settings, calibration = _read_xml_spots(p)
        src = DataFrameSpots(normalize_spot_columns(df))
        src.image = calibration
        return src, settings
    df, settings = read_spot_table(p)
    return DataFrameSpots(df), settings
