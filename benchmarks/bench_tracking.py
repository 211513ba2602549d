"""LAP tracking: throughput, peak memory at F and 4·F frames, and a comparison with laptrack.

1. **Throughput and memory.** A synthetic movie of N cells × F frames (random walk, divisions,
   missed detections; :func:`vollseg_dask.tracking._testing.random_lineages`) is written as a
   Parquet dataset partitioned by ``t``; :func:`vollseg_dask.tracking.track` streams it (gap
   closing and splitting on) in a fresh subprocess that reports spots/s, its post-import
   baseline and its peak RSS (VmHWM). The same at 4·F frames; goal: peak ratio close to 1.
   Link and division scores against the truth are reported too.
2. **laptrack.** On growing inputs (N cells × F frames, in memory), ``laptrack.LapTrack`` and
   our in-memory :func:`~vollseg_dask.tracking.lap_track` run with the same settings, each in a
   subprocess with a time limit; on the largest input laptrack finishes, we report the wall-time
   ratio and the agreement of the two edge sets (Jaccard) and of each with the truth.
3. ``--full``: the 1,000,000-spot run (10,000 cells × 100 frames) through the streaming driver.

Printed as JSON::

    python -m benchmarks.bench_tracking [--cells 1000] [--frames 25] [--full] [--skip-laptrack]
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

ROOT = Path(__file__).resolve().parents[1]

# Deaths balance divisions so that every frame holds about N cells: the 4·F movie is 4× the F one.
SIM = {
    "spacing": 25.0,
    "step": 0.5,
    "noise": 0.1,
    "division_rate": 0.01,
    "death_rate": 0.009,
    "min_cycle": 8,
    "daughter_distance": 6.0,
    "miss_rate": 0.01,
}
TRACKER = {
    "linking_max_distance": 5.0,
    "gap_closing_max_distance": 5.0,
    "max_frame_gap": 2,
    "allow_track_splitting": True,
    "splitting_max_distance": 6.0,
    "window_frames": 16,
}


_peak_rss = peak_rss


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


# ---------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------


def _child_generate(cells: int, frames: int, seed: int, out: str) -> dict[str, Any]:
    """Simulate and write the spots (partitioned Parquet) and the truth (one Parquet file)."""
    import pandas as pd

    from vollseg_dask.tracking._testing import random_lineages

    syn = random_lineages(cells, frames, seed=seed, **SIM)
    root = Path(out)
    spots = syn.spots.drop(columns="cell")
    for t, frame in spots.groupby("t"):
        (root / "spots" / f"t={int(t)}").mkdir(parents=True)
        frame.drop(columns="t").to_parquet(root / "spots" / f"t={int(t)}" / "part-0.parquet", index=False)
    syn.edges.to_parquet(root / "truth_edges.parquet", index=False)
    pd.DataFrame({"mother": syn.mothers}).to_parquet(root / "truth_mothers.parquet", index=False)
    return {"n_spots": len(spots), "n_true_edges": len(syn.edges), "n_divisions": len(syn.mothers)}


def _truth(root: Path) -> Any:
    import pandas as pd

    from vollseg_dask.tracking._testing import SyntheticLineages

    return SyntheticLineages(
        spots=pd.DataFrame(),
        edges=pd.read_parquet(root / "truth_edges.parquet"),
        mothers=pd.read_parquet(root / "truth_mothers.parquet")["mother"].to_numpy(),
    )


def _child_track(data: str, out: str) -> dict[str, Any]:
    """Stream the dataset through the driver; report time and memory."""
    import pandas as pd

    from vollseg_dask.tracking import TrackerConfig, track
    from vollseg_dask.tracking._testing import score_tracking

    config = TrackerConfig(**TRACKER)
    warm = pd.DataFrame({"t": [0, 0, 1, 1], "x": [0.0, 9.0, 0.5, 9.5], "y": 0.0, "z": 0.0})
    track(warm, Path(out).with_name("warmup"), config, overwrite=True, progress=False)  # imports, pools
    baseline = _rss()
    start = time.perf_counter()
    result = track(Path(data) / "spots", out, config, overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    edges = pd.read_parquet(Path(out) / "edges.parquet")
    scores = score_tracking(_truth(Path(data)), edges)
    return {
        "seconds": seconds,
        "spots_per_s": result.n_spots / seconds,
        "n_spots": result.n_spots,
        "n_frames": result.n_frames,
        "edges": result.n_edges,
        "n_tracks": result.n_tracks,
        "segment_lap": {
            k: (float(v) if isinstance(v, float) else v) for k, v in result.segment_report.items()
        },
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "baseline_rss": baseline,
        "peak_rss": peak,
        "scores": scores,
    }


def _read_spots(data: Path) -> Any:
    import pandas as pd

    from vollseg_dask.io.spot_source import ParquetSpots

    src = ParquetSpots(data / "spots")
    return pd.concat([src.read(t) for t in src.frames], ignore_index=True)


def _child_ours_memory(data: str) -> dict[str, Any]:
    """In-memory reference pipeline on the whole table (the like-for-like comparison with laptrack)."""
    from vollseg_dask.tracking import TrackerConfig, lap_track

    spots = _read_spots(Path(data))
    config = TrackerConfig(**{k: v for k, v in TRACKER.items() if k != "window_frames"})
    lap_track(spots.iloc[:4], config)  # warm-up
    start = time.perf_counter()
    edges = lap_track(spots, config)
    seconds = time.perf_counter() - start
    out = Path(data) / "ours_edges.parquet"
    edges.to_parquet(out, index=False)
    return {"seconds": seconds, "n_spots": len(spots), "n_edges": len(edges)}


def _child_laptrack(data: str) -> dict[str, Any]:
    """laptrack on the same spots and settings; edges saved as spot-id pairs."""
    import pandas as pd
    from laptrack import LapTrack

    spots = _read_spots(Path(data)).sort_values(["t", "spot_id"]).reset_index(drop=True)
    frames = range(int(spots["t"].max()) + 1)
    groups = {int(t): g for t, g in spots.groupby("t")}
    coords = [groups[t][["x", "y", "z"]].to_numpy() if t in groups else np.empty((0, 3)) for t in frames]
    ids = [groups[t]["spot_id"].to_numpy() if t in groups else np.empty(0, np.int64) for t in frames]
    lt = LapTrack(
        cutoff=TRACKER["linking_max_distance"] ** 2,
        gap_closing_cutoff=TRACKER["gap_closing_max_distance"] ** 2,
        gap_closing_max_frame_count=TRACKER["max_frame_gap"],
        splitting_cutoff=TRACKER["splitting_max_distance"] ** 2,
        merging_cutoff=False,
        alternative_cost_percentile_interpolation="weibull",
    )
    start = time.perf_counter()
    graph = lt.predict(coords)
    seconds = time.perf_counter() - start
    pairs = [(int(ids[a[0]][a[1]]), int(ids[b[0]][b[1]])) for a, b in graph.edges()]
    pd.DataFrame(pairs, columns=["source_spot_id", "target_spot_id"]).to_parquet(
        Path(data) / "laptrack_edges.parquet", index=False
    )
    return {"seconds": seconds, "n_spots": len(spots), "n_edges": len(pairs)}


def _run_child(args: list[str], timeout: float | None = None) -> dict[str, Any] | None:
    cmd = [sys.executable, "-m", "benchmarks.bench_tracking", "--child", *args]
    env = dict(os.environ, VOLLSEG_PROGRESS="0")
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, check=False, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return None
    if res.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------


def _generate(work: Path, name: str, cells: int, frames: int, seed: int) -> tuple[Path, dict[str, Any]]:
    path = work / name
    info = _run_child(["generate", str(cells), str(frames), str(seed), str(path)])
    assert info is not None
    return path, info


def _edge_set(path: Path) -> set[tuple[int, int]]:
    import pandas as pd

    e = pd.read_parquet(path)
    return set(zip(e["source_spot_id"].tolist(), e["target_spot_id"].tolist(), strict=True))


def _compare_laptrack(
    work: Path, cells_ladder: list[int], frames: int, limit: float, seed: int
) -> dict[str, Any]:
    best: dict[str, Any] | None = None
    tried = []
    for cells in cells_ladder:
        data, info = _generate(work, f"lt_{cells}", cells, frames, seed)
        lt = _run_child(["laptrack", str(data)], timeout=limit)
        tried.append(
            {
                "cells": cells,
                "n_spots": info["n_spots"],
                "laptrack_seconds": None if lt is None else lt["seconds"],
            }
        )
        if lt is None:
            break
        ours = _run_child(["ours-memory", str(data)])
        assert ours is not None
        stream = _run_child(["track", str(data), str(work / f"lt_{cells}_out")])
        assert stream is not None
        a = _edge_set(data / "ours_edges.parquet")
        b = _edge_set(data / "laptrack_edges.parquet")
        truth = _edge_set(data / "truth_edges.parquet")
        best = {
            "cells": cells,
            "frames": frames,
            "n_spots": info["n_spots"],
            "laptrack_seconds": lt["seconds"],
            "ours_in_memory_seconds": ours["seconds"],
            "ours_streaming_seconds": stream["seconds"],
            "laptrack_over_ours_in_memory": lt["seconds"] / ours["seconds"],
            "laptrack_over_ours_streaming": lt["seconds"] / stream["seconds"],
            "edge_jaccard_ours_vs_laptrack": len(a & b) / max(len(a | b), 1),
            "edges_only_ours": len(a - b),
            "edges_only_laptrack": len(b - a),
            "ours_link_recall_vs_truth": len(a & truth) / max(len(truth), 1),
            "laptrack_link_recall_vs_truth": len(b & truth) / max(len(truth), 1),
        }
        if lt["seconds"] > limit / 2:
            break
    return {"largest_finished": best, "tried": tried, "time_limit_s": limit}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print a JSON report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cells", type=int, default=1000, help="N founder cells of the memory/throughput runs"
    )
    parser.add_argument("--frames", type=int, default=25, help="F frames (the second run has 4·F)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-laptrack", action="store_true", help="skip the laptrack comparison")
    parser.add_argument(
        "--laptrack-limit", type=float, default=90.0, help="seconds allowed to one laptrack run"
    )
    parser.add_argument(
        "--laptrack-cells",
        default="250,1000,4000,8000,16000",
        help="ladder of N for the laptrack runs (stops at the limit)",
    )
    parser.add_argument("--laptrack-frames", type=int, default=25)
    parser.add_argument(
        "--full", action="store_true", help="also the 1,000,000-spot run (10,000 cells x 100 frames)"
    )
    parser.add_argument("--workdir", default=None, help="folder for data and outputs (default: a temp dir)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        kind, *rest = args.child
        if kind == "generate":
            result = _child_generate(int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
        elif kind == "track":
            result = _child_track(rest[0], rest[1])
        elif kind == "ours-memory":
            result = _child_ours_memory(rest[0])
        elif kind == "laptrack":
            result = _child_laptrack(rest[0])
        else:
            raise SystemExit(f"unknown child {kind}")
        print(json.dumps(result, default=float))
        return result

    report: dict[str, Any] = {
        "benchmark": "LAP tracking: spots/s, peak RSS at F and 4F frames, laptrack comparison",
        "simulation": SIM,
        "tracker": TRACKER,
        "cpu_count": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        runs = {}
        for label, frames in (("F", args.frames), ("4F", 4 * args.frames)):
            data, info = _generate(work, f"movie_{label}", args.cells, frames, args.seed)
            r = _run_child(["track", str(data), str(work / f"out_{label}")])
            assert r is not None
            r["peak_delta"] = r["peak_rss"] - r["baseline_rss"]
            r["cells"] = args.cells
            runs[label] = r
        runs["peak_rss_ratio_4F_over_F"] = runs["4F"]["peak_rss"] / runs["F"]["peak_rss"]
        runs["peak_delta_ratio_4F_over_F"] = runs["4F"]["peak_delta"] / max(runs["F"]["peak_delta"], 1)
        report["memory_and_throughput"] = runs
        if not args.skip_laptrack:
            ladder = [int(c) for c in args.laptrack_cells.split(",") if c.strip()]
            report["laptrack"] = _compare_laptrack(
                work, ladder, args.laptrack_frames, args.laptrack_limit, args.seed
            )
        if args.full:
            data, info = _generate(work, "full", 10_000, 100, args.seed)
            r = _run_child(["track", str(data), str(work / "out_full")])
            assert r is not None
            r["peak_delta"] = r["peak_rss"] - r["baseline_rss"]
            report["full_1M"] = r
    print(json.dumps(report, indent=2, default=float))
    return report


if __name__ == "__main__":
    main()
