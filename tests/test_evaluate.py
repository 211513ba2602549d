"""Block-wise evaluation driver, plots and the ``evaluate`` CLI.

Every Dask result is compared with the whole-volume reference: StarDist's ``matching`` /
``matching_dataset`` for the object metrics, scikit-image's SSIM and a plain mean for the
binarised-mask metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage.segmentation import expand_labels, find_boundaries

from vollseg_dask.errors import AxesError, DTypeError, ShapeError, StoreNotFoundError
from vollseg_dask.evaluate import PLOT_FILES, RESULT_COLUMNS, evaluate_arrays, evaluate_store, plot_metrics
from vollseg_dask.metrics import DEFAULT_THRESHOLDS, binary_mse, binary_ssim, matching_dataset

STARDIST_KEYS = ("tp", "fp", "fn", "n_true", "n_pred", "precision", "recall", "f1", "accuracy",
                 "mean_true_score", "mean_matched_score", "panoptic_quality")
THR = DEFAULT_THRESHOLDS


def random_labels(rng: np.random.Generator, shape: tuple[int, ...], n: int, grow: int) -> np.ndarray:
    a = np.zeros(shape, np.int32)
    pts = tuple(rng.integers(0, s, n) for s in shape)
    a[pts] = rng.choice(np.arange(1, 20 * n), size=n, replace=False)
    return expand_labels(a, distance=grow)


def assert_rows_match_stardist(rows: pd.DataFrame, ref: tuple, where: str) -> None:
    rows = rows.sort_values("thresh")
    assert len(rows) == len(ref), where
    for (_, row), r in zip(rows.iterrows(), ref, strict=True):
        assert row["thresh"] == pytest.approx(r.thresh)
        for k in STARDIST_KEYS:
            assert row[k] == pytest.approx(float(getattr(r, k)), rel=1e-5, abs=1e-7), (where, r.thresh, k)


@pytest.fixture(scope="module")
def pair_tzyx() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(99)
    gt = np.stack([random_labels(rng, (10, 26, 23), 18, 3) for _ in range(3)]).astype(np.uint32)
    # prediction: shifted/perturbed truth for t=0,1 (high IoU), unrelated blobs for t=2 (low IoU)
    pred = np.stack([np.roll(gt[0], 1, axis=2), np.roll(gt[1], -2, axis=1),
                     random_labels(rng, (10, 26, 23), 15, 3)]).astype(np.uint16)
    return pred, gt


# --------------------------------------------------------------------------------------------------
# evaluate_arrays
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_shape", [(4, 9, 7), (10, 26, 23), (3, 5, 23), (1, 26, 11)])
def test_blockwise_equals_stardist_and_whole_volume(pair_tzyx, block_shape):
    from stardist.matching import matching as sd_matching
    from stardist.matching import matching_dataset as sd_dataset

    pred, gt = pair_tzyx
    df = evaluate_arrays(pred, gt, THR, axes="tzyx", block_shape=block_shape, scheduler="synchronous")
    assert list(df.columns) == list(RESULT_COLUMNS)
    assert len(df) == (3 + 1) * len(THR)
    for t in range(3):
        rows = df[df["t"] == t]
        assert_rows_match_stardist(rows, sd_matching(gt[t], pred[t], thresh=list(THR)), f"t={t}")
        np.testing.assert_allclose(rows["mse"], binary_mse(pred[t], gt[t]))
        np.testing.assert_allclose(rows["ssim"], binary_ssim(pred[t], gt[t]), rtol=1e-10)
    agg = df[df["t"].isna()]
    assert_rows_match_stardist(agg, sd_dataset(list(gt), list(pred), thresh=list(THR), show_progress=False), "all")
    np.testing.assert_allclose(agg["mse"], np.mean((pred > 0) != (gt > 0)))
    np.testing.assert_allclose(agg["ssim"], np.mean([binary_ssim(pred[t], gt[t]) for t in range(3)]), rtol=1e-10)
    # the perturbed frames match well, the unrelated one does not
    at5 = df[df["thresh"] == 0.5].set_index("t")
    assert at5.loc[0, "f1"] > 0.5 and at5.loc[2, "f1"] < 0.3


def test_dask_input_and_aggregate_only(pair_tzyx):
    import dask.array as da

    pred, gt = pair_tzyx
    dp = da.from_array(pred, chunks=(1, 5, 13, 8))
    dg = da.from_array(gt, chunks=(1, 5, 13, 8))
    lazy = evaluate_arrays(dp, dg, (0.3, 0.7), per_t=False, axes="tzyx")
    eager = evaluate_arrays(pred, gt, (0.3, 0.7), per_t=True, axes="tzyx", block_shape=(10, 26, 23))
    assert lazy["t"].isna().all() and len(lazy) == 2
    pd.testing.assert_frame_equal(lazy.reset_index(drop=True),
                                  eager[eager["t"].isna()].reset_index(drop=True), rtol=1e-10)
    ref = matching_dataset(list(gt), list(pred), (0.3, 0.7))
    np.testing.assert_array_equal(lazy["tp"], ref["tp"])


def test_no_time_axis_singleton_z_and_channel(rng):
    gt = random_labels(rng, (1, 30, 28), 12, 3).astype(np.uint16)
    pred = np.roll(gt, 2, axis=1)
    df = evaluate_arrays(pred, gt, [0.5], block_shape=(1, 8, 8), scheduler="synchronous")
    assert df["t"].tolist() == [0, pd.NA] or (df["t"].iloc[0] == 0 and pd.isna(df["t"].iloc[1]))
    # singleton z is dropped for SSIM: equals 2D SSIM
    assert df["ssim"].iloc[0] == pytest.approx(binary_ssim(pred[0], gt[0]), rel=1e-10)
    assert df["tp"].iloc[0] == df["tp"].iloc[1]
    # a length-1 channel axis is squeezed
    dfc = evaluate_arrays(pred[None], gt[None], [0.5], axes="czyx", block_shape=(1, 8, 8))
    pd.testing.assert_frame_equal(dfc, df)
    with pytest.raises(AxesError, match="channel"):
        evaluate_arrays(np.stack([pred, pred]), np.stack([gt, gt]), [0.5], axes="czyx")


def test_ssim_skipped_on_thin_volume(rng):
    gt = random_labels(rng, (4, 20, 20), 6, 3).astype(np.uint8)
    df = evaluate_arrays(gt, gt, [0.5], axes="zyx")
    assert df["ssim"].isna().all()
    assert (df["accuracy"] == 1).all() and (df["mse"] == 0).all()
    assert evaluate_arrays(gt, gt, [0.5], axes="zyx", ssim=False)["ssim"].isna().all()


def test_evaluate_arrays_rejects_bad_input():
    a = np.zeros((2, 8, 8), np.uint16)
    with pytest.raises(DTypeError, match="float32"):
        evaluate_arrays(a.astype(np.float32), a)
    with pytest.raises(ShapeError, match=r"\(2, 8, 8\).*\(2, 8, 9\)"):
        evaluate_arrays(a, np.zeros((2, 8, 9), np.uint16))
    with pytest.raises(AxesError):
        evaluate_arrays(a, a, axes="tzyx")


# --------------------------------------------------------------------------------------------------
# OME-Zarr store, plots, CLI
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory, pair_tzyx) -> Path:
    omezarr = pytest.importorskip("vollseg_dask.io.omezarr", reason="vollseg_dask.io.omezarr not available yet")
    pred, gt = pair_tzyx
    path = tmp_path_factory.mktemp("evaluate") / "movie.zarr"
    omezarr.write_image(path, np.zeros(gt.shape, np.uint8), axes="tzyx", scale=(2.0, 1.0, 0.5, 0.5),
                        chunks=(1, 5, 16, 16))
    omezarr.create_labels(path, "truth", dtype="uint32")[...] = gt
    omezarr.create_labels(path, "vollseg", dtype="uint16")[...] = pred
    omezarr.create_labels(path, "empty", dtype="uint16")
    return path


def test_evaluate_store_equals_in_memory(store, pair_tzyx):
    pred, gt = pair_tzyx
    df = evaluate_store(store, "vollseg", "truth", THR)
    ref = evaluate_arrays(pred, gt, THR, axes="tzyx", block_shape=(7, 11, 13))
    pd.testing.assert_frame_equal(df, ref, rtol=1e-10)
    with pytest.raises(StoreNotFoundError, match="nope"):
        evaluate_store(store, "nope", "truth")


def test_plot_metrics_writes_pngs(tmp_path, pair_tzyx):
    import matplotlib.image as mpimg

    pred, gt = pair_tzyx
    tables = {
        "VollSeg": evaluate_arrays(pred, gt, THR, axes="tzyx", block_shape=(10, 26, 23)),
        "StarDist": evaluate_arrays(np.zeros_like(pred), gt, THR, axes="tzyx", block_shape=(10, 26, 23)),
    }
    paths = plot_metrics(tables, tmp_path / "plots")
    assert set(paths) == set(PLOT_FILES)
    for key, p in paths.items():
        assert p.is_file() and p.stat().st_size > 1000, key
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, key
        assert img.std() > 0.01, f"{key} plot is blank"


def test_cli_table_json_and_plots(store, tmp_path):
    from click.testing import CliRunner

    from vollseg_dask.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", str(store), "--pred", "vollseg", "--gt", "truth",
                               "--thresholds", "0.3,0.5,0.9"])
    assert res.exit_code == 0, res.output
    assert "vollseg vs truth" in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip().startswith(("0.3", "0.5", "0.9"))]
    assert len(lines) == 3

    res = runner.invoke(main, ["evaluate", str(store), "--pred", "vollseg", "--pred", "empty", "--gt", "truth",
                               "--json", "--thresholds", "0.5", "--plots", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert set(payload["methods"]) == {"vollseg", "empty"}
    ref = evaluate_store(store, "vollseg", "truth", [0.5])
    got = pd.DataFrame(payload["methods"]["vollseg"])
    assert got["tp"].tolist() == ref["tp"].tolist()
    np.testing.assert_allclose(got["f1"], ref["f1"])
    assert payload["methods"]["vollseg"][-1]["t"] is None  # aggregate row
    assert [r["t"] for r in payload["methods"]["vollseg"][:-1]] == [0, 1, 2]
    assert all(r["tp"] == 0 for r in payload["methods"]["empty"])
    assert all((tmp_path / "figs" / name).is_file() for name in PLOT_FILES.values())

    res = runner.invoke(main, ["evaluate", str(store), "--pred", "vollseg", "--gt", "truth", "--thresholds", "0"])
    assert res.exit_code != 0 and "threshold" in str(res.exception)


# --------------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_ovule_labels_vs_eroded_copy(shared_data):
    import h5py
    from stardist.matching import matching as sd_matching

    path = shared_data / "segmentation" / "plantseg" / "sample_ovule.h5"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with h5py.File(path, "r") as f:
        gt = f["label"][:]
    # perturbation: erode every cell by its inner boundary, merge two cells, shift by one voxel
    pred = np.where(find_boundaries(gt, mode="inner"), 0, gt).astype(gt.dtype)
    ids = np.unique(gt[gt > 0])
    pred[pred == ids[3]] = ids[4]
    pred = np.roll(pred, 1, axis=2)
    ref = sd_matching(gt, pred, thresh=list(THR))
    df = evaluate_arrays(pred, gt, THR, axes="zyx", block_shape=(16, 48, 40))
    for t in (0, None):
        rows = df[df["t"] == t] if t is not None else df[df["t"].isna()]
        assert_rows_match_stardist(rows, ref, f"ovule t={t}")
    assert df["n_true"].iloc[0] == len(ids)
    # sanity: TP falls with tau; most cells still overlap their eroded copy, few at IoU >= 0.9
    tp = df[df["t"] == 0]["tp"].to_numpy()
    assert (np.diff(tp) <= 0).all() and tp[0] >= 0.8 * len(ids) and tp[-1] < 0.1 * len(ids)
    np.testing.assert_allclose(df["ssim"].iloc[0], binary_ssim(pred, gt), rtol=1e-10)
