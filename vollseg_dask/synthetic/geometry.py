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
loop over the point kernels of :mod:`~vollseg_dask.synthetic._kernels` (``_field``, ``_flow_shift``,
``_tissue1`` ...), the very kernels the renderer inlines per voxel, so a voxel's coordinates are the same bits whichever path
computes them (the presence checks of :mod:`~vollseg_dask.synthetic.cells` rely on this).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vollseg_dask.synthetic._kernels import (
    _cell_to_material_many,
    _field_many,
    _lab_to_material_many,
    _material_to_cell_many,
    _material_to_lab_many,
    _tissue_many,
)

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
