"""One checkpoint file per model: weights, full config, preprocessing and calibration, versioned.

Loading uses `torch.load(weights_only=True)`: only tensors and plain containers are read, so a
checkpoint from an untrusted source cannot run code. Writes are atomic (temporary file + rename),
so an interrupted save never leaves a half-written model behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from anomaly import __version__
from anomaly.calibration import Calibration
from anomaly.config import DetectorConfig
from anomaly.detector import Detector
from anomaly.model import AutoencoderGAN

# 2: per-cell quantile spreads and PCA latent distance; 3: blurred heat map;
# 4: memory of normal frames, discriminator patch statistics, camera profiles (format 3 still loads)
FORMAT_VERSION = 4
READABLE_VERSIONS = (3, 4)
KIND_MODEL = "anomaly-detector"
KIND_TRAINING_STATE = "anomaly-training-state"


class CheckpointError(Exception):
    """A model file that is missing, unreadable or from an incompatible version."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path, kind: str) -> dict[str, Any]:
    """Safely read a checkpoint dict and check its kind and format version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for garbage or unsafe pickles
        raise CheckpointError(f"{path} is not a readable anomaly checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise CheckpointError(f"{path} is not an {kind} file")
    version = state.get("format_version")
    readable = READABLE_VERSIONS if kind == KIND_MODEL else (FORMAT_VERSION,)
    if version not in readable:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, but this build of anomaly ({__version__}) "
            f"reads version{'s' if len(readable) > 1 else ''} {', '.join(map(str, readable))}; "
            "retrain the model with this version"
        )
    return state


def save_detector(detector: Detector, path: Path) -> None:
    atomic_torch_save(
        {
            "kind": KIND_MODEL,
            "format_version": FORMAT_VERSION,
            "anomaly_version": __version__,
            "config": detector.config.model_dump(mode="json"),
            "state_dict": {k: v.detach().cpu() for k, v in detector.model.state_dict().items()},
            "calibration": detector.for_camera(None).calibrated.to_state(),
            "cameras": {name: cal.to_state() for name, cal in detector.profiles.items()},
        },
        path,
    )


def parse_config(state: dict[str, Any], path: Path) -> DetectorConfig:
    if "config" not in state:
        raise CheckpointError(f"{path} holds no config; it was not written by `anomaly train`")
    try:
        return DetectorConfig.model_validate(state["config"])
    except ValidationError as exc:
        raise CheckpointError(f"{path} holds a config this version cannot read: {exc}") from exc


def load_detector(path: Path, device: torch.device) -> Detector:
    path = Path(path)
    state = read_checkpoint(path, KIND_MODEL)
    config = parse_config(state, path)
    model = AutoencoderGAN(config.model)
    try:
        model.load_state_dict(state["state_dict"])
        calibration = Calibration.from_state(state["calibration"])
        profiles = {str(name): Calibration.from_state(cal) for name, cal in state.get("cameras", {}).items()}
    except (KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: weights or calibration do not match its config ({exc})") from exc
    return Detector(config=config, model=model, calibration=calibration, device=device, profiles=profiles)
