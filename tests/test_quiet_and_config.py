"""Quiet by default, loud on request; small jobs on threads; create-config writes every key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vollseg_dask.cli import main
from vollseg_dask.config import load_config
from vollseg_dask.runtime import SMALL_JOB_VOXELS, ClusterConfig, for_job_size

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vollseg_dask.io.omezarr import create_image, create_labels

    store = tmp_path_factory.mktemp("quiet") / "img.zarr"
    create_image(store, shape=(2, 4, 24, 24), dtype="uint16", axes="tzyx", scale=(1.0, 2.0, 0.5, 0.5))
    lab = np.zeros((2, 4, 24, 24), np.uint32)
    lab[:, 1:3, 2:8, 2:8] = 1
    lab[:, 1:3, 12:20, 10:16] = 2
    create_labels(store, "cells")[:] = lab
    return store


def _measure(store: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "VOLLSEG_PROGRESS": "0", **(env or {})}
    e.pop("TF_CPP_MIN_LOG_LEVEL", None)
    e.pop("DASK_LOGGING__DISTRIBUTED", None)
    return subprocess.run([sys.executable, "-m", "vollseg_dask", *extra, "measure", str(store), "--labels", "cells",
                           "--out", str(out), "--channels", "none"], capture_output=True, text=True, env=e,
                          timeout=300)


def test_plain_command_is_quiet_even_with_a_process_cluster(small_store: Path, tmp_path: Path) -> None:
    # a process cluster forced (threshold 0): no INFO line from distributed, one line naming the cluster
    res = _measure(small_store, tmp_path / "a", env={"VOLLSEG_SMALL_JOB_VOXELS": "0", "VOLLSEG_N_WORKERS": "1"})
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert not [ln for ln in lines if " INFO " in ln or "oneDNN" in ln], lines
    assert [ln for ln in lines if ln.startswith("dask: local cluster, 1 worker(s)")], lines
    assert "cell table:" in res.stdout


def test_verbose_shows_info(small_store: Path, tmp_path: Path) -> None:
    res = _measure(small_store, tmp_path / "b", "-v")
    assert res.returncode == 0, res.stderr
    assert " INFO vollseg_dask.measure: measured 4 cells" in res.stderr


def test_small_jobs_use_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOLLSEG_N_WORKERS", raising=False)
    monkeypatch.delenv("VOLLSEG_SMALL_JOB_VOXELS", raising=False)
    assert for_job_size(ClusterConfig(), SMALL_JOB_VOXELS).kind == "threads"
    assert for_job_size(ClusterConfig(), SMALL_JOB_VOXELS + 1).kind == "local"
    assert for_job_size(ClusterConfig(n_workers=2), 10).kind == "local"   # the user's choice stays
    assert for_job_size(ClusterConfig(kind="slurm"), 10).kind == "slurm"
    monkeypatch.setenv("VOLLSEG_N_WORKERS", "2")
    assert for_job_size(ClusterConfig(), 10).kind == "local"
    monkeypatch.delenv("VOLLSEG_N_WORKERS")
    monkeypatch.setenv("VOLLSEG_SMALL_JOB_VOXELS", "0")
    assert for_job_size(ClusterConfig(), 10).kind == "local"


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_create_config_writes_every_key(tmp_path: Path, suffix: str) -> None:
    from vollseg_dask.pipeline import RunConfig

    out = tmp_path / f"run{suffix}"
    res = CliRunner().invoke(main, ["create-config", str(out), "--kind", "run"])
    assert res.exit_code == 0, res.output
    text = out.read_text(encoding="utf-8")
    assert load_config(RunConfig, out) == RunConfig()
    if suffix == ".yaml":
        for key in ("foreground_threshold: null", "merge_threshold: null", "axes: null", "voxel_size: null",
                    "frame_interval: null"):
            assert key in text, key
        # each key carries its description as a comment
        assert "# Voxel size (z, y, x) in µm of non-Zarr inputs" in text
    else:
        for key in ("segment.foreground_threshold = <unset>", "segment.merge_threshold = <unset>",
                    "input.axes = <unset>", "input.voxel_size = <unset>", "input.frame_interval = <unset>"):
            assert f"# {key}" in text, key
