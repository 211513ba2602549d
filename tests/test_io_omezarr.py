"""OME-Zarr images and labels: round trips, pyramids, sharding, NGFF 0.4/0.5, independent reader, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from skimage.measure import block_reduce

from vollseg_dask.errors import (
    AxesError,
    ConfigError,
    DTypeError,
    InvalidDataError,
    ShapeError,
    StoreExistsError,
    StoreNotFoundError,
)
from vollseg_dask.io import (
    OmeImage,
    build_pyramid,
    create_image,
    create_labels,
    list_labels,
    open_image,
    open_labels,
    write_image,
)
from vollseg_dask.io.omezarr import downsample_mean_yx, downsample_nearest_yx, level_shape

# axes, shape, chunks (deliberately not dividing the shape), scale
CASES = [
    ("yx", (23, 19), (8, 7), (0.2, 0.3)),
    ("zyx", (5, 21, 18), (2, 8, 5), (1.5, 0.25, 0.25)),
    ("tyx", (3, 17, 20), (1, 6, 16), (30.0, 0.5, 0.5)),
    ("tzyx", (2, 3, 15, 13), (1, 2, 4, 8), (2.0, 0.8, 0.2, 0.2)),
    ("tczyx", (2, 2, 3, 11, 9), (1, 1, 2, 4, 4), (5.0, 1.0, 1.0, 0.3, 0.3)),
]


def _ome_zarr_nodes(store: Path) -> list:
    """All nodes the independent ome-zarr-py reader finds in a store."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(str(store)))())


def _node_axes(node) -> str:
    return "".join(a["name"] if isinstance(a, dict) else a for a in node.metadata["axes"])


def _node_scales(node) -> list[list[float]]:
    return [next(t["scale"] for t in trs if t["type"] == "scale") for trs in node.metadata["coordinateTransformations"]]


@pytest.mark.parametrize("axes,shape,chunks,scale", CASES, ids=[c[0] for c in CASES])
def test_round_trip_axes_subsets(tmp_path: Path, rng, axes, shape, chunks, scale) -> None:
    data = rng.integers(0, 60000, size=shape, dtype=np.uint16)
    img = write_image(tmp_path / "img.zarr", data, axes=axes.upper(), scale=scale, chunks=chunks, n_levels=2)
    assert isinstance(img, OmeImage)
    assert (img.axes, img.shape, img.dtype, img.level, img.n_levels, img.path) == (axes, shape, np.uint16, 0, 2, "0")
    assert img.scale == pytest.approx(scale)
    assert img.chunks == chunks and img.shards is None
    assert img.data.chunksize == chunks  # one Dask block per storage unit
    np.testing.assert_array_equal(img.data.compute(), data)
    expected_units = {a: ("second" if a == "t" else "micrometer") for a in axes if a != "c"}
    assert img.units == expected_units
    zyx = tuple(scale[axes.index(a)] if a in axes else 1.0 for a in "zyx")
    assert img.voxel_size == pytest.approx(zyx)
    assert img.frame_interval == (scale[0] if "t" in axes else None)

    # The same store read back by ome-zarr-py.
    node = _ome_zarr_nodes(tmp_path / "img.zarr")[0]
    assert _node_axes(node) == axes
    assert [d.shape for d in node.data] == [shape, level_shape(shape, axes, 1)]
    assert node.data[0].dtype == np.uint16 and node.data[0].chunksize == chunks
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    assert _node_scales(node)[0] == pytest.approx(scale)
    assert _node_scales(node)[1] == pytest.approx([s * (2 if a in "yx" else 1) for a, s in zip(axes, scale, strict=True)])


def test_dask_input_is_written_block_by_block(tmp_path: Path, rng) -> None:
    data = rng.random((3, 20, 30)).astype(np.float32)
    src = da.from_array(data, chunks=(2, 7, 11))  # misaligned with the zarr chunks: must be rechunked
    img = write_image(tmp_path / "f.zarr", src, axes="zyx", scale=(1, 1, 1), chunks=(1, 8, 8))
    np.testing.assert_array_equal(img.data.compute(), data)
    assert img.dtype == np.float32


