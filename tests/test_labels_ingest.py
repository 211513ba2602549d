"""``convert MASKS STORE --as-labels NAME``: users' masks become a labels group of an image store."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from vollseg_dask.cli import main
from vollseg_dask.errors import AxesError, DTypeError, InvalidDataError, ShapeError, StoreExistsError
from vollseg_dask.io import convert, open_labels
from vollseg_dask.io.labels_ingest import import_labels

SHAPE = (2, 4, 24, 20)  # t, z, y, x


def _masks(rng: np.random.Generator) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint16)
    m[:, 1:3, 2:10, 3:9] = 7
    m[:, :, 12:20, 10:18] = 300
    m[1, 0, 0, 0] = 5
    return m


@pytest.fixture
def store(tmp_path: Path, rng: np.random.Generator) -> Path:
    img = rng.integers(0, 1000, SHAPE, dtype=np.uint16)
    out = tmp_path / "img.zarr"
    convert(img, out, axes="tzyx", voxel_size=(2.0, 0.5, 0.5), chunks=(1, 2, 16, 16), n_levels=2)
    return out


def _check(store: Path, name: str, expected: np.ndarray) -> None:
    lab = open_labels(store, name)
    assert lab.axes == "tzyx" and lab.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(lab.data), expected)
    lvl1 = np.asarray(open_labels(store, name, 1).data)
    np.testing.assert_array_equal(lvl1, expected[..., ::2, ::2])
    assert set(np.unique(lvl1)) <= set(np.unique(expected))
    attrs = zarr.open_group(str(store / "labels" / name), mode="r").attrs.asdict()
    assert attrs["vollseg_dask"]["complete"] is True
    # an independent reader sees a labels node
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(store / "labels" / name)))())
    assert nodes and np.asarray(nodes[0].data[0]).shape == expected.shape


def test_tiff_masks_cli_and_evaluate(store: Path, tmp_path: Path, rng) -> None:
    masks = _masks(rng)
    tif = tmp_path / "masks.tif"
    tifffile.imwrite(tif, masks, imagej=True, metadata={"axes": "TZYX"})
    res = CliRunner().invoke(main, ["convert", str(tif), str(store), "--as-labels", "gt", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "labels/gt" in res.output
    _check(store, "gt", masks)
    # usable by evaluate: the same masks twice score F1 1
    res = CliRunner().invoke(main, ["evaluate", str(store), "--pred", "gt", "--gt", "gt", "--json", "--no-ssim",
                                    "--thresholds", "0.5"])
    assert res.exit_code == 0, res.output
    assert '"f1": 1.0' in res.output.replace(" ", "").replace('"f1":1.0', '"f1": 1.0')


def test_hdf5_npy_zarr_and_axes(store: Path, tmp_path: Path, rng) -> None:
    masks = _masks(rng).astype(np.int32)
    h5 = tmp_path / "masks.h5"
    with h5py.File(h5, "w") as f:
        f["seg"] = masks.transpose(1, 0, 2, 3)  # z, t, y, x on disk
    import_labels(h5, store, "from_h5", axes="ZTYX")
    _check(store, "from_h5", masks)
    npy = tmp_path / "masks.npy"
    small = np.where(masks == 300, 200, masks).astype(np.uint8)
    np.save(npy, small)
    import_labels(npy, store, "from_npy")
    _check(store, "from_npy", small)
    assert open_labels(store, "from_npy").dtype == np.uint8
    zpath = tmp_path / "masks.zarr"
    zarr.save_array(str(zpath), masks.astype(np.uint32))
    import_labels(zpath, store, "from_zarr")
    _check(store, "from_zarr", masks)
    with pytest.raises(StoreExistsError):
        import_labels(npy, store, "from_npy")
    import_labels(npy, store, "from_npy", overwrite=True)


def test_refusals(store: Path, tmp_path: Path, rng) -> None:
    masks = _masks(rng)
    bad_float = tmp_path / "float.tif"
    tifffile.imwrite(bad_float, masks.astype(np.float32), imagej=True, metadata={"axes": "TZYX"})
    res = CliRunner().invoke(main, ["convert", str(bad_float), str(store), "--as-labels", "x", "--no-progress"])
    assert isinstance(res.exception, DTypeError) and "integer" in str(res.exception)
    with pytest.raises(DTypeError, match="float32"):
        import_labels(bad_float, store, "x")
    h5 = tmp_path / "short.h5"
    with h5py.File(h5, "w") as f:
        f["seg"] = masks[:, :, :20]
    with pytest.raises(ShapeError, match=r"\(2, 4, 20, 20\)"):
        import_labels(h5, store, "x", axes="TZYX")
    with pytest.raises(AxesError, match="tzyx"):
        import_labels(masks[0], store, "x")  # zyx masks for a tzyx image
    neg = masks.astype(np.int16)
    neg[0, 0, 0, 0] = -3
    with pytest.raises(InvalidDataError, match="negative"):
        import_labels(neg, store, "x", axes="tzyx")
    # nothing listed as a finished labels group after a refusal before writing
    assert not (store / "labels" / "x" / "zarr.json").exists() or \
        json.loads((store / "labels" / "x" / "zarr.json").read_text())["attributes"]["vollseg_dask"]["complete"] is False
    res = CliRunner().invoke(main, ["convert", str(h5), str(store), "--as-labels", "y", "--voxel-size", "1,1,1"])
    assert res.exit_code != 0 and "--voxel-size" in res.output


def test_masks_without_channel_axis(tmp_path: Path, rng) -> None:
    img = rng.integers(0, 100, (3, 2, 8, 8), dtype=np.uint8)  # z, c, y, x
    store = tmp_path / "c.zarr"
    convert(img, store, axes="zcyx")
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[1:, 2:6, 2:6] = 1
    import_labels(masks, store, "m", axes="zyx")
    lab = open_labels(store, "m")
    assert lab.axes == "czyx"
    np.testing.assert_array_equal(np.asarray(lab.data), np.stack([masks, masks]))


def test_as_labels_takes_the_labels_lock(tmp_path):
    """A second writer of the same labels group is refused while convert --as-labels holds it."""
    import numpy as np

    from vollseg_dask.errors import LockedError
    from vollseg_dask.io.labels_ingest import import_labels
    from vollseg_dask.io.omezarr import write_image
    from vollseg_dask.locks import hold_lock

    store = tmp_path / "img.zarr"
    write_image(store, np.zeros((4, 8, 8), np.uint16), axes="zyx", scale=(1.0, 1.0, 1.0))
    (store / "labels").mkdir(exist_ok=True)
    with hold_lock(store / "labels" / ".masks.lock", "labels 'masks'"):
        with pytest.raises(LockedError):
            import_labels(np.ones((4, 8, 8), np.uint16), store, "masks")
    import_labels(np.ones((4, 8, 8), np.uint16), store, "masks")
    assert (store / "labels" / "masks").is_dir()
