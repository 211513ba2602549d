"""Peak memory of ``convert`` at two input sizes: it must stay flat (goal: ratio ≤ 1.2); also its voxels/s.

Each conversion runs in a fresh subprocess, which reports its resident memory after imports and
a warm-up conversion (``baseline``) and its lifetime peak (VmHWM). The input of size 4·S
has 4× more z-planes than the one of size S, same plane size and chunks. Printed as JSON::

    python -m benchmarks.bench_convert [--size-mb 64] [--formats npy,tiff] [--max-slab-mb 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import peak_rss, run_child

PLANE = (1024, 1024)
DTYPE = np.uint16


def _make_input(path: Path, n_planes: int, fmt: str) -> None:
    """Write a compressible but non-trivial uint16 stack plane by plane (never whole in memory)."""
    ramp = np.arange(PLANE[0] * PLANE[1], dtype=np.uint32).reshape(PLANE)

    def plane(z: int) -> np.ndarray:
        return ((ramp * (z + 1)) % 4099).astype(DTYPE)

    if fmt == "npy":
        out = np.lib.format.open_memmap(path, mode="w+", dtype=DTYPE, shape=(n_planes, *PLANE))
        for z in range(n_planes):
            out[z] = plane(z)
        out.flush()
        del out
    elif fmt == "tiff":
        import tifffile

        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            for z in range(n_planes):
                tif.write(plane(z), photometric="minisblack", contiguous=True,
                          metadata={"axes": "ZYX"} if z == 0 else None)
    else:
        raise ValueError(f"unknown format {fmt!r}")


_peak_rss = peak_rss


def _child(src: str, out: str, max_slab_mb: float, workers: int) -> dict[str, Any]:
    """Runs inside the subprocess: warm up, then convert, then report memory."""
    import dask
    import psutil

    from vollseg_dask.io.ingest import convert

    tmp = Path(out).with_name("warmup.zarr")
    convert(np.zeros((4, 64, 64), DTYPE), tmp, overwrite=True, voxel_size=(1, 1, 1))  # imports, pools, codecs
    proc = psutil.Process()
    baseline = proc.memory_info().rss
    start = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=workers):
        img = convert(src, out, chunks=(8, 256, 256), voxel_size=(1.0, 0.5, 0.5), overwrite=True,
                      max_slab_bytes=int(max_slab_mb * 2**20))
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    return {"baseline_rss": baseline, "peak_rss": peak, "seconds": seconds, "shape": list(img.shape)}


def _run_child(src: Path, out: Path, max_slab_mb: float, workers: int) -> dict[str, Any]:
    args = ["--child", str(src), str(out),
           "--max-slab-mb", str(max_slab_mb), "--workers", str(workers)]
    return run_child("benchmarks.bench_convert", args)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure and print (as JSON) the peak RSS of convert at sizes S and 4·S for each format."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=64.0, help="S: size of the small input in MiB")
    parser.add_argument("--formats", default="npy,tiff", help="comma-separated: npy, tiff")
    parser.add_argument("--max-slab-mb", type=float, default=8.0, help="convert's read-block budget")
    parser.add_argument("--workers", type=int, default=2, help="threads of the local scheduler")
    parser.add_argument("--workdir", default=None, help="folder for inputs/outputs (default: a temp dir)")
    parser.add_argument("--child", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = _child(args.child[0], args.child[1], args.max_slab_mb, args.workers)
        print(json.dumps(result))
        return result

    plane_bytes = PLANE[0] * PLANE[1] * np.dtype(DTYPE).itemsize
    n_small = max(8, int(round(args.size_mb * 2**20 / plane_bytes / 8)) * 8)
    report: dict[str, Any] = {
        "benchmark": "convert peak RSS vs input size",
        "plane": list(PLANE), "dtype": np.dtype(DTYPE).name, "chunks": [8, 256, 256],
        "max_slab_mb": args.max_slab_mb, "workers": args.workers, "cpu_count": os.cpu_count(), "results": {},
    }
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
            runs = {}
            for label, n in (("S", n_small), ("4S", 4 * n_small)):
                src = work / f"in_{label}.{'npy' if fmt == 'npy' else 'tif'}"
                _make_input(src, n, fmt)
                size = src.stat().st_size
                r = _run_child(src, work / f"out_{label}.zarr", args.max_slab_mb, args.workers)
                r.update(input_bytes=size, peak_delta=r["peak_rss"] - r["baseline_rss"],
                         mib_per_s=size / 2**20 / r["seconds"],
                         voxels_per_s=float(np.prod(r["shape"], dtype=np.float64)) / r["seconds"])
                runs[label] = r
                src.unlink()
            runs["peak_rss_ratio_4S_over_S"] = runs["4S"]["peak_rss"] / runs["S"]["peak_rss"]
            runs["peak_delta_ratio_4S_over_S"] = runs["4S"]["peak_delta"] / max(runs["S"]["peak_delta"], 1)
            runs["peak_rss_over_input_4S"] = runs["4S"]["peak_rss"] / runs["4S"]["input_bytes"]
            runs["goal_met"] = runs["peak_rss_ratio_4S_over_S"] <= 1.2
            report["results"][fmt] = runs
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
