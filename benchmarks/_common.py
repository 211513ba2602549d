"""Helpers shared by the benchmarks: peak memory of this process, and child-process runs.

Peak memory is measured in a fresh child process per size so that each figure is that run's own
peak, not the parent's lifetime maximum.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def peak_rss() -> int:
    """Peak resident memory of this process alone in bytes (Linux VmHWM; ``ru_maxrss`` elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_child(module: str, args: list[str]) -> dict[str, Any]:
    """Run ``python -m <module> <args>`` from the repository root; return the JSON of its last line."""
    res = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                         check=False)
    if res.returncode != 0:
        raise RuntimeError(f"child failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])