def test_sharding(tmp_path: Path, rng) -> None:
    data = rng.integers(0, 255, size=(2, 6, 40, 36), dtype=np.uint8)
    img = write_image(tmp_path / "s.zarr", data, axes="tzyx", scale=(1, 2, 0.5, 0.5), chunks=(1, 2, 8, 8),
                      shards=(1, 4, 16, 16), n_levels=3)
    assert img.chunks == (1, 2, 8, 8) and img.shards == (1, 4, 16, 16)
    assert img.storage_unit == (1, 4, 16, 16)
    assert img.data.chunksize == (1, 4, 16, 16)
    np.testing.assert_array_equal(img.data.compute(), data)
    # One file per shard, not per chunk.
    files = [p for p in (tmp_path / "s.zarr" / "0" / "c").rglob("*") if p.is_file()]
    assert len(files) == 2 * math.ceil(6 / 4) * math.ceil(40 / 16) * math.ceil(36 / 16)
    meta = json.loads((tmp_path / "s.zarr" / "0" / "zarr.json").read_text())
    assert meta["codecs"][0]["name"] == "sharding_indexed"
    assert meta["dimension_names"] == ["t", "z", "y", "x"]
    lv2 = open_image(tmp_path / "s.zarr", 2)
    assert lv2.shape == (2, 6, 10, 9)
    assert all(s % c == 0 for s, c in zip(lv2.shards, lv2.chunks, strict=True))  # shards stay whole chunks when clipped
    node = _ome_zarr_nodes(tmp_path / "s.zarr")[0]
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_mean_pyramid_matches_block_reduce(tmp_path: Path, rng, dtype) -> None:
    shape = (2, 45, 37)  # odd sizes: edge windows average only the pixels they have
    data = (rng.random(shape) * 200).astype(dtype)
    img = write_image(tmp_path / "p.zarr", data, axes="zyx", scale=(1, 1, 1), chunks=(1, 7, 5), n_levels=4)
    ref = data.astype(np.float64)
    for k in range(1, 4):
        ref = block_reduce(ref, (1, 2, 2), func=np.nanmean, cval=np.nan)
        got = open_image(img.store, k).data.compute()
        assert got.shape == level_shape(shape, "zyx", k) == ref.shape
        assert got.dtype == dtype
        expected = np.rint(ref).astype(dtype) if np.dtype(dtype).kind == "u" else ref.astype(dtype)
        if np.dtype(dtype).kind == "u":
            assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # rounding of a mean of means
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-5)
        ref = got.astype(np.float64)  # each level is built from the stored level above
    # Level translations record the shift of the 2x2 mean's pixel centres.
    node = _ome_zarr_nodes(img.store)[0]
    tr = node.metadata["coordinateTransformations"][2]
    assert {"type": "translation", "translation": [0.0, 1.5, 1.5]} in tr


