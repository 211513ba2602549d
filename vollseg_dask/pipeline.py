"""The whole pipeline as one resumable run: ingest → segment → measure → track → analyse → export.

:func:`run` takes a :class:`RunConfig` (YAML/TOML via ``vollseg-dask run CONFIG``) and processes
one data set or a batch (a folder or glob of TIFF/HDF5/.npy files or OME-Zarr stores), each into
its own output folder, sharing one Dask cluster and the per-worker model cache. Every stage keeps
its own fine-grained resume state (done-markers per block or time point); on top of that a stage
that finished with the same settings is skipped as a whole. A data set that fails does not stop the
others: the summary lists it with the reason.

Output layout (``OUT`` = ``RunConfig.output``)::

    OUT/run_config.yaml            the configuration used
    OUT/summary.json               per data set: status, reason, outputs
    OUT/.vollseg.lock              held while a run is active (a second run is refused)
    OUT/<name>/image.zarr          converted input (non-Zarr inputs only; Zarr inputs are used in place)
    OUT/<name>/cells/              cell table (Parquet, partitioned by t)
    OUT/<name>/tracks/             track store (spots/, edges, tracks, tracklets)
    OUT/<name>/tracks.xml, ctc/, napari_tracks.npz, tracks.geff   exports
    OUT/<name>/analysis/           track analysis tables and plots
    OUT/<name>/manifest.json       config, versions, inputs, per-stage status, timings, peak memory
    OUT/<name>/scratch/segment/    the segmentation's intermediates and resume state (``scratch``);
                                   removed when the data set completes unless ``keep_intermediates``
    <store>/labels/<labels_name>   the segmentation (beside the image, NGFF labels group): the only
                                   thing a run writes into an input store, under the lock
                                   ``<store>/labels/.<labels_name>.lock``, swapped in when complete
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from vollseg_dask.config import StrictModel
from vollseg_dask.errors import ConfigError, StoreNotFoundError
from vollseg_dask.measure import MeasureConfig
from vollseg_dask.runtime import ClusterConfig
from vollseg_dask.segmentation.config import SegmentationConfig
from vollseg_dask.tracking.config import TrackerConfig

LOG = logging.getLogger(__name__)

__all__ = [
    "STAGES",
    "InputConfig",
    "PredictorConfig",
    "AnalyzeConfig",
    "ExportConfig",
    "RunConfig",
    "DatasetReport",
    "RunReport",
    "run",
    "resolve_inputs",
    "run_lock",
]

#: pipeline stages in order
STAGES = ("ingest", "segment", "measure", "track", "analyze", "export")
_INPUT_SUFFIXES = (".tif", ".tiff", ".h5", ".hdf5", ".npy", ".zarr")


class InputConfig(StrictModel):
    """What to process."""

    path: str = Field(
        "input.ome.zarr",
        description="An OME-Zarr store, a TIFF/HDF5/.npy file, a folder of such inputs, or a glob pattern "
        "(several inputs = batch mode: each is processed as its own data set).",
    )
    axes: str | None = Field(None, description="Axes of non-Zarr inputs (e.g. TZYX); default from file metadata.")
    voxel_size: tuple[float, float, float] | None = Field(
        None, description="Voxel size (z, y, x) in µm of non-Zarr inputs; default from file metadata."
    )
    frame_interval: float | None = Field(
        None, gt=0, description="Frame interval of non-Zarr inputs, in time_unit; default from file metadata."
    )
    time_unit: str | None = Field(
        None, description="Unit of frame_interval for non-Zarr inputs ('second', 'minute', 'hour'...); "
        "default from file metadata."
    )
    dataset: str | None = Field(None, description="HDF5 dataset name (default: the only/`raw` image dataset).")


class PredictorConfig(StrictModel):
    """Where the network outputs come from."""

    kind: Literal["network", "ground-truth"] = Field(
        "network",
        description="network: StarDist3D + U-Net (+ N2V) models; ground-truth: maps derived from a ground-truth "
        "labels group (synthetic data, tests and benchmarks only).",
    )
    models: str = Field("bundled", description="'bundled' (models shipped in the package) or a folder holding "
                        "stardist/, unet/ and optionally n2v/ model folders.")
    denoise: bool = Field(False, description="Run the Noise2Void model first (needs an n2v/ model folder).")
    stardist: str | None = Field(None, description="StarDist3D model folder; replaces models' stardist/.")
    unet: str | None = Field(None, description="U-Net model folder (vollseg-dask's or an upstream csbdeep CARE "
                             "folder, whose mask is its output above the per-t Otsu threshold); replaces models' "
                             "unet/. Not needed with segment.mode 'stardist'.")
    n2v: str | None = Field(None, description="Noise2Void model folder (vollseg-dask's or the n2v package's); "
                            "always used when given.")
    unet_threshold: float | None = Field(None, description="CARE U-Net: fixed threshold on its output instead "
                                         "of the per-t Otsu threshold.")
    rescale: bool = Field(True, description="Scale-aware inference: resample blocks to the model's voxel size "
                          "(model_scale.json of the StarDist folder).")
    scale: tuple[float, float, float] | None = Field(None, description="Store voxel / model voxel per axis "
                                                     "(default: from the voxel sizes).")
    object_diameter: float | None = Field(None, gt=0, description="Typical object diameter in the data (µm).")
    ground_truth: str = Field("ground_truth", description="Labels group used by the ground-truth predictor.")


class AnalyzeConfig(StrictModel):
    """Track analysis (stage S9)."""

    moving_average: int | None = Field(None, ge=1, description="Centred moving-average window (frames) applied "
                                       "to intensity before the FFT; None = none.")
    normalize: Literal["zscore", "max", "none"] = Field("zscore", description="Intensity normalisation before "
                                                       "the FFT.")
    intensity_column: str | None = Field(None, description="Spot column of the oscillation signal; None = total "
                                         "intensity of channel 0.")
    formats: list[Literal["png", "svg", "pdf"]] = Field(default_factory=lambda: ["png"], description="Plot formats.")
    track_plots: int = Field(10, ge=0, description="Tracks that get their own intensity/distance plots.")


class ExportConfig(StrictModel):
    """Exports written after tracking."""

    formats: list[Literal["trackmate", "ctc", "napari", "geff"]] = Field(
        default_factory=lambda: ["trackmate", "ctc", "napari", "geff"],
        description="Track export formats (GEFF: the graph exchange format; vollseg_dask.exports).",
    )
    ctc_masks: bool = Field(True, description="Write CTC masks relabelled from the labels group.")


class RunConfig(StrictModel):
    """Configuration of a whole run (``vollseg-dask run CONFIG``)."""

    input: InputConfig = Field(default_factory=InputConfig, description="Input data set(s).")
    output: str = Field("vollseg_output", description="Output folder (one sub-folder per data set).")
    labels_name: str = Field("cells", description="Name of the labels group the segmentation writes.")
    scratch: str | None = Field(None, description="Folder for each data set's intermediates and resume state "
                                "(<scratch>/<data set>/segment); None = OUT/<data set>/scratch. Node-local disk "
                                "is fastest. Never inside the input store.")
    keep_intermediates: bool = Field(False, description="Keep the scratch folder after a data set completes "
                                     "(it is removed by default).")
    stages: list[Literal["ingest", "segment", "measure", "track", "analyze", "export"]] = Field(
        default_factory=lambda: list(STAGES), description="Stages to run, in pipeline order."
    )
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Dask cluster.")
    predictor: PredictorConfig = Field(default_factory=PredictorConfig, description="Network outputs.")
    segment: SegmentationConfig = Field(default_factory=SegmentationConfig, description="Segmentation.")
    measure: MeasureConfig = Field(default_factory=MeasureConfig, description="Cell table.")
    track: TrackerConfig = Field(default_factory=TrackerConfig, description="Tracking.")
    analyze: AnalyzeConfig = Field(default_factory=AnalyzeConfig, description="Track analysis.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Track exports.")

    @model_validator(mode="after")
    def _check_names(self) -> RunConfig:
        if self.labels_name in ("", self.predictor.ground_truth) or "/" in self.labels_name:
            raise ConfigError(f"labels_name {self.labels_name!r} is empty, has '/', or equals the ground truth")
        return self

    def model_dump_config(self) -> dict[str, Any]:
        """JSON-able dict of every setting."""
        return self.model_dump(mode="json")


@dataclass
class DatasetReport:
    """Outcome of one data set."""

    name: str
    input: str
    status: str = "pending"  # done | failed | pending
    reason: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: objects found: ``cells`` (rows of the cell table), ``spots``/``tracks`` (tracking), when known
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class RunReport:
    """Outcome of :func:`run`."""

    output: Path
    datasets: list[DatasetReport]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(d.status == "done" for d in self.datasets)

    def summary(self) -> str:
        """Short human summary: one block per data set with its outputs or failure reason."""
        lines = [f"vollseg-dask run: {len(self.datasets)} data set(s) in {self.seconds:.1f} s -> {self.output}"]
        for d in self.datasets:
            lines.append(f"  [{d.status}] {d.name}  ({d.input})")
            if d.reason:
                lines.append(f"      reason: {d.reason}")
            for stage, rec in d.stages.items():
                rate = rec.get("voxels_per_s")
                extra = f", {rate / 1e6:.2f} Mvox/s" if rate else ""
                lines.append(f"      {stage:<8} {rec.get('status', '?'):<8} {rec.get('wall_s', 0.0):7.1f} s{extra}")
            if d.counts:
                lines.append("      found    " + ", ".join(f"{v} {k}" for k, v in d.counts.items()))
            for key, path in d.outputs.items():
                lines.append(f"      {key:<10} {path}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Inputs, lock, manifest
# ----------------------------------------------------------------------------------------------


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zattrs").is_file()
                              or (path / ".zgroup").is_file())


def resolve_inputs(spec: str) -> list[Path]:
    """Expand an input spec into data sets: one store/file, a folder of inputs, or a glob.

    Raises
    ------
    StoreNotFoundError
        Nothing matches.
    """
    path = Path(spec).expanduser()
    if _is_zarr(path) or path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in _INPUT_SUFFIXES and not p.name.startswith("."))
        if not found:
            raise StoreNotFoundError(f"folder {path} holds no input ({', '.join(_INPUT_SUFFIXES)})")
        return found
    matches = sorted(Path(m) for m in glob.glob(str(path)))
    matches = [m for m in matches if m.is_file() or _is_zarr(m)]
    if not matches:
        raise StoreNotFoundError(f"input {spec!r} matches no file or OME-Zarr store")
    return matches


def _dataset_names(paths: list[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        stem = p.name
        for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif", *_INPUT_SUFFIXES):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        base, k = stem or "dataset", 1
        while stem in names:
            k += 1
            stem = f"{base}_{k}"
        names.append(stem)
    return names


@contextmanager
def run_lock(out: Path) -> Iterator[Path]:
    """Hold ``out/.vollseg.lock`` for the duration; a second live run on ``out`` is refused.

    A lock left by a dead process on this host is taken over (logged).

    Raises
    ------
    LockedError
        Another live run holds the lock (the message names its pid, host and start time).
    """
    from vollseg_dask.locks import hold_lock

    out.mkdir(parents=True, exist_ok=True)
    with hold_lock(out / ".vollseg.lock", str(out)) as lock:
        yield lock


def _atomic_json(path: Path, data: Any) -> None:
    from vollseg_dask.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("vollseg-dask", "numpy", "scipy", "scikit-image", "dask", "distributed", "zarr", "ome-zarr",
                "pandas", "pyarrow", "tensorflow-cpu", "tensorflow", "stardist", "csbdeep"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_writable(out: Path) -> None:
    """Fail before any work when the output folder cannot be written."""
    probe = out / f".write-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise StoreNotFoundError(f"output folder {out} is not writable: {exc.strerror or exc}") from exc


def _worker_peak_rss(client: Any) -> dict[str, int]:
    """Peak resident memory (bytes) of the client process and of each worker process."""
    import resource

    def peak() -> int:
        import resource as r

        return int(r.getrusage(r.RUSAGE_SELF).ru_maxrss) * 1024

    out = {"client": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}
    if client is not None:
        try:
            out.update({str(k): int(v) for k, v in client.run(peak).items()})
        except Exception as exc:  # a worker that died: the manifest says so rather than failing the run
            LOG.warning("could not read worker memory: %s", exc)
    return out


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------


class _Dataset:
    """State of one data set during a run: folders, manifest, stage bookkeeping."""

    def __init__(self, cfg: RunConfig, source: Path, name: str, out: Path) -> None:
        self.cfg, self.source, self.name = cfg, source, name
        self.dir = out / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.report = DatasetReport(name=name, input=str(source))
        self.store: Path = source if _is_zarr(source) else self.dir / "image.zarr"
        self.scratch: Path = (Path(cfg.scratch).expanduser() / name) if cfg.scratch else self.dir / "scratch"
        #: whether finished units (blocks, time points) may be reused: they are checked against their
        #: inputs' content, so even a stage that re-runs (changed settings upstream) reuses what still holds
        self.resume_units = True
        self.manifest_path = self.dir / "manifest.json"
        self.manifest: dict[str, Any] = {
            "dataset": name,
            "input": str(source),
            "store": str(self.store),
            "config": cfg.model_dump_config(),
            "versions": _versions(),
            "stages": {},
        }
        if self.manifest_path.is_file():  # keep what earlier (resumed) runs recorded
            try:
                old = json.loads(self.manifest_path.read_text())
            except (OSError, ValueError):
                old = {}
            old.pop("error", None)
            self.manifest = {**old, **self.manifest, "stages": old.get("stages", {})}

    def done_marker(self, stage: str) -> Path:
        return self.dir / ".done" / f"{stage}.json"

    def save(self) -> None:
        _atomic_json(self.manifest_path, self.manifest)


def _input_digest(source: Path) -> str:
    """Identity of an input's content: :func:`~vollseg_dask.io.omezarr.array_digest` of an OME-Zarr
    image's level 0, or a file's size and modification time."""
    if _is_zarr(source):
        import zarr

        from vollseg_dask.io.omezarr import array_digest, open_image

        img = open_image(source)
        return array_digest(zarr.open_array(store=str(img.store), path=img.path, mode="r"))
    st = source.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _stage_settings(cfg: RunConfig, stage: str, source: Path | None = None) -> dict[str, Any]:
    """The settings a stage's result depends on (its done-marker is valid only for these); the
    ingest stage adds the input's content digest, which every later stage inherits by chaining."""
    dump = cfg.model_dump_config()
    base = {"input": dump["input"], "labels_name": cfg.labels_name}
    per = {
        "ingest": {"digest": _input_digest(source)} if source is not None else {},
        "segment": {"segment": dump["segment"], "predictor": dump["predictor"]},
        "measure": {"measure": dump["measure"]},
        "track": {"track": dump["track"]},
        "analyze": {"analyze": dump["analyze"]},
        "export": {"export": dump["export"]},
    }[stage]
    return {**base, **per}


