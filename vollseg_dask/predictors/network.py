"""Tiled network inference: Noise2Void -> StarDist3D + U-Net, block by block (stage S1).

:class:`NetworkPredictor` implements :class:`~vollseg_dask.predictors.base.Predictor` with real
networks loaded from standard model folders (:mod:`vollseg_dask.networks.folders`):

1. optional **Noise2Void** denoising of the block's read region;
2. **StarDist3D**: object probability and ray distances on the model grid;
3. the **U-Net** foreground probability (on the denoised image when N2V is used).

Exactness contract: tiled == untiled
------------------------------------
The outputs a block returns for its core equal, up to float round-off, the outputs of one pass
over the whole volume (the "untiled" run: ``read == core ==`` the whole time point). Rules:

* **Reach.** Every network's receptive field is measured
  (:mod:`vollseg_dask.predictors.receptive_field`) and rounded up to a multiple of its
  divisibility ``d`` (``2**depth``, times the grid for StarDist). With N2V the halos add:
  ``halo = halo_n2v + max(halo_stardist, halo_unet)`` per axis.
* **Global frame and alignment.** Each axis of length ``N`` is treated as ``[0, Np)`` with
  ``Np = ceil(N / d) * d``. A network tile for a (sub-)core ``[a, b)`` is
  ``[max(0, floor((a - h) / d) * d), min(Np, ceil((b + h) / d) * d))``: it starts at a multiple
  of ``d`` in *global* coordinates, so pooling windows and StarDist grid cells fall at the same
  global positions whatever the block (a U-Net is translation-equivariant only by multiples of
  ``d``).
* **Padding.** Tile voxels beyond the volume end (``[N, Np)``) are a reflection (``numpy.pad``
  ``mode="reflect"``) of the voxels before the end - identical in tiled and untiled runs, as the
  untiled run pads the volume the same way (csbdeep's ``PadAndCropResizer`` also reflects). Below
  0 nothing is added: the network's own zero padding acts there, at the same place in both runs.
  Tile voxels inside the volume but outside the available region (only possible farther than the
  halo from the core) are reflected too; they cannot reach the core.
* **Crop, never blend.** Each tile's output is cropped to its sub-core; sub-cores partition the
  block core, and interior sub-core boundaries are multiples of ``d`` (so tiles of one block share
  one shape and are batched).
* **Global normalisation.** Every network sees ``(x - lo_t) / (hi_t - lo_t)`` with the exact
  per-time-point percentiles of the whole volume (:func:`vollseg_dask.stats.global_percentiles`,
  computed in :meth:`NetworkPredictor.prepare` or given as a table), never per-tile values. The
  N2V output is brought back to intensity units (``denormalize``) and normalised for StarDist and
  the U-Net with the *raw* image's global percentiles: N2V predicts the noise-free signal in the
  raw units, and percentiles of the denoised volume would need a separate full denoising pass
  (supply them with ``percentiles_table`` when you have one).

Upsampling rule of StarDist outputs (model grid ``g`` -> full resolution): voxel ``v`` takes the
value of grid cell ``v // g`` (``numpy.repeat``, nearest, no interpolation), a pure function of
global coordinates. Candidates are grid cells with probability ``>= prob_threshold`` whose centre
``cell * g`` (StarDist's point convention) lies in the core; their ray lengths are StarDist's
distances in full-resolution voxels, clipped below at ``1e-3`` as StarDist does. The optional
scalar distance map is the maximum over rays, upsampled by the same rule. Dense per-voxel
distances are never returned (only candidate rows leave a block).

Models are loaded once per worker process through :func:`vollseg_dask.runtime.cached`, keyed by
kind, resolved path and content digest; :meth:`NetworkPredictor.__getstate__` holds no model, so
pickling the predictor into a task never pickles TensorFlow objects. TensorFlow places the work on
a GPU when it sees one (memory growth enabled), else on the CPU.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vollseg_dask.errors import ConfigError, InvalidDataError, ModelNotFoundError, ShapeError
from vollseg_dask.predictors.base import BlockPrediction, Predictor
from vollseg_dask.predictors.receptive_field import (
    ReceptiveField,
    folder_digest,
    halo_max,
    halo_sum,
    load_cached_receptive_field,
    measure_receptive_field,
    round_up,
    store_cached_receptive_field,
)

__all__ = [
    "NetworkPredictor",
    "NetworkTile",
    "LoadedNetwork",
    "plan_network_tiles",
    "tile_input",
    "run_network_tiles",
    "load_network",
    "DEFAULT_MAX_TILE_VOXELS",
    "tile_budget",
    "write_random_model_folders",
    "predictor_from_models",
    "predictor_from_folders",
]

LOG = logging.getLogger(__name__)

#: default largest network input tile (voxels), about 120 x 368 x 368: a (64, 256, 256) block plus
#: a StarDist halo of (28, 56, 56) fits in one tile (smaller tiles repeat the halo: for that block
#: ``benchmarks/bench_inference.py`` counted 14.2 StarDist input voxels per core voxel at 2**22,
#: 3.9 at 2**24)
DEFAULT_MAX_TILE_VOXELS = 1 << 24

#: Peak memory of network inference per input voxel in flight (tile voxels x batch), bytes: measured
#: with the bundled N2V + StarDist + U-Net on a 64 x 512 x 512 frame, one worker, peak RSS 3.7 GB with
#: one 2**24-voxel tile per block and 5.3 GB with batches of four 2**22-voxel tiles, against ~0.7 GB
#: with the models loaded and no tile (~280 B per voxel in flight).
NETWORK_BYTES_PER_VOXEL = 280
#: kept free for models not loaded yet when the tiles are sized (N2V, StarDist and U-Net load lazily)
NETWORK_RESERVE_BYTES = 256 * 2**20


def tile_budget(headroom: int, batch_size: int) -> tuple[int, int]:
    """(largest tile, batch size) whose inference fits ``headroom`` bytes (see
    :func:`vollseg_dask.runtime.memory_headroom`).

    Never above :data:`DEFAULT_MAX_TILE_VOXELS`; the batch shrinks before the tile does (a smaller
    tile repeats the receptive-field halo, which costs compute). At least 2**18 voxels, whatever
    the headroom: below that the halo dominates every tile.
    """
    in_flight = max(0, int((headroom - NETWORK_RESERVE_BYTES) // NETWORK_BYTES_PER_VOXEL))
    batch = max(1, min(int(batch_size), in_flight // DEFAULT_MAX_TILE_VOXELS))
    return max(1 << 18, min(DEFAULT_MAX_TILE_VOXELS, in_flight // batch)), batch

Slices = tuple[slice, slice, slice]
Forward = Callable[[np.ndarray], list[np.ndarray]]


# ============================================================================ tiling kernels (NumPy)


@dataclass(frozen=True)
class NetworkTile:
    """One network pass: the sub-core it is responsible for and the input window it reads.

    Attributes
    ----------
    core : tuple of 3 slice
        Global full-resolution voxels whose outputs this tile provides (a part of the wanted region).
    tile : tuple of 3 slice
        Global input window ``[t0, t1)`` per axis, ``t0`` a multiple of the divisibility; may extend
        past the volume end up to the padded length ``Np`` (reflected voxels).
    """

    core: Slices
    tile: Slices

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the network input (z, y, x)."""
        return tuple(s.stop - s.start for s in self.tile)  # type: ignore[return-value]


def _t3f(v: Any, name: str) -> tuple[float, float, float]:
    try:
        t = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be three positive numbers (z, y, x), got {v!r}") from None
    if len(t) != 3 or not all(np.isfinite(x) and x > 0 for x in t):
        raise ConfigError(f"{name} must be three positive numbers (z, y, x), got {v!r}")
    return t  # type: ignore[return-value]


def _t3(v: Sequence[int] | int, name: str) -> tuple[int, int, int]:
    if isinstance(v, int | np.integer):
        return (int(v),) * 3
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ShapeError(f"{name} must have 3 values (z, y, x), got {v!r}")
    return t  # type: ignore[return-value]


