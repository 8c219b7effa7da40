"""What one `anomaly score --engine ray` run needs: a frozen config built once by the CLI."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from anomaly.config import Device
from footage.sampling import SamplingConfig


class RayScoreConfig(BaseModel):
    """Everything one `--engine ray` run needs; built once by the CLI."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: tuple[str, ...] = Field(min_length=1)
    out_dir: Path
    model_path: Path
    sampling: SamplingConfig = SamplingConfig()
    threshold: float | None = Field(None, allow_inf_nan=False, description="overrides the calibrated threshold")
    batch_size: int = Field(16, ge=1, description="frames per model pass inside a chunk")
    all_signals: bool = Field(False, description="fill every signal column, not only those the score uses")
    chunk_frames: int = Field(256, ge=0, description="decoded frames per chunk; 0 scores each source as one chunk")
    workers: int | None = Field(None, ge=1, description="scoring actors; None: one per GPU, or half the CPUs")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs of a scoring actor, also its torch threads")
    decode_cpus: float = Field(1.0, gt=0, description="CPUs each decode task reserves")
    device: Device = "auto"  # auto: GPU actors when the cluster has GPUs
    worker_env: dict[str, str] = Field(
        default_factory=dict,
        description="environment variables of the decode and scoring workers (the CLI gives its malloc settings)",
    )
    address: str | None = None  # None starts a local Ray instance
    progress: bool = True
