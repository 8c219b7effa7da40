"""What `anomaly evaluate` was asked to do: one frozen, validated config built by the CLI."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from anomaly.config import Device
from anomaly.events import EventConfig
from footage.sampling import SamplingConfig


class EvaluationConfig(BaseModel):
    """Everything `anomaly evaluate` was asked to do; checked on construction so mistakes fail before any work."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out_dir: Path
    sources: tuple[str, ...] = ()  # clips to score with the model; or
    scores_csv: Path | None = None  # a scores CSV from `anomaly score`
    model_path: Path | None = None
    labels: tuple[Path, ...] = ()  # empty: <clip>.labels.csv beside each clip
    threshold: str | None = None  # a number, best-f1, far:RATE or calibrated (see ThresholdChoice)
    write_model: Path | None = None  # copy of the model with the operating threshold
    report_far: float = Field(0.01, ge=0.0, lt=1.0, description="false-positive rate whose threshold is reported")
    events: EventConfig = EventConfig()
    baseline_train: tuple[str, ...] = ()  # normal clips for the baselines; empty: no baselines
    baseline_steps: int | None = Field(None, ge=1, description="AE-only training steps (default: the model's)")
    top_k: int = Field(12, ge=0)
    sampling: SamplingConfig = SamplingConfig()
    batch_size: int = Field(16, ge=1)
    device: Device = "auto"
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> EvaluationConfig:
        if bool(self.sources) == (self.scores_csv is not None):
            raise ValueError("give either clips to score (with --model) or --scores CSV, not both or neither")
        if self.sources and self.model_path is None:
            raise ValueError("scoring clips needs --model; or evaluate a scores CSV with --scores")
        if self.write_model is not None:
            if self.model_path is None or self.threshold is None:
                raise ValueError("--write-model needs --model and --threshold (the threshold to write)")
            if Path(self.write_model).resolve() == Path(self.model_path).resolve():
                raise ValueError("--write-model must be a new file: the model given with --model is left unchanged")
        if self.threshold is not None:
            from anomaly.thresholds import ThresholdChoice  # here: the CLI imports this module for its defaults

            ThresholdChoice.parse(self.threshold)
        return self
