"""Synthetic ground truth: determinism, locality (blocks == whole), lineage/label consistency,
shapes that are not star-convex, optics/noise, the OME-Zarr writer, memory and the CLI."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from vollseg_dask.errors import ConfigError, ShapeError, StoreExistsError
from vollseg_dask.synthetic import (
    SyntheticConfig,
    lineage,
    render_image,
    render_labels,
    scene_for,
    seed_table,
    true_centroids,
    write_synthetic,
)
from vollseg_dask.synthetic._hash import uniform, unit_vectors
from vollseg_dask.synthetic.geometry import lab_to_material, tissue_distance

# Tiny but complete: ~15 tracks over 3 frames with divisions, 8 storage chunks per frame.
SMALL = dict(shape=(3, 12, 48, 48), voxel_size=(1.0, 0.5, 0.5), cell_diameter_um=6.5,
             tissue_radii=(1.0, 0.95, 0.95), division_rate=0.3, seed=3, chunks=(6, 24, 24))
# One frame with many multi-site cells for the shape tests.
SHAPES = dict(shape=(1, 24, 96, 96), voxel_size=(1.0, 0.5, 0.5), cell_diameter_um=6.0,
              tissue_radii=(1.2, 1.2, 1.2), chain_probability=0.6, max_chain_length=5, seed=12, division_rate=0.0)


@pytest.fixture(scope="module")
def small_labels() -> np.ndarray:
    return np.stack([render_labels(SMALL, t) for t in range(SMALL["shape"][0])])


@pytest.fixture(scope="module")
def small_lineage() -> pd.DataFrame:
    return lineage(SMALL)


# --- configuration -----------------------------------------------------------------------------

def test_config_errors_name_the_problem() -> None:
    from vollseg_dask.config import parse_config

    with pytest.raises(ConfigError, match="n_celss"):
        parse_config(SyntheticConfig, {"n_celss": 3})
    with pytest.raises(ConfigError, match="exactly one of n_cells and cell_diameter_um"):
        parse_config(SyntheticConfig, {"n_cells": 10, "cell_diameter_um": 8.0})
    assert SyntheticConfig(cell_diameter_um=9.0).n_cells is None  # a diameter replaces the default count
    with pytest.raises(ConfigError, match="too small.*n_cells \\(got 5000\\)"):
        scene_for({"n_cells": 5000})
    with pytest.raises(ConfigError, match="speed_um_per_frame=20"):
        scene_for({"speed_um_per_frame": 20.0})
    with pytest.raises(ConfigError, match="shards .* multiple of chunks"):
        parse_config(SyntheticConfig, {"chunks": (8, 32, 32), "shards": (8, 48, 32)})
    with pytest.raises(ShapeError, match="region"):
        render_labels(SMALL, 0, ((0, 5), (0, 100), (0, 5)))


def test_default_demo_has_about_the_requested_cells_of_usable_size() -> None:
    cfg = SyntheticConfig()
    scene = scene_for(cfg)
    # Equivalent diameter of a one-site cell (a multi-site cell is larger): 7-12 µm by default.
    d_site = (6.0 * scene.cube**3 / 4.0 / np.pi) ** (1 / 3)
    assert 7.0 <= d_site <= 12.0
    assert cfg.axes == "tzyx" and SyntheticConfig(nucleus_channel=True).axes == "tczyx"


def test_hash_is_uniform_deterministic_and_broadcasts() -> None:
    u = uniform(7, 1, np.arange(200_000))
    assert np.array_equal(u, uniform(7, 1, np.arange(200_000)))
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    hist = np.histogram(u, bins=20, range=(0, 1))[0]
    assert hist.min() > 0.9 * hist.mean()
    assert not np.array_equal(u, uniform(8, 1, np.arange(200_000)))
    assert not np.array_equal(u, uniform(7, 2, np.arange(200_000)))
    assert uniform(1, 1, np.arange(3)[:, None], np.arange(4)[None]).shape == (3, 4)
    v = unit_vectors(1, 2, np.arange(50_000))
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0) and np.all(np.abs(v.mean(axis=0)) < 0.02)


# --- determinism and locality --------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_differs(small_labels: np.ndarray) -> None:
    img = render_image(SMALL, 1)
    assert img.dtype == np.uint16 and img.shape == SMALL["shape"][1:]
    assert np.array_equal(img, render_image(SMALL, 1))
    other = {**SMALL, "seed": 4}
    assert not np.array_equal(render_labels(other, 1), small_labels[1])
    assert not np.array_equal(render_image(other, 1), img)


@pytest.mark.parametrize("block", [(6, 24, 17), (12, 48, 25)])
def test_blocks_render_exactly_like_the_whole_frame(small_labels: np.ndarray, block: tuple[int, int, int]) -> None:
    dims = SMALL["shape"][1:]
    t = 2
    whole_clean = render_image(SMALL, t, noise=False)
    labels = np.zeros(dims, np.uint32)
    clean = np.zeros(dims)
    # Ragged blocks on a grid offset by one voxel, rendered in a shuffled order.
    edges = [sorted({0, *range(1, n, b), n}) for n, b in zip(dims, block, strict=True)]
    intervals = [list(zip(e[:-1], e[1:], strict=True)) for e in edges]
    regions = [(rz, ry, rx) for rz in intervals[0] for ry in intervals[1] for rx in intervals[2]]
    rng = np.random.default_rng(0)
    for i in rng.permutation(len(regions)):
        reg = regions[i]
        sl = tuple(slice(a, b) for a, b in reg)
        labels[sl] = render_labels(SMALL, t, reg)
        clean[sl] = render_image(SMALL, t, reg, noise=False)
    assert np.array_equal(labels, small_labels[t])
    assert np.array_equal(clean, whole_clean)


def test_renderer_shortcuts_do_not_change_a_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    # The renderer shares candidate sites per brick and skips the tissue function where a bound
    # proves its terms are exactly 0 or 1: any brick size, with or without the skip, same bytes.
    from vollseg_dask.synthetic import render

    # Coarse voxels so that the tissue is deep enough (tens of µm) for the skip to apply.
    cfg = {**SMALL, "shape": (3, 24, 40, 40), "voxel_size": (2.0, 2.0, 2.0), "cell_diameter_um": 13.0,
           "tissue_radii": (1.6, 1.6, 1.6), "nucleus_channel": True}
    ref_lab, ref_img = render_labels(cfg, 2), render_image(cfg, 2, noise=False)
    for brick_um, skip in ((0.5, True), (6.0, True), (3.0, False)):
        monkeypatch.setattr(render, "_BRICK_UM", brick_um)
        monkeypatch.setattr(render, "_TISSUE_SKIP", skip)
        assert np.array_equal(render_labels(cfg, 2), ref_lab), (brick_um, skip)
        assert np.array_equal(render_image(cfg, 2, noise=False), ref_img), (brick_um, skip)


def test_sincos_is_within_one_ulp_of_the_c_library() -> None:
    import math

    import numba

    from vollseg_dask.synthetic._kernels import sincos

    @numba.njit
    def both(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = np.empty_like(x)
        c = np.empty_like(x)
        for i in range(x.size):
            s[i], c[i] = sincos(x[i])
        return s, c

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1e4, 1e4, 20_000), rng.uniform(-4, 4, 20_000), [0.0, -0.0, np.pi / 4]])
    s, c = both(x)
    ref_s = np.array([math.sin(v) for v in x])
    ref_c = np.array([math.cos(v) for v in x])
    assert np.all(np.abs(s - ref_s) <= np.spacing(np.abs(ref_s)))
    assert np.all(np.abs(c - ref_c) <= np.spacing(np.abs(ref_c)))


def test_noisy_regions_are_crops_of_the_whole_image() -> None:
    whole = render_image(SMALL, 0)
    part = render_image(SMALL, 0, ((3, 11), (5, 30), (20, 48)))
    assert np.array_equal(part, whole[3:11, 5:30, 20:48])


# --- ground truth consistency -------------------------------------------------------------------

def test_labels_equal_lineage_at_every_frame(small_labels: np.ndarray, small_lineage: pd.DataFrame) -> None:
    assert small_labels.dtype == np.uint32
    assert list(small_lineage.columns) == ["track_id", "start", "end", "parent"]
    assert small_lineage["track_id"].is_unique and (small_lineage["track_id"] > 0).all()
    for t in range(SMALL["shape"][0]):
        present = np.unique(small_labels[t])
        present = present[present > 0]
        alive = small_lineage.query("start <= @t and end >= @t")["track_id"].to_numpy()
        assert len(present) >= 5
        assert np.array_equal(np.sort(alive), present)


def test_every_label_voxel_is_inside_the_tissue(small_labels: np.ndarray) -> None:
    scene = scene_for(SMALL)
    for t in range(SMALL["shape"][0]):
        fg = np.argwhere(small_labels[t] > 0)
        bg = np.argwhere(small_labels[t] == 0)
        d_fg = tissue_distance(lab_to_material(fg * scene.voxel, t, scene.flow), scene.tissue)
        d_bg = tissue_distance(lab_to_material(bg * scene.voxel, t, scene.flow), scene.tissue)
        assert np.all(d_fg < 0)
        assert len(bg) and np.mean(d_bg >= 0) > 0.5  # background is mostly outside the tissue


def test_divisions_are_ctc_consistent(small_labels: np.ndarray, small_lineage: pd.DataFrame) -> None:
    lin = small_lineage.set_index("track_id")
    daughters = small_lineage[small_lineage["parent"] > 0]
    assert len(daughters) >= 2
    T = SMALL["shape"][0]
    for parent, grp in daughters.groupby("parent"):
        assert len(grp) == 2 and grp["start"].nunique() == 1
        start = int(grp["start"].iloc[0])
        assert int(lin.loc[parent, "end"]) == start - 1
        assert parent in small_labels[start - 1]
        for t in range(start, T):
            assert parent not in small_labels[t]
        for d in grp.index.map(lambda i: int(daughters.loc[i, "track_id"])):
            assert d in small_labels[start]


def test_cells_are_connected_and_some_are_not_star_convex() -> None:
    lab = render_labels(SHAPES, 0)
    vox = np.array(SHAPES["voxel_size"])
    objs = ndi.find_objects(lab)
    ids = [i + 1 for i, sl in enumerate(objs) if sl is not None]
    assert len(ids) >= 100
    for i in ids:
        m = lab[objs[i - 1]] == i
        assert ndi.label(m, structure=np.ones((3, 3, 3)))[1] == 1, f"cell {i} is in pieces"
    vis = np.array([_visible_fraction(lab[objs[i - 1]] == i, vox) for i in ids])
    # Control: convex shapes rasterised on the same grid are fully visible from inside.
    zz, yy, xx = np.mgrid[:9, :30, :30]
    ball = ((zz - 4) * 1.0) ** 2 + ((yy - 14.5) * 0.5) ** 2 + ((xx - 14.5) * 0.5) ** 2 <= 16
    box = np.zeros((9, 30, 30), bool)
    box[1:8, 3:25, 6:28] = True
    assert _visible_fraction(ball, vox) > 0.98 and _visible_fraction(box, vox) > 0.98
    # Some synthetic cells are far from star-convex: even from their best centre a good part is hidden.
    assert np.sum(vis < 0.85) >= 5 and vis.min() < 0.8, sorted(vis)[:8]
    assert np.median(vis) > 0.95  # most cells are ordinary convex-ish polyhedra


def _visible_fraction(mask: np.ndarray, vox: np.ndarray, step: float = 0.25) -> float:
    """Largest fraction of a mask's voxels whose straight segment to a centre stays inside the mask,
    over centre candidates (maxima of the distance transform and the centroid)."""
    pts = np.argwhere(mask).astype(float)
    edt = ndi.distance_transform_edt(np.pad(mask, 1), sampling=vox)[1:-1, 1:-1, 1:-1]
    cands = np.argwhere(edt >= 0.9 * edt.max())
    cands = [*cands[:: max(1, len(cands) // 6)], pts.mean(axis=0)]
    P = pts * vox
    hi = np.array(mask.shape) - 1
    best = 0.0
    for c in cands:
        c = np.asarray(c, float) * vox
        n = int(np.ceil(np.linalg.norm(P - c, axis=1).max() / step)) + 1
        ok = np.ones(len(P), bool)
        for s in np.linspace(0.0, 1.0, n):
            q = np.clip(np.rint((c + s * (P - c)) / vox).astype(int), 0, hi)
            ok &= mask[q[:, 0], q[:, 1], q[:, 2]]
        best = max(best, float(ok.mean()))
    return best


def test_seed_points_lie_in_their_cells_and_centroids_are_exact(small_labels: np.ndarray) -> None:
    scene = scene_for(SMALL)
    t = 1
    seeds = seed_table(SMALL, t)
    present = np.unique(small_labels[t])
    assert np.array_equal(seeds["track_id"].to_numpy(), present[present > 0])
    idx = np.rint(seeds[["z", "y", "x"]].to_numpy() / scene.voxel).astype(int)
    idx = np.clip(idx, 0, np.array(SMALL["shape"][1:]) - 1)
    hits = small_labels[t][idx[:, 0], idx[:, 1], idx[:, 2]] == seeds["track_id"].to_numpy()
    assert hits.mean() >= 0.9
    cen = true_centroids(SMALL, [t], slab=5)
    ids = cen["track_id"].to_numpy()
    ref = np.array(ndi.center_of_mass(np.ones_like(small_labels[t]), small_labels[t], ids)) * scene.voxel
    assert np.allclose(cen[["z", "y", "x"]].to_numpy(), ref)
    assert np.array_equal(cen["volume"].to_numpy(), np.bincount(small_labels[t].ravel())[ids])


def test_cells_move_smoothly_at_about_the_requested_speed() -> None:
    cfg = {**SMALL, "speed_um_per_frame": 1.5, "division_rate": 0.0}
    a, b = seed_table(cfg, 0), seed_table(cfg, 1)
    m = a.merge(b, on="track_id", suffixes=("0", "1"))
    assert len(m) == len(a) == len(b)
    step = np.linalg.norm(m[["z1", "y1", "x1"]].to_numpy() - m[["z0", "y0", "x0"]].to_numpy(), axis=1)
    assert 0.2 * 1.5 < np.median(step) < 3 * 1.5
    # Without flow and jitter nothing moves.
    frozen = {**cfg, "speed_um_per_frame": 0.0, "jitter_um": 0.0}
    s0, s1 = seed_table(frozen, 0), seed_table(frozen, 2)
    assert np.allclose(s0[["z", "y", "x"]].to_numpy(), s1[["z", "y", "x"]].to_numpy(), atol=1e-9)


# --- optics and noise ---------------------------------------------------------------------------

@pytest.mark.parametrize("snr", [3.0, 12.0])
def test_noise_model_and_snr(small_labels: np.ndarray, snr: float) -> None:
    cfg = {**SMALL, "snr": snr}
    scene = scene_for(cfg)
    t = 0
    noisy = render_image(cfg, t).astype(float)
    clean = render_image(cfg, t, noise=False)
    lab = small_labels[t]
    c = SyntheticConfig(**cfg)
    cyto = c.offset + scene.photons * (c.background_level + c.cytoplasm_level * np.array([0.8, 1.2]))
    interior = (lab > 0) & (clean >= cyto[0] - 1e-6) & (clean <= cyto[1] + 0.02 * scene.photons)
    assert interior.sum() > 200
    resid = (noisy - clean)[interior]
    expected_sigma = np.sqrt(np.mean(clean[interior] - c.offset) + c.read_noise**2)
    assert abs(resid.std() / expected_sigma - 1) < 0.15
    assert abs(resid.mean()) < 0.2 * expected_sigma
    # Membranes: voxels where the label changes between z-neighbours or y/x-neighbours.
    edge = np.zeros_like(lab, bool)
    for ax in range(3):
        d = np.diff(lab, axis=ax) != 0
        sl_a = [slice(None)] * 3
        sl_b = [slice(None)] * 3
        sl_a[ax], sl_b[ax] = slice(1, None), slice(None, -1)
        edge[tuple(sl_a)] |= d
        edge[tuple(sl_b)] |= d
    edge &= lab > 0
    contrast = np.median(clean[edge]) - np.median(clean[interior])
    measured = contrast / resid.std()
    assert 0.5 * snr < measured < 2.0 * snr


def test_nucleus_channel_is_brightest_inside_cells() -> None:
    cfg = {**SMALL, "nucleus_channel": True}
    img = render_image(cfg, 0, noise=False)
    assert img.shape == (2, *SMALL["shape"][1:])
    lab = render_labels(cfg, 0)
    nuc = img[1]
    bright = nuc > np.percentile(nuc, 97)
    assert np.mean(lab[bright] > 0) > 0.99
    # Every cell's brightest nucleus voxel is inside the cell.
    ids = np.unique(lab[lab > 0])
    peak = np.array(ndi.maximum(nuc, lab, ids))
    assert np.mean(peak > np.median(nuc[lab == 0]) + 0.5 * scene_for(cfg).photons) > 0.9


# --- writer -------------------------------------------------------------------------------------

def test_write_synthetic_store(tmp_path, small_labels: np.ndarray, small_lineage: pd.DataFrame) -> None:
    from vollseg_dask.io.ctc import read_ctc_tracks
    from vollseg_dask.io.omezarr import list_labels, open_image, open_labels

    cfg = {**SMALL, "n_levels": 2}
    out = tmp_path / "syn.zarr"
    res = write_synthetic(out, cfg, scheduler="threads", num_workers=2, progress=False, frames_per_task=2)
    assert res.path == out and res.n_tracks == len(small_lineage)
    assert res.n_divisions == int((small_lineage["parent"] > 0).sum()) // 2
    img = open_image(out)
    assert img.axes == "tzyx" and img.voxel_size == (1.0, 0.5, 0.5) and img.frame_interval == 60.0
    assert img.chunks == (1, 6, 24, 24) and img.n_levels == 2
    assert list_labels(out) == ["ground_truth"]
    labels = open_labels(out, "ground_truth")
    assert labels.dtype == np.uint32
    assert np.array_equal(labels.data.compute(), small_labels)
    data = img.data.compute()
    for t in range(SMALL["shape"][0]):
        assert np.array_equal(data[t], render_image(SMALL, t))
    lvl1 = open_labels(out, "ground_truth", 1).data.compute()
    assert set(np.unique(lvl1)) <= set(np.unique(small_labels))
    # Lineage in Parquet and CTC form, both inside the store.
    pq = pd.read_parquet(out / "ground_truth_lineage.parquet").sort_values("track_id", ignore_index=True)
    pd.testing.assert_frame_equal(pq, small_lineage)
    ctc = read_ctc_tracks(out / "man_track.txt").sort_values("label", ignore_index=True)
    assert np.array_equal(ctc[["label", "begin", "end", "parent"]].to_numpy(), small_lineage.to_numpy())
    assert SyntheticConfig.model_validate(__import__("yaml").safe_load((out / "synthetic_config.yaml").read_text())) \
        == SyntheticConfig(**cfg)
    # Existing store: refused, then replaced on request.
    with pytest.raises(StoreExistsError):
        write_synthetic(out, cfg, progress=False)
    again = write_synthetic(out, {**cfg, "n_levels": 1}, scheduler="synchronous", overwrite=True, progress=False)
    assert open_image(again.path).n_levels == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_with_shards_and_nucleus_same_bytes(tmp_path) -> None:
    from vollseg_dask.io.omezarr import open_image

    cfg = {**SMALL, "shape": (1, 12, 48, 48), "nucleus_channel": True, "shards": (12, 48, 48)}
    res = write_synthetic(tmp_path / "n.zarr", cfg, scheduler="synchronous", progress=False)
    img = open_image(res.path)
    assert img.axes == "tczyx" and img.shards == (1, 1, 12, 48, 48)
    # Noise is drawn per chunk, so the sharded store holds the same bytes as chunk-wise rendering.
    assert np.array_equal(img.data.compute()[0], render_image(cfg, 0))


def test_write_with_a_distributed_client(tmp_path) -> None:
    from distributed import Client, LocalCluster

    from vollseg_dask.io.omezarr import open_labels

    cfg = {**SMALL, "shape": (1, 12, 48, 48)}
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        res = write_synthetic(tmp_path / "d.zarr", cfg, client=client, progress=False, frames_per_task=1)
        assert client.status == "running"  # the caller's client is left open
    assert res.n_tasks == 8
    # (Not the first frame of SMALL: a cell must pass its checks at every frame of the data set.)
    assert np.array_equal(open_labels(res.path, "ground_truth").data.compute()[0], render_labels(cfg, 0))


def _peak_traced(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_writer_memory_does_not_grow_with_store_size(tmp_path) -> None:
    # Four times the frames (and tasks): the traced peak stays that of one task.
    base = {**SMALL, "division_rate": 0.0, "chunks": (12, 24, 24)}
    small = {**base, "shape": (1, 12, 48, 48)}
    large = {**base, "shape": (4, 12, 48, 48)}
    p1 = _peak_traced(lambda: write_synthetic(tmp_path / "s.zarr", small, scheduler="synchronous", progress=False,
                                              frames_per_task=1))
    p4 = _peak_traced(lambda: write_synthetic(tmp_path / "l.zarr", large, scheduler="synchronous", progress=False,
                                              frames_per_task=1))
    assert p4 < 1.2 * p1 + 2**20, (p1, p4)
    assert p4 < 64 * 2**20


# --- CLI and imports ----------------------------------------------------------------------------

def test_cli_writes_a_store(tmp_path) -> None:
    from click.testing import CliRunner

    from vollseg_dask.cli import main

    out = tmp_path / "cli.zarr"
    args = ["synthetic", str(out), "--shape", "2,12,48,48", "--cells", "8", "--seed", "5", "--voxel-size",
            "1,0.5,0.5", "--snr", "6", "--chunks", "12,48,48", "--no-progress"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "man_track.txt" in res.output and "ground_truth" in res.output and "tracks" in res.output
    assert (out / "man_track.txt").is_file() and (out / "ground_truth_lineage.parquet").is_file()
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "exists" in str(again.exception or again.output)
    cfg_file = tmp_path / "syn.yaml"
    cfg_file.write_text("shape: [1, 12, 48, 48]\nvoxel_size: [1.0, 0.5, 0.5]\ncell_diameter_um: 6.5\nseed: 9\n")
    res = CliRunner().invoke(main, ["synthetic", str(out), "--config", str(cfg_file), "--nucleus", "--overwrite",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "tczyx" in res.output
    bad = CliRunner().invoke(main, ["synthetic", str(tmp_path / "x.zarr"), "--shape", "2,12,48"])
    assert bad.exit_code != 0 and "expected 4 values" in bad.output


def test_import_does_not_load_heavy_modules() -> None:
    code = ("import sys, vollseg_dask.synthetic; "
            "print(any(m in sys.modules for m in ('tensorflow', 'dask', 'zarr', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