def test_downsample_kernels_by_brute_force(rng) -> None:
    block = rng.integers(0, 100, size=(3, 5, 7)).astype(np.int32)
    mean = downsample_mean_yx(block)
    nearest = downsample_nearest_yx(block)
    assert mean.shape == nearest.shape == (3, 3, 4)
    for z in range(3):
        for i in range(3):
            for j in range(4):
                window = block[z, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                assert mean[z, i, j] == np.rint(window.mean())
                assert nearest[z, i, j] == block[z, 2 * i, 2 * j]
    assert downsample_mean_yx(np.array([[True, False], [True, True]])).tolist() == [[True]]


def test_labels_group_and_pyramid(tmp_path: Path, rng) -> None:
    shape = (2, 3, 50, 42)
    store = tmp_path / "l.zarr"
    write_image(store, rng.integers(0, 9, shape, dtype=np.uint8), axes="tzyx", scale=(4.0, 1.0, 0.5, 0.5),
                chunks=(1, 2, 16, 16), n_levels=3)
    assert list_labels(store) == []
    arr = create_labels(store, "cells", dtype="uint32")
    assert arr.shape == shape and arr.dtype == np.uint32 and arr.chunks == (1, 2, 16, 16)
    # Sparse labels with huge IDs: a mean pyramid would invent values, nearest must not.
    ids = rng.integers(1, 2**31, size=shape, dtype=np.uint32)
    labels = np.where(rng.random(shape) < 0.3, ids, 0).astype(np.uint32)
    arr[...] = labels
    create_labels(store, "nuclei", dtype="uint16")
    build_pyramid(store, "labels/cells", method="nearest")
    with pytest.raises(ConfigError, match="nearest"):
        build_pyramid(store, "labels/cells", method="mean")
    assert list_labels(store) == ["cells", "nuclei"]

    level0 = open_labels(store, "cells", 0)
    assert level0.path == "labels/cells/0" and level0.axes == "tzyx" and level0.n_levels == 3
    assert level0.scale == pytest.approx((4.0, 1.0, 0.5, 0.5))
    np.testing.assert_array_equal(level0.data.compute(), labels)
    values0 = set(np.unique(labels).tolist())
    for k in (1, 2):
        lk = open_labels(store, "cells", k).data.compute()
        assert lk.shape == level_shape(shape, "tzyx", k)
        assert set(np.unique(lk).tolist()) <= values0
        np.testing.assert_array_equal(lk, labels[..., :: 2**k, :: 2**k])

    # Independent reader: image plus both label groups with their pyramids.
    nodes = _ome_zarr_nodes(store)
    label_nodes = {n.metadata.get("name"): n for n in nodes if any(type(s).__name__ == "Label" for s in n.specs)}
    assert set(label_nodes) == {"cells", "nuclei"}
    cells = label_nodes["cells"]
    assert [d.shape for d in cells.data] == [level_shape(shape, "tzyx", k) for k in range(3)]
    assert cells.data[0].dtype == np.uint32 and label_nodes["nuclei"].data[0].dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(cells.data[1]), labels[..., ::2, ::2])
    attrs = zarr.open_group(str(store / "labels" / "cells"), mode="r").attrs.asdict()
    assert attrs["ome"]["version"] == "0.5"
    assert attrs["ome"]["image-label"]["source"] == {"image": "../../"}


def test_labels_errors(tmp_path: Path) -> None:
    store = tmp_path / "e.zarr"
    write_image(store, np.zeros((4, 16, 16), np.uint8), axes="zyx", scale=(1, 1, 1))
    with pytest.raises(DTypeError, match="float32"):
        create_labels(store, "bad", dtype="float32")
    assert list_labels(store) == []
    create_labels(store, "seg")
    with pytest.raises(StoreExistsError, match="seg"):
        create_labels(store, "seg")
    create_labels(store, "seg", dtype="uint16", overwrite=True)
    assert open_labels(store, "seg").dtype == np.uint16 and list_labels(store) == ["seg"]
    with pytest.raises(StoreNotFoundError, match=r"'other'.*\['seg'\]"):
        open_labels(store, "other")
    with pytest.raises(ConfigError, match="invalid labels name"):
        create_labels(store, "a/b")


