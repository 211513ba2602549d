"""Run every benchmark in one command: ``python -m benchmarks [NAME ...] [--quick] [--out DIR]``.

Each benchmark module's ``main(argv)`` measures its figures and their references in the same run
and returns a JSON-able dict. This runner writes them all to ``benchmarks/results.json`` and to
``benchmarks/results.md``: first a summary table of the headline figures (per-stage voxels/s,
peak RSS at 1x and 4x volume, 1 vs 2 workers, block-wise vs untiled wall time; the README's table
is this one), then a table of every numeric figure per benchmark.

Sizes: :data:`FULL_ARGS` (default) or, with ``--quick``, :data:`QUICK_ARGS`; the arguments each
benchmark ran with are recorded in the results.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

BENCHMARKS = ("bench_convert", "bench_synthetic", "bench_segment", "bench_inference", "bench_measure",
              "bench_tracking", "bench_scale")

#: Arguments of the combined run: each benchmark's own defaults, except the laptrack comparison,
#: whose ladder stops at 4,000 cells × 25 frames (about 100,000 spots) with 60 s per laptrack run.
FULL_ARGS: dict[str, list[str]] = {
    "bench_convert": [],
    "bench_synthetic": [],
    "bench_segment": [],
    "bench_inference": [],
    "bench_measure": [],
    "bench_tracking": ["--laptrack-cells", "250,1000,4000", "--laptrack-limit", "60"],
    "bench_scale": [],
}

#: ``--quick``: smaller inputs (a few minutes in all on 2 cores); same figures, noisier.
QUICK_ARGS: dict[str, list[str]] = {
    "bench_convert": ["--size-mb", "16"],
    "bench_synthetic": ["--shape", "2,32,256,256", "--repeats", "1"],
    "bench_segment": ["--ratio-shape", "32,192,192", "--ratio-block", "32,96,96"],
    "bench_inference": ["--volume", "16,96,96", "--blocks", "16,48,48", "--interior-blocks"],
    "bench_measure": ["--z", "32", "--yx", "128"],
    "bench_tracking": ["--cells", "300", "--frames", "10", "--laptrack-cells", "250", "--laptrack-limit", "30"],
    "bench_scale": ["--quick"],
}


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, bool):
        out.append((prefix, value))
    elif isinstance(value, int | float):
        out.append((prefix, value))


def _get(res: dict[str, Any], path: str) -> Any:
    """``res`` at a dotted path (list items by index); None when absent."""
    cur: Any = res
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def _mib(v: Any) -> str:
    return f"{v / 2**20:.0f} MiB"


def _rate(v: Any) -> str:
    return f"{v / 1e6:.3g} M/s" if v >= 1e5 else f"{v:,.0f} /s"


def _ratio(v: Any) -> str:
    return f"{v:.3g}"


def _per_block(rows: Any) -> str:
    """``block: ratio`` for each block shape of bench_inference that was run."""
    return "; ".join(f"{'×'.join(map(str, r['block']))}: {r['throughput_vs_untiled_chain']:.3g}"
                     for r in rows if r.get("run"))


def _rss(bench: str, root: str, small: str, big: str, what: str) -> list[tuple]:
    """Peak-RSS rows: the 1x and 4x figures and their ratio (goal <= 1.2)."""
    return [(bench, f"{what}: peak RSS at 1x / 4x, ratio 4x/1x (goal ≤ 1.2)",
             (f"{root}.{small}.peak_rss", f"{root}.{big}.peak_rss", None), "rss")]


# (benchmark, figure, dotted path(s) in that benchmark's result, format)
SUMMARY: list[tuple] = [
    ("bench_synthetic", "synthetic data (`write_synthetic`, 2 threads), voxels/s at 1x (goal ≥ 10 M/s)",
     "results.S.voxels_per_s", _rate),
    ("bench_synthetic", "synthetic data, voxels/s at 4x", "results.4S.voxels_per_s", _rate),
    ("bench_synthetic", "synthetic data speed-up, 2 threads over 1", "results.speedup_workers_over_1_worker", _ratio),
    *_rss("bench_synthetic", "results", "S", "4S", "synthetic"),
    ("bench_convert", "convert .npy → OME-Zarr (2 threads), voxels/s at 1x", "results.npy.S.voxels_per_s", _rate),
    ("bench_convert", "convert BigTIFF → OME-Zarr (2 threads), voxels/s at 1x", "results.tiff.S.voxels_per_s",
     _rate),
    *_rss("bench_convert", "results.npy", "S", "4S", "convert .npy"),
    *_rss("bench_convert", "results.tiff", "S", "4S", "convert BigTIFF"),
    ("bench_segment", "segment S2–S6 (NMS … relabel + pyramid) block-wise, 2 workers (threads), voxels/s",
     "summary.s2_s6_voxels_per_s", _rate),
    ("bench_segment", "segment S1 (ground-truth predictor), 2 workers (threads), voxels/s",
     "summary.s1_ground_truth_voxels_per_s", _rate),
    ("bench_segment", "segment block-wise / untiled wall time, S2–S6 (goal ≤ 1.3)",
     "summary.blockwise_over_untiled_wall_s2_s6", _ratio),
    ("bench_segment", "segment block-wise / untiled wall time, S1–S6", "summary.blockwise_over_untiled_wall_s1_s6",
     _ratio),
    ("bench_segment", "segment S2–S6 speed-up, 2 workers over 1 worker", "summary.speedup_s2_s6_workers_over_1_worker",
     _ratio),
    ("bench_segment", "segment S1–S6 speed-up, 2 workers over 1 worker", "summary.speedup_s1_s6_workers_over_1_worker",
     _ratio),
    *_rss("bench_segment", "runs", "S_blockwise", "4S_blockwise", "segment"),
    ("bench_inference", "inference N2V (untiled, CPU), voxels/s", "untiled.n2v.voxels_per_s", _rate),
    ("bench_inference", "inference StarDist3D (untiled, CPU), voxels/s", "untiled.stardist.voxels_per_s", _rate),
    ("bench_inference", "inference U-Net (untiled, CPU), voxels/s", "untiled.unet.voxels_per_s", _rate),
    ("bench_inference", "inference chain (N2V → StarDist + U-Net + candidates), untiled, voxels/s",
     "untiled_chain.voxels_per_s", _rate),
    ("bench_inference", "inference chain block-wise / untiled throughput, per block core shape",
     "tiled", _per_block),
    ("bench_measure", "measure (cell table), 2 worker processes, voxels/s", "throughput_S.ours_voxels_per_s", _rate),
    ("bench_measure", "measure, 2 workers, rows/s", "throughput_S.ours_rows_per_s", _rate),
    ("bench_measure", "measure speed vs `skimage.measure.regionprops_table` (whole volume)",
     "throughput_S.speed_ratio_ours_over_skimage", _ratio),
    ("bench_measure", "measure speed-up, 2 workers over 1 worker", "throughput_S.speedup_2_workers_over_1", _ratio),
    *_rss("bench_measure", "peak_rss", "S", "4S", "measure"),
    ("bench_tracking", "tracking (streaming, gaps + splitting), spots/s at F frames",
     "memory_and_throughput.F.spots_per_s", _rate),
    ("bench_tracking", "tracking, spots/s at 4F frames", "memory_and_throughput.4F.spots_per_s", _rate),
    *_rss("bench_tracking", "memory_and_throughput", "F", "4F", "tracking"),
    ("bench_tracking", "tracking in memory vs laptrack, speed ratio (largest input laptrack finished)",
     "laptrack.largest_finished.laptrack_over_ours_in_memory", _ratio),
    ("bench_tracking", "tracking vs laptrack, edge agreement (Jaccard)",
     "laptrack.largest_finished.edge_jaccard_ours_vs_laptrack", _ratio),
]


def summary_table(results: dict[str, Any]) -> list[str]:
    """The headline figures as one Markdown table (rows whose figures are absent are left out)."""
    lines = ["| benchmark | figure | value |", "|---|---|---|"]
    for bench, label, path, fmt in SUMMARY:
        res = results["benchmarks"].get(bench)
        if not isinstance(res, dict) or "error" in res:
            continue
        if fmt == "rss":
            small, big = _get(res, path[0]), _get(res, path[1])
            if small is None or big is None:
                continue
            value = f"{_mib(small)} / {_mib(big)}, {big / small:.3g}"
        else:
            v = _get(res, path)
            if v is None or isinstance(v, bool):
                continue
            value = fmt(v)
        lines.append(f"| `{bench}` | {label} | {value} |")
    return lines


def to_markdown(results: dict[str, Any]) -> str:
    """The summary table, then one table per benchmark: every numeric figure, by its dotted key."""
    lines = ["# Benchmark results", "", f"Machine: {results['machine']}", "",
             f"Command: `{results['command']}`; started {results['started']}, "
             f"{results['wall_s']:.0f} s in all; load average (1, 5, 15 min) at start "
             f"{', '.join(map(str, results['loadavg_at_start']))}.", "",
             "Arguments: " + "; ".join(f"`{n}` {' '.join(a) if a else '(its defaults)'}"
                                       for n, a in results["args"].items()) + ".", "",
             "## Summary", "", *summary_table(results), ""]
    failed = [n for n, r in results["benchmarks"].items() if "error" in r]
    if failed:
        lines += [f"Failed: {', '.join(failed)} (see below).", ""]
    for name, res in results["benchmarks"].items():
        lines += [f"## {name}", ""]
        if "error" in res:
            lines += [f"failed: {res['error']}", ""]
            continue
        rows: list[tuple[str, Any]] = []
        _flatten("", res, rows)
        lines += ["| figure | value |", "|---|---|"]
        for key, val in rows:
            shown = f"{val:.4g}" if isinstance(val, float) else str(val)
            lines.append(f"| `{key}` | {shown} |")
        lines.append("")
    return "\n".join(lines)


def _machine() -> str:
    """CPU count, memory and platform of this machine, in words."""
    mem = ""
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB memory"
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    return (f"{platform.node()}: {os.cpu_count()} CPU cores{mem}, {platform.system()} {platform.machine()}, "
            f"python {platform.python_version()}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="folder of results.json/.md")
    parser.add_argument("--quick", action="store_true", help="smaller inputs (QUICK_ARGS) instead of FULL_ARGS")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(BENCHMARKS)}")
    sizes = QUICK_ARGS if args.quick else FULL_ARGS
    results: dict[str, Any] = {
        "machine": _machine(),
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        "args": {name: sizes[name] for name in names},
        "benchmarks": {},
    }
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name} {' '.join(sizes[name])}", file=sys.stderr, flush=True)
        try:
            res = importlib.import_module(f"benchmarks.{name}").main(list(sizes[name]))
        except Exception as exc:  # one failing benchmark must not lose the others' figures
            res = {"error": f"{type(exc).__name__}: {exc}"}
        res = dict(res) if isinstance(res, dict) else {"result": res}
        res["benchmark_wall_s"] = time.perf_counter() - t0
        res["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
        results["benchmarks"][name] = res
    results["wall_s"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "results.md").write_text(to_markdown(results))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
