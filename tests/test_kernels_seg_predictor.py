"""The ground-truth predictor: exact maps, tiling invariance, perturbations, interface checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from vollseg_dask.errors import InvalidDataError, ShapeError
from vollseg_dask.plan import plan_blocks
from vollseg_dask.predictors.base import BlockPrediction, make_rays, validate_prediction
from vollseg_dask.predictors.ground_truth import (
    ground_truth_maps,
    hash_uniform,
    membrane_boundary,
    unet_foreground,
)
from vollseg_dask.segmentation.testing import grid_cells, voronoi_tissue

RAYS = make_rays(32)


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    return voronoi_tissue((24, 48, 48), 60, seed=2, min_distance=5, membrane=True)


def _whole(lab, **kw):
    sl = tuple(slice(0, s) for s in lab.shape)
    return ground_truth_maps(lab, read=sl, core=sl, volume_shape=lab.shape, t=0, rays=RAYS, **kw)


def test_maps_match_independent_references(tissue):
    from stardist.geometry import star_dist3D

    pred = _whole(tissue)
    ids = np.unique(tissue)[1:]
    # one candidate per object, at its EDT maximum, with StarDist's own ray lengths
    assert len(pred.points) == len(ids)
    on = tissue[tuple(pred.points.T)]
    assert sorted(on.tolist()) == ids.tolist()
    ref_d = star_dist3D(tissue.astype(np.uint16), RAYS)
    np.testing.assert_array_equal(pred.dist, ref_d[tuple(pred.points.T)])
    for k in ids[:10]:
        obj = tissue == k
        edt = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1, 1:-1]
        np.testing.assert_allclose(pred.prob[obj], (edt / edt.max())[obj], rtol=1e-6)
        np.testing.assert_allclose(pred.distance[obj], edt[obj], rtol=1e-6)
        c = pred.points[tissue[tuple(pred.points.T)] == k][0]
        assert edt[tuple(c)] == edt.max()
    assert (pred.prob[tissue == 0] == 0).all()
    np.testing.assert_allclose(pred.cand_prob, 1.0)


def test_unet_foreground_separates_touching_cells_under_26_connectivity():
    lab = voronoi_tissue((20, 40, 40), 40, seed=4, min_distance=5)  # touching cells, no membranes
    fg = unet_foreground(lab)
    n = ndimage.label(fg, structure=np.ones((3, 3, 3)))[1]
    assert n >= len(np.unique(lab)) - 1
    # every foreground component lies inside one cell
    comp, _ = ndimage.label(fg, structure=np.ones((3, 3, 3)))
    pairs = np.unique(np.stack([comp[fg], lab[fg]], axis=1), axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs)
    # only raster-earlier voxels of touching pairs are removed: brute force on a small crop
    crop = lab[:6, :8, :8]
    b = membrane_boundary(crop)
    for p in np.ndindex(*crop.shape):
        expect = False
        for d in np.ndindex(3, 3, 3):
            d = tuple(v - 1 for v in d)
            if not any(d) or next(v for v in d if v) != 1:
                continue
            q = tuple(a + e for a, e in zip(p, d, strict=True))
            if all(0 <= a < s for a, s in zip(q, crop.shape, strict=True)) and crop[q] and crop[p] and crop[q] != crop[p]:
                expect = True
        assert b[p] == expect


def test_maps_are_identical_for_every_tiling(tissue):
    kw = dict(drop_fraction=0.3, merge_fraction=0.1, false_rate=0.3, noise=0.05, seed=11)
    whole = _whole(tissue, **kw)
    for block, origin in [((8, 16, 16), 0), ((7, 13, 20), (1, 1, 1)), ((24, 24, 48), (0, 5, 0))]:
        plan = plan_blocks(tissue.shape, block, 16, origin=origin)
        prob = np.zeros(tissue.shape, np.float32)
        fg = np.zeros(tissue.shape, np.float32)
        pts = []
        for b in plan:
            p = ground_truth_maps(tissue[b.read], read=b.read, core=b.core, volume_shape=tissue.shape, t=0,
                                  rays=RAYS, **kw)
            prob[b.core] = p.prob
            fg[b.core] = p.foreground
            pts.append(np.concatenate([p.points, p.cand_prob[:, None], p.dist], axis=1))
        np.testing.assert_array_equal(prob, whole.prob)
        np.testing.assert_array_equal(fg, whole.foreground)
        got = np.concatenate(pts)
        ref = np.concatenate([whole.points, whole.cand_prob[:, None], whole.dist], axis=1)
        np.testing.assert_array_equal(got[np.lexsort(got[:, :3].T[::-1])], ref[np.lexsort(ref[:, :3].T[::-1])])


def test_perturbations_are_seeded_and_controlled(tissue):
    n_obj = len(np.unique(tissue)) - 1
    clean = _whole(tissue)
    dropped = _whole(tissue, drop_fraction=0.5, seed=3)
    assert 0.3 * n_obj < n_obj - len(dropped.points) < 0.7 * n_obj
    # dropped objects: no candidate and zero probability
    kept_labels = set(tissue[tuple(dropped.points.T)].tolist())
    for k in set(np.unique(tissue)[1:].tolist()) - kept_labels:
        assert (dropped.prob[tissue == k] == 0).all()
    again = _whole(tissue, drop_fraction=0.5, seed=3)
    np.testing.assert_array_equal(again.points, dropped.points)
    other = _whole(tissue, drop_fraction=0.5, seed=4)
    assert not np.array_equal(other.points, dropped.points)
    false = _whole(tissue, false_rate=1.0, seed=3)
    extra = len(false.points) - len(clean.points)
    assert extra > 0 and (false.cand_prob[len(clean.points):] < 0.9).all()
    noisy = _whole(tissue, noise=0.1, seed=3)
    d = noisy.prob - clean.prob
    assert 0.05 < d[tissue > 0].std() < 0.15 and noisy.prob.min() >= 0 and noisy.prob.max() <= 1
    merged = _whole(tissue, merge_fraction=0.2, seed=3)
    n_clean = ndimage.label(clean.foreground > 0.5, structure=np.ones((3, 3, 3)))[1]
    n_merged = ndimage.label(merged.foreground > 0.5, structure=np.ones((3, 3, 3)))[1]
    assert n_merged < n_clean


def test_hash_uniform_is_uniform_and_counter_based():
    u = hash_uniform(5, 1, np.arange(100_000))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(hash_uniform(5, 1, np.arange(10, 20)), u[10:20])


def test_small_halo_is_refused(tissue):
    plan = plan_blocks(tissue.shape, (8, 16, 16), 2)
    b = plan.blocks[len(plan) // 2]
    with pytest.raises(InvalidDataError, match="halo"):
        ground_truth_maps(tissue[b.read], read=b.read, core=b.core, volume_shape=tissue.shape, t=0, rays=RAYS)


def test_labels_beyond_uint16():
    from stardist.geometry import star_dist3D

    small = grid_cells((8, 16, 16), (4, 4, 4))
    p = _whole(small + np.uint32(70_000))  # StarDist's star_dist3D would wrap these to uint16
    assert len(p.points) == 32
    ref = star_dist3D(small.astype(np.uint16), RAYS)
    np.testing.assert_array_equal(p.dist, ref[tuple(p.points.T)])


def test_validate_prediction_names_the_problem():
    core = (slice(0, 4), slice(0, 4), slice(0, 4))
    good = BlockPrediction(prob=np.zeros((4, 4, 4)), foreground=np.zeros((4, 4, 4)), points=np.zeros((0, 3)),
                           cand_prob=np.zeros(0), dist=np.zeros((0, 8)))
    out = validate_prediction(good, (4, 4, 4), core, 8)
    assert out.prob.dtype == np.float32 and out.points.dtype == np.int64
    bad = BlockPrediction(prob=np.zeros((4, 4, 5)), foreground=np.zeros((4, 4, 4)), points=np.zeros((0, 3)),
                          cand_prob=np.zeros(0), dist=np.zeros((0, 8)))
    with pytest.raises(ShapeError, match="prob"):
        validate_prediction(bad, (4, 4, 4), core, 8)
    outside = BlockPrediction(prob=np.zeros((4, 4, 4)), foreground=np.zeros((4, 4, 4)),
                              points=np.array([[5, 0, 0]]), cand_prob=np.ones(1), dist=np.ones((1, 8)))
    with pytest.raises(ShapeError, match="outside"):
        validate_prediction(outside, (4, 4, 4), core, 8)


def test_object_edt_equals_brute_force_nearest_outside_voxel(rng):
    from vollseg_dask.predictors.ground_truth import object_edt

    lab = voronoi_tissue((10, 12, 14), 6, seed=1, margin=0.0)  # touching cells filling the box
    lab[rng.random(lab.shape) < 0.05] = 0
    faces = [(True, False), (False, True), (True, True)]
    got = object_edt(lab, faces)
    # brute force: "outside" = background, voxels face-adjacent to another object, beyond border faces
    pad = [(int(a), int(b)) for a, b in faces]
    lp = np.pad(lab, pad)
    outside = []
    for p in np.ndindex(*lp.shape):
        if lp[p] == 0:
            outside.append(p)
            continue
        for ax in range(3):
            for step in (-1, 1):
                q = list(p)
                q[ax] += step
                if 0 <= q[ax] < lp.shape[ax] and lp[tuple(q)] not in (0, lp[p]):
                    outside.append(p)
                    break
            else:
                continue
            break
    outside = np.array(outside, float)
    for p in np.argwhere(lab > 0)[::7]:
        pp = p + [a for a, _ in pad]
        ref = np.sqrt(((outside - pp) ** 2).sum(axis=1)).min()
        assert got[tuple(p)] == pytest.approx(ref, rel=1e-6)
    assert (got[lab == 0] == 0).all()


def test_face_only_walls_separate_under_6_connectivity_and_are_thinner():
    lab = voronoi_tissue((20, 40, 40), 40, seed=4, min_distance=5)
    fg6 = unet_foreground(lab, connectivity=6)
    fg26 = unet_foreground(lab, connectivity=26)
    assert (fg26 <= fg6).all() and fg6.sum() > fg26.sum()
    comp, _ = ndimage.label(fg6)  # 6-connectivity
    pairs = np.unique(np.stack([comp[fg6], lab[fg6]], axis=1), axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs)  # no component spans two cells
    # brute force on a crop: a voxel is wall iff a face neighbour ahead of it holds another cell
    crop = lab[:6, :8, :8]
    wall = membrane_boundary(crop, connectivity=6)
    for p in np.ndindex(*crop.shape):
        expect = False
        for ax in range(3):
            q = list(p)
            q[ax] += 1
            if q[ax] < crop.shape[ax] and crop[p] and crop[tuple(q)] and crop[tuple(q)] != crop[p]:
                expect = True
        assert wall[p] == expect


def test_object_without_interior_gets_finite_probability():
    """A one-slice plate between two cells has no interior voxel: its probability is 1, never NaN."""
    from vollseg_dask.predictors.base import make_rays
    from vollseg_dask.predictors.ground_truth import ground_truth_maps

    lab = np.zeros((9, 12, 12), np.uint32)
    lab[1:4, 2:10, 2:10] = 1
    lab[4, 2:10, 2:10] = 2
    lab[5:8, 2:10, 2:10] = 3
    full = (slice(0, 9), slice(0, 12), slice(0, 12))
    maps = ground_truth_maps(lab, read=full, core=full, volume_shape=lab.shape, t=0, rays=make_rays(32),
                             prob_threshold=0.5)
    assert np.isfinite(maps.prob).all()
    assert (maps.prob[lab == 2] == 1.0).all()
