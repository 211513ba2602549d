"""A real one-node SLURM cluster: the pipeline's workers submitted through ``sbatch`` by dask-jobqueue.

The fixture starts ``munged``, ``slurmctld`` and ``slurmd`` from Debian's packages (``slurm-wlm``,
``munge``; ``.ci/run`` installs them as root) with a minimal ``slurm.conf`` for this host, in a
temporary folder with its own munge key, socket and ports, and stops them afterwards (only the
processes it started, by their pid files). Where SLURM cannot start (not installed, not root, a
daemon that exits) the test skips with the reason and the daemons' last log lines.

The run with ``cluster: {kind: slurm}`` must give byte-identical labels, cell table, tracks and
exports to a local threaded run of the same config.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")
TRACK = {"LINKING_MAX_DISTANCE": 8.0, "GAP_CLOSING_MAX_DISTANCE": 8.0, "MAX_FRAME_GAP": 2,
         "ALLOW_TRACK_SPLITTING": True, "SPLITTING_MAX_DISTANCE": 8.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start a one-node SLURM cluster; yield the environment that reaches it (``SLURM_CONF``)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"SLURM/munge not installed (missing {', '.join(missing)}); .ci/run installs slurm-wlm and "
                    "munge with apt-get when run as root on Debian")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs; this test starts its own one-node cluster")
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed (extra 'slurm')")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log", "jobs"):
        (d / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    ncpu = os.cpu_count() or 1
    conf = d / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=vollsegtest", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={d}/munge.sock",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU", "SchedulerType=sched/builtin", "MpiDefault=none", "ReturnToService=2",
        f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool", f"SlurmctldPidFile={d}/slurmctld.pid",
        f"SlurmdPidFile={d}/slurmd.pid", f"SlurmctldLogFile={d}/log/slurmctld.log",
        f"SlurmdLogFile={d}/log/slurmd.log", f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        f"NodeName={host} CPUs={ncpu} RealMemory=4000 State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4", "",
    ]))
    env = dict(os.environ, SLURM_CONF=str(conf))
    started: list[Path] = []

    def fail(what: str, log: Path) -> None:
        for pf in reversed(started):
            _stop(pf)
        pytest.skip(f"SLURM could not start here: {what}; log: {_tail(log)}")

    try:
        subprocess.run(["mungekey", "--create", f"--keyfile={d}/munge.key"], check=True, capture_output=True)
        os.chmod(d / "munge.key", 0o600)
        r = subprocess.run(["munged", f"--socket={d}/munge.sock", f"--key-file={d}/munge.key",
                            f"--pid-file={d}/munged.pid", f"--log-file={d}/log/munged.log",
                            f"--seed-file={d}/munge.seed", "--force"], capture_output=True, text=True, env=env)
        started.append(d / "munged.pid")
        if r.returncode != 0:
            fail(f"munged exited {r.returncode}: {r.stderr.strip()}", d / "log" / "munged.log")
        for daemon, pid in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            r = subprocess.run([daemon, "-f", str(conf)], capture_output=True, text=True, env=env)
            started.append(d / pid)
            if r.returncode != 0:
                fail(f"{daemon} exited {r.returncode}: {r.stderr.strip()}", d / "log" / f"{daemon}.log")
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
            state = r.stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                break
            time.sleep(1)
        else:
            fail(f"the node never became idle (sinfo: {state!r} {r.stderr.strip()!r})", d / "log" / "slurmd.log")
        yield {"SLURM_CONF": str(conf), "dir": str(d)}
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True, env=env, check=False)
        for pf in reversed(started):
            _stop(pf)


def _digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith((".", "_")) for part in rel.parts):
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _results(store: Path, out: Path) -> dict[str, str]:
    h = {f"labels/{k}": v for k, v in _digest(store / "labels" / "cells").items()}
    ds = out / "syn"
    for sub in ("cells", "tracks", "ctc", "tracks.geff"):
        h.update({f"{sub}/{k}": v for k, v in _digest(ds / sub).items()})
    for f in ("tracks.xml", "napari_tracks.npz", "cells_btrackmate.csv"):
        h[f] = hashlib.sha256((ds / f).read_bytes()).hexdigest()
    return h


def test_pipeline_on_slurm_equals_local(slurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vollseg_dask.pipeline import RunConfig, run
    from vollseg_dask.synthetic import SyntheticConfig, write_synthetic

    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    # the workers' logs are the evidence below: an earlier quiet CLI call in this process may have
    # set DASK_LOGGING__DISTRIBUTED=warning for every process it starts
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "info")
    src = tmp_path / "source" / "syn.ome.zarr"
    write_synthetic(src, SyntheticConfig(shape=(3, 16, 48, 48), n_cells=24, seed=5), progress=False,
                    scheduler="synchronous")
    jobs = Path(slurm["dir"]) / "jobs"

    def config(store: Path, out: Path, cluster: dict) -> RunConfig:
        return RunConfig.model_validate({
            "input": {"path": str(store)}, "output": str(out), "cluster": cluster,
            "predictor": {"kind": "ground-truth"}, "segment": {"block_shape": (16, 24, 24), "halo": (8, 16, 16)},
            "track": TRACK, "analyze": {"track_plots": 0},
        })

    # same store and output paths for both runs (the XML and image.json name the store): fresh copies
    store, out = tmp_path / "syn.ome.zarr", tmp_path / "out"
    runs = {}
    for name, cluster in (
        ("local", {"kind": "threads", "n_workers": 1}),
        ("slurm", {"kind": "slurm", "slurm": {
            "cores": 1, "processes": 1, "memory": "1GiB", "walltime": "00:15:00", "n_jobs": 1,
            "python": sys.executable, "log_directory": str(jobs), "local_directory": str(tmp_path / "scratch"),
            "job_extra_directives": [f"--chdir={tmp_path}"]}}),
    ):
        for p in (store, out):
            shutil.rmtree(p, ignore_errors=True)
        shutil.copytree(src, store)
        report = run(config(store, out, cluster))
        assert report.ok, report.summary()
        runs[name] = _results(store, out)
    # the workers really ran as SLURM jobs: dask-jobqueue's job logs are there
    logs = sorted(jobs.glob("vollseg-dask-*.err"))
    assert logs, f"no SLURM job log in {jobs}"
    assert any("Starting Worker" in p.read_text(errors="replace") or "worker" in p.read_text(errors="replace").lower()
               for p in logs)
    assert runs["slurm"] == runs["local"]
