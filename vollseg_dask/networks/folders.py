"""Standard model folders: validation without TensorFlow, loading, and the bundled models.

A model folder (DESIGN §4) holds ``config.json`` and ``weights_best.h5`` (legacy Keras HDF5, what
csbdeep 0.8.2 / stardist 0.9.2 write under Keras 3), plus ``thresholds.json`` for StarDist. Three
kinds:

* ``"stardist"`` - a ``stardist.models.StarDist3D`` folder (stardist's own ``config.json``);
* ``"unet"`` - :class:`vollseg_dask.networks.unet.UNet` (``model_type`` ``vollseg_dask.unet``), or an
  upstream csbdeep ``CARE`` folder (flavour ``"care"``, :mod:`vollseg_dask.networks.upstream`);
* ``"n2v"`` - :class:`vollseg_dask.networks.n2v.N2V` (``model_type`` ``vollseg_dask.n2v``), or a
  folder of the ``n2v`` package (flavour ``"n2v-package"``: normalised with its ``means``/``stds``).

:func:`inspect_model_folder` checks a folder and reads its metadata without importing TensorFlow
(use it on the client); :func:`load_model_folder` builds the network (use it in a worker).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vollseg_dask.errors import ConfigError, ModelNotFoundError

__all__ = [
    "MODEL_KINDS",
    "ModelKind",
    "ModelFolderInfo",
    "inspect_model_folder",
    "load_model_folder",
    "bundled_model_dir",
    "stardist_rays",
    "quiet_stdout",
    "SEGMENTATION_DEFAULTS",
    "read_segmentation_defaults",
    "write_segmentation_defaults",
    "MODEL_SCALE",
    "read_model_scale",
    "write_model_scale",
]

LOG = logging.getLogger(__name__)

ModelKind = Literal["stardist", "unet", "n2v"]
MODEL_KINDS: tuple[str, ...] = ("stardist", "unet", "n2v")
_MODEL_TYPES = {"unet": "vollseg_dask.unet", "n2v": "vollseg_dask.n2v"}
_DEFAULT_THRESHOLDS = {"prob": 0.5, "nms": 0.4}
#: file in a StarDist model folder holding the segmentation settings the model is meant for
SEGMENTATION_DEFAULTS = "segmentation_defaults.json"
#: file in a StarDist model folder recording the voxel size (µm) and object diameter it was trained at
MODEL_SCALE = "model_scale.json"


@contextlib.contextmanager
def quiet_stdout(logger: logging.Logger = LOG):
    """Capture what csbdeep/stardist ``print`` and send it to ``logger`` at debug level."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        text = buf.getvalue().strip()
        if text:
            logger.debug("%s", text)


@dataclass
class ModelFolderInfo:
    """What :func:`inspect_model_folder` learns about a folder (plain data, no TensorFlow).

    Attributes
    ----------
    path : pathlib.Path
        The folder.
    kind : str
        ``"stardist"``, ``"unet"`` or ``"n2v"``.
    config : dict
        ``config.json`` contents.
    weights : pathlib.Path
        The weights file that loading uses (``weights_best.h5`` when present).
    thresholds : dict
        StarDist ``{"prob": float, "nms": float}`` from ``thresholds.json`` (defaults 0.5/0.4 when
        the file is absent, see ``thresholds_from_file``); empty for other kinds.
    thresholds_from_file : bool
        Whether ``thresholds.json`` was present and valid.
    n_rays : int or None
        StarDist rays.
    grid : tuple of int or None
        StarDist output subsampling (z, y, x).
    anisotropy : tuple of float or None
        StarDist anisotropy (z, y, x) of rays and training targets.
    norm : tuple of float
        Percentiles (pmin, pmax) the network's input is normalised with.
    flavour : str
        ``"vollseg"`` (this project's folders, and every StarDist folder), ``"care"`` (csbdeep CARE
        U-Net: linear output, mask by Otsu threshold) or ``"n2v-package"``.
    fixed_norm : tuple of float or None
        ``(mean, std)``: the input is ``(x - mean) / std`` instead of percentile-normalised
        (``n2v`` package folders).
    """

    path: Path
    kind: str
    config: dict[str, Any]
    weights: Path
    thresholds: dict[str, float] = field(default_factory=dict)
    thresholds_from_file: bool = False
    n_rays: int | None = None
    grid: tuple[int, ...] | None = None
    anisotropy: tuple[float, ...] | None = None
    norm: tuple[float, float] = (1.0, 99.8)
    flavour: str = "vollseg"
    fixed_norm: tuple[float, float] | None = None
    segmentation_defaults: dict[str, Any] = field(default_factory=dict)


