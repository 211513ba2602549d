"""Parameters of the synthetic tissue time-lapse (:class:`SyntheticConfig`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from vollseg_dask.config import StrictModel

__all__ = ["SyntheticConfig", "BUNDLED_MODEL_TISSUE"]

PosFloat = Annotated[float, Field(gt=0)]


class SyntheticConfig(StrictModel):
    """Everything that defines a synthetic data set: the output is a pure function of these values.

    Geometry is in micrometres (µm) and frames. The tissue is a smooth blob (a perturbed
    superellipsoid) filled with densely packed cells. A cell is the union of one or more
    neighbouring sites of a jittered face-centred-cubic lattice ("sites"), so that some cells are
    chains of sites (rods and L, Z, U shapes: not star-convex); walls are curved by a smooth
    warp of space. The tissue moves with a smooth oscillating flow plus a small per-site jitter;
    cells divide (see ``division_rate``).

    A cell exists only if it owns a voxel inside the image and the tissue at *every* frame (checked
    exactly, see :mod:`vollseg_dask.synthetic.cells`); so the same config with more frames can
    hold slightly fewer cells, and ``shape[0]`` is part of what defines a data set.
    """

    shape: tuple[int, int, int, int] = Field(
        (4, 32, 128, 128), description="Image shape (T, Z, Y, X) in frames and voxels.")
    voxel_size: tuple[PosFloat, PosFloat, PosFloat] = Field(
        (2.0, 0.5, 0.5), description="Voxel size (z, y, x) in µm.")
    frame_interval: PosFloat = Field(60.0, description="Time between frames in seconds (written on the t axis).")
    seed: int = Field(0, ge=0, description="Random seed: the whole data set is a pure function of (config, seed).")

    # --- cell size ------------------------------------------------------------------------
    n_cells: int | None = Field(
        200, ge=1,
        description="Approximate number of cells at t=0 (cells inside the tissue and the field of view); "
                    "sets the cell size from the tissue volume. Give either n_cells or cell_diameter_um.")
    cell_diameter_um: PosFloat | None = Field(
        None, description="Equivalent-sphere diameter (µm) of a one-site cell; when set (and n_cells is not), "
                          "the number of cells follows from the tissue volume.")

    # --- tissue shape ---------------------------------------------------------------------
    tissue_radii: tuple[PosFloat, PosFloat, PosFloat] = Field(
        (0.8, 0.8, 0.8), description="Tissue semi-axes (z, y, x) as fractions of half the field of view; "
                                     "values > 1 make the tissue fill the field of view on that axis.")
    tissue_centre: tuple[float, float, float] = Field(
        (0.5, 0.5, 0.5), description="Tissue centre (z, y, x) as fractions of the field of view.")
    tissue_exponent: float = Field(
        2.5, ge=2.0, le=8.0, description="Superellipsoid exponent: 2 = ellipsoid, larger = boxier.")
    tissue_roughness: float = Field(
        0.08, ge=0.0, le=0.3,
        description="Amplitude of the low-frequency perturbation of the tissue surface, as a fraction of the "
                    "smallest semi-axis.")
    boundary_margin: float = Field(
        0.25, ge=0.0, le=1.0,
        description="Sites closer than this (fraction of the site spacing) to the tissue surface are not cells, "
                    "so that no cell at the surface is a thin sliver.")

    # --- cell shape -----------------------------------------------------------------------
    lattice_jitter: float = Field(
        0.25, ge=0.0, le=0.3, description="Random displacement of each lattice site, fraction of the site spacing.")
    chain_probability: float = Field(
        0.35, ge=0.0, le=1.0,
        description="Probability that a site starts a multi-site (bent, non-convex) cell.")
    max_chain_length: int = Field(5, ge=2, le=6, description="Largest number of sites in one cell.")
    wall_curvature: float = Field(
        0.7, ge=0.0, le=0.8,
        description="Strength of the smooth warp that curves cell walls: bound on the warp's gradient (< 1 keeps "
                    "the warp one-to-one).")
    wall_wavelength: PosFloat = Field(
        1.5, description="Wavelength of the wall-curving warp, in units of the site spacing.")

    # --- motion ---------------------------------------------------------------------------
    speed_um_per_frame: float = Field(
        1.0, ge=0.0, description="Root-mean-square speed of the tissue flow in µm per frame.")
    flow_period_frames: PosFloat = Field(
        16.0, description="Period of the oscillating tissue flow in frames.")
    flow_wavelength_um: PosFloat | None = Field(
        None, description="Spatial wavelength of the flow in µm; default three times the largest field-of-view "
                          "extent (at least 150 µm).")
    jitter_um: float = Field(0.4, ge=0.0, description="Amplitude (µm, per axis) of each site's own smooth motion.")

    # --- divisions ------------------------------------------------------------------------
    division_rate: float = Field(
        0.05, ge=0.0, lt=1.0,
        description="Probability per cell and frame of dividing (after min_cycle_frames for a newborn cell).")
    max_generations: int = Field(2, ge=0, le=3, description="Divisions along one lineage are capped at this depth.")
    min_cycle_frames: int = Field(3, ge=1, description="A daughter cell lives at least this many frames before dividing.")

    # --- image ----------------------------------------------------------------------------
    snr: PosFloat = Field(
        8.0, description="Signal-to-noise ratio: (membrane peak − cytoplasm) / noise standard deviation at the "
                         "cytoplasm level.")
    membrane_thickness_um: PosFloat = Field(0.8, description="Membrane thickness (FWHM, µm) before the PSF.")
    psf_sigma_um: tuple[PosFloat, PosFloat, PosFloat] = Field(
        (1.0, 0.3, 0.3), description="Gaussian PSF standard deviation (z, y, x) in µm.")
    cytoplasm_level: float = Field(0.15, ge=0.0, le=1.0, description="Cytoplasm intensity relative to the membrane peak.")
    background_level: float = Field(0.03, ge=0.0, le=1.0, description="Background intensity relative to the membrane peak.")
    read_noise: float = Field(2.0, ge=0.0, description="Gaussian camera noise standard deviation in counts.")
    offset: float = Field(100.0, ge=0.0, le=60000.0, description="Camera offset in counts added to every voxel.")
    nucleus_channel: bool = Field(
        False, description="Add a second channel with a blurred ellipsoidal nucleus in each cell (axes tczyx).")
    nucleus_radius: float = Field(
        0.38, gt=0.0, le=0.45, description="Nucleus radius as a fraction of the site spacing.")

    # --- storage --------------------------------------------------------------------------
    chunks: tuple[int, int, int] | None = Field(
        None, description="Spatial chunk shape (z, y, x) of image and labels; default min(shape, (32, 256, 256)).")
    shards: tuple[int, int, int] | None = Field(
        None, description="Optional spatial shard shape (z, y, x), a multiple of chunks; one task writes one shard.")
    n_levels: int = Field(1, ge=1, le=8, description="Pyramid levels (level k halves y and x k times).")

    @model_validator(mode="before")
    @classmethod
    def _diameter_replaces_count(cls, data: object) -> object:
        # Giving a cell diameter without a count means "size, not count" (n_cells has a default).
        if isinstance(data, dict) and data.get("cell_diameter_um") is not None and "n_cells" not in data:
            data = {**data, "n_cells": None}
        return data

    @model_validator(mode="after")
    def _check(self) -> SyntheticConfig:
        if (self.n_cells is None) == (self.cell_diameter_um is None):
            raise ValueError(
                f"give exactly one of n_cells and cell_diameter_um (got n_cells={self.n_cells!r}, "
                f"cell_diameter_um={self.cell_diameter_um!r})")
        if min(self.shape) < 1:
            raise ValueError(f"shape entries must be >= 1, got {self.shape}")
        for name in ("chunks", "shards"):
            v = getattr(self, name)
            if v is not None and min(v) < 1:
                raise ValueError(f"{name} entries must be >= 1, got {v}")
        if self.shards is not None:
            ck = self.spatial_chunks
            if any(s % c for s, c in zip(self.shards, ck, strict=True)):
                raise ValueError(f"shards {self.shards} must be a multiple of chunks {ck}")
        return self

    @property
    def spatial_chunks(self) -> tuple[int, int, int]:
        """Spatial (z, y, x) chunk shape actually used."""
        default = (32, 256, 256)
        ck = self.chunks or default
        return tuple(int(min(c, s)) for c, s in zip(ck, self.shape[1:], strict=True))  # type: ignore[return-value]

    @property
    def axes(self) -> str:
        """Image axes: ``tczyx`` with a nucleus channel, else ``tzyx``."""
        return "tczyx" if self.nucleus_channel else "tzyx"

    @property
    def n_channels(self) -> int:
        """1 (membrane) or 2 (membrane, nucleus)."""
        return 2 if self.nucleus_channel else 1


#: Cell-shape settings of the tissue the bundled networks are trained and tested on
#: (``scripts/train_bundled_models.py``) and that ``vollseg-dask demo`` renders: mostly convex
#: cells, one site in ten starting a two-site cell. The generator's defaults (35 % chains of up to
#: five sites) stay harder on purpose: they stress the engine's seams with non-star-convex cells,
#: which StarDist3D covers with one polyhedron per lobe (see the bundled models' cards).
BUNDLED_MODEL_TISSUE: dict[str, float | int] = {"chain_probability": 0.1, "max_chain_length": 2}
