"""Rendering kernels: ground-truth labels and the expected (noise-free) image of a region, then noise.

Every voxel is computed from its own coordinates and the cell table only, so any region renders
exactly as it would inside the whole volume. The optics are analytic: a membrane is a thin sheet
(Gaussian profile of the configured thickness) and its image is the sheet convolved with the
anisotropic Gaussian PSF along the wall normal, ``σ_n² = Σ n_i² σ_i²`` — exact for a flat wall and
free of the aliasing that a discrete blur of a sub-voxel sheet sampled every 2 µm in z would give.
Tissue edge, cytoplasm and nuclei are blurred the same way (error-function edges). Noise is
drawn per storage chunk from a generator seeded by ``(seed, t, channel, chunk index)``, so the
noisy image does not depend on the order or grouping in which chunks are rendered.

A voxel's label is its nearest living site among the ``NEIGHBOURS`` (8) nearest within ``r_query``
(cell space); its membrane value is the largest wall profile over the other cells' sites among
those 8, the plane walls of its divisions and the cap sphere. The renderer is one Numba kernel per
region (:func:`~vollseg_dask.synthetic._kernels._render_kernel`): it finds those 8 sites exactly from a short candidate list per
brick of voxels, and leaves out only computations whose result it proves not to matter (a tissue
function whose terms are exactly 0 or 1 in float64, a wall profile below the running maximum), so
its shortcuts change no bit (tested with other brick sizes and without the skip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vollseg_dask.synthetic import _hash
from vollseg_dask.synthetic._kernels import _render_kernel
from vollseg_dask.synthetic.cells import CellTable, site_positions
from vollseg_dask.synthetic.geometry import (
    _packed,
    _tissue_packed,
    tissue_lipschitz,
    wave_jacobian_bound,
)
from vollseg_dask.synthetic.scene import Scene

__all__ = ["Region", "RenderedRegion", "render_region", "add_noise", "leaf_centres", "NEIGHBOURS"]

NEIGHBOURS = 8  # nearest sites examined per voxel (label + walls)
_BRICK_UM = 3.0  # brick edge (µm, rounded to whole voxels) over which the renderer shares candidate sites
_TISSUE_SKIP = True  # skip the tissue function where a bound proves it irrelevant (False only to test that)
_S_KAPPA, _S_NUC = 301, 302
_S_NOISE = 0x5EED

Region = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class RenderedRegion:
    """Output of :func:`render_region` for one frame.

    Attributes
    ----------
    labels : ndarray (z, y, x) uint32
        Track id of each voxel, 0 for background.
    intensity : ndarray (c, z, y, x) float64
        Expected intensity in units of the nominal membrane peak (channel 0 membrane, channel 1
        nucleus when configured), before photon scaling and noise.
    """

    labels: np.ndarray
    intensity: np.ndarray


def _chain_nodes(scene: Scene, table: CellTable, t: int, cl: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Leaf node of each site at frame ``t`` following chain divisions only (stops at plane divisions)."""
    node = np.ones(len(cl), np.int64)
    for _ in range(scene.config.max_generations):
        div = (t >= table.tdiv[cl, node]) & ~table.plane[cl, node]
        node = np.where(div, 2 * node + (pos >= table.bond[cl, node]), node)
    return node


