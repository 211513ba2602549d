"""Throughput and peak memory of ``measure_cells`` (stage S7), as ratios against references.

1. Throughput at size S: rows/s and voxels/s of :func:`vollseg_dask.measure.measure_cells` on a
   2-worker ``LocalCluster`` (cluster start-up excluded), against
   ``skimage.measure.regionprops_table`` on the whole volume of each time point (same
   attributes: label, volume, centroid, bbox, axis lengths with spacing, intensity
   mean/min/max), measured in the same run; also the whole-volume kernel in one process, and the
   same ``measure_cells`` run on 1 worker (speed-up of 2 workers over 1).
2. Peak RSS at sizes S and 4·S (4× more y·x, same block shape), each in a fresh subprocess on
   the threaded scheduler (2 threads), reported with the post-import baseline; goal: ratio ≤ 1.2.

Labels are a dense Voronoi-like tiling of cells (nearest seed within a radius) with gaps, 1
uint16 channel. Printed as JSON::

    python -m benchmarks.bench_measure [--z 48] [--yx 256] [--t 2] [--block 16,96,96]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import peak_rss

VOXEL = (2.0, 0.5, 0.5)
CELL_RADIUS_UM = 4.0


def _labels_volume(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Voronoi cells around random seeds, cut at CELL_RADIUS_UM (background between)."""
    from scipy import ndimage as ndi

    cell_vox = 4 / 3 * np.pi * CELL_RADIUS_UM**3 / np.prod(VOXEL)
    n = max(1, int(np.prod(shape) / cell_vox))
    seeds = np.zeros(shape, bool)
    pts = [rng.integers(0, s, n) for s in shape]
    seeds[tuple(pts)] = True
    dist, idx = ndi.distance_transform_edt(~seeds, sampling=VOXEL, return_indices=True)
    seed_id = np.zeros(shape, np.uint32)
    seed_id[seeds] = rng.permutation(np.count_nonzero(seeds)).astype(np.uint32) + 1
    lab = seed_id[tuple(idx)]
    lab[dist > CELL_RADIUS_UM] = 0
    return lab


def _make_store(path: Path, t: int, shape: tuple[int, int, int], seed: int) -> None:
    from vollseg_dask.io.omezarr import create_labels, write_image

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 4000, (t, 1, *shape)).astype(np.uint16)
    write_image(path, img, axes="tczyx", scale=(1.0, 1.0, *VOXEL), chunks=(1, 1, 16, 96, 96), n_levels=1)
    del img
    arr = create_labels(path, "cells", dtype="uint32")
    for i in range(t):
        arr[i, 0] = _labels_volume(shape, rng)


_peak_rss = peak_rss


def _child(store: str, out: str, block: tuple[int, int, int]) -> dict[str, Any]:
    """Inside the subprocess: warm up imports, then measure with 2 threads, report memory."""
    import psutil

    from vollseg_dask.measure import measure_cells
    from vollseg_dask.runtime import ClusterConfig, get_client

    with get_client(ClusterConfig(kind="threads", n_workers=2)):
        measure_cells(store, out + ".warm", times=[0], block=block)  # imports, codecs, pools
        baseline = psutil.Process().memory_info().rss
        start = time.perf_counter()
        res = measure_cells(store, out, block=block)
    return {"baseline_rss": baseline, "peak_rss": _peak_rss(), "seconds": time.perf_counter() - start,
            "rows": res.n_rows, "voxels": res.voxels}


