"""Resampling between the store's voxel grid and a model's grid, anchored in global coordinates.

A network trained at voxel size ``m`` (µm) sees a store of voxel size ``v`` through the scale factor
``s = v / m`` per axis (times ``model diameter / object diameter`` when the user gives the objects'
size): model-grid voxel ``j`` has its centre at store coordinate ``x(j) = (j + 0.5) / s - 0.5``, and
store voxel ``i`` sits at model coordinate ``c(i) = (i + 0.5) * s - 0.5``. The model grid of an axis
of ``N`` store voxels has ``max(1, round(N * s))`` voxels.

Both directions use separable linear interpolation whose two source indices and weight are computed
from *global* coordinates (``floor`` of the global position and its fractional part, exact in
float64), clamped to the axis (edge values repeat). A resampled voxel is therefore a pure function
of its global position and the source values, whatever block it is computed in: tiled runs stay
byte-identical to untiled ones as long as each block's source region holds the two neighbours of
every position it needs (:func:`source_span`).

StarDist's rays are directions in model voxels. Under an anisotropic scale a ray of length ``d``
along unit direction ``u`` becomes the store-space vector ``d * u / s``: its direction is that of the
same ray family built with ``anisotropy * s`` (:func:`scaled_rays`) and its length is
``d * |u / s|`` (:func:`ray_length_factors`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vollseg_dask.errors import ConfigError

__all__ = ["model_length", "to_model", "to_store", "model_span_for", "source_span", "resample_axis",
           "resample", "scaled_rays", "ray_length_factors", "store_halo", "store_points"]


def model_length(n: int, s: float) -> int:
    """Voxels of the model grid along an axis of ``n`` store voxels at scale ``s``."""
    return max(1, int(round(n * s)))


def to_model(i: np.ndarray | float, s: float) -> np.ndarray:
    """Model coordinate of store position(s) ``i``: ``(i + 0.5) * s - 0.5`` (float64)."""
    return (np.asarray(i, np.float64) + 0.5) * float(s) - 0.5


def to_store(j: np.ndarray | float, s: float) -> np.ndarray:
    """Store coordinate of model position(s) ``j``: ``(j + 0.5) / s - 0.5`` (float64)."""
    return (np.asarray(j, np.float64) + 0.5) / float(s) - 0.5


def _neighbours(pos: np.ndarray, n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower/upper source indices and weight of the upper one, positions clamped to ``[0, n_src - 1]``."""
    p = np.clip(pos, 0.0, float(n_src - 1))
    lo = np.floor(p).astype(np.int64)
    w = p - lo  # exact: 0 <= p - floor(p) < 1
    hi = np.minimum(lo + 1, n_src - 1)
    return lo, hi, w


def source_span(start: int, stop: int, s_dst_to_src: Any, n_src: int, to_src: Any) -> tuple[int, int]:
    """Source index range ``[a, b)`` whose values the destination positions ``[start, stop)`` use.

    Parameters
    ----------
    start, stop : int
        Destination index range.
    s_dst_to_src : float
        The scale argument of ``to_src``.
    n_src : int
        Source axis length.
    to_src : callable
        :func:`to_model` or :func:`to_store` (destination index -> source coordinate).
    """
    pos = to_src(np.array([start, stop - 1], np.float64), s_dst_to_src)
    lo, _, _ = _neighbours(pos[:1], n_src)
    _, hi, _ = _neighbours(pos[1:], n_src)
    return int(lo[0]), int(hi[0]) + 1


def model_span_for(start: int, stop: int, s: float, n_model: int, margin: int = 0) -> tuple[int, int]:
    """Model-grid range whose values map the store range ``[start, stop)`` (plus ``margin`` voxels)."""
    a, b = source_span(start, stop, s, n_model, to_model)
    return max(0, a - margin), min(n_model, b + margin)


def resample_axis(x: np.ndarray, axis: int, src_start: int, n_src: int, dst: range, pos_fn: Any,
                  s: float) -> np.ndarray:
    """Linear resampling of ``x`` (holding source indices ``[src_start, src_start + x.shape[axis])``)
    at destination indices ``dst`` along ``axis``; source positions ``pos_fn(dst, s)`` clamped to
    ``[0, n_src - 1]``. Float32 output; the weights are float64 computed from global positions."""
    lo, hi, w = _neighbours(pos_fn(np.arange(dst.start, dst.stop, dtype=np.float64), s), n_src)
    if lo.size and (lo.min() < src_start or hi.max() >= src_start + x.shape[axis]):
        raise ConfigError(f"resampling needs source indices [{lo.min()}, {hi.max()}] but the block holds "
                          f"[{src_start}, {src_start + x.shape[axis]}) on axis {axis}")
    a = np.take(x, lo - src_start, axis=axis).astype(np.float32)
    b = np.take(x, hi - src_start, axis=axis).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    wf = w.astype(np.float32).reshape(shape)
    return a + (b - a) * wf