def _make_predictor(cfg: RunConfig, store: Path) -> Any:
    if cfg.predictor.kind == "ground-truth":
        from vollseg_dask.predictors.ground_truth import GroundTruthPredictor

        return GroundTruthPredictor(str(store), cfg.predictor.ground_truth)
    from vollseg_dask.predictors.network import predictor_from_folders

    p = cfg.predictor
    return predictor_from_folders(p.models, stardist=p.stardist, unet=p.unet, n2v=p.n2v, use_n2v=p.denoise,
                                  need_unet=cfg.segment.mode != "stardist", channel=cfg.segment.channel,
                                  unet_threshold=p.unet_threshold,
                                  scale=(p.scale or "auto") if p.rescale else None, object_diameter=p.object_diameter)


def _run_stage(ds: _Dataset, stage: str, client: Any, resume: bool, upstream: str) -> tuple[str, bool]:
    """Run (or skip) one stage; return its fingerprint and whether it ran.

    A stage's fingerprint chains its own settings with its upstream stage's fingerprint, so a
    changed setting invalidates every later stage too.
    """
    from vollseg_dask.runtime import StageTimer

    cfg = ds.cfg
    marker = ds.done_marker(stage)
    settings = _stage_settings(cfg, stage, ds.source if stage == "ingest" else None)
    fp = _fingerprint({"settings": settings, "upstream": upstream})
    if resume and marker.is_file():
        try:
            held = json.loads(marker.read_text())
            if held.get("fingerprint") == fp and _outputs_unchanged(ds, stage, held.get("outputs")):
                rec = dict(ds.manifest["stages"].get(stage, {}))
                rec["status"] = "skipped"
                ds.report.stages[stage] = rec
                _collect_outputs(ds, stage)
                LOG.info("%s: %s already done, skipped", ds.name, stage)
                return fp, False
        except (OSError, ValueError):
            pass
    marker.unlink(missing_ok=True)
    record: dict[str, dict[str, Any]] = {}
    with StageTimer(stage, record) as timer:
        voxels = _STAGE_FUNCS[stage](ds, client, resume)
        if voxels:
            timer.add_voxels(int(voxels))
    rec = record[stage]
    rec["status"] = "done"
    ds.manifest["stages"][stage] = rec
    ds.report.stages[stage] = rec
    _collect_outputs(ds, stage)
    marker.parent.mkdir(exist_ok=True)
    _atomic_json(marker, {"fingerprint": fp, "settings": settings, "finished": time.time(),
                          "outputs": _output_identity(ds, stage)})
    ds.save()
    return fp, True