def leaf_centres(scene: Scene, table: CellTable, cl: np.ndarray, node: np.ndarray, site_Y: np.ndarray,
                 own_Y: np.ndarray) -> np.ndarray:
    """Cell-space centre of leaf ``(cl, node)``: the middle site of its chain, or its anchor point.

    Parameters
    ----------
    site_Y : ndarray (n, 3)
        Positions of all table sites at the frame.
    own_Y : ndarray (q, 3)
        Position of the site the query belongs to (used for plane-split leaves).
    """
    mid = table.members[cl, (table.lo[cl, node] + table.hi[cl, node] - 1) // 2]
    split = table.n_planes[cl, node] > 0
    return np.where(split[:, None], own_Y + table.offset[cl, node], site_Y[mid])


def _site_grid(Ys: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Uniform grid of cell side ``h`` (µm) over points ``Ys`` (n, 3).

    Returns
    -------
    lo : ndarray (3,) float64
        Grid origin.
    dims : ndarray (3,) int64
    start : ndarray (prod(dims) + 1,) int64
        Points of grid cell ``c`` are ``order[start[c]:start[c + 1]]``.
    order : ndarray (n,) int64
    """
    lo = Ys.min(axis=0) if len(Ys) else np.zeros(3)
    dims = (np.floor(((Ys.max(axis=0) if len(Ys) else lo) - lo) / h).astype(np.int64) + 1)
    cell = np.clip(np.floor((Ys - lo) / h).astype(np.int64), 0, dims - 1)
    flat = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    order = np.argsort(flat, kind="stable").astype(np.int64)
    start = np.searchsorted(flat[order], np.arange(int(np.prod(dims)) + 1)).astype(np.int64)
    return lo.astype(np.float64), dims, start, order


def render_region(scene: Scene, table: CellTable, t: int, region: Region, *, intensity: bool = True) -> RenderedRegion:
    """Render labels (and expected intensities) of a voxel box at frame ``t``.

    Parameters
    ----------
    scene : Scene
    table : CellTable
        Must hold every cluster within reach of the region (see
        :func:`~vollseg_dask.synthetic.cells.cell_table_for_region`).
    t : int
        Frame index.
    region : ((z0, z1), (y0, y1), (x0, x1))
        Half-open voxel index ranges (may extend beyond the image: the scene is defined everywhere).
    intensity : bool
        Also compute the expected image (skip for labels only).

    Returns
    -------
    RenderedRegion
    """
    (z0, z1), (y0, y1), (x0, x1) = region
    shape = (z1 - z0, y1 - y0, x1 - x0)
    c = scene.config
    n_ch = c.n_channels
    labels = np.empty(shape, np.uint32)
    inten = np.empty((n_ch, *shape)) if intensity else np.zeros((n_ch, 0, 0, 0))

    alive_site = np.flatnonzero(table.alive[table.site_cluster]) if len(table.sites) else np.zeros(0, np.int64)
    all_Y = site_positions(scene, table.sites, t) if len(table.sites) else np.zeros((0, 3))
    Ys = np.ascontiguousarray(all_Y[alive_site])
    s_cl = table.site_cluster[alive_site].astype(np.int64)
    s_pos = table.sites.chain_pos[alive_site].astype(np.int64)
    s_chain = _chain_nodes(scene, table, t, s_cl, s_pos) if len(s_cl) else np.zeros(0, np.int64)
    g_lo, g_dims, g_start, g_order = _site_grid(Ys, scene.spacing)
    M = scene.M
    # Per-track constants: cytoplasm brightness and nucleus radii (pure functions of the label).
    lab_all = table.head[:, None] * M + np.arange(M)[None, :]
    kappa = 0.8 + 0.4 * _hash.uniform(scene.seed, _S_KAPPA, lab_all)
    axes_h = np.stack([_hash.uniform(scene.seed, _S_NUC, lab_all, ax) for ax in range(3)], axis=-1)
    nuc_radii = scene.nucleus_radius * 0.8 ** table.n_planes[..., None] * (0.85 + 0.3 * axes_h)
    var_mean = float(scene.psf_var.mean())
    sig_m = scene.membrane_sigma
    mem_var = sig_m**2 + var_mean
    # Depth beyond which, in float64, ndtr(±f/σ) is exactly 1 or 0 and the surface profile exactly 0.
    skip_depth = max(40.0 * math.sqrt(var_mean), math.sqrt(1500.0 * mem_var)) + 1e-6 if _TISSUE_SKIP else np.inf
    # Depth inside below which ndtr(-f/σ) is exactly 1.0 (0.5·erfc(8.5/√2) < 2^-54).
    edge_depth = 8.5 * math.sqrt(var_mean) * 1.000001 + 1e-9 if _TISSUE_SKIP else np.inf
    band = 6.0 * math.sqrt(sig_m**2 + float(scene.psf_var.max()))
    fp = np.array([scene.r_query, scene.r_cap, band, var_mean, sig_m, scene.peak_norm, c.background_level,
                   c.cytoplasm_level, skip_depth, tissue_lipschitz(scene.tissue), *scene.psf_var,
                   wave_jacobian_bound(scene.tissue.perturbation) / float(np.min(scene.tissue.radii)), edge_depth],
                  np.float64)
    ip = np.array([M, c.max_generations, min(NEIGHBOURS, len(Ys)), int(intensity), n_ch], np.int64)
    brick = np.maximum(1, np.rint(_BRICK_UM / scene.voxel)).astype(np.int64)
    _render_kernel(z0, y0, x0, float(t), scene.voxel.astype(np.float64), _packed(scene.flow), _packed(scene.warp),
                   _tissue_packed(scene.tissue), _packed(scene.tissue.perturbation), brick,
                   Ys, s_cl, s_pos, s_chain, np.ascontiguousarray(all_Y), g_lo, g_dims, g_start, g_order,
                   float(scene.spacing), table.tdiv, table.plane, table.bond, np.ascontiguousarray(table.normal),
                   table.head, table.lo, table.hi, table.members, table.n_planes, np.ascontiguousarray(table.offset),
                   kappa, np.ascontiguousarray(nuc_radii), fp, ip, labels, inten)
    return RenderedRegion(labels=labels, intensity=inten if intensity else np.zeros((n_ch, 0)))


def add_noise(scene: Scene, expected: np.ndarray, t: int, channel: int, chunk_index: tuple[int, int, int]) -> np.ndarray:
    """Camera image of one storage chunk: offset + Poisson(photons·intensity) + Gaussian read noise.

    Parameters
    ----------
    scene : Scene
    expected : ndarray (z, y, x) float64
        Expected intensity of the chunk (exactly the chunk's extent, clipped at the image edge).
    t, channel : int
    chunk_index : (cz, cy, cx)
        Index of the chunk in the storage chunk grid; with ``t`` and ``channel`` it seeds the
        generator, so the result is independent of which other chunks are rendered.

    Returns
    -------
    ndarray uint16, same shape.
    """
    c = scene.config
    rng = np.random.default_rng([scene.seed, _S_NOISE, int(t), int(channel), *(int(i) for i in chunk_index)])
    counts = rng.poisson(scene.photons * expected).astype(np.float64)
    counts += c.offset + rng.normal(0.0, c.read_noise, expected.shape) if c.read_noise > 0 else c.offset
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
