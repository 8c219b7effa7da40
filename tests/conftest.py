"""Shared fixtures: variations of the one tiny config, synthetic frames, and the one tiny trained detector.

The detector is trained once per session (`tiny_trained`) and shared by every module that needs a
model; tests must not modify its checkpoint file (copy it first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import TINY, road_frames

from anomaly.config import DetectorConfig, ModelConfig
from anomaly.detector import Detector
from anomaly.preprocess import Preprocessor
from anomaly.training.train import TrainingData, train_detector


def _make_config(steps: int = 3, seed: int = 0, model: ModelConfig = TINY.model, **train: object) -> DetectorConfig:
    """`TINY` with other training settings (few steps, no intermediate training states by default)."""
    train_kw: dict[str, object] = {"checkpoint_every": 100, "shift_pixels": 2, "steps": steps, "seed": seed}
    train_kw.update(train)
    return DetectorConfig.model_validate(
        {**TINY.model_dump(), "model": model.model_dump(), "train": {**TINY.train.model_dump(), **train_kw}}
    )


def _gradient_frames(n: int, seed: int = 0, width: int = 64, height: int = 48) -> np.ndarray:
    """'Normal' BGR uint8 frames: smooth gradients (a sky-to-road ramp) that drift a little, plus light noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    yy /= height - 1
    xx /= width - 1
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(-15, 15, 3)
        base = 70 + 110 * yy + 40 * xx + a + b * xx * yy
        img = np.stack([base + c, 0.9 * base + 15, 0.8 * base + 30], axis=-1)
        img += rng.normal(0, 2, img.shape)
        out[i] = np.clip(img, 0, 255).round().astype(np.uint8)
    return out


def _prepare_all(config: DetectorConfig, frames: np.ndarray) -> np.ndarray:
    pre = Preprocessor(config.preprocess)
    return np.stack([pre.prepare(f) for f in frames])


def _quiet(_: str) -> None:
    pass


@pytest.fixture
def make_config() -> Callable[..., DetectorConfig]:
    return _make_config


@pytest.fixture
def make_frames() -> Callable[..., np.ndarray]:
    return _gradient_frames


@pytest.fixture
def prepare_all() -> Callable[[DetectorConfig, np.ndarray], np.ndarray]:
    return _prepare_all


@pytest.fixture(scope="session")
def training_data() -> TrainingData:
    """80 prepared road-like frames, the last 40% held out for calibration."""
    return TrainingData.split([_prepare_all(TINY, road_frames(80))], 0.4)


@dataclass(frozen=True)
class Trained:
    detector: Detector
    path: Path
    config: DetectorConfig


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory: pytest.TempPathFactory, training_data: TrainingData) -> Trained:
    """The test suite's one trained detector: `TINY` trained on `training_data`, and the checkpoint it wrote.

    Shared by the whole session: tests must not modify the checkpoint file (copy it first).
    """
    config = TINY
    out = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    detector = train_detector(config, training_data, out, progress=False, log=_quiet)
    assert detector.device == torch.device("cpu")
    return Trained(detector=detector, path=out, config=config)
