"""The chunked VollSeg driver: plans blocks, submits one task per (t, block, stage), reduces small tables.

Stages (DESIGN §1)::

    S1 predict     per (t, block)  predictor over core+receptive field -> prob, mask, [distance], candidates
    S2 nms         per t           StarDist NMS on the sparse candidates (per block above a memory budget)
    S3 components  per (t, block)  U-Net mask components with coordinate IDs; face equivalences; merge per t
    S4 seeds       per t           StarDist centres + centroids of components whose box holds none
    S5 watershed   per (t, block)  marker watershed over core+halo, certificate, escalation of uncertified blocks
       render      per (t, block)  (stardist mode) rendered polyhedra
    S6 sizes       per (t, block)  exact size tables [+ face tables] -> merges, filters + ranks on the
                                   client -> relabel per block
       pyramid                     nearest-neighbour label pyramid

A unit that finds its done-marker returns at once, so a re-run resumes where the last one stopped;
the halo escalation plan is persisted before it runs, so a resumed run takes the same decisions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vollseg_dask.errors import ConfigError, LockedError, StoreExistsError, StoreNotFoundError
from vollseg_dask.locks import hold_lock
from vollseg_dask.plan import BlockPlan, plan_blocks
from vollseg_dask.segmentation import tasks as T
from vollseg_dask.segmentation.config import SegmentationConfig
from vollseg_dask.segmentation.layout import RunLayout, atomic_write_text, read_table

__all__ = ["segment", "SegmentationResult", "STAGES"]

LOG = logging.getLogger(__name__)

#: stage names accepted by ``stop_after``
STAGES = ("predict", "nms", "components", "seeds", "watershed", "labels")


@dataclass
class SegmentationResult:
    """What :func:`segment` did.

    Attributes
    ----------
    store, name : str
        Output: ``store/labels/<name>``.
    n_objects : dict of int to int
        Objects per time point after filtering.
    certificates : dict of str to dict
        Per ``"t.block"``: ``status`` (``exact`` / ``agreed`` / ``disagree``), ``n_disagree``,
        ``n_unsafe``, ``level`` (halo doublings used).
    timings : dict
        Per stage: wall time, voxels, voxels/s (:class:`vollseg_dask.runtime.StageTimer` records).
    n_tasks : int
        Tasks submitted by this call (units already done are not resubmitted).
    n_blocks : int
        Blocks per time point.
    nms_scope : dict of int to str
        ``global`` or ``block`` per time point.
    run_dir : str
        Folder of the intermediates and the manifest.
    completed : bool
        False when ``stop_after`` stopped the run early.
    """

    store: str
    name: str
    n_objects: dict[int, int] = field(default_factory=dict)
    certificates: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_tasks: int = 0
    n_blocks: int = 0
    nms_scope: dict[int, str] = field(default_factory=dict)
    run_dir: str = ""
    completed: bool = True

    @property
    def all_certified(self) -> bool:
        """Every watershed block is exact or agreed with its neighbours."""
        return all(c["status"] in ("exact", "agreed") for c in self.certificates.values())


def _shared(obj: Any) -> Any:
    """Task returning its argument: an object shared by many tasks that survives a worker's death."""
    return obj


class _Runner:
    """Submit units to a distributed client (or a thread pool) and gather their results in order."""

    def __init__(self, client: Any, shuffle_seed: int | None, show_progress: bool | None) -> None:
        self.client = client
        self.rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
        self.n_tasks = 0
        self.show = show_progress
        self._scattered: dict[int, Any] = {}

    def share(self, obj: Any) -> Any:
        """Send an object to the workers once; tasks receive it by reference.

        It travels as the argument of one task rather than by ``scatter``: scattered data dies with
        the workers holding it (a run whose only worker is killed would fail), while the scheduler
        recomputes a lost task result. ``obj`` must pickle small (predictors hold no model).
        """
        if self.client is None:
            return obj
        key = id(obj)
        if key not in self._scattered:
            self._scattered[key] = self.client.submit(_shared, obj, pure=False)
        return self._scattered[key]

    def memory_limit(self) -> int:
        """The smallest memory limit of the workers (or this machine's share), bytes."""
        from vollseg_dask.runtime import worker_memory_limit

        return worker_memory_limit(self.client)

    def run(self, units: Sequence[tuple[Callable[..., Any], tuple]], desc: str) -> list[Any]:
        from vollseg_dask.runtime import progress

        n = len(units)
        if n == 0:
            return []
        order = list(range(n)) if self.rng is None else [int(i) for i in self.rng.permutation(n)]
        self.n_tasks += n
        if self.client is not None:
            futures: list[Any] = [None] * n
            for i in order:
                fn, args = units[i]
                futures[i] = self.client.submit(fn, *args, pure=False)
            try:
                for fut in progress([futures[i] for i in order], desc=desc, enabled=self.show):
                    if fut.status == "error":
                        fut.result()  # raises the task's exception
                return self.client.gather(futures)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        import dask

        workers = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
        results: list[Any] = [None] * n
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futs = {pool.submit(units[i][0], *units[i][1]): i for i in order}
            try:
                for fut in progress(as_completed(futs), total=n, desc=desc, enabled=self.show):
                    results[futs[fut]] = fut.result()
            except BaseException:
                for f in futs:
                    f.cancel()
                raise
        return results