def test_ngff_04_written_and_read(tmp_path: Path, rng) -> None:
    data = rng.integers(0, 1000, size=(2, 4, 20, 18), dtype=np.uint16)
    store = tmp_path / "v04.zarr"
    img = write_image(store, data, axes="tzyx", scale=(3.0, 1.0, 0.5, 0.5), chunks=(1, 2, 8, 8), n_levels=2,
                      ngff_version="0.4")
    assert img.ngff_version == "0.4"
    assert (store / ".zattrs").is_file() and (store / "0" / ".zarray").is_file()
    zattrs = json.loads((store / ".zattrs").read_text())
    assert zattrs["multiscales"][0]["version"] == "0.4"
    arr = create_labels(store, "seg")
    arr[...] = (data // 100).astype(np.uint32)
    build_pyramid(store, "labels/seg", method="nearest")
    np.testing.assert_array_equal(open_image(store).data.compute(), data)
    nodes = _ome_zarr_nodes(store)
    assert _node_axes(nodes[0]) == "tzyx"
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), data)
    seg = [n for n in nodes if any(type(s).__name__ == "Label" for s in n.specs)]
    assert len(seg) == 1 and [d.shape for d in seg[0].data] == [(2, 4, 20, 18), (2, 4, 10, 9)]
    with pytest.raises(ConfigError, match="sharding"):
        create_image(tmp_path / "x.zarr", shape=(4, 4), dtype="uint8", axes="yx", scale=None, chunks=(2, 2),
                     shards=(4, 4), ngff_version="0.4")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ome-zarr's own Scaler deprecation
@pytest.mark.parametrize("fmt_name", ["FormatV04", "FormatV05"])
def test_reads_stores_written_by_ome_zarr(tmp_path: Path, rng, fmt_name) -> None:
    import ome_zarr.format
    import ome_zarr.writer

    fmt = getattr(ome_zarr.format, fmt_name)()
    data = rng.integers(0, 255, size=(3, 32, 24), dtype=np.uint8)
    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="w", zarr_format=fmt.zarr_format)
    ome_zarr.writer.write_image(data, group, axes="zyx", fmt=fmt, scale_factors=(2,), scale={"z": 2.0, "y": 0.5, "x": 0.5})
    ome_zarr.writer.write_labels((data > 100).astype(np.uint8), group, name="mask", axes="zyx", fmt=fmt,
                                 scale_factors=(2,))
    img = open_image(tmp_path / "o.zarr")
    assert img.ngff_version == fmt.version and img.axes == "zyx" and img.n_levels == 2
    assert img.voxel_size == pytest.approx((2.0, 0.5, 0.5))
    np.testing.assert_array_equal(img.data.compute(), data)
    assert open_image(tmp_path / "o.zarr", 1).shape == (3, 16, 12)
    assert list_labels(tmp_path / "o.zarr") == ["mask"]
    np.testing.assert_array_equal(open_labels(tmp_path / "o.zarr", "mask").data.compute(), data > 100)


@pytest.mark.parametrize(
    "axes,shape,match",
    [
        ("zqx", (2, 3, 4), r"unknown axes \['q'\]"),
        ("zzx", (2, 3, 4), r"repeated axes \['z'\]"),
        ("yzx", (2, 3, 4), "out of order"),
        ("tzyx", (2, 3, 4), r"4 dimensions.*shape \(2, 3, 4\)"),
        ("tzy", (2, 3, 4), "must contain y and x"),
    ],
)
def test_axes_errors(tmp_path: Path, axes, shape, match) -> None:
    with pytest.raises(AxesError, match=match):
        write_image(tmp_path / "a.zarr", np.zeros(shape, np.uint8), axes=axes, scale=None)
    assert not (tmp_path / "a.zarr").exists()


