"""The scene baseline: a frame's score is measured from the normal level of the frames that look like it.

Why: on a fleet most of what the score loses lies between drives, not within one. One road (a wet forest
road, a lone pine against the sky) sits higher on the local signals than the others on every frame,
so its normal frames outrank small objects and smears on the other roads. Removing each drive's own
normal level (an oracle no product has) lifted every injected kind by 0.02-0.04 on the fleet benchmark.
The baseline stands in for it with what the model does have: frames held out from training. Each
keeps its summary features (standardised as the memory's are) and its score as a later stretch of a
known drive (scored with the statistics the model keeps); a frame's level is the median score of its
`k` nearest of them, about one drive's worth (`k` = held-out frames / held-out sources).

The threshold is set on held-out frames scored as drives never seen, each less the level of its
nearest held-out frames of the *other* drives (`leave_group_out_levels`), so the false-alarm rate still
carries over to a new drive. On the fleet benchmark's four seeds (README, *The scene baseline*): AUROC
over all kinds 0.937/0.917/0.905/0.884 -> 0.941/0.929/0.918/0.911, false alarms on later footage the
same or lower.

Levels are counted from the lowest a frame can get (`floor`, the median of the `k` lowest scores), so
they are never negative and a score never exceeds its signals' combination: a frame whose every
z-score is below a level still scores below it (what `anomaly.feedback` relies on; feedback leaves the
baseline as calibrated: its frames keep the scores they had, which feedback could only have lowered).
Numpy only: the scorer of exported models uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """N x M squared distances between the rows of `a` and of `b` (float64)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T), 0.0)


def standardised(features: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Raw summary features in the memory's units (float64)."""
    return (np.asarray(features, dtype=np.float64) - center) / scale


@dataclass(frozen=True)
class SceneBaseline:
    """Held-out normal frames with their known-drive scores, and how many of them a frame's level takes."""

    center: np.ndarray = field(repr=False)  # d: per-dimension mean of normal summary features (the memory's)
    scale: np.ndarray = field(repr=False)  # d: their per-dimension standard deviation
    features: np.ndarray = field(repr=False)  # B x d: the held-out frames' standardised summary features
    scores: np.ndarray = field(repr=False)  # B: their scores as later stretches of known drives
    k: int

    def __post_init__(self) -> None:
        b, d = self.features.shape
        if not 1 <= self.k <= b or self.scores.shape != (b,) or self.center.shape != (d,) or self.scale.shape != (d,):
            raise ValueError(f"inconsistent scene baseline: {b} frames, k={self.k}, {len(self.scores)} scores")

    @property
    def floor(self) -> float:
        """The lowest level a frame can get: the median of the `k` lowest scores."""
        return float(np.median(np.sort(self.scores)[: self.k]))

    def levels(self, features: np.ndarray) -> np.ndarray:
        """Per frame (N x d raw summary features): the median score of its `k` nearest held-out frames,
        less `floor` (so at least 0)."""
        if len(features) == 0:
            return np.zeros(0)
        distances = squared_distances(standardised(features, self.center, self.scale), self.features)
        nearest = np.argsort(distances, axis=1, kind="stable")[:, : self.k]
        return np.median(self.scores[nearest], axis=1) - self.floor

    def leave_group_out_levels(self, groups: np.ndarray) -> np.ndarray:
        """Per held-out frame (in order, `groups` its source): its level among the *other* sources'
        frames only, as a frame of a drive the baseline never saw gets (less `floor`)."""
        distances = squared_distances(self.features, self.features)
        out = np.empty(len(groups))
        for i, g in enumerate(groups):
            others = np.flatnonzero(groups != g)
            nearest = others[np.argsort(distances[i, others], kind="stable")[: self.k]]
            out[i] = np.median(self.scores[nearest])
        return out - self.floor

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The baseline as named float32 arrays (and `k`), for a checkpoint or an exported profile."""
        arrays = {"center": self.center, "scale": self.scale, "features": self.features, "scores": self.scores}
        return {**{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}, "k": np.asarray(self.k)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SceneBaseline:
        return cls(
            **{k: np.asarray(arrays[k], dtype=np.float64) for k in ("center", "scale", "features", "scores")},
            k=int(arrays["k"]),
        )


def fit_scene_baseline(
    center: np.ndarray, scale: np.ndarray, features: np.ndarray, scores: np.ndarray, groups: np.ndarray
) -> SceneBaseline | None:
    """The baseline of held-out frames (raw summary features, known-drive scores, source of each), with
    `k` = frames per source; None with fewer than two sources (no drive to leave out)."""
    sources = len(np.unique(groups))
    if sources < 2:
        return None
    k = max(1, min(int(round(len(groups) / sources)), int(min((groups != g).sum() for g in np.unique(groups)))))
    standard = standardised(features, center, scale)
    # in the precision a checkpoint stores, so a saved model scores as the fitted one
    arrays = {"center": center, "scale": scale, "features": standard, "scores": scores, "k": np.asarray(k)}
    return SceneBaseline.from_arrays({k: np.asarray(v, np.float32) for k, v in arrays.items()})