def resample(x: np.ndarray, src_region: Sequence[slice], n_src: Sequence[int], dst_region: Sequence[slice],
             scale: Sequence[float], direction: str) -> np.ndarray:
    """Separable linear resampling of a 3-D block between the store grid and the model grid.

    Parameters
    ----------
    x : numpy.ndarray, shape of ``src_region``
        Values over the source region (global slices of the source grid).
    src_region : tuple of 3 slice
    n_src : sequence of 3 int
        Source volume shape.
    dst_region : tuple of 3 slice
        Wanted destination region (global slices of the destination grid).
    scale : sequence of 3 float
        ``s`` per axis (store voxel / model voxel).
    direction : {"to_model", "to_store"}

    Returns
    -------
    numpy.ndarray, shape of ``dst_region``, float32
    """
    pos_fn = to_store if direction == "to_model" else to_model
    out = np.asarray(x)
    for ax in range(3):
        out = resample_axis(out, ax, src_region[ax].start, int(n_src[ax]),
                            range(dst_region[ax].start, dst_region[ax].stop), pos_fn, float(scale[ax]))
    return out


def store_halo(model_halo: Sequence[int], scale: Sequence[float]) -> tuple[int, int, int]:
    """Store-voxel halo holding a model-grid halo: ``ceil((h + 3) / s) + 2`` per axis (the +3 / +2
    cover the interpolation neighbours on both mappings)."""
    return tuple(int(math.ceil((h + 3) / s)) + 2 for h, s in zip(model_halo, scale, strict=True))  # type: ignore[return-value]


def store_points(points: np.ndarray, scale: Sequence[float], volume_shape: Sequence[int]) -> np.ndarray:
    """Store voxel (rounded, clamped) of model-grid points (N, 3) int -> (N, 3) int64."""
    p = np.asarray(points, np.float64)
    out = np.empty(p.shape, np.int64)
    for ax in range(3):
        out[:, ax] = np.clip(np.rint(to_store(p[:, ax], scale[ax])), 0, int(volume_shape[ax]) - 1)
    return out


def scaled_rays(rays_json: dict[str, Any], scale: Sequence[float]) -> Any:
    """StarDist rays of the same family whose directions are the model rays' ``u / s`` normalised.

    Raises
    ------
    ConfigError
        The ray family has no ``anisotropy`` parameter and the scale is anisotropic.
    """
    from stardist.rays3d import rays_from_json

    base = rays_from_json(rays_json)
    s = np.asarray(scale, np.float64)
    if np.allclose(s, s[0]):
        return base
    kwargs = dict(rays_json.get("kwargs", {}))
    if "anisotropy" not in kwargs:
        raise ConfigError(f"StarDist rays {rays_json.get('name')!r} have no anisotropy parameter: cannot rescale "
                          f"them by the anisotropic scale {tuple(scale)}; pass --no-rescale or an isotropic --scale")
    anis = np.ones(3) if kwargs["anisotropy"] is None else np.asarray(kwargs["anisotropy"], np.float64)
    kwargs["anisotropy"] = tuple(float(a) for a in anis * s)
    out = rays_from_json({"name": rays_json["name"], "kwargs": kwargs})
    u = np.asarray(base.vertices, np.float64) / s
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    if not np.allclose(np.asarray(out.vertices, np.float64), u, atol=1e-5):
        raise ConfigError(f"StarDist rays {rays_json.get('name')!r} do not transform with their anisotropy; "
                          f"pass --no-rescale or an isotropic --scale")
    return out


def ray_length_factors(rays_json: dict[str, Any], scale: Sequence[float]) -> np.ndarray:
    """``|u_k / s|`` per ray (float32, shape (R,)): model ray length -> store ray length."""
    from stardist.rays3d import rays_from_json

    u = np.asarray(rays_from_json(rays_json).vertices, np.float64)
    return np.linalg.norm(u / np.asarray(scale, np.float64), axis=1).astype(np.float32)
