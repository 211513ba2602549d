"""Segmentation accuracy on real third-party data: bundled vs fine-tuned models, VollSeg vs StarDist vs U-Net.

Data (``<data>/segmentation/plantseg/``, see the data folder's ``PROVENANCE.md``):

* ``sample_ovule.h5``: confocal *Arabidopsis* ovule, membrane stain, 32 x 128 x 128, voxel
  0.235 x 0.15 x 0.15 µm, 50 densely packed cells;
* ``1135_mini.h5``, ``1136_mini.h5``: noisy confocal nuclei crops, 100³, voxel 0.284 x 0.127 x 0.127 µm,
  54 / 32 nuclei.

Each HDF5 file (or a crop of it) is ingested with :func:`vollseg_dask.io.ingest.convert` into an
OME-Zarr image (calibration from ``element_size_um``) with its ground truth as the labels group
``ground_truth``; :func:`vollseg_dask.segmentation.segment` writes each mode's labels beside it and
:func:`vollseg_dask.evaluate.evaluate_store` scores them (IoU τ = 0.1 ... 0.9, precision, recall, F1,
AP = TP / (TP + FP + FN), mean matched IoU, MSE and SSIM of the binarised masks).

Model sets
----------
``bundled``
    The models shipped in ``vollseg_dask/models`` (trained on synthetic *membranes* at 2.0 x 0.5 x
    0.5 µm), no Noise2Void (both model sets are compared without denoising). The predictor does not
    resample to the model's voxel size, so the input is given three ways (``scaling``):
    ``native`` (as acquired), ``model_voxel`` (resampled to 2.0 x 0.5 x 0.5 µm, what the model
    folder's ``voxel_size`` asks for) and ``cell_matched`` (resampled so that the median cell extent
    per axis of the *training part's* ground truth equals that of the synthetic training tissue: a
    user would estimate the object size by eye; here the training labels stand in for that estimate).
    Labels are mapped back to the original grid by nearest neighbour before scoring.
``bundled_thr``
    Bundled weights, StarDist thresholds re-optimised on the training part (native scale).
``finetuned``
    StarDist and U-Net initialised from the bundled weights (``TrainingConfig.init_from="bundled"``),
    trained on the training part at native scale, StarDist thresholds optimised on the training part.

Splits (train and test voxels disjoint): ovule, train x < 64 and test x >= 64; nuclei, train on
``1135_mini`` and test on ``1136_mini`` (with ``--reverse`` also the other way round). The bundled models are
also scored on the same test parts, so every model set is compared on identical voxels, and on the
whole volumes (section (a)).

Usage (from the repository root)::

    nice -n 5 .venv/bin/python scripts/evaluate_real_data.py --data /work/shared/data --out /tmp/real_eval
    nice -n 5 .venv/bin/python scripts/evaluate_real_data.py --data ../shared/data --out OUT --bundled-only

Writes ``OUT/results.json`` (every τ, settings, seconds), ``OUT/results.md`` (tables at IoU 0.5 and 0.7)
and the paper's plots under ``OUT/plots/<data set>/<model set>/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LOG = logging.getLogger("evaluate_real_data")

PLANTSEG = Path("segmentation") / "plantseg"
GT_NAME = "ground_truth"
THREADS = {"kind": "threads", "n_workers": 1}
#: voxel size (z, y, x) µm of the bundled models' training data (their config ``voxel_size``)
MODEL_VOXEL = (2.0, 0.5, 0.5)
#: IoU thresholds shown in the Markdown tables (results.json holds 0.1 ... 0.9)
TABLE_TAUS = (0.5, 0.7)


@dataclass(frozen=True)
class DataSpec:
    """One real data file: name, HDF5 file under ``segmentation/plantseg`` and its kind of stain."""

    name: str
    file: str
    stain: str  # "membrane" or "nuclei"


DATA = {
    "ovule": DataSpec("ovule", "sample_ovule.h5", "membrane"),
    "nuclei_1135": DataSpec("nuclei_1135", "1135_mini.h5", "nuclei"),
    "nuclei_1136": DataSpec("nuclei_1136", "1136_mini.h5", "nuclei"),
}


# ------------------------------------------------------------------------------------------ data
def data_path(root: str | os.PathLike[str], spec: DataSpec) -> Path:
    """Path of a data file; FileNotFoundError (the project's StoreNotFoundError) when missing."""
    from vollseg_dask.errors import StoreNotFoundError

    p = Path(root) / PLANTSEG / spec.file
    if not p.is_file():
        raise StoreNotFoundError(f"real data file not found: {p} (see the shared data folder's PROVENANCE.md)")
    return p


def read_ground_truth(h5: str | os.PathLike[str]) -> np.ndarray:
    """The ``label`` dataset of a PlantSeg HDF5 file, shape (z, y, x), as uint32."""
    import h5py

    with h5py.File(h5, "r") as f:
        if "label" not in f:
            from vollseg_dask.errors import StoreNotFoundError

            raise StoreNotFoundError(f"{h5} has no 'label' dataset (has {sorted(f)})")
        return np.asarray(f["label"][...]).astype(np.uint32)


def ingest(h5: str | os.PathLike[str], out: str | os.PathLike[str],
           region: tuple[slice, slice, slice] | None = None) -> tuple[Path, tuple[float, float, float]]:
    """Ingest the ``raw`` dataset of ``h5`` (or ``region`` of it) into an OME-Zarr store with labels.

    The whole file goes through :func:`vollseg_dask.io.ingest.convert` (voxel size from the file's
    ``element_size_um``); a region is cropped from that store and written with the same calibration.
    The ground truth (``label``, same region) becomes the labels group ``ground_truth`` (uint32).

    Parameters
    ----------
    h5 : path
        PlantSeg HDF5 file with datasets ``raw`` and ``label`` of shape (z, y, x).
    out : path
        Store to create (replaced if present).
    region : tuple of 3 slices, optional
        Crop (z, y, x) in voxels; None = the whole volume.

    Returns
    -------
    (pathlib.Path, (float, float, float))
        The store and its voxel size (z, y, x) in µm.
    """
    from vollseg_dask.io.ingest import convert
    from vollseg_dask.io.omezarr import create_labels

    out = Path(out)
    gt = read_ground_truth(h5)
    if region is None:
        img = convert(h5, out, dataset="raw", overwrite=True)
        if img.shape != gt.shape:
            from vollseg_dask.errors import ShapeError

            raise ShapeError(f"{h5}: raw has shape {img.shape} but label has shape {gt.shape}")
    else:
        tmp = out.with_name(out.name + ".whole")
        whole = convert(h5, tmp, dataset="raw", overwrite=True)
        raw = np.asarray(whole.data[region].compute())
        vs = whole.voxel_size
        shutil.rmtree(tmp, ignore_errors=True)
        img = convert(raw, out, axes="zyx", voxel_size=vs, overwrite=True)
        gt = gt[region]
    arr = create_labels(out, GT_NAME, dtype="uint32", overwrite=True)
    arr[...] = gt
    return out, tuple(float(v) for v in img.voxel_size)  # type: ignore[return-value]


def split_x(shape: tuple[int, int, int], fraction: float = 0.5) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Train and test regions of a volume split along x at ``round(fraction * X)`` (disjoint, covering).

    Raises
    ------
    ShapeError
        The split would leave an empty part.
    """
    from vollseg_dask.errors import ShapeError

    if len(shape) != 3:
        raise ShapeError(f"expected a (z, y, x) shape, got {shape}")
    cut = int(round(fraction * shape[2]))
    if not 0 < cut < shape[2]:
        raise ShapeError(f"split fraction {fraction} of x = {shape[2]} leaves an empty part")
    full = (slice(0, shape[0]), slice(0, shape[1]))
    return (*full, slice(0, cut)), (*full, slice(cut, shape[2]))


# ------------------------------------------------------------------------------------------ scaling
def median_cell_extent(labels: np.ndarray) -> np.ndarray:
    """Median bounding-box extent (z, y, x) in voxels of the objects not touching the volume border
    (all objects when fewer than 5 are interior)."""
    from scipy import ndimage as ndi

    boxes = [b for b in ndi.find_objects(labels) if b is not None]
    if not boxes:
        from vollseg_dask.errors import InvalidDataError

        raise InvalidDataError("no objects in the labels: cannot measure a cell size")
    inner = [b for b in boxes if all(s.start > 0 and s.stop < n for s, n in zip(b, labels.shape, strict=True))]
    use = inner if len(inner) >= 5 else boxes
    return np.median(np.array([[s.stop - s.start for s in b] for b in use], float), axis=0)


def synthetic_cell_extent(seed: int = 101) -> np.ndarray:
    """Median cell extent (z, y, x) voxels of the bundled models' training tissue (frame 0 of ``seed``)."""
    from vollseg_dask.synthetic import BUNDLED_MODEL_TISSUE, SyntheticConfig, render_labels

    return median_cell_extent(render_labels(SyntheticConfig(seed=seed, **BUNDLED_MODEL_TISSUE), 0))


def zoom_factors(scaling: str, voxel: tuple[float, ...], train_labels: np.ndarray | None,
                 ref_extent: np.ndarray | None) -> tuple[float, float, float] | None:
    """Per-axis zoom (new voxels per old voxel) for a bundled-model ``scaling``; None = native."""
    if scaling == "native":
        return None
    if scaling == "model_voxel":
        return tuple(v / m for v, m in zip(voxel, MODEL_VOXEL, strict=True))  # type: ignore[return-value]
    if scaling == "cell_matched":
        assert train_labels is not None and ref_extent is not None
        return tuple(float(r / e) for r, e in zip(ref_extent, median_cell_extent(train_labels), strict=True))  # type: ignore[return-value]
    raise ValueError(f"unknown scaling {scaling!r}")


def nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """For each of ``n_out`` voxels, the index of the ``n_in``-grid voxel whose cell holds its centre."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resampled_store(store: Path, factors: tuple[float, float, float], out: Path) -> Path:
    """Copy of ``store``'s image resampled by ``factors`` (linear, anti-aliased), voxel size scaled."""
    from skimage.transform import resize

    from vollseg_dask.io.ingest import convert
    from vollseg_dask.io.omezarr import open_image

    img = open_image(store, 0)
    raw = np.asarray(img.data.compute(), np.float32)
    shape = tuple(max(4, int(round(n * f))) for n, f in zip(raw.shape, factors, strict=True))
    small = resize(raw, shape, order=1, preserve_range=True, anti_aliasing=True).astype(np.float32)
    vs = tuple(v * n / s for v, n, s in zip(img.voxel_size, raw.shape, shape, strict=True))
    convert(small, out, axes="zyx", voxel_size=vs, overwrite=True)
    return out


# ------------------------------------------------------------------------------------------ segmentation
def mode_configs(stain: str) -> dict[str, dict[str, Any]]:
    """Segmentation settings per reported mode (``vollseg_dil`` only for membranes)."""
    modes: dict[str, dict[str, Any]] = {
        "vollseg": {"mode": "vollseg"},
        "stardist": {"mode": "stardist"},
        "unet": {"mode": "unet"},
        # StarDist's foreground joins the U-Net mask as the flood region (the demo's setting)
        "vollseg_fg": {"mode": "vollseg", "foreground_threshold": 0.1},
    }
    if stain == "membrane":
        # a membrane U-Net leaves the walls out of its mask; the demo's dilation (architecture notes)
        modes["vollseg_dil"] = {"mode": "vollseg", "mask_dilation": (1, 2, 2)}
    return modes


def segment_mode(store: Path, name: str, predictor: Any, settings: dict[str, Any],
                 target: Path | None = None) -> tuple[str, float, int]:
    """Segment ``store`` with ``settings``; write the labels (mapped back to ``target``'s grid when
    the store is a resampled copy) as ``labels/<name>`` of ``target`` (default ``store``).

    Returns
    -------
    (labels name, seconds, number of objects)
    """
    from vollseg_dask.io.omezarr import create_labels, open_image, open_labels
    from vollseg_dask.segmentation import SegmentationConfig, segment

    t0 = time.perf_counter()
    cfg = SegmentationConfig(block_shape=(64, 256, 256), pyramid=False, **settings)
    segment(store, name, predictor, cfg, client=THREADS, overwrite=True, show_progress=False)
    if target is not None and target != store:
        lab = np.asarray(open_labels(store, name).data.compute())
        shape = open_image(target, 0).shape
        idx = np.ix_(*(nearest_index(n, m) for n, m in zip(shape, lab.shape, strict=True)))
        back = lab[idx]
        arr = create_labels(target, name, dtype="uint32", overwrite=True)
        arr[...] = back
        n_obj = int(len(np.unique(back)) - (back == 0).any())
    else:
        lab = np.asarray(open_labels(store, name).data.compute())
        n_obj = int(len(np.unique(lab)) - (lab == 0).any())
    return name, time.perf_counter() - t0, n_obj


def evaluate_labels(store: Path, name: str) -> Any:
    """Aggregate metric rows (one per τ = 0.1 ... 0.9) of ``labels/<name>`` against the ground truth."""
    from vollseg_dask.evaluate import evaluate_store

    return evaluate_store(store, name, GT_NAME, per_t=False, scheduler="threads")


def row_record(table: Any) -> dict[str, Any]:
    """JSON-able metrics of an aggregate table: per τ the counts and ratios, plus MSE and SSIM."""
    per_tau = {}
    for _, r in table.iterrows():
        per_tau[f"{float(r['thresh']):.1f}"] = {
            k: (int(r[k]) if k in ("tp", "fp", "fn", "n_true", "n_pred") else float(r[k]))
            for k in ("tp", "fp", "fn", "n_true", "n_pred", "precision", "recall", "f1", "accuracy",
                      "mean_matched_score", "panoptic_quality")}
    return {"per_tau": per_tau, "mse": float(table["mse"].iloc[0]), "ssim": float(table["ssim"].iloc[0])}


def run_model_set(store: Path, stain: str, predictor: Any, prefix: str, work: Path,
                  factors: tuple[float, float, float] | None, plots: Path | None) -> list[dict[str, Any]]:
    """All modes of one model set on one store: segment, score, plot; one record per mode."""
    seg_store = store
    if factors is not None:
        seg_store = resampled_store(store, factors, work / f"{store.stem}_{prefix}_resampled.zarr")
    records, tables = [], {}
    for mode, settings in mode_configs(stain).items():
        name, secs, n_obj = segment_mode(seg_store, f"{prefix}_{mode}", predictor, settings, target=store)
        table = evaluate_labels(store, name)
        tables[mode] = table
        rec = {"mode": mode, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
               "seconds": round(secs, 2), "n_objects": n_obj, **row_record(table)}
        if factors is not None:
            rec["zoom"] = [round(f, 4) for f in factors]
            rec["segmented_shape"] = list(_shape(seg_store))
        records.append(rec)
        LOG.info("%s %s: F1@0.5 %.3f F1@0.7 %.3f (%d objects, %.1f s)", store.name, name,
                 rec["per_tau"]["0.5"]["f1"], rec["per_tau"]["0.7"]["f1"], n_obj, secs)
    if plots is not None:
        from vollseg_dask.evaluate import plot_metrics

        plot_metrics(tables, plots)
    return records


def _shape(store: Path) -> tuple[int, ...]:
    from vollseg_dask.io.omezarr import open_image

    return tuple(int(n) for n in open_image(store, 0).shape)


def bundled_predictor(models: str | Path = "bundled") -> Any:
    """StarDist + U-Net predictor without Noise2Void (shipped thresholds unless the folder's own).

    Scale-aware inference is off (``scale=None``): this script compares its own resamplings
    (``native``, ``model_voxel``, ``cell_matched``) of the input.
    """
    from vollseg_dask.predictors.network import NetworkPredictor

    return NetworkPredictor.from_models_dir(models, use_n2v=False, scale=None)


# ------------------------------------------------------------------------------------------ training
def training_settings(quick: bool) -> dict[str, Any]:
    """Fine-tuning schedule (paper parameter names): the bundled models' architecture, short training."""
    return {
        "PatchZ": 16, "PatchY": 64, "PatchX": 64, "n_patches_per_image": 12 if quick else 32,
        "n_augmented_copies": 1, "validation_split": 0.15, "NetworkDepth": 2, "Kernel": 3, "startfilter": 16,
        "unet_start_filter": 8, "Rays": 32, "grid": (1, 2, 2), "star_conv_after_unet": 64,
        "star_epochs": 3 if quick else 20, "unet_epochs": 3 if quick else 6,
        "steps_per_epoch": 10 if quick else 25, "batch_size": 2, "LearningRate": 2e-4,
        "boundary_width": 1, "boundary_mode": "one_sided", "TrainN2V": False, "TrainSTAR": True, "TrainUNET": True,
        "optimize_thresholds": False, "init_from": "bundled", "seed": 0,
    }


def bundled_stardist_config() -> dict[str, Any]:
    """``config.json`` of the bundled StarDist model."""
    from vollseg_dask.networks.folders import bundled_model_dir

    return json.loads((bundled_model_dir("stardist") / "config.json").read_text(encoding="utf-8"))


def finetune(train_store: Path, models_dir: Path, name: str, quick: bool) -> dict[str, Any]:
    """Fine-tune StarDist and U-Net from the bundled weights on ``train_store``; thresholds on it too.

    Returns
    -------
    dict
        ``folder`` (models folder with ``stardist/`` and ``unet/``), ``seconds``, ``thresholds``,
        ``histories`` (final losses), ``n_train``/``n_val`` patches, ``settings``.
    """
    from vollseg_dask.networks.thresholds import optimize_thresholds
    from vollseg_dask.networks.training import TrainingConfig, train_from_config

    settings = training_settings(quick)
    # keep the pretrained ray set: each output channel of the dist head keeps its direction
    # (rays from the data's own anisotropy would re-assign every pretrained ray output)
    settings["anisotropy"] = tuple(bundled_stardist_config()["anisotropy"])
    cfg = TrainingConfig(store=str(train_store), labels_name=GT_NAME, model_dir=str(models_dir), model_name=name,
                         train_data=f"real data {train_store.name} (training part)", **settings)
    res = train_from_config(cfg)
    t0 = time.perf_counter()
    th = optimize_thresholds(res.folders["stardist"], store=train_store, labels_name=GT_NAME)
    seconds = dict(res.seconds)
    seconds["thresholds"] = round(time.perf_counter() - t0, 2)
    return {
        "folder": str(models_dir / name), "seconds": seconds, "thresholds": th,
        "final_loss": {k: {m: v[-1] for m, v in h.items() if m != "seconds" and v} for k, h in res.histories.items()},
        "histories": {k: {m: [round(x, 5) for x in v] for m, v in h.items() if "loss" in m}
                      for k, h in res.histories.items()},
        "n_train": res.n_train, "n_val": res.n_val,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
    }


def bundled_with_thresholds(train_store: Path, models_dir: Path, name: str) -> dict[str, Any]:
    """Bundled StarDist + U-Net with StarDist thresholds re-optimised on ``train_store``."""
    from vollseg_dask.networks.folders import bundled_model_dir
    from vollseg_dask.networks.thresholds import optimize_thresholds

    folder = models_dir / name
    shutil.rmtree(folder, ignore_errors=True)
    for kind in ("stardist", "unet"):
        shutil.copytree(bundled_model_dir(kind), folder / kind)
    t0 = time.perf_counter()
    th = optimize_thresholds(folder / "stardist", store=train_store, labels_name=GT_NAME)
    return {"folder": str(folder), "thresholds": th, "seconds": round(time.perf_counter() - t0, 2)}


# ------------------------------------------------------------------------------------------ reports
def markdown(results: dict[str, Any]) -> str:
    """Tables per (section, data set, model set, scaling) x mode at IoU 0.5 and 0.7."""
    lines = ["# Real-data segmentation accuracy", "",
             f"Command: `{results['command']}`  ", f"Total: {results['seconds_total']:.0f} s on {results['machine']}", "",
             "P/R/F1/AP at IoU τ (AP = TP/(TP+FP+FN), the paper's accuracy); mIoU = mean IoU of the pairs "
             "matched at τ = 0.5; MSE/SSIM of the binarised masks.", ""]
    head = ("| model set | scaling | mode | objects (GT) | " + " | ".join(
        f"P@{t} | R@{t} | F1@{t} | AP@{t}" for t in TABLE_TAUS) + " | mIoU@0.5 | MSE | SSIM | s |")
    sep = "|" + "---|" * (4 + 4 * len(TABLE_TAUS) + 4)
    for section in results["sections"]:
        lines += [f"## {section['title']}", "", section.get("note", ""), ""]
        for ds in section["datasets"]:
            lines += [f"### {ds['label']}", "", head, sep]
            for r in ds["records"]:
                cells = [r["model_set"], r["scaling"], r["mode"], f"{r['n_objects']} ({r['per_tau']['0.5']['n_true']})"]
                for t in TABLE_TAUS:
                    m = r["per_tau"][f"{t:.1f}"]
                    cells += [f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", f"{m['accuracy']:.3f}"]
                cells += [f"{r['per_tau']['0.5']['mean_matched_score']:.3f}", f"{r['mse']:.4f}",
                          "n/a" if not np.isfinite(r["ssim"]) else f"{r['ssim']:.3f}", f"{r['seconds']:.1f}"]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    if results.get("training"):
        lines += ["## Training", "", "| run | train part | seconds (patches / StarDist / U-Net / thresholds) | thresholds |",
                  "|---|---|---|---|"]
        for k, v in results["training"].items():
            s = v.get("seconds", {})
            secs = s if not isinstance(s, dict) else " / ".join(
                str(s.get(x, "-")) for x in ("patches", "stardist", "unet", "thresholds"))
            lines.append(f"| {k} | {v.get('train_part', '')} | {secs} | {v.get('thresholds')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ driver
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="Shared data folder (holding segmentation/plantseg/).")
    ap.add_argument("--out", required=True, help="Output folder (results.json, results.md, plots/, work/).")
    ap.add_argument("--bundled-only", action="store_true", help="Only the bundled models (no training).")
    ap.add_argument("--quick", action="store_true",
                    help="Shorter training (3 epochs of 10 steps), native and cell-matched scaling only.")
    ap.add_argument("--reverse", action="store_true",
                    help="Also train on 1136_mini and test on 1135_mini (adds about a third to the run time).")
    ap.add_argument("--keep-work", action="store_true", help="Keep the OME-Zarr stores and models under OUT/work.")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("distributed", "tensorflow", "absl", "h5py", "numcodecs", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    t_start = time.perf_counter()
    out = Path(args.out)
    work = out / "work"
    plots = out / "plots"
    work.mkdir(parents=True, exist_ok=True)
    paths = {k: data_path(args.data, s) for k, s in DATA.items()}
    ref_extent = synthetic_cell_extent()
    LOG.info("synthetic training cells: median extent %s voxels", ref_extent)
    predictor = bundled_predictor()
    scalings_a = ("native", "cell_matched") if args.quick else ("native", "model_voxel", "cell_matched")
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs, shared)",
        "synthetic_cell_extent_zyx": ref_extent.tolist(), "model_voxel_zyx": list(MODEL_VOXEL),
        "n2v": False, "sections": [], "training": {},
    }

    # (a) bundled models on the whole volumes
    sec_a = {"title": "(a) Bundled models, whole volumes",
             "note": "Cell-matched zoom from the whole volume's own ground truth (an oracle for the object size).",
             "datasets": []}
    for key, spec in DATA.items():
        store, vs = ingest(paths[key], work / f"{key}_whole.zarr")
        gt = read_ground_truth(paths[key])
        recs = []
        for scaling in scalings_a:
            f = zoom_factors(scaling, vs, gt, ref_extent)
            for r in run_model_set(store, spec.stain, predictor, f"bundled_{scaling}", work, f,
                                   plots / f"{key}_whole" / f"bundled_{scaling}"):
                recs.append({"model_set": "bundled", "scaling": scaling, **r})
        sec_a["datasets"].append({"key": key, "label": f"{spec.file} (whole, {spec.stain}, voxel "
                                                   f"{tuple(round(v, 4) for v in vs)} µm)",
                                  "voxel_size": list(vs), "records": recs})
    results["sections"].append(sec_a)

    # (b) held-out test parts
    splits = [("ovule", "ovule", "x"), ("nuclei_1135", "nuclei_1136", "file")]
    if args.reverse:
        splits.append(("nuclei_1136", "nuclei_1135", "file"))
    sec_b = {"title": "(b) Held-out test parts: bundled vs fine-tuned",
             "note": "Every model set on the same test voxels; fine-tuning, threshold optimisation and the "
                     "cell-matched zoom use the training part only.", "datasets": []}
    models_dir = work / "models"
    for train_key, test_key, how in splits:
        spec = DATA[test_key]
        if how == "x":
            shape = read_ground_truth(paths[train_key]).shape
            tr_reg, te_reg = split_x(shape)
            train_store, vs = ingest(paths[train_key], work / f"{train_key}_train.zarr", tr_reg)
            test_store, _ = ingest(paths[test_key], work / f"{test_key}_test.zarr", te_reg)
            label = f"{spec.file} test x >= {te_reg[2].start} (train x < {tr_reg[2].stop})"
            train_gt = read_ground_truth(paths[train_key])[tr_reg]
        else:
            train_store, vs = ingest(paths[train_key], work / f"{train_key}_train.zarr")
            test_store, _ = ingest(paths[test_key], work / f"{test_key}_test.zarr")
            label = f"{spec.file} (train {DATA[train_key].file})"
            train_gt = read_ground_truth(paths[train_key])
        run = f"{train_key}_to_{test_key}"
        plot_dir = plots / run
        recs = []
        for scaling in ("native", "cell_matched"):
            f = zoom_factors(scaling, vs, train_gt, ref_extent)
            for r in run_model_set(test_store, spec.stain, predictor, f"bundled_{scaling}", work, f,
                                   plot_dir / f"bundled_{scaling}"):
                recs.append({"model_set": "bundled", "scaling": scaling, **r})
        if not args.bundled_only:
            thr = bundled_with_thresholds(train_store, models_dir, f"{run}_bundled_thr")
            results["training"][f"{run}_bundled_thr"] = {**thr, "train_part": train_store.name}
            for r in run_model_set(test_store, spec.stain, bundled_predictor(thr["folder"]), "bundled_thr_native",
                                   work, None, plot_dir / "bundled_thr"):
                recs.append({"model_set": "bundled_thr", "scaling": "native", **r})
            ft = finetune(train_store, models_dir, f"{run}_finetuned", args.quick)
            results["training"][f"{run}_finetuned"] = {**ft, "train_part": train_store.name}
            for r in run_model_set(test_store, spec.stain, bundled_predictor(ft["folder"]), "finetuned_native",
                                   work, None, plot_dir / "finetuned"):
                recs.append({"model_set": "finetuned", "scaling": "native", **r})
        sec_b["datasets"].append({"key": run, "label": label, "voxel_size": list(vs), "records": recs})
    results["sections"].append(sec_b)

    results["seconds_total"] = round(time.perf_counter() - t_start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    LOG.info("done in %.0f s: %s", results["seconds_total"], out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
