"""Chunked VollSeg segmentation (S1-S6) benchmark, printed as JSON::

    python -m benchmarks.bench_segment [--shape 64,160,160] [--block 16,48,48]
                                       [--ratio-shape 64,256,256] [--ratio-block 32,128,128] [--workers 2]

One run reports, every figure against its reference measured in the same run:

* **throughput** - voxels/s of S2-S6 (NMS, components, seeds, watershed, filters + relabel + pyramid)
  and of S1 (the ground-truth predictor, for scale) on ``--workers`` Dask workers;
* **tiling overhead** - wall time of the block-wise run over the same pipeline run as one block
  over the whole volume (goal: <= 1.3), for S2-S6 and for S1-S6, on ``--ratio-shape`` cut into
  ``--ratio-block`` blocks (blocks several cells wide, as in production: the halo a block reads is
  set by the cell size, so tiny blocks pay mostly for their halos);
* **memory** - peak RSS (VmHWM) at volume S and 4·S (twice z, twice y; same block shape), each in a
  fresh subprocess whose baseline is taken after imports and a tiny warm-up run (goal: ratio <= 1.2).
  S must hold interior blocks (not clipped by the volume on any side), else its blocks read less
  than 4·S's and the ratio measures clipping, not scaling;
* **scaling** - the block-wise run on ``--workers`` workers against the same run on 1 worker
  (speed-up of S2-S6 and of S1-S6; on a machine shared with other work it is bounded by the free cores);
* **tasks per block** - Dask tasks submitted per (t, block).

Data: a Voronoi membrane tissue with ground-truth labels (``vollseg_dask.segmentation.testing``),
written by the parent process so that data generation is not part of the measured memory; the
network outputs come from :class:`~vollseg_dask.predictors.ground_truth.GroundTruthPredictor`
(20 % of StarDist objects removed, 2 % of walls missed, false candidates, noise).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import peak_rss, run_child

S2_S6 = ("S2 nms + S3 components", "S4 seeds", "S5 watershed", "S6 filter + relabel", "S6c pyramid")


_peak_rss = peak_rss


def _make_store(path: Path, shape: list[int], seed: int) -> dict[str, Any]:
    import numpy as np
    from scipy import ndimage

    from vollseg_dask.segmentation.testing import voronoi_tissue, write_test_store

    # cell density fixed per voxel: 4x the volume holds 4x the cells
    n_cells = int(np.prod(shape) / 1200)
    gt = voronoi_tissue(shape, n_cells, seed=seed, min_distance=4, membrane=True)
    boxes = [b for b in ndimage.find_objects(gt) if b is not None]
    extent = max(max(s.stop - s.start for s in b) for b in boxes)
    write_test_store(path, gt, chunks=(1, min(shape[0], 16), min(shape[1], 64), min(shape[2], 64)))
    return {"cells": int(len(boxes)), "max_extent": int(extent), "shape": list(shape)}


def kernel_reference(run_dir: str, t: int = 0, foreground_threshold: float | None = None) -> dict[str, Any]:
    """The scikit-image/SciPy kernels alone on a whole time point, single-threaded (issue 13's reference).

    ``ndi.label`` of the run's own U-Net mask (joined by StarDist's foreground above
    ``foreground_threshold`` when the run used it), one marker at each component's centroid, and
    ``skimage.segmentation.watershed`` of the negated StarDist probability inside the mask: the work
    S2-S6 wrap, without their exactness machinery, their tables or their I/O.
    """
    import numpy as np
    import zarr
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed
    from threadpoolctl import threadpool_limits

    prob = np.asarray(zarr.open_array(store=str(Path(run_dir) / "prob"), mode="r")[t])
    mask = np.asarray(zarr.open_array(store=str(Path(run_dir) / "mask"), mode="r")[t]) != 0
    if foreground_threshold is not None:
        mask |= prob > foreground_threshold
    with threadpool_limits(1):
        start = time.perf_counter()
        lab, n = ndi.label(mask)
        markers = np.zeros(mask.shape, np.int32)
        if n:
            cen = np.rint(np.asarray(ndi.center_of_mass(mask, lab, range(1, n + 1)))).astype(np.int64)
            markers[tuple(cen.T)] = np.arange(1, n + 1, dtype=np.int32)
        watershed(-prob, markers, mask=mask)
        wall = time.perf_counter() - start
    return {"voxels": int(mask.size), "components": int(n), "wall_s": round(wall, 3),
            "voxels_per_s": mask.size / wall}


def _child(store: str, block: list[int], workers: int, halo: int, warm: str | None) -> dict[str, Any]:
    """Runs inside a fresh subprocess: warm up, segment, report time and memory."""
    import psutil
    from distributed import Client, LocalCluster

    from vollseg_dask.predictors.ground_truth import GroundTruthPredictor
    from vollseg_dask.segmentation import SegmentationConfig, segment

    def predictor(path: str) -> GroundTruthPredictor:
        return GroundTruthPredictor(path, n_rays=32, halo=halo, drop_fraction=0.2, merge_fraction=0.02,
                                    false_rate=0.1, noise=0.02, seed=3)

    cfg = SegmentationConfig(block_shape=tuple(block))
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=None,
                      silence_logs="error") as cluster, Client(cluster) as client:
        if warm:
            segment(warm, "warm", predictor(warm), SegmentationConfig(block_shape=(16, 32, 32)), client=client,
                    show_progress=False, overwrite=True)
        baseline = psutil.Process().memory_info().rss
        start = time.perf_counter()
        r = segment(store, "bench", predictor(store), cfg, client=client, show_progress=False, overwrite=True)
        wall = time.perf_counter() - start
    peak = _peak_rss()
    from vollseg_dask.io.omezarr import open_image

    shape = open_image(store).shape
    voxels = 1
    for s in shape:
        voxels *= int(s)
    stages = {k: round(v["wall_s"], 3) for k, v in r.timings.items()}
    s2_s6 = sum(r.timings[k]["wall_s"] for k in S2_S6 if k in r.timings)
    certs: dict[str, int] = {}
    for c in r.certificates.values():
        certs[c["status"]] = certs.get(c["status"], 0) + 1
    n_t = len(r.n_objects)
    from vollseg_dask.segmentation.layout import RunLayout

    lay = RunLayout(store, "bench")
    nms_s = sum((lay.read_marker("nms", t) or {}).get("nms_s", 0.0) for t in range(n_t))
    ref = kernel_reference(r.run_dir)
    return {
        "kernel_reference": ref, "nms_s": round(nms_s, 3),
        "kernels_over_s2_s6": round(ref["wall_s"] * n_t / s2_s6, 3),
        "shape": list(shape), "voxels": voxels, "block": block, "blocks": r.n_blocks, "tasks": r.n_tasks,
        "tasks_per_block": r.n_tasks / (r.n_blocks * n_t), "objects": r.n_objects[0], "certificates": certs,
        "wall_s": round(wall, 3), "s1_s": round(r.timings["S1 predict"]["wall_s"], 3), "s2_s6_s": round(s2_s6, 3),
        "s2_s6_voxels_per_s": voxels / s2_s6, "s1_voxels_per_s": voxels / r.timings["S1 predict"]["wall_s"],
        "stages_s": stages, "baseline_rss": baseline, "peak_rss": peak, "peak_delta": peak - baseline,
    }


def _run_child(store: Path, block: list[int], workers: int, halo: int, warm: Path | None) -> dict[str, Any]:
    args = ["--child", str(store), "--block",
           ",".join(map(str, block)), "--workers", str(workers), "--halo", str(halo)]
    if warm is not None:
        args += ["--warm", str(warm)]
    return run_child("benchmarks.bench_segment", args)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="64,160,160", help="S: Z,Y,X of the small volume (one time point)")
    parser.add_argument("--block", default="16,48,48", help="block core shape Z,Y,X of the memory runs")
    parser.add_argument("--ratio-shape", default="64,256,256", help="volume of the tiled/untiled comparison")
    parser.add_argument("--ratio-block", default="32,128,128", help="block shape of the tiled/untiled comparison")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers")
    parser.add_argument("--workdir", default=None, help="folder for the stores (default: a temp dir)")
    parser.add_argument("--child", metavar="STORE", help=argparse.SUPPRESS)
    parser.add_argument("--halo", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--warm", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    block = [int(v) for v in args.block.split(",")]
    if args.child:
        result = _child(args.child, block, args.workers, args.halo, args.warm)
        print(json.dumps(result))
        return result

    shape = [int(v) for v in args.shape.split(",")]
    big = [2 * shape[0], 2 * shape[1], shape[2]]
    ratio_shape = [int(v) for v in args.ratio_shape.split(",")]
    ratio_block = [int(v) for v in args.ratio_block.split(",")]
    report: dict[str, Any] = {"benchmark": "chunked VollSeg segmentation S1-S6", "workers": args.workers,
                              "cpu_count": os.cpu_count(), "block": block, "ratio_block": ratio_block}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmpp = Path(tmp)
        warm = tmpp / "warm.zarr"
        _make_store(warm, [16, 48, 48], seed=9)
        data = {"S": _make_store(tmpp / "S.zarr", shape, seed=1), "4S": _make_store(tmpp / "4S.zarr", big, seed=2),
                "R": _make_store(tmpp / "R.zarr", ratio_shape, seed=3)}
        halo = max(d["max_extent"] for d in data.values()) + 2
        report["data"] = data
        report["predictor_halo"] = halo
        small = _run_child(tmpp / "S.zarr", block, args.workers, halo, warm)
        big_run = _run_child(tmpp / "4S.zarr", block, args.workers, halo, warm)
        tiled = _run_child(tmpp / "R.zarr", ratio_block, args.workers, halo, warm)
        untiled = _run_child(tmpp / "R.zarr", ratio_shape, args.workers, halo, warm)
        # the scaling reference: the same block-wise run on one worker
        one = _run_child(tmpp / "R.zarr", ratio_block, 1, halo, warm) if args.workers > 1 else tiled
    report["runs"] = {"S_blockwise": small, "4S_blockwise": big_run, "R_blockwise": tiled, "R_untiled": untiled,
                      "R_blockwise_1_worker": one}
    summary = {
        "s2_s6_voxels_per_s": round(tiled["s2_s6_voxels_per_s"]),
        # >= 1.0 is the goal: S2-S6 on the workers at least as fast as the bare kernels, one thread
        "s2_s6_speed_over_kernels": tiled["kernels_over_s2_s6"],
        "kernel_reference_voxels_per_s": round(tiled["kernel_reference"]["voxels_per_s"]),
        "nms_share_of_s2_s6": round(tiled["nms_s"] / tiled["s2_s6_s"], 3),
        "s2_s6_voxels_per_s_untiled": round(untiled["s2_s6_voxels_per_s"]),
        "s2_s6_voxels_per_s_small_blocks_4S": round(big_run["s2_s6_voxels_per_s"]),
        "s1_ground_truth_voxels_per_s": round(tiled["s1_voxels_per_s"]),
        "blockwise_over_untiled_wall_s2_s6": round(tiled["s2_s6_s"] / untiled["s2_s6_s"], 3),
        "blockwise_over_untiled_wall_s1_s6": round(tiled["wall_s"] / untiled["wall_s"], 3),
        "peak_rss_mb_S": round(small["peak_rss"] / 2**20, 1),
        "peak_rss_mb_4S": round(big_run["peak_rss"] / 2**20, 1),
        "peak_rss_ratio_4S_over_S": round(big_run["peak_rss"] / small["peak_rss"], 3),
        "peak_delta_ratio_4S_over_S": round(big_run["peak_delta"] / max(small["peak_delta"], 1), 3),
        "s2_s6_voxels_per_s_1_worker": round(one["s2_s6_voxels_per_s"]),
        "speedup_s2_s6_workers_over_1_worker": round(one["s2_s6_s"] / tiled["s2_s6_s"], 3),
        "speedup_s1_s6_workers_over_1_worker": round(one["wall_s"] / tiled["wall_s"], 3),
        "same_objects_1_worker": one["objects"] == tiled["objects"],
        "tasks_per_block": round(tiled["tasks_per_block"], 2),
        "tasks_per_block_S": round(small["tasks_per_block"], 2),
        "tasks_per_block_4S": round(big_run["tasks_per_block"], 2),
        "all_blocks_certified": all(set(r["certificates"]) <= {"exact", "agreed"} for r in (small, big_run, tiled)),
        "same_objects_blockwise_untiled": tiled["objects"] == untiled["objects"],
    }
    summary["goal_tiling_overhead_met"] = summary["blockwise_over_untiled_wall_s2_s6"] <= 1.3
    summary["goal_flat_memory_met"] = summary["peak_rss_ratio_4S_over_S"] <= 1.2
    report["summary"] = summary
    report["benchmark_wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