def _output_identity(ds: _Dataset, stage: str) -> dict[str, Any]:
    """What a finished stage's done-marker vouches for: the labels' fingerprint, the cell table's
    part digests, the other outputs' presence."""
    if stage == "segment":
        from vollseg_dask.io.omezarr import labels_fingerprint

        return {"labels": labels_fingerprint(ds.store, ds.cfg.labels_name)}
    if stage == "measure":
        return {"cells": _table_digest(ds.dir / "cells")}
    if stage == "ingest":
        return {"image": _input_digest(ds.store)} if ds.store.exists() else {}
    return {"exists": sorted(str(Path(p).relative_to(ds.dir)) for k, p in ds.report.outputs.items()
                             if Path(p).is_relative_to(ds.dir) and k not in ("image", "labels", "cells", "btrackmate"))}


def _table_digest(table: Path) -> str | None:
    """Digest of a cell table: the sha256 of every time point's part file, as its done-markers record."""
    from vollseg_dask.io.cell_table import MARKER, done_times

    if not table.is_dir():
        return None
    rows = []
    for t in sorted(done_times(table)):
        try:
            rows.append(f"{t}:{json.loads((table / f't={t}' / MARKER).read_text())['sha256']}")
        except (OSError, ValueError, KeyError):
            rows.append(f"{t}:?")
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def _outputs_unchanged(ds: _Dataset, stage: str, recorded: dict[str, Any] | None) -> bool:
    """A done-marker counts only while what it vouches for is still there, unchanged."""
    if recorded is None:  # a marker from before outputs were recorded
        return True
    try:
        if stage in ("segment", "measure", "ingest"):
            now = _output_identity(ds, stage)
        else:
            now = {"exists": [p for p in recorded.get("exists", []) if (ds.dir / p).exists()]}
    except Exception as exc:  # noqa: BLE001 - an output that cannot even be opened has changed
        now = {"error": str(exc)}
    if now != recorded:
        LOG.warning("%s: the outputs of the finished %s stage are missing or changed since (%s -> %s); "
                    "it runs again", ds.name, stage, recorded, now)
        return False
    return True


