"""What scoring returns: the scores of a batch of frames, and one frame's row of them.

Kept apart from `anomaly.scoring` (which needs torch) so that readers of scores (the CSV writer,
the service's schemas) and scorers that do not run torch share one definition of the fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anomaly.config import SIGNAL_NAMES

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
