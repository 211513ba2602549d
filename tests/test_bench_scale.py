"""The larger-than-memory benchmark's quick variant: mechanics and the recorded fields."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_bench_scale_quick_records_memory_and_restarts():
    from benchmarks.bench_scale import main

    res = main(["--quick", "--no-nn", "--memory-limit", "1GiB"])
    rec = res["ground_truth"]
    for key in ("store_bytes_uncompressed", "n_workers", "worker_memory_limit_bytes", "peak_rss_bytes_max",
                "worker_restarts", "wall_s", "stages", "bytes_ratio"):
        assert key in rec, key
    assert rec["n_workers"] == 2 and rec["worker_memory_limit_bytes"] == 2**30
    assert rec["worker_restarts"] == 0
    # every process stayed within the worker limit, and the run found the synthetic cells
    assert 0 < rec["peak_rss_bytes_max"] < 2**30
    assert rec["counts"]["cells"] > 0 and rec["stages"]["segment"]["voxels_per_s"] > 0
    assert rec["store_bytes_uncompressed"] == 2 * 2 * 16 * 96 * 96
