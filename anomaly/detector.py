"""A trained detector: networks, the settings they were trained with, and their calibration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from anomaly.calibration import Calibration, NormalStats
from anomaly.config import DetectorConfig
from anomaly.model import AutoencoderGAN
from anomaly.preprocess import Preprocessor


@dataclass
class Detector:
    config: DetectorConfig
    model: AutoencoderGAN
    calibration: Calibration | None
    device: torch.device
    preprocessor: Preprocessor = field(init=False)

    def __post_init__(self) -> None:
        self.preprocessor = Preprocessor(self.config.preprocess)
        # channels-last matches how prepared NHWC frames arrive and is faster for these convolutions
        self.model.to(self.device, memory_format=torch.channels_last).eval()
        self._normal_stats: NormalStats | None = None

    @property
    def normal_stats(self) -> NormalStats:
        """Calibration statistics on the model's device (moved once, on first use)."""
        if self._normal_stats is None:
            self._normal_stats = self.calibrated.stats.to(self.device)
        return self._normal_stats

    @classmethod
    def new(cls, config: DetectorConfig, device: torch.device) -> Detector:
        return cls(config=config, model=AutoencoderGAN(config.model), calibration=None, device=device)

    @property
    def calibrated(self) -> Calibration:
        if self.calibration is None:
            raise ValueError("this model has not been calibrated yet (training did not finish); retrain it")
        return self.calibration

    @property
    def threshold(self) -> float:
        return self.calibrated.threshold

    def with_calibration(self, calibration: Calibration) -> Detector:
        return Detector(config=self.config, model=self.model, calibration=calibration, device=self.device)

    def with_threshold(self, threshold: float) -> Detector:
        """A copy that flags frames above `threshold` instead of the calibrated one."""
        return self.with_calibration(dataclasses.replace(self.calibrated, threshold=float(threshold)))