def _subcore_size(want_len: Sequence[int], div: Sequence[int], halo: Sequence[int], padded: Sequence[int],
                  max_tile_voxels: int) -> list[int]:
    """Sub-core size per axis (multiples of ``div``) so that a tile holds <= ``max_tile_voxels``
    voxels where possible (halving the axis with the longest tile first).

    A sub-core never shrinks below its halo (rounded to ``div``): past that, splitting multiplies
    the work (tile volume / core volume > 27) for little memory saved, so the budget is exceeded
    instead."""
    s = [round_up(max(1, L), d) for L, d in zip(want_len, div, strict=True)]
    floor = [max(d, round_up(h, d)) for d, h in zip(div, halo, strict=True)]

    def extent(a: int) -> int:
        return min(s[a] + 2 * halo[a], padded[a])

    while int(np.prod([extent(a) for a in range(3)], dtype=np.int64)) > max_tile_voxels:
        axes = [a for a in range(3) if s[a] > floor[a]]
        if not axes:
            break
        a = max(axes, key=extent)
        s[a] = max(floor[a], round_up(-(-s[a] // 2), div[a]))
    return s


def plan_network_tiles(want: Sequence[slice], *, div: Sequence[int], halo: Sequence[int],
                       volume_shape: Sequence[int], max_tile_voxels: int = DEFAULT_MAX_TILE_VOXELS
                       ) -> list[NetworkTile]:
    """Split a wanted region into network tiles (see the module docstring for the rules).

    Parameters
    ----------
    want : tuple of 3 slice
        Global region whose outputs are needed (inside the volume).
    div : sequence of 3 int
        Divisibility of the network input (a multiple of its grid).
    halo : sequence of 3 int
        Context per side (the network's measured reach; rounded up to a multiple of ``div``).
    volume_shape : sequence of 3 int
        Shape (Z, Y, X) of the whole time point.
    max_tile_voxels : int
        Budget of a network input; sub-cores shrink (to multiples of ``div``, not below the halo)
        until tiles fit or cannot shrink further.

    Returns
    -------
    list of NetworkTile
        In C order of the sub-cores; sub-cores partition ``want``; sub-core boundaries lie at
        ``floor(want.start / div) * div + k * size`` with ``size`` a multiple of ``div``. A region
        that fits the budget is one tile; when there are several, all have the shape
        ``min(size + 2 * halo, Np)`` (border tiles extended away from the border), so that a block's
        tiles run in full batches.
    """
    div, vol = _t3(div, "div"), _t3(volume_shape, "volume_shape")
    halo = tuple(round_up(h, d) for h, d in zip(_t3(halo, "halo"), div, strict=True))
    want = tuple(want)
    for w, n in zip(want, vol, strict=True):
        if not 0 <= w.start < w.stop <= n:
            raise ShapeError(f"wanted region {[(s.start, s.stop) for s in want]} is empty or outside the volume {vol}")
    padded = [round_up(n, d) for n, d in zip(vol, div, strict=True)]
    anchor = [(w.start // d) * d for w, d in zip(want, div, strict=True)]
    s = _subcore_size([w.stop - a for w, a in zip(want, anchor, strict=True)], div, halo, padded,
                      int(max_tile_voxels))
    bounds = []
    for w, a0, step in zip(want, anchor, s, strict=True):
        inner = range(a0 + step, w.stop, step)
        edges = [w.start, *inner, w.stop]
        bounds.append(list(zip(edges[:-1], edges[1:], strict=True)))
    tiles = []
    for iz in bounds[0]:
        for iy in bounds[1]:
            for ix in bounds[2]:
                core = []
                tile = []
                for (a, b), d, h, npad in zip((iz, iy, ix), div, halo, padded, strict=True):
                    core.append(slice(a, b))
                    tile.append(slice(max(0, ((a - h) // d) * d), min(npad, round_up(b + h, d))))
                tiles.append(NetworkTile(core=tuple(core), tile=tuple(tile)))  # type: ignore[arg-type]
    if len(tiles) > 1:
        # one shape for all: extend border tiles away from the border they touch (the added
        # voxels lie beyond the sub-core's reach; the volume start and padded end stay put)
        shape = [min(step + 2 * h, npad) for step, h, npad in zip(s, halo, padded, strict=True)]
        equal = []
        for t in tiles:
            win = []
            for w, size, npad in zip(t.tile, shape, padded, strict=True):
                t0 = min(w.start, npad - size)
                win.append(slice(t0, t0 + size))
            equal.append(NetworkTile(core=t.core, tile=tuple(win)))  # type: ignore[arg-type]
        tiles = equal
    return tiles


def _reflect_index(positions: np.ndarray, length: int) -> np.ndarray:
    """Indices into ``[0, length)`` of ``positions`` mirrored as ``numpy.pad(mode="reflect")`` does
    (the edge voxel is the mirror axis and is not repeated; a length-1 axis repeats its voxel)."""
    if length == 1:
        return np.zeros_like(positions)
    period = 2 * (length - 1)
    m = np.mod(positions, period)
    return np.where(m >= length, period - m, m)


def tile_input(x: np.ndarray, x_region: Sequence[slice], tile: Sequence[slice]) -> np.ndarray:
    """Network input over ``tile`` from data ``x`` available over ``x_region``.

    Voxels of the tile outside ``x_region`` are the reflection of ``x`` about the region's faces,
    exactly ``numpy.pad(x, ..., mode="reflect")`` cropped to the tile: past the volume end this is
    the reflection of the whole volume (when ``x_region`` reaches the end, as it does whenever
    those voxels can matter); elsewhere such voxels lie beyond the reach of the tile's core.

    Parameters
    ----------
    x : numpy.ndarray, shape of ``x_region``
    x_region, tile : tuple of 3 slice
        Global slices.

    Returns
    -------
    numpy.ndarray, shape of ``tile``, dtype of ``x``
    """
    inside = all(r.start <= t.start and t.stop <= r.stop for r, t in zip(x_region, tile, strict=True))
    if inside:
        return x[tuple(slice(t.start - r.start, t.stop - r.start) for r, t in zip(x_region, tile, strict=True))]
    idx = [_reflect_index(np.arange(t.start - r.start, t.stop - r.start), r.stop - r.start)
           for r, t in zip(x_region, tile, strict=True)]
    return x[np.ix_(*idx)]


def run_network_tiles(forward: Forward, x: np.ndarray, x_region: Sequence[slice], want: Sequence[slice], *,
                      div: Sequence[int], grid: Sequence[int], halo: Sequence[int], volume_shape: Sequence[int],
                      max_tile_voxels: int = DEFAULT_MAX_TILE_VOXELS, batch_size: int = 4
                      ) -> Iterator[tuple[NetworkTile, Slices, list[np.ndarray]]]:
    """Run a network over ``want`` tile by tile, batching tiles of equal shape.

    Parameters
    ----------
    forward : callable
        ``forward(batch (B, z, y, x, 1) float32) -> list of (B, z/gz, y/gy, x/gx, K) arrays``.
    x : numpy.ndarray, shape of ``x_region``, float32
        Normalised input available over ``x_region`` (must cover ``want`` grown by ``halo`` within
        the volume for exact outputs).
    want : tuple of 3 slice
        Global region whose outputs are needed.
    div, grid, halo, volume_shape, max_tile_voxels
        See :func:`plan_network_tiles`; ``grid`` is the output subsampling.
    batch_size : int
        Tiles per forward pass.

    Yields
    ------
    tile : NetworkTile
    cells : tuple of 3 slice
        Where the tile's outputs go in an array over the *output cells* of ``want``
        (cells ``[want.start // g, ceil(want.stop / g))`` per axis).
    outputs : list of numpy.ndarray, each shape (cells..., K)
        The tile's outputs cropped to the cells of its sub-core.
    """
    grid, div = _t3(grid, "grid"), _t3(div, "div")
    if any(d % g for d, g in zip(div, grid, strict=True)):
        raise ConfigError(f"divisibility {div} must be a multiple of the grid {grid}")
    tiles = plan_network_tiles(want, div=div, halo=halo, volume_shape=volume_shape, max_tile_voxels=max_tile_voxels)
    c0 = [w.start // g for w, g in zip(want, grid, strict=True)]
    groups: dict[tuple[int, int, int], list[NetworkTile]] = {}
    for t in tiles:
        groups.setdefault(t.shape, []).append(t)
    for members in groups.values():
        for i in range(0, len(members), max(1, int(batch_size))):
            chunk = members[i:i + max(1, int(batch_size))]
            batch = np.stack([tile_input(x, x_region, t.tile) for t in chunk])[..., None].astype(np.float32, copy=False)
            outs = forward(batch)
            for j, t in enumerate(chunk):
                src = []
                dst = []
                for ax in range(3):
                    g = grid[ax]
                    a, b = t.core[ax].start // g, -(-t.core[ax].stop // g)
                    off = t.tile[ax].start // g
                    src.append(slice(a - off, b - off))
                    dst.append(slice(a - c0[ax], b - c0[ax]))
                yield t, tuple(dst), [np.asarray(o[j][tuple(src)]) for o in outs]  # type: ignore[misc]


class _Counted:
    """A forward function that counts its calls (batches) for the block's ``info``."""

    def __init__(self, forward: Forward) -> None:
        self.forward = forward
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self.calls += 1
        return self.forward(batch)


def _upsample_crop(cells: np.ndarray, want: Sequence[slice], grid: Sequence[int]) -> np.ndarray:
    """Full-resolution map over ``want`` from values over its output cells (``numpy.repeat``)."""
    out = cells
    for ax, g in enumerate(grid):
        if g > 1:
            out = np.repeat(out, g, axis=ax)
    crop = tuple(slice(w.start - (w.start // g) * g, w.stop - (w.start // g) * g) for w, g in zip(want, grid, strict=True))
    return np.ascontiguousarray(out[crop])


# ============================================================================ loaded networks


@dataclass
class LoadedNetwork:
    """A network as held in a worker's cache (never pickled).

    Attributes
    ----------
    kind : str
        ``"stardist"``, ``"unet"`` or ``"n2v"``.
    model : object
        ``stardist.models.StarDist3D`` or :class:`vollseg_dask.networks.unet.UNet` /
        :class:`vollseg_dask.networks.n2v.N2V`.
    div, grid : tuple of 3 int
        Input divisibility and output subsampling.
    forward : callable
        Batch (B, z, y, x, 1) float32 -> list of output arrays (one ``tf.function`` trace with
        open batch and spatial dimensions).
    device : str
        ``"GPU"`` when TensorFlow sees a GPU, else ``"CPU"``.
    """

    kind: str
    model: Any
    div: tuple[int, int, int]
    grid: tuple[int, int, int]
    forward: Forward
    device: str


def _configure_gpus() -> str:
    from vollseg_dask.networks._tf import import_tf

    tf = import_tf()
    gpus = tf.config.list_physical_devices("GPU")
    for g in gpus:
        try:
            tf.config.experimental.set_memory_growth(g, True)
        except (RuntimeError, ValueError):  # already initialised
            pass
    return "GPU" if gpus else "CPU"


def _make_forward(keras_model: Any, n_outputs: int | None) -> Forward:
    from vollseg_dask.networks._tf import import_tf

    tf = import_tf()
    n_in = int(keras_model.inputs[0].shape[-1] or 1)
    # one trace for every tile shape and batch size (spatial and batch dimensions left open)
    fn = tf.function(lambda b: keras_model(b, training=False),
                     input_signature=[tf.TensorSpec([None, None, None, None, n_in], tf.float32)])

    def forward(batch: np.ndarray) -> list[np.ndarray]:
        out = fn(tf.convert_to_tensor(np.ascontiguousarray(batch, dtype=np.float32)))
        outs = list(out) if isinstance(out, list | tuple) else [out]
        if n_outputs is not None:
            outs = outs[:n_outputs]
        return [np.asarray(o) for o in outs]

    return forward


def load_network(path: str | os.PathLike[str], kind: str) -> LoadedNetwork:
    """Load a model folder and wrap it for tiled inference (call through ``runtime.cached``).

    Raises
    ------
    ModelNotFoundError, ConfigError
        See :func:`vollseg_dask.networks.folders.load_model_folder`.
    """
    from vollseg_dask.networks.folders import load_model_folder

    device = _configure_gpus()
    model = load_model_folder(path, kind)
    if kind == "stardist":
        cfg = model.config
        grid = _t3(cfg.grid, "grid")
        div = _t3(model._axes_div_by("ZYX"), "div")
        # prob, dist (a multi-class head, if any, is dropped)
        return LoadedNetwork(kind, model, div, grid, _make_forward(model.keras_model, 2), device)
    div = (int(model.div_by),) * 3  # UNet / N2V / upstream CARE and n2v-package networks alike
    return LoadedNetwork(kind, model, div, (1, 1, 1), _make_forward(model.keras_model, 1), device)


# ============================================================================ the predictor


@dataclass(frozen=True)
class _ModelRef:
    kind: str
    path: str
    digest: str
    norm: tuple[float, float]
    flavour: str = "vollseg"
    fixed_norm: tuple[float, float] | None = None

    @property
    def cache_key(self) -> str:
        return f"vollseg-network:{self.kind}:{self.path}:{self.digest}"


def _grow(region: Sequence[slice], by: Sequence[int], shape: Sequence[int]) -> Slices:
    return tuple(slice(max(0, s.start - b), min(n, s.stop + b)) for s, b, n in zip(region, by, shape, strict=True))  # type: ignore[return-value]


def _intersect(a: Sequence[slice], b: Sequence[slice]) -> Slices:
    return tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _local(region: Sequence[slice], origin: Sequence[slice]) -> Slices:
    return tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, origin, strict=True))  # type: ignore[return-value]


def _slices_str(s: Sequence[slice]) -> str:
    return "[" + ", ".join(f"{x.start}:{x.stop}" for x in s) + "]"


class NetworkPredictor(Predictor):
    """StarDist3D + U-Net (+ optional Noise2Void) outputs, block by block, exact under tiling.

    Parameters
    ----------
    stardist_dir : path
        StarDist3D model folder (stardist's own format, any rays and grid).
    unet_dir : path, optional
        U-Net model folder: this project's, or an upstream csbdeep ``CARE`` folder (its linear output
        becomes a 0/1 mask at the two-class Otsu threshold of each time point, see
        ``unet_threshold``). ``None``: no U-Net (``foreground`` is all 0; for ``mode: stardist``).
    n2v_dir : path, optional
        Noise2Void model folder (this project's or the ``n2v`` package's, normalised with its
        ``means``/``stds``); when given, the image is denoised first.
    normalization : (float, float), optional
        Percentiles (pmin, pmax) mapped to 0 and 1 for every network. ``None``: each model's own
        (``norm_pmin``/``norm_pmax`` of U-Net/N2V folders; (1, 99.8) for StarDist, the StarDist
        default). At a time point where both percentiles are equal (a constant volume) the image is
        only shifted by the low one (range 1), with a warning; NaN/Inf in the image raise
        :class:`~vollseg_dask.errors.InvalidDataError` naming the time point.
    percentiles_table : pandas.DataFrame or path or mapping, optional
        Global per-t percentiles, as returned by :func:`vollseg_dask.stats.global_percentiles`
        (one row per t, columns ``p<q>``), or a Parquet/CSV file of it. ``None``: computed in
        :meth:`prepare` from the store.
    channel : int
        Image channel (when the image has a ``c`` axis); must match the segmentation's channel.
    batch_size : int
        Network tiles per forward pass.
    max_tile_voxels : int, optional
        Largest network input; a block whose tile would be larger is split into several tiles
        (equal shapes inside, batched). None: sized from the worker's memory headroom under its
        limit (:func:`tile_budget`, at most :data:`DEFAULT_MAX_TILE_VOXELS`), batches shrinking first.
    prob_threshold, nms_threshold : float, optional
        Override the StarDist model's ``thresholds.json``.
    return_distance : bool
        Also return the scalar distance map (max over rays, full resolution over the core).
    scale : "auto" or sequence of 3 float or None
        Scale-aware inference: each block's read region is resampled to the model's grid (store
        voxel / model voxel per axis, anchored in global coordinates, see
        :mod:`vollseg_dask.predictors.rescale`), the networks run there and their outputs are mapped
        back (maps by linear interpolation, candidate centres rounded, ray lengths scaled).
        ``"auto"``: from the store's voxel size and the model's (``model_scale.json`` of the StarDist
        folder, else the U-Net's ``voxel_size``); no rescaling when the model records none. A
        sequence: that factor. ``None``: off.
    object_diameter : float, optional
        Typical object diameter in the data (µm); with ``"auto"`` the scale also brings it to the
        model's ``object_diameter_um``.
    halo : int or sequence of 3 int, optional
        Force the block halo instead of the measured one. A halo below the measured receptive field
        makes tiled outputs differ from untiled ones (a warning says so); for experiments only.
    unet_threshold : float, optional
        CARE U-Nets only: the threshold on the network output (same for every time point) instead
        of the two-class Otsu threshold, which :meth:`prepare` computes per time point from an exact
        histogram of the output summed over blocks (one extra U-Net pass over the volume).

    Raises
    ------
    ModelNotFoundError
        A model folder, its ``config.json`` or its weights are missing.
    ConfigError
        A folder holds another kind of model, or a parameter is out of range.
    """

    needs_image = True

    def __init__(self, stardist_dir: str | os.PathLike[str], unet_dir: str | os.PathLike[str] | None = None,
                 n2v_dir: str | os.PathLike[str] | None = None, *,
                 normalization: tuple[float, float] | None = None,
                 percentiles_table: Any = None, channel: int = 0, batch_size: int = 4,
                 max_tile_voxels: int | None = None, prob_threshold: float | None = None,
                 nms_threshold: float | None = None, return_distance: bool = True,
                 halo: int | Sequence[int] | None = None, unet_threshold: float | None = None,
                 scale: str | Sequence[float] | None = "auto", object_diameter: float | None = None) -> None:
        from vollseg_dask.networks.folders import inspect_model_folder

        if stardist_dir is None:
            raise ConfigError("a StarDist3D model folder is needed (stardist_dir)")

        if normalization is not None:
            lo, hi = (float(v) for v in normalization)
            if not 0 <= lo < hi <= 100:
                raise ConfigError(f"normalization percentiles must satisfy 0 <= pmin < pmax <= 100, got {normalization}")
            normalization = (lo, hi)
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if max_tile_voxels is not None and int(max_tile_voxels) < 1:
            raise ConfigError(f"max_tile_voxels must be >= 1, got {max_tile_voxels}")
        for name, v in (("prob_threshold", prob_threshold), ("nms_threshold", nms_threshold)):
            if v is not None and not 0 < float(v) < 1:
                raise ConfigError(f"{name} must lie in (0, 1), got {v}")
        if int(channel) < 0:
            raise ConfigError(f"channel must be >= 0, got {channel}")

        self._refs: dict[str, _ModelRef] = {}
        infos = {}
        for kind, path in (("stardist", stardist_dir), ("unet", unet_dir), ("n2v", n2v_dir)):
            if path is None:
                continue
            if not isinstance(path, str | os.PathLike):
                raise ConfigError(f"{kind} model folder must be a path, got {path!r}")
            info = inspect_model_folder(path, kind)
            infos[kind] = info
            norm = normalization or ((1.0, 99.8) if kind == "stardist" else info.norm)
            self._refs[kind] = _ModelRef(kind, str(Path(path).resolve()),
                                         folder_digest(info.path / "config.json", info.weights), norm,
                                         info.flavour, info.fixed_norm)
        if unet_threshold is not None and not np.isfinite(float(unet_threshold)):
            raise ConfigError(f"unet_threshold must be a finite number, got {unet_threshold}")
        self._care_fixed = None if unet_threshold is None else float(unet_threshold)
        if isinstance(scale, str) and scale != "auto":
            raise ConfigError(f"scale must be 'auto', None or three positive numbers, got {scale!r}")
        if scale is not None and not isinstance(scale, str):
            scale = _t3f(scale, "scale")
        if object_diameter is not None and not float(object_diameter) > 0:
            raise ConfigError(f"object_diameter must be > 0 µm, got {object_diameter}")
        self._scale_spec = scale
        self._object_diameter = None if object_diameter is None else float(object_diameter)
        self._scale: tuple[float, float, float] | None = None
        from vollseg_dask.networks.folders import read_model_scale

        ms = read_model_scale(infos["stardist"].path)
        voxel = ms.get("voxel_size")
        if voxel is None and "unet" in infos and infos["unet"].config.get("voxel_size") is not None:
            voxel = infos["unet"].config["voxel_size"]
        self._model_voxel = None if voxel is None else _t3f(voxel, "model voxel_size")
        self._model_diameter = ms.get("object_diameter_um")
        self._care_thresholds: np.ndarray | None = None
        sd = infos["stardist"]
        self._n_rays = int(sd.n_rays)
        self._rays_json = sd.config["rays_json"]
        self._thresholds = dict(sd.thresholds)
        self._segmentation_defaults = dict(sd.segmentation_defaults)
        self._prob_override = None if prob_threshold is None else float(prob_threshold)
        self._nms_override = None if nms_threshold is None else float(nms_threshold)
        self._rays_obj = None
        self.channel = int(channel)
        self.batch_size = int(batch_size)
        self.max_tile_voxels = None if max_tile_voxels is None else int(max_tile_voxels)
        self.return_distance = bool(return_distance)
        self._halo_override = None if halo is None else _t3(halo, "halo")
        self._rf: dict[str, ReceptiveField] = {}
        self._percentiles: dict[str, np.ndarray] | None = None
        if percentiles_table is not None:
            self.set_percentiles(percentiles_table)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_models_dir(cls, path: str | os.PathLike[str], **kwargs: Any) -> NetworkPredictor:
        """Predictor from a folder holding ``stardist/``, ``unet/`` and optionally ``n2v/``.

        Parameters
        ----------
        path : path or ``"bundled"``
            Folder of model folders, or ``"bundled"`` for the models shipped with the package
            (:func:`vollseg_dask.networks.folders.bundled_model_dir`; N2V used when shipped).
        **kwargs
            Passed to :class:`NetworkPredictor` (``use_n2v=False`` skips a present N2V folder;
            ``need_unet=False`` accepts a folder without ``unet/``).

        Raises
        ------
        ModelNotFoundError
            ``path`` or its ``stardist``/``unet`` sub-folder is missing.
        """
        return predictor_from_folders(path, **kwargs)

    def set_percentiles(self, table: Any) -> None:
        """Use a table of global per-t percentiles (see ``percentiles_table``)."""
        import pandas as pd

        from vollseg_dask.stats import percentile_column

        if isinstance(table, str | os.PathLike):
            p = Path(table)
            if not p.is_file():
                raise ConfigError(f"percentiles table {p} not found")
            table = pd.read_parquet(p) if p.suffix.lower() in (".parquet", ".pq") else pd.read_csv(p)
        if isinstance(table, Mapping):
            table = pd.DataFrame(dict(table))
        if not isinstance(table, pd.DataFrame):
            raise ConfigError(f"percentiles_table must be a DataFrame, a mapping or a file, got {type(table).__name__}")
        out = {}
        for col in sorted({percentile_column(q) for ref in self._refs.values() for q in ref.norm}):
            if col not in table.columns:
                raise ConfigError(f"percentiles table lacks column {col!r} (has {list(table.columns)})")
            vals = np.asarray(table[col], dtype=np.float64).reshape(-1)
            if not np.isfinite(vals).all():
                raise InvalidDataError(f"percentiles table column {col!r} holds NaN or Inf")
            out[col] = vals
        for kind, ref in self._refs.items():
            lo, hi = out[percentile_column(ref.norm[0])], out[percentile_column(ref.norm[1])]
            flat = np.flatnonzero(hi <= lo)
            if flat.size:
                # a constant (e.g. empty, all-zero) volume: _lohi widens the range so nothing divides by zero
                LOG.warning("%s normalisation: percentiles %s and %s are equal at t=%s (constant or nearly empty "
                            "volume); intensities there are shifted by the low percentile, not scaled",
                            kind, *ref.norm, ",".join(str(int(t)) for t in flat[:20]))
        self._percentiles = out

    # ------------------------------------------------------------------ Predictor interface
    @property
    def kinds(self) -> tuple[str, ...]:
        """Networks used, in order of application (``("n2v",)`` first when present)."""
        return tuple(k for k in ("n2v", "stardist", "unet") if k in self._refs)

    @property
    def segmentation_defaults(self) -> dict[str, Any]:
        """Settings the StarDist model folder recommends (``segmentation_defaults.json``; may be empty)."""
        return dict(self._segmentation_defaults)

    @property
    def has_unet(self) -> bool:
        """Whether a U-Net is loaded (modes ``vollseg`` and ``unet`` need one)."""
        return "unet" in self._refs

    @property
    def care_thresholds(self) -> np.ndarray | None:
        """Per-t thresholds of a CARE U-Net's output (after :meth:`prepare`), else None."""
        return self._care_thresholds

    @property
    def n_rays(self) -> int:
        return self._n_rays

    @property
    def rays(self):
        """The StarDist model's own rays (from its ``rays_json``, anisotropy included)."""
        if self._rays_obj is None:
            from stardist.rays3d import rays_from_json

            if self.scaled:
                from vollseg_dask.predictors.rescale import scaled_rays

                self._rays_obj = scaled_rays(self._rays_json, self._scale)  # type: ignore[arg-type]
            else:
                self._rays_obj = rays_from_json(self._rays_json)
        return self._rays_obj

    @property
    def prob_threshold(self) -> float:
        return self._prob_override if self._prob_override is not None else float(self._thresholds["prob"])

    @property
    def nms_threshold(self) -> float:
        return self._nms_override if self._nms_override is not None else float(self._thresholds["nms"])

    def receptive_fields(self) -> dict[str, ReceptiveField]:
        """Measured receptive field of each network (measures, or reads the caches, on first use).

        Loads the networks in this process when a measurement is needed.
        """
        from vollseg_dask.runtime import cached

        for kind, ref in self._refs.items():
            if kind in self._rf:
                continue

            def measure(ref: _ModelRef = ref) -> ReceptiveField:
                rf = load_cached_receptive_field(ref.kind, ref.digest)
                if rf is None:
                    net = self._network(ref.kind)
                    t0 = time.perf_counter()
                    rf = measure_receptive_field(net.forward, div=net.div, grid=net.grid, batch_size=self.batch_size + 1)
                    LOG.info("measured the %s receptive field in %.1f s: radius %s, halo %s", ref.kind,
                             time.perf_counter() - t0, rf.radius, rf.halo)
                    store_cached_receptive_field(ref.kind, ref.digest, rf)
                return rf

            self._rf[kind] = cached(f"vollseg-rf:{ref.kind}:{ref.digest}", measure)
        return dict(self._rf)

    def _stage_halos(self) -> dict[str, tuple[int, int, int]]:
        return {k: rf.halo for k, rf in self.receptive_fields().items()}

    @property
    def measured_halo(self) -> tuple[int, int, int]:
        """Halo implied by the measured receptive fields: ``n2v + max(stardist, unet)`` per axis."""
        h = self._stage_halos()
        post = halo_max(h["stardist"], h["unet"]) if "unet" in h else h["stardist"]
        return halo_sum(h["n2v"], post) if "n2v" in h else post

    @property
    def halo(self) -> tuple[int, int, int]:
        """Store-voxel halo: the override, else the measured one (model-grid halo mapped through the
        scale, with the interpolation neighbours, when blocks are rescaled)."""
        if self._halo_override is not None:
            return self._halo_override
        if self.scaled:
            from vollseg_dask.predictors.rescale import store_halo

            return store_halo(self.measured_halo, self._scale)  # type: ignore[arg-type]
        return self.measured_halo

    def prepare(self, store: str, *, n_t: int, volume_shape: tuple[int, int, int]) -> None:
        """Scale factor, global per-t percentiles (exact, from
        :func:`vollseg_dask.stats.global_percentiles`, unless a table was given), the receptive fields
        and (CARE U-Nets) the per-t Otsu thresholds; runs on the client."""
        from vollseg_dask.io.omezarr import open_image as _open

        self._scale = self.resolve_scale(_open(store, 0).voxel_size)
        self._rays_obj = None
        if self.scaled:
            LOG.info("rescaling blocks to the model grid: scale %s (store voxel / model voxel%s)",
                     tuple(round(v, 4) for v in self._scale), ", object diameter" if self._object_diameter else "")
        if self._percentiles is None:
            from vollseg_dask.io.omezarr import open_image
            from vollseg_dask.stats import global_percentiles

            img = open_image(store, 0)
            axes = img.axes
            q = sorted({q for ref in self._refs.values() for q in ref.norm})
            channel = self.channel if "c" in axes else None
            table = global_percentiles(img.data, axes, q=q, per_axis="t" if "t" in axes else "", channel=channel)
            self.set_percentiles(table)
        assert self._percentiles is not None
        n_rows = {len(v) for v in self._percentiles.values()}
        if n_rows != {int(n_t)}:
            raise ConfigError(f"percentiles table has {sorted(n_rows)} rows, the image has {n_t} time points")
        self._prepare_care(store, n_t=int(n_t), volume_shape=volume_shape)
        measured = self.measured_halo
        if self._halo_override is not None and any(
                o < m for o, m in zip(self._halo_override, measured, strict=True)):
            LOG.warning("halo %s is smaller than the measured receptive field halo %s: tiled outputs will differ "
                        "from untiled ones", self._halo_override, measured)

    def _network(self, kind: str) -> LoadedNetwork:
        from vollseg_dask.runtime import cached

        ref = self._refs[kind]
        return cached(ref.cache_key, lambda: load_network(ref.path, kind))

    def _lohi(self, t: int, kind: str) -> tuple[float, float]:
        from vollseg_dask.stats import percentile_column

        if self._percentiles is None:
            raise ConfigError("NetworkPredictor has no normalisation percentiles: call prepare(store, ...) first "
                              "or pass percentiles_table=")
        ref = self._refs[kind]
        if ref.fixed_norm is not None:  # n2v package: (x - mean) / std == (x - lo) / (hi - lo)
            mean, std = ref.fixed_norm
            return float(mean), float(mean) + float(std)
        q0, q1 = ref.norm
        lo_col, hi_col = self._percentiles[percentile_column(q0)], self._percentiles[percentile_column(q1)]
        if not 0 <= int(t) < len(lo_col):
            raise ConfigError(f"time point t={t} is outside the percentiles table ({len(lo_col)} rows)")
        lo, hi = float(lo_col[int(t)]), float(hi_col[int(t)])
        if hi <= lo:  # constant volume (warned in set_percentiles): unit range, no division by ~0
            hi = lo + 1.0
        return lo, hi

    def _check_block(self, image: np.ndarray, read: Sequence[slice], core: Sequence[slice],
                     volume_shape: Sequence[int]) -> tuple[Slices, Slices, tuple[int, int, int]]:
        read = tuple(slice(int(s.start), int(s.stop)) for s in read)
        core = tuple(slice(int(s.start), int(s.stop)) for s in core)
        vol = _t3(volume_shape, "volume_shape")
        image = np.asarray(image)
        shape = tuple(s.stop - s.start for s in read)
        if image.ndim != 3 or image.shape != shape:
            raise ShapeError(f"image has shape {image.shape}, the read region {_slices_str(read)} is {shape}")
        if image.dtype.kind not in "iufb":
            raise InvalidDataError(f"image dtype {image.dtype} is not numeric")
        needed = _grow(core, self.halo, vol)
        if any(r.start > n.start or r.stop < n.stop for r, n in zip(read, needed, strict=True)):
            raise ShapeError(f"read region {_slices_str(read)} does not hold core {_slices_str(core)} grown by the "
                             f"predictor halo {self.halo} ({_slices_str(needed)})")
        return read, core, vol  # type: ignore[return-value]

    def _denoise(self, image: np.ndarray, t: int, read: Slices, want: Slices, vol: tuple[int, int, int],
                 info: dict[str, Any]) -> np.ndarray:
        """N2V output (intensity units, float32) over ``want`` from the image over ``read``."""
        from vollseg_dask.networks._unet import denormalize, normalize

        net = self._network("n2v")
        lo, hi = self._lohi(t, "n2v")
        x = normalize(image, lo, hi)
        out = np.empty(tuple(w.stop - w.start for w in want), np.float32)
        t0 = time.perf_counter()
        n = 0
        fwd = _Counted(net.forward)
        for _tile, dst, outs in run_network_tiles(fwd, x, read, want, div=net.div, grid=net.grid,
                                                  halo=self._rf["n2v"].halo, volume_shape=vol,
                                                  **self._tiling()):
            out[dst] = outs[0][..., 0]
            n += 1
        info["tiles"]["n2v"] = n
        info["batches"]["n2v"] = fwd.calls
        info["seconds"]["n2v"] = round(time.perf_counter() - t0, 4)
        return denormalize(out, lo, hi)

    def denoise_block(self, image: np.ndarray, *, t: int, read: tuple[slice, slice, slice],
                      core: tuple[slice, slice, slice], volume_shape: tuple[int, int, int]) -> np.ndarray:
        """Noise2Void output over the core (intensity units), exact under tiling.

        Parameters
        ----------
        image : numpy.ndarray, shape (z, y, x)
            The image at ``t`` over ``read`` (must hold the core grown by the N2V halo).
        t : int
        read, core : tuple of 3 slice
            Global slices.
        volume_shape : tuple of 3 int

        Returns
        -------
        numpy.ndarray, shape of the core, float32
        """
        if "n2v" not in self._refs:
            raise ConfigError("this NetworkPredictor has no N2V model (n2v_dir=None)")
        self.receptive_fields()
        read = tuple(slice(int(s.start), int(s.stop)) for s in read)
        core = tuple(slice(int(s.start), int(s.stop)) for s in core)
        vol = _t3(volume_shape, "volume_shape")
        image = np.asarray(image)
        if image.shape != tuple(s.stop - s.start for s in read):
            raise ShapeError(f"image has shape {image.shape}, the read region {_slices_str(read)} differs")
        info: dict[str, Any] = {"tiles": {}, "batches": {}, "seconds": {}}
        return self._denoise(image, t, read, core, vol, info)  # type: ignore[arg-type]

    def predict_block(self, image: np.ndarray | None, *, t: int, read: tuple[slice, slice, slice],
                      core: tuple[slice, slice, slice], volume_shape: tuple[int, int, int],
                      prob_threshold: float) -> BlockPrediction:
        """Network outputs for one block's core (see the module docstring for the exactness rules).

        Parameters
        ----------
        image : numpy.ndarray, shape (z, y, x)
            The image at ``t`` over ``read`` (one channel, any numeric dtype).
        t : int
            Time index (selects the global percentiles).
        read, core : tuple of 3 slice
            Global read region (must hold ``core`` grown by :attr:`halo`, clipped to the volume)
            and core.
        volume_shape : tuple of 3 int
            Shape (Z, Y, X) of one time point.
        prob_threshold : float
            Candidates need a probability ``>=`` this.

        Returns
        -------
        BlockPrediction
            ``prob``/``foreground``/``distance`` over the core (float32); candidates centred in the
            core, sorted by (z, y, x); ``info`` holds tile and batch (forward pass) counts, seconds per
            network, the device and the voxels read.
        """
        if image is None:
            raise ConfigError("NetworkPredictor needs the image (needs_image is True)")
        self.receptive_fields()
        read, core, vol = self._check_block(image, read, core, volume_shape)
        image = np.asarray(image)
        if self.scaled:
            return self._predict_scaled(image, t, read, core, vol, prob_threshold)
        return self._predict_grid(image, t, read, core, vol, prob_threshold)

    def _predict_grid(self, image: np.ndarray, t: int, read: Slices, core: Slices, vol: tuple[int, int, int],
                      prob_threshold: float, care_mask: bool = True) -> BlockPrediction:
        """Outputs on the grid the image is given on (the store's, or the model grid when rescaled)."""
        from vollseg_dask.networks._unet import normalize

        info: dict[str, Any] = {"tiles": {}, "batches": {}, "seconds": {}}
        h = self._stage_halos()
        post = halo_max(h["stardist"], h["unet"]) if "unet" in h else h["stardist"]
        if "n2v" in self._refs:
            src_region = _intersect(_grow(core, post, vol), read)
            src = self._denoise(image, t, read, src_region, vol, info)
        else:
            src_region, src = read, image

        # ---- StarDist: prob + candidates (+ distance map)
        sd = self._network("stardist")
        g = sd.grid
        lo, hi = self._lohi(t, "stardist")
        x = normalize(src, lo, hi)
        n_cells = [-(-c.stop // gg) - c.start // gg for c, gg in zip(core, g, strict=True)]
        prob_cells = np.empty(n_cells, np.float32)
        dmax_cells = np.empty(n_cells, np.float32) if self.return_distance else None
        pts, cps, dists = [], [], []
        t0 = time.perf_counter()
        n = 0
        fwd = _Counted(sd.forward)
        for tile, dst, (p, d) in run_network_tiles(fwd, x, src_region, core, div=sd.div, grid=g,
                                                   halo=h["stardist"], volume_shape=vol,
                                                   **self._tiling()):
            n += 1
            p = p[..., 0]
            prob_cells[dst] = p
            d = np.maximum(np.float32(1e-3), d)
            if dmax_cells is not None:
                dmax_cells[dst] = d.max(axis=-1)
            # cells of this tile whose centre cell*g lies in its sub-core and clears the threshold
            first = [-(-c.start // gg) for c, gg in zip(tile.core, g, strict=True)]
            base = [c.start // gg for c, gg in zip(tile.core, g, strict=True)]
            sel = p >= np.float32(prob_threshold)
            for ax in range(3):
                skip = first[ax] - base[ax]
                if skip:
                    idx = [slice(None)] * 3
                    idx[ax] = slice(0, skip)
                    sel[tuple(idx)] = False
            ii = np.nonzero(sel)
            if len(ii[0]):
                cells = np.stack(ii, axis=1) + np.asarray(base)
                pts.append(cells * np.asarray(g))
                cps.append(p[ii])
                dists.append(d[ii])
        info["tiles"]["stardist"] = n
        info["batches"]["stardist"] = fwd.calls
        info["seconds"]["stardist"] = round(time.perf_counter() - t0, 4)
        prob = _upsample_crop(prob_cells, core, g)
        distance = _upsample_crop(dmax_cells, core, g) if dmax_cells is not None else None
        if pts:
            points = np.concatenate(pts).astype(np.int64)
            cand_prob = np.concatenate(cps).astype(np.float32)
            dist = np.concatenate(dists).astype(np.float32)
            order = np.lexsort(points.T[::-1])
            points, cand_prob, dist = points[order], cand_prob[order], dist[order]
        else:
            points = np.zeros((0, 3), np.int64)
            cand_prob = np.zeros(0, np.float32)
            dist = np.zeros((0, self.n_rays), np.float32)

        # ---- U-Net foreground
        if "unet" in self._refs:
            fg = self._unet_output(src, src_region, t, core, vol, info)
            if care_mask and self._refs["unet"].flavour == "care":
                fg = (fg > np.float32(self._care_threshold(t))).astype(np.float32)
        else:
            fg = np.zeros(tuple(c.stop - c.start for c in core), np.float32)
        info["device"] = sd.device
        info["voxels_read"] = int(np.prod([r.stop - r.start for r in read], dtype=np.int64))
        return BlockPrediction(prob=prob, foreground=fg, points=points, cand_prob=cand_prob, dist=dist,
                               distance=distance, info=info)

    # ------------------------------------------------------------------ scale-aware inference
    @property
    def scale(self) -> tuple[float, float, float] | None:
        """Store voxel / model voxel per axis (after :meth:`prepare`); None: not resolved or no rescaling."""
        return self._scale

    @property
    def scaled(self) -> bool:
        """Whether blocks are resampled to the model's grid."""
        return self._scale is not None and not all(abs(v - 1.0) < 1e-9 for v in self._scale)

    def resolve_scale(self, store_voxel_size: Sequence[float]) -> tuple[float, float, float] | None:
        """The scale factor for a store of voxel size (z, y, x) µm (see the ``scale`` parameter)."""
        spec = self._scale_spec
        if spec is None:
            return None
        if not isinstance(spec, str):
            return _t3f(spec, "scale")
        if self._model_voxel is None:
            LOG.info("the models record no voxel size: no rescaling")
            return None
        s = [float(v) / float(m) for v, m in zip(store_voxel_size, self._model_voxel, strict=True)]
        if self._object_diameter is not None:
            if self._model_diameter is None:
                raise ConfigError("object_diameter needs a model that records its object diameter "
                                  "(model_scale.json of the StarDist folder); give scale= instead")
            s = [v * self._model_diameter / self._object_diameter for v in s]
        return tuple(s)  # type: ignore[return-value]

    def _model_shape(self, vol: Sequence[int]) -> tuple[int, int, int]:
        from vollseg_dask.predictors.rescale import model_length

        assert self._scale is not None
        return tuple(model_length(int(n), s) for n, s in zip(vol, self._scale, strict=True))  # type: ignore[return-value]

    def _predict_scaled(self, image: np.ndarray, t: int, read: Slices, core: Slices, vol: tuple[int, int, int],
                        prob_threshold: float, care_mask: bool = True) -> BlockPrediction:
        """Resample the read region to the model grid, predict there, map the outputs back."""
        from vollseg_dask.predictors.rescale import model_span_for, ray_length_factors, resample, store_points

        s = self._scale
        assert s is not None
        nm = self._model_shape(vol)
        margin = [int(np.ceil(v / 2)) + 1 for v in s]
        m_core = tuple(slice(*model_span_for(c.start, c.stop, v, n, m))
                       for c, v, n, m in zip(core, s, nm, margin, strict=True))
        m_in = _grow(m_core, self.measured_halo, nm)
        xm = resample(image, read, vol, m_in, s, "to_model")
        pm = self._predict_grid(xm, t, m_in, m_core, nm, prob_threshold, care_mask=False)  # type: ignore[arg-type]
        prob = resample(pm.prob, m_core, nm, core, s, "to_store")
        fg = resample(pm.foreground, m_core, nm, core, s, "to_store")
        if care_mask and "unet" in self._refs and self._refs["unet"].flavour == "care":
            fg = (fg > np.float32(self._care_threshold(t))).astype(np.float32)
        distance = None
        if pm.distance is not None:  # max ray length: model voxels -> store voxels by the mean scale
            distance = resample(pm.distance, m_core, nm, core, s, "to_store") / np.float32(np.exp(np.mean(np.log(s))))
        q = store_points(pm.points, s, vol)
        own = np.ones(len(q), bool)
        for ax, c in enumerate(core):
            own &= (q[:, ax] >= c.start) & (q[:, ax] < c.stop)
        q, cand_prob, dist = q[own], pm.cand_prob[own], pm.dist[own]
        dist = (dist * ray_length_factors(self._rays_json, s)[None, :]).astype(np.float32)
        order = np.lexsort(q.T[::-1]) if len(q) else np.zeros(0, np.int64)
        info = dict(pm.info)
        info["scale"] = [round(float(v), 6) for v in s]
        info["model_grid_read"] = [[r.start, r.stop] for r in m_in]
        info["voxels_read"] = int(np.prod([r.stop - r.start for r in read], dtype=np.int64))
        return BlockPrediction(prob=np.ascontiguousarray(prob, np.float32), foreground=np.ascontiguousarray(fg, np.float32),
                               points=q[order].astype(np.int64), cand_prob=cand_prob[order].astype(np.float32),
                               dist=dist[order], distance=distance, info=info)

    def _unet_output(self, src: np.ndarray, src_region: Slices, t: int, core: Slices, vol: tuple[int, int, int],
                     info: dict[str, Any]) -> np.ndarray:
        """The U-Net's raw output (first channel, float32) over ``core`` from ``src`` over ``src_region``."""
        from vollseg_dask.networks._unet import normalize

        un = self._network("unet")
        lo, hi = self._lohi(t, "unet")
        x = normalize(src, lo, hi)
        out = np.empty(tuple(c.stop - c.start for c in core), np.float32)
        t0 = time.perf_counter()
        n = 0
        fwd = _Counted(un.forward)
        for _tile, dst, outs in run_network_tiles(fwd, x, src_region, core, div=un.div, grid=un.grid,
                                                  halo=self._rf["unet"].halo, volume_shape=vol,
                                                  **self._tiling()):
            out[dst] = outs[0][..., 0]
            n += 1
        info["tiles"]["unet"] = n
        info["batches"]["unet"] = fwd.calls
        info["seconds"]["unet"] = round(time.perf_counter() - t0, 4)
        return out

    def _care_threshold(self, t: int) -> float:
        if self._care_fixed is not None:
            return self._care_fixed
        if self._care_thresholds is None:
            raise ConfigError("the CARE U-Net's Otsu thresholds are not computed: call prepare(store, ...) first "
                              "or pass unet_threshold=")
        return float(self._care_thresholds[int(t)])

    def unet_histogram(self, image: np.ndarray, *, t: int, read: tuple[slice, slice, slice],
                       core: tuple[slice, slice, slice], volume_shape: tuple[int, int, int]) -> np.ndarray:
        """Exact histogram of the U-Net's raw output over one block's core (after N2V when used).

        Parameters
        ----------
        image : numpy.ndarray, shape (z, y, x)
            The image at ``t`` over ``read`` (must hold the core grown by :attr:`halo`).
        t : int
        read, core : tuple of 3 slice
            Global slices.
        volume_shape : tuple of 3 int

        Returns
        -------
        numpy.ndarray, shape (65536,), int64
            :func:`vollseg_dask.kernels.otsu.prefix_histogram` of the output; sums over blocks are
            the whole time point's.
        """
        from vollseg_dask.kernels.otsu import prefix_histogram

        if "unet" not in self._refs:
            raise ConfigError("this NetworkPredictor has no U-Net")
        self.receptive_fields()
        read, core, vol = self._check_block(image, read, core, volume_shape)
        if self.scaled:  # the raw U-Net output mapped back to the store grid (what the mask thresholds)
            pred = self._predict_scaled(np.asarray(image), t, read, core, vol, 1.0, care_mask=False)
            return prefix_histogram(pred.foreground)
        info: dict[str, Any] = {"tiles": {}, "batches": {}, "seconds": {}}
        if "n2v" in self._refs:
            region = _intersect(_grow(core, self._rf["unet"].halo, vol), read)
            src = self._denoise(np.asarray(image), t, read, region, vol, info)
        else:
            region, src = read, np.asarray(image)
        return prefix_histogram(self._unet_output(src, region, t, core, vol, info))

    def _prepare_care(self, store: str, *, n_t: int, volume_shape: Sequence[int]) -> None:
        """Per-t Otsu thresholds of a CARE U-Net: one pass of the U-Net over the volume, block by
        block (dask tasks), histograms summed per t; skipped when ``unet_threshold`` is given."""
        ref = self._refs.get("unet")
        if ref is None or ref.flavour != "care" or self._care_fixed is not None or self._care_thresholds is not None:
            return
        import dask

        from vollseg_dask.io.omezarr import open_image, read_region
        from vollseg_dask.kernels.otsu import otsu_from_prefix_histogram

        img = open_image(store, 0)
        vol = _t3(volume_shape, "volume_shape")
        halo = self.halo
        step = [min(n, s) for n, s in zip(vol, (64, 256, 256), strict=True)]
        cores = [tuple(slice(a, min(a + s, n)) for a, s, n in zip((z, y, x), step, vol, strict=True))
                 for z in range(0, vol[0], step[0]) for y in range(0, vol[1], step[1])
                 for x in range(0, vol[2], step[2])]
        axes = img.axes
        channel = self.channel

        def block_hist(t: int, core: Slices) -> np.ndarray:
            read = _grow(core, halo, vol)
            idx = tuple(t if a == "t" else channel if a == "c" else read["zyx".index(a)] for a in axes)
            image = read_region(img.zarr_array(), idx, what=f"image {store}")
            return self.unet_histogram(image, t=t, read=read, core=core, volume_shape=vol)

        t0 = time.perf_counter()
        hists = dask.compute(*[[dask.delayed(block_hist)(t, c) for c in cores] for t in range(n_t)])
        self._care_thresholds = np.array([otsu_from_prefix_histogram(np.sum(h, axis=0)) for h in hists])
        LOG.info("CARE U-Net Otsu thresholds per t (%d blocks, %.1f s): %s", len(cores), time.perf_counter() - t0,
                 np.round(self._care_thresholds, 4).tolist())

    # ------------------------------------------------------------------ identity / pickling
    def _tiling(self) -> dict[str, int]:
        """Tile size and batch for this worker: as given, or from its memory limit."""
        if self.max_tile_voxels is not None:
            return {"max_tile_voxels": self.max_tile_voxels, "batch_size": self.batch_size}
        from vollseg_dask.runtime import memory_headroom

        tile, batch = tile_budget(memory_headroom(), self.batch_size)
        return {"max_tile_voxels": tile, "batch_size": batch}

    def describe(self) -> dict[str, Any]:
        """Identity for the run manifest and resume checks (model digests, halo, normalisation)."""
        d: dict[str, Any] = {"class": type(self).__name__, "n_rays": self.n_rays,
                             "models": {k: {"path": r.path, "sha256": r.digest[:16], "flavour": r.flavour,
                                            "normalization": (list(r.norm) if r.fixed_norm is None
                                                              else {"mean_std": list(r.fixed_norm)})}
                                        for k, r in self._refs.items()},
                             "prob_threshold": self.prob_threshold, "nms_threshold": self.nms_threshold,
                             "channel": self.channel, "return_distance": self.return_distance,
                             "upsampling": "repeat", "padding": "reflect past the volume end, grid-aligned tiles"}
        if "unet" in self._refs and self._refs["unet"].flavour == "care":
            d["unet_threshold"] = (self._care_fixed if self._care_fixed is not None else
                                   "otsu per t" if self._care_thresholds is None else
                                   [round(float(v), 6) for v in self._care_thresholds])
        d["scale"] = None if not self.scaled else [round(float(v), 9) for v in self._scale]  # type: ignore[union-attr]
        if self._halo_override is not None:
            d["halo"] = list(self._halo_override)
        if self._rf:
            d["receptive_fields"] = {k: v.to_dict() for k, v in self._rf.items()}
            d["halo"] = list(self.halo)
        return d

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_rays_obj"] = None  # rebuilt from rays_json
        return state


def predictor_from_models(models: str | os.PathLike[str], **kwargs: Any) -> NetworkPredictor:
    """``NetworkPredictor.from_models_dir(models, **kwargs)``: the factory ``vollseg-dask segment
    --models DIR|bundled`` looks up."""
    return NetworkPredictor.from_models_dir(models, **kwargs)


def predictor_from_folders(models: str | os.PathLike[str] | None, *, stardist: str | os.PathLike[str] | None = None,
                           unet: str | os.PathLike[str] | None = None, n2v: str | os.PathLike[str] | None = None,
                           need_unet: bool = True, **kwargs: Any) -> NetworkPredictor:
    """Predictor from a folder of model folders and/or one folder per network.

    Parameters
    ----------
    models : path or ``"bundled"`` or None
        Folder holding ``stardist/``, ``unet/`` (and ``n2v/``), or the bundled models.
    stardist, unet, n2v : path, optional
        One network's folder; replaces that network of ``models``. ``n2v`` given here is always used.
    need_unet : bool
        Refuse a set without U-Net (modes ``vollseg`` and ``unet`` need one).
    **kwargs
        Passed to :class:`NetworkPredictor`.

    Raises
    ------
    ModelNotFoundError
        No StarDist folder, or no U-Net while ``need_unet``.
    """
    use_n2v = kwargs.pop("use_n2v", True)
    sd = un = nv = None
    if models is not None:
        if str(models) == "bundled":
            from vollseg_dask.networks.folders import bundled_model_dir

            sd, un = bundled_model_dir("stardist"), bundled_model_dir("unet")
            try:
                nv = bundled_model_dir("n2v")
            except ModelNotFoundError:
                nv = None
        else:
            root = Path(models)
            if not root.is_dir():
                raise ModelNotFoundError(f"models folder not found: {root} (expected sub-folders stardist/, unet/ "
                                         f"and optionally n2v/)")
            sd = root / "stardist" if (root / "stardist").is_dir() else None
            un = root / "unet" if (root / "unet").is_dir() else None
            nv = root / "n2v" if (root / "n2v").is_dir() else None
            for kind, p, given in (("stardist", sd, stardist), ("unet", un, unet if need_unet else True)):
                if p is None and given is None:
                    raise ModelNotFoundError(f"models folder {root} has no {kind}/ sub-folder ({root / kind})"
                                             + ("; only mode 'stardist' runs without a U-Net" if kind == "unet" else ""))
        if not use_n2v:
            nv = None
    sd = Path(stardist) if stardist is not None else sd
    un = Path(unet) if unet is not None else un
    nv = Path(n2v) if n2v is not None else nv
    if sd is None:
        raise ModelNotFoundError("no StarDist3D model folder given")
    if un is None and need_unet:
        raise ModelNotFoundError("no U-Net model (give a unet folder, or a models folder holding unet/); only mode "
                                 "'stardist' runs without a U-Net")
    return NetworkPredictor(sd, un, nv, **kwargs)


# ============================================================================ small random models


def write_random_model_folders(folder: str | os.PathLike[str], *, n2v: bool = True, n_rays: int = 32,
                               grid: tuple[int, int, int] = (1, 2, 2), stardist_depth: int = 2,
                               unet_depth: int = 2, n2v_depth: int = 1, n_filter: int = 8,
                               output_gain: float = 1.0, n2v_gain: float = 1.0, seed: int = 0) -> dict[str, Path]:
    """Write untrained (randomly initialised) StarDist3D, U-Net and N2V model folders.

    For tests and benchmarks of the *tiling* (an untrained network has the architecture, hence the
    receptive field and the cost, of a trained one; its outputs are meaningless as segmentations).
    Layout: ``folder/stardist``, ``folder/unet``, ``folder/n2v`` (the layout of
    :meth:`NetworkPredictor.from_models_dir`). Each folder holds ``config.json`` and
    ``weights_best.h5`` (legacy Keras HDF5); StarDist also ``thresholds.json`` (prob 0.5, nms 0.4).

    Parameters
    ----------
    folder : path
        Created if missing; existing sub-folders are overwritten.
    n2v : bool
        Also write ``n2v``.
    n_rays, grid, stardist_depth
        StarDist3D ``Config3D(n_rays, grid, unet_n_depth, unet_n_filter_base=n_filter)``.
    unet_depth, n2v_depth, n_filter
        U-Net / N2V depth and first-level filters.
    output_gain : float
        Factor on the kernel of each network's last convolution. A freshly initialised network
        gives nearly constant outputs (probabilities within about 1e-3 of 0.5); a gain of about
        1000 spreads them over (0, 1) as a trained network's are, so that differences (e.g. from
        a too-small halo) are measured against a realistic output range. StarDist distances also
        get a bias of 5 voxels (positive ray lengths).
    n2v_gain : float
        The same for the N2V network. The random N2V is residual (``unet_residual=True``): its
        output is the input plus the network's, so it stays close to the image as a trained
        denoiser's does; the gain sets the size of the change (in normalised units).
    seed : int
        Weight initialisation seed.

    Returns
    -------
    dict
        ``{"stardist": path, "unet": path[, "n2v": path]}``.
    """
    import json

    from vollseg_dask.networks._tf import import_tf, set_seed
    from vollseg_dask.networks.folders import quiet_stdout

    import_tf()
    set_seed(seed)
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    from stardist.models import Config3D, StarDist3D

    from vollseg_dask.networks.n2v import N2V, N2VConfig
    from vollseg_dask.networks.unet import UNet, UNetConfig

    out: dict[str, Path] = {}
    conf = Config3D(n_rays=int(n_rays), grid=tuple(int(g) for g in grid), unet_n_depth=int(stardist_depth),
                    unet_n_filter_base=int(n_filter), train_tensorboard=False)
    with quiet_stdout():
        sd = StarDist3D(conf, name="stardist", basedir=str(root))
    if output_gain != 1.0:
        for name, bias in (("prob", 0.0), ("dist", 5.0)):
            layer = sd.keras_model.get_layer(name)
            k, b = layer.get_weights()
            layer.set_weights([k * np.float32(output_gain), b + np.float32(bias)])
    _save_legacy_h5(sd.keras_model, root / "stardist" / "weights_best.h5")
    (root / "stardist" / "thresholds.json").write_text(json.dumps({"prob": 0.5, "nms": 0.4}), encoding="utf-8")
    out["stardist"] = root / "stardist"
    un = UNet(UNetConfig(unet_n_depth=int(unet_depth), unet_n_first=int(n_filter)), root / "unet")
    _scale_last_conv(un.keras_model, output_gain)
    out["unet"] = un.save()
    if n2v:
        nv = N2V(N2VConfig(unet_n_depth=int(n2v_depth), unet_n_first=int(n_filter), unet_residual=True), root / "n2v")
        _scale_last_conv(nv.keras_model, n2v_gain)
        out["n2v"] = nv.save()
    return out


def _scale_last_conv(keras_model: Any, gain: float) -> None:
    if gain == 1.0:
        return
    for layer in reversed(keras_model.layers):
        w = layer.get_weights()
        if len(w) == 2 and w[0].ndim == 5:  # Conv3D kernel + bias
            layer.set_weights([w[0] * np.float32(gain), w[1]])
            return
    raise ConfigError("no Conv3D layer found to scale")


def _save_legacy_h5(keras_model: Any, path: Path) -> None:
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, keras_model)
