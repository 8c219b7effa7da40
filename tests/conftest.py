"""Shared fixtures for the unit tests of the `anomaly` core: tiny configs, synthetic frames, a tiny trained model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly.config import CalibrationConfig, DetectorConfig, ModelConfig, PreprocessConfig, TrainConfig
from anomaly.detector import Detector
from anomaly.preprocess import Preprocessor
from anomaly.training.train import TrainingData, train_detector

TINY_PREPROCESS = PreprocessConfig(width=32, height=24)
TINY_MODEL = ModelConfig(widths=(8, 8, 8), latent_channels=4, disc_widths=(8, 8, 8))


def _make_config(steps: int = 3, seed: int = 0, model: ModelConfig = TINY_MODEL, **train: object) -> DetectorConfig:
    """A tiny CPU detector config: 32x24 input, 8-channel networks, small batches."""
    train_kw: dict[str, object] = {"batch_size": 8, "checkpoint_every": 100, "device": "cpu", "shift_pixels": 2}
    train_kw.update(train)
    return DetectorConfig(
        preprocess=TINY_PREPROCESS,
        model=model,
        train=TrainConfig(steps=steps, seed=seed, **train_kw),
        calibration=CalibrationConfig(error_pool=4, error_stride=2),
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
    """40 prepared gradient frames, the last 40% held out for calibration."""
    return TrainingData.split([_prepare_all(_make_config(), _gradient_frames(40, seed=0))], 0.4)


@dataclass(frozen=True)
class Trained:
    detector: Detector
    path: Path
    config: DetectorConfig


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory: pytest.TempPathFactory, training_data: TrainingData) -> Trained:
    """A detector trained for a few steps through `train_detector`, and the checkpoint it wrote.

    Shared by the whole session: tests must not modify the checkpoint file (copy it first).
    """
    config = _make_config(steps=10)
    out = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    detector = train_detector(config, training_data, out, progress=False, log=_quiet)
    assert detector.device == torch.device("cpu")
    return Trained(detector=detector, path=out, config=config)
