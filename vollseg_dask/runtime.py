"""Dask runtime: clusters and clients, per-worker cache of heavy objects, progress, stage timers.

Where the work runs (DESIGN §4):

* ``ClusterConfig(kind="local")`` (default): a ``distributed.LocalCluster`` sized
  to the machine, created and closed by :func:`get_client`.
* ``kind="address"`` or a scheduler address string: connect to a running
  scheduler; only the client we opened is closed, never the remote cluster.
* a ``distributed.Client`` or a cluster object: used as is; never closed.
* ``kind="slurm"``: a ``dask_jobqueue.SLURMCluster`` (extra ``slurm``), scaled
  to ``slurm.n_jobs`` jobs (or ``n_workers`` workers) and closed at exit.
* ``kind="threads"``: no distributed at all, Dask's threaded scheduler with
  ``n_workers`` threads, for tiny jobs and tests (:func:`get_client` yields ``None``).

Environment variables override configuration files: ``VOLLSEG_N_WORKERS``
(worker count), ``VOLLSEG_SCHEDULER_ADDRESS`` (connect to that scheduler,
whatever the configured kind) and ``VOLLSEG_SMALL_JOB_VOXELS`` (size below which the local default
runs on threads, :func:`for_job_size`). ``VOLLSEG_PROGRESS`` = ``0``/``1`` hides/forces
progress bars.

Importing this module does not import ``distributed`` or TensorFlow.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import Field, field_validator

from vollseg_dask.config import StrictModel, env_override
from vollseg_dask.errors import ConfigError, require

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

__all__ = [
    "SlurmConfig",
    "ClusterConfig",
    "default_n_workers",
    "worker_memory_limit",
    "memory_headroom",
    "MEMORY_TARGET_FRACTION",
    "get_client",
    "slurm_job_script",
    "make_slurm_cluster",
    "cached",
    "clear_cache",
    "cached_keys",
    "path_cache_key",
    "progress",
    "progress_enabled",
    "compute_with_progress",
    "StageTimer",
    "format_stage_summary",
    "configure_logging",
    "SMALL_JOB_VOXELS",
    "for_job_size",
]

T = TypeVar("T")

_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{2}){0,2}$")


def _check_memory(value: str | int | None) -> str | int | None:
    if value is None or isinstance(value, int):
        if isinstance(value, int) and value <= 0:
            raise ValueError(f"memory must be positive, got {value}")
        return value
    if value == "auto":
        return value
    from dask.utils import parse_bytes

    try:
        if parse_bytes(value) <= 0:
            raise ValueError
    except (ValueError, TypeError):
        raise ValueError(f"memory {value!r} is not a size such as '4GiB' or '16GB'") from None
    return value


class SlurmConfig(StrictModel):
    """One SLURM job per ``n_jobs``, mapped onto ``dask_jobqueue.SLURMCluster`` arguments."""

    queue: str | None = Field(None, description="SLURM partition (#SBATCH -p); None uses the site default")
    account: str | None = Field(None, description="account charged for the jobs (#SBATCH -A)")
    cores: int = Field(4, ge=1, description="CPU cores per job (#SBATCH --cpus-per-task)")
    processes: int = Field(1, ge=1, description="Dask worker processes per job; the cores are split among them")
    memory: str = Field("16GiB", description="memory per job, e.g. '64GB' (#SBATCH --mem)")
    walltime: str = Field("01:00:00", description="job time limit, [D-]HH:MM:SS (#SBATCH -t)")
    n_jobs: int = Field(1, ge=1, description="number of jobs to submit (ignored when n_workers is set)")
    job_name: str = Field("vollseg-dask", description="SLURM job name (#SBATCH -J)")
    job_extra_directives: list[str] = Field(
        default_factory=list, description="extra #SBATCH lines, e.g. ['--gres=gpu:1', '--qos=long']"
    )
    job_script_prologue: list[str] = Field(
        default_factory=list, description="shell lines run before the worker starts, e.g. 'module load cuda'"
    )
    worker_extra_args: list[str] = Field(default_factory=list, description="extra arguments of `dask worker`")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Dask worker resources, e.g. {'GPU': 1} for inference tasks"
    )
    local_directory: str | None = Field(None, description="node-local scratch folder for worker spill files")
    log_directory: str | None = Field(None, description="folder of the jobs' stdout/stderr logs")
    interface: str | None = Field(None, description="network interface of workers and scheduler, e.g. 'ib0'")
    python: str | None = Field(None, description="Python executable on the nodes (default: this one)")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        _check_memory(v)
        return v

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, v: str) -> str:
        if not _WALLTIME.match(v):
            raise ValueError(f"walltime {v!r} must look like 'HH:MM:SS', 'MM:SS', 'MM' or 'D-HH:MM:SS'")
        return v


#: Jobs of at most this many voxels (all time points together) run on threads under the local
#: default: starting worker processes costs more than it saves. ``benchmarks/bench_small_jobs.py``
#: (README, "Small jobs"): on 2 cores threads won at every size measured, up to this one (2**27 =
#: 8x64x512x512 voxels, 32.0 s against 53.6 s); above it the memory-bounded process cluster is kept.
SMALL_JOB_VOXELS = 2**27

#: Set by :func:`configure_logging` (the CLI): announce each cluster started by :func:`get_client`.
_ANNOUNCE = False


def configure_logging(verbosity: int = 0) -> None:
    """Quiet by default, loud on request: the CLI's logging set-up.

    ``verbosity`` 0 shows warnings and errors only: ``distributed``'s INFO lines are silenced in this
    process and, through ``DASK_LOGGING__DISTRIBUTED``, in worker processes it starts; TensorFlow's
    C++ INFO lines (oneDNN notices) through ``TF_CPP_MIN_LOG_LEVEL=1``. 1 (``-v``) shows INFO and
    leaves the libraries alone; 2 (``-vv``) DEBUG. Environment variables already set win. Each
    cluster :func:`get_client` starts is announced in one line on stderr (with the dashboard address).
    """
    global _ANNOUNCE
    level = logging.WARNING - 10 * min(max(int(verbosity), 0), 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _ANNOUNCE = True
    if verbosity > 0:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker",
                 "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if "dask" in sys.modules:  # read at import; set it here too for a dask imported earlier
        import dask

        dask.config.set({"logging.distributed": "warning"})


def for_job_size(config: ClusterConfig, voxels: int, *, threshold: int = SMALL_JOB_VOXELS) -> ClusterConfig:
    """The local default switched to threads for a small job.

    Only a config left at ``kind="local"`` with ``n_workers`` unset (and no ``VOLLSEG_N_WORKERS``) is
    changed: up to ``threshold`` voxels it becomes ``kind="threads"`` with the machine's worker
    count. Anything the user chose (a worker count, a scheduler, SLURM) is kept.
    ``VOLLSEG_SMALL_JOB_VOXELS`` replaces ``threshold`` (0: never threads for a non-empty job).
    """
    env_t = env_override("SMALL_JOB_VOXELS")
    if env_t is not None and env_t.strip():
        try:
            threshold = int(env_t)
        except ValueError:
            raise ConfigError(f"VOLLSEG_SMALL_JOB_VOXELS={env_t!r} must be an integer") from None
    env_n = env_override("N_WORKERS")
    if (config.kind != "local" or config.n_workers is not None or not config.processes
            or (env_n is not None and env_n.strip()) or int(voxels) > threshold):
        return config
    return config.model_copy(update={"kind": "threads"})


def _announce(client: Client, cfg: ClusterConfig) -> None:
    if not _ANNOUNCE:
        return
    try:
        n = len(client.scheduler_info().get("workers", {}))
    except Exception:  # pragma: no cover - a scheduler that does not answer yet
        n = cfg.n_workers or 0
    where = {"local": "local cluster", "slurm": "SLURM cluster", "address": f"scheduler {cfg.address}"}[cfg.kind]
    dash = client.dashboard_link if cfg.dashboard or cfg.kind == "address" else "off (cluster.dashboard: true)"
    print(f"dask: {where}, {n} worker(s); dashboard {dash}", file=sys.stderr, flush=True)


def default_n_workers() -> int:
    """Workers for this machine: ``min(usable CPUs, memory in GiB // 4)``, at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    import psutil

    mem_gib = psutil.virtual_memory().total / 2**30
    return max(1, min(cpus, int(mem_gib // 4)))


def _machine_share() -> int:
    import psutil

    return int(psutil.virtual_memory().total // max(1, default_n_workers()))


def worker_memory_limit(client: Any = None) -> int:
    """The memory budget of one worker, bytes: what every task sizes its work from.

    Inside a Dask worker: that worker's ``memory_limit`` (Dask pauses, spills and restarts a worker
    above it). With a ``client``: the smallest limit among its workers. Otherwise (threads, or
    workers without a limit): the machine's memory split evenly over :func:`default_n_workers`.
    """
    if client is not None:
        try:
            limits = client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
            vals = [int(v) for v in limits.values() if v]
            if vals:
                return min(vals)
        except Exception as exc:  # an old or remote worker without a memory manager: the machine share
            logging.getLogger(__name__).debug("worker memory limits unavailable: %s", exc)
        return _machine_share()
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
        if limit:
            return int(limit)
    except (ImportError, ValueError, AttributeError):
        pass
    return _machine_share()


#: Fraction of a worker's memory limit that its process may reach: below Dask's own thresholds
#: (spill at 70 %, pause at 80 %, restart at 95 %). A run whose workers approached the pause
#: threshold was seen to stall (a paused worker takes no task, and TensorFlow keeps its memory).
MEMORY_TARGET_FRACTION = 0.6


def memory_headroom(limit: int | None = None, rss: int | None = None) -> int:
    """Bytes a task may still allocate: ``MEMORY_TARGET_FRACTION`` of the worker's limit minus what
    the process holds now (models, caches, the allocator's retained pages), never below 0."""
    if limit is None:
        limit = worker_memory_limit()
    if rss is None:
        import psutil

        rss = psutil.Process().memory_info().rss
    return max(0, int(MEMORY_TARGET_FRACTION * limit) - int(rss))


class ClusterConfig(StrictModel):
    """Where and how Dask runs a pipeline."""

    kind: Literal["local", "address", "slurm", "threads"] = Field(
        "local",
        description="local: LocalCluster on this machine; address: connect to a running scheduler; "
        "slurm: dask-jobqueue SLURMCluster; threads: no distributed, threaded scheduler (tiny jobs, tests)",
    )
    n_workers: int | None = Field(
        None, ge=1, description="worker processes (threads for kind=threads); default sized to the machine"
    )
    threads_per_worker: int = Field(1, ge=1, description="threads per worker (TensorFlow and NumPy thread themselves)")
    memory_limit: str | int | None = Field(
        None, description="memory per local worker, e.g. '4GiB'; None splits the machine's memory evenly"
    )
    processes: bool = Field(True, description="local workers are processes (True) or threads of this process")
    address: str | None = Field(None, description="scheduler address for kind=address, e.g. 'tcp://host:8786'")
    timeout: str = Field("30s", description="time allowed to connect to a scheduler")
    resources: dict[str, float] = Field(
        default_factory=dict, description="resources of each local worker, e.g. {'GPU': 1}"
    )
    local_directory: str | None = Field(None, description="scratch folder of local workers")
    dashboard: bool = Field(False, description="serve the Dask dashboard (on a free port)")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig, description="SLURM settings for kind=slurm")

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit(cls, v: str | int | None) -> str | int | None:
        return _check_memory(v)

    def resolved(self) -> ClusterConfig:
        """A copy with environment overrides applied and ``n_workers`` filled in.

        ``VOLLSEG_N_WORKERS`` replaces ``n_workers``; ``VOLLSEG_SCHEDULER_ADDRESS``
        switches to ``kind="address"`` with that address.
        """
        data = self.model_dump()
        env_n = env_override("N_WORKERS")
        if env_n is not None and env_n.strip():
            try:
                n = int(env_n)
                if n < 1:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"VOLLSEG_N_WORKERS={env_n!r} must be a positive integer") from None
            data["n_workers"] = n
        env_addr = env_override("SCHEDULER_ADDRESS")
        if env_addr is not None and env_addr.strip():
            data["kind"] = "address"
            data["address"] = env_addr.strip()
        if data["n_workers"] is None and data["kind"] in ("local", "threads"):
            data["n_workers"] = default_n_workers()
        out = ClusterConfig.model_validate(data)
        if out.kind == "address" and not out.address:
            raise ConfigError("kind='address' needs an address (or VOLLSEG_SCHEDULER_ADDRESS)")
        return out


# --------------------------------------------------------------------------- clients


def _slurm_kwargs(cfg: SlurmConfig) -> dict[str, Any]:
    worker_args = list(cfg.worker_extra_args)
    if cfg.resources:
        worker_args += ["--resources", ",".join(f"{k}={v:g}" for k, v in cfg.resources.items())]
    kw: dict[str, Any] = {
        "queue": cfg.queue,
        "account": cfg.account,
        "cores": cfg.cores,
        "processes": cfg.processes,
        "memory": cfg.memory,
        "walltime": cfg.walltime,
        "job_name": cfg.job_name,
        "job_extra_directives": list(cfg.job_extra_directives),
        "job_script_prologue": list(cfg.job_script_prologue),
        "worker_extra_args": worker_args,
        "local_directory": cfg.local_directory,
        "log_directory": cfg.log_directory,
        "interface": cfg.interface,
        "python": cfg.python,
    }
    # None means "use dask-jobqueue's configured default"
    return {k: v for k, v in kw.items() if v is not None}


def slurm_job_script(config: SlurmConfig | ClusterConfig) -> str:
    """The batch script a :class:`SLURMCluster` built from ``config`` submits per job.

    Same text as ``SLURMCluster(...).job_script()`` (the scheduler address reads
    ``tcp://<insert-scheduler-address-here>:8786`` because no scheduler is started).
    Needs ``dask-jobqueue`` (extra ``slurm``), not SLURM.
    """
    cfg = config.slurm if isinstance(config, ClusterConfig) else config
    require("dask_jobqueue", "slurm")
    from dask_jobqueue.slurm import SLURMJob

    kw = _slurm_kwargs(cfg)
    interface = kw.pop("interface", None)
    job = SLURMJob(
        "tcp://<insert-scheduler-address-here>:8786",
        name="dummy-name",
        config_name="slurm",
        interface=interface,
        protocol=None,
        security=None,
        **kw,
    )
    return job.job_script()


def make_slurm_cluster(config: ClusterConfig | SlurmConfig) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` for ``config``, started but not yet scaled (no job submitted).

    The caller owns it (``cluster.close()``); :func:`get_client` scales and closes it for you.
    """
    if isinstance(config, SlurmConfig):
        config = ClusterConfig(kind="slurm", slurm=config)
    require("dask_jobqueue", "slurm")
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        # random port: a fixed one collides with other schedulers on a login node
        scheduler_options={"dashboard_address": ":0", "dashboard": config.dashboard},
        **_slurm_kwargs(config.slurm),
    )


@contextmanager
def _dask_threads(n: int) -> Iterator[None]:
    import dask

    with dask.config.set(scheduler="threads", num_workers=n):
        yield


@contextmanager
def get_client(spec: ClusterConfig | Client | str | dict | Any | None = None) -> Iterator[Client | None]:
    """Yield a ``distributed.Client`` for ``spec``; close only what was created here.

    Parameters
    ----------
    spec : ClusterConfig, dict, distributed.Client, cluster, str or None
        ``None``: ``ClusterConfig()`` (a LocalCluster sized to the machine,
        environment overrides applied). A dict is validated as a
        :class:`ClusterConfig`. A ``Client`` is yielded as is and left open. A
        cluster object (``LocalCluster``, ``SLURMCluster`` ...) gets a new client
        that is closed at exit; the cluster is left running. A string is a
        scheduler address: the client is closed at exit, the remote cluster never.

    Yields
    ------
    distributed.Client or None
        ``None`` only for ``kind="threads"``, inside which Dask computes with
        the threaded scheduler.
    """
    import distributed

    if isinstance(spec, distributed.Client):
        yield spec  # the caller owns it
        return
    if isinstance(spec, distributed.deploy.Cluster):
        client = distributed.Client(spec, set_as_default=True)
        try:
            yield client
        finally:
            client.close()
        return
    if isinstance(spec, str):
        client = distributed.Client(spec, set_as_default=True)
        try:
            yield client
        finally:
            client.close()  # never shut the remote cluster down
        return
    if spec is None:
        cfg = ClusterConfig()
    elif isinstance(spec, dict):
        from vollseg_dask.config import parse_config

        cfg = parse_config(ClusterConfig, spec, source="cluster spec")
    elif isinstance(spec, ClusterConfig):
        cfg = spec
    else:
        raise ConfigError(
            f"cluster spec must be a ClusterConfig, dict, Client, cluster, address string or None; got {type(spec).__name__}"
        )
    cfg = cfg.resolved()

    if cfg.kind == "threads":
        with _dask_threads(int(cfg.n_workers or 1)):
            yield None
        return
    if cfg.kind == "address":
        client = distributed.Client(cfg.address, timeout=cfg.timeout, set_as_default=True)
        _announce(client, cfg)
        try:
            yield client
        finally:
            client.close()
        return
    if cfg.kind == "local":
        cluster = distributed.LocalCluster(
            n_workers=cfg.n_workers,
            threads_per_worker=cfg.threads_per_worker,
            processes=cfg.processes,
            memory_limit=cfg.memory_limit if cfg.memory_limit is not None else "auto",
            # ':0' even without a dashboard: the scheduler's HTTP server (health, metrics)
            # always listens, and a fixed port collides with other clusters on the machine.
            dashboard_address=":0",
            scheduler_kwargs={"dashboard": cfg.dashboard},
            local_directory=cfg.local_directory,
            resources=dict(cfg.resources) or None,
            silence_logs=logging.ERROR,
        )
    else:  # slurm
        cluster = make_slurm_cluster(cfg)
        if cfg.n_workers is not None:
            cluster.scale(n=cfg.n_workers)
        else:
            cluster.scale(jobs=cfg.slurm.n_jobs)
    try:
        client = distributed.Client(cluster, set_as_default=True)
        _announce(client, cfg)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


# --------------------------------------------------------------------------- per-worker cache

_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()
_KEY_LOCKS: dict[str, threading.Lock] = {}


def cached(key: str, factory: Callable[[], T]) -> T:
    """Return the object cached under ``key`` in this process, building it with ``factory`` once.

    Each Dask worker is a process, so a model loaded through ``cached`` is
    loaded once per worker and never pickled into the task graph: tasks carry
    only the key (normally :func:`path_cache_key` of the model folder). Threads
    of one worker asking for the same key wait for a single ``factory`` call. A
    factory that raises caches nothing.
    """
    try:
        return _CACHE[key]
    except KeyError:
        pass
    with _CACHE_LOCK:
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key in _CACHE:
            return _CACHE[key]
        value = factory()
        _CACHE[key] = value
        return value


def clear_cache(key: str | None = None) -> None:
    """Forget one cached object (or all): the next :func:`cached` call rebuilds it."""
    with _CACHE_LOCK:
        if key is None:
            _CACHE.clear()
            _KEY_LOCKS.clear()
        else:
            _CACHE.pop(key, None)


def cached_keys() -> list[str]:
    """Keys cached in this process."""
    return sorted(_CACHE)


def path_cache_key(path: str | os.PathLike[str]) -> str:
    """Cache key of a file or model folder: resolved path + latest modification time (ns).

    For a folder the newest of the folder and its top-level files counts, so
    replacing ``weights_best.h5`` or ``config.json`` gives a new key.
    """
    p = Path(path).resolve()
    if not p.exists():
        from vollseg_dask.errors import StoreNotFoundError

        raise StoreNotFoundError(f"cannot build a cache key for missing path {p}")
    mtime = p.stat().st_mtime_ns
    if p.is_dir():
        for child in p.iterdir():
            if child.is_file():
                mtime = max(mtime, child.stat().st_mtime_ns)
    return f"{p}@{mtime}"


# --------------------------------------------------------------------------- progress


def progress_enabled(enabled: bool | None = None, file: IO[str] | None = None) -> bool:
    """Whether to draw a progress bar.

    An explicit ``enabled`` wins; else ``VOLLSEG_PROGRESS`` (``0``/``false``/``off``
    hide, ``1``/``true``/``on`` force); else only when the stream (stderr by
    default) is a terminal.
    """
    if enabled is not None:
        return bool(enabled)
    env = env_override("PROGRESS")
    if env is not None and env.strip():
        v = env.strip().lower()
        if v in ("0", "false", "no", "off"):
            return False
        if v in ("1", "true", "yes", "on", "force"):
            return True
        raise ConfigError(f"VOLLSEG_PROGRESS={env!r} must be 0 or 1")
    stream = file if file is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _is_future(x: Any) -> bool:
    dist = sys.modules.get("distributed")  # no futures can exist unless distributed is loaded
    return dist is not None and isinstance(x, dist.Future)


def progress(
    futures_or_iterable: Iterable[T],
    total: int | None = None,
    desc: str = "",
    *,
    enabled: bool | None = None,
    file: IO[str] | None = None,
    unit: str = "task",
) -> Iterator[T]:
    """Iterate with a progress bar.

    Distributed futures are yielded **as they complete** (``distributed.as_completed``,
    which works with local and remote schedulers); any other iterable is yielded
    in order. The bar is hidden per :func:`progress_enabled`.

    Parameters
    ----------
    futures_or_iterable : iterable of Future or of anything
    total : int, optional
        Length, when the iterable has none.
    desc : str
        Label of the bar (e.g. the stage name).
    enabled : bool, optional
        Force the bar on or off.
    file : text stream, optional
        Where to draw (default stderr).
    """
    from tqdm.auto import tqdm

    show = progress_enabled(enabled, file)
    items: Iterable[T] = futures_or_iterable
    if isinstance(items, (list, tuple)) and items and all(_is_future(f) for f in items):
        from distributed import as_completed

        futures = list(items)
        bar = tqdm(total=len(futures) if total is None else total, desc=desc, disable=not show, file=file, unit=unit)
        try:
            for fut in as_completed(futures):
                bar.update(1)
                yield fut
        finally:
            bar.close()
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = tqdm(items, total=total, desc=desc, disable=not show, file=file, unit=unit)
    try:
        yield from bar
    finally:
        bar.close()


def compute_with_progress(
    *collections: Any,
    desc: str = "",
    client: Client | None = None,
    enabled: bool | None = None,
    file: IO[str] | None = None,
) -> tuple[Any, ...]:
    """``dask.compute(*collections)`` with a progress bar over its tasks.

    On a distributed client (given, or the default one) the collections are
    persisted and the bar follows their futures; otherwise a local-scheduler
    callback advances the bar per finished task.
    """
    import dask

    if client is None and "distributed" in sys.modules and dask.config.get("scheduler", None) is None:
        from distributed import default_client

        try:
            client = default_client()
        except ValueError:
            client = None
    if client is not None:
        from distributed import futures_of, wait

        persisted = client.persist(list(collections))
        futures = futures_of(persisted)
        for _ in progress(futures, desc=desc, enabled=enabled, file=file):
            pass
        wait(futures)
        return tuple(client.compute(persisted, sync=True))

    from dask.callbacks import Callback
    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc=desc, disable=not progress_enabled(enabled, file), file=file, unit="task")

    class _Bar(Callback):
        def _start_state(self, dsk: Any, state: Any) -> None:
            bar.total = sum(len(state[k]) for k in ("ready", "waiting", "finished"))
            bar.refresh()

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            bar.update(1)

    try:
        with _Bar():
            return dask.compute(*collections)
    finally:
        bar.close()


# --------------------------------------------------------------------------- stage timers


class StageTimer:
    """Time a pipeline stage and record wall time, voxels and voxels/s into a dict.

    >>> timings = {}
    >>> with StageTimer("S5 watershed", timings, voxels=10**6) as st:
    ...     pass  # work; st.add_voxels(n) may add more as blocks finish
    >>> sorted(timings["S5 watershed"])
    ['calls', 'ended_at', 'started_at', 'status', 'voxels', 'voxels_per_s', 'wall_s']

    Re-entering a stage name adds to its wall time, voxels and ``calls``. The
    entry is written also when the block raises (``status="failed"``); the
    exception propagates.
    """

    def __init__(self, name: str, record: dict[str, dict[str, Any]] | None = None, *, voxels: int = 0) -> None:
        if not name:
            raise ConfigError("a stage needs a non-empty name")
        self.name = name
        self.record: dict[str, dict[str, Any]] = {} if record is None else record
        self.voxels = int(voxels)
        self._t0: float | None = None
        self.started_at: str | None = None
        self.wall_s: float | None = None

    def add_voxels(self, n: int) -> None:
        """Count ``n`` more voxels as processed by this stage."""
        self.voxels += int(n)

    def __enter__(self) -> StageTimer:
        self.started_at = datetime.now(UTC).isoformat()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._t0 is not None
        self.wall_s = time.perf_counter() - self._t0
        entry = self.record.get(self.name)
        if entry is None:
            entry = {"wall_s": 0.0, "voxels": 0, "calls": 0, "started_at": self.started_at}
            self.record[self.name] = entry
        entry["wall_s"] += self.wall_s
        entry["voxels"] += self.voxels
        entry["calls"] += 1
        entry["ended_at"] = datetime.now(UTC).isoformat()
        entry["voxels_per_s"] = entry["voxels"] / entry["wall_s"] if entry["wall_s"] > 0 and entry["voxels"] else None
        entry["status"] = "failed" if exc_type is not None else entry.get("status", "ok")


def format_stage_summary(record: dict[str, dict[str, Any]]) -> str:
    """A text table of a :class:`StageTimer` record: stage, wall time, voxels, voxels/s."""
    rows = [("stage", "wall [s]", "voxels", "voxels/s", "status")]
    for name, e in record.items():
        vps = e.get("voxels_per_s")
        rows.append(
            (name, f"{e['wall_s']:.3f}", f"{e['voxels']:,}", "-" if vps is None else f"{vps:,.0f}", e.get("status", "ok"))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    return "\n".join(lines)
