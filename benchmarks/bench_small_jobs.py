"""Small-job crossover of ``vollseg-dask measure``: threads against a local process cluster.

Times the whole command as a user runs it (``python -m vollseg_dask measure STORE --out ...``, a
fresh interpreter each time: imports, cluster start-up, measurement, shut-down) at several sizes,
three ways:

* ``threads``   — the threaded scheduler (``VOLLSEG_SMALL_JOB_VOXELS`` above the size);
* ``processes`` — the local default process cluster (``VOLLSEG_SMALL_JOB_VOXELS=0``; worker count
  sized to the machine);
* ``workers1``  — ``--workers 1``: one worker process.

The crossover is the smallest size where ``processes`` beats ``threads``; ``SMALL_JOB_VOXELS`` in
``vollseg_dask/runtime.py`` is set from it. Labels are the Voronoi tiling of
``benchmarks.bench_measure`` (one uint16 channel). Printed as JSON::

    python -m benchmarks.bench_small_jobs [--sizes 2x16x64x64,4x32x128x128] [--repeats 2]
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

from benchmarks._common import ROOT
from benchmarks.bench_measure import VOXEL, _labels_volume

DEFAULT_SIZES = "2x16x64x64,4x32x128x128,4x32x256x256,8x32x256x256,8x64x256x256"


def _store(root: Path, shape: tuple[int, int, int, int]) -> Path:
    from vollseg_dask.io.omezarr import create_image, create_labels

    store = root / ("x".join(map(str, shape)) + ".zarr")
    rng = np.random.default_rng(0)
    create_image(store, shape=shape, dtype="uint16", axes="tzyx", scale=(1.0, *VOXEL))
    lab = create_labels(store, "cells")
    for t in range(shape[0]):
        lab[t] = _labels_volume(shape[1:], rng)
    return store


def _time(store: Path, out: Path, mode: str) -> float:
    env = dict(os.environ, VOLLSEG_PROGRESS="0")
    args = [sys.executable, "-m", "vollseg_dask", "measure", str(store), "--labels", "cells", "--out", str(out),
            "--channels", "none", "--overwrite"]
    if mode == "threads":
        env["VOLLSEG_SMALL_JOB_VOXELS"] = str(2**62)
    elif mode == "processes":
        env["VOLLSEG_SMALL_JOB_VOXELS"] = "0"
    else:
        args += ["--workers", "1"]
    t0 = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"measure failed ({mode}):\n{res.stderr[-3000:]}")
    return wall


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated TxZxYxX shapes")
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode and size (the minimum is kept)")
    a = ap.parse_args(argv)
    from vollseg_dask.runtime import default_n_workers

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.sizes.split(","):
            shape = tuple(int(v) for v in spec.split("x"))
            store = _store(Path(tmp), shape)  # type: ignore[arg-type]
            walls = {m: min(_time(store, Path(tmp) / f"cells_{m}", m) for _ in range(a.repeats))
                     for m in ("threads", "processes", "workers1")}
            rows.append({"shape": list(shape), "voxels": int(np.prod(shape)),
                         **{f"{m}_s": round(w, 2) for m, w in walls.items()},
                         "processes_over_threads": round(walls["processes"] / walls["threads"], 2)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out = {"benchmark": "small_jobs", "cpus": os.cpu_count(), "default_workers": default_n_workers(),
           "load_avg_1min_at_end": os.getloadavg()[0], "rows": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
