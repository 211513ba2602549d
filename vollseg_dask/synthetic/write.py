"""Write a synthetic data set to OME-Zarr, one task per storage unit, with memory independent of size.

Store layout (all inside the store folder ``OUT.zarr``)::

    OUT.zarr/                               OME-Zarr image (NGFF 0.5), axes tzyx or tczyx, µm + frame interval
    OUT.zarr/0, 1, ...                      image levels (uint16 camera counts)
    OUT.zarr/labels/ground_truth/0, ...     ground-truth labels (uint32, value = track id, 0 background)
    OUT.zarr/ground_truth_lineage.parquet   track_id, start, end, parent (int64)
    OUT.zarr/man_track.txt                  the same as Cell Tracking Challenge lines "L B E P"
    OUT.zarr/synthetic_config.yaml          the SyntheticConfig that produced the store

Each task renders one spatial storage unit (a shard when sharded, else a chunk) for a group of
frames, building the small cell table of its own neighbourhood, and writes whole storage units
of image and labels; nothing global is ever held, so resident memory does not grow with the
store. The store is built in a hidden sibling folder and renamed into place when complete.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vollseg_dask.config import save_config
from vollseg_dask.errors import ConfigError, StoreExistsError
from vollseg_dask.synthetic.api import LINEAGE_COLUMNS, as_config, iter_lineage, scene_for, table_for_region
from vollseg_dask.synthetic.config import SyntheticConfig
from vollseg_dask.synthetic.render import Region, add_noise, render_region

__all__ = [
    "SyntheticStore",
    "write_synthetic",
    "write_man_track",
    "plan_units",
    "LABELS_NAME",
    "LINEAGE_FILE",
    "MAN_TRACK_FILE",
    "CONFIG_FILE",
]

LABELS_NAME = "ground_truth"
LINEAGE_FILE = "ground_truth_lineage.parquet"
MAN_TRACK_FILE = "man_track.txt"
CONFIG_FILE = "synthetic_config.yaml"


@dataclass(frozen=True)
class SyntheticStore:
    """What :func:`write_synthetic` wrote.

    Attributes
    ----------
    path : pathlib.Path
        The OME-Zarr store.
    labels : str
        Labels group name (``"ground_truth"``).
    lineage : pathlib.Path
        Parquet lineage file inside the store.
    man_track : pathlib.Path
        CTC track file inside the store.
    config_file : pathlib.Path
    n_tracks, n_divisions, n_tasks : int
    seconds : float
        Wall time of the whole write.
    """

    path: Path
    labels: str
    lineage: Path
    man_track: Path
    config_file: Path
    n_tracks: int
    n_divisions: int
    n_tasks: int
    seconds: float


def write_man_track(rows: Any, fh: Any) -> None:
    """Append lineage rows (DataFrame with ``track_id, start, end, parent``) to an open text file as ``L B E P``."""
    for tid, b, e, p in zip(rows["track_id"], rows["start"], rows["end"], rows["parent"], strict=True):
        fh.write(f"{int(tid)} {int(b)} {int(e)} {int(p)}\n")


def plan_units(config: SyntheticConfig, frames_per_task: int | None) -> list[tuple[Region, tuple[int, ...]]]:
    """Tasks: (spatial storage unit, frames); units are shards when configured, else chunks.

    ``frames_per_task=None`` gives each unit all its frames in one task: the unit's cell table
    (whose presence checks cover every frame) is then built once.
    """
    unit = config.shards or config.spatial_chunks
    T, Z, Y, X = config.shape
    frames_per_task = T if frames_per_task is None else frames_per_task
    regions = [((z, min(z + unit[0], Z)), (y, min(y + unit[1], Y)), (x, min(x + unit[2], X)))
               for z in range(0, Z, unit[0]) for y in range(0, Y, unit[1]) for x in range(0, X, unit[2])]
    groups = [tuple(range(t, min(t + frames_per_task, T))) for t in range(0, T, frames_per_task)]
    return [(r, g) for r in regions for g in groups]


def _render_unit(root: str, config_json: str, region: Region, frames: Sequence[int]) -> int:
    """Render and write one storage unit for ``frames``; returns the number of voxels written."""
    import zarr

    config = SyntheticConfig.model_validate_json(config_json)
    scene = scene_for(config)
    table = table_for_region(scene, region)
    image = zarr.open_array(store=root, path="0", mode="r+")
    labels = zarr.open_array(store=root, path=f"labels/{LABELS_NAME}/0", mode="r+")
    ck = config.spatial_chunks
    (z0, z1), (y0, y1), (x0, x1) = region
    n = 0
    for t in frames:
        out = render_region(scene, table, t, region, intensity=True)
        if labels.ndim == 5:
            # create_labels copies the image's axes, channel included: every channel gets the labels.
            labels[t, :, z0:z1, y0:y1, x0:x1] = np.broadcast_to(out.labels, (labels.shape[1], *out.labels.shape))
        else:
            labels[t, z0:z1, y0:y1, x0:x1] = out.labels
        img = np.empty(out.intensity.shape, np.uint16)
        for ch in range(config.n_channels):
            # Noise per storage chunk (a shard holds several): same bytes whatever the task layout.
            for cz in range(z0, z1, ck[0]):
                for cy in range(y0, y1, ck[1]):
                    for cx in range(x0, x1, ck[2]):
                        sl = (slice(cz - z0, min(cz + ck[0], z1) - z0), slice(cy - y0, min(cy + ck[1], y1) - y0),
                              slice(cx - x0, min(cx + ck[2], x1) - x0))
                        img[(ch, *sl)] = add_noise(scene, out.intensity[(ch, *sl)], t, ch,
                                                   (cz // ck[0], cy // ck[1], cx // ck[2]))
        if config.nucleus_channel:
            image[t, :, z0:z1, y0:y1, x0:x1] = img
        else:
            image[t, z0:z1, y0:y1, x0:x1] = img[0]
        n += out.labels.size
    return n


def _run_local(calls: list[tuple[Any, ...]], scheduler: str, num_workers: int | None,
               update: Callable[[], None]) -> None:
    import dask
    from dask.callbacks import Callback

    tasks = [dask.delayed(_render_unit, pure=False)(*args) for args in calls]
    keys = {t.key for t in tasks}

    class _Progress(Callback):  # type: ignore[misc]
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if key in keys:
                update()

    kwargs: dict[str, Any] = {"scheduler": scheduler}
    if num_workers is not None and scheduler != "synchronous":
        kwargs["num_workers"] = num_workers
    with _Progress():
        dask.compute(*tasks, **kwargs)


def _run_client(calls: list[tuple[Any, ...]], client: Any, update: Callable[[], None]) -> None:
    from distributed import as_completed

    # A bounded window of futures: the scheduler never holds the whole plan.
    window = max(2, 2 * sum(client.nthreads().values()))
    pending = iter(calls)
    tag = uuid.uuid4().hex[:8]
    running = as_completed()
    for i, args in zip(range(window), pending, strict=False):
        running.add(client.submit(_render_unit, *args, key=f"synthetic-{tag}-{i}", pure=False))
    i = window
    for fut in running:
        fut.result()  # re-raises a task's error here
        update()
        fut.release()
        nxt = next(pending, None)
        if nxt is not None:
            running.add(client.submit(_render_unit, *nxt, key=f"synthetic-{tag}-{i}", pure=False))
            i += 1


def write_synthetic(path: str | os.PathLike[str], config: SyntheticConfig | dict[str, Any] | None = None, *,
                    client: Any = None, scheduler: str | None = None, num_workers: int | None = None,
                    overwrite: bool = False, progress: bool = True,
                    frames_per_task: int | None = None) -> SyntheticStore:
    """Render a synthetic data set into an OME-Zarr store (see the module docstring for the layout).

    Parameters
    ----------
    path : path-like
        Store folder to create (``OUT.zarr``).
    config : SyntheticConfig, dict or None
        Data-set parameters; None = defaults.
    client : distributed.Client, optional
        Run tasks on this cluster (never closed here).
    scheduler : {"threads", "processes", "synchronous"}, optional
        Local Dask scheduler when no client is given (default ``"threads"``).
    num_workers : int, optional
        Local worker count.
    overwrite : bool
        Replace an existing store (only once the new one is complete).
    progress : bool
        Show a tqdm progress bar over tasks.
    frames_per_task : int, optional
        Frames rendered by one task (the cell table of a unit is built once per task); default all
        frames (memory is that of one frame of one unit whatever this is).

    Returns
    -------
    SyntheticStore

    Raises
    ------
    StoreExistsError
        ``path`` exists and ``overwrite`` is False.
    ConfigError
        Invalid configuration or scheduler.
    """
    from tqdm.auto import tqdm

    from vollseg_dask.io.omezarr import build_pyramid, create_image, create_labels

    t_start = time.perf_counter()
    cfg = as_config(config)
    scene_for(cfg)  # validate derived parameters before touching the disk
    if frames_per_task is not None and frames_per_task < 1:
        raise ConfigError(f"frames_per_task must be >= 1, got {frames_per_task}")
    if client is None and scheduler not in (None, "threads", "processes", "synchronous", "sync"):
        raise ConfigError(f"scheduler must be 'threads', 'processes' or 'synchronous', got {scheduler!r}")
    final = Path(path)
    if final.exists() and not overwrite:
        raise StoreExistsError(f"{final} exists; pass overwrite=True to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"

    T, Z, Y, X = cfg.shape
    ck = cfg.spatial_chunks
    has_c = cfg.nucleus_channel
    shape = (T, cfg.n_channels, Z, Y, X) if has_c else (T, Z, Y, X)
    chunks = (1, 1, *ck) if has_c else (1, *ck)
    shards = None if cfg.shards is None else ((1, 1, *cfg.shards) if has_c else (1, *cfg.shards))
    scale = (cfg.frame_interval, 1.0, *cfg.voxel_size) if has_c else (cfg.frame_interval, *cfg.voxel_size)
    try:
        create_image(tmp, shape=shape, dtype="uint16", axes=cfg.axes, scale=scale, chunks=chunks, shards=shards,
                     n_levels=cfg.n_levels, name="synthetic")
        create_labels(tmp, LABELS_NAME, dtype="uint32")
        save_config(cfg, tmp / CONFIG_FILE)
        # The lineage (a pass over every cluster, written in a fixed order) runs in a thread of this
        # process while the tasks render, instead of before them.
        with ThreadPoolExecutor(max_workers=1) as pool:
            lineage_done = pool.submit(_write_lineage, cfg, tmp)
            units = plan_units(cfg, frames_per_task)
            calls = [(str(tmp), cfg.model_dump_json(), region, frames) for region, frames in units]
            with tqdm(total=len(calls), desc="synthetic", unit="task", disable=not progress) as bar:
                if client is not None:
                    _run_client(calls, client, lambda: bar.update(1))
                else:
                    sched = "synchronous" if scheduler == "sync" else (scheduler or "threads")
                    _run_local(calls, sched, num_workers, lambda: bar.update(1))
            n_tracks, n_div = lineage_done.result()
        if cfg.n_levels > 1:
            build_pyramid(tmp, "", method="mean")
            build_pyramid(tmp, f"labels/{LABELS_NAME}", method="nearest")
        _commit(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return SyntheticStore(path=final, labels=LABELS_NAME, lineage=final / LINEAGE_FILE,
                          man_track=final / MAN_TRACK_FILE, config_file=final / CONFIG_FILE, n_tracks=n_tracks,
                          n_divisions=n_div, n_tasks=len(calls), seconds=time.perf_counter() - t_start)


def _write_lineage(cfg: SyntheticConfig, root: Path) -> tuple[int, int]:
    """Stream the lineage into Parquet and ``man_track.txt``; returns (tracks, divisions)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, pa.int64()) for name in LINEAGE_COLUMNS])
    n_tracks = 0
    n_daughters = 0
    with pq.ParquetWriter(root / LINEAGE_FILE, schema) as writer, open(root / MAN_TRACK_FILE, "w",
                                                                         encoding="utf-8") as fh:
        for part in iter_lineage(cfg):
            if len(part) == 0:
                continue
            writer.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False))
            write_man_track(part, fh)
            n_tracks += len(part)
            n_daughters += int((part["parent"] > 0).sum())
    return n_tracks, n_daughters // 2


def _commit(tmp: Path, final: Path) -> None:
    """Move the finished store into place, replacing an old one only now."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
