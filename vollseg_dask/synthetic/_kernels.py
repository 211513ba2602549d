"""Compiled kernels of the synthetic generator (Numba): coordinates, tissue function, renderer.

They live in one module on purpose: Numba's on-disk cache (``cache=True``) is keyed by the file
that defines a function, so a kernel that inlined a function from *another* file would keep a stale
copy of it after that file changed, and the renderer and the presence checks of
:mod:`~vollseg_dask.synthetic.cells` would silently disagree. The Python faces are
:mod:`~vollseg_dask.synthetic.geometry` (``lab_to_cell``, ``tissue_distance`` ...) and
:func:`~vollseg_dask.synthetic.render.render_region`; see their docstrings for the model.

* :func:`sincos`: the C library's ``sin``/``cos`` (what ``math.sin`` and NumPy's float64 ``sin``
  call) cost about 23 ns a value here and stop LLVM from vectorising a loop. This is the Cephes
  algorithm (Cody–Waite reduction by π/4 in three parts, degree-13/14 minimax polynomials) written
  branch-free, so a loop over it compiles to SIMD code: about 1.5 ns a (sin, cos) pair, within 1 ulp
  of the C library for |x| < 1e8 (tested; the generator's phases stay below 1e4 rad). Plain IEEE
  arithmetic without fused multiply-adds: the same bits on every machine.
* Point kernels ``_field``, ``_flow_shift``, ``_lab_to_material1``, ``_material_to_cell1``,
  ``_tissue1`` and their array loops ``*_many``: the very code the renderer inlines per voxel, so a
  voxel's coordinates are the same bits whichever path computes them.
* :func:`_render_kernel`: labels and expected intensities of a voxel box.

All kernels use ``error_model="numpy"`` (IEEE division, no Python exceptions).
"""

from __future__ import annotations

import math

import numba
import numpy as np

_DP1 = 7.85398125648498535156e-1
_DP2 = 3.77489470793079817668e-8
_DP3 = 2.69515142907905952645e-15
_FOPI = 1.27323954473516268615  # 4/π
_S0, _S1, _S2 = 1.58962301576546568060e-10, -2.50507477628578072866e-8, 2.75573136213857245213e-6
_S3, _S4, _S5 = -1.98412698295895385996e-4, 8.33333333332211858878e-3, -1.66666666666666307295e-1
_C0, _C1, _C2 = -1.13585365213876817300e-11, 2.08757008419747316778e-9, -2.75573141792967388112e-7
_C3, _C4, _C5 = 2.48015872888517045348e-5, -1.38888888888730564116e-3, 4.16666666666665929218e-2


@numba.njit(inline="always", cache=True, error_model="numpy")
def sincos(x: float) -> tuple[float, float]:
    """``(sin(x), cos(x))`` of a float64 (|x| < 1e8), branch-free."""
    ax = abs(x)
    y = math.floor(ax * _FOPI)
    j = np.int64(y)
    odd = j & 1
    j = j + odd
    y = y + odd
    z = ((ax - y * _DP1) - y * _DP2) - y * _DP3
    zz = z * z
    ps = z + z * zz * (((((_S0 * zz + _S1) * zz + _S2) * zz + _S3) * zz + _S4) * zz + _S5)
    pc = 1.0 - 0.5 * zz + zz * zz * (((((_C0 * zz + _C1) * zz + _C2) * zz + _C3) * zz + _C4) * zz + _C5)
    q = j & 7
    swap = (q == 2) | (q == 6)
    s = pc if swap else ps
    c = ps if swap else pc
    sgn_s = -1.0 if q >= 4 else 1.0
    sgn_c = -1.0 if (q == 2) | (q == 4) else 1.0
    if x < 0:
        sgn_s = -sgn_s
    return s * sgn_s, c * sgn_c


# --- coordinates and tissue (see geometry.py) --------------------------------------------------

_MAX_ITERATIONS = 400  # fixed-point iterations at most (contraction factor ≤ 0.8: ~150 reach 1e-13 µm)
_TOL_ABS, _TOL_REL = 1e-13, 4e-16  # convergence: the update is at the rounding level of the coordinates


