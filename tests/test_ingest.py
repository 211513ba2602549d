"""Ingest of TIFF / HDF5 / .npy / arrays into OME-Zarr: metadata, axes, streaming memory, CLI."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import dask
import dask.array as da
import h5py
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from vollseg_dask.errors import AxesError, ConfigError, StoreExistsError, StoreNotFoundError
from vollseg_dask.io import convert, open_image
from vollseg_dask.io.ingest import inspect_source, plan_slab, resolve_source_axes


def _ome_zarr_node(store: Path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(str(store)))())[0]


# ----------------------------------------------------------------------------------------- real data


def test_plantseg_ovule_h5(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "segmentation" / "plantseg" / "sample_ovule.h5"
    img = convert(src, tmp_path / "ovule.zarr")  # 'raw' chosen among raw/label
    assert img.axes == "zyx" and img.shape == (32, 128, 128) and img.dtype == np.uint8
    assert img.voxel_size == pytest.approx((0.235, 0.15, 0.15))
    with h5py.File(src, "r") as f:
        raw, label = f["raw"][...], f["label"][...]
    np.testing.assert_array_equal(img.data.compute(), raw)
    lab = convert(src, tmp_path / "label.zarr", dataset="label", n_levels=2, pyramid_method="nearest")
    assert lab.dtype == np.uint16
    np.testing.assert_array_equal(lab.data.compute(), label)
    level1 = open_image(tmp_path / "label.zarr", 1).data.compute()
    assert set(np.unique(level1)) <= set(np.unique(label))
    node = _ome_zarr_node(tmp_path / "ovule.zarr")
    scale = next(t["scale"] for t in node.metadata["coordinateTransformations"][0] if t["type"] == "scale")
    assert scale == pytest.approx([0.235, 0.15, 0.15])


def test_plantseg_1135_mini_h5(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "segmentation" / "plantseg" / "1135_mini.h5"
    img = convert(src, tmp_path / "mini.zarr", chunks=(32, 48, 48))
    assert img.shape == (100, 100, 100) and img.chunks == (32, 48, 48)
    assert img.voxel_size == pytest.approx((0.2837, 0.1268, 0.1268), abs=1e-4)
    with h5py.File(src, "r") as f:
        np.testing.assert_array_equal(img.data.compute(), f["raw"][...])


def test_fake_tracks_imagej_2d_time(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "trackmate_xml" / "pycellin" / "FakeTracks.tif"
    info = inspect_source(src)
    assert info.axes == "tyx" and info.shape == (50, 128, 128)
    img = convert(src, tmp_path / "fake.zarr")
    assert img.axes == "tyx" and img.frame_interval == 1.0 and img.units["t"] == "second"
    assert img.voxel_size == (1.0, 1.0, 1.0)  # the file carries no spatial calibration
    np.testing.assert_array_equal(img.data.compute(), tifffile.imread(src))


# ----------------------------------------------------------------------------------------- TIFF


def test_imagej_hyperstack_axes_and_calibration(tmp_path: Path, rng) -> None:
    data = rng.integers(0, 4000, size=(3, 4, 2, 20, 24), dtype=np.uint16)  # ImageJ order TZCYX
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.25, 1 / 0.2),  # (x, y) px per unit
                     metadata={"axes": "TZCYX", "spacing": 1.5, "unit": "um", "finterval": 2.5, "tunit": "min"})
    img = convert(path, tmp_path / "h.zarr", chunks=(1, 1, 2, 8, 8))
    assert img.axes == "tczyx" and img.shape == (3, 2, 4, 20, 24)
    assert img.scale == pytest.approx((2.5, 1.0, 1.5, 0.2, 0.25))
    assert img.units == {"t": "minute", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    np.testing.assert_array_equal(img.data.compute(), data.transpose(0, 2, 1, 3, 4))


def test_imagej_nanometre_unit(tmp_path: Path) -> None:
    path = tmp_path / "nm.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(1 / 100, 1 / 100),
                     metadata={"axes": "ZYX", "spacing": 300, "unit": "nm"})
    assert convert(path, tmp_path / "nm.zarr").voxel_size == pytest.approx((0.3, 0.1, 0.1))


def test_bigtiff_plain_stack(tmp_path: Path, rng) -> None:
    data = rng.integers(0, 255, size=(7, 30, 26), dtype=np.uint8)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, bigtiff=True, photometric="minisblack", resolution=(2000, 4000),
                     resolutionunit="CENTIMETER")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
    img = convert(path, tmp_path / "b.zarr", chunks=(2, 16, 16), max_slab_bytes=1)  # force 1-unit slabs
    assert img.axes == "zyx"  # no axis metadata: by ndim
    assert img.voxel_size == pytest.approx((1.0, 2.5, 5.0))  # 1e4 µm / (4000 or 2000) px per cm
    np.testing.assert_array_equal(img.data.compute(), data)


def test_ome_tiff_physical_sizes(tmp_path: Path, rng) -> None:
    data = rng.integers(0, 255, size=(2, 3, 16, 16), dtype=np.uint8)
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(path, data, metadata={"axes": "TZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3,
                                           "PhysicalSizeZ": 1.2, "TimeIncrement": 4.0, "TimeIncrementUnit": "s"})
    img = convert(path, tmp_path / "o.zarr")
    assert img.axes == "tzyx" and img.scale == pytest.approx((4.0, 1.2, 0.3, 0.3))
    np.testing.assert_array_equal(img.data.compute(), data)


# ----------------------------------------------------------------------------------------- HDF5


def test_hdf5_choice_errors_and_axistags(tmp_path: Path, rng) -> None:
    path = tmp_path / "two.h5"
    a = rng.integers(0, 9, size=(4, 10, 12), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["a"] = a
        f["b"] = a.astype(np.float32)
        f["group/c"] = np.zeros((2, 5, 6, 7), np.uint16)
        f["group/c"].attrs["axistags"] = json.dumps({"axes": [{"key": k} for k in "ztyx"]})
        f["group/c"].attrs["element_size_um"] = [2.0, 0.5, 0.5]
        f["scalar"] = 3
    with pytest.raises(ConfigError, match=r"\['a', 'b', 'group/c'\]"):
        convert(path, tmp_path / "x.zarr")
    with pytest.raises(StoreNotFoundError, match="'nope'.*'a', 'b'"):
        convert(path, tmp_path / "x.zarr", dataset="nope")
    assert not (tmp_path / "x.zarr").exists()
    img = convert(path, tmp_path / "b.zarr", dataset="b")
    assert img.dtype == np.float32 and img.voxel_size == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(img.data.compute(), a)
    c = convert(path, tmp_path / "c.zarr", dataset="/group/c")
    assert c.axes == "tzyx" and c.shape == (5, 2, 6, 7)  # ilastik axistags z,t,y,x reordered
    assert c.voxel_size == pytest.approx((2.0, 0.5, 0.5))


# ----------------------------------------------------------------------------------------- npy / arrays


def test_npy_axes_defaults_override_and_permutation(tmp_path: Path, rng) -> None:
    data = rng.integers(0, 100, size=(3, 4, 9, 11), dtype=np.int16)
    path = tmp_path / "d.npy"
    np.save(path, data)
    img = convert(path, tmp_path / "d.zarr", voxel_size=(2.0, 0.4, 0.4), frame_interval=60, time_unit="second")
    assert img.axes == "tzyx" and img.scale == pytest.approx((60.0, 2.0, 0.4, 0.4))
    np.testing.assert_array_equal(img.data.compute(), data)
    perm = convert(path, tmp_path / "p.zarr", axes="ZTYX", chunks=(1, 2, 4, 4))
    assert perm.axes == "tzyx" and perm.shape == (4, 3, 9, 11)
    np.testing.assert_array_equal(perm.data.compute(), data.transpose(1, 0, 2, 3))
    chan = convert(path, tmp_path / "c.zarr", axes="czyx")
    assert chan.axes == "czyx" and chan.scale[0] == 1.0 and "c" not in chan.units


def test_in_memory_numpy_and_dask(tmp_path: Path, rng) -> None:
    data = rng.random((2, 3, 10, 10)).astype(np.float32)
    img = convert(data, tmp_path / "n.zarr", axes="czyx", shards=(1, 2, 8, 8), chunks=(1, 1, 4, 4))
    assert img.shards == (1, 2, 8, 8)
    np.testing.assert_array_equal(img.data.compute(), data)
    lazy = convert(da.from_array(data, chunks=(1, 1, 5, 5)), tmp_path / "d.zarr", n_levels=2, ngff_version="0.4")
    assert lazy.axes == "tzyx" and lazy.ngff_version == "0.4" and lazy.n_levels == 2
    np.testing.assert_array_equal(lazy.data.compute(), data)


def test_convert_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(StoreNotFoundError, match="missing.tif"):
        convert(tmp_path / "missing.tif", tmp_path / "o.zarr")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(ConfigError, match="unknown file type '.png'"):
        convert(tmp_path / "x.png", tmp_path / "o.zarr")
    with pytest.raises(AxesError, match=r"2 dimensions.*shape \(4, 8, 8\)"):
        convert(tmp_path / "x.npy", tmp_path / "o.zarr", axes="YX")
    with pytest.raises(AxesError, match=r"unknown axes \['q'\]"):
        convert(tmp_path / "x.npy", tmp_path / "o.zarr", axes="QYX")
    with pytest.raises(AxesError, match="must contain y and x"):
        convert(tmp_path / "x.npy", tmp_path / "o.zarr", axes="TZY")
    with pytest.raises(AxesError, match="6 dimensions"):
        convert(np.zeros((1,) * 6, np.uint8), tmp_path / "o.zarr")
    with pytest.raises(ConfigError, match="y=0.0"):
        convert(tmp_path / "x.npy", tmp_path / "o.zarr", voxel_size=(1, 0, 1))
    with pytest.raises(ConfigError, match="frame_interval"):
        convert(tmp_path / "x.npy", tmp_path / "o.zarr", axes="tyx", frame_interval=-1)
    assert not (tmp_path / "o.zarr").exists()
    convert(tmp_path / "x.npy", tmp_path / "o.zarr")
    with pytest.raises(StoreExistsError, match="o.zarr"):
        convert(tmp_path / "x.npy", tmp_path / "o.zarr")


def test_resolve_axes_and_plan_slab() -> None:
    assert resolve_source_axes((5, 6), None, None) == "yx"
    assert resolve_source_axes((2, 3, 4, 5, 6), None, None) == "tczyx"
    assert resolve_source_axes((2, 3, 4), None, "tyx") == "tyx"
    assert resolve_source_axes((2, 3, 4), "CYX", "tyx") == "cyx"
    # Whole planes when they fit the budget, else whole rows in multiples of the chunk, else one unit.
    assert plan_slab((10, 100, 100), "zyx", (2, 16, 16), 2, max_bytes=2 * 100 * 100 * 2) == (2, 100, 100)
    assert plan_slab((10, 100, 100), "zyx", (2, 16, 16), 2, max_bytes=2 * 40 * 100 * 2) == (2, 32, 100)
    assert plan_slab((10, 100, 100), "zyx", (2, 16, 16), 2, max_bytes=10) == (2, 16, 16)


def test_convert_streams_a_large_npy(tmp_path: Path) -> None:
    """tracemalloc peak stays a few slabs, far below the 64 MiB input (a whole-array read would exceed it)."""
    shape = (32, 1024, 1024)  # uint16: 64 MiB
    src = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint16, shape=shape)
    ramp = np.arange(shape[1] * shape[2], dtype=np.uint32).reshape(shape[1:])
    for z in range(shape[0]):
        src[z] = (ramp * (z + 1)) % 4099
    src.flush()
    del src
    convert(np.zeros((2, 8, 8), np.uint16), tmp_path / "warm.zarr")  # import everything before measuring
    file_bytes = (tmp_path / "big.npy").stat().st_size
    tracemalloc.start()
    try:
        with dask.config.set(scheduler="threads", num_workers=2):
            img = convert(tmp_path / "big.npy", tmp_path / "big.zarr", chunks=(8, 128, 128),
                          max_slab_bytes=4 * 2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.4 * file_bytes, f"peak {peak / 2**20:.1f} MiB for a {file_bytes / 2**20:.0f} MiB input"
    assert img.data[31, 1000, 1000].compute() == ((1000 * 1024 + 1000) * 32) % 4099
    assert img.data[0, 5, 7].compute() == (5 * 1024 + 7) % 4099


# ----------------------------------------------------------------------------------------- CLI


def test_convert_cli(tmp_path: Path, rng) -> None:
    from vollseg_dask.cli import main

    data = rng.integers(0, 255, size=(5, 3, 24, 20), dtype=np.uint8)
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    out = tmp_path / "out.zarr"
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(path), str(out), "--axes", "TZYX", "--voxel-size", "2,0.5,0.5",
                                  "--frame-interval", "30", "--chunks", "1,3,8,8", "--levels", "2",
                                  "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "axes tzyx" in result.output
    img = open_image(out)
    assert img.scale == pytest.approx((30.0, 2.0, 0.5, 0.5)) and img.chunks == (1, 3, 8, 8) and img.n_levels == 2
    np.testing.assert_array_equal(img.data.compute(), data)
    info = json.loads(runner.invoke(main, ["info", str(out), "--json"]).output)
    assert info["levels"][1]["shape"] == [5, 3, 12, 10]

    again = runner.invoke(main, ["convert", str(path), str(out), "--no-progress"])
    assert again.exit_code != 0 and isinstance(again.exception, StoreExistsError)
    bad = runner.invoke(main, ["convert", str(path), str(tmp_path / "b.zarr"), "--chunks", "1,a", "--no-progress"])
    assert bad.exit_code == 2 and "--chunks" in bad.output
    over = runner.invoke(main, ["convert", str(path), str(out), "--axes", "tzyx", "--overwrite", "--no-progress"])
    assert over.exit_code == 0, over.output
    assert open_image(out).voxel_size == (1.0, 1.0, 1.0)
