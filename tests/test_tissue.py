"""Tissue mask and signed distance to its boundary (anisotropic voxels), against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from vollseg_dask.errors import InvalidDataError, ShapeError
from vollseg_dask.kernels.distance import (
    auto_tissue_mask,
    box_half_diagonal,
    coarse_distance,
    crop_radius,
    nearest_voxel,
    pool_mask,
    signed_distance,
    signed_distance_at,
)

VOXEL = (1.5, 0.5, 0.4)  # strongly anisotropic, z coarsest
SHAPE = (18, 44, 52)


def _ellipsoid(shape=SHAPE, vs=VOXEL, centre_um=(13.0, 11.0, 10.5), semi_um=(10.0, 8.0, 7.5)):
    pts = np.indices(shape).astype(float) * np.asarray(vs)[:, None, None, None]
    q = sum(((pts[a] - centre_um[a]) / semi_um[a]) ** 2 for a in range(3))
    return q <= 1.0


def _brute(mask, vs, voxels):
    """Signed distance by exhaustive search over all voxels of the other phase."""
    coords = np.indices(mask.shape).reshape(3, -1).T * np.asarray(vs)
    flat = mask.ravel()
    out = []
    for v in voxels:
        inside = mask[tuple(v)]
        other = coords[flat != inside]
        d = np.sqrt(((other - np.asarray(v) * vs) ** 2).sum(axis=1)).min()
        out.append(d if inside else -d)
    return np.array(out)


@pytest.fixture(scope="module")
def tissue():
    return _ellipsoid()


@pytest.fixture(scope="module")
def samples(tissue):
    rng = np.random.default_rng(2)
    return np.column_stack([rng.integers(0, n, 150) for n in tissue.shape])


def test_signed_distance_equals_brute_force(tissue, samples):
    field = signed_distance(tissue, VOXEL)
    got = field[tuple(samples.T)]
    np.testing.assert_allclose(got, _brute(tissue, VOXEL, samples), rtol=1e-12)
    assert (np.sign(got) == np.where(tissue[tuple(samples.T)], 1, -1)).all()
    at, inside = signed_distance_at(tissue, VOXEL, samples)
    np.testing.assert_array_equal(at, got)
    np.testing.assert_array_equal(inside, tissue[tuple(samples.T)])


def test_distance_approaches_the_analytic_sphere():
    # A sphere: the exact transform of the voxelised mask is within one voxel diagonal of R - |p - c|.
    vs = (1.0, 0.5, 0.5)
    shape = (30, 60, 60)
    c = np.array([15.0, 15.0, 15.0])
    r = 11.0
    pts = np.indices(shape).astype(float) * np.asarray(vs)[:, None, None, None]
    rad = np.sqrt(((pts - c[:, None, None, None]) ** 2).sum(axis=0))
    mask = rad <= r
    field = signed_distance(mask, vs)
    diag = float(np.linalg.norm(vs))
    assert np.abs(field - (r - rad)).max() <= diag


def test_degenerate_masks():
    vs = (1.0, 1.0, 1.0)
    assert np.isposinf(signed_distance(np.ones((3, 4, 5)), vs)).all()
    assert np.isneginf(signed_distance(np.zeros((3, 4, 5)), vs)).all()
    with pytest.raises(ShapeError):
        signed_distance(np.ones((3, 4)), vs)
    with pytest.raises(ShapeError):
        signed_distance(np.ones((3, 4, 5)), (1.0, 0.0, 1.0))


def test_nearest_voxel_rounds_half_up_and_clips():
    got = nearest_voxel(np.array([[0.5, 1.49, -3.0], [9.7, 2.5, 4.0]]), (10, 5, 5))
    np.testing.assert_array_equal(got, [[1, 1, 0], [9, 3, 4]])
    with pytest.raises(InvalidDataError):
        nearest_voxel(np.array([[np.nan, 0, 0]]), (2, 2, 2))


@pytest.mark.parametrize("factors", [(1, 2, 2), (2, 4, 4), (3, 5, 7), (1, 8, 8)])
def test_pool_mask_matches_a_loop(tissue, factors):
    any_, all_ = pool_mask(tissue, factors)
    f = factors
    for idx in np.ndindex(any_.shape):
        box = tissue[tuple(slice(i * k, (i + 1) * k) for i, k in zip(idx, f, strict=True))]
        assert any_[idx] == box.any() and all_[idx] == box.all()


@pytest.mark.parametrize("factors", [(1, 2, 2), (2, 4, 4), (3, 5, 7), (1, 8, 8)])
def test_coarse_distance_respects_its_proven_bound(tissue, factors):
    # Every voxel of the volume: estimate within the per-voxel bound, the bound within 2 H, and
    # voxels in mixed boxes are exactly those whose box is cut by the boundary.
    field = signed_distance(tissue, VOXEL)
    any_, all_ = pool_mask(tissue, factors)
    vox = np.indices(tissue.shape).reshape(3, -1).T
    est, bound, inside, mixed = coarse_distance(any_, all_, factors, VOXEL, vox)
    exact = field[tuple(vox.T)]
    ok = ~mixed
    assert (np.abs(exact[ok] - est[ok]) <= bound[ok] + 1e-9).all()
    assert (bound <= 2 * box_half_diagonal(factors, VOXEL) + 1e-9).all()
    np.testing.assert_array_equal(inside[ok], tissue[tuple(vox[ok].T)])
    assert (np.abs(exact[mixed]) <= bound[mixed] + 1e-9).all()
    # A crop of crop_radius(bound) around a mixed voxel makes the distance exact there.
    for i in np.flatnonzero(mixed)[::97]:
        r = crop_radius(float(bound[i]), VOXEL)
        lo = np.maximum(vox[i] - r, 0)
        hi = np.minimum(vox[i] + r + 1, tissue.shape)
        crop = tissue[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        d, ins = signed_distance_at(crop, VOXEL, vox[i:i + 1], offset=lo)
        assert d[0] == exact[i] and ins[0] == tissue[tuple(vox[i])]


def test_signed_distance_at_rejects_points_outside_the_crop(tissue):
    with pytest.raises(ShapeError, match="outside"):
        signed_distance_at(tissue[:4], VOXEL, np.array([[5, 0, 0]]))


CAVITY = _ellipsoid(centre_um=(13.0, 11.0, 10.5), semi_um=(3.0, 2.0, 2.0))


def _synthetic_tissue_image(rng):
    tissue = _ellipsoid()
    # A cavity inside (to be filled) and a detached bright speck (to be dropped).
    cavity = CAVITY
    speck = np.zeros(SHAPE, bool)
    speck[0:4, 36:43, 43:51] = True
    img = np.where(tissue & ~cavity, 400.0, 100.0) + np.where(speck, 500.0, 0.0)
    img += rng.normal(0, 25.0, SHAPE)
    return img.astype(np.float32), tissue


def test_auto_tissue_mask_recovers_the_shape(rng):
    img, truth = _synthetic_tissue_image(rng)
    mask, thr = auto_tissue_mask(img, VOXEL, sigma_um=1.0)
    # Reference pipeline written out independently.
    smooth = ndi.gaussian_filter(img.astype(np.float64), np.array([1.0, 1.0, 1.0]) / VOXEL, mode="nearest")
    assert thr == pytest.approx(threshold_otsu(smooth, nbins=256))
    ref = ndi.binary_fill_holes(smooth > thr)
    lab, n = ndi.label(ref, np.ones((3, 3, 3)))
    ref = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    np.testing.assert_array_equal(mask, ref)
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9
    assert CAVITY.sum() > 20 and mask[CAVITY].all()  # cavity filled
    assert not mask[0:4, 36:43, 43:51].any()  # speck removed
    fixed, thr2 = auto_tissue_mask(img, VOXEL, sigma_um=1.0, threshold=250.0)
    assert thr2 == 250.0 and fixed.sum() > 0


def test_auto_tissue_mask_errors():
    with pytest.raises(InvalidDataError, match="constant"):
        auto_tissue_mask(np.ones((4, 5, 6)), VOXEL)
    with pytest.raises(InvalidDataError, match="NaN"):
        auto_tissue_mask(np.full((4, 5, 6), np.nan), VOXEL)
    with pytest.raises(ShapeError):
        auto_tissue_mask(np.ones((4, 5)), VOXEL)
