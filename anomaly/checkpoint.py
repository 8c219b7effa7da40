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
# 4: memory of normal frames, discriminator patch statistics, camera profiles;
# 5: the defect finder (formats 3 and 4 still load, without one);
# 6: several defect finders, averaged (format 5 loads as one);
# 7: the fleet profile's scene baseline (`anomaly.scene_baseline`; format 6 loads without one, and a release that
# reads only 6 refuses a 7 rather than score without the baseline its threshold was set with)
FORMAT_VERSION = 7
READABLE_VERSIONS = (3, 4, 5, 6, 7)
TRAINING_STATE_VERSIONS = (5, 6, 7)  # a run of format 5 resumes as one finder
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
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not a model file: an exported model (`anomaly export`) is scored by "
            "`anomaly score` and `anomaly serve`; this needs the checkpoint from `anomaly train`"
        )
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for garbage or unsafe pickles
        raise CheckpointError(f"{path} is not a readable anomaly checkpoint: {load_failure_reason(exc)}") from None
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise CheckpointError(f"{path} is not an {kind} file")
    version = state.get("format_version")
    readable = READABLE_VERSIONS if kind == KIND_MODEL else TRAINING_STATE_VERSIONS
    if version not in readable:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, but this build of anomaly ({__version__}) "
            f"reads version{'s' if len(readable) > 1 else ''} {', '.join(map(str, readable))}; "
            "retrain the model with this version"
        )
    return state


def first_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of a (possibly multi-line) library message, cut to `limit` characters."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_failure_reason(exc: BaseException) -> str:
    """One line on why torch refused a file, without torch's advice to retry with `weights_only=False`:
    that option runs whatever code the file carries, which is exactly what the safe load is refusing."""
    text = str(exc)
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        useful = [ln for ln in lines[1:] if "weights_only" not in ln and "documentation" not in ln.lower()]
        why = useful[0] if useful else "content the safe loader does not accept"
        why = why.removeprefix("WeightsUnpickler error:").strip().split(". ")[0].rstrip(".")
        if "global" in why.lower():
            return f"it holds objects that would run code when loaded, refused ({why[:160]})"
        return f"the safe loader cannot read it ({why[:160]})"
    line = first_line(text)
    if not line or "weights_only" in line:
        return f"{type(exc).__name__} while reading it (not a torch checkpoint, or truncated)"
    return f"{type(exc).__name__}: {line.split('. ')[0].rstrip('.')}"


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
    config = state["config"]
    if state.get("format_version", FORMAT_VERSION) < 5 and isinstance(config, dict):
        # written before the defect finder: its config has no finder, and the default would add one
        model = config.get("model")
        config = {**config, "model": {**model, "finder_widths": None} if isinstance(model, dict) else model}
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict) and model.get("finder_widths") is not None and "finder_count" not in model:
        config = {**config, "model": {**model, "finder_count": 1}}  # written when a model had one finder
    calibration = config.get("calibration") if isinstance(config, dict) else None
    if isinstance(calibration, dict) and "combination" not in calibration:
        # calibrated before there was a choice: its profiles, and any camera calibrated later, take the maximum
        calibration = {**calibration, "combination": "max"}
        config = {**config, "calibration": calibration}
    if isinstance(calibration, dict) and "image_shift" not in calibration:
        # calibrated before `image` matched cells beside their own: it scores as it was calibrated
        config = {**config, "calibration": {**calibration, "image_shift": 0}}
    try:
        return DetectorConfig.model_validate(config)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "config"
        raise CheckpointError(f"{path} holds a config this version cannot read ({where}: {err['msg']})") from None


def network_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The networks' state dict of a checkpoint or training state, in this version's names: a format-5
    file's one finder (`finder.*`) is the first of the finders (`finder.members.0.*`)."""
    weights = state["state_dict"]
    if state.get("format_version", FORMAT_VERSION) >= 6:
        return weights
    return {
        (f"finder.members.0.{k.removeprefix('finder.')}" if k.startswith("finder.") else k): v
        for k, v in weights.items()
    }


def load_detector(path: Path, device: torch.device) -> Detector:
    path = Path(path)
    state = read_checkpoint(path, KIND_MODEL)
    config = parse_config(state, path)
    model = AutoencoderGAN(config.model)
    try:
        model.load_state_dict(network_weights(state))
        calibration = Calibration.from_state(state["calibration"])
        profiles = {str(name): Calibration.from_state(cal) for name, cal in state.get("cameras", {}).items()}
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        reason = first_line(str(exc))
        raise CheckpointError(f"{path}: weights or calibration do not match its config ({reason})") from None
    return Detector(config=config, model=model, calibration=calibration, device=device, profiles=profiles).frozen()