def _image_voxels(store: Path) -> int:
    from vollseg_dask.io.omezarr import open_image

    img = open_image(store)
    n = 1
    for ax, s in zip(img.axes, img.data.shape, strict=True):
        if ax != "c":
            n *= int(s)
    return n


def _check_missing_chunks(ds: _Dataset, img: Any) -> None:
    """Warn about image chunks without a file (zarr reads them as the fill value; docs: Faults).

    A writer may legitimately skip chunks equal to the fill value, so this is a warning, not an
    error; for a microscope image a missing chunk usually means a damaged or incomplete copy.
    """
    import zarr

    from vollseg_dask.io.omezarr import missing_chunks

    arr = zarr.open_array(store=str(img.store), path=img.path, mode="r")
    n, keys = missing_chunks(arr)
    ds.manifest["image_chunks_missing_at_ingest"] = n
    if n:
        more = f" and {n - len(keys)} more" if n > len(keys) else ""
        LOG.warning("%s: %d chunk(s) of image array %r in %s have no file and read as the fill value %s: %s%s; "
                    "if the image should hold data there, the store is damaged", ds.name, n, img.path, img.store,
                    arr.fill_value, ", ".join(keys), more)
        ds.manifest["missing_chunks"] = {"array": img.path, "n": n, "keys": keys}


