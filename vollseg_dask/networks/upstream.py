"""Model folders written by other packages: csbdeep ``CARE`` U-Nets and ``n2v`` package N2V models.

Upstream VollSeg users hold their U-Net as a csbdeep CARE model folder (the paper's U-Net: a
``csbdeep.models.CARE`` with residual learning and a linear output, whose mask is the network output
above its two-class Otsu threshold) and their denoiser as a folder of the ``n2v`` package. Both are
loaded as they are:

* **CARE** - ``config.json`` is csbdeep's ``Config`` (``n_dim``, ``axes``, ``unet_n_depth``,
  ``unet_kern_size``, ``unet_n_first``, ``unet_residual``, ``unet_last_activation``,
  ``probabilistic``, ...), weights ``weights_best.h5``; built by csbdeep itself
  (``csbdeep.models.CARE(None, name, basedir)``). A probabilistic CARE model's scale channel is
  dropped. Input: percentile-normalised like every network here (``norm_pmin``/``norm_pmax`` of the
  config when present, else (1, 99.8), csbdeep's default).
* **n2v** - ``config.json`` as ``n2v.models.N2VConfig`` writes it (``vars`` of the config): ``means``
  and ``stds`` (lists of strings, one per channel), ``batch_norm``, ``single_net_per_channel``,
  ``blurpool``, ``skip_skipone``, the ``unet_*`` keys and the ``n2v_*`` training keys; weights
  ``weights_best.h5``. The ``n2v`` package cannot be installed beside stardist 0.9.2 (DESIGN §5), so
  its network is built here from csbdeep's convolution blocks, as the ``n2v`` package builds it: n2v's
  U-Net block (csbdeep's, except that the first convolution of every up level has ``unet_n_first``
  filters; ``batch_norm`` as configured), a 1x1x1 linear convolution to one channel, the input added
  when ``unet_residual``, then ``unet_last_activation``. Input ``(x - mean) / std``;
  output ``y * std + mean`` (intensity units), as ``N2V.predict`` does.

Only what the engine can run is accepted: 3-D, one input channel, no ``blurpool`` (2-D only in n2v)
and no ``skip_skipone``; anything else is a :class:`~vollseg_dask.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vollseg_dask.errors import ConfigError

__all__ = ["is_care_config", "is_n2v_package_config", "check_care_config", "check_n2v_package_config",
           "n2v_package_norm", "UpstreamNetwork", "load_care", "load_n2v_package", "build_n2v_package_network"]


def is_care_config(cfg: dict[str, Any]) -> bool:
    """``config.json`` of a csbdeep CARE model (no ``model_type``, csbdeep's U-Net keys, no N2V keys)."""
    return ("unet_n_depth" in cfg and "probabilistic" in cfg and cfg.get("model_type") is None
            and "means" not in cfg and "n_rays" not in cfg)


def is_n2v_package_config(cfg: dict[str, Any]) -> bool:
    """``config.json`` of an ``n2v`` package model (``means``/``stds`` and ``n2v_*`` keys)."""
    return "means" in cfg and "stds" in cfg and any(k.startswith("n2v_") for k in cfg)


def _common_checks(folder: Path, cfg: dict[str, Any], what: str) -> None:
    if cfg.get("n_dim") != 3:
        raise ConfigError(f"{folder} holds a {cfg.get('n_dim')}D {what} (axes {cfg.get('axes')!r}); a 3D one "
                          f"(axes 'ZYXC') is needed")
    if int(cfg.get("n_channel_in", 1)) != 1:
        raise ConfigError(f"{folder}: {what} with n_channel_in={cfg.get('n_channel_in')}; vollseg-dask feeds one "
                          f"channel")
    for key in ("unet_n_depth", "unet_kern_size", "unet_n_first", "unet_last_activation"):
        if key not in cfg:
            raise ConfigError(f"{folder}: {what} config.json lacks {key!r}")


def check_care_config(folder: Path, cfg: dict[str, Any]) -> tuple[float, float]:
    """Check a CARE ``config.json``; return the normalisation percentiles (pmin, pmax)."""
    _common_checks(folder, cfg, "CARE model")
    return float(cfg.get("norm_pmin", 1.0)), float(cfg.get("norm_pmax", 99.8))


def check_n2v_package_config(folder: Path, cfg: dict[str, Any]) -> None:
    """Check an ``n2v`` package ``config.json`` (what the engine can run)."""
    _common_checks(folder, cfg, "n2v model")
    for key, bad in (("blurpool", True), ("skip_skipone", True)):
        if cfg.get(key, False) is bad:
            raise ConfigError(f"{folder}: n2v config {key}={bad} is not supported (3-D n2v models use "
                              f"{key}=false)")
    if cfg.get("probabilistic", False):
        raise ConfigError(f"{folder}: probabilistic n2v models are not supported")
    n2v_package_norm(folder, cfg)


def n2v_package_norm(folder: Path, cfg: dict[str, Any]) -> tuple[float, float]:
    """``(mean, std)`` of an ``n2v`` folder's single channel (``means``/``stds`` are strings in n2v)."""
    try:
        means = [float(m) for m in cfg["means"]]
        stds = [float(s) for s in cfg["stds"]]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{folder}: n2v config means/stds must be lists of numbers, got "
                          f"{cfg.get('means')!r}/{cfg.get('stds')!r}") from exc
    if len(means) != 1 or len(stds) != 1:
        raise ConfigError(f"{folder}: n2v model with {len(means)} channel means; vollseg-dask feeds one channel")
    if not stds[0] > 0:
        raise ConfigError(f"{folder}: n2v config stds {cfg['stds']!r} must be > 0")
    return means[0], stds[0]