@numba.njit(inline="always", cache=True, error_model="numpy")
def _field(W: np.ndarray, p0: float, p1: float, p2: float, t: float) -> tuple[float, float, float]:
    """Wave field at one point: ``Σ_k a_k e_k sin((p0·k0 + p1·k1) + (p2·k2 + ω_k t + φ_k))``."""
    d0 = 0.0
    d1 = 0.0
    d2 = 0.0
    for k in range(W.shape[0]):
        s, _ = sincos((p0 * W[k, 0] + p1 * W[k, 1]) + (p2 * W[k, 2] + (W[k, 7] * t + W[k, 8])))
        w = s * W[k, 6]
        d0 += w * W[k, 3]
        d1 += w * W[k, 4]
        d2 += w * W[k, 5]
    return d0, d1, d2


@numba.njit(inline="always", cache=True, error_model="numpy")
def _flow_shift(F: np.ndarray, p0: float, p1: float, p2: float, t: float) -> tuple[float, float, float]:
    """``D(x, t) − D(x, 0)`` at one lab point.

    Each wave's phase is split as ``A + B`` with ``A = p0·k0 + p1·k1`` and ``B = p2·k2 + ω t + φ``, and
    ``sin(A + B) = sin A cos B + cos A sin B``: the same value to an ulp, but for voxels ``A`` is
    constant along a row and ``B`` along a column, which the renderer exploits.
    """
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    b0 = 0.0
    b1 = 0.0
    b2 = 0.0
    for k in range(F.shape[0]):
        sa, ca = sincos(p0 * F[k, 0] + p1 * F[k, 1])
        sb, cb = sincos(p2 * F[k, 2] + (F[k, 7] * t + F[k, 8]))
        s0, c0 = sincos(p2 * F[k, 2] + F[k, 8])
        wt = (sa * cb + ca * sb) * F[k, 6]
        w0 = (sa * c0 + ca * s0) * F[k, 6]
        a0 += wt * F[k, 3]
        a1 += wt * F[k, 4]
        a2 += wt * F[k, 5]
        b0 += w0 * F[k, 3]
        b1 += w0 * F[k, 4]
        b2 += w0 * F[k, 5]
    return a0 - b0, a1 - b1, a2 - b2


@numba.njit(inline="always", cache=True, error_model="numpy")
def _lab_to_material1(F: np.ndarray, x0: float, x1: float, x2: float, t: float) -> tuple[float, float, float]:
    if t == 0.0:
        return x0, x1, x2
    d0, d1, d2 = _flow_shift(F, x0, x1, x2, t)
    return x0 - d0, x1 - d1, x2 - d2