def _stage_ingest(ds: _Dataset, client: Any, resume: bool) -> int:
    from vollseg_dask.io.omezarr import open_image

    if "segment" in ds.cfg.stages:
        from vollseg_dask.validation import check_source_volume

        # a 2-D image or time series would be converted, then refused by segmentation: refuse it now
        check_source_volume(ds.source, axes=ds.cfg.input.axes, dataset=ds.cfg.input.dataset)
    if _is_zarr(ds.source):
        img = open_image(ds.source)  # validates axes and metadata up front
        _check_missing_chunks(ds, img)
        if img.scale_assumed:
            ds.manifest["assumed_scale"] = {"scale": list(img.scale), "axes": img.axes,
                                            "reason": "the store's metadata hold no coordinateTransformations scale"}
        return 0
    from vollseg_dask.io.ingest import convert

    i = ds.cfg.input
    convert(ds.source, ds.store, axes=i.axes, voxel_size=i.voxel_size, frame_interval=i.frame_interval,
            time_unit=i.time_unit, dataset=i.dataset, overwrite=True)
    return _image_voxels(ds.store)


def _stage_segment(ds: _Dataset, client: Any, resume: bool) -> int:
    from vollseg_dask.segmentation import segment

    # client is None only for the threaded scheduler: say so, or segment() would start a cluster
    from vollseg_dask.segmentation.config import apply_model_defaults

    predictor = _make_predictor(ds.cfg, ds.store)
    # settings the run config does not give come from the model folder (segmentation_defaults.json)
    seg_cfg, applied = apply_model_defaults(ds.cfg.segment, getattr(predictor, "segmentation_defaults", {}))
    if applied:
        LOG.warning("%s: using the model's segmentation defaults %s", ds.name, applied)
        ds.manifest["segmentation_defaults_used"] = applied
    # the run owns its labels group: changed settings or input replace it (atomically, when complete)
    res = segment(ds.store, ds.cfg.labels_name, predictor, seg_cfg,
                  client if client is not None else ds.cfg.cluster, overwrite=True, resume=ds.resume_units,
                  scratch=ds.scratch / "segment", keep_intermediates=ds.cfg.keep_intermediates)
    ds.manifest["segment_blocks"] = {
        "n_blocks": res.n_blocks,
        "n_tasks": res.n_tasks,
        "n_objects": {str(k): v for k, v in res.n_objects.items()},
        "certificates": res.certificates,
        "all_certified": res.all_certified,
        "timings": res.timings,
    }
    return _image_voxels(ds.store)


