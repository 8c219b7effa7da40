"""Model files as users give them: a checkpoint from `anomaly train` (torch) or a folder from `anomaly export`.

One loader for every command and the service, so that each takes either kind, and one identity (a
SHA-256) that run records and the service report. Torch is imported only for a checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from anomaly.frame_scores import FrameScorer


def default_threads(leave_for_decoding: int = 1) -> int:
    """CPU threads for the model, torch's or ONNX Runtime's: every core but one, which decodes video
    (measured on 2 cores: 269 vs 223 frames/s with torch, against letting both fight over both cores)."""
    return max(1, (os.cpu_count() or 1) - leave_for_decoding)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_sha256(path: Path) -> str:
    """What identifies a model: its checkpoint's SHA-256, or that of an exported folder's manifest
    (which holds the SHA-256 of every other file of the folder)."""
    from anomaly.exported import is_exported_model

    path = Path(path)
    return file_sha256(path / "detector.json" if is_exported_model(path) else path)


def load_model(path: Path, device: str = "auto", threads: int | None = None) -> FrameScorer:
    """A model ready to score: an exported folder runs in ONNX Runtime on the CPU with `threads`
    threads; a checkpoint in torch on `device` (auto: CUDA when present), torch using `threads`."""
    from anomaly.exported import is_exported_model

    path = Path(path)
    if is_exported_model(path):
        from anomaly.exported import load_exported

        if device == "cuda":
            raise ValueError("an exported model runs on the CPU (ONNX Runtime); use --device auto or cpu")
        return load_exported(path, threads)
    from anomaly.checkpoint import load_detector
    from anomaly.device import resolve_device, set_torch_threads

    set_torch_threads(threads)
    return load_detector(path, resolve_device(device))