def read_model_scale(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"voxel_size": (z, y, x) µm, "object_diameter_um": float or None}`` of a model folder's
    ``model_scale.json``; empty when absent (scale-aware inference then uses the U-Net's
    ``voxel_size``, or none)."""
    path = Path(folder) / MODEL_SCALE
    if not path.is_file():
        return {}
    data = _read_json(path)
    vs = data.get("voxel_size") if isinstance(data, dict) else None
    ok = isinstance(vs, list) and len(vs) == 3 and all(isinstance(v, (int, float)) and v > 0 for v in vs)
    d = data.get("object_diameter_um") if isinstance(data, dict) else None
    if not ok or (d is not None and not (isinstance(d, (int, float)) and d > 0)):
        raise ConfigError(f"{path} must hold voxel_size [z, y, x] > 0 (µm) and optionally object_diameter_um > 0, "
                          f"got {data!r}")
    return {"voxel_size": tuple(float(v) for v in vs), "object_diameter_um": None if d is None else float(d)}


def write_model_scale(folder: str | os.PathLike[str], voxel_size: Any, object_diameter_um: float | None = None,
                      note: str | None = None) -> Path:
    """Write ``folder/model_scale.json`` (voxel size in µm the model was trained at; object diameter)."""
    path = Path(folder) / MODEL_SCALE
    payload: dict[str, Any] = {"voxel_size": [float(v) for v in voxel_size], "object_diameter_um": object_diameter_um}
    if note:
        payload["note"] = note
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    read_model_scale(folder)
    return path


def read_segmentation_defaults(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The recommended :class:`~vollseg_dask.segmentation.SegmentationConfig` settings of a model folder.

    Parameters
    ----------
    folder : path
        Model folder (StarDist's: it defines the objects).

    Returns
    -------
    dict
        ``settings`` of ``folder/segmentation_defaults.json`` (e.g. ``{"mode": "vollseg",
        "foreground_threshold": 0.1}``); empty when the file is absent.

    Raises
    ------
    ConfigError
        Invalid JSON, no ``settings`` object, or a key that is not a segmentation setting.
    """
    path = Path(folder) / SEGMENTATION_DEFAULTS
    if not path.is_file():
        return {}
    data = _read_json(path)
    settings = data.get("settings") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        raise ConfigError(f"{path} must hold an object with a 'settings' object, got {data!r}")
    from vollseg_dask.segmentation.config import SegmentationConfig

    unknown = sorted(set(settings) - set(SegmentationConfig.model_fields))
    if unknown:
        raise ConfigError(f"{path}: unknown segmentation setting(s) {unknown}; allowed: "
                          f"{', '.join(SegmentationConfig.model_fields)}")
    return dict(settings)


def write_segmentation_defaults(folder: str | os.PathLike[str], settings: dict[str, Any], *, source: str,
                                measured: dict[str, Any] | None = None) -> Path:
    """Write ``folder/segmentation_defaults.json`` (``settings``, where they come from, figures).

    Parameters
    ----------
    folder : path
        Model folder.
    settings : dict
        SegmentationConfig fields (validated).
    source : str
        How the settings were chosen (free text, shown to users).
    measured : dict, optional
        Figures measured with them (e.g. ``{"f1_iou0.5": 0.909, "data": "..."}``).
    """
    from vollseg_dask.segmentation.config import SegmentationConfig

    SegmentationConfig(**settings)  # raises ConfigError / ValidationError on a bad key or value
    path = Path(folder) / SEGMENTATION_DEFAULTS
    payload: dict[str, Any] = {"settings": settings, "source": source}
    if measured:
        payload["measured"] = measured
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None