def _check_chunks_still_there(ds: _Dataset) -> None:
    """Image chunks that had a file at the ingest check and lost it since are damage, not fill value:
    measuring would read them as zeros (mean intensity 0 for every cell there)."""
    import zarr

    from vollseg_dask.errors import InvalidDataError
    from vollseg_dask.io.omezarr import missing_chunks, open_image

    before = ds.manifest.get("image_chunks_missing_at_ingest")
    if not isinstance(before, int):
        return
    img = open_image(ds.store)
    n, keys = missing_chunks(zarr.open_array(store=str(img.store), path=img.path, mode="r"))
    if n > before:
        raise InvalidDataError(f"{n - before} chunk(s) of image array {img.path!r} in {img.store} disappeared since "
                               f"the ingest check ({n} missing now, {before} then; first: {', '.join(keys)}); "
                               "restore them and run again")


def _stage_measure(ds: _Dataset, client: Any, resume: bool) -> int:
    from vollseg_dask.measure import measure_cells

    _check_chunks_still_there(ds)
    from vollseg_dask.errors import StoreExistsError

    cfg = ds.cfg.measure.model_copy(update={"labels": ds.cfg.labels_name})
    table = ds.dir / "cells"
    try:
        # time points measured from labels that have not changed since are kept
        res = measure_cells(ds.store, table, config=cfg, overwrite=not ds.resume_units,
                            csv_btrackmate=ds.dir / "cells_btrackmate.csv")
    except StoreExistsError:
        if not (table / "_manifest.json").is_file():
            raise
        # this run's own table, made with other measure settings: replace it (atomically)
        res = measure_cells(ds.store, table, config=cfg, overwrite=True, csv_btrackmate=ds.dir / "cells_btrackmate.csv")
    ds.manifest["measure_rows"] = res.n_rows
    if res.n_rows == 0:
        LOG.warning("%s: no cells found (empty labels %r): the cell table, tracks and exports are empty",
                    ds.name, ds.cfg.labels_name)
    return int(res.voxels)


def _stage_track(ds: _Dataset, client: Any, resume: bool) -> int:
    from vollseg_dask.tracking import track

    # the image's calibration (t scale and unit, recorded in the cell table) is the truth unless the
    # user set frame_interval/time_units on purpose: track() applies it (tracking.driver.with_calibration)
    tcfg = ds.cfg.track
    res = track(ds.dir / "cells", ds.dir / "tracks", tcfg, overwrite=True, progress=None)
    ds.manifest["tracking"] = {k: v for k, v in vars(res).items() if isinstance(v, int | float | str)}
    return 0


