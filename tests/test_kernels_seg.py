"""Segmentation kernels against independent references (SciPy, scikit-image, StarDist, brute force)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from vollseg_dask.errors import ShapeError
from vollseg_dask.kernels import components as kc
from vollseg_dask.kernels import seeds as ks
from vollseg_dask.kernels import watershed as kw
from vollseg_dask.plan import plan_blocks


def _random_mask(rng: np.random.Generator, shape, p=0.45, smooth=1.0) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.random(shape), smooth)
    return noise > np.quantile(noise, 1 - p)


def _voronoi(rng, shape, n):
    from scipy.spatial import cKDTree

    pts = rng.uniform(0, 1, (n, 3)) * (np.array(shape) - 1)
    grid = np.indices(shape).reshape(3, -1).T
    return (cKDTree(pts).query(grid)[1] + 1).reshape(shape).astype(np.int64)


# ------------------------------------------------------------------------------------------ IDs


def test_coordinate_ids_roundtrip_and_raster_order(rng):
    shape = (7, 11, 13)
    coords = np.stack([rng.integers(0, s, 50) for s in shape], axis=1)
    ids = kc.coordinate_ids(coords, shape, t=5, namespace=kc.NS_SEED)
    back, t, ns = kc.decode_ids(ids, shape)
    np.testing.assert_array_equal(back, coords)
    assert (t == 5).all() and (ns == kc.NS_SEED).all()
    # order of IDs within one (t, namespace) = raster order = np.ravel_multi_index order
    lin = np.ravel_multi_index(tuple(coords.T), shape)
    assert np.array_equal(np.argsort(ids, kind="stable"), np.argsort(lin, kind="stable"))
    with pytest.raises(ShapeError):
        kc.coordinate_ids(np.array([[7, 0, 0]]), shape, 0, 1)


# ------------------------------------------------------------------------------------------ components


@pytest.mark.parametrize("connectivity", [6, 26])
def test_label_components_ids_and_table_match_brute_force(rng, connectivity):
    mask = _random_mask(rng, (9, 14, 12))
    offset = (3, 5, 7)
    shape = (20, 30, 30)
    lab, table = kc.label_components(mask, offset=offset, shape=shape, t=2, connectivity=connectivity)
    ref, n = ndimage.label(mask, structure=kc.structure(connectivity))
    assert len(table["id"]) == n
    for k in range(1, n + 1):
        vox = np.argwhere(ref == k)  # raster order: first row is the smallest voxel
        glob = vox + offset
        expect = kc.coordinate_ids(glob[:1], shape, 2, kc.NS_COMPONENT)[0]
        assert (lab[ref == k] == expect).all()
        row = int(np.searchsorted(table["id"], expect))
        assert table["count"][row] == len(vox)
        np.testing.assert_array_equal([table["sum_z"][row], table["sum_y"][row], table["sum_x"][row]], glob.sum(0))
        np.testing.assert_array_equal([table[c][row] for c in ("z0", "y0", "x0")], glob.min(0))
        np.testing.assert_array_equal([table[c][row] for c in ("z1", "y1", "x1")], glob.max(0))
    assert (lab[~mask] == 0).all()


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("block_shape,origin", [((4, 5, 6), 0), ((3, 7, 4), (1, 2, 3)), ((20, 20, 20), 0)])
def test_blockwise_components_equal_whole_volume(rng, connectivity, block_shape, origin):
    """Per-block labels + face pairs + union-find = scipy.ndimage.label on the whole volume, same IDs."""
    shape = (11, 13, 15)
    mask = _random_mask(rng, shape, p=0.5)
    whole, _ = kc.label_components(mask, offset=(0, 0, 0), shape=shape, t=0, connectivity=connectivity)
    plan = plan_blocks(shape, block_shape, 0, origin=origin)
    prov = np.zeros(shape, np.uint64)
    ids = []
    for b in plan:
        lab, tab = kc.label_components(mask[b.core], offset=b.core_offset, shape=shape, t=0,
                                       connectivity=connectivity)
        prov[b.core] = lab
        ids.append(tab["id"])
    pairs = []
    for b in plan:
        grown = tuple(slice(c.start, min(n, c.stop + 1)) for c, n in zip(b.core, shape, strict=True))
        pairs.append(kc.face_pairs(prov[grown], b.shape, connectivity))
    keys, roots = kc.merge_equivalences(np.concatenate(ids), np.concatenate(pairs))
    merged = kc.relabel_sorted(prov, keys, roots, default=None)
    np.testing.assert_array_equal(merged, whole)
    # and the partition equals scipy's
    ref, n = ndimage.label(mask, structure=kc.structure(connectivity))
    assert len(np.unique(whole)) - 1 == n


def test_face_pairs_rejects_wrong_shape():
    with pytest.raises(ShapeError):
        kc.face_pairs(np.zeros((5, 5, 5), np.uint64), (3, 3, 3), 6)


def test_merge_equivalences_min_root_and_relabel_sorted():
    ids = np.array([50, 7, 9, 30, 12, 4], np.uint64)
    pairs = np.array([[50, 9], [9, 30], [12, 4]], np.uint64)
    keys, roots = kc.merge_equivalences(ids, pairs)
    expect = {4: 4, 7: 7, 9: 9, 12: 4, 30: 9, 50: 9}
    assert dict(zip(keys.tolist(), roots.tolist(), strict=True)) == expect
    lab = np.array([[0, 50, 12], [7, 30, 0]], np.uint64)
    out = kc.relabel_sorted(lab, keys, roots)
    np.testing.assert_array_equal(out, [[0, 9, 4], [7, 9, 0]])
    with pytest.raises(ShapeError):
        kc.relabel_sorted(np.array([99], np.uint64), keys, roots, default=None)


# ------------------------------------------------------------------------------------------ StarDist geometry


def test_ray_distances_equal_stardist_star_dist3d(rng):
    from stardist.geometry import star_dist3D

    from vollseg_dask.predictors.base import make_rays

    rays = make_rays(32)
    lab = _voronoi(rng, (18, 20, 22), 25)
    lab[rng.random(lab.shape) < 0.02] = 0
    ref = star_dist3D(lab.astype(np.uint16), rays)
    pts = np.argwhere(lab > 0)[::11]
    got = ks.ray_distances(lab, pts, rays)
    np.testing.assert_array_equal(got, ref[tuple(pts.T)])
    # labels beyond uint16 (StarDist would wrap them): same distances
    big = np.where(lab > 0, lab + 70_000, 0)
    np.testing.assert_array_equal(ks.ray_distances(big, pts, rays), got)


def test_nms_matches_stardist_and_ignores_input_order(rng):
    from stardist.nms import non_maximum_suppression_3d_sparse

    from vollseg_dask.predictors.base import make_rays

    rays = make_rays(32)
    n = 120
    pts = np.stack([rng.integers(4, s - 4, n) for s in (30, 40, 40)], axis=1)
    dist = rng.uniform(2.0, 5.0, (n, 1)) * rng.uniform(0.8, 1.2, (n, len(rays)))
    prob = rng.permutation(np.linspace(0.5, 0.99, n))  # distinct: StarDist's own order is then defined
    keep = ks.nms_sparse(pts, prob, dist, rays, shape=(30, 40, 40), nms_thresh=0.3)
    _, _, _, inds = non_maximum_suppression_3d_sparse(dist.astype(np.float32), prob, pts.astype(np.float32),
                                                      rays, nms_thresh=0.3)
    ref = np.zeros(n, bool)
    ref[inds] = True
    np.testing.assert_array_equal(keep, ref)
    assert 0 < keep.sum() < n
    perm = rng.permutation(n)
    np.testing.assert_array_equal(ks.nms_sparse(pts[perm], prob[perm], dist[perm], rays, shape=(30, 40, 40),
                                                nms_thresh=0.3), keep[perm])
    # ties in probability: the smaller linear index wins, whatever the input order
    tie_pts = np.array([[10, 10, 10], [10, 10, 11]])
    tie = ks.nms_sparse(tie_pts, np.array([0.8, 0.8]), np.full((2, len(rays)), 4.0), rays, shape=(30, 40, 40))
    tie_rev = ks.nms_sparse(tie_pts[::-1], np.array([0.8, 0.8]), np.full((2, len(rays)), 4.0), rays,
                            shape=(30, 40, 40))
    np.testing.assert_array_equal(tie, [True, False])
    np.testing.assert_array_equal(tie_rev, [False, True])


def test_render_polyhedra_equals_stardist_and_is_translation_exact(rng):
    from stardist.geometry import polyhedron_to_label

    from vollseg_dask.predictors.base import make_rays

    rays = make_rays(32)
    shape = (24, 30, 30)
    pts = np.array([[6, 7, 8], [16, 20, 21], [12, 8, 22]])
    dist = rng.uniform(3.0, 5.5, (3, len(rays))).astype(np.float32)
    ids = np.array([5, 9, 13], np.uint64)
    prob = np.array([0.9, 0.8, 0.7])
    whole = ks.render_polyhedra(tuple(slice(0, s) for s in shape), pts, dist, prob, ids, rays, volume_shape=shape)
    ref = polyhedron_to_label(dist, pts, rays, shape, verbose=False)  # labels 1..3, disjoint here
    for k, i in enumerate(ids, start=1):
        # identical up to voxels exactly on a face (float32 of absolute vs canonical coordinates)
        a, b = whole == i, ref == k
        assert (a ^ b).sum() <= 0.01 * b.sum()
    # any sub-region renders exactly the same voxels as the whole
    for region in [(slice(3, 17), slice(0, 13), slice(5, 30)), (slice(10, 24), slice(15, 30), slice(0, 25))]:
        part = ks.render_polyhedra(region, pts, dist, prob, ids, rays, volume_shape=shape)
        np.testing.assert_array_equal(part, whole[region])


def test_render_overlap_rule_highest_probability_then_smaller_id():
    from vollseg_dask.predictors.base import make_rays

    rays = make_rays(16)
    pts = np.array([[10, 10, 10], [10, 10, 13]])
    dist = np.full((2, len(rays)), 4.0, np.float32)
    region = tuple(slice(0, 20) for _ in range(3))
    out = ks.render_polyhedra(region, pts, dist, np.array([0.6, 0.9]), np.array([3, 7], np.uint64), rays)
    both = (out != 0)
    assert out[10, 10, 11] == 7 and out[10, 10, 12] == 7 and both.sum() > 0
    tie = ks.render_polyhedra(region, pts, dist, np.array([0.9, 0.9]), np.array([3, 7], np.uint64), rays)
    assert tie[10, 10, 11] == 3 and tie[10, 10, 12] == 3
    tie_rev = ks.render_polyhedra(region, pts[::-1], dist, np.array([0.9, 0.9]), np.array([7, 3], np.uint64), rays)
    np.testing.assert_array_equal(tie_rev, tie)


def test_boxes_containing_points_equals_brute_force(rng):
    boxes_lo = rng.integers(0, 40, (300, 3))
    boxes = np.concatenate([boxes_lo, boxes_lo + rng.integers(0, 8, (300, 3))], axis=1)
    pts = rng.integers(0, 48, (200, 3))
    got = ks.boxes_containing_points(boxes, pts)
    brute = np.array([((pts >= b[:3]) & (pts <= b[3:])).all(axis=1).any() for b in boxes])
    np.testing.assert_array_equal(got, brute)
    assert got.any() and not got.all()
    np.testing.assert_array_equal(ks.pool_seeds(pts, boxes), ~brute)
    assert not ks.boxes_containing_points(boxes, np.zeros((0, 3))).any()


def test_dilate_seeds_equals_grey_dilation_with_ball(rng):
    from skimage.morphology import ball

    shape = (20, 22, 24)
    pts = np.stack([rng.integers(0, s, 40) for s in shape], axis=1)
    lin = np.ravel_multi_index(tuple(pts.T), shape)
    pts = pts[np.unique(lin, return_index=True)[1]]
    # small distinct IDs: SciPy's grey_dilation rounds uint64 through float64
    ids = rng.permutation(len(pts)).astype(np.uint64) + 1
    img = np.zeros(shape, np.uint64)
    img[tuple(pts.T)] = ids
    for r in (0, 1, 2, 3):
        ref = ndimage.grey_dilation(img, footprint=ball(r), mode="constant", cval=0)
        whole = ks.dilate_seeds(tuple(slice(0, s) for s in shape), pts, ids, r)
        np.testing.assert_array_equal(whole, ref)
        region = (slice(4, 15), slice(0, 9), slice(10, 24))
        np.testing.assert_array_equal(ks.dilate_seeds(region, pts, ids, r), ref[region])
    # seeds whose balls all miss the region
    far = (slice(0, 2), slice(0, 2), slice(0, 2))
    assert not ks.dilate_seeds(far, np.array([[15, 15, 15]]), np.array([3], np.uint64), 2).any()


# ------------------------------------------------------------------------------------------ watershed


def test_watershed_keys_order_and_marker_tie_break():
    img = np.array([[[2.0, 1.0, 1.0, 3.0, 1.0]]])
    mk = np.array([[[0, 5, 0, 0, 2]]])
    keys = kw.watershed_keys(img, mk)
    # value order kept; equal values: markers first, markers in raster order
    assert keys[0, 0, 1] < keys[0, 0, 4] < keys[0, 0, 2] < keys[0, 0, 0] < keys[0, 0, 3]


def test_seeded_watershed_equals_skimage_without_ties(rng):
    from skimage.segmentation import watershed

    shape = (12, 16, 16)
    img = rng.random(shape)
    mask = _random_mask(rng, shape, p=0.8)
    markers = np.zeros(shape, np.uint64)
    pts = np.argwhere(mask)[rng.choice(int(mask.sum()), 12, replace=False)]
    markers[tuple(pts.T)] = np.arange(1, 13, dtype=np.uint64) * 1000
    ours = kw.seeded_watershed(img, markers, mask)
    ref = watershed(img, (markers // 1000).astype(np.int32), mask=mask, connectivity=1).astype(np.uint64) * 1000
    np.testing.assert_array_equal(ours, ref)


def test_seeded_watershed_is_exact_on_any_read_region_holding_the_components(rng):
    """Quantised values (many ties): a crop holding whole mask components gives the same labels."""
    shape = (16, 30, 30)
    img = np.round(rng.random(shape) * 3) / 3  # four levels: lots of ties, also among marker pixels
    mask = np.zeros(shape, bool)
    mask[2:7, 3:12, 4:14] = True   # component A, two markers at equal values
    mask[9:14, 15:27, 12:26] = True  # component B, three markers
    markers = np.zeros(shape, np.uint64)
    for p, v in [((4, 5, 6), 11), ((4, 9, 11), 22), ((11, 18, 14), 33), ((11, 24, 24), 44), ((10, 20, 20), 55)]:
        markers[p] = v
    markers = ndimage.grey_dilation(markers, size=(3, 3, 3))
    whole = kw.seeded_watershed(img, markers, mask)
    assert set(np.unique(whole)) == {0, 11, 22, 33, 44, 55}
    for region in [(slice(1, 8), slice(2, 13), slice(3, 15)), (slice(8, 16), slice(14, 30), slice(10, 30)),
                   (slice(0, 16), slice(0, 28), slice(2, 30))]:
        part = kw.seeded_watershed(img[region], markers[region], mask[region])
        sub = whole[region]
        comp = mask[region]
        np.testing.assert_array_equal(part[comp], sub[comp])


def test_certify_block_detects_components_cut_by_the_read_region():
    mask = np.zeros((10, 10, 10), bool)
    mask[3:6, 3:6, 3:6] = True       # inside
    mask[4:6, 6:10, 4:6] = True      # reaches the high y face
    core = (slice(2, 8), slice(2, 8), slice(2, 8))
    exact, n = kw.certify_block(mask, core, ((True, True), (True, True), (True, True)))
    assert not exact and n == int(mask[core].sum())  # one component, touching the face
    exact, n = kw.certify_block(mask, core, ((True, True), (True, False), (True, True)))
    assert exact and n == 0  # the y face is the volume's border, not a cut
    mask[:, 9, :] = False
    mask[4:6, 8, 4:6] = True
    exact, _ = kw.certify_block(mask, core, ((True, True), (True, True), (True, True)))
    assert exact


def test_size_table_decomposes_over_blocks(rng):
    lab = _voronoi(rng, (12, 15, 17), 9).astype(np.uint64) * 3
    lab[rng.random(lab.shape) < 0.1] = 0
    whole = kw.size_table(lab)
    counts = np.bincount(lab.ravel().astype(np.int64))
    np.testing.assert_array_equal(whole["count"], counts[whole["id"].astype(np.int64)])
    for i, k in enumerate(whole["id"]):
        zs = np.nonzero((lab == k).any(axis=(1, 2)))[0]
        assert (whole["zmin"][i], whole["zmax"][i]) == (zs.min(), zs.max())
    acc: dict[int, list[int]] = {}
    for b in plan_blocks(lab.shape, (5, 6, 7)):
        part = kw.size_table(lab[b.core], z_offset=b.core[0].start)
        for k, c, a, z in zip(part["id"], part["count"], part["zmin"], part["zmax"], strict=True):
            e = acc.setdefault(int(k), [0, 10**9, -1])
            acc[int(k)] = [e[0] + c, min(e[1], a), max(e[2], z)]
    for i, k in enumerate(whole["id"]):
        assert acc[int(k)] == [whole["count"][i], whole["zmin"][i], whole["zmax"][i]]


def test_select_objects_filters_and_ranks():
    ids = np.array([40, 10, 30, 20], np.uint64)
    count = np.array([100, 5, 50, 500])
    zmin = np.array([0, 0, 3, 0])
    zmax = np.array([9, 4, 3, 9])
    kept, final = kw.select_objects(ids, count, zmin, zmax, min_size=10, max_size=400, min_z_extent=2)
    np.testing.assert_array_equal(kept, [40])
    kept, final = kw.select_objects(ids, count, zmin, zmax)
    np.testing.assert_array_equal(kept, [10, 20, 30, 40])
    np.testing.assert_array_equal(final, [1, 2, 3, 4])
    assert final.dtype == np.uint32


def test_forward_offsets_counts():
    assert len(kc.forward_offsets(6)) == 3
    assert len(kc.forward_offsets(26)) == 13
    assert all(next(v for v in d if v) == 1 for d in itertools.chain(kc.forward_offsets(26)))


def test_plain_skimage_watershed_depends_on_the_block_but_ours_does_not():
    """The documented reason for :func:`watershed_keys`: skimage pushes every marker pixel with age 0,
    so ties between marker pixels are broken by the heap's history, which includes other components.
    Cropping to a region that holds component A whole changes A's labels with plain skimage, never ours."""
    from skimage.segmentation import watershed

    rng = np.random.default_rng(0)
    shape = (10, 24, 24)
    comp_a = np.zeros(shape, bool)
    comp_a[1:5, 2:10, 2:10] = True
    mask = comp_a.copy()
    mask[0:10, 0:2, 14:24] = True  # another component: only in the whole-volume heap
    region = (slice(0, 6), slice(1, 11), slice(1, 11))
    plain_differs = ours_differs = 0
    for _ in range(20):
        img = np.round(rng.random(shape) * 2) / 2
        markers = np.zeros(shape, np.int32)
        for k, p in enumerate(np.argwhere(comp_a)[rng.choice(int(comp_a.sum()), 6, replace=False)]):
            markers[tuple(p)] = k + 1
        other = np.argwhere(mask & ~comp_a)
        for k, p in enumerate(other[rng.choice(len(other), 6, replace=False)]):
            markers[tuple(p)] = k + 10
        markers = ndimage.grey_dilation(markers, size=(3, 3, 3)) * mask
        a = comp_a[region]
        whole = watershed(-img, markers, mask=mask)
        part = watershed(-img[region], markers[region], mask=mask[region])
        plain_differs += int((part[a] != whole[region][a]).any())
        w = kw.seeded_watershed(-img, markers.astype(np.uint64), mask)
        p = kw.seeded_watershed(-img[region], markers[region].astype(np.uint64), mask[region])
        ours_differs += int((p[a] != w[region][a]).any())
    assert plain_differs > 0
    assert ours_differs == 0


