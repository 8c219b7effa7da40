"""Pick the torch device from the user's `--device auto|cpu|cuda`."""

from __future__ import annotations

import torch

from anomaly.model_files import default_threads


def resolve_device(name: str) -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA on a machine without it is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available (use --device auto or cpu)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def set_torch_threads(requested: int | None, leave_for_decoding: int = 1) -> int:
    """Intra-op threads for torch: `requested`, else `anomaly.model_files.default_threads` (a core left to decoding)."""
    threads = requested or default_threads(leave_for_decoding)
    torch.set_num_threads(threads)
    return threads
