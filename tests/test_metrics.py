"""Kernels and metrics: overlap tables, IoU matching, MSE/SSIM of binarised masks.

References: ``stardist.matching.matching`` / ``matching_dataset`` (Hungarian matching at IoU τ),
``skimage.metrics.structural_similarity``, and brute-force loops.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.segmentation import expand_labels

from vollseg_dask.errors import DTypeError, InvalidDataError, ShapeError
from vollseg_dask.kernels.overlap import (
    binary_disagreement,
    combine_overlap_tables,
    label_sizes,
    overlap_table,
    ssim_map_sum,
)
from vollseg_dask.metrics import (
    DEFAULT_THRESHOLDS,
    binary_mse,
    binary_ssim,
    matching,
    matching_dataset,
    matching_from_overlaps,
)

STARDIST_KEYS = ("tp", "fp", "fn", "n_true", "n_pred", "precision", "recall", "f1", "accuracy",
                 "mean_true_score", "mean_matched_score", "panoptic_quality")
THRESHOLDS = DEFAULT_THRESHOLDS


def random_labels(rng: np.random.Generator, shape: tuple[int, ...], n: int, grow: int) -> np.ndarray:
    """Random seeds grown into touching blobs; label IDs are random and non-sequential."""
    a = np.zeros(shape, np.int32)
    if n:
        pts = tuple(rng.integers(0, s, n) for s in shape)
        a[pts] = rng.choice(np.arange(1, 10 * n + 1), size=n, replace=False)
    return expand_labels(a, distance=grow)


def assert_same_as_stardist(ours: pd.DataFrame, ref: tuple, where: str) -> None:
    assert len(ours) == len(ref)
    for (_, row), r in zip(ours.iterrows(), ref, strict=True):
        assert row["thresh"] == pytest.approx(r.thresh)
        for k in STARDIST_KEYS:
            assert row[k] == pytest.approx(float(getattr(r, k)), rel=1e-5, abs=1e-7), (where, r.thresh, k)


def greedy_tp(y_true: np.ndarray, y_pred: np.ndarray, thr: float) -> int:
    """Match pairs by decreasing IoU, first come first served (NOT optimal for thr < 0.5)."""
    pairs = []
    for t in np.unique(y_true[y_true > 0]):
        tm = y_true == t
        for p in np.unique(y_pred[tm & (y_pred > 0)]):
            pm = y_pred == p
            iou = np.count_nonzero(tm & pm) / np.count_nonzero(tm | pm)
            if iou >= thr:
                pairs.append((iou, t, p))
    used_t, used_p, tp = set(), set(), 0
    for _, t, p in sorted(pairs, reverse=True):
        if t not in used_t and p not in used_p:
            used_t.add(t)
            used_p.add(p)
            tp += 1
    return tp


# --------------------------------------------------------------------------------------------------
# overlap_table
# --------------------------------------------------------------------------------------------------


def brute_force_table(pred: np.ndarray, gt: np.ndarray) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist(), strict=True):
        out[(p, g)] = out.get((p, g), 0) + 1
    return out


def table_dict(table: pd.DataFrame) -> dict[tuple[int, int], int]:
    return {(int(p), int(g)): int(c) for p, g, c in table[["pred", "gt", "count"]].itertuples(index=False)}


def test_overlap_table_matches_brute_force(rng):
    pred = rng.integers(0, 6, (7, 9, 5)).astype(np.uint16)
    gt = rng.integers(0, 4, (7, 9, 5)).astype(np.int64)
    table = overlap_table(pred, gt)
    assert list(table.columns) == ["pred", "gt", "count"]
    assert table["pred"].dtype == np.uint64 and table["count"].dtype == np.int64
    assert table_dict(table) == brute_force_table(pred, gt)
    assert table["count"].sum() == pred.size
    # sorted by (pred, gt)
    assert list(zip(table["pred"], table["gt"], strict=True)) == sorted(zip(table["pred"], table["gt"], strict=True))


@pytest.mark.parametrize("offset", [np.uint64(2**40), np.uint64(2**63 + 5)])
def test_overlap_table_huge_ids_take_the_sort_and_compress_paths(rng, offset):
    # 2**40: the combined key fits in 64 bits but the bin count is huge -> np.unique path.
    # 2**63: the combined key would overflow -> both images are compressed first.
    small_p = rng.integers(0, 5, (6, 6, 6))
    small_g = rng.integers(0, 4, (6, 6, 6))
    pred = np.where(small_p > 0, small_p.astype(np.uint64) + offset, 0).astype(np.uint64)
    gt = np.where(small_g > 0, small_g.astype(np.uint64) + offset, 0).astype(np.uint64)
    assert table_dict(overlap_table(pred, gt)) == brute_force_table(pred, gt)


def test_overlap_table_blockwise_sum_equals_whole(rng):
    gt = random_labels(rng, (11, 23, 17), 25, 3)
    pred = random_labels(rng, (11, 23, 17), 30, 3)
    whole = overlap_table(pred, gt)
    for bs in [(4, 5, 6), (11, 7, 17), (3, 23, 2)]:
        tables = []
        for starts in itertools.product(*(range(0, n, b) for n, b in zip(gt.shape, bs, strict=True))):
            sl = tuple(slice(s, s + b) for s, b in zip(starts, bs, strict=True))
            tables.append(overlap_table(pred[sl], gt[sl]))
        rng.shuffle(tables)
        combined = combine_overlap_tables(tables)
        pd.testing.assert_frame_equal(combined, whole)
    # sizes from the table equal np.unique counts
    psz, gsz = label_sizes(whole)
    u, c = np.unique(pred[pred > 0], return_counts=True)
    assert dict(zip(psz.index.tolist(), psz.tolist(), strict=True)) == dict(zip(u.tolist(), c.tolist(), strict=True))
    u, c = np.unique(gt[gt > 0], return_counts=True)
    assert dict(zip(gsz.index.tolist(), gsz.tolist(), strict=True)) == dict(zip(u.tolist(), c.tolist(), strict=True))


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 8), st.integers(1, 8)),
)
def test_overlap_table_any_split_is_decomposable(data, shape):
    pred = np.array(data.draw(st.lists(st.integers(0, 4), min_size=shape[0] * shape[1],
                                       max_size=shape[0] * shape[1])), np.uint8).reshape(shape)
    gt = np.array(data.draw(st.lists(st.integers(0, 3), min_size=pred.size, max_size=pred.size)),
                  np.int16).reshape(shape)
    cut = data.draw(st.integers(0, shape[0]))
    halves = [overlap_table(pred[:cut], gt[:cut]), overlap_table(pred[cut:], gt[cut:])]
    assert table_dict(combine_overlap_tables(halves)) == brute_force_table(pred, gt)


def test_overlap_table_rejects_bad_input():
    a = np.zeros((4, 5), np.uint16)
    with pytest.raises(DTypeError, match="float32"):
        overlap_table(a.astype(np.float32), a)
    with pytest.raises(DTypeError, match="bool"):
        overlap_table(a, a.astype(bool))
    with pytest.raises(ShapeError, match=r"\(4, 5\).*\(5, 4\)"):
        overlap_table(a, np.zeros((5, 4), np.uint16))
    b = a.astype(np.int32)
    b[1, 1] = -3
    with pytest.raises(InvalidDataError, match="-3"):
        overlap_table(b, a)
    assert len(overlap_table(np.zeros((0, 3), np.uint8), np.zeros((0, 3), np.uint8))) == 0


# --------------------------------------------------------------------------------------------------
# matching: agreement with stardist
# --------------------------------------------------------------------------------------------------


def test_matching_agrees_with_stardist_on_random_pairs():
    from stardist.matching import matching as sd_matching

    rng = np.random.default_rng(2024)
    nontrivial = 0
    for i in range(60):
        ndim = 2 if i % 3 == 0 else 3
        shape = tuple(int(s) for s in rng.integers(6, 18, ndim))
        y_true = random_labels(rng, shape, int(rng.integers(0, 14)), int(rng.integers(1, 4)))
        if i % 4 == 0:  # a perturbed copy: high-IoU regime
            y_pred = np.roll(y_true, int(rng.integers(-2, 3)), axis=0)
        else:
            y_pred = random_labels(rng, shape, int(rng.integers(0, 14)), int(rng.integers(1, 4)))
        if i % 5 == 0:
            y_pred = y_pred.astype(np.uint8 if y_pred.max() < 256 else np.uint16)
        ours = matching(y_true, y_pred, THRESHOLDS)
        ref = sd_matching(y_true, y_pred, thresh=list(THRESHOLDS), criterion="iou")
        assert_same_as_stardist(ours, ref, f"pair {i}")
        for thr, tp in zip(THRESHOLDS, ours["tp"], strict=True):
            if thr < 0.5 and greedy_tp(y_true, y_pred, thr) != tp:
                nontrivial += 1
    # The sample must include cases where a greedy matching is not optimal.
    assert nontrivial >= 1, nontrivial


def test_matching_is_optimal_not_greedy():
    from stardist.matching import matching as sd_matching

    # gt A = [0,10), B = [10,20); pred x = [3,15), y = [0,3)
    # IoU(A,x)=7/15, IoU(B,x)=5/17, IoU(A,y)=3/10. At tau=0.25 greedy takes A-x only (TP=1);
    # the optimal matching is A-y, B-x (TP=2).
    y_true = np.zeros(24, np.uint16)
    y_true[0:10], y_true[10:20] = 1, 2
    y_pred = np.zeros(24, np.uint16)
    y_pred[3:15], y_pred[0:3] = 7, 9
    assert greedy_tp(y_true, y_pred, 0.25) == 1
    ours = matching(y_true, y_pred, [0.25, 0.4, 0.5])
    assert ours["tp"].tolist() == [2, 1, 0]
    assert ours["sum_matched_score"].iloc[0] == pytest.approx(5 / 17 + 3 / 10)
    assert_same_as_stardist(ours, sd_matching(y_true, y_pred, thresh=[0.25, 0.4, 0.5]), "hand-made")


def test_matching_dataset_agrees_with_stardist():
    from stardist.matching import matching_dataset as sd_dataset

    rng = np.random.default_rng(7)
    trues = [random_labels(rng, (8, 20, 20), 12, 3) for _ in range(4)]
    preds = [random_labels(rng, (8, 20, 20), 10, 3) for _ in range(3)] + [np.zeros((8, 20, 20), np.int32)]
    ours = matching_dataset(trues, preds, THRESHOLDS)
    ref = sd_dataset(trues, preds, thresh=list(THRESHOLDS), show_progress=False)
    assert_same_as_stardist(ours, ref, "dataset")


def test_matching_from_overlaps_with_explicit_sizes(rng):
    y_true = random_labels(rng, (10, 16, 16), 9, 2)
    y_pred = random_labels(rng, (10, 16, 16), 9, 2)
    table = overlap_table(y_pred, y_true)
    psz, gsz = label_sizes(table)
    fg_only = table[(table["pred"] > 0) & (table["gt"] > 0)]
    a = matching_from_overlaps(fg_only, psz, gsz, THRESHOLDS)
    b = matching_from_overlaps(table, thresh=THRESHOLDS)
    pd.testing.assert_frame_equal(a, b)


# --------------------------------------------------------------------------------------------------
# matching: edge cases
# --------------------------------------------------------------------------------------------------


def test_identical_labels_score_one(rng):
    y = random_labels(rng, (9, 15, 15), 12, 3)
    m = matching(y, y.copy(), THRESHOLDS)
    n = len(np.unique(y)) - 1
    assert (m["tp"] == n).all() and (m["fp"] == 0).all() and (m["fn"] == 0).all()
    for k in ("precision", "recall", "f1", "accuracy", "mean_true_score", "mean_matched_score",
              "panoptic_quality"):
        np.testing.assert_allclose(m[k], 1.0)
    # relabelled copy (different IDs) is still a perfect match
    perm = np.zeros(y.max() + 1, np.int64)
    perm[1:] = rng.permutation(np.arange(1, y.max() + 1)) + 1000
    np.testing.assert_allclose(matching(y, perm[y], THRESHOLDS)["accuracy"], 1.0)
    assert binary_mse(y, y) == 0.0
    assert binary_ssim(y, y) == pytest.approx(1.0)


def test_empty_prediction(rng):
    y = random_labels(rng, (8, 12, 12), 6, 2)
    n = len(np.unique(y)) - 1
    m = matching(y, np.zeros_like(y), THRESHOLDS)
    assert (m["tp"] == 0).all() and (m["fp"] == 0).all() and (m["fn"] == n).all()
    for k in ("precision", "recall", "f1", "accuracy", "mean_matched_score", "panoptic_quality"):
        assert (m[k] == 0).all()
    assert binary_mse(np.zeros_like(y), y) == pytest.approx(np.count_nonzero(y) / y.size)
    # both empty: nothing to match, stardist reports zeros
    both = matching(np.zeros_like(y), np.zeros_like(y), 0.5)
    assert both[["tp", "fp", "fn", "n_true", "n_pred"]].iloc[0].tolist() == [0, 0, 0, 0, 0]


def test_disjoint_objects():
    y_true = np.zeros((10, 10), np.uint16)
    y_pred = np.zeros((10, 10), np.uint16)
    y_true[:4, :4] = 1
    y_true[6:, 6:] = 2
    y_pred[:4, 6:] = 5
    m = matching(y_true, y_pred, THRESHOLDS)
    assert (m["tp"] == 0).all() and (m["fp"] == 1).all() and (m["fn"] == 2).all()
    assert (m["accuracy"] == 0).all()
    assert binary_mse(y_pred, y_true) == pytest.approx(3 * 16 / 100)  # 3 disjoint 4x4 squares differ


def test_matching_rejects_bad_input():
    a = np.zeros((5, 5), np.int32)
    with pytest.raises(DTypeError, match="float64"):
        matching(a, a.astype(np.float64))
    with pytest.raises(ShapeError, match=r"\(5, 5\)"):
        matching(a, np.zeros((5, 6), np.int32))
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(InvalidDataError, match="threshold"):
            matching(a, a, bad)
    with pytest.raises(DTypeError):
        binary_mse(a.astype(np.float32), a)
    with pytest.raises(ShapeError):
        matching_dataset([a, a], [a])


# --------------------------------------------------------------------------------------------------
# MSE and SSIM of the binarised masks
# --------------------------------------------------------------------------------------------------


def test_binary_mse_and_ssim_match_references(rng):
    from skimage.metrics import structural_similarity

    gt = random_labels(rng, (9, 20, 22), 10, 3)
    pred = random_labels(rng, (9, 20, 22), 12, 2)
    a, b = (gt > 0).astype(float), (pred > 0).astype(float)
    assert binary_mse(pred, gt) == pytest.approx(np.mean((a - b) ** 2))
    assert binary_ssim(pred, gt) == pytest.approx(structural_similarity(a, b, data_range=1.0))
    assert binary_disagreement(pred, gt) == np.count_nonzero(a != b)
    with pytest.raises(ShapeError, match="win_size"):
        binary_ssim(pred[:5], gt[:5])


def test_ssim_block_sums_equal_whole_volume(rng):
    gt = random_labels(rng, (12, 19, 21), 10, 3)
    pred = random_labels(rng, (12, 19, 21), 12, 2)
    win, pad = 7, 3
    whole = binary_ssim(pred, gt, win_size=win)
    total, count = 0.0, 0
    bs = (5, 8, 6)
    for starts in itertools.product(*(range(0, n, b) for n, b in zip(gt.shape, bs, strict=True))):
        core = [slice(s, min(s + b, n)) for s, b, n in zip(starts, bs, gt.shape, strict=True)]
        read = [slice(max(0, c.start - pad), min(n, c.stop + pad)) for c, n in zip(core, gt.shape, strict=True)]
        region = []
        for c, r, n in zip(core, read, gt.shape, strict=True):
            lo, hi = max(c.start, pad), min(c.stop, n - pad)
            region.append(slice(lo - r.start, max(lo, hi) - r.start))
        s, k = ssim_map_sum(pred[tuple(read)], gt[tuple(read)], region, win_size=win)
        total, count = total + s, count + k
    assert count == np.prod([n - 2 * pad for n in gt.shape])
    assert total / count == pytest.approx(whole, rel=1e-10, abs=1e-12)
    with pytest.raises(ShapeError, match="radius"):
        ssim_map_sum(pred, gt, (slice(0, 5), slice(3, 8), slice(3, 8)))