def _stage_analyze(ds: _Dataset, client: Any, resume: bool) -> int:
    from vollseg_dask.analysis import run_analysis

    a = ds.cfg.analyze
    run_analysis(ds.dir / "tracks", ds.dir / "analysis", moving_average=a.moving_average, normalize=a.normalize,
                 intensity_column=a.intensity_column, formats=a.formats, track_plots=a.track_plots, overwrite=True)
    return 0


def _stage_export(ds: _Dataset, client: Any, resume: bool) -> int:
    from vollseg_dask.exports import export_tracks
    from vollseg_dask.io.omezarr import open_labels

    labels = open_labels(ds.store, ds.cfg.labels_name)
    for fmt in ds.cfg.export.formats:
        export_tracks(ds.dir / "tracks", fmt, ds.dir / _EXPORT_PATHS[fmt], overwrite=True,
                      labels=labels if fmt != "ctc" or ds.cfg.export.ctc_masks else None,
                      labels_name=ds.cfg.labels_name,
                      tracker_settings=ds.cfg.track.to_trackmate() if fmt == "trackmate" else None)
    return 0


#: Where each export format is written inside a data set's folder.
_EXPORT_PATHS = {"trackmate": "tracks.xml", "ctc": "ctc", "napari": "napari_tracks.npz", "geff": "tracks.geff"}


_STAGE_FUNCS = {
    "ingest": _stage_ingest,
    "segment": _stage_segment,
    "measure": _stage_measure,
    "track": _stage_track,
    "analyze": _stage_analyze,
    "export": _stage_export,
}


def _collect_outputs(ds: _Dataset, stage: str) -> None:
    o = ds.report.outputs
    if stage == "ingest":
        o["image"] = str(ds.store)
    elif stage == "segment":
        o["labels"] = f"{ds.store}/labels/{ds.cfg.labels_name}"
    elif stage == "measure":
        o["cells"] = str(ds.dir / "cells")
        o["btrackmate"] = str(ds.dir / "cells_btrackmate.csv")
    elif stage == "track":
        o["tracks"] = str(ds.dir / "tracks")
    elif stage == "analyze":
        o["analysis"] = str(ds.dir / "analysis")
    elif stage == "export":
        for fmt in ds.cfg.export.formats:
            o[fmt] = str(ds.dir / _EXPORT_PATHS[fmt])