@numba.njit(inline="always", cache=True, error_model="numpy")
def _material_to_cell1(W: np.ndarray, X0: float, X1: float, X2: float) -> tuple[float, float, float]:
    u0, u1, u2 = _field(W, X0, X1, X2, 0.0)
    return X0 + u0, X1 + u1, X2 + u2


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _field_many(W: np.ndarray, p: np.ndarray, t: float, out: np.ndarray) -> None:
    for i in range(p.shape[0]):
        out[i, 0], out[i, 1], out[i, 2] = _field(W, p[i, 0], p[i, 1], p[i, 2], t)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _lab_to_material_many(F: np.ndarray, x: np.ndarray, t: float, out: np.ndarray) -> None:
    for i in range(x.shape[0]):
        out[i, 0], out[i, 1], out[i, 2] = _lab_to_material1(F, x[i, 0], x[i, 1], x[i, 2], t)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _material_to_cell_many(W: np.ndarray, X: np.ndarray, out: np.ndarray) -> None:
    for i in range(X.shape[0]):
        out[i, 0], out[i, 1], out[i, 2] = _material_to_cell1(W, X[i, 0], X[i, 1], X[i, 2])


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _material_to_lab_many(F: np.ndarray, X: np.ndarray, t: float, out: np.ndarray) -> None:
    # Fixed point x ← X + D(x, t) − D(x, 0) (a contraction), stopped per point once it has converged.
    for i in range(X.shape[0]):
        X0, X1, X2 = X[i, 0], X[i, 1], X[i, 2]
        tol = _TOL_ABS + _TOL_REL * max(abs(X0), abs(X1), abs(X2))
        x0, x1, x2 = X0, X1, X2
        for _ in range(_MAX_ITERATIONS):
            d0, d1, d2 = _flow_shift(F, x0, x1, x2, t)
            n0, n1, n2 = X0 + d0, X1 + d1, X2 + d2
            done = max(abs(n0 - x0), abs(n1 - x1), abs(n2 - x2)) <= tol
            x0, x1, x2 = n0, n1, n2
            if done:
                break
        out[i, 0], out[i, 1], out[i, 2] = x0, x1, x2


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _cell_to_material_many(W: np.ndarray, Y: np.ndarray, out: np.ndarray) -> None:
    # Fixed point X ← Y − u(X), stopped per point once it has converged.
    for i in range(Y.shape[0]):
        Y0, Y1, Y2 = Y[i, 0], Y[i, 1], Y[i, 2]
        tol = _TOL_ABS + _TOL_REL * max(abs(Y0), abs(Y1), abs(Y2))
        X0, X1, X2 = Y0, Y1, Y2
        for _ in range(_MAX_ITERATIONS):
            u0, u1, u2 = _field(W, X0, X1, X2, 0.0)
            n0, n1, n2 = Y0 - u0, Y1 - u1, Y2 - u2
            done = max(abs(n0 - X0), abs(n1 - X1), abs(n2 - X2)) <= tol
            X0, X1, X2 = n0, n1, n2
            if done:
                break
        out[i, 0], out[i, 1], out[i, 2] = X0, X1, X2


@numba.njit(inline="always", cache=True, error_model="numpy")
def _tissue1(Tp: np.ndarray, P: np.ndarray, X0: float, X1: float, X2: float) -> tuple[float, float]:
    """Implicit function ``g`` and approximate signed distance ``f`` (µm) at one material point."""
    n = Tp[6]
    rmin = Tp[7]
    u0 = (X0 - Tp[0]) / Tp[3]
    u1 = (X1 - Tp[1]) / Tp[4]
    u2 = (X2 - Tp[2]) / Tp[5]
    a0 = abs(u0)
    a1 = abs(u1)
    a2 = abs(u2)
    p0 = a0**n
    p1 = a1**n
    p2 = a2**n
    rho = ((p0 + p1) + p2) ** (1.0 / n)
    s = 0.0
    c0 = 0.0
    c1 = 0.0
    c2 = 0.0
    for k in range(P.shape[0]):
        sn, cs = sincos((X0 * P[k, 0] + X1 * P[k, 1]) + (X2 * P[k, 2] + P[k, 8]))
        s += sn * P[k, 6]
        w = cs * P[k, 6]
        c0 += w * P[k, 0]
        c1 += w * P[k, 1]
        c2 += w * P[k, 2]
    g = (rho - 1.0) + s / rmin
    q = max(rho, 1e-12) ** (1.0 - n)
    # a**(n-1) as a**n / a (a > 0; n > 1 so it is 0 at a = 0).
    g0 = ((p0 / a0 if a0 > 0.0 else 0.0) * np.sign(u0)) / Tp[3] * q + c0 / rmin
    g1 = ((p1 / a1 if a1 > 0.0 else 0.0) * np.sign(u1)) / Tp[4] * q + c1 / rmin
    g2 = ((p2 / a2 if a2 > 0.0 else 0.0) * np.sign(u2)) / Tp[5] * q + c2 / rmin
    gnorm = max(math.sqrt((g0 * g0 + g1 * g1) + g2 * g2), Tp[8])
    return g, g / gnorm


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _tissue_many(Tp: np.ndarray, P: np.ndarray, X: np.ndarray, out: np.ndarray) -> None:
    for i in range(X.shape[0]):
        _, out[i] = _tissue1(Tp, P, X[i, 0], X[i, 1], X[i, 2])


# --- renderer (see render.py) ------------------------------------------------------------------

_SQRTH = 0.70710678118654752440


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
    :func:`_flow_shift`, which gives the same bits), and the sites
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
