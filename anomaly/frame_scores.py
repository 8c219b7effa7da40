"""What scoring returns: the scores of a batch of frames, and one frame's row of them; and the rule
that makes a frame's score of its signals (`combine`, `frame_scores`).

Kept apart from `anomaly.scoring` (which needs torch) so that readers of scores (the CSV writer,
the service's schemas) and the scorer of exported models (`anomaly.exported`, no torch) share one
definition of the fields and of the score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from anomaly.config import SIGNAL_NAMES, DetectorConfig

if TYPE_CHECKING:
    from anomaly.preprocess import Preprocessor

# The per-frame score fields, in the order of the scores CSV and the service's responses.
SCORE_FIELDS = ("score", "recon_error", "disc_score", "spatial_score", "latent_score")
# Signals of the memory of normal frames and of the patches of the discriminator and of the encoder
# (checkpoint format 4; a format-3 model scores them 0, and so does a format-4 model for `patch` when
# it was calibrated before that signal existed); in the CSV after `is_anomaly`, so older readers keep
# working, and empty there only when a scorer gives none (None).
EXTRA_SCORE_FIELDS = ("knn_score", "local_score", "disc_patch_score", "patch_score")
# The field that carries each raw signal.
SIGNAL_FIELDS = dict(
    zip(
        SIGNAL_NAMES,
        (
            "spatial_score",
            "latent_score",
            "recon_error",
            "disc_score",
            "knn_score",
            "local_score",
            "disc_patch_score",
            "patch_score",
        ),
        strict=True,
    )
)


@dataclass(frozen=True)
class FrameScore:
    """One frame's row of `FrameScores`."""

    score: float
    recon_error: float
    disc_score: float
    spatial_score: float
    latent_score: float
    is_anomaly: bool
    threshold: float
    heatmap: np.ndarray  # H x W (model input size), per-pixel error in units of its cell's normal range
    knn_score: float | None = None
    local_score: float | None = None
    disc_patch_score: float | None = None
    patch_score: float | None = None
    profile: str = "fleet"  # the camera profile whose statistics and threshold scored the frame


@dataclass
class FrameScores:
    """Scores of a batch of frames, as numpy arrays (one entry per frame)."""

    score: np.ndarray
    recon_error: np.ndarray
    disc_score: np.ndarray
    spatial_score: np.ndarray
    latent_score: np.ndarray
    is_anomaly: np.ndarray
    heatmap: np.ndarray  # N x H x W (model input size): the worst cell covering each pixel, as in `spatial`
    threshold: float
    knn_score: np.ndarray | None = None
    local_score: np.ndarray | None = None
    disc_patch_score: np.ndarray | None = None
    patch_score: np.ndarray | None = None
    profile: str = "fleet"  # the camera profile whose statistics and threshold scored these frames

    def __len__(self) -> int:
        return len(self.score)

    def rows(self) -> list[FrameScore]:
        """One `FrameScore` per frame, in order."""
        columns = [getattr(self, name) for name in SCORE_FIELDS]
        extras = {name: getattr(self, name) for name in EXTRA_SCORE_FIELDS}
        return [
            FrameScore(
                *(float(c[i]) for c in columns),
                is_anomaly=bool(self.is_anomaly[i]),
                threshold=float(self.threshold),
                heatmap=self.heatmap[i],
                profile=self.profile,
                **{name: None if c is None else float(c[i]) for name, c in extras.items()},
            )
            for i in range(len(self))
        ]


def z_scores(
    signals: Mapping[str, np.ndarray], loc: Mapping[str, float], scale: Mapping[str, float], names: Sequence[str]
) -> np.ndarray:
    """len(names) x N: each chosen signal's calibrated z-score, in the order of `names`."""
    return np.stack([(signals[n] - loc[n]) / scale[n] for n in names])


def combine(
    signals: Mapping[str, np.ndarray], loc: Mapping[str, float], scale: Mapping[str, float], names: Sequence[str]
) -> np.ndarray:
    """The anomaly score: the largest calibrated z-score among the chosen signals."""
    return np.max(z_scores(signals, loc, scale, names), axis=0)


def frame_scores(
    signals: Mapping[str, np.ndarray],
    heatmap: np.ndarray,
    *,
    loc: Mapping[str, float],
    scale: Mapping[str, float],
    names: Sequence[str],
    threshold: float,
    profile: str,
) -> FrameScores:
    """The scores of a batch from its signals (by name, as `anomaly.config.SIGNAL_NAMES`; a costly
    signal that was not computed is absent) and heat map, with the calibration that combines them."""
    score = combine(signals, loc, scale, names)
    fields = {field: signals.get(name) for name, field in SIGNAL_FIELDS.items()}
    return FrameScores(
        **fields,  # type: ignore[arg-type]
        score=score,
        is_anomaly=score > threshold,
        heatmap=heatmap,
        threshold=threshold,
        profile=profile,
    )


class ProfileView(Protocol):
    """What scorers read of a calibration profile (`anomaly.calibration.Calibration` or an exported one)."""

    threshold: float
    target_false_alarm_rate: float
    signals: tuple[str, ...]
    loc: dict[str, float]  # per signal: what its z-score is measured from ...
    scale: dict[str, float]  # ... and in units of

    def summary(self) -> dict[str, Any]: ...


class FrameScorer(Protocol):
    """What the scorers of files and streams use of a model: a torch `anomaly.detector.Detector` or an
    exported one (`anomaly.exported.ExportedDetector`, no torch)."""

    @property
    def config(self) -> DetectorConfig: ...

    @property
    def calibrated(self) -> ProfileView:
        """The profile in use (the fleet's or a camera's)."""
        ...

    @property
    def preprocessor(self) -> Preprocessor: ...

    @property
    def device(self) -> object:
        """Where it runs (a torch device, or a description of the runtime)."""
        ...

    @property
    def threshold(self) -> float: ...

    def score_prepared(self, prepared: Sequence[np.ndarray] | np.ndarray) -> FrameScores:
        """Scores of frames already passed through `preprocessor.prepare`."""
        ...

    def for_camera(self, camera: str | None) -> FrameScorer: ...

    def profile_note(self, camera: str | None) -> str: ...

    def with_threshold(self, threshold: float) -> FrameScorer: ...

    def with_all_signals(self, enabled: bool = True) -> FrameScorer: ...