def _counts(manifest: dict[str, Any], stages: dict[str, Any]) -> dict[str, int]:
    """Cells, spots and tracks recorded by the stages this run did or skipped as already done."""
    out: dict[str, int] = {}
    if "measure" in stages and isinstance(manifest.get("measure_rows"), int):
        out["cells"] = manifest["measure_rows"]
    tracking = manifest.get("tracking") or {}
    for key in ("n_spots", "n_tracks"):
        if "track" in stages and isinstance(tracking.get(key), int):
            out[key[2:]] = tracking[key]
    return out


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def run(config: RunConfig | dict[str, Any] | str | os.PathLike[str], *, client: Any = None,
        resume: bool = True) -> RunReport:
    """Run the pipeline described by ``config`` on every input data set.

    Parameters
    ----------
    config : RunConfig, dict, or path of a YAML/TOML file
        The run's settings; saved as ``OUT/run_config.yaml``.
    client : distributed.Client, address, ClusterConfig or None
        Where to compute; ``None`` = ``config.cluster`` (default: a local cluster sized to the
        machine). A client or cluster passed in is never closed.
    resume : bool
        Skip stages (and blocks, time points) that a previous run with the same settings finished.
        ``False`` recomputes everything.

    Returns
    -------
    RunReport
        Per data set: status, failure reason, outputs, stage timings.

    Raises
    ------
    LockedError
        Another run is using the output folder.
    StoreNotFoundError
        No input matches, or the output folder is not writable.
    ModelNotFoundError, ConfigError
        With ``predictor.kind="network"``: the models folder, a model sub-folder, its ``config.json``
        or weights are missing, or a folder holds the wrong kind of model (checked before any data
        set is touched). Bad input of one data set (2-D image, NaN, ...) fails that data set only,
        with the reason in its report.
    """
    from vollseg_dask.config import load_config, parse_config, save_config
    from vollseg_dask.runtime import get_client

    if isinstance(config, RunConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = parse_config(RunConfig, config, source="run config")
    else:
        cfg = load_config(RunConfig, config)
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stages {unknown}; choose from {STAGES}")
    stages = [s for s in STAGES if s in cfg.stages]

    out = Path(cfg.output).expanduser()
    inputs = resolve_inputs(cfg.input.path)
    if "segment" in stages and cfg.predictor.kind == "network":
        from vollseg_dask.validation import check_models

        # a missing or wrong model folder fails the whole run here, before any data set is touched
        p = cfg.predictor
        check_models(p.models, denoise=p.denoise, stardist=p.stardist, unet=p.unet, n2v=p.n2v,
                     need_unet=cfg.segment.mode != "stardist")
    _check_writable(out)
    t0 = time.perf_counter()
    reports: list[DatasetReport] = []
    with run_lock(out):
        from vollseg_dask.io.atomic import sweep_temporaries

        sweep_temporaries(out)  # temporaries of a killed run (we hold the lock: nobody else writes here)
        save_config(cfg, out / "run_config.yaml")
        with get_client(client if client is not None else cfg.cluster) as dask_client:
            for source, name in zip(inputs, _dataset_names(inputs), strict=True):
                ds = _Dataset(cfg, source, name, out)
                ds.resume_units = resume
                reports.append(ds.report)
                try:
                    with _labels_lock(ds, stages):
                        upstream, forced = "", False
                        for stage in stages:
                            # once a stage has recomputed, everything after it must too
                            upstream, ran = _run_stage(ds, stage, dask_client, resume and not forced, upstream)
                            forced = forced or ran
                    ds.report.status = "done"
                    if not cfg.keep_intermediates:
                        _remove_scratch(ds)
                except Exception as exc:
                    # A failing data set must not stop the batch: record why and go on.
                    ds.report.status = "failed"
                    ds.report.reason = f"{type(exc).__name__}: {exc}"
                    ds.manifest["error"] = {"reason": ds.report.reason, "traceback": traceback.format_exc()}
                    LOG.error("data set %s failed: %s", name, ds.report.reason)
                ds.report.counts = _counts(ds.manifest, ds.report.stages)
                ds.manifest["status"] = ds.report.status
                ds.manifest["peak_rss_bytes"] = _worker_peak_rss(dask_client)
                try:
                    ds.save()
                except OSError as exc:  # a full disk must not hide the data set's own outcome
                    _save_failed(ds, exc)
        report = RunReport(output=out, datasets=reports, seconds=time.perf_counter() - t0)
        try:
            _atomic_json(out / "summary.json", {
                "seconds": report.seconds,
                "datasets": [vars(d) for d in reports],
            })
        except OSError as exc:
            LOG.error("could not write %s: %s", out / "summary.json", exc)
    return report


def _save_failed(ds: _Dataset, exc: OSError) -> None:
    """The manifest could not be written (disk full): the report says so; nothing half-written stays."""
    LOG.error("data set %s: could not write %s: %s", ds.name, ds.manifest_path, exc)
    if ds.report.status == "done":
        ds.report.status = "failed"
    note = f"manifest not written: {type(exc).__name__}: {exc}"
    ds.report.reason = f"{ds.report.reason}; {note}" if ds.report.reason else note


@contextmanager
def _labels_lock(ds: _Dataset, stages: list[str]) -> Iterator[None]:
    """Hold the labels group's lock while this data set writes or reads it (segment, measure, export),
    so that another run cannot replace the labels under it; the segmentation re-enters it."""
    if not {"segment", "measure", "export"} & set(stages) or not ds.store.exists():
        yield
        return
    from vollseg_dask.locks import hold_lock

    labels = ds.store / "labels"
    created = not labels.exists()
    try:
        cm = hold_lock(labels / f".{ds.cfg.labels_name}.lock", f"labels {ds.cfg.labels_name!r} of {ds.store}",
                       reentrant=True)
        cm.__enter__()
    except PermissionError as exc:
        raise StoreNotFoundError(f"cannot write labels {ds.cfg.labels_name!r} into {ds.store}: "
                                 f"{exc.strerror or exc} (a read-only input store: copy it somewhere writable)"
                                 ) from exc
    try:
        yield
    finally:
        cm.__exit__(None, None, None)
        if created:
            try:
                labels.rmdir()
            except OSError:
                pass


def _remove_scratch(ds: _Dataset) -> None:
    import shutil

    shutil.rmtree(ds.scratch, ignore_errors=True)
    if ds.cfg.scratch:
        try:
            ds.scratch.parent.rmdir()
        except OSError:
            pass
