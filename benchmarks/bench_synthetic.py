"""Throughput and peak memory of ``write_synthetic`` at store sizes S and 4·S.

Goals: peak memory flat (ratio 4·S / S ≤ 1.2) and at least 10 Mvox/s on 2 cores.

Each write runs in a fresh subprocess that reports its resident memory after imports and a tiny
warm-up write (``baseline``, which also loads the compiled kernels) and its lifetime peak (VmHWM).
The 4·S store has twice the z extent and twice the y extent of the S store (same frames, chunks and
cell size, so 4× the cells, tasks and bytes). Each size is written ``--repeats`` times: voxels/s is
the median, peak RSS the largest. The reference measured in the same run is one write of S with
one worker (speed-up of ``--workers`` over 1). Also reported: the store size on disk, and voxels per
CPU-second of the writing process (all its threads), which a machine shared with other work
slows less than wall-clock voxels/s. Printed as JSON::

    python -m benchmarks.bench_synthetic [--shape 4,64,512,512] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import peak_rss, run_child

_peak_rss = peak_rss


def _config(shape: list[int], chunks: list[int]) -> dict[str, Any]:
    return {"shape": shape, "cell_diameter_um": 9.0, "tissue_radii": [1.2, 1.2, 1.2], "chunks": chunks,
            "division_rate": 0.05, "seed": 1}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _child(out: str, shape: list[int], chunks: list[int], workers: int) -> dict[str, Any]:
    """Runs inside the subprocess: warm up, write, report memory."""
    import psutil

    from vollseg_dask.synthetic import write_synthetic

    warm = Path(out).with_name(Path(out).stem + "-warmup.zarr")
    write_synthetic(warm, _config([1, 8, 64, 64], [8, 64, 64]), scheduler="threads", num_workers=workers,
                    overwrite=True, progress=False)
    baseline = psutil.Process().memory_info().rss
    start = time.perf_counter()
    cpu_start = time.process_time()
    res = write_synthetic(out, _config(shape, chunks), scheduler="threads", num_workers=workers, overwrite=True,
                          progress=False)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    peak = _peak_rss()
    voxels = 1
    for s in shape:
        voxels *= s
    return {"baseline_rss": baseline, "peak_rss": peak, "seconds": seconds, "shape": shape, "voxels": voxels,
            "tasks": res.n_tasks, "tracks": res.n_tracks, "divisions": res.n_divisions,
            "store_bytes": _du(Path(out)), "voxels_per_s": voxels / seconds,
            "cpu_seconds": cpu_seconds, "voxels_per_cpu_s": voxels / cpu_seconds}


def _run_child(out: Path, shape: list[int], chunks: list[int], workers: int) -> dict[str, Any]:
    args = ["--child", str(out), "--shape",
           ",".join(map(str, shape)), "--chunks", ",".join(map(str, chunks)), "--workers", str(workers)]
    return run_child("benchmarks.bench_synthetic", args)


def _repeat(out: Path, shape: list[int], chunks: list[int], workers: int, repeats: int) -> dict[str, Any]:
    """``repeats`` fresh-process writes of one store: median voxels/s, largest peak RSS, every run's figures."""
    runs = []
    for _ in range(repeats):
        r = _run_child(out, shape, chunks, workers)
        r["peak_delta"] = r["peak_rss"] - r["baseline_rss"]
        runs.append(r)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.with_name(out.stem + "-warmup.zarr"), ignore_errors=True)
    best = dict(runs[0])
    best.update(voxels_per_s=statistics.median(r["voxels_per_s"] for r in runs),
                seconds=statistics.median(r["seconds"] for r in runs),
                voxels_per_cpu_s=statistics.median(r["voxels_per_cpu_s"] for r in runs),
                peak_rss=max(r["peak_rss"] for r in runs), peak_delta=max(r["peak_delta"] for r in runs),
                repeats=repeats, voxels_per_s_runs=[r["voxels_per_s"] for r in runs])
    return best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure and print (as JSON) throughput and peak RSS of write_synthetic at sizes S and 4·S."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="4,64,512,512", help="S: T,Z,Y,X of the small store")
    parser.add_argument("--chunks", default="32,256,256", help="spatial chunks Z,Y,X (both stores)")
    parser.add_argument("--workers", type=int, default=2, help="threads of the local scheduler")
    parser.add_argument("--repeats", type=int, default=3, help="writes per size (median voxels/s)")
    parser.add_argument("--workdir", default=None, help="folder for the stores (default: a temp dir)")
    parser.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = [int(v) for v in args.shape.split(",")]
    chunks = [int(v) for v in args.chunks.split(",")]

    if args.child:
        result = _child(args.child, shape, chunks, args.workers)
        print(json.dumps(result))
        return result

    big = [shape[0], 2 * shape[1], 2 * shape[2], shape[3]]
    report: dict[str, Any] = {"benchmark": "write_synthetic throughput and peak RSS vs store size", "chunks": chunks,
                              "workers": args.workers, "repeats": args.repeats, "cpu_count": os.cpu_count(),
                              "results": {}}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        runs: dict[str, Any] = {}
        for label, shp in (("S", shape), ("4S", big)):
            runs[label] = _repeat(Path(tmp) / f"syn_{label}.zarr", shp, chunks, args.workers, args.repeats)
        one = _repeat(Path(tmp) / "syn_S1.zarr", shape, chunks, 1, 1)
        runs["S_1_worker"] = one
        runs["speedup_workers_over_1_worker"] = runs["S"]["voxels_per_s"] / one["voxels_per_s"]
        runs["voxels_per_s_ratio_4S_over_S"] = runs["4S"]["voxels_per_s"] / runs["S"]["voxels_per_s"]
        runs["peak_rss_ratio_4S_over_S"] = runs["4S"]["peak_rss"] / runs["S"]["peak_rss"]
        runs["peak_delta_ratio_4S_over_S"] = runs["4S"]["peak_delta"] / max(runs["S"]["peak_delta"], 1)
        runs["store_bytes_ratio_4S_over_S"] = runs["4S"]["store_bytes"] / runs["S"]["store_bytes"]
        runs["goal_met"] = runs["peak_rss_ratio_4S_over_S"] <= 1.2
        runs["throughput_goal_met"] = min(runs["S"]["voxels_per_s"], runs["4S"]["voxels_per_s"]) >= 10e6
        report["results"] = runs
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
