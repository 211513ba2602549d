"""Empirical receptive fields of the networks, and the block halo they imply.

"Tile only what has bounded reach" (DESIGN §3): a block's network outputs over its core equal the
outputs of one pass over the whole volume only if the read region holds every input voxel that can
influence a core voxel. That reach is *measured* here, per network and per axis, not taken from a
formula, because it depends on the architecture details (convolutions per level, the StarDist
grid stem, kernel sizes, pooling phases) and on what the deep-learning runtime actually computes.

Method (impulse response on a random background)
------------------------------------------------
A base volume of uniform random intensities in [0, 1) (the range of normalised images; a random
background keeps the ReLUs active, where an all-zero volume can hide paths) is fed to the network
together with copies in which *one* voxel is raised by 1. Every output voxel that differs (any
bit, ``!=``) between a copy and the base is influenced by that voxel. Outputs on a coarser grid
(StarDist's ``grid``) are first repeated to full resolution, exactly as the predictor upsamples
them (``numpy.repeat``), so the reach is measured in full-resolution voxels of the maps the
predictor returns; every output head (StarDist probability *and* distances) counts.

A U-Net is translation-equivariant only by multiples of its divisibility ``d`` (``2**depth``,
times the grid for StarDist): the reach depends on the phase of the voxel inside the pooling
windows. The impulse is therefore placed at ``max(d)`` positions ``mid + k * (1, 1, 1)``,
``k = 0 .. max(d) - 1``, which visit every phase on every axis, and the extents are maximised.
Base and perturbed copies always share one batch, so each comparison is between two samples of
one computation. When the changed region touches the border of the probe volume, the volume is
doubled along that axis and the measurement repeated (up to ``max_shape``).

For an impulse at input position ``i`` the changed outputs span ``[i - lo, i + hi]`` on an axis;
output ``o`` therefore depends on inputs in ``[o - hi, o + lo]``: ``before = hi`` voxels of
context below a core and ``after = lo`` above it. The halo is
``ceil(max(before, after) / d) * d`` per axis (symmetric, a multiple of the divisibility, so
that network tiles placed at grid-aligned positions have identical shapes and can be batched).

Cross-checks in ``tests/test_predictor_network_rf.py``: the measurement is at least StarDist's own
estimate (``StarDist3D._compute_receptive_field``, one impulse on a zero volume) and csbdeep's
receptive field of its U-Net (``tile_overlap`` table); an untiled pass equals tiled passes with this
halo and differs with a smaller one.

Caching
-------
Measuring costs a few forward passes; results are cached in this process and on disk under
:func:`receptive_field_cache_dir` (``VOLLSEG_CACHE_DIR`` or ``~/.cache/vollseg-dask``), keyed by
the SHA-256 of the folder's ``config.json`` and weights file and :data:`METHOD_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vollseg_dask.errors import ConfigError, ShapeError

__all__ = [
    "ReceptiveField",
    "measure_receptive_field",
    "round_up",
    "folder_digest",
    "receptive_field_cache_dir",
    "load_cached_receptive_field",
    "store_cached_receptive_field",
    "METHOD_VERSION",
    "halo_sum",
    "halo_max",
]

LOG = logging.getLogger(__name__)

#: bump when the measurement changes (invalidates disk caches)
METHOD_VERSION = 1

#: ``forward(batch)`` -> list of outputs; batch (B, z, y, x, C) float32, outputs (B, z/g, y/g, x/g, K)
Forward = Callable[[np.ndarray], Sequence[np.ndarray]]


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value`` (``value >= 0``, ``multiple >= 1``)."""
    return -(-int(value) // int(multiple)) * int(multiple)


@dataclass(frozen=True)
class ReceptiveField:
    """Measured reach of a network, per axis (z, y, x), in full-resolution input voxels.

    Attributes
    ----------
    before, after : tuple of 3 int
        Context needed below (lower coordinates) and above a voxel of interest.
    div : tuple of 3 int
        Divisibility of the network input (``2**depth`` x grid); tiles start at multiples of it.
    grid : tuple of 3 int
        Output subsampling (StarDist ``grid``; 1 for full-resolution outputs).
    probe_shape : tuple of 3 int
        Shape of the probe volume of the final measurement.
    method : str
        How it was measured (``"impulse"``).
    """

    before: tuple[int, int, int]
    after: tuple[int, int, int]
    div: tuple[int, int, int]
    grid: tuple[int, int, int]
    probe_shape: tuple[int, int, int]
    method: str = "impulse"

    @property
    def radius(self) -> tuple[int, int, int]:
        """``max(before, after)`` per axis (voxels)."""
        return tuple(max(b, a) for b, a in zip(self.before, self.after, strict=True))  # type: ignore[return-value]

    @property
    def halo(self) -> tuple[int, int, int]:
        """Block halo per axis: :attr:`radius` rounded up to a multiple of :attr:`div` (voxels)."""
        return tuple(round_up(r, d) for r, d in zip(self.radius, self.div, strict=True))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (lists), with ``radius`` and ``halo`` for readers."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        d["radius"] = list(self.radius)
        d["halo"] = list(self.halo)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReceptiveField:
        """Inverse of :meth:`to_dict` (extra keys ignored)."""
        return cls(before=_t3(d["before"]), after=_t3(d["after"]), div=_t3(d["div"]), grid=_t3(d["grid"]),
                   probe_shape=_t3(d["probe_shape"]), method=str(d.get("method", "impulse")))


def _t3(v: Sequence[int]) -> tuple[int, int, int]:
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ShapeError(f"expected 3 values (z, y, x), got {v!r}")
    return t  # type: ignore[return-value]


def _changed_extent(out0: np.ndarray, out1: np.ndarray, grid: Sequence[int]) -> list[tuple[int, int]] | None:
    """Per-axis (min, max) full-resolution index of outputs that differ; None when nothing changed."""
    diff = out0 != out1  # (z', y', x', K)
    diff = diff.reshape(diff.shape[:3] + (-1,)).any(axis=-1)
    if not diff.any():
        return None
    ext = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.flatnonzero(diff.any(axis=other))
        g = int(grid[ax])
        # cell j covers full-resolution voxels [j*g, (j+1)*g) after numpy.repeat
        ext.append((int(idx[0]) * g, int(idx[-1]) * g + g - 1))
    return ext


def measure_receptive_field(forward: Forward, *, div: Sequence[int], grid: Sequence[int] = (1, 1, 1),
                            n_channel_in: int = 1, shape: Sequence[int] | None = None, seed: int = 0,
                            batch_size: int = 4, max_shape: int = 1024) -> ReceptiveField:
    """Measure a network's receptive field by impulse responses (see module docstring).

    Parameters
    ----------
    forward : callable
        ``forward(batch) -> list of arrays``: ``batch`` has shape (B, z, y, x, n_channel_in),
        float32; each output has shape (B, z/gz, y/gy, x/gx, K) (any K).
    div : sequence of 3 int
        Input divisibility per axis; the probe shape and impulse positions respect it.
    grid : sequence of 3 int
        Output subsampling per axis.
    n_channel_in : int
        Input channels (the impulse raises all of them).
    shape : sequence of 3 int, optional
        Initial probe shape (rounded up to ``div``); default ``max(64, 4 * div)`` per axis, times
        the grid.
    seed : int
        Seed of the random background.
    batch_size : int
        Samples per forward pass (the base volume is one of them).
    max_shape : int
        Largest probe size per axis; a reach not contained by it raises :class:`ShapeError`.

    Returns
    -------
    ReceptiveField
    """
    div = _t3(div)
    grid = _t3(grid)
    if min(div) < 1 or min(grid) < 1 or any(d % g for d, g in zip(div, grid, strict=True)):
        raise ConfigError(f"div {div} must be positive multiples of grid {grid}")
    if batch_size < 2:
        raise ConfigError(f"batch_size must be >= 2 (base + one impulse), got {batch_size}")
    dmax = max(div)
    if shape is None:
        shape = tuple(max(32 * g, 4 * d) for d, g in zip(div, grid, strict=True))
    probe = [round_up(max(int(s), 2 * dmax + 2), d) for s, d in zip(shape, div, strict=True)]
    rng = np.random.default_rng(seed)
    while True:
        base = rng.random((*probe, n_channel_in), dtype=np.float32)
        mid = [(p // 2) // dmax * dmax for p in probe]
        positions = [tuple(m + k for m in mid) for k in range(dmax)]
        before = [0, 0, 0]
        after = [0, 0, 0]
        touched = [False, False, False]
        any_change = False
        per = batch_size - 1
        for start in range(0, len(positions), per):
            chunk = positions[start:start + per]
            batch = np.repeat(base[None], len(chunk) + 1, axis=0)
            for j, pos in enumerate(chunk, start=1):
                batch[(j, *pos)] += 1.0
            res = forward(batch)
            outs = [np.asarray(res)] if isinstance(res, np.ndarray) else [np.asarray(o) for o in res]
            for o in outs:
                if o.ndim != 5 or tuple(o.shape[1:4]) != tuple(p // g for p, g in zip(probe, grid, strict=True)):
                    raise ShapeError(f"network output shape {o.shape} does not match the probe {probe} "
                                     f"with grid {grid}")
            for j, pos in enumerate(chunk, start=1):
                exts = [_changed_extent(o[0], o[j], grid) for o in outs]
                exts = [e for e in exts if e is not None]
                if not exts:
                    continue
                any_change = True
                for ax in range(3):
                    lo = min(e[ax][0] for e in exts)
                    hi = max(e[ax][1] for e in exts)
                    if lo <= 0 or hi >= probe[ax] - 1:
                        touched[ax] = True
                    # outputs changed over [pos - (pos - lo), pos + (hi - pos)]
                    after[ax] = max(after[ax], pos[ax] - lo)
                    before[ax] = max(before[ax], hi - pos[ax])
        if not any_change:
            LOG.warning("network output does not change under a unit impulse: receptive field taken as 0")
            break
        if not any(touched):
            break
        grown = [p * 2 if t else p for p, t in zip(probe, touched, strict=True)]
        if max(grown) > max_shape:
            raise ShapeError(f"receptive field reaches the border of a probe of shape {probe}; "
                             f"growing it would exceed max_shape={max_shape}")
        LOG.debug("receptive field touches the probe border; growing probe %s -> %s", probe, grown)
        probe = grown
    return ReceptiveField(before=_t3(before), after=_t3(after), div=div, grid=grid, probe_shape=_t3(probe))


# --------------------------------------------------------------------------------------- caching


def receptive_field_cache_dir() -> Path | None:
    """Folder of the on-disk cache: ``$VOLLSEG_CACHE_DIR/receptive_field`` (``VOLLSEG_CACHE_DIR=""``
    disables it) or ``~/.cache/vollseg-dask/receptive_field``."""
    env = os.environ.get("VOLLSEG_CACHE_DIR")
    if env is not None:
        return Path(env) / "receptive_field" if env else None
    return Path.home() / ".cache" / "vollseg-dask" / "receptive_field"


def folder_digest(config_path: str | os.PathLike[str], weights_path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a model folder's ``config.json`` and weights file contents."""
    h = hashlib.sha256()
    for p in (Path(config_path), Path(weights_path)):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _cache_file(kind: str, digest: str) -> Path | None:
    root = receptive_field_cache_dir()
    if root is None:
        return None
    return root / f"{kind}-{digest[:32]}-v{METHOD_VERSION}.json"


def load_cached_receptive_field(kind: str, digest: str) -> ReceptiveField | None:
    """The cached measurement of a model (by :func:`folder_digest`), or None."""
    path = _cache_file(kind, digest)
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("digest") != digest or data.get("method_version") != METHOD_VERSION:
            return None
        return ReceptiveField.from_dict(data["receptive_field"])
    except (OSError, ValueError, KeyError, TypeError, ShapeError) as exc:
        LOG.warning("ignoring unreadable receptive-field cache %s: %s", path, exc)
        return None


def store_cached_receptive_field(kind: str, digest: str, rf: ReceptiveField) -> Path | None:
    """Write a measurement to the disk cache (atomically); returns the file, or None when disabled
    or not writable (a cache failure never fails a run)."""
    path = _cache_file(kind, digest)
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"kind": kind, "digest": digest, "method_version": METHOD_VERSION,
                                   "receptive_field": rf.to_dict()}, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path
    except OSError as exc:
        LOG.warning("cannot write receptive-field cache %s: %s", path, exc)
        return None


def halo_sum(*halos: Sequence[int]) -> tuple[int, int, int]:
    """Per-axis sum of halos (chained networks: each one's reach adds)."""
    out = [0, 0, 0]
    for h in halos:
        for i, v in enumerate(_t3(h)):
            out[i] += v
    return _t3(out)


def halo_max(*halos: Sequence[int]) -> tuple[int, int, int]:
    """Per-axis maximum of halos (networks fed the same input in parallel)."""
    out = [0, 0, 0]
    for h in halos:
        for i, v in enumerate(_t3(h)):
            out[i] = max(out[i], v)
    return _t3(out)

