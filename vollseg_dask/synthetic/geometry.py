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
because every map is the identity plus a contraction.

All functions are pure NumPy kernels on ``(..., 3)`` float64 arrays ordered ``(z, y, x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
]

_INVERSE_ITERATIONS = 60


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


def _phases(k: np.ndarray, points: np.ndarray, const: np.ndarray) -> np.ndarray:
    """``points @ k.T + const`` written out: NumPy's matmul is very slow for an inner size of 3."""
    return (points[..., 0:1] * k[:, 0] + points[..., 1:2] * k[:, 1]) + (points[..., 2:3] * k[:, 2] + const)


def _combine(weights: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``weights @ vectors`` for (..., K) weights and (K, 3) vectors, written out (see :func:`_phases`)."""
    out = weights[..., 0:1] * vectors[0]
    for i in range(1, vectors.shape[0]):
        out = out + weights[..., i : i + 1] * vectors[i]
    return out


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
    arg = _phases(waves.k, points, waves.omega * t + waves.phase)  # (..., K)
    return _combine(np.sin(arg) * waves.amplitude, waves.e)


def wave_jacobian_bound(waves: Waves) -> float:
    """Upper bound of the spectral norm of the field's Jacobian (``Σ |a_k|·|k_k|``)."""
    return float(np.sum(np.abs(waves.amplitude) * np.linalg.norm(waves.k, axis=1)))


def lab_to_material(x: np.ndarray, t: float, flow: Waves) -> np.ndarray:
    """``X = Ψ_t(x) = x − (D(x, t) − D(x, 0))`` (material coordinates of lab points at frame ``t``)."""
    if t == 0:
        return np.array(x, dtype=np.float64, copy=True)
    return x - (wave_field(flow, x, t) - wave_field(flow, x, 0.0))


def material_to_lab(X: np.ndarray, t: float, flow: Waves) -> np.ndarray:
    """Inverse of :func:`lab_to_material` by fixed-point iteration ``x ← X + D(x, t) − D(x, 0)``."""
    X = np.asarray(X, dtype=np.float64)
    if t == 0:
        return X.copy()
    x = X.copy()
    for _ in range(_INVERSE_ITERATIONS):
        x = X + (wave_field(flow, x, t) - wave_field(flow, x, 0.0))
    return x


def material_to_cell(X: np.ndarray, warp: Waves) -> np.ndarray:
    """``Y = W(X) = X + u(X)`` (cell-space coordinates)."""
    return X + wave_field(warp, X)


def cell_to_material(Y: np.ndarray, warp: Waves) -> np.ndarray:
    """Inverse of :func:`material_to_cell` by fixed-point iteration ``X ← Y − u(X)``."""
    Y = np.asarray(Y, dtype=np.float64)
    X = Y.copy()
    for _ in range(_INVERSE_ITERATIONS):
        X = Y - wave_field(warp, X)
    return X


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
    n = tissue.exponent
    u = (X - tissue.centre) / tissue.radii
    au = np.abs(u)
    powed = au**n
    rho = np.sum(powed, axis=-1) ** (1.0 / n)
    rmin = float(np.min(tissue.radii))
    p = tissue.perturbation
    arg = _phases(p.k, X, p.phase)
    g = rho - 1.0 + np.sum(np.sin(arg) * p.amplitude, axis=-1) / rmin
    safe = np.maximum(rho, 1e-12)[..., None]
    grad = (au ** (n - 1.0)) * np.sign(u) / tissue.radii * safe ** (1.0 - n)
    grad = grad + _combine(np.cos(arg) * p.amplitude, p.k) / rmin
    gnorm = np.maximum(np.linalg.norm(grad, axis=-1), 0.05 / float(np.max(tissue.radii)))
    return g / gnorm
