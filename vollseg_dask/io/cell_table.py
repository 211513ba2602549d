"""The cell table: a Parquet dataset partitioned by time point, and the BTrackMate CSV.

Layout::

    TABLE_DIR/_manifest.json               what produced the table (store, labels, voxel size, config,
                                           and the image's calibration under "image")
    TABLE_DIR/t_000000/part-0.parquet      one row per (t, label), sorted by label; column t int64
    TABLE_DIR/t_000000/_SUCCESS            done-marker (JSON: rows, bytes, sha256 of the part file)
    TABLE_DIR/t_000001/...

Every time point is written into a hidden folder (``.t_000005.tmp-<pid>-<uuid8>``,
:mod:`vollseg_dask.io.atomic`) holding the part file and its marker, which is then renamed to
``t_000005``: a reader never sees a half-written time point, and a re-run skips every partition
folder that has its marker. Files and folders
starting with ``.`` or ``_`` are ignored by pyarrow's dataset discovery.

``t`` is a column of every part file (int64), and the partition folders are deliberately *not*
hive-named (``t=5``): pyarrow (and so ``pandas.read_parquet(TABLE_DIR)``) turns a hive key into a
categorical column and refuses a file column of the same name, so a hive layout cannot give plain
readers an integer ``t``. With this layout ``pandas.read_parquet(TABLE_DIR)`` returns ``t`` as
``int64`` (zero-padded names keep the rows in time order). Tables written before (``t=5`` folders,
no ``t`` in the files) are still read by :func:`read_cell_table` and by
:class:`vollseg_dask.io.spot_source.ParquetSpots`.

The schema is fixed by :func:`cell_table_schema` (it depends only on the channel count).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vollseg_dask.errors import ConfigError, InvalidDataError, StoreExistsError, StoreNotFoundError
from vollseg_dask.io.atomic import atomic_write_text, commit_dir, sibling_temp

__all__ = [
    "CELL_TABLE_VERSION",
    "BTRACKMATE_COLUMNS",
    "cell_table_schema",
    "cell_table_columns",
    "empty_cell_table",
    "init_table_dir",
    "check_replaceable",
    "done_times",
    "partition_name",
    "partition_time",
    "partition_dir",
    "time_point_marker",
    "write_time_point",
    "read_cell_table",
    "to_btrackmate",
    "write_btrackmate_csv",
]

CELL_TABLE_VERSION = 1
MANIFEST = "_manifest.json"
MARKER = "_SUCCESS"
PART = "part-0.parquet"

#: Header of the CSV that BTrackMate (the Fiji TrackMate fork of the VollSeg workflow) reads,
#: in VollSeg's order (``FijibTMcheckpoint*.csv``).
BTRACKMATE_COLUMNS: tuple[str, ...] = (
    "T", "X", "Y", "Z", "Label", "Perimeter", "Volume", "Intensity", "ExtentX", "ExtentY", "ExtentZ",
)

_BASE_FIELDS: tuple[tuple[str, str], ...] = (
    ("label", "uint64"),
    ("provisional_id", "int64"),
    ("centroid_z", "float64"),
    ("centroid_y", "float64"),
    ("centroid_x", "float64"),
    ("centroid_z_um", "float64"),
    ("centroid_y_um", "float64"),
    ("centroid_x_um", "float64"),
    ("volume_voxels", "int64"),
    ("volume_um3", "float64"),
    ("bbox_z0", "int64"),
    ("bbox_y0", "int64"),
    ("bbox_x0", "int64"),
    ("bbox_z1", "int64"),
    ("bbox_y1", "int64"),
    ("bbox_x1", "int64"),
    ("extent_z_um", "float64"),
    ("extent_y_um", "float64"),
    ("extent_x_um", "float64"),
    ("equivalent_diameter_um", "float64"),
    ("principal_axis_0_um", "float64"),
    ("principal_axis_1_um", "float64"),
    ("principal_axis_2_um", "float64"),
    ("surface_area_um2", "float64"),
    ("sphericity", "float64"),
    ("inside_tissue", "bool"),
    ("distance_to_boundary_um", "float64"),
    ("distance_error_um", "float64"),
)
_CHANNEL_STATS = ("mean", "total", "min", "max", "std")


def cell_table_columns(n_channels: int) -> list[tuple[str, str]]:
    """``(name, arrow type name)`` of every column except ``t``, in file order."""
    if not isinstance(n_channels, int) or n_channels < 0:
        raise ConfigError(f"n_channels must be a non-negative int, got {n_channels!r}")
    cols = list(_BASE_FIELDS)
    for c in range(n_channels):
        cols += [(f"{s}_intensity_c{c}", "float64") for s in _CHANNEL_STATS]
    return cols


def cell_table_schema(n_channels: int, *, with_t: bool = True):  # -> pa.Schema
    """The fixed Arrow schema of a cell table with ``n_channels`` intensity channels.

    Columns (units): ``t`` (int64, time index; partition key) · ``label`` (uint64) ·
    ``provisional_id`` (int64; the segmentation's coordinate-derived ID when the labels group
    records one, else equal to ``label``) · ``centroid_{z,y,x}`` (voxels) ·
    ``centroid_{z,y,x}_um`` (µm) · ``volume_voxels`` (int64) · ``volume_um3`` ·
    ``bbox_{z0,y0,x0,z1,y1,x1}`` (voxels, half-open, int64) · ``extent_{z,y,x}_um`` (bbox
    sides, µm) · ``equivalent_diameter_um`` · ``principal_axis_{0,1,2}_um`` (descending
    full axis lengths of the equal-moment ellipsoid) · ``surface_area_um2`` and ``sphericity``
    (NaN unless surface measurement was requested) · ``inside_tissue`` (bool, null without a
    tissue mask) · ``distance_to_boundary_um`` (µm, positive inside, NaN without a mask) ·
    ``distance_error_um`` (bound on its error; 0 when exact) · per channel ``k``:
    ``{mean,total,min,max,std}_intensity_ck`` (image units).
    """
    import pyarrow as pa

    types = {"uint64": pa.uint64(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
    fields = [pa.field("t", pa.int64(), nullable=False)] if with_t else []
    for name, typ in cell_table_columns(n_channels):
        fields.append(pa.field(name, types[typ], nullable=(name == "inside_tissue")))
    meta = {b"vollseg_dask.cell_table_version": str(CELL_TABLE_VERSION).encode()}
    return pa.schema(fields, metadata=meta)


def empty_cell_table(n_channels: int) -> pd.DataFrame:
    """A zero-row DataFrame with the cell-table columns and dtypes (without ``t``)."""
    data: dict[str, Any] = {}
    for name, typ in cell_table_columns(n_channels):
        data[name] = pd.array([], dtype="boolean") if typ == "bool" else np.zeros(0, dtype=typ)
    return pd.DataFrame(data)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (Path, os.PathLike)):
        return str(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _canonical(d: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=_json_default, sort_keys=True))


def init_table_dir(path: str | os.PathLike[str], manifest: Mapping[str, Any], *, overwrite: bool = False,
                   identity_keys: Iterable[str] | None = None) -> Path:
    """Create (or re-open for resuming) a cell-table folder.

    Parameters
    ----------
    path : path-like
        Table folder.
    manifest : mapping
        JSON-serialisable description of what produces the table.
    overwrite : bool
        Remove an existing table first.
    identity_keys : iterable of str, optional
        Manifest keys that must agree with an existing table for a re-run to resume into it
        (default: all keys).

    Raises
    ------
    StoreExistsError
        The folder holds a table made with a different manifest (or is not a cell table)
        and ``overwrite`` is False. The message names the keys that differ.
    """
    root = Path(path)
    new = _canonical(manifest)
    mpath = root / MANIFEST
    if root.exists() and overwrite:
        if root.is_dir() and not (mpath.is_file() or not any(root.iterdir())):
            raise StoreExistsError(f"{root} exists and is not a cell table: refusing to delete it")
        shutil.rmtree(root) if root.is_dir() else root.unlink()
    if root.exists():
        if not root.is_dir():
            raise StoreExistsError(f"{root} exists and is not a folder")
        if mpath.is_file():
            old = json.loads(mpath.read_text(encoding="utf-8"))
            keys = list(identity_keys) if identity_keys is not None else sorted(set(old) | set(new))
            diff = [k for k in keys if old.get(k) != new.get(k)]
            if diff:
                details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
                raise StoreExistsError(
                    f"cell table {root} was made with different settings ({details}); "
                    "pass overwrite=True (--overwrite) to replace it"
                )
            return root
        if any(root.iterdir()):
            raise StoreExistsError(f"{root} exists, is not empty and is not a cell table (no {MANIFEST})")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(mpath, json.dumps(new, indent=2, sort_keys=True))
    return root


def partition_name(t: int) -> str:
    """Folder name of time point ``t``'s partition (``t_000005``)."""
    return f"t_{int(t):06d}"


