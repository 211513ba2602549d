"""Dask runtime: client/cluster ownership, env overrides, per-worker cache, progress, stage timers, SLURM script."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest

from vollseg_dask.config import parse_config
from vollseg_dask.errors import ConfigError, StoreNotFoundError
from vollseg_dask.runtime import (
    ClusterConfig,
    SlurmConfig,
    StageTimer,
    cached,
    cached_keys,
    clear_cache,
    compute_with_progress,
    default_n_workers,
    format_stage_summary,
    get_client,
    make_slurm_cluster,
    path_cache_key,
    progress,
    progress_enabled,
    slurm_job_script,
)

distributed = pytest.importorskip("distributed")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("VOLLSEG_N_WORKERS", "VOLLSEG_SCHEDULER_ADDRESS", "VOLLSEG_PROGRESS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def user_cluster():
    """A cluster owned by the test (2 worker processes x 1 thread), shared by the module."""
    # Worker processes unpickle the helpers below by value: this module is not importable there.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        scheduler_kwargs={"dashboard": False},
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster
    finally:
        cluster.close()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _cluster_alive(cluster) -> bool:
    with distributed.Client(cluster.scheduler_address, timeout="10s") as c:
        return len(c.scheduler_info(n_workers=-1)["workers"]) == 2 and c.submit(sum, [1, 2]).result() == 3


# --------------------------------------------------------------------------- config


def test_cluster_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="n_worker"):
        parse_config(ClusterConfig, {"n_worker": 3})
    with pytest.raises(ConfigError, match="partition"):
        parse_config(ClusterConfig, {"kind": "slurm", "slurm": {"partition": "gpu"}})
    with pytest.raises(ConfigError, match="kind"):
        parse_config(ClusterConfig, {"kind": "kubernetes"})
    with pytest.raises(ConfigError, match="memory"):
        parse_config(ClusterConfig, {"slurm": {"memory": "lots"}})
    with pytest.raises(ConfigError, match="walltime"):
        parse_config(ClusterConfig, {"slurm": {"walltime": "2 hours"}})
    with pytest.raises(ConfigError, match="n_workers"):
        parse_config(ClusterConfig, {"n_workers": 0})


def test_defaults_sized_to_machine():
    import psutil

    n = default_n_workers()
    assert 1 <= n <= len(os.sched_getaffinity(0))
    assert n <= max(1, psutil.virtual_memory().total // 2**30 // 4)
    cfg = ClusterConfig().resolved()
    assert cfg.kind == "local" and cfg.n_workers == n and cfg.threads_per_worker == 1


def test_env_overrides(monkeypatch):
    monkeypatch.setenv("VOLLSEG_N_WORKERS", "3")
    monkeypatch.setenv("VOLLSEG_SCHEDULER_ADDRESS", "tcp://10.0.0.1:8786")
    cfg = ClusterConfig(n_workers=7).resolved()
    assert cfg.n_workers == 3 and cfg.kind == "address" and cfg.address == "tcp://10.0.0.1:8786"
    monkeypatch.setenv("VOLLSEG_N_WORKERS", "many")
    with pytest.raises(ConfigError, match="VOLLSEG_N_WORKERS='many'"):
        ClusterConfig().resolved()
    monkeypatch.delenv("VOLLSEG_N_WORKERS")
    monkeypatch.delenv("VOLLSEG_SCHEDULER_ADDRESS")
    with pytest.raises(ConfigError, match="needs an address"):
        ClusterConfig(kind="address").resolved()


def test_threads_kind_uses_no_distributed(monkeypatch):
    monkeypatch.setenv("VOLLSEG_N_WORKERS", "2")
    before = dask.config.get("scheduler", None)
    with get_client(ClusterConfig(kind="threads")) as client:
        assert client is None
        assert dask.config.get("scheduler") == "threads" and dask.config.get("num_workers") == 2
        assert da.ones((4, 4), chunks=2).sum().compute() == 16
    assert dask.config.get("scheduler", None) == before  # restored on exit


def test_bad_spec_type():
    with pytest.raises(ConfigError, match="int"):
        with get_client(42):
            pass


def test_import_is_light():
    code = (
        "import sys, vollseg_dask, vollseg_dask.runtime, vollseg_dask.plan, vollseg_dask.stats;"
        "bad = [m for m in ('distributed', 'tensorflow', 'dask_jobqueue') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- clients and ownership


def test_user_client_is_not_closed(user_cluster):
    with distributed.Client(user_cluster) as user_client:
        with get_client(user_client) as client:
            assert client is user_client
            assert client.submit(lambda x: x + 1, 1).result() == 2
        assert user_client.status == "running"
        assert user_client.submit(lambda x: x * 2, 4).result() == 8
    assert _cluster_alive(user_cluster)


def test_cluster_object_and_address_are_not_shut_down(user_cluster):
    with get_client(user_cluster) as client:
        assert client.submit(abs, -3).result() == 3
    assert client.status == "closed"  # the client we made is closed ...
    assert _cluster_alive(user_cluster)  # ... the cluster is not
    with get_client(user_cluster.scheduler_address) as client:
        assert client.scheduler.address == user_cluster.scheduler_address
        assert client.submit(abs, -4).result() == 4
    assert client.status == "closed"
    assert _cluster_alive(user_cluster)


def test_env_address_connects_to_running_scheduler(user_cluster, monkeypatch):
    monkeypatch.setenv("VOLLSEG_SCHEDULER_ADDRESS", user_cluster.scheduler_address)
    with get_client() as client:
        assert client.scheduler.address == user_cluster.scheduler_address
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
    assert client.status == "closed"
    assert _cluster_alive(user_cluster)


def test_own_local_cluster_is_closed(monkeypatch):
    monkeypatch.setenv("VOLLSEG_N_WORKERS", "1")
    with get_client(ClusterConfig(processes=False, memory_limit="1GiB")) as client:
        cluster = client.cluster
        info = client.scheduler_info(n_workers=-1)["workers"]
        assert len(info) == 1
        (worker,) = info.values()
        assert worker["nthreads"] == 1 and worker["memory_limit"] == 2**30
        assert da.arange(10, chunks=3).sum().compute() == 45  # the client is the default inside
    assert client.status == "closed"
    assert cluster.status.name == "closed"


def test_default_spec_makes_and_closes_a_local_cluster(monkeypatch):
    monkeypatch.setenv("VOLLSEG_N_WORKERS", "1")
    with get_client() as client:
        cluster = client.cluster
        assert isinstance(cluster, distributed.LocalCluster)
        assert client.submit(os.getpid).result() != os.getpid()  # worker processes by default
    assert client.status == "closed" and cluster.status.name == "closed"


# --------------------------------------------------------------------------- per-worker cache


def _load_once(log: str) -> dict:
    with open(log, "a") as f:  # one line per factory call, i.e. per model load
        f.write(f"{os.getpid()}\n")
    time.sleep(0.2)  # a slow load: concurrent callers must wait, not load again
    return {"weights": np.arange(3)}


def _task_using_cache(i: int, log: str) -> tuple[int, int]:
    model = cached(f"model@{log}", lambda: _load_once(log))
    time.sleep(0.02)
    return os.getpid(), id(model)


def test_cache_builds_once_per_worker(user_cluster, tmp_path):
    log = tmp_path / "loads.txt"
    with get_client(user_cluster) as client:
        futures = [client.submit(_task_using_cache, i, str(log), pure=False) for i in range(24)]
        results = client.gather(futures)
        client.run(clear_cache)
    worker_pids = {pid for pid, _ in results}
    assert len(worker_pids) == 2  # both workers took tasks
    loads = log.read_text().split()
    assert sorted(loads) == sorted(str(p) for p in worker_pids)  # exactly one load per worker that ran tasks
    for pid in worker_pids:  # and every task of a worker saw the same object
        assert len({obj for p, obj in results if p == pid}) == 1


def test_cache_in_process_threads(tmp_path):
    import concurrent.futures as cf

    key = "threads-test"
    clear_cache(key)
    calls = []

    def factory():
        calls.append(1)
        time.sleep(0.1)
        return object()

    with cf.ThreadPoolExecutor(4) as pool:
        objs = list(pool.map(lambda _: cached(key, factory), range(8)))
    assert len(calls) == 1 and len({id(o) for o in objs}) == 1 and key in cached_keys()

    def failing():
        raise RuntimeError("load failed")

    with pytest.raises(RuntimeError):
        cached("failing", failing)
    assert "failing" not in cached_keys()
    clear_cache(key)
    assert key not in cached_keys()


def test_path_cache_key_changes_with_weights(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = model / "weights_best.h5"
    weights.write_bytes(b"1")
    k1 = path_cache_key(model)
    assert k1.startswith(str(model.resolve()))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert path_cache_key(model) != k1
    with pytest.raises(StoreNotFoundError, match="missing"):
        path_cache_key(tmp_path / "nope")


# --------------------------------------------------------------------------- progress


def _slow_square(x: int) -> int:
    time.sleep(0.01 * (5 - x % 5))
    return x * x


def test_progress_over_futures(user_cluster):
    out = io.StringIO()
    with get_client(user_cluster.scheduler_address) as client:
        futures = client.map(_slow_square, range(10))
        done = list(progress(futures, desc="squares", enabled=True, file=out))
        assert sorted(f.result() for f in done) == [x * x for x in range(10)]
        assert {f.key for f in done} == {f.key for f in futures}
    text = out.getvalue()
    assert "squares" in text and "10/10" in text


def test_progress_silence_rules(monkeypatch):
    out = io.StringIO()  # not a TTY
    assert list(progress(range(5), desc="quiet", file=out)) == list(range(5))
    assert out.getvalue() == ""
    monkeypatch.setenv("VOLLSEG_PROGRESS", "1")
    assert progress_enabled(file=out)
    list(progress(iter(range(3)), total=3, desc="forced", file=out))
    assert "forced" in out.getvalue() and "3/3" in out.getvalue()

    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("VOLLSEG_PROGRESS", "0")
    tty = FakeTTY()
    list(progress(range(3), desc="hidden", file=tty))
    assert tty.getvalue() == ""
    monkeypatch.delenv("VOLLSEG_PROGRESS")
    assert progress_enabled(file=tty)
    assert progress_enabled(False, file=tty) is False
    monkeypatch.setenv("VOLLSEG_PROGRESS", "maybe")
    with pytest.raises(ConfigError, match="VOLLSEG_PROGRESS"):
        progress_enabled()


def test_compute_with_progress_local_and_distributed(user_cluster):
    x = da.arange(100, chunks=10)
    out = io.StringIO()
    with dask.config.set(scheduler="sync"):
        (total,) = compute_with_progress(x.sum(), desc="local", enabled=True, file=out)
    assert total == 4950 and "local" in out.getvalue()
    out = io.StringIO()
    with get_client(user_cluster) as client:
        total, mx = compute_with_progress(x.sum(), x.max(), desc="dist", client=client, enabled=True, file=out)
    assert (total, mx) == (4950, 99) and "dist" in out.getvalue()


# --------------------------------------------------------------------------- stage timers


def test_stage_timer_records():
    record: dict = {}
    with StageTimer("S0 stats", record, voxels=1000) as st:
        time.sleep(0.05)
        st.add_voxels(500)
    e = record["S0 stats"]
    assert e["voxels"] == 1500 and e["calls"] == 1 and e["status"] == "ok"
    assert 0.04 <= e["wall_s"] < 5
    assert e["voxels_per_s"] == pytest.approx(1500 / e["wall_s"])
    with StageTimer("S0 stats", record, voxels=500):
        pass
    assert record["S0 stats"]["calls"] == 2 and record["S0 stats"]["voxels"] == 2000
    with pytest.raises(ValueError, match="boom"):
        with StageTimer("S5 watershed", record):
            raise ValueError("boom")
    assert record["S5 watershed"]["status"] == "failed" and record["S5 watershed"]["voxels_per_s"] is None
    table = format_stage_summary(record)
    assert "S0 stats" in table and "2,000" in table and "failed" in table


# --------------------------------------------------------------------------- SLURM


def test_slurm_job_script_contents():
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue (extra 'slurm') is not installed")
    cfg = SlurmConfig(
        queue="gpu-long",
        account="lab42",
        cores=8,
        memory="64GB",
        walltime="1-02:30:00",
        job_extra_directives=["--gres=gpu:1"],
        job_script_prologue=["module load cuda/12"],
        resources={"GPU": 1},
    )
    script = slurm_job_script(ClusterConfig(kind="slurm", slurm=cfg))
    assert "#SBATCH -p gpu-long" in script
    assert "#SBATCH -A lab42" in script
    assert "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH --mem=60G" in script  # dask-jobqueue writes 64 GB as 60 GiB
    assert "#SBATCH -t 1-02:30:00" in script
    assert "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH -J vollseg-dask" in script
    assert "module load cuda/12" in script
    assert "--nthreads 8" in script and "--resources GPU=1" in script


def test_slurm_job_script_matches_cluster():
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue (extra 'slurm') is not installed")
    cfg = SlurmConfig(queue="short", cores=2, memory="8GiB", walltime="00:20:00", job_extra_directives=["--qos=x"])
    cluster = make_slurm_cluster(cfg)  # starts a scheduler here, submits nothing
    try:
        expected = cluster.job_script().replace(cluster.scheduler.address, "tcp://<insert-scheduler-address-here>:8786")
        assert cluster.scheduler.address in cluster.job_script()
    finally:
        cluster.close()
    assert slurm_job_script(cfg) == expected


def test_slurm_script_is_a_file_a_user_can_read(tmp_path: Path):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue (extra 'slurm') is not installed")
    path = tmp_path / "job.sh"
    path.write_text(slurm_job_script(SlurmConfig()))
    assert path.read_text().startswith("#!/usr/bin/env bash")