def test_create_image_validation(tmp_path: Path) -> None:
    kw = dict(shape=(4, 8, 8), dtype="uint8", axes="zyx", chunks=(2, 4, 4))
    with pytest.raises(ConfigError, match="2 values but axes 'zyx' have 3"):
        create_image(tmp_path / "a.zarr", scale=(1.0, 1.0), **kw)
    with pytest.raises(ConfigError, match="x=0.0"):
        create_image(tmp_path / "a.zarr", scale=(1.0, 1.0, 0.0), **kw)
    with pytest.raises(ConfigError, match="y=-1.0"):
        create_image(tmp_path / "a.zarr", scale=(1.0, -1.0, 1.0), **kw)
    with pytest.raises(ShapeError, match="not a multiple"):
        create_image(tmp_path / "a.zarr", scale=None, shards=(2, 6, 4), **kw)
    with pytest.raises(ShapeError, match="chunks"):
        create_image(tmp_path / "a.zarr", scale=None, **{**kw, "chunks": (2, 4)})
    with pytest.raises(DTypeError, match="complex"):
        create_image(tmp_path / "a.zarr", scale=None, **{**kw, "dtype": "complex64"})
    with pytest.raises(ConfigError, match="furlong"):
        create_image(tmp_path / "a.zarr", scale=None, units={"x": "furlong"}, **kw)
    assert not (tmp_path / "a.zarr").exists()

    arr = create_image(tmp_path / "a.zarr", scale=(2, 1, 1), n_levels=2, fill_value=7, **kw)
    assert arr.shape == (4, 8, 8) and arr[0, 0, 0] == 7  # fill value of unwritten chunks
    arr[0:2, 0:4, 0:4] = 1  # callers write block by block
    img = open_image(tmp_path / "a.zarr")
    assert img.data[0, 0, 0].compute() == 1 and open_image(tmp_path / "a.zarr", 1).shape == (4, 4, 4)
    img.zarr_array()[3, 7, 7] = 5
    assert open_image(tmp_path / "a.zarr").data[3, 7, 7].compute() == 5

    with pytest.raises(StoreExistsError, match="a.zarr"):
        create_image(tmp_path / "a.zarr", scale=None, **kw)
    create_image(tmp_path / "a.zarr", scale=None, overwrite=True, **kw)
    assert open_image(tmp_path / "a.zarr").data[3, 7, 7].compute() == 0

    other = tmp_path / "not_zarr"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(StoreExistsError, match="not a zarr store"):
        create_image(other, scale=None, overwrite=True, **kw)
    assert (other / "precious.txt").read_text() == "keep me"


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="missing.zarr"):
        open_image(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(InvalidDataError, match="multiscales"):
        open_image(tmp_path / "plain.zarr")
    write_image(tmp_path / "ok.zarr", np.zeros((8, 8), np.uint8), axes="yx", scale=None, n_levels=2)
    with pytest.raises(StoreNotFoundError, match=r"level 2 .*2 level"):
        open_image(tmp_path / "ok.zarr", 2)


def test_write_image_existing_store(tmp_path: Path) -> None:
    store = tmp_path / "w.zarr"
    write_image(store, np.ones((4, 4), np.uint8), axes="yx", scale=None)
    with pytest.raises(StoreExistsError):
        write_image(store, np.zeros((4, 4), np.uint8), axes="yx", scale=None)
    img = write_image(store, np.full((6, 6), 3, np.uint8), axes="yx", scale=None, overwrite=True)
    assert img.shape == (6, 6) and int(img.data.sum().compute()) == 108
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.zarr"]  # no temporary left behind


def test_interrupted_write_leaves_no_visible_output(tmp_path: Path) -> None:
    def explode(block: np.ndarray, block_info=None) -> np.ndarray:
        if block_info[0]["chunk-location"] == (1, 1):
            raise RuntimeError("disk on fire")
        return block

    src = da.ones((16, 16), chunks=(8, 8), dtype=np.uint8).map_blocks(explode, dtype=np.uint8)
    store = tmp_path / "i.zarr"
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_image(store, src, axes="yx", scale=None, chunks=(8, 8))
    assert list(tmp_path.iterdir()) == []  # neither the store nor a temporary folder

    write_image(store, np.full((16, 16), 9, np.uint8), axes="yx", scale=None, chunks=(8, 8))
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_image(store, src, axes="yx", scale=None, chunks=(8, 8), overwrite=True)
    np.testing.assert_array_equal(open_image(store).data.compute(), 9)  # old store intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.zarr"]


def test_info_cli(tmp_path: Path, rng) -> None:
    from vollseg_dask.cli import main

    store = tmp_path / "c.zarr"
    write_image(store, rng.integers(0, 9, (2, 4, 20, 20), dtype=np.uint8), axes="tzyx", scale=(10.0, 2.0, 0.5, 0.5),
                chunks=(1, 2, 8, 8), shards=(1, 4, 16, 16), n_levels=2)
    create_labels(store, "cells", dtype="uint32")
    result = CliRunner().invoke(main, ["info", str(store), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["axes"] == "tzyx" and info["shape"] == [2, 4, 20, 20] and info["dtype"] == "uint8"
    assert info["chunks"] == [1, 2, 8, 8] and info["shards"] == [1, 4, 16, 16]
    assert info["scale"] == [10.0, 2.0, 0.5, 0.5] and info["units"]["t"] == "second"
    assert info["n_levels"] == 2 and info["levels"][1]["shape"] == [2, 4, 10, 10]
    assert info["labels"][0]["name"] == "cells" and info["labels"][0]["dtype"] == "uint32"
    assert info["labels"][0]["shape"] == [2, 4, 20, 20] and info["labels"][0]["n_levels"] == 2
    text = CliRunner().invoke(main, ["info", str(store)])
    assert text.exit_code == 0 and "labels/cells: dtype uint32" in text.output and "tzyx" in text.output
    missing = CliRunner().invoke(main, ["info", str(tmp_path / "nope.zarr")])
    assert missing.exit_code != 0 and isinstance(missing.exception, StoreNotFoundError)


def test_io_import_is_light() -> None:
    code = ("import sys, vollseg_dask.io as io; assert callable(io.open_image);"
            "import vollseg_dask.io as io2; "
            "print(sorted(m for m in ('tensorflow', 'napari') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    lazy = subprocess.run([sys.executable, "-c", "import sys, vollseg_dask.io; print('zarr' in sys.modules, "
                           "'dask' in sys.modules)"], capture_output=True, text=True, check=True).stdout
    assert lazy.strip() == "False False"


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_metadata_validates_against_ngff_models(tmp_path: Path, version: str) -> None:
    """A second independent check: the pydantic NGFF models of ome-zarr-models accept image and labels."""
    pytest.importorskip("ome_zarr_models")
    module = version.replace(".", "")
    image_mod = __import__(f"ome_zarr_models.v{module}.image", fromlist=["Image"])
    label_mod = __import__(f"ome_zarr_models.v{module}.image_label", fromlist=["ImageLabel"])
    store = tmp_path / "m.zarr"
    write_image(store, np.zeros((2, 3, 16, 16), np.uint16), axes="tzyx", scale=(5.0, 1.0, 0.5, 0.5),
                chunks=(1, 3, 8, 8), n_levels=2, ngff_version=version)
    create_labels(store, "cells")
    image = image_mod.Image.from_zarr(zarr.open_group(str(store), mode="r"))
    meta = image.attributes.ome if version == "0.5" else image.attributes
    assert [d.path for d in meta.multiscales[0].datasets] == ["0", "1"]
    label_mod.ImageLabel.from_zarr(zarr.open_group(str(store / "labels" / "cells"), mode="r"))
    # A malformed store is rejected by the same models, so the check above has teeth.
    attrs = zarr.open_group(str(store), mode="r+")
    broken = json.loads(json.dumps(attrs.attrs.asdict()))
    ms = broken["ome"]["multiscales"][0] if version == "0.5" else broken["multiscales"][0]
    ms["axes"][0]["type"] = "space"  # t declared as space: four space axes are invalid
    attrs.attrs.update(broken)
    with pytest.raises(Exception, match="(?i)space|axes|validation"):
        image_mod.Image.from_zarr(zarr.open_group(str(store), mode="r"))
