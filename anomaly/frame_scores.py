"""What scoring returns: the scores of a batch of frames, and one frame's row of them; and the rule
that makes a frame's score of its signals (`combine`, `frame_scores`).

Kept apart from `anomaly.scoring` (which needs torch) so that readers of scores (the CSV writer,
the service's schemas) and the scorer of exported models (`anomaly.exported`, no torch) share one
definition of the fields and of the score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol, get_args

import numpy as np

from anomaly.config import SIGNAL_NAMES, Combination, DetectorConfig
from anomaly.heat import HeatLayout, cells_to_pixels
from anomaly.scene_baseline import SceneBaseline

if TYPE_CHECKING:
    from anomaly.preprocess import Preprocessor

# The per-frame score fields, in the order of the scores CSV and the service's responses.
SCORE_FIELDS = ("score", "recon_error", "disc_score", "spatial_score", "latent_score")
# Of those, the one a scorer leaves out (None, an empty CSV cell) unless the score uses it or every
# signal was asked for: the discriminator's pass is skipped then (`anomaly.config.COSTLY_SIGNALS`).
OPTIONAL_SCORE_FIELDS = ("disc_score",)
# Signals of the memory of normal frames, of the patches of the discriminator and of the encoder
# (checkpoint format 4; a format-3 model scores them 0, and so does a format-4 model for `patch` when
# it was calibrated before that signal existed), and of the defect finder (format 5; 0 without one, and
# `defect_local` 0 for a model calibrated before it), and the thumbnail's PCA residual and the rows'
# discontinuity (`pca`, `tear`: 0 for a model calibrated before them);
# in the CSV after `is_anomaly`, so older readers keep working, and empty there only when a scorer
# gives none (None). Last, `scene_level`: what the score was lowered by, the normal level of the held-out
# frames that look like this one (`anomaly.scene_baseline`); empty for a profile without a scene baseline.
EXTRA_SCORE_FIELDS = (
    "knn_score",
    "local_score",
    "disc_patch_score",
    "patch_score",
    "image_score",
    "defect_score",
    "defect_local_score",
    "pca_score",
    "tear_score",
    "scene_level",
)
# The field that carries each raw signal: its name and "_score", but for the mean error's.
SIGNAL_FIELDS = {name: "recon_error" if name == "recon" else f"{name}_score" for name in SIGNAL_NAMES}


@dataclass(frozen=True)
class FrameScore:
    """One frame's row of `FrameScores`."""

    score: float
    recon_error: float
    disc_score: float | None
    spatial_score: float
    latent_score: float
    is_anomaly: bool
    threshold: float
    heat_cells: np.ndarray = field(repr=False)  # h x w: per-cell error in units of the cell's normal range
    heat_layout: HeatLayout
    knn_score: float | None = None
    local_score: float | None = None
    disc_patch_score: float | None = None
    patch_score: float | None = None
    image_score: float | None = None
    defect_score: float | None = None
    defect_local_score: float | None = None
    pca_score: float | None = None
    tear_score: float | None = None
    scene_level: float | None = None
    profile: str = "fleet"  # the camera profile whose statistics and threshold scored the frame

    @property
    def heatmap(self) -> np.ndarray:
        """H x W (model input size): each pixel's worst covering cell, made on each call (see `anomaly.heat`)."""
        return cells_to_pixels(self.heat_cells[None], self.heat_layout)[0]


@dataclass
class FrameScores:
    """Scores of a batch of frames, as numpy arrays (one entry per frame)."""

    score: np.ndarray
    recon_error: np.ndarray
    disc_score: np.ndarray | None
    spatial_score: np.ndarray
    latent_score: np.ndarray
    is_anomaly: np.ndarray
    heat_cells: np.ndarray = field(repr=False)  # N x h x w: per-cell z-scores, the cells `spatial` reads
    heat_layout: HeatLayout
    threshold: float
    knn_score: np.ndarray | None = None
    local_score: np.ndarray | None = None
    disc_patch_score: np.ndarray | None = None
    patch_score: np.ndarray | None = None
    image_score: np.ndarray | None = None
    defect_score: np.ndarray | None = None
    defect_local_score: np.ndarray | None = None
    pca_score: np.ndarray | None = None
    tear_score: np.ndarray | None = None
    scene_level: np.ndarray | None = None  # taken off the score: the level of similar normal frames
    profile: str = "fleet"  # the camera profile whose statistics and threshold scored these frames

    def __len__(self) -> int:
        return len(self.score)

    @cached_property
    def heatmap(self) -> np.ndarray:
        """N x H x W (model input size): the worst cell covering each pixel, made on first use."""
        return cells_to_pixels(self.heat_cells, self.heat_layout)

    def rows(self) -> list[FrameScore]:
        """One `FrameScore` per frame, in order."""
        fields = {name: getattr(self, name) for name in (*SCORE_FIELDS, *EXTRA_SCORE_FIELDS)}
        return [
            FrameScore(
                **{name: None if c is None else float(c[i]) for name, c in fields.items()},
                is_anomaly=bool(self.is_anomaly[i]),
                threshold=float(self.threshold),
                heat_cells=self.heat_cells[i],
                heat_layout=self.heat_layout,
                profile=self.profile,
            )
            for i in range(len(self))
        ]


