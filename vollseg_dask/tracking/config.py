"""Settings of the LAP tracker (TrackMate's keys, plus the out-of-core and filter options).

Every TrackMate setting is a field with a snake_case name and TrackMate's own key as an alias,
so that ``TrackerConfig(LINKING_MAX_DISTANCE=10)`` and ``TrackerConfig(linking_max_distance=10)``
are the same thing, and a dictionary read from a TrackMate XML ``<TrackerSettings>`` element can be
passed as it is (:meth:`TrackerConfig.from_trackmate`). Defaults are TrackMate's own defaults.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from vollseg_dask.config import StrictModel

__all__ = ["TrackerConfig", "TRACKMATE_KEYS"]

_PenaltyMap = dict[str, float]


def _penalty_field(alias: str, what: str) -> Any:
    return Field(
        default_factory=dict,
        alias=alias,
        description=(
            f"Feature penalties for {what}: spot column name -> weight w >= 0. Each feature adds "
            "3*w*|a-b|/(a+b) to the penalty factor P (P starts at 1); the cost is multiplied by P^2. "
            "Features must be positive (a spot pair with a + b <= 0 and a != b cannot link)."
        ),
    )


class TrackerConfig(StrictModel):
    """Parameters of TrackMate's LAP tracker (Jaqaman et al. 2008) and of its out-of-core driver.

    Distances are in the spot coordinates' unit (micrometres for vollseg-dask tables), frame gaps
    in frames. Costs are squared distances times the squared feature-penalty factor.
    """

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        populate_by_name=True,
        ser_json_inf_nan="strings",
    )

    # --- frame-to-frame linking -------------------------------------------------------------------
    linking_max_distance: float = Field(
        15.0,
        gt=0,
        alias="LINKING_MAX_DISTANCE",
        description="Largest distance of a frame-to-frame link; a candidate needs cost < this squared (strict).",
    )
    linking_feature_penalties: _PenaltyMap = _penalty_field(
        "LINKING_FEATURE_PENALTIES", "frame-to-frame links"
    )

    # --- gap closing ------------------------------------------------------------------------------
    allow_gap_closing: bool = Field(
        True, alias="ALLOW_GAP_CLOSING", description="Link a segment end to a later segment start."
    )
    gap_closing_max_distance: float = Field(
        15.0,
        gt=0,
        alias="GAP_CLOSING_MAX_DISTANCE",
        description="Largest distance bridged by gap closing; a candidate needs cost <= this squared.",
    )
    max_frame_gap: int = Field(
        2,
        ge=1,
        alias="MAX_FRAME_GAP",
        description="Largest frame difference (target frame - source frame) of a gap-closing link.",
    )
    gap_closing_feature_penalties: _PenaltyMap = _penalty_field(
        "GAP_CLOSING_FEATURE_PENALTIES", "gap closing"
    )

    # --- splitting (divisions) --------------------------------------------------------------------
    allow_track_splitting: bool = Field(
        False,
        alias="ALLOW_TRACK_SPLITTING",
        description="Link a segment start to a middle spot of another segment one frame earlier (division).",
    )
    splitting_max_distance: float = Field(
        15.0,
        gt=0,
        alias="SPLITTING_MAX_DISTANCE",
        description="Largest mother-daughter distance; a candidate needs cost <= this squared.",
    )
    splitting_feature_penalties: _PenaltyMap = _penalty_field("SPLITTING_FEATURE_PENALTIES", "splitting")

    # --- merging ----------------------------------------------------------------------------------
    allow_track_merging: bool = Field(
        False,
        alias="ALLOW_TRACK_MERGING",
        description="Link a segment end to a middle spot of another segment one frame later.",
    )
    merging_max_distance: float = Field(
        15.0,
        gt=0,
        alias="MERGING_MAX_DISTANCE",
        description="Largest merging distance; a candidate needs cost <= this squared.",
    )
    merging_feature_penalties: _PenaltyMap = _penalty_field("MERGING_FEATURE_PENALTIES", "merging")

    # --- alternative costs ------------------------------------------------------------------------
    alternative_linking_cost_factor: float = Field(
        1.05,
        gt=0,
        alias="ALTERNATIVE_LINKING_COST_FACTOR",
        description=(
            "No-link cost factor: frame pairs use factor * the largest candidate cost of the pair, "
            "segment linking uses factor * the CUTOFF_PERCENTILE percentile of all candidate costs."
        ),
    )
    cutoff_percentile: float = Field(
        0.9,
        gt=0,
        le=1,
        alias="CUTOFF_PERCENTILE",
        description="Percentile (as a fraction in (0, 1]) of the segment candidate costs used for the no-link cost.",
    )
    blocking_value: float = Field(
        math.inf,
        gt=0,
        alias="BLOCKING_VALUE",
        description=(
            "TrackMate's cost of a forbidden assignment. The sparse solver never stores forbidden "
            "entries, so only infinity (the default) is exact; a finite value is accepted for "
            "compatibility and has no effect."
        ),
    )

    # --- vollseg-dask additions -------------------------------------------------------------------
    min_tracklet_length: int = Field(
        0,
        ge=0,
        description=(
            "Remove every branch that starts at a division and ends at a track end without dividing "
            "again when it spans <= this many frames (last frame - mother frame). 0 disables."
        ),
    )
    min_volume: float | None = Field(None, ge=0, description="Drop spots whose volume column is below this.")
    max_volume: float | None = Field(None, ge=0, description="Drop spots whose volume column is above this.")
    volume_column: str = Field("volume_um3", min_length=1, description="Spot column holding the volume.")
    min_intensity: float | None = Field(None, description="Drop spots whose intensity column is below this.")
    max_intensity: float | None = Field(None, description="Drop spots whose intensity column is above this.")
    intensity_column: str = Field(
        "mean_intensity", min_length=1, description="Spot column holding the intensity used by the filters."
    )
    inside_tissue_only: bool = Field(False, description="Keep only spots whose tissue column is true.")
    tissue_column: str = Field(
        "inside_tissue", min_length=1, description="Boolean spot column: inside the tissue."
    )
    frame_interval: float | None = Field(
        None,
        gt=0,
        description="Time between frames, in time_units (speeds and durations in tracks.parquet). None: the "
        "frame interval of the image the spots were measured on (cell table, TrackMate ImageData, GEFF axes), "
        "else 1.",
    )
    spatial_units: str | None = Field(
        None, min_length=1, description="Unit of x, y, z (written into the track store). None: the image's, else µm."
    )
    time_units: str | None = Field(
        None, min_length=1, description="Unit of frame_interval (written into the track store). None: the "
        "time unit of the image the spots were measured on, else 'frame'.",
    )
    window_frames: int = Field(
        16,
        ge=1,
        description="Frames held in memory at once by the streaming driver (frame-pair tasks per batch).",
    )
    max_component_size: int = Field(
        200_000,
        ge=2,
        description=(
            "Largest connected component of the segment-candidate graph (rows + columns of its LAP) "
            "solved exactly; larger ones use the time-windowed fallback with anchored boundaries."
        ),
    )
    scheduler: str = Field(
        "threads",
        description="Dask scheduler for the frame-pair tasks: 'threads', 'sync', 'processes' or 'distributed'.",
    )

    @field_validator(
        "linking_feature_penalties",
        "gap_closing_feature_penalties",
        "splitting_feature_penalties",
        "merging_feature_penalties",
    )
    @classmethod
    def _check_penalties(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
                raise ValueError(
                    f"penalty weight of feature {name!r} must be a finite number >= 0, got {weight!r}"
                )
        return value

    @field_validator("scheduler")
    @classmethod
    def _check_scheduler(cls, value: str) -> str:
        allowed = {"threads", "sync", "processes", "distributed"}
        if value not in allowed:
            raise ValueError(f"scheduler must be one of {sorted(allowed)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_ranges(self) -> TrackerConfig:
        if self.min_volume is not None and self.max_volume is not None and self.min_volume > self.max_volume:
            raise ValueError(f"min_volume {self.min_volume} is above max_volume {self.max_volume}")
        if (
            self.min_intensity is not None
            and self.max_intensity is not None
            and self.min_intensity > self.max_intensity
        ):
            raise ValueError(
                f"min_intensity {self.min_intensity} is above max_intensity {self.max_intensity}"
            )
        return self

    @property
    def segment_linking_enabled(self) -> bool:
        """Whether the second (segment) LAP runs at all."""
        return self.allow_gap_closing or self.allow_track_splitting or self.allow_track_merging

    @classmethod
    def from_trackmate(cls, settings: dict[str, Any], **overrides: Any) -> TrackerConfig:
        """Build a config from TrackMate's flat tracker-settings keys (unknown TrackMate keys ignored).

        ``settings`` may hold strings as read from XML attributes (``"true"``, ``"15.0"``,
        ``"Infinity"``); ``TRACKER_NAME`` and other keys TrackMate stores beside the LAP settings are
        dropped. ``overrides`` are our own fields.
        """
        field_of = {f.alias: name for name, f in cls.model_fields.items() if f.alias}
        data: dict[str, Any] = {}
        for key, value in settings.items():
            if key in field_of:
                data[field_of[key]] = _coerce_trackmate_value(value)
        data.update(overrides)
        return cls.model_validate(data)

    def to_trackmate(self) -> dict[str, Any]:
        """TrackMate's flat key -> value mapping of the LAP settings (for writing TrackMate XML)."""
        dumped = self.model_dump(by_alias=True)
        return {key: dumped[key] for key in TRACKMATE_KEYS}


def _coerce_trackmate_value(value: Any) -> Any:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in {"true", "false"}:
            return low == "true"
        if low in {"infinity", "inf", "+infinity"}:
            return math.inf
    return value


#: TrackMate's own keys of the LAP tracker settings.
TRACKMATE_KEYS: tuple[str, ...] = tuple(
    f.alias for f in TrackerConfig.model_fields.values() if f.alias is not None
)
