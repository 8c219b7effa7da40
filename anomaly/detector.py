"""A trained detector: networks, the settings they were trained with, and their calibration.

A detector holds one calibration per camera it was calibrated for (`profiles`, written by
`anomaly calibrate`) beside the fleet calibration from training. `for_camera` picks the profile a
frame's camera has, falling back to the fleet profile; `profile` says which one is in use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from anomaly.calibration import Calibration, NormalStats
from anomaly.config import DetectorConfig
from anomaly.frame_scores import FrameScores
from anomaly.model import AutoencoderGAN, fused_for_inference
from anomaly.preprocess import Preprocessor
from anomaly.profiles import FLEET, profile_for, profile_note


@dataclass
class Detector:
    config: DetectorConfig
    model: AutoencoderGAN
    calibration: Calibration | None  # the fleet profile, from training
    device: torch.device
    profiles: dict[str, Calibration] = field(default_factory=dict)  # camera name -> its calibration
    profile: str = FLEET  # the profile `calibrated` (and so scoring) uses
    all_signals: bool = False  # score every signal, not only those the score uses (see anomaly.scoring)
    # the networks scoring runs: `model` with its batch norms folded (`fused_for_inference`), made
    # once the weights are final (`frozen`); None while they may still change (training)
    scoring_model: AutoencoderGAN | None = None
    preprocessor: Preprocessor = field(init=False)

    def __post_init__(self) -> None:
        self.preprocessor = Preprocessor(self.config.preprocess)
        # channels-last matches how prepared NHWC frames arrive and is faster for these convolutions
        self.model.to(self.device, memory_format=torch.channels_last).eval()
        if self.scoring_model is not None:
            self.scoring_model.to(self.device, memory_format=torch.channels_last).eval()
        self._normal_stats: NormalStats | None = None
        if self.profile != FLEET and self.profile not in self.profiles:
            raise ValueError(f"no camera profile {self.profile!r}")

    @property
    def normal_stats(self) -> NormalStats:
        """Calibration statistics on the model's device (moved once, on first use)."""
        if self._normal_stats is None:
            self._normal_stats = self.calibrated.stats.to(self.device)
        return self._normal_stats

    @classmethod
    def new(cls, config: DetectorConfig, device: torch.device) -> Detector:
        return cls(config=config, model=AutoencoderGAN(config.model), calibration=None, device=device)

    def frozen(self) -> Detector:
        """A copy that scores with a fused copy of its networks (`fused_for_inference`): for a model whose
        weights no longer change, as one loaded from a checkpoint."""
        return self._copy(scoring_model=fused_for_inference(self.model))

    @property
    def net(self) -> AutoencoderGAN:
        """The networks scoring and calibration run: the fused copy when there is one."""
        return self.model if self.scoring_model is None else self.scoring_model

    @property
    def calibrated(self) -> Calibration:
        """The calibration in use: the active camera's profile, or the fleet one."""
        if self.profile != FLEET:
            return self.profiles[self.profile]
        if self.calibration is None:
            raise ValueError("this model has not been calibrated yet (training did not finish); retrain it")
        return self.calibration

    @property
    def threshold(self) -> float:
        return self.calibrated.threshold

    def _copy(self, **changes: object) -> Detector:
        fields = {"config": self.config, "model": self.model, "calibration": self.calibration, "device": self.device}
        fields |= {"profiles": dict(self.profiles), "profile": self.profile, "all_signals": self.all_signals}
        fields["scoring_model"] = self.scoring_model
        return Detector(**(fields | changes))  # type: ignore[arg-type]

    def with_calibration(self, calibration: Calibration) -> Detector:
        """A copy with a new fleet calibration (camera profiles kept), using the fleet profile."""
        return self._copy(calibration=calibration, profile=FLEET)

    def with_profile(self, camera: str, calibration: Calibration) -> Detector:
        """A copy that also holds (or replaces) `camera`'s profile; the profile in use does not change."""
        if not camera or camera == FLEET:
            raise ValueError(f"camera name {camera!r} is reserved or empty; choose another")
        return self._copy(profiles={**self.profiles, camera: calibration})

    def for_camera(self, camera: str | None) -> Detector:
        """A copy that scores with `camera`'s profile, or the fleet profile when it has none (see `profile`)."""
        name = profile_for(camera, self.profiles)
        return self if name == self.profile else self._copy(profile=name)

    def profile_note(self, camera: str | None) -> str:
        """One line saying which profile scores `camera`'s frames."""
        return profile_note(camera, {name: cal.threshold for name, cal in self.profiles.items()})

    def score_prepared(self, prepared: Sequence[np.ndarray] | np.ndarray) -> FrameScores:
        """Scores of frames already passed through `preprocessor.prepare`: `anomaly.scoring.score_prepared`."""
        from anomaly.scoring import score_prepared  # the scoring module imports this one

        return score_prepared(self, prepared)

    def with_all_signals(self, enabled: bool = True) -> Detector:
        """A copy that computes every signal for its scores' columns, also those its score does not use."""
        return self if enabled == self.all_signals else self._copy(all_signals=enabled)

    def with_threshold(self, threshold: float) -> Detector:
        """A copy that flags frames above `threshold` instead of the calibrated one (in the profile in use)."""
        changed = dataclasses.replace(self.calibrated, threshold=float(threshold))
        if self.profile == FLEET:
            return self._copy(calibration=changed)
        return self._copy(profiles={**self.profiles, self.profile: changed})