@dataclass
class UpstreamNetwork:
    """A loaded upstream network: what the tiled predictor needs.

    Attributes
    ----------
    keras_model : keras.Model
        Input (B, z, y, x, 1); first output channel is used.
    div_by : int
        Spatial sizes fed to the network must be multiples of this (``2 ** unet_n_depth``).
    config : dict
        The folder's ``config.json``.
    """

    keras_model: Any
    div_by: int
    config: dict[str, Any]


def load_care(folder: str | os.PathLike[str], weights: str = "weights_best.h5") -> UpstreamNetwork:
    """Load a csbdeep CARE folder with csbdeep itself.

    Raises
    ------
    ConfigError
        csbdeep cannot build it, or the weights do not fit.
    """
    from vollseg_dask.networks._tf import import_tf
    from vollseg_dask.networks.folders import quiet_stdout

    import_tf()
    from csbdeep.models import CARE

    path = Path(folder)
    with quiet_stdout():
        try:
            model = CARE(None, name=path.name, basedir=str(path.parent))
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ConfigError(f"cannot build the CARE model of {path}: {exc}") from exc
        try:
            model.load_weights(weights)
        except (ValueError, KeyError, OSError) as exc:
            raise ConfigError(f"weights {path / weights} do not fit the CARE network of {path}: {exc}") from exc
    return UpstreamNetwork(model.keras_model, 2 ** int(model.config.unet_n_depth), dict(vars(model.config)))


def build_n2v_package_network(cfg: dict[str, Any]) -> Any:
    """The Keras network of an ``n2v`` package folder (one channel), from csbdeep's U-Net block.

    Parameters
    ----------
    cfg : dict
        ``config.json`` contents.

    Returns
    -------
    keras.Model
        Input (None, None, None, 1) -> output (..., 1).
    """
    from vollseg_dask.networks._tf import import_tf

    import_tf()
    import keras
    from csbdeep.internals.blocks import conv_block3

    k = int(cfg["unet_kern_size"])
    depth, n0 = int(cfg["unet_n_depth"]), int(cfg["unet_n_first"])
    bn = bool(cfg.get("batch_norm", True))

    def conv(n_filter: int, name: str, activation: str = "relu") -> Any:
        return conv_block3(n_filter, k, k, k, activation=activation, batch_norm=bn, init="glorot_uniform",
                           name=f"channel_0{name}")

    inp = keras.layers.Input((None, None, None, 1), name="input")
    # the n2v package's U-Net block (2 convolutions per level): unlike csbdeep's, the first
    # convolution of every up level has ``unet_n_first`` filters whatever the level
    skips, x = [], inp
    for n in range(depth):
        for i in range(2):
            x = conv(n0 * 2 ** n, f"down_level_{n}_no_{i}")(x)
        skips.append(x)
        x = keras.layers.MaxPooling3D((2, 2, 2), name=f"channel_0max_{n}")(x)
    x = conv(n0 * 2 ** depth, "middle_0")(x)
    x = conv(n0 * 2 ** max(0, depth - 1), "middle_2")(x)
    for n in reversed(range(depth)):
        x = keras.layers.Concatenate(axis=-1)([keras.layers.UpSampling3D((2, 2, 2))(x), skips[n]])
        x = conv(n0, f"up_level_{n}_no_0")(x)
        x = conv(n0 * 2 ** max(0, n - 1), f"up_level_{n}_no_2")(x)
    feat = x
    out = keras.layers.Conv3D(1, (1, 1, 1), activation="linear")(feat)
    if cfg.get("unet_residual", False):
        out = keras.layers.Add()([out, inp])
    out = keras.layers.Activation(cfg["unet_last_activation"])(out)
    return keras.Model(inputs=inp, outputs=out)


def load_n2v_package(folder: str | os.PathLike[str], cfg: dict[str, Any],
                     weights: str = "weights_best.h5") -> UpstreamNetwork:
    """Build an ``n2v`` package network and load its weights.

    Raises
    ------
    ConfigError
        The weights do not fit the network the config describes.
    """
    path = Path(folder)
    check_n2v_package_config(path, cfg)
    model = build_n2v_package_network(cfg)
    try:
        model.load_weights(str(path / weights))
    except (ValueError, KeyError, OSError) as exc:
        raise ConfigError(f"weights {path / weights} do not fit the n2v network of {path / 'config.json'}: "
                          f"{exc}") from exc
    return UpstreamNetwork(model, 2 ** int(cfg["unet_n_depth"]), dict(cfg))