def _grid_pad(plan: BlockPlan, origin: Sequence[int]) -> tuple[int, int, int]:
    """Shift that puts the block grid (boundaries at origin + k*block) on a zarr chunk grid of block size."""
    return tuple(int((b - (o % b)) % b) for b, o in zip(plan.block_shape, origin, strict=True))  # type: ignore[return-value]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("vollseg-dask", "numpy", "scipy", "scikit-image", "stardist", "dask", "distributed", "zarr"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "absent"
    return out


_LATER_OPTIONS = ("mask_dilation", "foreground_threshold", "merge_threshold")


def _fingerprint(cfg: SegmentationConfig, predictor: Any, image_shape: tuple[int, ...], axes: str) -> dict[str, Any]:
    """What a run's units depend on besides the image's content: settings, predictor (with its
    weights' digests where it has any), the image's shape and axes. The content is checked per time
    point (:func:`vollseg_dask.io.omezarr.array_digests`)."""
    conf = cfg.model_dump(mode="json")
    # options added after the first release, left at their defaults: runs from before them resume
    for name in _LATER_OPTIONS:
        if getattr(cfg, name) == SegmentationConfig.model_fields[name].default:
            conf.pop(name)
    return {"config": conf, "predictor": predictor.describe(),
            "image": {"shape": list(image_shape), "axes": axes}}


def _plans(vol: tuple[int, int, int], cfg: SegmentationConfig, halo: Sequence[int]) -> BlockPlan:
    return plan_blocks(vol, cfg.block_shape, tuple(int(h) for h in halo), origin=cfg.grid_origin)


def segment(store: str | os.PathLike[str], out_name: str, predictor: Any, config: SegmentationConfig | dict | None = None,
            client: Any = None, *, overwrite: bool = False, stop_after: str | None = None,
            shuffle_blocks: int | None = None, show_progress: bool | None = None, resume: bool = True,
            scratch: str | os.PathLike[str] | None = None, keep_intermediates: bool = False) -> SegmentationResult:
    """Segment an OME-Zarr image block by block (VollSeg) into ``store/labels/<out_name>``.

    Parameters
    ----------
    store : path-like
        OME-Zarr image store (axes ``[t][c]zyx``).
    out_name : str
        Name of the labels group to write (uint32, same shape and levels as the image).
    predictor : vollseg_dask.predictors.Predictor
        Source of the StarDist / U-Net outputs.
    config : SegmentationConfig or dict, optional
        Parameters (default: ``SegmentationConfig()``).
    client : distributed.Client, cluster, address, ClusterConfig or None
        Where to run (see :func:`vollseg_dask.runtime.get_client`); ``None`` = a local cluster.
    overwrite : bool
        Replace existing labels made from other settings or another input (and discard an unfinished
        run with other settings). The new labels are built in a hidden sibling folder of the labels
        group and swapped in only when complete: until then the old ones stay readable.
    stop_after : str, optional
        Stop after this stage (one of :data:`STAGES`); a later call resumes.
    shuffle_blocks : int, optional
        Submit the units of each stage in an order shuffled by this seed (for determinism tests).
    show_progress : bool, optional
        Force progress bars on/off (default: when stderr is a terminal).
    resume : bool
        Reuse the finished units of an interrupted run with the same fingerprint (settings,
        predictor, image content), and return at once when the labels already come from one.
        False recomputes everything.
    scratch : path-like, optional
        Folder of the run's intermediates and state (default
        :func:`~vollseg_dask.segmentation.layout.default_scratch`: ``<store>.vollseg-scratch/<name>``
        beside the store); point it at node-local disk for speed. Never inside the input store.
    keep_intermediates : bool
        Keep the scratch folder after the run completes (it is removed by default).

    Returns
    -------
    SegmentationResult

    Raises
    ------
    StoreExistsError
        The labels exist (not from an identical finished run) and ``overwrite`` is False.
    ConfigError
        Invalid configuration, or an unfinished run with another configuration exists.
    LockedError
        Another live process writes this labels group (the message names its pid, host and start).
    InvalidDataError
        Reading an incomplete labels group elsewhere; here: never (this run completes or replaces it).
    AxesError
        The image has no z, y, x axes.
    """
    from vollseg_dask.config import parse_config
    from vollseg_dask.io.omezarr import open_image
    from vollseg_dask.validation import check_channel, check_volume_axes

    if config is None:
        cfg = SegmentationConfig()
    elif isinstance(config, dict):
        cfg = parse_config(SegmentationConfig, config, source="segment config")
    elif isinstance(config, SegmentationConfig):
        cfg = config
    else:
        raise ConfigError(f"config must be a SegmentationConfig or dict, got {type(config).__name__}")
    if stop_after is not None and stop_after not in STAGES:
        raise ConfigError(f"stop_after must be one of {STAGES}, got {stop_after!r}")
    if not isinstance(out_name, str) or not out_name or "/" in out_name or out_name.startswith("."):
        raise ConfigError(f"invalid labels name {out_name!r}")

    store = str(Path(store))
    img = open_image(store, 0)
    axes = img.axes
    check_volume_axes(axes, img.shape, f"image {store}")
    check_channel(axes, img.shape, cfg.channel, "channel" in cfg.model_fields_set, f"image {store}")
    labels_root = Path(store) / "labels"
    try:
        labels_root.mkdir(exist_ok=True)
        lock_cm = hold_lock(labels_root / f".{out_name}.lock", f"labels {out_name!r} of {store}", reentrant=True)
        lock_cm.__enter__()
    except PermissionError as exc:
        raise StoreNotFoundError(f"cannot write labels {out_name!r} into {store}: {exc.strerror or exc} "
                                 "(a read-only input store: copy it somewhere writable)") from exc
    except OSError as exc:
        if isinstance(exc, LockedError):
            raise
        raise StoreNotFoundError(f"cannot write labels {out_name!r} into {store}: {exc.strerror or exc}") from exc
    try:
        return _segment_locked(store, img, out_name, predictor, cfg, client, overwrite=overwrite, resume=resume,
                               stop_after=stop_after, shuffle_blocks=shuffle_blocks, show_progress=show_progress,
                               scratch=scratch, keep_intermediates=keep_intermediates)
    finally:
        lock_cm.__exit__(None, None, None)
        try:  # a labels folder this call created and left empty
            labels_root.rmdir()
        except OSError:
            pass