def _run_child(store: Path, out: Path, block: tuple[int, int, int]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench_measure", "--child", str(store), str(out),
           "--block", ",".join(map(str, block))]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "VOLLSEG_PROGRESS": "0"}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root, check=False, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"child failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _throughput(store: Path, work: Path, block: tuple[int, int, int]) -> dict[str, Any]:
    from skimage.measure import regionprops_table

    from vollseg_dask.io.omezarr import open_image, open_labels
    from vollseg_dask.kernels.regionprops import block_partials, finalize
    from vollseg_dask.measure import measure_cells
    from vollseg_dask.runtime import ClusterConfig, get_client

    lab = open_labels(store, "cells", 0)
    img = open_image(store, 0)
    n_t = lab.shape[0]
    vox_t = int(np.prod(lab.shape[-3:]))
    # Reference: scikit-image on each whole time point.
    sk_s, sk_rows = 0.0, 0
    kern_s = 0.0
    for t in range(n_t):
        labels = np.asarray(lab.data[t, 0])
        image = np.asarray(img.data[t, 0])
        start = time.perf_counter()
        ref = regionprops_table(labels, image, spacing=VOXEL, properties=(
            "label", "area", "centroid", "bbox", "axis_major_length", "axis_minor_length",
            "intensity_mean", "intensity_min", "intensity_max"))
        sk_s += time.perf_counter() - start
        sk_rows += len(ref["label"])
        start = time.perf_counter()
        finalize(block_partials(labels, image), VOXEL)
        kern_s += time.perf_counter() - start
    # Ours: 2 workers, and 1 worker as the scaling reference; cluster start-up excluded.
    seconds: dict[int, float] = {}
    for workers in (2, 1):
        with get_client(ClusterConfig(kind="local", n_workers=workers, threads_per_worker=1)):
            measure_cells(store, work / f"warm{workers}", times=[0], block=block)  # workers import and warm up
            start = time.perf_counter()
            res = measure_cells(store, work / f"table{workers}", block=block)
            seconds[workers] = time.perf_counter() - start
        assert res.n_rows == sk_rows, (res.n_rows, sk_rows)
    ours_s = seconds[2]
    voxels = vox_t * n_t
    out = {
        "rows": sk_rows, "voxels": voxels,
        "ours_2_workers_s": ours_s, "ours_rows_per_s": sk_rows / ours_s, "ours_voxels_per_s": voxels / ours_s,
        "skimage_s": sk_s, "skimage_rows_per_s": sk_rows / sk_s, "skimage_voxels_per_s": voxels / sk_s,
        "kernel_whole_volume_s": kern_s,
        "ours_1_worker_s": seconds[1], "ours_1_worker_voxels_per_s": voxels / seconds[1],
        "speedup_2_workers_over_1": seconds[1] / seconds[2],
    }
    out["speed_ratio_ours_over_skimage"] = out["ours_rows_per_s"] / out["skimage_rows_per_s"]
    out["speed_ratio_kernel_over_skimage"] = sk_s / kern_s
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--t", type=int, default=2, help="time points")
    parser.add_argument("--z", type=int, default=48, help="z planes")
    parser.add_argument("--yx", type=int, default=256, help="y = x size of S (4·S doubles both)")
    parser.add_argument("--block", default="16,96,96", help="block shape z,y,x")
    parser.add_argument("--workdir", default=None, help="folder for stores (default: a temp dir)")
    parser.add_argument("--child", nargs=2, metavar=("STORE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    block = tuple(int(v) for v in args.block.split(","))
    if args.child:
        result = _child(args.child[0], args.child[1], block)  # type: ignore[arg-type]
        print(json.dumps(result))
        return result

    report: dict[str, Any] = {"benchmark": "measure (S7) throughput and peak RSS", "voxel_size_um": VOXEL,
                              "block": list(block), "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        sizes = {"S": (args.z, args.yx, args.yx), "4S": (args.z, 2 * args.yx, 2 * args.yx)}
        stores = {}
        for i, (name, shape) in enumerate(sizes.items()):
            stores[name] = work / f"{name}.zarr"
            _make_store(stores[name], args.t, shape, seed=i)
        report["throughput_S"] = _throughput(stores["S"], work / "tp", block)
        rss = {}
        for name, store in stores.items():
            r = _run_child(store, work / f"rss_{name}", block)
            r["shape"] = [args.t, *sizes[name]]
            r["peak_delta"] = r["peak_rss"] - r["baseline_rss"]
            rss[name] = r
        rss["peak_rss_ratio_4S_over_S"] = rss["4S"]["peak_rss"] / rss["S"]["peak_rss"]
        rss["peak_delta_ratio_4S_over_S"] = rss["4S"]["peak_delta"] / max(rss["S"]["peak_delta"], 1)
        rss["goal_met"] = rss["peak_rss_ratio_4S_over_S"] <= 1.2
        report["peak_rss"] = rss
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
