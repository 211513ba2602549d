"""Rendering kernels: ground-truth labels and the expected (noise-free) image of a region, then noise.

Every voxel is computed from its own coordinates and the cell table only, so any region renders
exactly as it would inside the whole volume. The optics are analytic: a membrane is a thin sheet
(Gaussian profile of the configured thickness) and its image is the sheet convolved with the
anisotropic Gaussian PSF along the wall normal, ``σ_n² = Σ n_i² σ_i²`` — exact for a flat wall and
free of the aliasing that a discrete blur of a sub-voxel sheet sampled every 2 µm in z would give.
Tissue edge, cytoplasm and nuclei are blurred the same way (error-function edges). Noise is
drawn per storage chunk from a generator seeded by ``(seed, t, channel, chunk index)``, so the
noisy image does not depend on the order or grouping in which chunks are rendered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import ndtr

from vollseg_dask.synthetic import _hash
from vollseg_dask.synthetic.cells import CellTable, site_positions
from vollseg_dask.synthetic.geometry import lab_to_cell, tissue_distance
from vollseg_dask.synthetic.scene import Scene

__all__ = ["Region", "RenderedRegion", "render_region", "add_noise", "leaf_centres", "NEIGHBOURS"]

NEIGHBOURS = 8  # nearest sites examined per voxel (label + walls)
_BATCH = 1 << 16  # voxels per vectorised batch: bounds temporaries to a few tens of MB
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


def _profile(d: np.ndarray, var_n: np.ndarray, sigma_m: float, peak_norm: float) -> np.ndarray:
    """Image of a membrane sheet at distance ``d`` (µm) blurred with PSF variance ``var_n`` along its normal."""
    var = sigma_m**2 + var_n
    return (sigma_m / np.sqrt(var)) * np.exp(-0.5 * d * d / var) / peak_norm


def _var_along(n: np.ndarray, var: np.ndarray) -> np.ndarray:
    """PSF variance along unit vectors ``n`` (q, 3): ``Σ n_i² var_i``."""
    return n[:, 0] ** 2 * var[0] + n[:, 1] ** 2 * var[1] + n[:, 2] ** 2 * var[2]


def _resolve(scene: Scene, table: CellTable, t: int, cl: np.ndarray, pos: np.ndarray, rel: np.ndarray | None,
             ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Leaf node of each query at frame ``t``.

    Parameters
    ----------
    cl, pos : ndarray (q,)
        Cluster index and chain position of the query's nearest site.
    rel : ndarray (q, 3) or None
        ``Y − Y_site``; None resolves chain divisions only (stops at plane divisions).

    Returns
    -------
    node : ndarray (q,)
    planes : list of (taken, normal)
        For each level, which queries crossed a plane division there and its normal.
    """
    node = np.ones(len(cl), np.int64)
    planes: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(scene.config.max_generations):
        div = t >= table.tdiv[cl, node]
        is_plane = table.plane[cl, node]
        chain_child = 2 * node + (pos >= table.bond[cl, node])
        if rel is None:
            node = np.where(div & ~is_plane, chain_child, node)
            continue
        nrm = table.normal[cl, node]
        minus = np.einsum("qk,qk->q", rel, nrm) < 0
        child = np.where(is_plane, 2 * node + minus, chain_child)
        taken = div & is_plane
        planes.append((taken, nrm))
        node = np.where(div, child, node)
    return node, planes


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
    n_ch = scene.config.n_channels
    labels = np.zeros(int(np.prod(shape)), np.uint32)
    inten = np.zeros((n_ch, labels.size)) if intensity else np.zeros((n_ch, 0))

    alive_site = np.flatnonzero(table.alive[table.site_cluster]) if len(table.sites) else np.zeros(0, np.int64)
    all_Y = site_positions(scene, table.sites, t) if len(table.sites) else np.zeros((0, 3))
    Ys = all_Y[alive_site]
    s_cl = table.site_cluster[alive_site]
    s_pos = table.sites.chain_pos[alive_site]
    n_alive = len(alive_site)
    k = min(NEIGHBOURS, n_alive)
    tree = cKDTree(Ys) if n_alive else None
    chain_node, _ = _resolve(scene, table, t, s_cl, s_pos, None)
    psf_var = scene.psf_var
    var_mean = float(psf_var.mean())
    sig_m, pnorm = scene.membrane_sigma, scene.peak_norm
    c = scene.config

    # Beyond this distance outside the tissue only the blurred tissue edge matters (cells are skipped).
    band = 6.0 * np.sqrt(sig_m**2 + float(psf_var.max()))
    plane_size = shape[1] * shape[2]
    zs_per_batch = max(1, _BATCH // max(plane_size, 1))
    yy, xx = np.meshgrid(np.arange(y0, y1), np.arange(x0, x1), indexing="ij")
    yx = np.stack([yy.ravel(), xx.ravel()], axis=1)
    for zb in range(z0, z1, zs_per_batch):
        ze = min(zb + zs_per_batch, z1)
        idx = np.concatenate([np.column_stack([np.full(plane_size, z), yx]) for z in range(zb, ze)])
        sl = slice((zb - z0) * plane_size, (ze - z0) * plane_size)
        x = idx * scene.voxel
        X, Y = lab_to_cell(x, t, scene.flow, scene.warp)
        f = tissue_distance(X, scene.tissue)
        if intensity:
            # Far-outside default: background plus the blurred tissue edge.
            edge = ndtr(-f / np.sqrt(var_mean))
            inten[:, sl] = c.background_level
            inten[0, sl] += c.cytoplasm_level * edge + _profile(f, np.full(len(f), var_mean), sig_m, pnorm)
        near = np.flatnonzero(f < band)
        if k == 0 or len(near) == 0:
            continue
        Y = Y[near]
        f = f[near]
        q = len(near)
        dist, nb = tree.query(Y, k=k, distance_upper_bound=scene.r_query)
        dist = dist.reshape(q, k)
        nb = nb.reshape(q, k)
        d1 = dist[:, 0]
        found = np.isfinite(d1)
        a = np.where(found, nb[:, 0], 0)
        cl = s_cl[a]
        rel = Y - Ys[a]
        node, planes = _resolve(scene, table, t, cl, s_pos[a], rel)
        inside = (f < 0) & found & (d1 <= scene.r_cap)
        lab = table.head[cl] * scene.M + node
        out = labels[sl]
        out[near] = np.where(inside, lab, 0).astype(np.uint32)
        if not intensity:
            continue

        # Membrane: walls to sites of other cells, plane walls of divisions, cap sphere.
        mem = np.zeros(q)
        with np.errstate(invalid="ignore"):
            for j in range(1, k):
                bj = nb[:, j]
                ok = bj < n_alive
                bj = np.where(ok, bj, 0)
                other = ok & ((s_cl[bj] != cl) | (chain_node[bj] != chain_node[a]))
                diff = Ys[bj] - Ys[a]
                sep = np.sqrt(np.einsum("qk,qk->q", diff, diff))
                sep = np.where(sep > 0, sep, 1.0)
                # Half the distance difference: zero on the wall, continuous across the internal
                # faces of a multi-site cell (a plane distance from the nearest site would jump there).
                dw = np.where(other, 0.5 * (dist[:, j] - d1), np.inf)
                nrm = diff / sep[:, None]
                mem = np.maximum(mem, _profile(dw, _var_along(nrm, psf_var), sig_m, pnorm))
        for taken, nrm in planes:
            dp = np.where(taken, np.abs(np.einsum("qk,qk->q", rel, nrm)), np.inf)
            mem = np.maximum(mem, _profile(dp, _var_along(nrm, psf_var), sig_m, pnorm))
        dcap = np.where(found, np.abs(scene.r_cap - d1), np.inf)
        rn = rel / np.where(found & (d1 > 0), d1, 1.0)[:, None]
        mem = np.maximum(mem, _profile(dcap, _var_along(rn, psf_var), sig_m, pnorm))
        mem = np.where(f < 0, mem, 0.0)
        mem = np.maximum(mem, _profile(f, np.full(q, var_mean), sig_m, pnorm))
        kappa = 0.8 + 0.4 * _hash.uniform(scene.seed, _S_KAPPA, lab)
        edge = ndtr(-f / np.sqrt(var_mean))
        cyto = c.cytoplasm_level * np.where(found & (d1 <= scene.r_cap), kappa, 1.0) * edge
        block = inten[:, sl]
        block[0, near] = c.background_level + cyto + mem
        if n_ch > 1:
            centre = leaf_centres(scene, table, cl, node, all_Y, Ys[a])
            axes_h = np.stack([_hash.uniform(scene.seed, _S_NUC, lab, ax) for ax in range(3)], axis=1)
            radii = scene.nucleus_radius * 0.8 ** table.n_planes[cl, node][:, None] * (0.85 + 0.3 * axes_h)
            qn = np.linalg.norm((Y - centre) / radii, axis=1)
            e = (qn - 1.0) * radii.mean(axis=1)
            block[1, near] = c.background_level + ndtr(-e / np.sqrt(var_mean)) * inside
    return RenderedRegion(labels=labels.reshape(shape), intensity=inten.reshape((n_ch, *shape)) if intensity
                          else inten)


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