def _segment_locked(store: str, img: Any, out_name: str, predictor: Any, cfg: SegmentationConfig, client: Any, *,
                    overwrite: bool, resume: bool, stop_after: str | None, shuffle_blocks: int | None,
                    show_progress: bool | None, scratch: str | os.PathLike[str] | None,
                    keep_intermediates: bool) -> SegmentationResult:
    """:func:`segment` once the labels group's lock is held."""
    import zarr

    from vollseg_dask.config import save_config
    from vollseg_dask.io.atomic import recover_dir
    from vollseg_dask.io.omezarr import array_digests, labels_state
    from vollseg_dask.runtime import StageTimer, get_client

    axes = img.axes
    vol = tuple(int(img.shape[axes.index(a)]) for a in "zyx")
    n_t = int(img.shape[axes.index("t")]) if "t" in axes else 1
    n_c = int(img.shape[axes.index("c")]) if "c" in axes else 1

    labels_dir = Path(store) / "labels" / out_name
    recover_dir(labels_dir)  # a replacement killed between its two renames
    lay = RunLayout(store, out_name, scratch)
    fp_path = lay.path / "fingerprint.json"
    predictor.prepare(store, n_t=n_t, volume_shape=vol)
    image_arr = zarr.open_array(store=store, path=img.path, mode="r")
    digests = array_digests(image_arr) if "t" in axes else [hashlib.sha256(
        ":".join(array_digests(image_arr)).encode()).hexdigest()[:16]]
    fp = _fingerprint(cfg, predictor, img.shape, axes)
    fp_text = json.dumps(fp, sort_keys=True)
    # the labels' identity: settings and the image's content, whole and per time point
    fps_t = [hashlib.sha256(f"{fp_text}:{d}".encode()).hexdigest()[:16] for d in digests]
    fp_id = hashlib.sha256(":".join(fps_t).encode()).hexdigest()[:16]
    state = labels_state(store, out_name)
    labels_exist = labels_dir.exists() and any(labels_dir.iterdir())
    if resume and labels_exist and state.get("complete") and state.get("fingerprint") == fp_id:
        _drop_scratch(lay, keep_intermediates)
        return _finished_result(store, out_name, labels_dir, lay)
    if labels_exist and not overwrite:
        raise StoreExistsError(f"labels {out_name!r} already exist in {store} (made from other settings or another "
                               "input); pass overwrite=True (--overwrite) to replace them")
    ours = fp_path.is_file() and fp_path.read_text(encoding="utf-8") == fp_text
    if fp_path.is_file() and not ours and not overwrite and resume:
        raise ConfigError(f"an unfinished segmentation run {lay.path} used another configuration, predictor or "
                          "input image; pass overwrite=True to discard it")
    if not (ours and resume):
        shutil.rmtree(lay.path, ignore_errors=True)

    lay.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(fp_path, fp_text)
    save_config(cfg, lay.path / "config.yaml")
    # a time point whose image changed since the interrupted run re-runs all its units; the others resume
    dig_path = lay.state("image_digests.json")
    if dig_path.is_file():
        old = json.loads(dig_path.read_text(encoding="utf-8"))
        for t, (a, b) in enumerate(zip(old, digests, strict=False)):
            if a != b:
                n = lay.clear_time(t)
                LOG.warning("image of t=%d changed since the interrupted run: its %d finished unit(s) run again",
                            t, n)
    atomic_write_text(dig_path, json.dumps(digests))
    staging = f".{out_name}.staging"

    base = _plans(vol, cfg, (0, 0, 0))
    pred_plan = _plans(vol, cfg, predictor.halo)
    pad = _grid_pad(base, cfg.grid_origin)
    n_blocks = len(base)
    prob_thr = cfg.prob_threshold if cfg.prob_threshold is not None else float(predictor.prob_threshold)
    nms_thr = cfg.nms_threshold if cfg.nms_threshold is not None else float(predictor.nms_threshold)
    out_axes = axes
    out_path = f"labels/{staging}/0"
    ctx = T.RunContext(layout=lay, image_store=store, image_path=img.path, image_axes=axes, volume_shape=vol,
                       n_t=n_t, config=cfg, n_rays=int(predictor.n_rays),
                       rays_json=json.dumps(predictor.rays.to_json(), sort_keys=True), prob_threshold=float(prob_thr),
                       nms_threshold=float(nms_thr), out_path=out_path, out_axes=out_axes, out_channels=n_c,
                       pad=pad)

    shape4 = (n_t, *(v + p for v, p in zip(vol, pad, strict=True)))
    chunks4 = (1, *(min(b, n) for b, n in zip(base.block_shape, shape4[1:], strict=True)))
    lay.create_array("prob", shape4, chunks4, "float32")
    lay.create_array("mask", shape4, chunks4, "uint8")
    if cfg.flood == "distance":
        lay.create_array("distance", shape4, chunks4, "float32")
    if cfg.mode in ("vollseg", "unet"):
        lay.create_array("cc", shape4, chunks4, "uint64")
    if cfg.mode in ("vollseg", "stardist"):
        lay.create_array("prov", shape4, chunks4, "uint64")

    result = SegmentationResult(store=store, name=out_name, n_blocks=n_blocks, run_dir=str(lay.path), completed=False)
    timings = result.timings
    voxels = n_t * vol[0] * vol[1] * vol[2]
    ts = range(n_t)

    with get_client(client) as cl:
        runner = _Runner(cl, shuffle_blocks, show_progress)

        def pending(stage: str, items: list[tuple[Any, ...]], fn: Callable[..., Any],
                    args: Callable[[tuple[Any, ...]], tuple]) -> list[tuple[Callable[..., Any], tuple]]:
            out = []
            for it in items:
                t, blk = it[0], it[1] if len(it) > 1 else None
                if not lay.is_done(stage, t, None if blk is None else blk.key):
                    out.append((fn, args(it)))
            return out

        # ---------------------------------------------------------------- S1
        with StageTimer("S1 predict", timings, voxels=voxels):
            pshared = runner.share(predictor)
            units = pending("predict", [(t, b) for t in ts for b in pred_plan], T.predict,
                            lambda it: (ctx, pshared, it[0], it[1]))
            runner.run(units, "S1 predict")
        pred_info = {(t, b.key): lay.read_marker("predict", t, b.key) for t in ts for b in pred_plan}
        if stop_after == "predict":
            result.n_tasks = runner.n_tasks
            return result

        # ---------------------------------------------------------------- S2 + S3 (independent: one batch)
        units = []
        if cfg.mode in ("vollseg", "stardist"):
            bytes_per = 4 * ctx.n_rays + 3 * 8 + 4
            for t in ts:
                n_cand = sum(pred_info[(t, b.key)]["n_candidates"] for b in base)
                scope = cfg.nms_scope
                if scope == "auto":
                    scope = "global" if n_cand * bytes_per <= cfg.nms_memory_budget_mb * 2**20 else "block"
                result.nms_scope[t] = scope
        with StageTimer("S2 nms + S3 components", timings, voxels=voxels):
            gather_units = []
            for t in ts:
                scope = result.nms_scope.get(t)
                if scope == "global":
                    units += pending("nms", [(t,)], T.nms_global, lambda it: (ctx, it[0]))
                elif scope == "block":
                    halo = cfg.nms_halo if cfg.nms_halo is not None else _nms_halo(lay, t, ctx)
                    for b in base:
                        grown = tuple(slice(max(0, c.start - halo), min(n, c.stop + halo))
                                      for c, n in zip(b.core, vol, strict=True))
                        keys = [o.key for o in base if _intersects(o.core, grown)]
                        if not lay.is_done("nms_block", t, b.key):
                            units.append((T.nms_block, (ctx, t, b, keys, halo)))
                    if not lay.is_done("nms", t):
                        gather_units.append((T.nms_gather, (ctx, t, [b.key for b in base])))
            if cfg.mode in ("vollseg", "unet"):
                units += pending("cc", [(t, b) for t in ts for b in base], T.cc_local, lambda it: (ctx, it[0], it[1]))
            runner.run(units, "S2 nms / S3a components")
            runner.run(gather_units, "S2 nms gather")
            if cfg.mode in ("vollseg", "unet"):
                runner.run(pending("cc_edges", [(t, b) for t in ts for b in base], T.cc_edges,
                                   lambda it: (ctx, it[0], it[1])), "S3b faces")
                keys = [b.key for b in base]
                runner.run(pending("cc_merge", [(t,) for t in ts], T.cc_merge, lambda it: (ctx, it[0], keys)),
                           "S3c merge")
        for t in ts:
            info = lay.read_marker("nms", t)
            if info is not None:
                result.nms_scope[t] = info["scope"]
        if stop_after in ("nms", "components"):
            result.n_tasks = runner.n_tasks
            return result

        # ---------------------------------------------------------------- S4
        if cfg.mode == "vollseg":
            with StageTimer("S4 seeds", timings):
                runner.run(pending("seeds", [(t,) for t in ts], T.seeds, lambda it: (ctx, it[0])), "S4 seeds")
        if stop_after == "seeds":
            result.n_tasks = runner.n_tasks
            return result

        # ---------------------------------------------------------------- S5
        if cfg.mode == "vollseg":
            with StageTimer("S5 watershed", timings, voxels=voxels):
                result.certificates = _watershed_rounds(runner, ctx, lay, cfg, vol, ts)
        elif cfg.mode == "stardist":
            with StageTimer("S5 render", timings, voxels=voxels):
                runner.run(pending("render", [(t, b) for t in ts for b in base], T.render,
                                   lambda it: (ctx, it[0], it[1])), "S5 render")
            result.certificates = {f"{t}.{b.key}": {"status": "exact", "n_disagree": 0, "n_unsafe": 0, "level": 0}
                                   for t in ts for b in base}
        else:
            result.certificates = {f"{t}.{b.key}": {"status": "exact", "n_disagree": 0, "n_unsafe": 0, "level": 0}
                                   for t in ts for b in base}
        if stop_after == "watershed":
            result.n_tasks = runner.n_tasks
            return result

        # ---------------------------------------------------------------- S6
        with StageTimer("S6 filter + relabel", timings, voxels=voxels):
            flat = {b.key: i for i, b in enumerate(base)}
            runner.run(pending("sizes", [(t, b) for t in ts for b in base], T.sizes,
                               lambda it: (ctx, it[0], it[1], flat[it[1].key])), "S6a sizes")
            unit = _ensure_labels(lay, store, staging, axes, fp_id)
            # output units follow the labels' own chunk grid (origin 0): whole chunks per unit
            out_plan = plan_blocks(vol, cfg.block_shape, 0, chunks=unit)
            covers = {o.key: [flat[b.key] for b in base if _intersects(b.core, o.core)] for o in out_plan}
            units = []
            for t in ts:
                tabs = [read_table(lay.table("sizes", t, b.key)) for b in base]
                members, roots = _merged(lay, t, base, cfg)
                kept, final = _select([_to_roots(tab, members, roots) for tab in tabs], cfg)
                result.n_objects[t] = int(len(kept))
                for o in out_plan:
                    if lay.is_done("relabel", t, o.key):
                        continue
                    parts = [tabs[i]["id"] for i in covers[o.key] if tabs[i]]
                    bid = np.unique(np.concatenate(parts)).astype(np.uint64) if parts else np.zeros(0, np.uint64)
                    # merged objects: every member ID takes its group's final label
                    rid = _map_ids(bid, members, roots)
                    idx_c = np.minimum(np.searchsorted(kept, rid), max(len(kept) - 1, 0))
                    found = (kept[idx_c] == rid) if len(kept) else np.zeros(len(bid), bool)
                    units.append((T.relabel, (ctx, t, o, covers[o.key], bid[found], final[idx_c[found]])))
            runner.run(units, "S6b relabel")
        if cfg.pyramid:
            from vollseg_dask.io.omezarr import build_pyramid

            with StageTimer("S6c pyramid", timings):
                build_pyramid(store, f"labels/{staging}", method="nearest")
        result.n_tasks = runner.n_tasks

    result.completed = True
    manifest = {
        "config": cfg.model_dump(mode="json"),
        "predictor": predictor.describe(),
        "versions": _versions(),
        "image": {"shape": list(img.shape), "axes": axes},
        "n_blocks": n_blocks,
        "grid_pad": list(pad),
        "nms_scope": {str(k): v for k, v in result.nms_scope.items()},
        "n_objects": {str(k): v for k, v in result.n_objects.items()},
        "certificates": result.certificates,
        "timings": timings,
        "n_tasks": result.n_tasks,
    }
    atomic_write_text(lay.path / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True, default=str))
    # the labels keep a summary (the full per-block certificates stay in the scratch manifest)
    summary = {k: manifest[k] for k in ("n_blocks", "nms_scope", "n_objects", "grid_pad", "predictor", "versions")}
    summary["certificates"] = {k: c for k, c in result.certificates.items() if c["status"] != "exact"}
    summary["n_exact"] = sum(1 for c in result.certificates.values() if c["status"] == "exact")
    _mark_labels(store, staging, cfg, complete=True, fingerprint=fp_id, summary=summary, fingerprints_t=fps_t)
    from vollseg_dask.io.omezarr import commit_labels

    commit_labels(store, out_name, staging)  # the old labels (if any) are replaced only now
    lay.mark_done("final", 0, None, {"n_objects": manifest["n_objects"]})
    _drop_scratch(lay, keep_intermediates)
    return result