def test_box_reach_equals_brute_force(rng):
    shape = (30, 40, 50)
    plan = plan_blocks(shape, (7, 11, 13), origin=(2, 0, 5))
    lo = np.stack([rng.integers(0, s - 1, 60) for s in shape], axis=1)
    hi = np.minimum(lo + rng.integers(1, 12, (60, 3)), shape)
    reach_lo, reach_hi = kc.box_reach(lo, hi, plan.boundaries)
    for b in plan:
        core_lo = np.array([c.start for c in b.core])
        core_hi = np.array([c.stop for c in b.core])
        meet = ((lo < core_hi) & (hi > core_lo)).all(axis=1)
        exp_lo = np.minimum(lo[meet].min(axis=0), core_lo) if meet.any() else core_lo
        exp_hi = np.maximum(hi[meet].max(axis=0), core_hi) if meet.any() else core_hi
        np.testing.assert_array_equal(reach_lo[b.index], exp_lo)
        np.testing.assert_array_equal(reach_hi[b.index], exp_hi)


def test_core_components_keeps_only_components_reaching_the_core():
    mask = np.zeros((12, 12, 12), bool)
    mask[1:3, 1:3, 1:3] = True      # far from the core
    mask[5:8, 5:8, 5:12] = True     # reaches the core and the high x face
    core = (slice(4, 9), slice(4, 9), slice(4, 9))
    faces = ((True, True), (True, True), (True, True))
    keep, exact, n = kw.core_components(mask, core, faces)
    assert not keep[1:3, 1:3, 1:3].any() and keep[5:8, 5:8, 5:12].all()
    assert not exact and n == 3 * 3 * 4
    keep, exact, n = kw.core_components(mask, core, ((True, True), (True, True), (True, False)))
    assert exact and n == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int32, np.uint8])
