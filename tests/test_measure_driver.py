"""The measurement driver on OME-Zarr stores: tiled table == whole-volume references, resume,
atomic partitions, tissue distance, provisional IDs, surfaces, BTrackMate CSV and the CLI."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import ndimage as ndi
from skimage.measure import regionprops, regionprops_table

from vollseg_dask.errors import (
    ConfigError,
    DTypeError,
    InvalidDataError,
    StoreExistsError,
    StoreNotFoundError,
)
from vollseg_dask.io.cell_table import (
    BTRACKMATE_COLUMNS,
    cell_table_schema,
    done_times,
    read_cell_table,
    to_btrackmate,
)
from vollseg_dask.io.omezarr import create_labels, open_labels, write_image
from vollseg_dask.kernels.distance import auto_tissue_mask, nearest_voxel, signed_distance
from vollseg_dask.kernels.regionprops import surface_area
from vollseg_dask.measure import MeasureConfig, measure_cells
from vollseg_dask.runtime import ClusterConfig, get_client

VOXEL = (1.5, 0.5, 0.4)
T, C, Z, Y, X = 2, 2, 14, 30, 34
THREADS = ClusterConfig(kind="threads", n_workers=2)


def _labels(rng):
    zz, yy, xx = np.indices((Z, Y, X))
    out = np.zeros((T, Z, Y, X), np.uint32)
    for t in range(T):
        lab = out[t]
        for k in rng.choice(np.arange(1, 5000), size=25, replace=False):
            c = rng.uniform(0, (Z, Y, X))
            r = rng.uniform(1.2, 4.0, size=3)
            ball = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
            lab[ball & (lab == 0)] = k
        # One object across the 8-block corner at (5, 14, 18) of the (5, 14, 9) block grid.
        big = ((zz - 5.2) / 3.5) ** 2 + ((yy - 13.7) / 6.0) ** 2 + ((xx - 17.6) / 7.0) ** 2 <= 1
        lab[big] = 77_777 + t
    return out


def _tissue():
    pts = np.indices((Z, Y, X)).astype(float) * np.asarray(VOXEL)[:, None, None, None]
    q = ((pts[0] - 10.0) / 8.0) ** 2 + ((pts[1] - 7.5) / 6.5) ** 2 + ((pts[2] - 6.8) / 5.5) ** 2
    return q <= 1.0


def _write_labels(store, name, data, dtype="uint32"):
    arr = create_labels(store, name, dtype=dtype, overwrite=True)
    lab = open_labels(store, name, 0)
    full = data
    if "c" in lab.axes:
        full = np.broadcast_to(np.expand_dims(data, lab.axes.index("c")), arr.shape)
    arr[...] = full
    return arr


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(21)
    root = tmp_path_factory.mktemp("measure") / "img.zarr"
    img = rng.integers(0, 4000, (T, C, Z, Y, X)).astype(np.uint16)
    img[:, 0][:, _tissue()] += 3000  # channel 0 shows the tissue
    write_image(root, img, axes="tczyx", scale=(2.0, 1.0, *VOXEL), chunks=(1, 1, 5, 7, 9), n_levels=3)
    lab = _labels(rng)
    _write_labels(root, "cells", lab)
    _write_labels(root, "tissue", np.broadcast_to(_tissue(), (T, Z, Y, X)).astype(np.uint8), dtype="uint8")
    return root, img, lab


def _measure(store_root, out, **kw):
    with get_client(kw.pop("cluster", THREADS)):
        return measure_cells(store_root, out, **kw)


def test_table_equals_whole_volume_references(store, tmp_path):
    root, img, lab = store
    res = _measure(root, tmp_path / "tab", labels="cells", block=(5, 14, 9))
    assert res.n_rows == sum(np.count_nonzero(np.unique(lab[t])) for t in range(T))
    df = read_cell_table(tmp_path / "tab")
    assert not df.duplicated(["t", "label"]).any()
    for t in range(T):
        rows = df[df["t"] == t]
        labels = np.unique(lab[t][lab[t] > 0])
        np.testing.assert_array_equal(rows["label"].to_numpy(), labels)  # label set per t
        np.testing.assert_array_equal(rows["volume_voxels"], np.bincount(lab[t].ravel())[labels])
        com = np.array(ndi.center_of_mass(np.ones(lab[t].shape), lab[t], labels))
        np.testing.assert_allclose(rows[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(), com, rtol=1e-12)
        ref = pd.DataFrame(regionprops_table(
            lab[t].astype(np.int64), np.moveaxis(img[t], 0, -1), spacing=VOXEL,
            properties=("label", "bbox", "axis_major_length", "axis_minor_length", "intensity_mean", "intensity_max"),
        ))
        for i, col in enumerate(["bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1"]):
            np.testing.assert_array_equal(rows[col].to_numpy(), ref[f"bbox-{i}"].to_numpy())
        np.testing.assert_allclose(rows["principal_axis_0_um"], ref["axis_major_length"], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(rows["principal_axis_2_um"], ref["axis_minor_length"], rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(rows["mean_intensity_c1"], ref["intensity_mean-1"], rtol=1e-12)
        np.testing.assert_array_equal(rows["max_intensity_c0"], ref["intensity_max-0"])
        np.testing.assert_array_equal(rows["provisional_id"].to_numpy(), labels.astype(np.int64))
        assert rows["inside_tissue"].isna().all() and rows["distance_to_boundary_um"].isna().all()
        assert rows["surface_area_um2"].isna().all()
    # Fixed schema.
    import pyarrow.parquet as pq

    schema = pq.read_schema(tmp_path / "tab" / "t_000000" / "part-0.parquet")
    assert schema.remove_metadata() == cell_table_schema(2).remove_metadata()
    # plain pandas reads the table with an integer t (no hive categorical)
    plain = pd.read_parquet(tmp_path / "tab")
    assert plain["t"].dtype == np.int64 and sorted(plain["t"].unique()) == list(range(T))
    assert (plain["t"] - 1).min() == -1


def test_block_shape_does_not_change_the_table(store, tmp_path):
    root, _, _ = store
    _measure(root, tmp_path / "a", block=(5, 7, 9))
    _measure(root, tmp_path / "b", block=(10, 21, 27))
    _measure(root, tmp_path / "c", block=(5, 7, 9))
    a, b = read_cell_table(tmp_path / "a"), read_cell_table(tmp_path / "b")
    pd.testing.assert_frame_equal(a, b)  # uint16 intensities: every sum is exact in int64
    for t in range(T):
        digest = [hashlib.sha256((tmp_path / d / f"t_{t:06d}" / "part-0.parquet").read_bytes()).hexdigest()
                  for d in ("a", "b", "c")]
        assert len(set(digest)) == 1


def test_resume_skips_done_time_points_and_refuses_other_settings(store, tmp_path):
    root, _, _ = store
    out = tmp_path / "tab"
    first = _measure(root, out, times=[1])
    assert set(first.rows) == {1} and done_times(out) == {1}
    stamp = (out / "t_000001" / "_SUCCESS").stat().st_mtime_ns
    # A crashed write leaves only a hidden temporary folder: invisible to readers, redone on resume.
    junk = out / ".t_000000.tmp-deadbeef"
    junk.mkdir()
    (junk / "part-0.parquet").write_bytes(b"partial")
    assert read_cell_table(out)["t"].unique().tolist() == [1]
    second = _measure(root, out)
    assert second.skipped == [1] and set(second.rows) == {0}
    assert (out / "t_000001" / "_SUCCESS").stat().st_mtime_ns == stamp
    assert done_times(out) == {0, 1}
    assert _measure(root, out).rows == {}
    with pytest.raises(StoreExistsError, match="channels"):
        _measure(root, out, channels=[0])
    again = _measure(root, out, channels=[0], overwrite=True)
    assert set(again.rows) == {0, 1}
    assert "mean_intensity_c1" not in read_cell_table(out).columns


def test_exact_tissue_distance_matches_brute_force(store, tmp_path):
    root, _, lab = store
    _measure(root, tmp_path / "tab", tissue_mask="tissue")
    df = read_cell_table(tmp_path / "tab")
    mask = _tissue()
    field = signed_distance(mask, VOXEL)
    vox = nearest_voxel(df[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(), mask.shape)
    coords = np.indices(mask.shape).reshape(3, -1).T * np.asarray(VOXEL)
    for (d, ins), v in zip(df[["distance_to_boundary_um", "inside_tissue"]].to_numpy(), vox, strict=True):
        inside = bool(mask[tuple(v)])
        other = coords[mask.ravel() != inside]
        brute = np.sqrt(((other - v * np.asarray(VOXEL)) ** 2).sum(axis=1)).min()
        assert ins == inside
        assert d == pytest.approx(brute if inside else -brute, rel=1e-12)
    np.testing.assert_allclose(df["distance_to_boundary_um"], field[tuple(vox.T)])
    assert (df["distance_error_um"] == 0).all()
    assert df["inside_tissue"].any() and (~df["inside_tissue"].astype(bool)).any()


def test_pooled_tissue_distance_stays_within_its_bound(store, tmp_path):
    root, _, _ = store
    exact = _measure(root, tmp_path / "exact", tissue_mask="tissue")
    pooled = _measure(root, tmp_path / "pooled", tissue_mask="tissue", config=MeasureConfig(distance_max_voxels=900))
    assert exact.n_rows == pooled.n_rows
    a, b = read_cell_table(tmp_path / "exact"), read_cell_table(tmp_path / "pooled")
    err = b["distance_error_um"].to_numpy()
    diff = np.abs(a["distance_to_boundary_um"].to_numpy() - b["distance_to_boundary_um"].to_numpy())
    assert (diff <= err + 1e-9).all()
    assert (err > 0).any()  # the coarse path was really used
    refined = err == 0  # cells in boxes cut by the boundary: exact
    assert refined.any()
    np.testing.assert_array_equal(diff[refined], 0.0)
    np.testing.assert_array_equal(a["inside_tissue"], b["inside_tissue"])


def test_auto_tissue_mask_is_stored_as_labels_and_reused(store, tmp_path):
    root, img, _ = store
    cfg = MeasureConfig(tissue_name="auto_tissue")
    cfg.tissue.sigma_um = 1.0
    _measure(root, tmp_path / "tab", tissue_mask="auto", config=cfg)
    lab = open_labels(root, "auto_tissue", 0)
    stored = np.asarray(lab.data[:, 0])
    for t in range(T):
        ref, _ = auto_tissue_mask(img[t, 0], VOXEL, 1.0)
        np.testing.assert_array_equal(stored[t] != 0, ref)
    # Its pyramid holds only values of level 0 (nearest picking).
    lv1 = np.asarray(open_labels(root, "auto_tissue", 1).data[:, 0])
    np.testing.assert_array_equal(lv1, stored[:, :, ::2, ::2])
    df = read_cell_table(tmp_path / "tab")
    assert df["inside_tissue"].notna().all()
    before = (root / "labels" / "auto_tissue" / "zarr.json").stat().st_mtime_ns
    _measure(root, tmp_path / "tab2", tissue_mask="auto", config=cfg)
    assert (root / "labels" / "auto_tissue" / "zarr.json").stat().st_mtime_ns == before  # reused


def test_auto_tissue_mask_on_a_coarser_level(store):
    from vollseg_dask.tissue import TissueConfig, make_tissue_mask

    root, img, _ = store
    info = make_tissue_mask(root, name="coarse_tissue", config=TissueConfig(sigma_um=1.0, max_voxels=4000))
    assert info["level"] >= 1 and not info["reused"]
    k = info["level"]
    level0 = np.asarray(open_labels(root, "coarse_tissue", 0).data[:, 0]) != 0
    coarse = np.asarray(open_labels(root, "coarse_tissue", k).data[:, 0]) != 0
    # Level 0 is the working-level mask replicated 2**k times in y and x.
    yi = np.arange(Y) >> k
    xi = np.arange(X) >> k
    np.testing.assert_array_equal(level0, coarse[:, :, yi][:, :, :, xi])


def test_provisional_ids_from_the_labels_group(store, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zarr

    root, _, lab = store
    _write_labels(root, "withprov", lab)
    rows = [(t, int(v), int(v) * 1000 + t) for t in range(T) for v in np.unique(lab[t]) if v]
    table = pa.table({"t": [r[0] for r in rows], "label": pa.array([r[1] for r in rows], pa.uint64()),
                      "provisional_id": [r[2] for r in rows]})
    pq.write_table(table, root / "labels" / "withprov" / "provisional_ids.parquet")
    group = zarr.open_group(str(root / "labels" / "withprov"), mode="a")
    group.attrs["vollseg"] = {"provisional_id": "provisional_ids.parquet"}
    _measure(root, tmp_path / "tab", labels="withprov")
    df = read_cell_table(tmp_path / "tab")
    np.testing.assert_array_equal(df["provisional_id"], df["label"].astype(np.int64) * 1000 + df["t"])
    # A table that lacks a label is an error naming it.
    partial = pd.DataFrame({"t": [0], "label": [int(np.unique(lab[0])[1])], "provisional_id": [5]})
    with pytest.raises(InvalidDataError, match="lacks labels"):
        _measure(root, tmp_path / "bad", labels="withprov", provisional_ids=partial)


def test_surface_area_and_sphericity(store, tmp_path):
    root, _, lab = store
    _measure(root, tmp_path / "tab", surface=True, times=[0], channels=[])
    df = read_cell_table(tmp_path / "tab")
    for row in df.sample(8, random_state=0).itertuples(index=False):
        ref = surface_area(lab[0] == row.label, VOXEL)
        assert row.surface_area_um2 == pytest.approx(ref, rel=1e-12)
        sph = math.pi ** (1 / 3) * (6 * row.volume_um3) ** (2 / 3) / ref
        assert row.sphericity == pytest.approx(sph, rel=1e-12)


def test_btrackmate_csv_follows_vollseg_definitions(store, tmp_path, shared_data):
    root, _, lab = store
    csv = tmp_path / "FijibTMcheckpoint.csv"
    _measure(root, tmp_path / "tab", tissue_mask="tissue", csv_btrackmate=csv)
    reference = shared_data / "trackmate_xml" / "napatrackmater" / "FijibTMcheckpointRaw.csv"
    ref_header = reference.read_text(encoding="utf-8").splitlines()[0].split(",")
    ours = pd.read_csv(csv)
    assert list(ours.columns) == ref_header == list(BTRACKMATE_COLUMNS)
    # The reference file obeys the definitions we reproduce: Volume = bbox volume,
    # Perimeter = circumference of the sphere of that volume.
    ref = pd.read_csv(reference)
    np.testing.assert_array_equal(ref["Volume"], ref["ExtentX"] * ref["ExtentY"] * ref["ExtentZ"])
    r = np.cbrt(3 * ref["Volume"] / (4 * np.pi))
    np.testing.assert_allclose(ref["Perimeter"], 2 * np.pi * r, rtol=1e-12)
    assert (ref["Intensity"] <= ref["Volume"]).all()  # a voxel count inside the bbox
    # Our rows equal VollSeg's computation, redone here with skimage.regionprops per t.
    expected = []
    for t in range(T):
        for p in regionprops(lab[t].astype(np.int64)):
            ez, ey, ex = (p.bbox[3] - p.bbox[0], p.bbox[4] - p.bbox[1], p.bbox[5] - p.bbox[2])
            vol = ez * ey * ex
            expected.append((t, int(p.centroid[2]), int(p.centroid[1]), int(p.centroid[0]), p.label,
                             2 * math.pi * (3 * vol / (4 * math.pi)) ** (1 / 3), vol, int(np.sum(p.image)), ex, ey, ez))
    exp = pd.DataFrame(expected, columns=list(BTRACKMATE_COLUMNS))
    pd.testing.assert_frame_equal(ours.drop(columns="Perimeter"), exp.drop(columns="Perimeter"), check_dtype=False)
    np.testing.assert_allclose(ours["Perimeter"], exp["Perimeter"], rtol=1e-12)
    # Inside-tissue filtering keeps the flagged rows only.
    cells = read_cell_table(tmp_path / "tab")
    inside = to_btrackmate(cells, inside_tissue_only=True)
    assert len(inside) == int(cells["inside_tissue"].sum()) > 0
    with pytest.raises(InvalidDataError, match="tissue"):
        to_btrackmate(cells.assign(inside_tissue=pd.array([pd.NA] * len(cells), dtype="boolean")),
                      inside_tissue_only=True)


def test_distributed_run_equals_threaded_run(store, tmp_path):
    root, _, _ = store
    _measure(root, tmp_path / "threads", times=[0])
    cluster = ClusterConfig(kind="local", n_workers=2, processes=False)
    _measure(root, tmp_path / "dist", times=[0], cluster=cluster)
    pd.testing.assert_frame_equal(read_cell_table(tmp_path / "threads"), read_cell_table(tmp_path / "dist"))


def test_bad_arguments_are_named(store, tmp_path):
    root, _, lab = store
    with pytest.raises(StoreNotFoundError, match="nope"):
        _measure(root, tmp_path / "a", labels="nope")
    with pytest.raises(ConfigError, match="channels"):
        _measure(root, tmp_path / "b", channels=[5])
    with pytest.raises(ConfigError, match="time points"):
        _measure(root, tmp_path / "c", times=[9])
    with pytest.raises(StoreNotFoundError, match="tissue mask"):
        _measure(root, tmp_path / "d", tissue_mask="no_such_mask")
    not_a_table = tmp_path / "e"
    not_a_table.mkdir()
    (not_a_table / "precious.txt").write_text("keep me")
    with pytest.raises(StoreExistsError):
        _measure(root, not_a_table, overwrite=True)
    assert (not_a_table / "precious.txt").read_text() == "keep me"


def test_float_labels_are_refused(tmp_path):
    root = tmp_path / "f.zarr"
    write_image(root, np.zeros((1, 4, 8, 8), np.uint8), axes="tzyx", scale=(1.0, 1.0, 1.0, 1.0))
    arr = create_labels(root, "cells", dtype="uint16")
    arr[...] = 1
    # A user's group whose array was rewritten as float: DTypeError from the driver.
    import zarr

    zarr.create_array(store=str(root), name="labels/cells/0", shape=arr.shape, dtype="float32",
                      chunks=arr.chunks, overwrite=True)
    with pytest.raises(DTypeError, match="float32"):
        _measure(root, tmp_path / "tab")


def test_labels_without_time_axis(tmp_path):
    root = tmp_path / "zyx.zarr"
    write_image(root, np.arange(6 * 10 * 12, dtype=np.uint16).reshape(6, 10, 12), axes="zyx",
                scale=(2.0, 1.0, 1.0))
    lab = np.zeros((6, 10, 12), np.uint16)
    lab[1:4, 2:7, 3:9] = 4
    _write_labels(root, "cells", lab, dtype="uint16")
    _measure(root, tmp_path / "tab", block=(2, 4, 4))
    df = read_cell_table(tmp_path / "tab")
    assert df["t"].tolist() == [0] and df["volume_voxels"].tolist() == [3 * 5 * 6]


def test_cli_measure(store, tmp_path):
    from vollseg_dask.cli import main

    root, _, lab = store
    out = tmp_path / "tab"
    csv = tmp_path / "bt.csv"
    args = ["measure", str(root), "--labels", "cells", "--out", str(out), "--tissue-mask", "tissue",
            "--csv-btrackmate", str(csv), "--block", "5,14,9", "--workers", "1", "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["n_rows"] == sum(np.count_nonzero(np.unique(lab[t])) for t in range(T))
    assert len(pd.read_csv(csv)) == summary["n_rows"]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and json.loads(again.output[again.output.index("{"):])["skipped_t"] == [0, 1]
    bad = CliRunner().invoke(main, ["measure", str(root), "--out", str(tmp_path / "x"), "--block", "5,14"])
    assert bad.exit_code != 0 and "z,y,x" in (bad.output + str(bad.exception))


def test_read_cell_table_errors(tmp_path):
    with pytest.raises(StoreNotFoundError):
        read_cell_table(tmp_path / "missing")


def test_written_table_is_readable_by_pandas(store, tmp_path):
    root, _, _ = store
    _measure(root, tmp_path / "tab", times=[0])
    df = pd.read_parquet(tmp_path / "tab")  # a generic reader: t from the folder names
    assert len(df) == len(read_cell_table(tmp_path / "tab"))
    assert Path(tmp_path / "tab" / "_manifest.json").is_file()


def test_more_than_65535_cells_in_one_time_point_through_the_store(tmp_path):
    n = 42
    rng = np.random.default_rng(4)
    ids = rng.permutation(np.arange(1, 2 * n**3, 2, dtype=np.uint32))[: n**3]
    lab = np.repeat(np.repeat(np.repeat(ids.reshape(n, n, n), 2, 0), 2, 1), 2, 2)
    root = tmp_path / "many.zarr"
    write_image(root, (lab % 251).astype(np.uint8)[None], axes="tzyx", scale=(1.0, 1.0, 1.0, 1.0),
                chunks=(1, 21, 25, 27))
    _write_labels(root, "cells", lab[None])
    res = _measure(root, tmp_path / "tab", block=(21, 50, 27))
    df = read_cell_table(tmp_path / "tab")
    labels = np.unique(lab)
    assert res.n_rows == len(df) == labels.size > 65_535
    assert not df.duplicated(["t", "label"]).any()
    np.testing.assert_array_equal(df["label"].to_numpy(), labels)
    np.testing.assert_array_equal(df["volume_voxels"].to_numpy(), 8)
    com = np.array(ndi.center_of_mass(np.ones(lab.shape), lab, labels))
    np.testing.assert_allclose(df[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(), com, rtol=1e-12)
    np.testing.assert_allclose(df["mean_intensity_c0"], labels % 251)