def _drop_scratch(lay: RunLayout, keep: bool) -> None:
    """Remove a finished run's scratch folder (and its parent when that is left empty)."""
    if keep or not lay.path.exists():
        return
    shutil.rmtree(lay.path, ignore_errors=True)
    try:
        lay.path.parent.rmdir()
    except OSError:
        pass


def _finished_result(store: str, name: str, labels_dir: Path, lay: RunLayout) -> SegmentationResult:
    """The result of a finished run with the same fingerprint, from the summary saved on its labels
    (``certificates`` then lists the blocks that are not exact by construction)."""
    from vollseg_dask.io.omezarr import labels_state

    manifest = labels_state(store, name).get("run", {})
    return SegmentationResult(store=store, name=name,
                              n_objects={int(k): v for k, v in manifest.get("n_objects", {}).items()},
                              certificates=manifest.get("certificates", {}), timings={}, n_tasks=0,
                              n_blocks=int(manifest.get("n_blocks", 0)),
                              nms_scope={int(k): v for k, v in manifest.get("nms_scope", {}).items()},
                              run_dir=str(lay.path), completed=True)


def _intersects(a: Sequence[slice], b: Sequence[slice]) -> bool:
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b, strict=True))


def _nms_halo(lay: RunLayout, t: int, ctx: T.RunContext) -> int:
    """Twice the longest candidate ray of time point t (the reach of one polyhedron's overlap)."""
    longest = 0.0
    for p in lay.tables("candidates", t):
        tab = read_table(p, columns=["dist"])
        if tab and len(tab["dist"]):
            longest = max(longest, float(np.max(tab["dist"])))
    return int(math.ceil(2 * longest)) + 1


