"""Derived, fully numeric description of a synthetic data set (:class:`Scene`).

:func:`build_scene` turns a :class:`~vollseg_dask.synthetic.config.SyntheticConfig` into the
numbers every kernel needs (lattice, waves, photon scale ...). It is deterministic: the random
parts (wave directions and phases) come from the counter-based hash of ``config.seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vollseg_dask.errors import ConfigError
from vollseg_dask.synthetic import _hash
from vollseg_dask.synthetic.config import SyntheticConfig
from vollseg_dask.synthetic.geometry import Superellipsoid, Waves, tissue_distance, wave_jacobian_bound

__all__ = ["Scene", "build_scene", "FCC_BASIS"]

# Face-centred cubic lattice: 4 sites per cubic cell, in units of the cube side.
FCC_BASIS = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])

# Hash streams (one per purpose) for scene-level randomness.
_S_WARP, _S_FLOW, _S_TISSUE = 101, 102, 103
_N_WARP, _N_FLOW, _N_TISSUE = 3, 3, 3
_FLOW_JACOBIAN_MAX = 0.8  # bound on |∇(Ψ_t − id)|: keeps the flow one-to-one and inverses convergent


@dataclass(frozen=True)
class Scene:
    """Numbers derived from a config; see :func:`build_scene`.

    Attributes (µm unless stated)
    ----------
    config : SyntheticConfig
    shape : (T, Z, Y, X)
    voxel : ndarray (3,)
    spacing : float
        Nearest-neighbour distance of the site lattice.
    cube : float
        FCC cube side (``spacing·√2``).
    origin : ndarray (3,)
        Cell-space position of cube (0, 0, 0).
    n_cubes : ndarray (3,) of int
        Lattice extent in cubes (even: tiles are 2×2×2 cubes).
    n_ids : int
        Number of site ids (``4·prod(n_cubes)``); labels are ``head_id·M + node``.
    M : int
        ``2**(max_generations + 1)``: heap slots per cluster.
    warp, flow : Waves
    tissue : Superellipsoid
    site_jitter, jitter_amp : float
        Static lattice displacement radius; temporal jitter amplitude per axis.
    r_cap, r_query : float
        A voxel farther than ``r_cap`` from every cell site is background; sites farther than
        ``r_query`` never matter to a voxel.
    margin : float
        Minimal depth of a cell site below the tissue surface.
    anchor_offset : float
        Distance of a plane-split daughter's anchor from the mother site.
    reach : float
        Bound of ``|Y − x|`` over the frames of the data set (flow + warp displacement).
    photons : float
        Photons per unit intensity (membrane peak ≈ 1).
    membrane_sigma : float
        Membrane profile standard deviation before the PSF.
    psf_var : ndarray (3,)
        PSF variances (z, y, x).
    peak_norm : float
        Peak of a blurred membrane of mean orientation (divides the profile so that its peak is ≈ 1).
    nucleus_radius : float
    sites_per_cell : float
        Mean sites per cell of the chain process (for the cell count).
    tissue_volume : float
        Volume (µm³) of the tissue inside the field of view at t = 0.
    """

    config: SyntheticConfig
    shape: tuple[int, int, int, int]
    voxel: np.ndarray
    spacing: float
    cube: float
    origin: np.ndarray
    n_cubes: np.ndarray
    n_ids: int
    M: int
    warp: Waves
    flow: Waves
    tissue: Superellipsoid
    site_jitter: float
    jitter_amp: float
    r_cap: float
    r_query: float
    margin: float
    anchor_offset: float
    reach: float
    photons: float
    membrane_sigma: float
    psf_var: np.ndarray
    peak_norm: float
    nucleus_radius: float
    sites_per_cell: float
    tissue_volume: float

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    @property
    def n_frames(self) -> int:
        return int(self.shape[0])

    @property
    def max_jitter(self) -> float:
        """Bound of the temporal displacement of a site (µm)."""
        return math.sqrt(3.0) * self.jitter_amp


def _transverse_waves(seed: int, stream: int, n: int, wavelength: float, amplitude: np.ndarray,
                      omega: np.ndarray) -> Waves:
    idx = np.arange(n)
    kdir = _hash.unit_vectors(seed, stream, idx, 0)
    other = _hash.unit_vectors(seed, stream, idx, 1)
    e = other - np.sum(other * kdir, axis=1, keepdims=True) * kdir
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    phase = 2.0 * np.pi * _hash.uniform(seed, stream, idx, 2)
    return Waves(k=kdir * (2.0 * np.pi / wavelength), e=e, amplitude=np.asarray(amplitude, float),
                 omega=np.asarray(omega, float), phase=phase)


def _tissue_volume(tissue: Superellipsoid, extent: np.ndarray, depth: float, n: int = 40) -> float:
    """Volume (µm³) of ``{distance < −depth}`` inside the field-of-view box, from an n³ grid."""
    axes = [(np.arange(n) + 0.5) / n * e for e in extent]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = tissue_distance(grid, tissue) < -depth
    return float(inside.mean() * np.prod(extent))


def build_scene(config: SyntheticConfig) -> Scene:
    """Derive every number of a data set from ``config``.

    Raises
    ------
    ConfigError
        Cells too small for the voxel size, a flow too strong to stay one-to-one, an empty
        tissue, or more label ids than uint32 holds.
    """
    from vollseg_dask.synthetic.cells import mean_sites_per_cell

    c = config
    seed = int(c.seed)
    T, Z, Y, X = (int(s) for s in c.shape)
    voxel = np.asarray(c.voxel_size, dtype=float)
    extent = np.array([Z, Y, X], float) * voxel

    # Tissue: superellipsoid with a low-frequency perturbation of its surface.
    radii = np.asarray(c.tissue_radii, float) * extent / 2.0
    centre = np.asarray(c.tissue_centre, float) * (np.array([Z, Y, X], float) - 1.0) * voxel
    rmin = float(radii.min())
    pert_amp = np.full(_N_TISSUE, c.tissue_roughness * rmin / _N_TISSUE)
    pert = _transverse_waves(seed, _S_TISSUE, _N_TISSUE, 1.2 * rmin, pert_amp, np.zeros(_N_TISSUE))
    tissue = Superellipsoid(centre=centre, radii=radii, exponent=float(c.tissue_exponent), perturbation=pert)
    vol0 = _tissue_volume(tissue, extent, 0.0)
    if vol0 <= 0:
        raise ConfigError(f"the tissue (radii {c.tissue_radii}, centre {c.tissue_centre}) does not intersect the "
                          f"field of view {tuple(extent.round(2))} µm")

    # Cell size: site spacing from the diameter, or from the cell count and the tissue volume.
    spc = mean_sites_per_cell(seed, c.chain_probability, c.max_chain_length)
    if c.cell_diameter_um is not None:
        site_volume = math.pi * c.cell_diameter_um**3 / 6.0
    else:
        site_volume = vol0 / (c.n_cells * spc)
        for _ in range(4):  # the surface margin removes sites: a few fixed-point steps
            spacing = (4.0 * site_volume) ** (1.0 / 3.0) / math.sqrt(2.0)
            vol = _tissue_volume(tissue, extent, c.boundary_margin * spacing)
            if vol <= 0:
                break
            site_volume = vol / (c.n_cells * spc)
    cube = (4.0 * site_volume) ** (1.0 / 3.0)
    spacing = cube / math.sqrt(2.0)
    vmax = float(voxel.max())
    if spacing < 2.5 * vmax:
        raise ConfigError(
            f"cells are too small: site spacing {spacing:.2f} µm is below 2.5 voxels ({2.5 * vmax:.2f} µm) for voxel "
            f"size {tuple(c.voxel_size)}; lower n_cells (got {c.n_cells}) or raise cell_diameter_um "
            f"(got {c.cell_diameter_um})")

    # Wall-curving warp: gradient bound = wall_curvature.
    wl = c.wall_wavelength * spacing
    kw = 2.0 * math.pi / wl
    warp = _transverse_waves(seed, _S_WARP, _N_WARP, wl, np.full(_N_WARP, c.wall_curvature / (_N_WARP * kw)),
                             np.zeros(_N_WARP))

    # Flow: oscillating transverse waves with the requested RMS speed.
    flow_wl = c.flow_wavelength_um or max(3.0 * float(extent.max()), 150.0)
    omega = 2.0 * math.pi / c.flow_period_frames * np.array([0.8, 1.0, 1.25])
    amp = c.speed_um_per_frame / math.sqrt(float(np.sum(omega**2)) / 2.0)
    flow = _transverse_waves(seed, _S_FLOW, _N_FLOW, flow_wl, np.full(_N_FLOW, amp), omega)
    jac = 2.0 * wave_jacobian_bound(flow)
    if jac > _FLOW_JACOBIAN_MAX:
        raise ConfigError(
            f"the tissue flow is too strong to stay one-to-one: speed_um_per_frame={c.speed_um_per_frame} with "
            f"flow_period_frames={c.flow_period_frames} and wavelength {flow_wl:.0f} µm gives a deformation gradient "
            f"bound {jac:.2f} > {_FLOW_JACOBIAN_MAX}; lower the speed or the period, or raise flow_wavelength_um")

    site_jitter = c.lattice_jitter * spacing
    jitter_amp = float(c.jitter_um)
    if math.sqrt(3.0) * jitter_amp > 0.15 * spacing:
        raise ConfigError(f"jitter_um={c.jitter_um} is too large for site spacing {spacing:.2f} µm "
                          f"(at most {0.15 * spacing / math.sqrt(3.0):.2f})")

    psf_var = np.asarray(c.psf_sigma_um, float) ** 2
    membrane_sigma = c.membrane_thickness_um / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    peak_norm = membrane_sigma / math.sqrt(membrane_sigma**2 + float(psf_var.mean()))
    r_cap = spacing
    r_query = r_cap + 0.5 * spacing + 4.0 * math.sqrt(membrane_sigma**2 + float(psf_var.max()))
    # |D(x, t) − D(x, 0)| ≤ Σ a_k·2|sin(ω_k t / 2)| over the frames that exist.
    tt = np.arange(T, dtype=float)
    flow_reach = float(np.sum(flow.amplitude * np.max(2.0 * np.abs(np.sin(np.outer(flow.omega, tt) / 2.0)), axis=1)))
    reach = flow_reach + warp.max_displacement

    # Lattice box: every site that can come within r_query of the field of view at any frame.
    pad = reach + r_query + site_jitter + math.sqrt(3.0) * jitter_amp + spacing
    lo = -pad * np.ones(3)
    n_cubes = np.ceil((extent + 2 * pad) / cube).astype(np.int64) + 2
    n_cubes += n_cubes % 2
    n_ids = int(4 * np.prod(n_cubes))
    M = 2 ** (c.max_generations + 1)
    if n_ids * M >= 2**32:
        raise ConfigError(f"the volume needs {n_ids * M} label ids, more than uint32 holds; raise the cell size or "
                          f"lower max_generations (got {c.max_generations})")

    # Photon scale from the SNR: N·1 / sqrt(N·(b + c) + σ_r²) = snr at the cytoplasm level.
    base = c.background_level + c.cytoplasm_level
    s2 = c.snr**2
    photons = (s2 * base + math.sqrt(s2 * s2 * base * base + 4.0 * s2 * c.read_noise**2)) / 2.0
    if c.offset + photons * (base + 3.0) > 65535:
        raise ConfigError(f"snr={c.snr} needs {photons:.0f} photons per unit intensity: uint16 would saturate")

    return Scene(
        config=c, shape=(T, Z, Y, X), voxel=voxel, spacing=spacing, cube=cube, origin=lo, n_cubes=n_cubes,
        n_ids=n_ids, M=M, warp=warp, flow=flow, tissue=tissue, site_jitter=site_jitter, jitter_amp=jitter_amp,
        r_cap=r_cap, r_query=r_query, margin=c.boundary_margin * spacing, anchor_offset=0.25 * spacing,
        reach=reach, photons=photons, membrane_sigma=membrane_sigma, psf_var=psf_var, peak_norm=peak_norm,
        nucleus_radius=c.nucleus_radius * spacing, sites_per_cell=spc, tissue_volume=vol0,
    )
