"""Training of the VollSeg networks from a config: patches (.npz), StarDist3D, U-Net, Noise2Void.

Flow of :func:`train_from_config`:

1. **Sources**: a folder pair ``BaseDir/Raw`` + ``BaseDir/Segmentation`` (TIFF, same file names) or
   an OME-Zarr image + labels group (one source per time point); validation from separate sources
   (``validation_*``) or a random ``validation_split`` of the patches.
2. **Patches** (``GenerateNPZ``): ``n_patches_per_image`` random patches of ``PatchZ x PatchY x PatchX``
   per source (foreground preferred), each plus ``n_augmented_copies`` copies with random flips,
   90° y-x rotations, Poisson and Gaussian noise; optionally denoised copies (Noise2Void); saved to
   ``NPZfilename`` (else loaded from it).
3. **Noise2Void** (``TrainN2V``) on the original noisy patches (no labels).
4. **StarDist3D** (``TrainSTAR``): ``Rays`` golden-spiral rays, anisotropy from the voxel size,
   ``grid``; thresholds optimised on the validation data (``thresholds.json``).
5. **U-Net** (``TrainUNET``): sigmoid output, binary cross-entropy, target = cells minus the
   ``boundary_width`` rim between touching cells (:func:`vollseg_dask.networks.unet.unet_target`).

Folders are written to ``model_dir/model_name/{n2v,stardist,unet}``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator, model_validator

from vollseg_dask.config import StrictModel
from vollseg_dask.errors import ConfigError, InvalidDataError, StoreNotFoundError
from vollseg_dask.networks.data import (
    TrainingSource,
    add_noise,
    anisotropy_from_voxel_size,
    augment_patch_pair,
    augment_together,
    expand_region,
    sample_patch_corners,
    sources_from_folders,
    sources_from_store,
)

__all__ = [
    "TrainingConfig",
    "TrainingResult",
    "PatchSet",
    "load_training_sources",
    "load_validation_sources",
    "optimize_stardist_thresholds",
    "generate_patches",
    "add_denoised_copies",
    "save_npz",
    "load_npz",
    "train_stardist",
    "train_from_config",
    "init_weights_path",
    "load_init_weights",
    "KIND_ORIGINAL",
    "KIND_AUGMENTED",
    "KIND_DENOISED",
]

LOG = logging.getLogger(__name__)

KIND_ORIGINAL, KIND_AUGMENTED, KIND_DENOISED = 0, 1, 2


class TrainingConfig(StrictModel):
    """Training parameters; the paper's names (``NetworkDepth``, ``Epochs`` ...) are accepted as aliases."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    # ------------------------------------------------------------------ data
    base_dir: str | None = Field(None, alias="BaseDir",
                                 description="Folder holding raw_dir/ and seg_dir/ with TIFF pairs of the same names.")
    raw_dir: str = Field("Raw", description="Sub-folder of base_dir with raw volumes.")
    seg_dir: str = Field("Segmentation", alias="real_mask_dir",
                         description="Sub-folder of base_dir with instance label volumes.")
    store: str | list[str] | None = Field(
        None, description="OME-Zarr image store(s) with a labels group (instead of base_dir).")
    labels_name: str = Field("ground_truth", description="Labels group of the store.")
    timepoints: list[int] | None = Field(None, description="Time points of the store to use (default all).")
    channel: int = Field(0, ge=0, description="Channel of the store's image (if it has a c axis).")
    voxel_size: tuple[float, float, float] | None = Field(
        None, description="Voxel size (z, y, x) µm; default from the store / TIFF metadata.")
    validation_base_dir: str | None = Field(None, description="Folder pair for validation (held out).")
    validation_store: str | list[str] | None = Field(
        None, description="OME-Zarr store(s) for validation (held out).")
    validation_timepoints: list[int] | None = Field(None, description="Time points of the validation store.")
    validation_split: float = Field(0.1, ge=0.0, lt=1.0,
                                    description="Fraction of patches held out when no validation source is given.")

    # ------------------------------------------------------------------ patches
    npz_file: str = Field("training_data.npz", alias="NPZfilename",
                          description="Patch file (relative to model_dir/model_name unless absolute).")
    generate_npz: bool = Field(True, alias="GenerateNPZ",
                               description="Generate the patch file (else load the existing one).")
    patch_z: int = Field(16, ge=1, alias="PatchZ", description="Patch size in z (voxels).")
    patch_y: int = Field(64, ge=1, alias="PatchY", description="Patch size in y (voxels).")
    patch_x: int = Field(64, ge=1, alias="PatchX", description="Patch size in x (voxels).")
    n_patches_per_image: int = Field(16, ge=1, description="Random patches per source volume.")
    min_foreground_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="Patches with less labelled foreground are drawn only if too few others.")
    n_augmented_copies: int = Field(1, ge=0, description="Augmented copies per patch (flips, rotations, noise).")
    poisson_peak: float | None = Field(
        30.0, ge=0.0, description="Shot noise of augmented copies: photons at normalised intensity 1 (None: off).")
    gaussian_sigma: float = Field(0.03, ge=0.0, description="Gaussian noise sigma of augmented copies (normalised units).")
    noise_probability: float = Field(0.5, ge=0.0, le=1.0, description="Probability that an augmented copy gets noise.")
    denoised_copies: bool = Field(
        False, description="Add N2V-denoised copies of each patch (needs TrainN2V or n2v_model).")
    n2v_model: str | None = Field(None, description="Existing N2V folder for denoised copies when TrainN2V is off.")
    norm_pmin: float = Field(1.0, ge=0.0, le=100.0, description="Low normalisation percentile (whole volume).")
    norm_pmax: float = Field(99.8, ge=0.0, le=100.0, description="High normalisation percentile (whole volume).")
    seed: int = Field(0, ge=0, description="Seed of sampling, augmentation and weight initialisation.")

    # ------------------------------------------------------------------ what to train
    train_n2v: bool = Field(False, alias="TrainN2V", description="Train Noise2Void.")
    train_star: bool = Field(True, alias="TrainSTAR", description="Train StarDist3D.")
    train_unet: bool = Field(True, alias="TrainUNET", description="Train the semantic U-Net.")

    # ------------------------------------------------------------------ networks and schedule
    network_depth: int = Field(2, ge=1, le=4, alias="NetworkDepth", description="U-Net depth of all networks.")
    start_filter: int = Field(16, ge=1, alias="startfilter", description="Filters at the first U-Net level.")
    kernel: int = Field(3, ge=1, alias="Kernel", description="Convolution kernel size (odd).")
    epochs: int = Field(20, ge=1, alias="Epochs", description="Training epochs (each network).")
    steps_per_epoch: int = Field(50, ge=1, description="Steps per epoch (each network).")
    learning_rate: float = Field(4e-4, gt=0, alias="LearningRate", description="Adam learning rate.")
    batch_size: int = Field(2, ge=1, description="Patches per step.")
    n2v_epochs: int | None = Field(None, ge=1, description="Epochs of N2V (default: epochs).")
    star_epochs: int | None = Field(None, ge=1, description="Epochs of StarDist (default: epochs).")
    unet_epochs: int | None = Field(None, ge=1, description="Epochs of the U-Net (default: epochs).")
    n2v_start_filter: int | None = Field(None, ge=1, description="First-level filters of N2V (default: startfilter).")
    unet_start_filter: int | None = Field(None, ge=1, description="First-level filters of the U-Net (default: startfilter).")
    rays: int = Field(32, ge=6, alias="Rays", description="StarDist rays (golden spiral).")
    grid: tuple[int, int, int] = Field((1, 2, 2), description="StarDist output subsampling (z, y, x), powers of 2.")
    anisotropy: tuple[float, float, float] | None = Field(
        None, description="StarDist anisotropy (z, y, x); default voxel_size / min(voxel_size).")
    star_conv_after_unet: int = Field(64, ge=0, description="StarDist: filters of the conv layer after its U-Net.")
    boundary_width: int = Field(1, ge=0, le=10,
                                description="U-Net target: width (voxels) of the cell-cell boundary removed.")
    boundary_mode: Literal["one_sided", "inner"] = Field(
        "one_sided", description="U-Net target: one_sided removes the raster-earlier voxel of each touching "
                                 "pair (1-voxel gap), inner removes both (find_boundaries mode='inner').")
    unet_threshold: float = Field(0.5, gt=0, lt=1, description="U-Net foreground probability threshold (recorded).")
    n2v_perc_pix: float = Field(0.2, gt=0, le=50, description="N2V: percent of voxels masked per patch.")
    n2v_neighborhood_radius: int = Field(2, ge=1, le=10, description="N2V: replacement window radius (voxels).")
    optimize_thresholds: bool = Field(True, description="Optimise StarDist thresholds on the validation data.")
    threshold_max_candidates: int = Field(
        3000, ge=10, description="Threshold search: at most this many candidates per validation volume.")
    init_from: str | None = Field(
        None, description="Fine-tuning: a folder of model folders (stardist/, unet/, n2v/) or 'bundled' whose "
                          "weights_best.h5 initialise each network trained; its architecture (NetworkDepth, "
                          "startfilter, Rays, grid, ...) must match. None: random initialisation.")

    # ------------------------------------------------------------------ output
    model_dir: str = Field("models", description="Parent folder of the model folders.")
    model_name: str = Field("vollseg", description="Folder under model_dir holding n2v/, stardist/, unet/.")
    train_data: str | None = Field(None, description="Free text recorded in the model configs.")

    @field_validator("kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 != 1:
            raise ValueError(f"Kernel must be odd, got {v}")
        return v

    @field_validator("grid")
    @classmethod
    def _pow2(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        for g in v:
            if g < 1 or g & (g - 1):
                raise ValueError(f"grid entries must be powers of 2, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if self.norm_pmin >= self.norm_pmax:
            raise ValueError(f"norm_pmin {self.norm_pmin} must be below norm_pmax {self.norm_pmax}")
        if self.generate_npz and (self.base_dir is None) == (self.store is None):
            raise ValueError("give exactly one of base_dir (BaseDir) and store when GenerateNPZ is true "
                             f"(got base_dir={self.base_dir!r}, store={self.store!r})")
        if self.validation_base_dir is not None and self.validation_store is not None:
            raise ValueError("give at most one of validation_base_dir and validation_store")
        div = 2 ** self.network_depth
        for name, p in (("PatchZ", self.patch_z), ("PatchY", self.patch_y), ("PatchX", self.patch_x)):
            if p % div:
                raise ValueError(f"{name}={p} must be a multiple of 2**NetworkDepth = {div}")
        if not (self.train_n2v or self.train_star or self.train_unet):
            raise ValueError("nothing to train: TrainN2V, TrainSTAR and TrainUNET are all false")
        return self

    # ---------------------------------------------------------------- derived
    @property
    def patch_shape(self) -> tuple[int, int, int]:
        """(PatchZ, PatchY, PatchX)."""
        return (self.patch_z, self.patch_y, self.patch_x)

    @property
    def output_dir(self) -> Path:
        """``model_dir/model_name``."""
        return Path(self.model_dir) / self.model_name

    @property
    def npz_path(self) -> Path:
        """Patch file path."""
        p = Path(self.npz_file)
        return p if p.is_absolute() else self.output_dir / p


@dataclass
class PatchSet:
    """Training and validation patches (what the ``.npz`` holds).

    Arrays have shape (N, z, y, x): ``X`` float32 normalised images, ``Y`` int32 instance labels,
    ``B`` uint8 U-Net targets; ``kind`` (N,) int8 (0 original, 1 augmented, 2 denoised);
    ``source`` (N,) int32 index into ``sources``; ``corner`` (N, 3) int64 patch corner.
    The same with ``_val`` for validation. ``meta`` holds voxel size, boundary width, norm, ...
    """

    X: np.ndarray
    Y: np.ndarray
    B: np.ndarray
    kind: np.ndarray
    source: np.ndarray
    corner: np.ndarray
    X_val: np.ndarray
    Y_val: np.ndarray
    B_val: np.ndarray
    kind_val: np.ndarray
    source_val: np.ndarray
    corner_val: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    _ARRAYS = ("X", "Y", "B", "kind", "source", "corner")

    def __len__(self) -> int:
        return int(len(self.X))

    def select(self, idx: np.ndarray, val: bool = False) -> dict[str, np.ndarray]:
        suffix = "_val" if val else ""
        return {a: getattr(self, a + suffix)[idx] for a in self._ARRAYS}


@dataclass
class TrainingResult:
    """What :func:`train_from_config` produced."""

    folders: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    histories: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    thresholds: dict[str, float] | None = None
    npz: Path | None = None
    n_train: int = 0
    n_val: int = 0


# ----------------------------------------------------------------------------------------- sources
def load_training_sources(config: TrainingConfig) -> tuple[list[TrainingSource], list[TrainingSource]]:
    """Training and (held-out) validation sources named by ``config`` (validation may be empty)."""
    kw = {"pmin": config.norm_pmin, "pmax": config.norm_pmax, "voxel_size": config.voxel_size}
    if config.base_dir is not None:
        train = sources_from_folders(config.base_dir, config.raw_dir, config.seg_dir, **kw)
    elif config.store is not None:
        train = []
        for store in _as_list(config.store):
            train += sources_from_store(store, config.labels_name, config.timepoints, config.channel, **kw)
    else:
        raise ConfigError("no training data: set base_dir (BaseDir) or store")
    return train, load_validation_sources(config)


def load_validation_sources(config: TrainingConfig) -> list[TrainingSource]:
    """The held-out validation sources named by ``config`` (empty list when none)."""
    kw = {"pmin": config.norm_pmin, "pmax": config.norm_pmax, "voxel_size": config.voxel_size}
    val: list[TrainingSource] = []
    if config.validation_base_dir is not None:
        val = sources_from_folders(config.validation_base_dir, config.raw_dir, config.seg_dir, **kw)
    elif config.validation_store is not None:
        for store in _as_list(config.validation_store):
            val += sources_from_store(store, config.labels_name, config.validation_timepoints, config.channel, **kw)
    return val


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# ----------------------------------------------------------------------------------------- patches
def _target_margin(config: TrainingConfig) -> int:
    return config.boundary_width + 1


def _labels_with_margin(src: TrainingSource, region: tuple[slice, ...], margin: int) -> np.ndarray:
    """Labels over ``region`` grown by ``margin`` on every side; beyond the volume, background
    (as :func:`~vollseg_dask.networks.unet.unet_target` treats the outside of its input)."""
    read, inner = expand_region(region, margin, src.shape)
    lab = src.read_labels(read)
    pad = [(margin - i.start, margin - (r.stop - r.start - i.stop)) for r, i in zip(read, inner, strict=True)]
    return np.pad(lab, pad, mode="constant", constant_values=0)


def _target_from_margin(lab_m: np.ndarray, config: TrainingConfig) -> np.ndarray:
    from vollseg_dask.networks.unet import unet_target

    m = _target_margin(config)
    crop = (slice(m, -m),) * 3
    return unet_target(lab_m, config.boundary_width, config.boundary_mode)[crop]


def _patches_of_sources(sources: list[TrainingSource], config: TrainingConfig, rng: np.random.Generator,
                        source_offset: int = 0) -> dict[str, list]:
    out: dict[str, list] = {k: [] for k in ("X", "Y", "B", "kind", "source", "corner", "group")}
    patch = config.patch_shape
    group = 0
    for si, src in enumerate(sources):
        def fg_fraction(region: tuple[slice, ...], src: TrainingSource = src) -> float:
            return float((src.read_labels(region) > 0).mean())

        corners = sample_patch_corners(src.shape, patch, config.n_patches_per_image, rng, accept=fg_fraction,
                                       min_score=config.min_foreground_fraction)
        m = _target_margin(config)
        inner = (slice(m, -m),) * 3
        for corner in corners:
            region = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
            x = src.read_image(region)
            lab_m = _labels_with_margin(src, region, m)
            y = lab_m[inner]
            b = _target_from_margin(lab_m, config)
            copies = [(x, y, b, KIND_ORIGINAL)]
            for _ in range(config.n_augmented_copies):
                # transform image and labels (with margin, symmetric), then make the target from the
                # transformed labels: one-sided boundaries depend on orientation
                xa, la = augment_together((x, lab_m), rng)
                if rng.random() < config.noise_probability:
                    xa = add_noise(xa, rng, config.poisson_peak, config.gaussian_sigma)
                copies.append((xa, la[inner], _target_from_margin(la, config), KIND_AUGMENTED))
            for xx, yy, bb, kind in copies:
                out["X"].append(xx.astype(np.float32))
                out["Y"].append(yy.astype(np.int32))
                out["B"].append(bb.astype(np.uint8))
                out["kind"].append(kind)
                out["source"].append(si + source_offset)
                out["corner"].append(corner)
                out["group"].append(group)
            group += 1
    return out


def _stack(d: dict[str, list], idx: np.ndarray, patch: tuple[int, int, int]) -> dict[str, np.ndarray]:
    dtypes = {"X": np.float32, "Y": np.int32, "B": np.uint8, "kind": np.int8, "source": np.int32, "corner": np.int64}
    empty = {"X": (0, *patch), "Y": (0, *patch), "B": (0, *patch), "kind": (0,), "source": (0,), "corner": (0, 3)}
    out = {}
    for k, dt in dtypes.items():
        if len(idx):
            out[k] = np.asarray([d[k][i] for i in idx], dtype=dt)
        else:
            out[k] = np.zeros(empty[k], dtype=dt)
    return out


def generate_patches(train_sources: list[TrainingSource], val_sources: list[TrainingSource],
                     config: TrainingConfig) -> PatchSet:
    """Sample, augment and split patches (no denoised copies; see :func:`add_denoised_copies`).

    With validation sources, all their (original) patches are validation and all training
    sources' patches are training; otherwise a ``validation_split`` fraction of the original
    patches (with their augmented copies) is held out.
    """
    if not train_sources:
        raise InvalidDataError("no training volumes")
    rng = np.random.default_rng(config.seed)
    patch = config.patch_shape
    tr = _patches_of_sources(train_sources, config, rng)
    if val_sources:
        cfg_val = config.model_copy(update={"n_augmented_copies": 0})
        va = _patches_of_sources(val_sources, cfg_val, rng, source_offset=len(train_sources))
        tr_idx = np.arange(len(tr["X"]))
        train = _stack(tr, tr_idx, patch)
        val = _stack(va, np.arange(len(va["X"])), patch)
    else:
        groups = np.asarray(tr["group"])
        n_groups = int(groups.max()) + 1
        n_val = int(round(config.validation_split * n_groups))
        if config.validation_split > 0 and n_groups > 1:
            n_val = min(max(1, n_val), n_groups - 1)
        val_groups = rng.permutation(n_groups)[:n_val]
        is_val = np.isin(groups, val_groups)
        kinds = np.asarray(tr["kind"])
        train = _stack(tr, np.flatnonzero(~is_val), patch)
        val = _stack(tr, np.flatnonzero(is_val & (kinds == KIND_ORIGINAL)), patch)
    all_sources = train_sources + val_sources
    vs = train_sources[0].voxel_size
    meta = {
        "voxel_size": list(vs),
        "patch_shape": list(patch),
        "boundary_width": config.boundary_width,
        "boundary_mode": config.boundary_mode,
        "norm": [config.norm_pmin, config.norm_pmax],
        "sources": [s.name for s in all_sources],
        "n_train_sources": len(train_sources),
        "seed": config.seed,
    }
    return PatchSet(X=train["X"], Y=train["Y"], B=train["B"], kind=train["kind"], source=train["source"],
                    corner=train["corner"], X_val=val["X"], Y_val=val["Y"], B_val=val["B"],
                    kind_val=val["kind"], source_val=val["source"], corner_val=val["corner"], meta=meta)


def add_denoised_copies(patches: PatchSet, sources: list[TrainingSource], n2v: Any) -> PatchSet:
    """Append an N2V-denoised copy of every original training patch (same labels and targets).

    Each patch is denoised with the network's receptive field of real context around it (read
    from its source), so that the copy matches what denoising the whole volume gives.
    """
    halo = n2v.halo
    sel = np.flatnonzero(patches.kind == KIND_ORIGINAL)
    patch = tuple(patches.X.shape[1:])
    new_X = []
    for i in sel:
        src = sources[int(patches.source[i])]
        region = tuple(slice(int(c), int(c) + p) for c, p in zip(patches.corner[i], patch, strict=True))
        read, inner = expand_region(region, halo, src.shape)
        new_X.append(n2v.predict_normalized(src.read_image(read))[inner].astype(np.float32))
    if not new_X:
        return patches
    patches.X = np.concatenate([patches.X, np.stack(new_X)])
    patches.Y = np.concatenate([patches.Y, patches.Y[sel]])
    patches.B = np.concatenate([patches.B, patches.B[sel]])
    patches.kind = np.concatenate([patches.kind, np.full(len(sel), KIND_DENOISED, np.int8)])
    patches.source = np.concatenate([patches.source, patches.source[sel]])
    patches.corner = np.concatenate([patches.corner, patches.corner[sel]])
    patches.meta["denoised_copies"] = True
    return patches


def save_npz(path: str | os.PathLike[str], patches: PatchSet) -> Path:
    """Write a :class:`PatchSet` as a compressed ``.npz`` (atomically)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp-{os.getpid()}.npz")
    arrays = {}
    for a in PatchSet._ARRAYS:
        arrays[a] = getattr(patches, a)
        arrays[a + "_val"] = getattr(patches, a + "_val")
    np.savez_compressed(tmp, meta=np.array(json.dumps(patches.meta)), **arrays)
    os.replace(tmp, p)
    return p


def load_npz(path: str | os.PathLike[str]) -> PatchSet:
    """Read a patch file written by :func:`save_npz`.

    Raises
    ------
    StoreNotFoundError
        Missing file. ConfigError: a file without the expected arrays.
    """
    p = Path(path)
    if not p.is_file():
        raise StoreNotFoundError(f"patch file not found: {p} (set GenerateNPZ: true to create it)")
    with np.load(p, allow_pickle=False) as f:
        missing = [k for a in PatchSet._ARRAYS for k in (a, a + "_val") if k not in f]
        if missing:
            raise ConfigError(f"{p} is not a vollseg-dask patch file (missing {', '.join(missing)})")
        kw = {k: f[k] for a in PatchSet._ARRAYS for k in (a, a + "_val")}
        meta = json.loads(str(f["meta"])) if "meta" in f else {}
    return PatchSet(meta=meta, **kw)


def _recompute_targets(patches: PatchSet, width: int, mode: str) -> None:
    """U-Net targets from the patch labels (when the file was made with another boundary setting).

    Without the sources, a patch's own labels are all there is: the rim of each patch may miss
    a boundary to a cell just outside it.
    """
    from vollseg_dask.networks.unet import unet_target

    patches.B = np.stack([unet_target(y, width, mode) for y in patches.Y]) if len(patches.Y) else patches.B
    if len(patches.Y_val):
        patches.B_val = np.stack([unet_target(y, width, mode) for y in patches.Y_val])
    patches.meta["boundary_width"] = width
    patches.meta["boundary_mode"] = mode


# ----------------------------------------------------------------------------------------- fine-tuning
def init_weights_path(init_from: str | os.PathLike[str] | None, kind: str) -> Path | None:
    """``weights_best.h5`` of the ``kind`` model under ``init_from`` (``"bundled"``: the shipped models).

    Parameters
    ----------
    init_from : path, ``"bundled"`` or None
        Folder holding ``stardist/``, ``unet/``, ``n2v/`` model folders.
    kind : {"stardist", "unet", "n2v"}

    Returns
    -------
    pathlib.Path or None
        None when ``init_from`` is None.

    Raises
    ------
    ModelNotFoundError
        The folder or its weights file is missing.
    """
    from vollseg_dask.errors import ModelNotFoundError
    from vollseg_dask.networks.folders import bundled_model_dir

    if init_from is None:
        return None
    folder = bundled_model_dir(kind) if str(init_from) == "bundled" else Path(init_from) / kind
    weights = folder / "weights_best.h5"
    if not weights.is_file():
        raise ModelNotFoundError(f"fine-tuning needs {weights} (init_from={str(init_from)!r}, {kind} model)")
    return weights


def _init_folder(init_from: str | os.PathLike[str], kind: str) -> Path:
    from vollseg_dask.networks.folders import bundled_model_dir

    return bundled_model_dir(kind) if str(init_from) == "bundled" else Path(init_from) / kind


def init_requirements(init_from: str | os.PathLike[str], kinds: tuple[str, ...] = ("n2v", "stardist", "unet")
                      ) -> dict[str, Any]:
    """TrainingConfig settings (by their snake_case names) that fine-tuning from ``init_from`` needs.

    Parameters
    ----------
    init_from : path or ``"bundled"``
        Folder of model folders (``stardist/``, ``unet/``, ``n2v/``).
    kinds : tuple of str
        Networks that will be trained (their folders must exist).

    Returns
    -------
    dict
        ``{key: value}``: architecture keys (``network_depth``, ``start_filter``, ``kernel``, ``rays``,
        ``grid``, ``anisotropy``, ``star_conv_after_unet``, ``unet_start_filter``,
        ``n2v_start_filter``) and normalisation percentiles, read from the models' ``config.json``.

    Raises
    ------
    ModelNotFoundError
        A model folder or its ``config.json`` is missing.
    ConfigError
        The models disagree on a shared key (``network_depth``, ``kernel``): they cannot be
        fine-tuned together; train them separately.
    """
    from vollseg_dask.errors import ModelNotFoundError

    need: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(key: str, value: Any, kind: str) -> None:
        if key in need and need[key] != value:
            raise ConfigError(f"init_from={str(init_from)!r}: the {sources[key]} model needs {key}={need[key]!r}, the "
                              f"{kind} model {key}={value!r}; fine-tune them in separate runs")
        need[key], sources[key] = value, kind

    for kind in kinds:
        folder = _init_folder(init_from, kind)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise ModelNotFoundError(f"fine-tuning needs {cfg_path} (init_from={str(init_from)!r}, {kind} model)")
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if kind == "stardist":
            put("network_depth", int(cfg["unet_n_depth"]), kind)
            put("start_filter", int(cfg["unet_n_filter_base"]), kind)
            put("kernel", int(cfg["unet_kernel_size"][0]), kind)
            put("rays", int(cfg["n_rays"]), kind)
            put("grid", [int(g) for g in cfg["grid"]], kind)
            if cfg.get("anisotropy") is not None:
                put("anisotropy", [float(a) for a in cfg["anisotropy"]], kind)
            put("star_conv_after_unet", int(cfg.get("net_conv_after_unet", 0)), kind)
        else:
            put("network_depth", int(cfg["unet_n_depth"]), kind)
            put("kernel", int(cfg["unet_kern_size"]), kind)
            put(f"{kind}_start_filter", int(cfg["unet_n_first"]), kind)
            for key in ("norm_pmin", "norm_pmax"):
                if key in cfg:
                    put(key, float(cfg[key]), kind)
    return need


def _trained_kinds(config: TrainingConfig) -> tuple[str, ...]:
    return tuple(k for k, on in (("n2v", config.train_n2v), ("stardist", config.train_star),
                                 ("unet", config.train_unet)) if on)


def _effective(config: TrainingConfig, key: str) -> Any:
    if key in ("unet_start_filter", "n2v_start_filter"):
        v = getattr(config, key)
        return config.start_filter if v is None else v
    if key == "anisotropy":
        if config.anisotropy is not None:
            return [float(a) for a in config.anisotropy]
        if config.voxel_size is not None:
            return [float(a) for a in anisotropy_from_voxel_size(config.voxel_size)]
        return None  # only known from the data: must be set explicitly to match
    v = getattr(config, key)
    return list(v) if isinstance(v, tuple) else v


def _carry_segmentation_defaults(init_from: str | os.PathLike[str], folder: Path) -> None:
    """A fine-tuned StarDist keeps the segmentation settings its initial model recommends."""
    from vollseg_dask.networks.folders import read_segmentation_defaults, write_segmentation_defaults

    settings = read_segmentation_defaults(_init_folder(init_from, "stardist"))
    if settings:
        write_segmentation_defaults(folder, settings, source=f"carried over from the initial model "
                                                             f"(init_from={str(init_from)!r}) by train")


def check_init_compatibility(config: TrainingConfig) -> None:
    """Refuse, before any data is read or network trained, a fine-tuning whose settings do not fit
    ``init_from``; the message names every key to change and the value the initial models need.

    Raises
    ------
    ConfigError
        ``"init_from='bundled' needs: network_depth: 2 (you have 3), unet_start_filter: 8 (...)"``.
    """
    if config.init_from is None:
        return
    need = init_requirements(config.init_from, _trained_kinds(config))
    wrong = {k: (v, _effective(config, k)) for k, v in need.items() if _effective(config, k) != v}
    if wrong:
        lines = ", ".join(f"{k}: {v!r} (you have {have!r})" for k, (v, have) in wrong.items())
        raise ConfigError(f"init_from={config.init_from!r}: the initial models need these training settings: "
                          f"{lines}. Set them in the training config (or write a matching one with "
                          f"'vollseg-dask create-config train.yaml --kind train --init-from {config.init_from}').")


def load_init_weights(keras_model: Any, weights: str | os.PathLike[str] | None, kind: str) -> None:
    """Load ``weights`` into ``keras_model`` (no-op for None); a mismatching architecture is a ConfigError."""
    if weights is None:
        return
    try:
        keras_model.load_weights(str(weights))
    except (ValueError, KeyError, OSError) as exc:
        raise ConfigError(f"initial {kind} weights {weights} do not fit the network being trained (match "
                          f"NetworkDepth, startfilter, Kernel, Rays, grid, star_conv_after_unet to that model): "
                          f"{exc}") from exc
    LOG.info("%s initialised from %s", kind, weights)


# ----------------------------------------------------------------------------------------- StarDist
def _stardist_augmenter(seed: int):
    rng = np.random.default_rng(seed)

    def aug(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return augment_patch_pair(x, y, rng)

    return aug


def train_stardist(X: np.ndarray, Y: np.ndarray, X_val: np.ndarray, Y_val: np.ndarray, folder: str | os.PathLike[str],
                   *, n_rays: int = 32, anisotropy: tuple[float, float, float] | None = None,
                   grid: tuple[int, int, int] = (1, 2, 2), depth: int = 2, n_filter_base: int = 16,
                   kernel: int = 3, conv_after_unet: int = 64, epochs: int = 20, steps_per_epoch: int = 50,
                   learning_rate: float = 3e-4, batch_size: int = 2, seed: int = 0,
                   optimize_on: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
                   max_candidates: int = 3000, init_weights: str | os.PathLike[str] | None = None,
                   verbose: int = 0) -> tuple[Any, dict[str, list[float]], dict[str, float] | None]:
    """Train a StarDist3D model (golden-spiral rays) and write its folder.

    Parameters
    ----------
    X, Y : numpy.ndarray, shape (N, z, y, x)
        Normalised image patches (float32) and instance labels; the patch shape is the training
        patch size.
    X_val, Y_val : numpy.ndarray, shape (M, z, y, x)
        Validation patches (M >= 1).
    folder : path
        Model folder to create (``config.json``, ``weights_best.h5``, ``weights_last.h5``,
        ``thresholds.json``).
    n_rays, anisotropy, grid, depth, n_filter_base, kernel, conv_after_unet
        Network (``Rays_GoldenSpiral(n_rays, anisotropy)``; StarDist stores the rays' anisotropy).
    epochs, steps_per_epoch, learning_rate, batch_size, seed
        Schedule.
    optimize_on : (list of images, list of labels) or None
        Normalised volumes for ``optimize_thresholds`` (``None``: skip; thresholds default).
    max_candidates : int
        See :func:`optimize_stardist_thresholds`.
    init_weights : path, optional
        Weights file (``weights_best.h5`` of a StarDist3D folder with the same architecture) to start
        from (fine-tuning); None: random initialisation.

    Returns
    -------
    (StarDist3D, history dict, thresholds dict or None)
    """
    from vollseg_dask.networks._tf import import_tf, set_seed
    from vollseg_dask.networks.folders import quiet_stdout

    import_tf()
    from stardist import Rays_GoldenSpiral, fill_label_holes
    from stardist.models import Config3D, StarDist3D

    folder = Path(folder)
    set_seed(seed)
    patch = tuple(int(s) for s in X.shape[1:])
    conf = Config3D(
        rays=Rays_GoldenSpiral(int(n_rays), anisotropy=anisotropy), grid=tuple(grid), anisotropy=anisotropy,
        n_channel_in=1, backbone="unet", unet_n_depth=int(depth), unet_n_filter_base=int(n_filter_base),
        unet_kernel_size=(int(kernel),) * 3, net_conv_after_unet=int(conv_after_unet),
        train_patch_size=patch, train_batch_size=int(batch_size), train_epochs=int(epochs),
        train_steps_per_epoch=int(steps_per_epoch), train_learning_rate=float(learning_rate),
        train_tensorboard=False, use_gpu=False,
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with quiet_stdout(LOG):
        model = StarDist3D(conf, name=folder.name, basedir=str(folder.parent))
    load_init_weights(model.keras_model, init_weights, "stardist")
    Xl = [np.asarray(x, np.float32) for x in X]
    Yl = [fill_label_holes(np.asarray(y)) for y in Y]
    Xv = [np.asarray(x, np.float32) for x in X_val]
    Yv = [fill_label_holes(np.asarray(y)) for y in Y_val]
    t0 = time.perf_counter()
    with quiet_stdout(LOG):
        hist = model.train(Xl, Yl, validation_data=(Xv, Yv), augmenter=_stardist_augmenter(seed),
                           epochs=int(epochs), steps_per_epoch=int(steps_per_epoch))
    seconds = time.perf_counter() - t0
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    if not history.get("loss") or not all(np.isfinite(history["loss"])):
        raise InvalidDataError(f"StarDist training diverged (loss {history.get('loss')})")
    history["seconds"] = [round(seconds, 2)]
    thresholds = None
    if optimize_on is not None:
        thresholds = optimize_stardist_thresholds(model, *optimize_on, max_candidates=max_candidates)
    return model, history, thresholds


def optimize_stardist_thresholds(model: Any, images: list[np.ndarray], labels: list[np.ndarray],
                                 nms_threshs: tuple[float, ...] = (0.3, 0.4, 0.5),
                                 iou_threshs: tuple[float, ...] = (0.3, 0.5, 0.7),
                                 n_tiles: tuple[int, int, int] | None = None,
                                 max_candidates: int = 3000, tol: float = 1e-2,
                                 save_to_json: bool = True) -> dict[str, float]:
    """Choose prob/NMS thresholds on normalised validation volumes; writes ``thresholds.json``.

    stardist's procedure (``StarDist3D.optimize_thresholds``): predict once; for each NMS threshold,
    a golden-section search of the probability threshold maximising the accuracy averaged over
    ``iou_threshs`` (``stardist.utils.optimize_threshold``); keep the best pair. One change: the
    search bracket's lower end is raised so that at most ``max_candidates`` grid points per
    volume pass it (stardist starts at half the maximum probability, which for a weakly trained
    model can mean every voxel is a candidate and NMS never ends).

    Parameters
    ----------
    model : stardist.models.StarDist3D
    images : list of numpy.ndarray, shape (z, y, x), float32
        Normalised validation volumes.
    labels : list of numpy.ndarray, shape (z, y, x), int
        Their instance labels.
    nms_threshs, iou_threshs : tuple of float
    n_tiles : tuple of 3 int or None
    max_candidates : int
        Cap on the candidates per volume at the lowest probability threshold tried.

    Returns
    -------
    dict
        ``{"prob": float, "nms": float}`` (also set as ``model.thresholds`` and written to
        ``thresholds.json`` in the model folder when ``save_to_json``).
    """
    from csbdeep.utils import save_json
    from stardist.utils import optimize_threshold

    from vollseg_dask.networks.folders import quiet_stdout

    if not images or len(images) != len(labels):
        raise ConfigError(f"need matching validation images and labels, got {len(images)} and {len(labels)}")
    Y = [np.asarray(y) for y in labels]
    with quiet_stdout(LOG):
        Yhat = []
        for x in images:
            tiles = tuple(n_tiles) if n_tiles is not None else model._guess_n_tiles(x)
            Yhat.append(model.predict(np.asarray(x, np.float32), n_tiles=tiles, show_tile_progress=False)[:2])
    max_prob = max(float(np.max(p)) for p, _ in Yhat)
    if max_prob <= 0:
        raise InvalidDataError("StarDist predicts zero probability everywhere on the validation data")
    lows = []
    for p, _ in Yhat:
        flat = np.sort(p.ravel())[::-1]
        lows.append(float(flat[min(max_candidates, flat.size) - 1]))
    lo = min(max(max_prob / 2, max(lows)), max_prob * 0.999)
    bracket = (lo, max_prob)
    best = (None, -np.inf, None)
    for nms in nms_threshs:
        with quiet_stdout(LOG):
            prob, score = optimize_threshold(Y, Yhat, model=model, nms_thresh=float(nms), iou_threshs=list(iou_threshs),
                                             bracket=bracket, tol=tol, verbose=0)
        LOG.info("nms %.2f: prob %.3f -> accuracy %.4f", nms, prob, score)
        if score > best[1]:
            best = (float(np.clip(prob, *bracket)), float(score), float(nms))
    th = {"prob": best[0], "nms": best[2]}
    model.thresholds = th
    if save_to_json and getattr(model, "logdir", None) is not None:
        save_json(th, str(model.logdir / "thresholds.json"))
    return th


# ----------------------------------------------------------------------------------------- driver
def _val_volumes(val_sources: list[TrainingSource], patches: PatchSet, max_voxels: int = 64_000_000
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Whole validation volumes when held-out sources exist and are small, else the validation patches."""
    if val_sources and sum(int(np.prod(s.shape)) for s in val_sources) <= max_voxels:
        full = (slice(None),) * 3
        return ([s.read_image(full) for s in val_sources], [s.read_labels(full) for s in val_sources])
    return list(patches.X_val), list(patches.Y_val)


def train_from_config(config: TrainingConfig, verbose: int = 0) -> TrainingResult:
    """Run the whole training described by ``config`` (see the module docstring).

    Returns
    -------
    TrainingResult
        Model folders, seconds per stage, histories, StarDist thresholds, patch counts.
    """
    from vollseg_dask.networks._tf import import_tf, set_seed

    check_init_compatibility(config)  # before any data is read or network trained
    import_tf()
    result = TrainingResult()
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_sources: list[TrainingSource] = []
    val_sources: list[TrainingSource] = []
    if config.generate_npz:
        train_sources, val_sources = load_training_sources(config)
        patches = generate_patches(train_sources, val_sources, config)
    else:
        patches = load_npz(config.npz_path)
        made = (patches.meta.get("boundary_width"), patches.meta.get("boundary_mode", "one_sided"))
        if made != (config.boundary_width, config.boundary_mode):
            LOG.warning("patch file made with boundary %s; recomputing U-Net targets with %s from the patches",
                        made, (config.boundary_width, config.boundary_mode))
            _recompute_targets(patches, config.boundary_width, config.boundary_mode)
        val_sources = load_validation_sources(config)
    result.seconds["patches"] = round(time.perf_counter() - t0, 2)
    if len(patches.X_val) == 0:
        raise InvalidDataError("no validation patches: give validation sources or a validation_split > 0 "
                               "with more than one patch")
    voxel_size = tuple(patches.meta.get("voxel_size") or (config.voxel_size or (1.0, 1.0, 1.0)))
    train_text = config.train_data or ", ".join(patches.meta.get("sources", [])[:8])

    # -------------------------------------------------------------- Noise2Void
    n2v = None
    if config.train_n2v:
        from vollseg_dask.networks.n2v import N2V, N2VConfig

        set_seed(config.seed)
        folder = out / "n2v"
        ncfg = N2VConfig(unet_n_depth=config.network_depth, unet_kern_size=config.kernel,
                         unet_n_first=config.n2v_start_filter or config.start_filter,
                         n2v_perc_pix=config.n2v_perc_pix, n2v_neighborhood_radius=config.n2v_neighborhood_radius,
                         norm_pmin=config.norm_pmin, norm_pmax=config.norm_pmax, voxel_size=voxel_size,
                         train_data=train_text)
        n2v = N2V(ncfg, folder)
        load_init_weights(n2v.keras_model, init_weights_path(config.init_from, "n2v"), "n2v")
        xs = patches.X[patches.kind == KIND_ORIGINAL]
        xv = patches.X_val[patches.kind_val == KIND_ORIGINAL]
        t = time.perf_counter()
        result.histories["n2v"] = n2v.train(xs, xv, epochs=config.n2v_epochs or config.epochs,
                                            steps_per_epoch=config.steps_per_epoch, batch_size=config.batch_size,
                                            learning_rate=config.learning_rate, seed=config.seed, verbose=verbose)
        result.seconds["n2v"] = round(time.perf_counter() - t, 2)
        result.folders["n2v"] = folder
    elif config.denoised_copies and config.n2v_model:
        from vollseg_dask.networks.folders import load_model_folder

        n2v = load_model_folder(config.n2v_model, "n2v")

    if config.generate_npz:
        if config.denoised_copies:
            if n2v is None:
                raise ConfigError("denoised_copies needs TrainN2V: true or an n2v_model folder")
            patches = add_denoised_copies(patches, train_sources + val_sources, n2v)
        result.npz = save_npz(config.npz_path, patches)
    result.n_train, result.n_val = len(patches.X), len(patches.X_val)

    # -------------------------------------------------------------- StarDist
    if config.train_star:
        anis = config.anisotropy or anisotropy_from_voxel_size(voxel_size)
        opt = _val_volumes(val_sources, patches) if config.optimize_thresholds else None
        t = time.perf_counter()
        _, hist, th = train_stardist(
            patches.X, patches.Y, patches.X_val, patches.Y_val, out / "stardist", n_rays=config.rays,
            anisotropy=anis, grid=config.grid, depth=config.network_depth, n_filter_base=config.start_filter,
            kernel=config.kernel, conv_after_unet=config.star_conv_after_unet,
            epochs=config.star_epochs or config.epochs, steps_per_epoch=config.steps_per_epoch,
            learning_rate=config.learning_rate, batch_size=config.batch_size, seed=config.seed,
            optimize_on=opt, max_candidates=config.threshold_max_candidates,
            init_weights=init_weights_path(config.init_from, "stardist"), verbose=verbose)
        result.seconds["stardist"] = round(time.perf_counter() - t, 2)
        from vollseg_dask.networks.folders import write_model_scale

        write_model_scale(out / "stardist", voxel_size, note="voxel size of the training data (train)")
        if config.init_from is not None:
            _carry_segmentation_defaults(config.init_from, out / "stardist")
        result.histories["stardist"] = hist
        result.thresholds = th
        result.folders["stardist"] = out / "stardist"

    # -------------------------------------------------------------- U-Net
    if config.train_unet:
        from vollseg_dask.networks.unet import UNet, UNetConfig

        set_seed(config.seed)
        folder = out / "unet"
        ucfg = UNetConfig(unet_n_depth=config.network_depth, unet_kern_size=config.kernel,
                          unet_n_first=config.unet_start_filter or config.start_filter,
                          boundary_width=config.boundary_width, boundary_mode=config.boundary_mode,
                          threshold=config.unet_threshold,
                          norm_pmin=config.norm_pmin, norm_pmax=config.norm_pmax, voxel_size=voxel_size,
                          train_data=train_text)
        unet = UNet(ucfg, folder)
        load_init_weights(unet.keras_model, init_weights_path(config.init_from, "unet"), "unet")
        t = time.perf_counter()
        result.histories["unet"] = unet.train(patches.X, patches.B, (patches.X_val, patches.B_val),
                                              epochs=config.unet_epochs or config.epochs,
                                              steps_per_epoch=config.steps_per_epoch, batch_size=config.batch_size,
                                              learning_rate=config.learning_rate, seed=config.seed, verbose=verbose)
        result.seconds["unet"] = round(time.perf_counter() - t, 2)
        result.folders["unet"] = folder
    result.seconds["total"] = round(time.perf_counter() - t0, 2)
    return result