def z_scores(
    signals: Mapping[str, np.ndarray], loc: Mapping[str, float], scale: Mapping[str, float], names: Sequence[str]
) -> np.ndarray:
    """len(names) x N: each chosen signal's calibrated z-score, in the order of `names`."""
    return np.stack([(signals[n] - loc[n]) / scale[n] for n in names])


def combine(
    signals: Mapping[str, np.ndarray],
    loc: Mapping[str, float],
    scale: Mapping[str, float],
    names: Sequence[str],
    rule: Combination = "max",
) -> np.ndarray:
    """The anomaly score of the chosen signals' calibrated z-scores: their maximum, or their
    log-mean-exp, log(mean(exp(z))), a smooth maximum.

    The log-mean-exp lies between the mean and the maximum of the z-scores: one signal far above the
    rest counts as its own z-score less log(n) (2.2 for the default's nine signals), and two or three raised
    together count for more than the largest of them alone. A small object on the road, a smear or a
    torn block often raises several signals a little (the patch memory, the frame's own statistics,
    the defect finder) where a normal frame raises one: on the fleet benchmark's three seeds it
    separated the injected kinds better than the maximum on every seed (AUROC over all kinds 0.871,
    0.873, 0.862 -> 0.886, 0.875, 0.879; README, *How the signals are combined*). Never above the maximum, so
    a frame whose every z-score is below a level scores below it (what `anomaly.feedback` relies on).
    """
    z = z_scores(signals, loc, scale, names)
    top = np.max(z, axis=0)
    if rule == "max":
        return top
    return top + np.log(np.mean(np.exp(z - top), axis=0))  # shifted by the maximum: no overflow


def combination_of(stored: Mapping[str, Any]) -> Combination:
    """The rule a stored profile (a checkpoint's calibration, an exported model's profile) combines its
    signals with: "max" when it names none, as every profile calibrated before there was a choice."""
    rule = stored.get("combination", "max")
    if rule not in get_args(Combination):
        raise ValueError(f"unknown score combination {rule!r} (this version has {', '.join(get_args(Combination))})")
    return rule


def lone_signal_level(score: float, rule: Combination, signals: int) -> float:
    """The z-score one signal must reach for a frame's score to reach `score` however low its other
    signals read: `score` itself for the maximum, `score` + log(n) for the log-mean-exp of n signals
    (one signal's share of the mean is exp(z)/n)."""
    return score if rule == "max" else score + float(np.log(signals))


def frame_scores(
    signals: Mapping[str, np.ndarray],
    heat_cells: np.ndarray,
    heat_layout: HeatLayout,
    *,
    loc: Mapping[str, float],
    scale: Mapping[str, float],
    names: Sequence[str],
    threshold: float,
    profile: str,
    rule: Combination = "max",
    scene: SceneBaseline | None = None,
    features: np.ndarray | None = None,
) -> FrameScores:
    """The scores of a batch from its signals (by name, as `anomaly.config.SIGNAL_NAMES`; a costly
    signal that was not computed is absent) and heat-map cells, with the calibration that combines them;
    with a scene baseline, less the level of the frames' (`features`: summary features) similar normal frames."""
    score = combine(signals, loc, scale, names, rule)
    level = None
    if scene is not None:
        if features is None:
            raise ValueError("a profile with a scene baseline needs the frames' summary features")
        level = scene.levels(features)
        score = score - level
    columns = {column: signals.get(name) for name, column in SIGNAL_FIELDS.items()}
    return FrameScores(
        **columns,  # type: ignore[arg-type]
        scene_level=level,
        score=score,
        is_anomaly=score > threshold,
        heat_cells=heat_cells,
        heat_layout=heat_layout,
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
    combination: Combination  # how the z-scores make the score (`combine`)
    scene: SceneBaseline | None  # the normal level of similar frames, taken off the score (None: none)

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

    @property
    def profile(self) -> str:
        """The name of the profile in use (`anomaly.profiles.FLEET` or a camera's)."""
        ...

    def score_prepared(self, prepared: Sequence[np.ndarray] | np.ndarray) -> FrameScores:
        """Scores of frames already passed through `preprocessor.prepare`."""
        ...

    def for_camera(self, camera: str | None) -> FrameScorer: ...

    def profile_note(self, camera: str | None) -> str: ...

    def with_threshold(self, threshold: float) -> FrameScorer: ...

    def with_all_signals(self, enabled: bool = True) -> FrameScorer: ...
