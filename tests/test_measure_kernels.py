"""Per-cell attribute kernels against whole-volume references (numpy, scipy, scikit-image)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.measure import regionprops_table

from vollseg_dask.errors import DTypeError, InvalidDataError, ShapeError
from vollseg_dask.kernels.regionprops import (
    block_partials,
    finalize,
    partial_columns,
    reduce_partials,
    surface_area,
)

VOXEL = (2.0, 0.5, 0.3)


def _blobs(shape, n, rng, dtype=np.uint32):
    """Labels from random seeds grown by nearest-seed assignment inside random balls, plus a big
    ellipsoid centred on an interior point so that it spans many blocks."""
    zz, yy, xx = np.indices(shape)
    lab = np.zeros(shape, dtype)
    ids = rng.choice(np.arange(1, 10 * n), size=n, replace=False)  # non-sequential labels
    for k in ids:
        c = rng.uniform(0, shape)
        r = rng.uniform(1.5, 5.0, size=3)
        ball = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
        lab[ball & (lab == 0)] = k
    return lab


def _split(arr_shape, bounds):
    """All blocks of the grid given by per-axis boundaries."""
    for zi, yi, xi in itertools.product(*(range(len(b) - 1) for b in bounds)):
        yield tuple(slice(b[i], b[i + 1]) for b, i in zip(bounds, (zi, yi, xi), strict=True))


def _blockwise(lab, img, bounds, order=None):
    blocks = list(_split(lab.shape, bounds))
    if order is not None:
        blocks = [blocks[i] for i in order]
    parts = []
    for core in blocks:
        intensity = None if img is None else img[(slice(None), *core)]
        parts.append(block_partials(lab[core], intensity, offset=tuple(s.start for s in core)))
    return parts


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(7)
    shape = (23, 41, 37)
    lab = _blobs(shape, 40, rng)
    # A large ellipsoid centred on the corner shared by 8 blocks of the uneven grid below.
    zz, yy, xx = np.indices(shape)
    big = ((zz - 9.3) / 6.0) ** 2 + ((yy - 17.6) / 11.0) ** 2 + ((xx - 20.2) / 9.0) ** 2 <= 1
    lab[big] = 999_983
    img = rng.integers(0, 65535, (2, *shape)).astype(np.uint16)
    # Deliberately uneven blocks, including a 1-voxel slab; (9, 17, 20) is an 8-block corner.
    bounds = ([0, 4, 9, 10, 23], [0, 17, 30, 41], [0, 1, 20, 37])
    return lab, img, bounds


def test_block_grid_has_object_spanning_8_blocks(volume):
    lab, _, bounds = volume
    touched = [core for core in _split(lab.shape, bounds) if (lab[core] == 999_983).any()]
    assert len(touched) >= 8


def test_blockwise_table_equals_whole_volume_references(volume):
    lab, img, bounds = volume
    table = finalize(reduce_partials(_blockwise(lab, img, bounds)), VOXEL)
    labels = np.unique(lab[lab > 0])
    # Label set and uniqueness.
    assert table["label"].is_unique
    np.testing.assert_array_equal(table["label"].to_numpy(), labels.astype(np.uint64))
    # Voxel counts: np.bincount.
    counts = np.bincount(lab.ravel())
    np.testing.assert_array_equal(table["volume_voxels"].to_numpy(), counts[labels])
    # Centroids: scipy center_of_mass.
    com = np.array(ndi.center_of_mass(np.ones(lab.shape), lab, labels))
    np.testing.assert_allclose(table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(), com, rtol=1e-12)
    # Bounding boxes: scipy find_objects (on a compact relabelling).
    compact = np.searchsorted(labels, lab) + 1
    compact[lab == 0] = 0
    for row, sl in zip(table.itertuples(index=False), ndi.find_objects(compact), strict=True):
        assert (row.bbox_z0, row.bbox_y0, row.bbox_x0) == tuple(s.start for s in sl)
        assert (row.bbox_z1, row.bbox_y1, row.bbox_x1) == tuple(s.stop for s in sl)
    # Physical quantities and intensities: scikit-image with spacing.
    ref = pd.DataFrame(regionprops_table(
        lab.astype(np.int64), np.moveaxis(img.astype(np.float64), 0, -1), spacing=VOXEL,
        properties=("label", "area", "centroid", "equivalent_diameter_area", "axis_major_length",
                    "axis_minor_length", "inertia_tensor_eigvals", "intensity_mean", "intensity_min",
                    "intensity_max", "intensity_std"),
    ))
    np.testing.assert_array_equal(ref["label"].to_numpy(), labels)
    np.testing.assert_allclose(table["volume_um3"], ref["area"], rtol=1e-12)
    for a, axis in enumerate("zyx"):
        np.testing.assert_allclose(table[f"centroid_{axis}_um"], ref[f"centroid-{a}"], rtol=1e-12)
    np.testing.assert_allclose(table["equivalent_diameter_um"], ref["equivalent_diameter_area"], rtol=1e-12)
    np.testing.assert_allclose(table["principal_axis_0_um"], ref["axis_major_length"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(table["principal_axis_2_um"], ref["axis_minor_length"], rtol=1e-9, atol=1e-6)
    # Inertia eigenvalues from our covariance eigenvalues: ev_i = trace - lambda_i (skimage's definition).
    lam = (table[[f"principal_axis_{i}_um" for i in range(3)]].to_numpy() ** 2) / 20.0
    inertia = np.sort(lam.sum(axis=1, keepdims=True) - lam, axis=1)[:, ::-1]
    ref_inertia = ref[[f"inertia_tensor_eigvals-{i}" for i in range(3)]].to_numpy()
    np.testing.assert_allclose(inertia, ref_inertia, rtol=1e-9, atol=1e-9)
    for c in range(2):
        np.testing.assert_allclose(table[f"mean_intensity_c{c}"], ref[f"intensity_mean-{c}"], rtol=1e-9)
        np.testing.assert_array_equal(table[f"min_intensity_c{c}"], ref[f"intensity_min-{c}"])
        np.testing.assert_array_equal(table[f"max_intensity_c{c}"], ref[f"intensity_max-{c}"])
        np.testing.assert_allclose(table[f"std_intensity_c{c}"], ref[f"intensity_std-{c}"], rtol=1e-7)
        total = ndi.sum_labels(img[c].astype(np.float64), lab, labels)
        np.testing.assert_allclose(table[f"total_intensity_c{c}"], total, rtol=1e-12)
    # Extents in µm.
    np.testing.assert_allclose(table["extent_z_um"], (table["bbox_z1"] - table["bbox_z0"]) * VOXEL[0])


@pytest.mark.parametrize("kind", ["uint16", "float32"])
def test_reduction_is_exact_and_order_independent(volume, kind):
    lab, img, bounds = volume
    if kind == "float32":
        img = (img / 7.0).astype(np.float32)
    floats = ["sum_c0", "sumsq_c0", "sum_c1", "sumsq_c1"] if kind == "float32" else []
    whole = block_partials(lab, img)
    parts = _blockwise(lab, img, bounds)
    rng = np.random.default_rng(3)
    shuffled = _blockwise(lab, img, bounds, order=rng.permutation(len(parts)))
    once = reduce_partials(parts)
    tree = reduce_partials([reduce_partials(parts[i:i + 5]) for i in range(0, len(parts), 5)])
    exact = [c for c in once.columns if c not in floats]
    for other in (tree, reduce_partials(shuffled)):
        pd.testing.assert_frame_equal(once[exact], other[exact])
    # Integer columns (moments, bbox, 16-bit intensity sums) are bit-identical to the untiled kernel.
    pd.testing.assert_frame_equal(once[exact], whole[exact])
    assert once["sum_c0"].dtype == (np.float64 if floats else np.int64)
    for c in floats:
        np.testing.assert_allclose(once[c], whole[c], rtol=1e-12)
    # Float statistics agree with scikit-image too.
    if floats:
        table = finalize(once, VOXEL)
        ref = regionprops_table(lab.astype(np.int64), np.moveaxis(img, 0, -1).astype(np.float64),
                                properties=("intensity_mean", "intensity_std"))
        np.testing.assert_allclose(table["mean_intensity_c1"], ref["intensity_mean-1"], rtol=1e-10)
        np.testing.assert_allclose(table["std_intensity_c1"], ref["intensity_std-1"], rtol=1e-7)


def test_more_than_65535_labels_at_one_time_point():
    # 2x2x2 cubes tiling an 84^3 volume: 42^3 = 74,088 objects, shuffled uint32 IDs with gaps.
    n = 42
    rng = np.random.default_rng(11)
    ids = rng.permutation(np.arange(1, 3 * n**3, 3, dtype=np.uint32))[: n**3]
    cube = ids.reshape(n, n, n)
    lab = np.repeat(np.repeat(np.repeat(cube, 2, 0), 2, 1), 2, 2)
    lab[lab % 50 == 0] = 0  # some background
    assert np.count_nonzero(np.unique(lab)) > 65_535
    bounds = ([0, 31, 84], [0, 17, 50, 84], [0, 41, 84])  # odd cuts: cubes straddle blocks
    table = finalize(reduce_partials(_blockwise(lab, None, bounds)), (1.0, 1.0, 1.0))
    labels = np.unique(lab[lab > 0])
    assert table["label"].is_unique and len(table) == labels.size
    np.testing.assert_array_equal(table["label"].to_numpy(), labels)
    np.testing.assert_array_equal(table["volume_voxels"].to_numpy(), np.bincount(lab.ravel())[labels])
    com = np.array(ndi.center_of_mass(np.ones(lab.shape), lab, labels))
    np.testing.assert_allclose(table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(), com, rtol=1e-12)
    # Each cube's bbox is its own 2x2x2 cell of the grid.
    np.testing.assert_array_equal((table["bbox_z1"] - table["bbox_z0"]).to_numpy(), 2)
    np.testing.assert_array_equal(table["bbox_z0"].to_numpy() % 2, 0)


def test_large_ids_take_the_sorting_path_and_agree():
    rng = np.random.default_rng(5)
    lab = _blobs((12, 20, 18), 10, rng, dtype=np.uint64)
    big = lab.copy()
    big[big > 0] += np.uint64(1 << 50)  # coordinate-derived IDs far beyond the lookup table
    a, b = block_partials(lab), block_partials(big)
    assert (b["label"].to_numpy() == a["label"].to_numpy() + np.uint64(1 << 50)).all()
    pd.testing.assert_frame_equal(a.drop(columns="label"), b.drop(columns="label"))


def test_empty_block_and_empty_reduction():
    empty = block_partials(np.zeros((3, 4, 5), np.uint16), np.zeros((3, 4, 5), np.uint8), offset=(1, 2, 3))
    assert len(empty) == 0 and list(empty.columns) == partial_columns(1)
    one = block_partials(np.ones((2, 2, 2), np.uint16), np.full((2, 2, 2), 4, np.uint8))
    merged = reduce_partials([empty, one])
    assert len(merged) == 1 and merged["n"].iloc[0] == 8
    assert len(finalize(reduce_partials([empty]), VOXEL)) == 0


def test_single_voxel_objects_have_zero_axes():
    lab = np.zeros((3, 3, 3), np.uint8)
    lab[1, 1, 1] = 5
    t = finalize(block_partials(lab), VOXEL)
    assert t["volume_voxels"].iloc[0] == 1
    assert t[["principal_axis_0_um", "principal_axis_1_um", "principal_axis_2_um"]].to_numpy().max() == 0.0


def test_exact_integer_sums_beyond_float_precision():
    # 16-bit sums of squares over a big object exceed 2**53 only in int64: check exactness.
    lab = np.ones((64, 64, 64), np.uint8)
    img = np.full((64, 64, 64), 65535, np.uint16)
    img[0, 0, 0] = 65534
    p = block_partials(lab, img)
    exact_sq = (64**3 - 1) * 65535**2 + 65534**2
    assert int(p["sumsq_c0"].iloc[0]) == exact_sq
    t = finalize(p, VOXEL)
    ref = np.std(img.astype(np.float64))
    assert t["std_intensity_c0"].iloc[0] == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize(
    ("labels", "intensity", "error"),
    [
        (np.zeros((2, 2, 2), np.float32), None, DTypeError),
        (np.zeros((2, 2), np.uint8), None, ShapeError),
        (np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3)), ShapeError),
        (np.full((2, 2, 2), -1, np.int32), None, InvalidDataError),
        (np.ones((2, 2, 2), np.uint8), np.full((2, 2, 2), np.nan), InvalidDataError),
        (np.ones((2, 2, 2), np.uint8), np.zeros((2, 2, 2), complex), DTypeError),
    ],
)
def test_bad_input_is_named(labels, intensity, error):
    with pytest.raises(error):
        block_partials(labels, intensity)


def test_reduce_rejects_mixed_channel_counts():
    a = block_partials(np.ones((2, 2, 2), np.uint8))
    b = block_partials(np.ones((2, 2, 2), np.uint8), np.ones((2, 2, 2), np.uint8))
    with pytest.raises(ShapeError, match="channel"):
        reduce_partials([a, b])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    cz=st.lists(st.integers(1, 10), min_size=1, max_size=3, unique=True),
    cy=st.lists(st.integers(1, 12), min_size=1, max_size=3, unique=True),
    cx=st.lists(st.integers(1, 11), min_size=1, max_size=3, unique=True),
)
def test_any_block_grid_gives_the_untiled_partials(seed, cz, cy, cx):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 6, (11, 13, 12)).astype(np.uint16)
    img = rng.integers(0, 255, (11, 13, 12)).astype(np.uint8)
    bounds = tuple([0, *sorted(c), n] for c, n in zip((cz, cy, cx), lab.shape, strict=True))
    tiled = reduce_partials(_blockwise(lab, img[None], bounds))
    pd.testing.assert_frame_equal(tiled, block_partials(lab, img))


def test_surface_area_of_a_sphere_with_anisotropic_voxels():
    vs = (1.0, 0.4, 0.4)
    r = 8.0
    zz, yy, xx = np.indices((21, 51, 51)).astype(float)
    ball = ((zz - 10) * vs[0]) ** 2 + ((yy - 25) * vs[1]) ** 2 + ((xx - 25) * vs[2]) ** 2 <= r * r
    area = surface_area(ball, vs)
    # Marching cubes on a binary mask overestimates a smooth surface (staircase): documented bias.
    assert 1.0 < area / (4 * np.pi * r * r) < 1.2
    # An axis-aligned box: faces lie on the voxel faces, edges and corners are chamfered, so the
    # area is the box's minus the chamfer loss, which is at most one voxel-wide band per edge.
    box = np.ones((4, 10, 12), bool)
    full = 2 * (4 * 1.0 * 10 * 0.4 + 4 * 1.0 * 12 * 0.4 + 10 * 0.4 * 12 * 0.4)
    got = surface_area(box, vs)
    assert full * 0.85 < got < full
    with pytest.raises(InvalidDataError):
        surface_area(np.zeros((3, 3, 3), bool), vs)


def test_integer_variance_is_exact_for_signed_and_constant_data():
    rng = np.random.default_rng(9)
    lab = rng.integers(1, 4, (6, 7, 8)).astype(np.uint8)
    img = rng.integers(-32768, 32767, (6, 7, 8)).astype(np.int16)
    img[lab == 3] = -1234  # a constant object: std exactly 0
    t = finalize(block_partials(lab, img), VOXEL)
    for row in t.itertuples(index=False):
        vals = img[lab == row.label].astype(np.float64)
        assert row.std_intensity_c0 == pytest.approx(vals.std(), rel=1e-12)
        assert row.mean_intensity_c0 == pytest.approx(vals.mean(), rel=1e-15)
    assert t["std_intensity_c0"].iloc[2] == 0.0


@pytest.mark.realdata
def test_real_ovule_labels_tiled_equal_skimage(shared_data):
    """PlantSeg's ovule (real confocal cells, non-sequential IDs, anisotropic voxels)."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(shared_data / "segmentation" / "plantseg" / "sample_ovule.h5", "r") as f:
        lab = f["label"][...]
        raw = f["raw"][...]
        vs = tuple(float(v) for v in f["label"].attrs.get("element_size_um", (0.235, 0.15, 0.15)))
    bounds = ([0, 7, 19, lab.shape[0]], [0, 45, 46, 90, lab.shape[1]], [0, 33, 101, lab.shape[2]])
    table = finalize(reduce_partials(_blockwise(lab, raw[None], bounds)), vs)
    ref = pd.DataFrame(regionprops_table(lab.astype(np.int64), raw, spacing=vs, properties=(
        "label", "area", "centroid", "bbox", "axis_major_length", "axis_minor_length", "intensity_mean",
        "intensity_std")))
    np.testing.assert_array_equal(table["label"].to_numpy(), ref["label"].to_numpy())
    np.testing.assert_allclose(table["volume_um3"], ref["area"], rtol=1e-12)
    for a, axis in enumerate("zyx"):
        np.testing.assert_allclose(table[f"centroid_{axis}_um"], ref[f"centroid-{a}"], rtol=1e-12)
        np.testing.assert_array_equal(table[f"bbox_{axis}0"], ref[f"bbox-{a}"])
        np.testing.assert_array_equal(table[f"bbox_{axis}1"], ref[f"bbox-{a + 3}"])
    np.testing.assert_allclose(table["principal_axis_0_um"], ref["axis_major_length"], rtol=1e-9)
    np.testing.assert_allclose(table["principal_axis_2_um"], ref["axis_minor_length"], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(table["mean_intensity_c0"], ref["intensity_mean"], rtol=1e-12)
    np.testing.assert_allclose(table["std_intensity_c0"], ref["intensity_std"], rtol=1e-9)