def _merged(lay: RunLayout, t: int, base: BlockPlan, cfg: SegmentationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sorted member IDs of merged groups and their roots (``merge_threshold``), else empty."""
    from vollseg_dask.kernels.watershed import merge_groups

    empty = np.zeros(0, np.uint64)
    if not cfg.merges_objects:
        return empty, empty
    parts = [read_table(lay.table("interfaces", t, b.key)) for b in base]
    parts = [p for p in parts if p and len(p["a"])]
    if not parts:
        return empty, empty
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("a", "b", "n", "s")}
    return merge_groups(cat["a"], cat["b"], cat["n"], cat["s"], cfg.merge_threshold)


def _map_ids(ids: np.ndarray, members: np.ndarray, roots: np.ndarray) -> np.ndarray:
    """``ids`` with every merged member replaced by its group's root."""
    ids = np.asarray(ids, np.uint64)
    if not len(members) or not len(ids):
        return ids
    i = np.minimum(np.searchsorted(members, ids), len(members) - 1)
    return np.where(members[i] == ids, roots[i], ids)


def _to_roots(tab: dict[str, np.ndarray], members: np.ndarray, roots: np.ndarray) -> dict[str, np.ndarray]:
    if not tab or not len(members):
        return tab
    return {**tab, "id": _map_ids(tab["id"], members, roots)}


def _select(tabs: list[dict[str, np.ndarray]], cfg: SegmentationConfig) -> tuple[np.ndarray, np.ndarray]:
    from vollseg_dask.kernels.watershed import select_objects

    parts = [t for t in tabs if t and len(t["id"])]
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint32)
    ids = np.concatenate([p["id"] for p in parts]).astype(np.uint64)
    uid, inv = np.unique(ids, return_inverse=True)
    count = np.zeros(len(uid), np.int64)
    np.add.at(count, inv, np.concatenate([p["count"] for p in parts]).astype(np.int64))
    zmin = np.full(len(uid), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(zmin, inv, np.concatenate([p["zmin"] for p in parts]).astype(np.int64))
    zmax = np.full(len(uid), -1, np.int64)
    np.maximum.at(zmax, inv, np.concatenate([p["zmax"] for p in parts]).astype(np.int64))
    return select_objects(uid, count, zmin, zmax, min_size=cfg.min_size, max_size=cfg.max_size,
                          min_z_extent=cfg.min_z_extent)


def _ensure_labels(lay: RunLayout, store: str, staging: str, axes: str, fp_id: str) -> tuple[int, int, int]:
    """Create the new labels group in its hidden staging folder once per run (a resumed run keeps
    the blocks already written there, when the staging group belongs to this run's fingerprint).

    The labels take the image's chunks (and shards). Returns their (z, y, x) storage unit.
    """
    import zarr

    from vollseg_dask.io.omezarr import create_labels, labels_state

    if not (lay.is_done("labels_created", 0) and labels_state(store, staging).get("fingerprint") == fp_id):
        lay.clear_stage("relabel")
        create_labels(store, staging.strip(".").removesuffix(".staging"), dtype="uint32", staging=staging)
        _mark_labels(store, staging, None, complete=False, fingerprint=fp_id)
        lay.mark_done("labels_created", 0)
    arr = zarr.open_array(store=store, path=f"labels/{staging}/0", mode="r")
    unit = arr.shards or arr.chunks
    return tuple(int(unit[axes.index(a)]) for a in "zyx")  # type: ignore[return-value]


def _mark_labels(store: str, folder: str, cfg: SegmentationConfig | None, *, complete: bool, fingerprint: str,
                 summary: dict[str, Any] | None = None, fingerprints_t: list[str] | None = None) -> None:
    """Record on the labels group whether it is complete, the fingerprint of what made it, and the
    run's summary."""
    import zarr

    group = zarr.open_group(str(Path(store) / "labels" / folder), mode="r+")
    info: dict[str, Any] = {"complete": complete, "fingerprint": fingerprint}
    if fingerprints_t is not None:
        info["fingerprints_t"] = list(fingerprints_t)
    if summary is not None:
        info["run"] = json.loads(json.dumps(summary, default=str))
    if cfg is not None:
        info["segmentation_config"] = cfg.model_dump(mode="json")
    group.attrs.update({"vollseg_dask": info})


def _reach(lay: RunLayout, t: int, base: BlockPlan, cfg: SegmentationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per block, the box holding every U-Net component that reaches its core (from the S3 table)."""
    from vollseg_dask.kernels.components import box_reach

    cols = ["z0", "y0", "x0", "z1", "y1", "x1"]
    comp = read_table(lay.table("components", t), columns=cols)
    if comp and len(comp["z0"]):
        lo = np.stack([comp["z0"], comp["y0"], comp["x0"]], axis=1)
        hi = np.stack([comp["z1"], comp["y1"], comp["x1"]], axis=1) + 1
    else:
        lo = hi = np.zeros((0, 3), np.int64)
    # with a mask dilation a block certifies its core grown by the growth's reach: take the boxes
    # meeting that grown core (boxes grown by the reach, then shrunk back)
    r = T.ws_rounds(cfg)
    reach_lo, reach_hi = box_reach(lo - r, hi + r, base.boundaries)
    reach_lo, reach_hi = reach_lo + r, reach_hi - r
    if cfg.refine_mask:
        # polyhedra added into the mask can join components: widen by the largest of them
        ids = read_table(lay.table("refine", t)).get("id", np.zeros(0, np.uint64))
        if len(ids):
            star = read_table(lay.table("stardist", t), columns=["id", *[f"b{c}" for c in cols]])
            sel = np.isin(star["id"], ids)
            ext = max(int((star[f"b{a}1"][sel] - star[f"b{a}0"][sel]).max()) + 1 for a in "zyx")
            reach_lo = reach_lo - ext
            reach_hi = reach_hi + ext
    if cfg.floods_foreground:
        # StarDist's foreground joins the flood region: its components (usually the whole tissue) are
        # not in the S3 table, so every block reads its core plus the cap and is certified by agreement
        far = np.iinfo(np.int64).max // 4
        reach_lo = np.full_like(reach_lo, -far)
        reach_hi = np.full_like(reach_hi, far)
    return reach_lo, reach_hi


def _ws_block(b, reach_lo: np.ndarray, reach_hi: np.ndarray, cap: Sequence[int], vol: Sequence[int],
              min_ext: int = 0):
    """The block with its watershed read region: its components' box, each side capped at ``cap``.

    ``min_ext`` (the reach of the growth into a dilated mask, plus one) is read on every side whatever
    the cap, so that growth is exact on the core.
    """
    from vollseg_dask.plan import Block

    r_lo, r_hi = reach_lo[b.index], reach_hi[b.index]
    read = []
    for a, c in enumerate(b.core):
        # one voxel beyond the components' box: the certificate then sees that none continues
        lim = max(int(cap[a]), min_ext)
        lo = c.start - min(max(c.start - int(r_lo[a]) + 1, min_ext), lim)
        hi = c.stop + min(max(int(r_hi[a]) + 1 - c.stop, min_ext), lim)
        read.append(slice(max(lo, 0), min(hi, int(vol[a]))))
    return Block(index=b.index, core=b.core, read=tuple(read))


def _watershed_rounds(runner: _Runner, ctx: T.RunContext, lay: RunLayout, cfg: SegmentationConfig,
                      vol: tuple[int, int, int], ts: range) -> dict[str, dict[str, Any]]:
    """S5 with certificates.

    Each block reads the box of the U-Net components that reach its core (known exactly from the
    S3 component table), each side capped at ``cfg.halo``: a block whose components fit is exact
    by construction (and certified so). Blocks that are not exact are checked against their
    neighbours' writes; disagreeing ones are re-run with the cap doubled, at most
    ``cfg.max_escalations`` times.
    """
    base = _plans(vol, cfg, (0, 0, 0))
    flat = {b.key: i for i, b in enumerate(base)}
    reach = {t: _reach(lay, t, base, cfg) for t in ts}
    rounds = T.ws_rounds(cfg)
    min_ext = rounds + 1 if rounds else 0

    def block(t: int, key: str, level: int):
        cap = tuple(h * 2**level for h in cfg.halo)
        return _ws_block(base.blocks[flat[key]], *reach[t], cap, vol, min_ext)

    # a block whose doubled read region would not fit the workers' memory budget is named in a warning
    # with the settings to change
    from vollseg_dask.runtime import memory_headroom

    # from the limit alone, never from a worker's momentary RSS: the escalation plan must be the same
    # in every run (a resumed or fault-recovered run gives byte-identical labels)
    limit = runner.memory_limit()
    max_read = T.ws_max_read_voxels(memory_headroom(limit, T.WS_WORKER_BASELINE_BYTES))

    def fits(t: int, key: str, level: int) -> bool:
        return math.prod(s.stop - s.start for s in block(t, key, level).read) <= max_read

    state_path = lay.state("ws_levels.json")
    levels: dict[str, int] = {f"{t}.{b.key}": 0 for t in ts for b in base}
    if state_path.is_file():
        levels.update(json.loads(state_path.read_text(encoding="utf-8")))
    disagree: dict[str, int] = {}
    while True:
        units = []
        for t in ts:
            for b in base:
                lv = levels[f"{t}.{b.key}"]
                m = lay.read_marker("ws", t, b.key)
                if m is None or m.get("level") != lv:
                    units.append((T.watershed, (ctx, t, block(t, b.key, lv), lv)))
        runner.run(units, "S5 watershed")
        infos = {f"{t}.{b.key}": lay.read_marker("ws", t, b.key) for t in ts for b in base}
        check_keys = [k for k, v in infos.items() if not v["exact"]]
        checks = []
        for k in check_keys:
            t_s, key = k.split(".", 1)
            checks.append((T.ws_check, (ctx, int(t_s), block(int(t_s), key, levels[k]), levels[k])))
        counts = runner.run(checks, "S5 agreement")
        disagree = dict(zip(check_keys, counts, strict=True))
        escalate = [k for k, n in disagree.items() if n > 0 and levels[k] < cfg.max_escalations]
        over = [k for k in escalate if not fits(int(k.split(".", 1)[0]), k.split(".", 1)[1], levels[k] + 1)]
        # warned, not withheld: withholding would make the labels depend on the cluster's memory limit
        # (a threads run and a LocalCluster run must give the same bytes)
        for k in over:
            LOG.warning("block %s: its doubled watershed halo exceeds the worker memory limit's budget (%.2f GiB, "
                        "%d voxels per read region); raise the cluster's memory_limit or lower "
                        "block_shape/halo", k, limit / 2**30, max_read)
        if not escalate:
            break
        for k in escalate:
            levels[k] += 1
        # persist the plan before executing it: a resumed run takes the same decisions
        atomic_write_text(state_path, json.dumps(levels, sort_keys=True))
    certs: dict[str, dict[str, Any]] = {}
    for k, info in infos.items():
        n = disagree.get(k, 0)
        status = "exact" if info["exact"] else ("agreed" if n == 0 else "disagree")
        certs[k] = {"status": status, "n_disagree": int(n), "n_unsafe": int(info["n_unsafe"]),
                    "level": int(info["level"]), "halo": info["halo"]}
        if status == "disagree":
            LOG.warning("block %s: %d voxels disagree with neighbours after %d halo doublings", k, n, info["level"])
    return certs