def _pick_weights(folder: Path, preferred: str = "weights_best.h5") -> Path:
    best = folder / preferred
    if best.is_file():
        return best
    others = sorted(list(folder.glob("*.h5")) + list(folder.glob("*.hdf5")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    if not others:
        raise ModelNotFoundError(f"model folder {folder} has no weights file {preferred} (nor any *.h5)")
    return others[0]


def _guess_kind(cfg: dict[str, Any]) -> str:
    mt = cfg.get("model_type")
    if mt in _MODEL_TYPES.values():
        return next(k for k, v in _MODEL_TYPES.items() if v == mt)
    if "n_rays" in cfg:
        return "StarDist3D" if cfg.get("n_dim") == 3 else f"StarDist{cfg.get('n_dim')}D"
    if "means" in cfg and "stds" in cfg:
        return "n2v package"
    if "unet_n_depth" in cfg and "probabilistic" in cfg:
        return "csbdeep CARE"
    return "unknown"


def inspect_model_folder(path: str | os.PathLike[str], kind: ModelKind | str) -> ModelFolderInfo:
    """Check that ``path`` is a usable model folder of ``kind`` and read its metadata (no TensorFlow).

    Parameters
    ----------
    path : path
        Model folder.
    kind : {"stardist", "unet", "n2v"}

    Returns
    -------
    ModelFolderInfo

    Raises
    ------
    ModelNotFoundError
        The folder, its ``config.json`` or its weights file is missing (the message names it).
    ConfigError
        Unknown ``kind``, invalid JSON, or a folder of another kind or dimensionality (e.g. a 2D
        StarDist model where a 3D one is needed).
    """
    if kind not in MODEL_KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    folder = Path(path)
    if not folder.exists():
        raise ModelNotFoundError(f"{kind} model folder not found: {folder}")
    if not folder.is_dir():
        raise ModelNotFoundError(f"{kind} model path {folder} is not a folder")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelNotFoundError(f"{kind} model folder {folder} has no config.json")
    cfg = _read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{cfg_path} must hold a JSON object")
    found = _guess_kind(cfg)

    if kind == "stardist":
        if "n_rays" not in cfg:
            raise ConfigError(f"{folder} is not a StarDist model folder (config.json looks like a {found} model)")
        n_dim = cfg.get("n_dim")
        if n_dim != 3:
            raise ConfigError(f"{folder} holds a {n_dim}D StarDist model (axes {cfg.get('axes')!r}); "
                              f"a 3D StarDist model (StarDist3D, axes 'ZYXC') is needed")
        if "rays_json" not in cfg:
            raise ConfigError(f"{folder}: StarDist3D config.json has no rays_json")
        if int(cfg.get("n_channel_in", 1)) != 1:
            raise ConfigError(f"{folder}: StarDist model with {cfg.get('n_channel_in')} input channels; "
                              f"vollseg-dask feeds one channel")
        if cfg.get("n_classes") not in (None, 0):
            LOG.warning("%s: multi-class StarDist model; class outputs are ignored", folder)
        weights = _pick_weights(folder)
        th_path = folder / "thresholds.json"
        thresholds = dict(_DEFAULT_THRESHOLDS)
        from_file = False
        if th_path.is_file():
            th = _read_json(th_path)
            ok = isinstance(th, dict) and all(
                isinstance(th.get(k), (int, float)) and 0 < th[k] < 1 for k in ("prob", "nms"))
            if not ok:
                raise ConfigError(f"{th_path} must hold prob and nms thresholds in (0, 1), got {th!r}")
            thresholds = {"prob": float(th["prob"]), "nms": float(th["nms"])}
            from_file = True
        else:
            LOG.warning("%s has no thresholds.json: using prob=%.2f, nms=%.2f", folder,
                        thresholds["prob"], thresholds["nms"])
        aniso = cfg.get("anisotropy")
        return ModelFolderInfo(path=folder, kind=kind, config=cfg, weights=weights, thresholds=thresholds,
                               thresholds_from_file=from_file, n_rays=int(cfg["n_rays"]),
                               segmentation_defaults=read_segmentation_defaults(folder),
                               grid=tuple(int(g) for g in cfg.get("grid", (1, 1, 1))),
                               anisotropy=None if aniso is None else tuple(float(a) for a in aniso))

    from vollseg_dask.networks import upstream

    if kind == "unet" and upstream.is_care_config(cfg):
        norm = upstream.check_care_config(folder, cfg)
        return ModelFolderInfo(path=folder, kind=kind, config=cfg, weights=_pick_weights(folder), norm=norm,
                               flavour="care")
    if kind == "n2v" and upstream.is_n2v_package_config(cfg):
        upstream.check_n2v_package_config(folder, cfg)
        return ModelFolderInfo(path=folder, kind=kind, config=cfg, weights=_pick_weights(folder), flavour="n2v-package",
                               fixed_norm=upstream.n2v_package_norm(folder, cfg))
    expected = _MODEL_TYPES[kind]
    if cfg.get("model_type") != expected:
        raise ConfigError(f"{folder} is not a vollseg-dask {kind} model folder: config.json model_type is "
                          f"{cfg.get('model_type')!r} (looks like a {found} model), expected {expected!r}")
    if cfg.get("n_dim", 3) != 3:
        raise ConfigError(f"{folder} holds a {cfg.get('n_dim')}D network; a 3D one is needed")
    if int(cfg.get("n_channel_in", 1)) != 1:
        raise ConfigError(f"{folder}: {kind} model with {cfg.get('n_channel_in')} input channels; "
                          f"vollseg-dask feeds one channel")
    weights = _pick_weights(folder)
    return ModelFolderInfo(path=folder, kind=kind, config=cfg, weights=weights,
                           norm=(float(cfg.get("norm_pmin", 1.0)), float(cfg.get("norm_pmax", 99.8))))


def load_model_folder(path: str | os.PathLike[str], kind: ModelKind | str) -> Any:
    """Validate and load a model folder.

    Parameters
    ----------
    path : path
        Model folder.
    kind : {"stardist", "unet", "n2v"}

    Returns
    -------
    stardist.models.StarDist3D or vollseg_dask.networks.unet.UNet or vollseg_dask.networks.n2v.N2V or vollseg_dask.networks.upstream.UpstreamNetwork
        StarDist models carry their ``thresholds`` (from ``thresholds.json``); CARE and ``n2v``
        package folders give an ``UpstreamNetwork`` (``keras_model``, ``div_by``, ``config``).

    Raises
    ------
    ModelNotFoundError, ConfigError
        See :func:`inspect_model_folder`; ConfigError also when the weights do not fit the network.
    """
    info = inspect_model_folder(path, kind)
    if info.flavour == "care":
        from vollseg_dask.networks.upstream import load_care

        return load_care(info.path, weights=info.weights.name)
    if info.flavour == "n2v-package":
        from vollseg_dask.networks.upstream import load_n2v_package

        return load_n2v_package(info.path, info.config, weights=info.weights.name)
    if kind == "unet":
        from vollseg_dask.networks.unet import UNet

        return UNet.load(info.path, weights=info.weights.name)
    if kind == "n2v":
        from vollseg_dask.networks.n2v import N2V

        return N2V.load(info.path, weights=info.weights.name)
    from vollseg_dask.networks._tf import import_tf

    import_tf()
    from stardist.models import StarDist3D

    with quiet_stdout():
        try:
            model = StarDist3D(None, name=info.path.name, basedir=str(info.path.parent))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"cannot build the StarDist3D model of {info.path}: {exc}") from exc
    with quiet_stdout():
        try:
            model.load_weights(info.weights.name)
        except (ValueError, KeyError, OSError) as exc:
            raise ConfigError(f"weights {info.weights} do not fit the network in {info.path / 'config.json'}: {exc}") from exc
    model.thresholds = dict(info.thresholds)
    return model


def stardist_rays(config: dict[str, Any] | ModelFolderInfo | str | os.PathLike[str]) -> Any:
    """The exact ``Rays_Base`` of a StarDist model (from ``rays_json``, anisotropy included).

    StarDist replaces isotropic rays by anisotropic ones when the model has an ``anisotropy``, so
    predictors must take the rays from the model, not rebuild them from the ray count.

    Parameters
    ----------
    config : dict or ModelFolderInfo or path
        StarDist ``config.json`` contents, an inspected folder, or the folder.
    """
    if isinstance(config, ModelFolderInfo):
        cfg = config.config
    elif isinstance(config, dict):
        cfg = config
    else:
        cfg = inspect_model_folder(config, "stardist").config
    from stardist.rays3d import rays_from_json

    return rays_from_json(cfg["rays_json"])


def bundled_model_dir(kind: ModelKind | str) -> Path:
    """Folder of the model of ``kind`` shipped with the package (``vollseg_dask/models/<kind>``).

    Trained by ``scripts/train_bundled_models.py`` on the project's synthetic membrane data; see the
    ``README.md`` card in each folder.

    Raises
    ------
    ConfigError
        Unknown kind.
    ModelNotFoundError
        The package was installed without its models.
    """
    if kind not in MODEL_KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    from importlib.resources import files

    path = Path(str(files("vollseg_dask"))) / "models" / kind
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"bundled {kind} model not found at {path} (package installed without models?)")
    return path
