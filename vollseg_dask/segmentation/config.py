"""Configuration of the VollSeg segmentation stages S1-S6."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vollseg_dask.config import StrictModel

__all__ = ["SegmentationConfig", "apply_model_defaults"]


class SegmentationConfig(StrictModel):
    """Parameters of :func:`vollseg_dask.segmentation.segment`, saved beside its result."""

    mode: Literal["vollseg", "stardist", "unet"] = Field(
        "vollseg",
        description="vollseg: StarDist seeds + U-Net seed pooling + watershed in the U-Net mask; "
        "stardist: rendered StarDist polyhedra only; unet: U-Net connected components only.",
    )
    block_shape: tuple[int, int, int] = Field((64, 256, 256), description="Core shape (z, y, x) of a block, voxels.")
    grid_origin: tuple[int, int, int] = Field(
        (0, 0, 0), description="Offset of the block grid (boundaries at origin + k*block_shape); moves the seams."
    )
    channel: int = Field(0, ge=0, description="Image channel fed to the predictor (when the image has a c axis).")
    prob_threshold: float | None = Field(
        None, ge=0, le=1, description="StarDist candidate probability threshold; None = the predictor's default."
    )
    nms_threshold: float | None = Field(
        None, ge=0, le=1, description="StarDist NMS overlap threshold; None = the predictor's default."
    )
    nms_scope: Literal["auto", "global", "block"] = Field(
        "auto",
        description="global: one NMS per time point over all candidates (exact); block: per block with centre "
        "ownership (approximate fallback); auto: global unless the candidates exceed nms_memory_budget_mb.",
    )
    nms_memory_budget_mb: float = Field(1024.0, gt=0, description="Candidate bytes per time point above which "
                                        "auto NMS goes block-wise.")
    nms_halo: int | None = Field(None, ge=0, description="Context of block-wise NMS, voxels; None = twice the "
                                 "largest ray length.")
    unet_threshold: float = Field(0.5, ge=0, le=1, description="U-Net foreground threshold (mask = prob > it).")
    connectivity: Literal[6, 26] = Field(26, description="Voxel adjacency of U-Net connected components.")
    seed_pooling: bool = Field(True, description="Add the centroid of every U-Net component whose bounding box "
                               "holds no StarDist centre to the seeds (VollSeg).")
    refine_mask: bool = Field(False, description="Later VollSeg refinement: StarDist cells whose bounding box "
                              "holds no U-Net centroid are added into the mask.")
    flood: Literal["probability", "distance"] = Field(
        "probability", description="Watershed on the negated StarDist probability or the negated distance map."
    )
    mask_dilation: tuple[int, int, int] = Field(
        (0, 0, 0), description="Per-axis (z, y, x) radii, voxels, of an ellipsoid by which the U-Net mask is "
        "dilated for the watershed (vollseg mode; an int means the same radius on every axis). A U-Net trained "
        "on membranes leaves the walls between touching cells as background; with a dilation the cells grow "
        "into the dilated mask after the watershed, one voxel per round for as many rounds as the ellipsoid's "
        "longest path (6-neighbourhood: sum of its offsets, 26: their maximum), each free voxel taking the "
        "neighbour label with the lowest flood value (ties: smallest ID), so a wall is split between the "
        "cells on its two sides. Bounded reach: tiled output stays identical to untiled. U-Net components "
        "for seed pooling still come from the undilated mask. Per axis because z spacing is usually coarser "
        "(e.g. (1, 2, 2) for 2.0 x 0.5 x 0.5 um voxels). 0 = off (the mask as is).")
    foreground_threshold: float | None = Field(
        None, ge=0, le=1,
        description="vollseg mode: voxels whose StarDist probability exceeds this join the U-Net mask (after "
        "its dilation) as the region the watershed floods. A U-Net trained on cell interiors minus their "
        "walls (membrane data) leaves walls, thin cells and the tissue surface out, so cells flooded inside "
        "its mask alone come out too small; StarDist's probability is positive up to every object's "
        "boundary. Seed pooling still uses the U-Net's own components. None = the U-Net mask alone (the "
        "paper's VollSeg).")
    merge_threshold: float | None = Field(
        None, ge=0, le=1,
        description="vollseg mode: touching objects whose shared face has a mean StarDist probability (the "
        "lower of the two voxels of each face pair) of at least this are merged into one. StarDist seeds a "
        "bent, non-star-convex cell once per lobe; the lobes meet inside the cell, where the probability "
        "stays high, while two cells meet at a wall, where it is near 0. Merging happens before the size "
        "filters; tiled output stays identical to untiled (face sums are exact integers). None = off.")
    marker_radius: int = Field(2, ge=0, description="Seeds are dilated by a ball of this radius (voxels).")
    watershed_connectivity: Literal[6, 26] = Field(6, description="Voxel adjacency of the watershed flood.")
    halo: tuple[int, int, int] = Field(
        (32, 64, 64), description="Largest watershed halo (z, y, x) in voxels. A block reads the box of the U-Net "
        "components that reach its core (exact by construction), each side capped at this; blocks that are not "
        "provably exact and disagree with their neighbours are re-run with the cap doubled.")
    max_escalations: int = Field(2, ge=0, le=6, description="Times an uncertified block's halo may be doubled.")
    min_size: int = Field(0, ge=0, description="Objects with fewer voxels (3-D) are removed.")
    max_size: int | None = Field(None, ge=1, description="Objects with more voxels (3-D) are removed; None = no limit.")
    min_z_extent: int = Field(1, ge=1, description="Objects spanning fewer z slices are removed.")
    pyramid: bool = Field(True, description="Fill the label pyramid levels (nearest) after level 0.")

    @property
    def floods_foreground(self) -> bool:
        """StarDist's foreground joins the watershed's flood region (vollseg + ``foreground_threshold``)."""
        return self.mode == "vollseg" and self.foreground_threshold is not None

    @property
    def merges_objects(self) -> bool:
        """Touching objects may be merged after the watershed (vollseg + ``merge_threshold``)."""
        return self.mode == "vollseg" and self.merge_threshold is not None

    @field_validator("mask_dilation", mode="before")
    @classmethod
    def _per_axis(cls, v):
        if isinstance(v, int) and not isinstance(v, bool):
            return (v, v, v)
        return v

    @model_validator(mode="after")
    def _check(self) -> SegmentationConfig:
        from vollseg_dask.errors import ConfigError

        if any(b < 1 for b in self.block_shape):
            raise ConfigError(f"block_shape {self.block_shape} must be positive")
        if any(h < 0 for h in self.halo):
            raise ConfigError(f"halo {self.halo} must be non-negative")
        if any(d < 0 for d in self.mask_dilation):
            raise ConfigError(f"mask_dilation {self.mask_dilation} must be non-negative")
        if self.max_size is not None and self.max_size < self.min_size:
            raise ConfigError(f"max_size {self.max_size} is below min_size {self.min_size}")
        return self


def apply_model_defaults(config: SegmentationConfig, defaults: dict, given: set[str] | None = None
                         ) -> tuple[SegmentationConfig, dict]:
    """Fill the settings a user did not give from a model folder's recommended ones.

    Parameters
    ----------
    config : SegmentationConfig
    defaults : dict
        The model's ``segmentation_defaults.json`` settings (see
        :func:`vollseg_dask.networks.folders.read_segmentation_defaults`).
    given : set of str, optional
        Settings the user gave (config file keys and command-line options); default
        ``config.model_fields_set``.

    Returns
    -------
    config : SegmentationConfig
        With every default whose key is not in ``given``.
    applied : dict
        The settings taken from the model (to be printed / logged).
    """
    from vollseg_dask.config import parse_config

    given = set(config.model_fields_set) if given is None else set(given)
    applied = {k: v for k, v in defaults.items() if k not in given}
    if not applied:
        return config, {}
    merged = parse_config(SegmentationConfig, {**config.model_dump(), **applied},
                          source="the model folder's segmentation_defaults.json")
    return merged, applied
