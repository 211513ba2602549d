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
region (:func:`_render_kernel`): it finds those 8 sites exactly from a short candidate list per
brick of voxels, and leaves out only computations whose result it proves not to matter (a tissue
function whose terms are exactly 0 or 1 in float64, a wall profile below the running maximum), so
its shortcuts change no bit (tested with other brick sizes and without the skip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from vollseg_dask.synthetic import _hash
from vollseg_dask.synthetic._trig import sincos
from vollseg_dask.synthetic.cells import CellTable, site_positions
from vollseg_dask.synthetic.geometry import (
    _packed,
    _tissue1,
    _tissue_packed,
    tissue_lipschitz,
    wave_jacobian_bound,
)
from vollseg_dask.synthetic.scene import Scene

__all__ = ["Region", "RenderedRegion", "render_region", "add_noise", "leaf_centres", "NEIGHBOURS"]

NEIGHBOURS = 8  # nearest sites examined per voxel (label + walls)
_BRICK_UM = 3.0  # brick edge (µm, rounded to whole voxels) over which the renderer shares candidate sites
_TISSUE_SKIP = True  # skip the tissue function where a bound proves it irrelevant (False only to test that)
_SQRTH = 0.70710678118654752440
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


@numba.njit(inline="always", cache=True, error_model="numpy")
def _profile(d: float, var_n: float, sigma_m: float, peak_norm: float) -> float:
    """Image of a membrane sheet at distance ``d`` (µm) blurred with PSF variance ``var_n`` along its normal."""
    var = sigma_m**2 + var_n
    return (sigma_m / math.sqrt(var)) * math.exp(-0.5 * d * d / var) / peak_norm


@numba.njit(inline="always", cache=True, error_model="numpy")
def _var_along(n0: float, n1: float, n2: float, var: np.ndarray) -> float:
    """PSF variance along the unit vector ``n``: ``Σ n_i² var_i``."""
    return (n0 * n0 * var[0] + n1 * n1 * var[1]) + n2 * n2 * var[2]


@numba.njit(inline="always", cache=True, error_model="numpy")
def _ndtr(a: float) -> float:
    """Standard normal CDF (the Cephes formula of ``scipy.special.ndtr``)."""
    x = a * _SQRTH
    z = abs(x)
    if z < _SQRTH:
        return 0.5 + 0.5 * math.erf(x)
    y = 0.5 * math.erfc(z)
    return 1.0 - y if x > 0 else y


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


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _render_kernel(z0: int, y0: int, x0: int, t: float, voxel: np.ndarray, F: np.ndarray, Wp: np.ndarray,
                   Tp: np.ndarray, P: np.ndarray, brick: np.ndarray,
                   Ys: np.ndarray, s_cl: np.ndarray, s_pos: np.ndarray, s_chain: np.ndarray, all_Y: np.ndarray,
                   g_lo: np.ndarray, g_dims: np.ndarray, g_start: np.ndarray, g_order: np.ndarray, g_h: float,
                   tdiv: np.ndarray, plane: np.ndarray, bond: np.ndarray, normal: np.ndarray, head: np.ndarray,
                   lo: np.ndarray, hi: np.ndarray, members: np.ndarray, n_planes: np.ndarray, offset: np.ndarray,
                   kappa: np.ndarray, nuc_radii: np.ndarray, fp: np.ndarray, ip: np.ndarray,
                   labels: np.ndarray, inten: np.ndarray) -> None:
    """Labels and expected intensities of a voxel box (see :func:`render_region`); one call, no Python per voxel.

    The box is walked in slabs of ``brick[0] × brick[1]`` rows, each cut into bricks of ``brick[2]``
    columns. Per slab: lab → material → cell-space coordinates of every voxel, row by row in loops
    that compile to SIMD code (the flow's phases split into a row part and a column part, as in
    :func:`~vollseg_dask.synthetic.geometry._flow_shift`, which gives the same bits), and the sites
    within ``r_query`` of the slab's cell-space box. Per brick: a Lipschitz bound of the tissue
    function that proves, when it can, that every voxel is so deep inside (or far outside) the
    tissue that the edge and surface terms are exactly 1 and 0 in float64 (they are then not
    computed); and the sites that can be among the ``K`` nearest of any of its voxels (within
    ``D_K + 2ρ`` of the brick centre's cell-space position, ``D_K`` its K-th nearest-site distance
    and ``ρ`` the brick's cell-space radius), sorted by distance to the centre. Per voxel, the exact
    K nearest of those (the scan stops once no later site can be closer than the K-th found).
    """
    M = ip[0]
    D = ip[1]
    K = ip[2]
    with_intensity = ip[3] != 0
    n_ch = ip[4]
    r_query = fp[0]
    r_cap = fp[1]
    band = fp[2]
    var_mean = fp[3]
    sig_m = fp[4]
    pnorm = fp[5]
    background = fp[6]
    cyto_level = fp[7]
    skip_depth = fp[8]
    edge_depth = fp[14]
    G = fp[9]
    psf_var = fp[10:13]
    Gp = fp[13]
    # Bound of any membrane profile at wall distance dw: amax·exp(-dw²/(2·vmax)).
    amax = sig_m / math.sqrt(sig_m**2 + min(psf_var[0], psf_var[1], psf_var[2])) / pnorm * 1.000001
    vmax = sig_m**2 + max(psf_var[0], psf_var[1], psf_var[2])
    rq2 = r_query * r_query
    sd_mean = math.sqrt(var_mean)
    Z, Yn, Xn = labels.shape
    n_alive = Ys.shape[0]
    bz, by, bx = brick[0], brick[1], brick[2]
    Kf = F.shape[0]
    Kw = Wp.shape[0]
    # Column part of the flow's phases (depends on x and t only).
    sbt = np.empty((Kf, Xn))
    cbt = np.empty((Kf, Xn))
    sb0 = np.empty((Kf, Xn))
    cb0 = np.empty((Kf, Xn))
    xl = np.empty(Xn)
    for ix in range(Xn):
        xl[ix] = (x0 + ix) * voxel[2]
    for k in range(Kf):
        for ix in range(Xn):
            sbt[k, ix], cbt[k, ix] = sincos(xl[ix] * F[k, 2] + (F[k, 7] * t + F[k, 8]))
            sb0[k, ix], cb0[k, ix] = sincos(xl[ix] * F[k, 2] + F[k, 8])
    acc = np.empty((6, Xn))
    sX = np.empty((3, bz, by, Xn))
    sY = np.empty((3, bz, by, Xn))
    bf = np.empty(bz * by * bx)
    slab_sites = np.empty(max(n_alive, 1), np.int64)
    sc0 = np.empty(max(n_alive, 1))
    sc1 = np.empty(max(n_alive, 1))
    sc2 = np.empty(max(n_alive, 1))
    dcs = np.empty(max(n_alive, 1))
    cand = np.empty(max(n_alive, 1), np.int64)
    cdist = np.empty(max(n_alive, 1))
    bc = np.empty(max(n_alive, 1), np.int64)
    bd = np.empty(max(n_alive, 1))
    bq0 = np.empty(max(n_alive, 1))
    bq1 = np.empty(max(n_alive, 1))
    bq2 = np.empty(max(n_alive, 1))
    bcl = np.empty(max(n_alive, 1), np.int64)
    bch = np.empty(max(n_alive, 1), np.int64)
    bps = np.empty(max(n_alive, 1), np.int64)
    kd = np.empty(max(K, 1))
    ki = np.empty(max(K, 1), np.int64)
    pl_n = np.empty((max(D, 1), 3))
    pl_take = np.zeros(max(D, 1), np.bool_)
    for zb in range(0, Z, bz):
        ze = min(zb + bz, Z)
        for yb in range(0, Yn, by):
            ye = min(yb + by, Yn)
            # --- coordinates of the slab, row by row (SIMD loops) ---
            for iz in range(zb, ze):
                p0 = (z0 + iz) * voxel[0]
                for iy in range(yb, ye):
                    p1 = (y0 + iy) * voxel[1]
                    X0r = sX[0, iz - zb, iy - yb]
                    X1r = sX[1, iz - zb, iy - yb]
                    X2r = sX[2, iz - zb, iy - yb]
                    if t == 0.0:
                        for ix in range(Xn):
                            X0r[ix] = p0
                            X1r[ix] = p1
                            X2r[ix] = xl[ix]
                    else:
                        acc[:] = 0.0
                        for k in range(Kf):
                            sa, ca = sincos(p0 * F[k, 0] + p1 * F[k, 1])
                            amp = F[k, 6]
                            e0 = F[k, 3]
                            e1 = F[k, 4]
                            e2 = F[k, 5]
                            for ix in range(Xn):
                                wt = (sa * cbt[k, ix] + ca * sbt[k, ix]) * amp
                                w0 = (sa * cb0[k, ix] + ca * sb0[k, ix]) * amp
                                acc[0, ix] += wt * e0
                                acc[1, ix] += wt * e1
                                acc[2, ix] += wt * e2
                                acc[3, ix] += w0 * e0
                                acc[4, ix] += w0 * e1
                                acc[5, ix] += w0 * e2
                        for ix in range(Xn):
                            X0r[ix] = p0 - (acc[0, ix] - acc[3, ix])
                            X1r[ix] = p1 - (acc[1, ix] - acc[4, ix])
                            X2r[ix] = xl[ix] - (acc[2, ix] - acc[5, ix])
                    acc[:3] = 0.0
                    for k in range(Kw):
                        k0 = Wp[k, 0]
                        k1 = Wp[k, 1]
                        k2 = Wp[k, 2]
                        ph = Wp[k, 7] * 0.0 + Wp[k, 8]
                        amp = Wp[k, 6]
                        e0 = Wp[k, 3]
                        e1 = Wp[k, 4]
                        e2 = Wp[k, 5]
                        for ix in range(Xn):
                            sw, _ = sincos((X0r[ix] * k0 + X1r[ix] * k1) + (X2r[ix] * k2 + ph))
                            w = sw * amp
                            acc[0, ix] += w * e0
                            acc[1, ix] += w * e1
                            acc[2, ix] += w * e2
                    Y0r = sY[0, iz - zb, iy - yb]
                    Y1r = sY[1, iz - zb, iy - yb]
                    Y2r = sY[2, iz - zb, iy - yb]
                    for ix in range(Xn):
                        Y0r[ix] = X0r[ix] + acc[0, ix]
                        Y1r[ix] = X1r[ix] + acc[1, ix]
                        Y2r[ix] = X2r[ix] + acc[2, ix]
            # --- sites within r_query of the slab's cell-space box ---
            ns = 0
            if n_alive > 0:
                lo0 = hi0 = sY[0, 0, 0, 0]
                lo1 = hi1 = sY[1, 0, 0, 0]
                lo2 = hi2 = sY[2, 0, 0, 0]
                for iz in range(ze - zb):
                    for iy in range(ye - yb):
                        for ix in range(Xn):
                            lo0 = min(lo0, sY[0, iz, iy, ix])
                            hi0 = max(hi0, sY[0, iz, iy, ix])
                            lo1 = min(lo1, sY[1, iz, iy, ix])
                            hi1 = max(hi1, sY[1, iz, iy, ix])
                            lo2 = min(lo2, sY[2, iz, iy, ix])
                            hi2 = max(hi2, sY[2, iz, iy, ix])
                m = r_query * 1.000001 + 1e-9
                a0 = max(np.int64(math.floor((lo0 - m - g_lo[0]) / g_h)), 0)
                a1 = max(np.int64(math.floor((lo1 - m - g_lo[1]) / g_h)), 0)
                a2 = max(np.int64(math.floor((lo2 - m - g_lo[2]) / g_h)), 0)
                e0i = min(np.int64(math.floor((hi0 + m - g_lo[0]) / g_h)), g_dims[0] - 1)
                e1i = min(np.int64(math.floor((hi1 + m - g_lo[1]) / g_h)), g_dims[1] - 1)
                e2i = min(np.int64(math.floor((hi2 + m - g_lo[2]) / g_h)), g_dims[2] - 1)
                for i0 in range(a0, e0i + 1):
                    for i1 in range(a1, e1i + 1):
                        if e2i < a2:
                            break
                        cell = (i0 * g_dims[1] + i1) * g_dims[2]
                        for j in range(g_start[cell + a2], g_start[cell + e2i + 1]):
                            slab_sites[ns] = g_order[j]
                            dcs[ns] = Ys[g_order[j], 2]
                            ns += 1
                # Sorted along x (the slab's long axis) so that a brick scans only a window of them.
                srt = np.argsort(dcs[:ns], kind="mergesort")
                for j in range(ns):
                    s = slab_sites[srt[j]]
                    cand[j] = s
                    sc0[j] = Ys[s, 0]
                    sc1[j] = Ys[s, 1]
                    sc2[j] = Ys[s, 2]
                slab_sites[:ns] = cand[:ns]
            for xb in range(0, Xn, bx):
                xe = min(xb + bx, Xn)
                nbz = ze - zb
                nby = ye - yb
                nbx = xe - xb
                # Centre voxel of the brick and its radius in material and cell space.
                cz = nbz // 2
                cy = nby // 2
                cx = xb + nbx // 2
                cX0, cX1, cX2 = sX[0, cz, cy, cx], sX[1, cz, cy, cx], sX[2, cz, cy, cx]
                cY0, cY1, cY2 = sY[0, cz, cy, cx], sY[1, cz, cy, cx], sY[2, cz, cy, cx]
                rX = 0.0
                rY = 0.0
                for iz in range(nbz):
                    for iy in range(nby):
                        for ix in range(xb, xe):
                            rX = max(rX, math.sqrt(((sX[0, iz, iy, ix] - cX0) ** 2 + (sX[1, iz, iy, ix] - cX1) ** 2)
                                                   + (sX[2, iz, iy, ix] - cX2) ** 2))
                            rY = max(rY, math.sqrt(((sY[0, iz, iy, ix] - cY0) ** 2 + (sY[1, iz, iy, ix] - cY1) ** 2)
                                                   + (sY[2, iz, iy, ix] - cY2) ** 2))
                # Tissue bounds over the brick: g within G·rX of its centre value, and |∇g| ≤ Gloc from
                # |∂ρ/∂u_i| = (|u_i|/ρ)^(n-1) ≤ 1 with |u_i| and ρ bounded over the brick (see
                # geometry.tissue_lipschitz); then f = g/|∇g| ≤ f_hi < 0 everywhere, or f > skip_depth.
                gc, _ = _tissue1(Tp, P, cX0, cX1, cX2)
                slack = G * rX * 1.000001 + 1e-9
                n_exp = Tp[6]
                rho_c = ((abs((cX0 - Tp[0]) / Tp[3]) ** n_exp + abs((cX1 - Tp[1]) / Tp[4]) ** n_exp)
                         + abs((cX2 - Tp[2]) / Tp[5]) ** n_exp) ** (1.0 / n_exp)
                rho_min = (rho_c - rX / Tp[7]) * 0.999999 - 1e-12
                deep_in = False
                deep_out = False
                f_hi = 0.0
                if rho_min > 0:
                    gr2 = 0.0
                    for i in range(3):
                        cu = (cX0, cX1, cX2)[i]
                        ui = (abs((cu - Tp[i]) / Tp[3 + i]) + rX / Tp[3 + i]) * 1.000001
                        gi = min(1.0, (ui / rho_min) ** (n_exp - 1.0)) / Tp[3 + i]
                        gr2 += gi * gi
                    gloc = max(math.sqrt(gr2) + Gp, Tp[8]) * 1.000001
                    if gc + slack < 0:
                        f_hi = (gc + slack) / gloc
                        deep_in = f_hi < -edge_depth
                    deep_out = gc - slack > skip_depth * gloc
                if deep_out:
                    # f > skip_depth everywhere: no cell, edge and surface terms exactly 0.
                    for iz in range(nbz):
                        for iy in range(nby):
                            for ix in range(xb, xe):
                                labels[zb + iz, yb + iy, ix] = 0
                                if with_intensity:
                                    for ch in range(n_ch):
                                        inten[ch, zb + iz, yb + iy, ix] = background
                    continue
                any_near = False
                v = 0
                for iz in range(nbz):
                    for iy in range(nby):
                        for ix in range(xb, xe):
                            if deep_in:
                                bf[v] = -np.inf  # f ≤ f_hi < -edge_depth: computed only if needed (below)
                            else:
                                _, bf[v] = _tissue1(Tp, P, sX[0, iz, iy, ix], sX[1, iz, iy, ix], sX[2, iz, iy, ix])
                            if bf[v] < band:
                                any_near = True
                            v += 1
                # Candidate sites of the brick, sorted by distance to its centre.
                nc = 0
                if any_near and ns > 0:
                    R0 = r_query + rY
                    # Sites within R0 of the centre (window of the x-sorted slab list), and the K-th distance.
                    j0 = np.searchsorted(sc2[:ns], cY2 - R0 * 1.000001 - 1e-9)
                    j1 = np.searchsorted(sc2[:ns], cY2 + R0 * 1.000001 + 1e-9, side="right")
                    nk = 0
                    for j in range(j0, j1):
                        d = math.sqrt(((sc0[j] - cY0) ** 2 + (sc1[j] - cY1) ** 2) + (sc2[j] - cY2) ** 2)
                        if d <= R0:
                            cand[nc] = j
                            cdist[nc] = d
                            nc += 1
                            if nk < K or d < kd[K - 1]:
                                pos = nk if nk < K else K - 1
                                while pos > 0 and kd[pos - 1] > d:
                                    kd[pos] = kd[pos - 1]
                                    pos -= 1
                                kd[pos] = d
                                if nk < K:
                                    nk += 1
                    R = R0
                    if nk == K:
                        R = min(kd[K - 1] + 2.0 * rY, R0)
                    R = R * 1.000001 + 1e-9
                    # Keep those within R, sorted by distance to the centre (insertion sort: a few dozen).
                    m = 0
                    for j in range(nc):
                        d = cdist[j]
                        if d > R:
                            continue
                        pos = m
                        while pos > 0 and bd[pos - 1] > d:
                            bd[pos] = bd[pos - 1]
                            bc[pos] = bc[pos - 1]
                            pos -= 1
                        bd[pos] = d
                        bc[pos] = slab_sites[cand[j]]
                        m += 1
                    nc = m
                    # Their attributes, contiguous (the per-voxel loops below read only these).
                    for j in range(nc):
                        s = bc[j]
                        bq0[j] = Ys[s, 0]
                        bq1[j] = Ys[s, 1]
                        bq2[j] = Ys[s, 2]
                        bcl[j] = s_cl[s]
                        bch[j] = s_chain[s]
                        bps[j] = s_pos[s]
                v = -1
                for iz in range(zb, ze):
                    for iy in range(yb, ye):
                        for ix in range(xb, xe):
                            v += 1
                            f = bf[v]
                            deep = f == -np.inf
                            if deep and n_alive == 0:
                                _, f = _tissue1(Tp, P, sX[0, iz - zb, iy - yb, ix], sX[1, iz - zb, iy - yb, ix],
                                                sX[2, iz - zb, iy - yb, ix])
                                deep = False
                            if with_intensity:
                                if deep:
                                    base0 = 0.0  # overwritten below: a deep voxel is near the cells
                                else:
                                    base0 = background + (cyto_level * _ndtr(-f / sd_mean)
                                                          + _profile(f, var_mean, sig_m, pnorm))
                                inten[0, iz, iy, ix] = base0
                                for ch in range(1, n_ch):
                                    inten[ch, iz, iy, ix] = background
                            labels[iz, iy, ix] = 0
                            if f >= band or n_alive == 0:
                                continue
                            Y0 = sY[0, iz - zb, iy - yb, ix]
                            Y1 = sY[1, iz - zb, iy - yb, ix]
                            Y2 = sY[2, iz - zb, iy - yb, ix]
                            dv = math.sqrt(((Y0 - cY0) ** 2 + (Y1 - cY1) ** 2) + (Y2 - cY2) ** 2) + 1e-9
                            # The K nearest candidate sites within r_query, sorted by distance (compared
                            # squared; sqrt is monotone).
                            nk = 0
                            kth = np.inf
                            for j in range(nc):
                                if bd[j] - dv > r_query or bd[j] - dv > kth:
                                    break  # no later candidate can be closer
                                d2 = ((Y0 - bq0[j]) ** 2 + (Y1 - bq1[j]) ** 2) + (Y2 - bq2[j]) ** 2
                                if d2 > rq2 or (nk == K and d2 >= kd[K - 1]):
                                    continue
                                pos = nk if nk < K else K - 1
                                while pos > 0 and kd[pos - 1] > d2:
                                    kd[pos] = kd[pos - 1]
                                    ki[pos] = ki[pos - 1]
                                    pos -= 1
                                kd[pos] = d2
                                ki[pos] = j
                                if nk < K:
                                    nk += 1
                                if nk == K:
                                    kth = math.sqrt(kd[K - 1]) + 1e-9
                            for j in range(nk):
                                kd[j] = math.sqrt(kd[j])
                            mem = 0.0
                            kap = 1.0
                            if nk > 0:  # a site within r_query: the voxel belongs to (or borders) a cell
                                a = ki[0]
                                d1 = kd[0]
                                cl = bcl[a]
                                r0 = Y0 - bq0[a]
                                r1 = Y1 - bq1[a]
                                r2 = Y2 - bq2[a]
                                # Leaf node: chain cuts by chain position, plane cuts by the side of the plane.
                                node = 1
                                for g in range(D):
                                    div = t >= tdiv[cl, node]
                                    pl_take[g] = div and plane[cl, node]
                                    pl_n[g, 0] = normal[cl, node, 0]
                                    pl_n[g, 1] = normal[cl, node, 1]
                                    pl_n[g, 2] = normal[cl, node, 2]
                                    if div:
                                        if plane[cl, node]:
                                            side = (r0 * pl_n[g, 0] + r1 * pl_n[g, 1]) + r2 * pl_n[g, 2]
                                            node = 2 * node + (1 if side < 0 else 0)
                                        else:
                                            node = 2 * node + (1 if bps[a] >= bond[cl, node] else 0)
                                inside = f < 0 and d1 <= r_cap
                                if inside:
                                    labels[iz, iy, ix] = head[cl] * M + node
                                if not with_intensity:
                                    continue
                                if f < 0:
                                    # Membrane: cap sphere, plane walls of divisions, walls to sites of other
                                    # cells; the result is the maximum, so a wall whose profile provably
                                    # cannot exceed the running maximum is skipped (exactly the same value).
                                    dn = d1 if d1 > 0 else 1.0
                                    vn = _var_along(r0 / dn, r1 / dn, r2 / dn, psf_var)
                                    mem = _profile(abs(r_cap - d1), vn, sig_m, pnorm)
                                    for g in range(D):
                                        if pl_take[g]:
                                            dp = abs((r0 * pl_n[g, 0] + r1 * pl_n[g, 1]) + r2 * pl_n[g, 2])
                                            vn = _var_along(pl_n[g, 0], pl_n[g, 1], pl_n[g, 2], psf_var)
                                            mem = max(mem, _profile(dp, vn, sig_m, pnorm))
                                    lm = math.log(mem / amax) - 1e-9 if mem > 0 else -np.inf
                                    for j in range(1, nk):
                                        # Half the distance difference: zero on the wall, continuous across
                                        # the internal faces of a multi-site cell; it grows with j.
                                        dw = 0.5 * (kd[j] - d1)
                                        if -0.5 * dw * dw / vmax < lm:
                                            break  # this and every later wall: profile < mem
                                        b = ki[j]
                                        if bcl[b] == cl and bch[b] == bch[a]:
                                            continue
                                        q0 = bq0[b] - bq0[a]
                                        q1 = bq1[b] - bq1[a]
                                        q2 = bq2[b] - bq2[a]
                                        sep = math.sqrt((q0 * q0 + q1 * q1) + q2 * q2)
                                        if not sep > 0:
                                            sep = 1.0
                                        vn = _var_along(q0 / sep, q1 / sep, q2 / sep, psf_var)
                                        pj = _profile(dw, vn, sig_m, pnorm)
                                        if pj > mem:
                                            mem = pj
                                            lm = math.log(mem / amax) - 1e-9
                                if d1 <= r_cap:
                                    kap = kappa[cl, node]
                                if n_ch > 1 and inside:
                                    if n_planes[cl, node] > 0:
                                        m0 = bq0[a] + offset[cl, node, 0]
                                        m1 = bq1[a] + offset[cl, node, 1]
                                        m2 = bq2[a] + offset[cl, node, 2]
                                    else:
                                        mid = members[cl, (lo[cl, node] + hi[cl, node] - 1) // 2]
                                        m0 = all_Y[mid, 0]
                                        m1 = all_Y[mid, 1]
                                        m2 = all_Y[mid, 2]
                                    e0 = (Y0 - m0) / nuc_radii[cl, node, 0]
                                    e1 = (Y1 - m1) / nuc_radii[cl, node, 1]
                                    e2 = (Y2 - m2) / nuc_radii[cl, node, 2]
                                    qn = math.sqrt((e0 * e0 + e1 * e1) + e2 * e2)
                                    rm = (nuc_radii[cl, node, 0] + nuc_radii[cl, node, 1] + nuc_radii[cl, node, 2]) / 3.0
                                    inten[1, iz, iy, ix] = background + _ndtr(-((qn - 1.0) * rm) / sd_mean)
                            elif not with_intensity:
                                continue
                            # Tissue-surface profile: where f was skipped, it is needed only if the
                            # bound profile(f_hi) ≥ profile(f) could exceed the membrane value.
                            if deep and _profile(f_hi, var_mean, sig_m, pnorm) * 1.000001 >= mem:
                                _, f = _tissue1(Tp, P, sX[0, iz - zb, iy - yb, ix], sX[1, iz - zb, iy - yb, ix],
                                                sX[2, iz - zb, iy - yb, ix])
                                mem = max(mem, _profile(f, var_mean, sig_m, pnorm))
                            elif not deep:
                                mem = max(mem, _profile(f, var_mean, sig_m, pnorm))
                            edge = 1.0 if deep else _ndtr(-f / sd_mean)  # ndtr(8.5) is 1.0 in float64
                            inten[0, iz, iy, ix] = (background + cyto_level * kap * edge) + mem


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
