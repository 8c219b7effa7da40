"""Which frames of each source to keep: one frozen, validated config, light enough for the CLI to import."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SamplingConfig(BaseModel):
    """Which frames of each source to keep. Validated on construction, so bad CLI flags fail early."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stride: int = Field(1, ge=1, description="keep every stride-th frame of the window")
    target_fps: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="or: keep frames at about this rate (any source fps)"
    )
    start_s: float = Field(0.0, ge=0, allow_inf_nan=False, description="seconds to skip at the start of each source")
    end_s: float | None = Field(None, allow_inf_nan=False, description="stop each source at this time (exclusive)")
    folder_fps: float = Field(10.0, gt=0, allow_inf_nan=False, description="frame rate assumed for image folders")
    max_frames: int | None = Field(None, ge=1, description="at most this many frames per source")

    @model_validator(mode="after")
    def _check(self) -> SamplingConfig:
        if self.target_fps is not None and self.stride > 1:
            raise ValueError("use either stride or target_fps, not both")
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s must be greater than start_s ({self.start_s}), got {self.end_s}")
        return self
