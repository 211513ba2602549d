"""End-to-end run on a time-lapse larger than the workers' memory, printed as JSON::

    python -m benchmarks.bench_scale [--quick] [--workers 2] [--memory-limit 1GiB]
                                     [--gt-shape T,Z,Y,X] [--nn-shape T,Z,Y,X] [--no-nn]

Two runs of ``vollseg_dask.pipeline.run`` (segment → measure → track → export) on a local Dask
cluster whose workers are started with Dask's ``memory_limit`` (Dask pauses, spills and restarts a
worker above it; the engine sizes network tiles and watershed read regions from it):

* ``ground_truth``: a synthetic time-lapse segmented with the ground-truth predictor (no networks);
  by default its uncompressed size is at least 4x the sum of the workers' memory limits;
* ``networks``: a smaller synthetic time-lapse (>= 0.25 Gvox by default) with the bundled networks
  and their settings (``foreground_threshold`` 0.1, ``merge_threshold`` 0.33).

Each entry records ``store_bytes_uncompressed``, ``n_workers``, ``worker_memory_limit_bytes``,
``peak_rss_bytes_max`` (largest process: every worker and this client, sampled every 0.2 s and
checked against each worker's own high-water mark), ``worker_restarts`` (worker processes that
were replaced: distinct worker pids seen minus ``n_workers``), ``wall_s``, per-stage wall time and
voxels/s, and ``bytes_ratio`` = store bytes / sum of memory limits (>= 4 is the goal).
``--quick`` uses tiny stores (the mechanics, not the scale; used by the tests).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import peak_rss


class _ProcessWatch:
    """Samples the RSS of this process and its children; remembers every worker pid seen."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._me = psutil.Process()
        self.interval = interval
        self.peak: dict[int, int] = {}
        self.children: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self._me, *self._me.children(recursive=True)]
            except psutil.Error:
                procs = [self._me]
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
                if p.pid != self._me.pid:
                    self.children.add(p.pid)
            self._stop.wait(self.interval)

    def __enter__(self) -> _ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _write_store(path: Path, shape: list[int], seed: int) -> int:
    from vollseg_dask.synthetic import write_synthetic

    # cell size of the bundled models' tissue (~13 voxels across in y/x): density per voxel fixed
    n_cells = max(8, int(shape[1] * shape[2] * shape[3] / 9000))
    write_synthetic(path, {"shape": tuple(shape), "seed": seed, "n_cells": n_cells}, progress=False)
    return int(2 * shape[0] * shape[1] * shape[2] * shape[3])  # uint16


def _run(store: Path, out: Path, *, networks: bool, workers: int, memory_limit: str,
         block: list[int]) -> dict[str, Any]:
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    from vollseg_dask.pipeline import run

    seg: dict[str, Any] = {"block_shape": tuple(block)}
    if networks:
        seg.update(foreground_threshold=0.1, merge_threshold=0.33)
    config = {
        "input": {"path": str(store)},
        "output": str(out),
        "stages": ["segment", "measure", "track", "export"],
        "predictor": {"kind": "network" if networks else "ground-truth"},
        "segment": seg,
        "export": {"formats": ["trackmate", "ctc"], "ctc_masks": False},
    }
    limit = int(parse_bytes(memory_limit))
    with _ProcessWatch() as watch, LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                memory_limit=limit, dashboard_address=":0",
                                                silence_logs=50) as cluster, Client(cluster) as client:
        first = set(client.run(lambda: __import__("os").getpid()).values())
        t0 = time.perf_counter()
        report = run(config, client=client, resume=False)
        wall = time.perf_counter() - t0
        own = client.run(lambda: __import__("benchmarks._common", fromlist=["peak_rss"]).peak_rss())
        last = set(client.run(lambda: __import__("os").getpid()).values())
    ds = report.datasets[0]
    if ds.status != "done":
        raise RuntimeError(f"run failed: {ds.reason}")
    # nanny processes are children too; a worker pid is one that served as a worker at some point
    worker_pids = first | last | {p for p in watch.children if p not in first | last and p in watch.peak
                                  and watch.peak[p] > 200 * 2**20}
    peaks = [peak_rss(), *own.values(), *(watch.peak.get(p, 0) for p in worker_pids)]
    stages = {name: {"wall_s": round(rec.get("wall_s", 0.0), 2),
                     "voxels_per_s": round(rec["voxels_per_s"]) if rec.get("voxels_per_s") else None}
              for name, rec in ds.stages.items()}
    return {"n_workers": workers, "worker_memory_limit_bytes": limit, "peak_rss_bytes_max": int(max(peaks)),
            "peak_rss_bytes_workers": sorted((int(v) for v in own.values()), reverse=True),
            "worker_restarts": max(0, len(worker_pids) - workers) + len(first - last),
            "wall_s": round(wall, 2), "stages": stages, "counts": ds.counts}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny stores (mechanics only)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default=None, help="per worker (default 1GiB; --quick 1.5GiB)")
    parser.add_argument("--gt-shape", default=None, help="T,Z,Y,X of the ground-truth run "
                        "(default: >= 4x the workers' memory)")
    parser.add_argument("--nn-shape", default=None, help="T,Z,Y,X of the networks run (default 4,64,1024,1024)")
    parser.add_argument("--block", default="32,256,256", help="block core shape Z,Y,X")
    parser.add_argument("--no-nn", action="store_true", help="skip the networks run")
    parser.add_argument("--workdir", default=None, help="where the stores go (default: a temporary folder)")
    args = parser.parse_args(argv)
    from dask.utils import parse_bytes

    memory_limit = args.memory_limit or ("1.5GiB" if args.quick else "1GiB")
    limit = int(parse_bytes(memory_limit))
    if args.gt_shape:
        gt_shape = [int(v) for v in args.gt_shape.split(",")]
    elif args.quick:
        gt_shape = [2, 16, 96, 96]
    else:
        # >= 4x the sum of the limits, in frames of 64 x 1024 x 1024 uint16 (128 MiB)
        frames = -(-4 * args.workers * limit // (2 * 64 * 1024 * 1024))
        gt_shape = [int(frames), 64, 1024, 1024]
    nn_shape = [int(v) for v in args.nn_shape.split(",")] if args.nn_shape else \
        ([2, 16, 64, 64] if args.quick else [4, 64, 1024, 1024])
    block = [int(v) for v in args.block.split(",")] if not args.quick else [16, 48, 48]
    result: dict[str, Any] = {"quick": args.quick}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        runs = [("ground_truth", gt_shape, False)] + ([] if args.no_nn else [("networks", nn_shape, True)])
        for name, shape, nets in runs:
            store = Path(tmp) / f"{name}.zarr"
            t0 = time.perf_counter()
            nbytes = _write_store(store, shape, seed=7)
            write_s = time.perf_counter() - t0
            rec = _run(store, Path(tmp) / f"{name}_out", networks=nets, workers=args.workers,
                       memory_limit=memory_limit, block=block)
            rec.update(shape=shape, store_bytes_uncompressed=nbytes, synthetic_write_s=round(write_s, 2),
                       bytes_ratio=round(nbytes / (args.workers * limit), 3))
            result[name] = rec
    print(json.dumps(result))
    return result


if __name__ == "__main__":  # pragma: no cover
    main()