def test_watershed_keys_fast_path_orders_like_dense_ranks(rng, dtype):
    """The sort-free 32-bit keys order voxels exactly like the dense-rank keys (ties, -0.0, signs)."""
    shape = (6, 9, 11)
    if np.dtype(dtype).kind == "f":
        img = rng.choice(np.array([-2.5, -1.0, -0.0, 0.0, 0.25, 1.0, 3.0e5, -7e-39], dtype), size=shape)
        img = img + rng.normal(0, 1, shape).astype(dtype) * (rng.random(shape) < 0.3)
    else:
        info = np.iinfo(dtype)
        img = rng.integers(max(info.min, -40), min(info.max, 40), size=shape).astype(dtype)
    mk = (rng.random(shape) < 0.1) * rng.integers(1, 5, shape)
    mask = rng.random(shape) < 0.8
    keys = kw.watershed_keys(img, mk, mask)
    # reference: dense ranks of the values (the encoding used before the fast path)
    flat = img[mask].astype(np.float64) + 0.0
    dense = np.unique(flat, return_inverse=True)[1].reshape(-1)
    is_m = mk[mask] != 0
    k = int(is_m.sum())
    sub = np.full(flat.size, k)
    sub[is_m] = np.arange(k)
    ref = dense * (k + 1) + sub
    ours = keys[mask]
    np.testing.assert_array_equal(np.argsort(ours, kind="stable"), np.argsort(ref, kind="stable"))
    assert len(np.unique(ours)) == len(np.unique(ref))
    assert (keys[~mask] == 0).all()