def partition_time(name: str) -> int | None:
    """Time point of a partition folder name: ``t_000005`` or the older hive ``t=5``; else None."""
    for prefix in ("t_", "t="):
        if name.startswith(prefix):
            try:
                return int(name[len(prefix):])
            except ValueError:
                return None
    return None


def _partitions(root: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for d in sorted(root.iterdir()):
        t = partition_time(d.name)
        if t is not None and d.is_dir() and (d / MARKER).is_file():
            out[t] = d
    return out


def check_replaceable(path: str | os.PathLike[str]) -> None:
    """Refuse to replace a folder that is not a cell table (so ``--overwrite`` never deletes other data)."""
    root = Path(path)
    if root.is_dir() and not ((root / MANIFEST).is_file() or not any(root.iterdir())):
        raise StoreExistsError(f"{root} exists and is not a cell table: refusing to delete it")
    if root.exists() and not root.is_dir():
        raise StoreExistsError(f"{root} exists and is not a folder")


def partition_dir(path: str | os.PathLike[str], t: int) -> Path:
    """The complete partition folder of time point ``t`` (either naming); ``t_NNNNNN`` if none is."""
    root = Path(path)
    found = _partitions(root).get(int(t)) if root.is_dir() else None
    return found if found is not None else root / partition_name(t)


def done_times(path: str | os.PathLike[str]) -> set[int]:
    """Time points whose partition is complete (has its done-marker)."""
    root = Path(path)
    if not root.is_dir():
        return set()
    return set(_partitions(root))


def time_point_marker(path: str | os.PathLike[str], t: int) -> dict[str, Any]:
    """The done-marker of time point ``t`` (rows, bytes, sha256, what it was measured from); {} if none."""
    root = Path(path)
    d = _partitions(root).get(int(t)) if root.is_dir() else None
    if d is None:
        return {}
    try:
        return json.loads((d / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _frame_to_arrow(df: pd.DataFrame, n_channels: int):
    import pyarrow as pa

    schema = cell_table_schema(n_channels, with_t=False)
    missing = [f.name for f in schema if f.name not in df.columns]
    extra = [c for c in df.columns if c not in schema.names and c != "t"]
    if missing or extra:
        raise InvalidDataError(f"cell table frame does not match the schema: missing {missing}, unexpected {extra}")
    if len(df) and not df["label"].is_unique:
        dup = df["label"][df["label"].duplicated()].iloc[0]
        raise InvalidDataError(f"cell table frame holds label {dup} twice")
    arrays = []
    for f in schema:
        col = df[f.name]
        if f.name == "inside_tissue":
            arrays.append(pa.array(col.astype("boolean"), type=pa.bool_(), from_pandas=True))
        else:
            if col.isna().any() and pa.types.is_integer(f.type):
                raise InvalidDataError(f"integer column {f.name!r} holds missing values")
            arrays.append(pa.array(col.to_numpy(), type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_time_point(path: str | os.PathLike[str], t: int, frame: pd.DataFrame, n_channels: int,
                     *, extra_marker: Mapping[str, Any] | None = None) -> Path:
    """Write one time point's rows atomically and mark it done.

    Parameters
    ----------
    path : path-like
        Table folder (made by :func:`init_table_dir`).
    t : int
        Time index (>= 0).
    frame : DataFrame
        Rows of this time point with every schema column (``t`` optional, ignored); sorted
        by label on write; labels must be unique.
    n_channels : int
        Channel count of the schema.
    extra_marker : mapping, optional
        Added to the done-marker JSON (e.g. timings).

    Returns
    -------
    Path
        The partition folder ``path/t_<t, 6 digits>`` (:func:`partition_name`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(path)
    if not root.is_dir():
        raise StoreNotFoundError(f"cell table folder {root} does not exist (call init_table_dir first)")
    if not isinstance(t, int | np.integer) or t < 0:
        raise ConfigError(f"time index must be a non-negative int, got {t!r}")
    t = int(t)
    table = _frame_to_arrow(frame.sort_values("label", kind="stable"), n_channels)
    table = table.add_column(0, pa.field("t", pa.int64(), nullable=False), [pa.array(np.full(table.num_rows, t, np.int64))])
    final = root / partition_name(t)
    tmp = sibling_temp(final)
    tmp.mkdir()
    try:
        part = tmp / PART
        pq.write_table(table, part, compression="zstd")
        digest = hashlib.sha256(part.read_bytes()).hexdigest()
        marker = {"t": t, "rows": table.num_rows, "bytes": part.stat().st_size, "sha256": digest,
                  **_canonical(extra_marker or {})}
        (tmp / MARKER).write_text(json.dumps(marker, sort_keys=True), encoding="utf-8")
        # a stale partition (no marker, or being replaced) is moved aside, then swapped
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_cell_table(path: str | os.PathLike[str], t: int | Iterable[int] | None = None,
                    columns: list[str] | None = None) -> pd.DataFrame:
    """Read a cell table (all or some time points) as a DataFrame sorted by ``(t, label)``.

    Parameters
    ----------
    path : path-like
        Table folder.
    t : int or iterable of int, optional
        Time points to read (default all complete ones).
    columns : list of str, optional
        Columns to read (``t`` and ``label`` are always included).
    """
    import pyarrow as pa
    import pyarrow.dataset as ds

    root = Path(path)
    if not (root / MANIFEST).is_file():
        raise StoreNotFoundError(f"no cell table at {root} (missing {MANIFEST})")
    done = sorted(done_times(root))
    if t is not None:
        wanted = {int(t)} if isinstance(t, int | np.integer) else {int(v) for v in t}
        absent = sorted(wanted - set(done))
        if absent:
            raise StoreNotFoundError(f"time point(s) {absent} not in cell table {root}; it has {done}")
        done = sorted(wanted)
    n_channels = int(json.loads((root / MANIFEST).read_text(encoding="utf-8")).get("n_channels", 0))
    schema = cell_table_schema(n_channels)
    if not done:
        empty = empty_cell_table(n_channels)
        empty.insert(0, "t", np.zeros(0, np.int64))
        return empty if columns is None else empty[["t", "label", *[c for c in columns if c not in ("t", "label")]]]
    parts = _partitions(root)
    cols = None if columns is None else ["t", "label", *[c for c in columns if c not in ("t", "label")]]
    new = [str(parts[v] / PART) for v in done if not parts[v].name.startswith("t=")]
    old = [str(parts[v] / PART) for v in done if parts[v].name.startswith("t=")]
    tables = []
    if new:
        tables.append(ds.dataset(new, schema=schema, format="parquet").to_table(columns=cols))
    if old:  # tables written before t was a file column: t from the hive folder name
        part = ds.partitioning(pa.schema([("t", pa.int64())]), flavor="hive")
        tables.append(ds.dataset(old, schema=schema, format="parquet", partitioning=part,
                                 partition_base_dir=str(root)).to_table(columns=cols))
    df = pa.concat_tables(tables).to_pandas()
    return df.sort_values(["t", "label"], kind="stable").reset_index(drop=True)


def to_btrackmate(cells: pd.DataFrame, *, inside_tissue_only: bool = False) -> pd.DataFrame:
    """Map cell-table rows to the columns of BTrackMate's ``FijibTMcheckpoint*.csv``.

    VollSeg writes that CSV from ``skimage.measure.regionprops`` on each time point
    (``CreateTrackCheckpoint``); every column is a quantity we measure, computed exactly as
    VollSeg defines it (voxel units throughout):

    ======== ==============================================================
    T        ``t``
    X, Y, Z  ``int(centroid_x)``, ``int(centroid_y)``, ``int(centroid_z)`` (truncated, voxels)
    Label    ``label``
    Perimeter ``2*pi*r`` with ``r = (3*Volume / (4*pi))**(1/3)``: circumference of the sphere
             whose volume is the bounding-box volume (VollSeg's definition; not a true perimeter)
    Volume   bounding-box volume ``ExtentX * ExtentY * ExtentZ`` (voxels), as VollSeg writes
    Intensity voxel count of the object (``volume_voxels``); VollSeg fills this column with
             ``np.sum(prop.image)``, the object's voxel count, not an image intensity
    ExtentX/Y/Z bounding-box sides ``bbox_x1 - bbox_x0`` etc. (voxels)
    ======== ==============================================================

    VollSeg zeroes label voxels outside the tissue mask before measuring; we measure whole
    cells and, with ``inside_tissue_only``, keep the rows whose centroid voxel is tissue.
    """
    need = ["t", "label", "centroid_x", "centroid_y", "centroid_z", "volume_voxels",
            "bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1"]
    if inside_tissue_only:
        need.append("inside_tissue")
    missing = [c for c in need if c not in cells.columns]
    if missing:
        raise InvalidDataError(f"cannot build the BTrackMate CSV: cell table lacks columns {missing}")
    df = cells
    if inside_tissue_only:
        flag = df["inside_tissue"]
        if flag.isna().any():
            raise InvalidDataError(
                "inside_tissue_only requested but the cell table has no tissue flag (measure with a tissue mask)"
            )
        df = df[flag.astype(bool).to_numpy()]
    ex = (df["bbox_x1"] - df["bbox_x0"]).to_numpy(np.int64)
    ey = (df["bbox_y1"] - df["bbox_y0"]).to_numpy(np.int64)
    ez = (df["bbox_z1"] - df["bbox_z0"]).to_numpy(np.int64)
    bbox_vol = ex * ey * ez
    radius = np.cbrt(3.0 * bbox_vol / (4.0 * math.pi))
    out = pd.DataFrame({
        "T": df["t"].to_numpy(np.int64),
        # int() truncates toward zero, as VollSeg does; centroids are >= 0.
        "X": np.trunc(df["centroid_x"].to_numpy(np.float64)).astype(np.int64),
        "Y": np.trunc(df["centroid_y"].to_numpy(np.float64)).astype(np.int64),
        "Z": np.trunc(df["centroid_z"].to_numpy(np.float64)).astype(np.int64),
        "Label": df["label"].to_numpy(np.uint64),
        "Perimeter": 2.0 * math.pi * radius,
        "Volume": bbox_vol,
        "Intensity": df["volume_voxels"].to_numpy(np.int64),
        "ExtentX": ex,
        "ExtentY": ey,
        "ExtentZ": ez,
    })
    return out[list(BTRACKMATE_COLUMNS)]


def write_btrackmate_csv(table: str | os.PathLike[str], path: str | os.PathLike[str], *,
                         inside_tissue_only: bool = False, overwrite: bool = True) -> int:
    """Stream a cell table, one time point at a time, into BTrackMate's CSV (see :func:`to_btrackmate`).

    Written to a temporary sibling and renamed, so an interrupted export leaves no partial
    CSV. Returns the number of rows written.
    """
    src = Path(table)
    dst = Path(path)
    if dst.exists() and not overwrite:
        raise StoreExistsError(f"{dst} exists; pass overwrite=True to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    need = ["centroid_x", "centroid_y", "centroid_z", "volume_voxels", "bbox_z0", "bbox_y0", "bbox_x0",
            "bbox_z1", "bbox_y1", "bbox_x1", "inside_tissue"]
    tmp = sibling_temp(dst)
    rows = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(",".join(BTRACKMATE_COLUMNS) + "\n")
            for t in sorted(done_times(src)):
                part = to_btrackmate(read_cell_table(src, t=t, columns=need), inside_tissue_only=inside_tissue_only)
                part.to_csv(fh, header=False, index=False, lineterminator="\n")
                rows += len(part)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows
