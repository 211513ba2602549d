"""Coordinate kernels of the synthetic tissue: flow, wall-curving warp, tissue surface.

Three coordinate frames, all in µm:

* **lab** ``x``: the microscope frame; voxel ``(i, j, k)`` has its centre at ``(i·vz, j·vy, k·vx)``;
* **material** ``X = Ψ_t(x) = x − (D(x, t) − D(x, 0))``: attached to the tissue, which moves with
  the smooth oscillating flow ``D`` (a sum of transverse plane waves); ``Ψ_0`` is the identity;
* **cell space** ``Y = W(X) = X + u(X)``: a static smooth warp ``u`` (transverse plane waves with a
  gradient bounded below 1, so ``W`` is one-to-one) in which cells are unions of plain Voronoi
  regions; walls that are flat in ``Y`` are curved in ``X`` and ``x``.

Forward maps are explicit, so a voxel's frame coordinates never depend on other voxels; inverse
maps (needed only for a few points: sites, anchors) are fixed-point iterations, which converge
because every map is the identity plus a contraction; each point iterates until its own update is
at the rounding level (never a batch-wide criterion, so a point's result does not depend on the
other points of the call).

The public functions take and return ``(..., 3)`` float64 arrays ordered ``(z, y, x)``; each is a
loop over the point kernels (``_field``, ``_flow_shift``, ``_tissue1`` ...) compiled by Numba, the very
kernels the renderer inlines per voxel, so a voxel's coordinates are the same bits whichever path
computes them (the presence checks of :mod:`~vollseg_dask.synthetic.cells` rely on this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from vollseg_dask.synthetic._trig import sincos

__all__ = [
    "Waves",
    "wave_field",
    "wave_jacobian_bound",
    "lab_to_material",
    "material_to_lab",
    "material_to_cell",
    "cell_to_material",
    "lab_to_cell",
    "cell_to_lab",
    "Superellipsoid",
    "tissue_distance",
    "tissue_lipschitz",
]

_MAX_ITERATIONS = 400  # fixed-point iterations at most (contraction factor ≤ 0.8: ~150 reach 1e-13 µm)
_TOL_ABS, _TOL_REL = 1e-13, 4e-16  # convergence: the update is at the rounding level of the coordinates


@dataclass(frozen=True)
class Waves:
    """A vector field made of transverse plane waves ``Σ_k a_k e_k sin(k_k·X + ω_k t + φ_k)``.

    Attributes
    ----------
    k : ndarray, shape (K, 3)
        Wave vectors (rad/µm).
    e : ndarray, shape (K, 3)
        Unit polarisation vectors, ``e_k ⊥ k_k``.
    amplitude : ndarray, shape (K,)
        Amplitudes in µm.
    omega : ndarray, shape (K,)
        Angular frequencies (rad/frame); zeros for a static field.
    phase : ndarray, shape (K,)
        Phases (rad).
    """

    k: np.ndarray
    e: np.ndarray
    amplitude: np.ndarray
    omega: np.ndarray
    phase: np.ndarray

    @property
    def max_displacement(self) -> float:
        """Upper bound of ``|field|`` in µm."""
        return float(np.sum(np.abs(self.amplitude)))


def _packed(waves: Waves) -> np.ndarray:
    """Waves as one C-contiguous (K, 9) float64 array ``k(3), e(3), amplitude, omega, phase`` for the kernels."""
    return np.ascontiguousarray(np.column_stack([waves.k, waves.e, waves.amplitude, waves.omega, waves.phase]),
                                dtype=np.float64)


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


def _points(p: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    arr = np.asarray(p, dtype=np.float64)
    return np.ascontiguousarray(arr.reshape(-1, 3)), arr.shape


def wave_field(waves: Waves, points: np.ndarray, t: float = 0.0) -> np.ndarray:
    """Evaluate the wave field at ``points``.

    Parameters
    ----------
    waves : Waves
    points : ndarray, shape (..., 3)
        Positions in µm.
    t : float
        Time in frames.

    Returns
    -------
    ndarray, shape (..., 3)
        Displacement in µm.
    """
    p, shape = _points(points)
    out = np.empty_like(p)
    _field_many(_packed(waves), p, float(t), out)
    return out.reshape(shape)


def wave_jacobian_bound(waves: Waves) -> float:
    """Upper bound of the spectral norm of the field's Jacobian (``Σ |a_k|·|k_k|``)."""
    return float(np.sum(np.abs(waves.amplitude) * np.linalg.norm(waves.k, axis=1)))


