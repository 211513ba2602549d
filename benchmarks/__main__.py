"""Run every benchmark in one command: ``python -m benchmarks [NAME ...] [--out DIR]``.

Each benchmark module's ``main([])`` measures its figures and their references in the same run and
returns a JSON-able dict. This runner writes them all to ``benchmarks/results.json`` and a Markdown
table of every numeric figure to ``benchmarks/results.md`` (the README's table is taken from it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

BENCHMARKS = ("bench_convert", "bench_synthetic", "bench_segment", "bench_inference", "bench_measure",
              "bench_tracking")


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, bool):
        out.append((prefix, value))
    elif isinstance(value, int | float):
        out.append((prefix, value))


def to_markdown(results: dict[str, Any]) -> str:
    """One table per benchmark: every numeric figure, by its dotted key."""
    lines = ["# Benchmark results", "", f"Machine: {results['machine']}", ""]
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="folder of results.json/.md")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(BENCHMARKS)}")
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()} python {platform.python_version()}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "benchmarks": {},
    }
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            res = importlib.import_module(f"benchmarks.{name}").main([])
        except Exception as exc:  # one failing benchmark must not lose the others' figures
            res = {"error": f"{type(exc).__name__}: {exc}"}
        res = dict(res) if isinstance(res, dict) else {"result": res}
        res["benchmark_wall_s"] = time.perf_counter() - t0
        results["benchmarks"][name] = res
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "results.md").write_text(to_markdown(results))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