def lab_to_material(x: np.ndarray, t: float, flow: Waves) -> np.ndarray:
    """``X = Ψ_t(x) = x − (D(x, t) − D(x, 0))`` (material coordinates of lab points at frame ``t``)."""
    p, shape = _points(x)
    out = np.empty_like(p)
    _lab_to_material_many(_packed(flow), p, float(t), out)
    return out.reshape(shape)


def material_to_lab(X: np.ndarray, t: float, flow: Waves) -> np.ndarray:
    """Inverse of :func:`lab_to_material` by fixed-point iteration ``x ← X + D(x, t) − D(x, 0)``."""
    p, shape = _points(X)
    if t == 0:
        return p.reshape(shape).copy()
    out = np.empty_like(p)
    _material_to_lab_many(_packed(flow), p, float(t), out)
    return out.reshape(shape)


def material_to_cell(X: np.ndarray, warp: Waves) -> np.ndarray:
    """``Y = W(X) = X + u(X)`` (cell-space coordinates)."""
    p, shape = _points(X)
    out = np.empty_like(p)
    _material_to_cell_many(_packed(warp), p, out)
    return out.reshape(shape)


def cell_to_material(Y: np.ndarray, warp: Waves) -> np.ndarray:
    """Inverse of :func:`material_to_cell` by fixed-point iteration ``X ← Y − u(X)``."""
    p, shape = _points(Y)
    out = np.empty_like(p)
    _cell_to_material_many(_packed(warp), p, out)
    return out.reshape(shape)


def lab_to_cell(x: np.ndarray, t: float, flow: Waves, warp: Waves) -> tuple[np.ndarray, np.ndarray]:
    """Material and cell-space coordinates ``(X, Y)`` of lab points ``x`` at frame ``t``."""
    X = lab_to_material(x, t, flow)
    return X, material_to_cell(X, warp)


def cell_to_lab(Y: np.ndarray, t: float, flow: Waves, warp: Waves) -> np.ndarray:
    """Lab coordinates at frame ``t`` of cell-space points ``Y``."""
    return material_to_lab(cell_to_material(Y, warp), t, flow)


@dataclass(frozen=True)
class Superellipsoid:
    """A perturbed superellipsoid ``(Σ |(X_i − c_i)/r_i|^n)^(1/n) − 1 + P(X)/r_min ≤ 0``.

    Attributes
    ----------
    centre, radii : ndarray, shape (3,)
        µm.
    exponent : float
        ``n ≥ 2``.
    perturbation : Waves
        Scalar perturbation ``P`` stored as waves with ``e = (1, 0, 0)`` (only the first
        component is used), amplitudes in µm.
    """

    centre: np.ndarray
    radii: np.ndarray
    exponent: float
    perturbation: Waves


def _tissue_packed(tissue: Superellipsoid) -> np.ndarray:
    """``centre(3), radii(3), exponent, r_min, gradient floor`` as a float64 array for the kernels."""
    return np.array([*tissue.centre, *tissue.radii, tissue.exponent, float(np.min(tissue.radii)),
                     0.05 / float(np.max(tissue.radii))], dtype=np.float64)


def tissue_lipschitz(tissue: Superellipsoid) -> float:
    """Bound ``G`` (1/µm) of both the gradient norm of the implicit function ``g`` and its Lipschitz constant.

    ``ρ`` is an ℓ_n norm of ``(X − c)/r`` with ``n ≥ 2``, whose gradient has ℓ2 norm ≤ 1/r_min; the
    perturbation adds ``Σ|a_k||k_k|/r_min``; the gradient floor ``0.05/r_max`` is below both. So
    ``|g(X) − g(X')| ≤ G·|X − X'|`` and, since ``f = g/|∇g|`` with ``|∇g| ≤ G``, ``f ≤ g/G`` where
    ``g < 0`` and ``f ≥ g/G`` where ``g > 0``.
    """
    return (1.0 + wave_jacobian_bound(tissue.perturbation)) / float(np.min(tissue.radii))


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


def tissue_distance(X: np.ndarray, tissue: Superellipsoid) -> np.ndarray:
    """Approximate signed distance (µm) to the tissue surface: negative inside.

    The implicit function ``g`` is divided by its gradient norm (first-order distance), which is
    exact on the surface's tangent plane and good to a few percent within a few µm of it; far
    from the surface only the sign matters.

    Parameters
    ----------
    X : ndarray, shape (..., 3)
        Material coordinates in µm.
    tissue : Superellipsoid

    Returns
    -------
    ndarray, shape (...)
    """
    p, shape = _points(X)
    out = np.empty(len(p))
    _tissue_many(_tissue_packed(tissue), _packed(tissue.perturbation), p, out)
    return out.reshape(shape[:-1])
