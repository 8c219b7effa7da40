"""Choosing an operating threshold from labeled frames: the full sweep and the usual picks.

Every figure here uses the detector's own rule, a frame is flagged when `score > threshold`
(strictly), so a threshold chosen here and written into a model flags exactly the frames counted
here. Between two adjacent distinct scores of the labeled frames nothing changes, so the
candidate thresholds lie halfway between them (plus the highest score, which flags nothing):
the middle leaves the most room for scores that differ a little (rounding in a CSV, new footage).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from sklearn.metrics import confusion_matrix, roc_curve


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with NaN where den is 0 (an undefined precision is not a zero one)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


@dataclass(frozen=True)
class OperatingPoint:
    """What flagging `score > threshold` does on the labeled frames."""

    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return float(_ratio(self.tp, self.tp + self.fp))

    @property
    def recall(self) -> float:
        return float(_ratio(self.tp, self.tp + self.fn))

    @property
    def false_positive_rate(self) -> float:
        return float(_ratio(self.fp, self.fp + self.tn))

    @property
    def f1(self) -> float:
        return float(_ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn))

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready, with undefined ratios as null."""
        return {
            **asdict(self),
            "precision": _finite(self.precision),
            "recall": _finite(self.recall),
            "false_positive_rate": _finite(self.false_positive_rate),
            "f1": _finite(self.f1),
        }


def threshold_for_rate(normal_scores: np.ndarray, false_alarm_rate: float) -> float:
    """The score above which `false_alarm_rate` of normal frames lie (upper-tail quantile)."""
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no normal scores to set a threshold from")
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false alarm rate must be in (0, 1), got {false_alarm_rate}")
    return float(np.quantile(scores, 1.0 - false_alarm_rate))


def threshold_from_flags(scores: np.ndarray, flagged: np.ndarray) -> float:
    """The threshold a scoring run used, recovered from its `is_anomaly` column (a value that reproduces it)."""
    scores, flagged = np.asarray(scores, dtype=np.float64), np.asarray(flagged, dtype=bool)
    calm = scores[~flagged]
    if calm.size == 0:
        return float(np.nextafter(scores.min(), -np.inf))
    top_calm = float(calm.max())
    if not flagged.any():
        return top_calm
    low_flag = float(scores[flagged].min())
    if low_flag <= top_calm:
        raise ValueError(
            "the scores CSV's is_anomaly column does not follow from one threshold (was it edited or concatenated "
            "from runs with different thresholds?); pass --model or --threshold"
        )
    return (top_calm + low_flag) / 2.0


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> OperatingPoint:
    """Counts at one threshold (the model's calibrated one, or any other)."""
    labels = np.asarray(labels).astype(bool)
    flagged = np.asarray(scores, dtype=np.float64) > threshold
    tn, fp, fn, tp = confusion_matrix(labels, flagged, labels=[False, True]).ravel()
    return OperatingPoint(float(threshold), int(tp), int(fp), int(fn), int(tn))


@dataclass(frozen=True)
class ThresholdSweep:
    """Counts at every candidate threshold, highest threshold (fewest flags) first."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    negatives: int

    def __len__(self) -> int:
        return len(self.thresholds)

    @property
    def fn(self) -> np.ndarray:
        return self.positives - self.tp

    @property
    def tn(self) -> np.ndarray:
        return self.negatives - self.fp

    @property
    def precision(self) -> np.ndarray:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> np.ndarray:
        return _ratio(self.tp, self.positives)

    @property
    def false_positive_rate(self) -> np.ndarray:
        return _ratio(self.fp, self.negatives)

    @property
    def f1(self) -> np.ndarray:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def point(self, i: int) -> OperatingPoint:
        return OperatingPoint(
            float(self.thresholds[i]), int(self.tp[i]), int(self.fp[i]), int(self.fn[i]), int(self.tn[i])
        )

    def rows(self) -> list[dict[str, float | int | None]]:
        """One dict per candidate threshold (for the sweep CSV)."""
        return [self.point(i).to_dict() for i in range(len(self))]


def sweep(labels: np.ndarray, scores: np.ndarray) -> ThresholdSweep:
    """Precision, recall, false-positive rate and F1 at every candidate threshold (see the module doc)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no scored frames to sweep thresholds over")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives and negatives:
        fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
        tp, fp = np.rint(tpr * positives).astype(int), np.rint(fpr * negatives).astype(int)
        # thr[0] is +inf; thr[1:] are the distinct scores, and a threshold just below thr[k] flags
        # what `>= thr[k]` flags: row k of sklearn's counts belongs to the candidate below thr[k]
        return ThresholdSweep(midpoints(thr[1:]), tp[:-1], fp[:-1], positives, negatives)
    # one class only (roc_curve refuses): count the frames strictly above each candidate
    thresholds = midpoints(np.unique(scores)[::-1])
    flagged = len(scores) - np.searchsorted(np.sort(scores), thresholds, side="right")
    zeros = np.zeros_like(flagged)
    tp, fp = (flagged, zeros) if positives else (zeros, flagged)
    return ThresholdSweep(thresholds, tp, fp, positives, negatives)


def midpoints(distinct_desc: np.ndarray) -> np.ndarray:
    """Candidates for distinct scores s_1 > s_2 > ...: s_1 (flags nothing), then (s_(k-1) + s_k) / 2."""
    out = np.asarray(distinct_desc, dtype=np.float64).copy()
    out[1:] = (out[1:] + out[:-1]) / 2.0
    return out


def best_f1(result: ThresholdSweep) -> OperatingPoint:
    """The threshold with the highest F1 (the highest such threshold on ties: fewer alarms)."""
    if result.positives == 0:
        raise ValueError("no anomalous frames: F1 cannot be measured")
    f1 = np.nan_to_num(result.f1, nan=-1.0)
    return result.point(int(np.argmax(f1)))


def threshold_for_fpr(result: ThresholdSweep, target: float) -> OperatingPoint:
    """The lowest threshold (most detections) whose false-positive rate stays at or below `target`."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target false-positive rate must be in [0, 1), got {target}")
    if result.negatives == 0:
        raise ValueError("no normal frames: a false-positive rate cannot be measured")
    ok = np.flatnonzero(result.fp / result.negatives <= target + 1e-12)
    return result.point(int(ok[-1]))  # the highest threshold (index 0) flags nothing, so ok is never empty


@dataclass(frozen=True)
class ThresholdChoice:
    """How the user picked the operating threshold: a value, `best-f1`, `far:RATE` or `calibrated`."""

    kind: Literal["value", "best-f1", "far", "calibrated"]
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> ThresholdChoice:
        t = text.strip().lower()
        if t in ("best-f1", "calibrated"):
            return cls(t)  # type: ignore[arg-type]
        if t.startswith("far:"):
            try:
                rate = float(t[4:])
            except ValueError:
                rate = float("nan")
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"threshold {text!r}: far:RATE needs a false-alarm rate in [0, 1), e.g. far:0.01")
            return cls("far", rate)
        try:
            value = float(t)
        except ValueError:
            raise ValueError(
                f"threshold {text!r}: use a number, best-f1, far:RATE (e.g. far:0.01) or calibrated"
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"threshold {text!r} must be finite")
        return cls("value", value)

    def resolve(self, result: ThresholdSweep, calibrated: float) -> float:
        if self.kind == "value":
            return float(self.value)  # type: ignore[arg-type]
        if self.kind == "best-f1":
            return best_f1(result).threshold
        if self.kind == "far":
            return threshold_for_fpr(result, float(self.value)).threshold  # type: ignore[arg-type]
        return float(calibrated)

    def describe(self) -> str:
        if self.kind == "value":
            return f"{self.value:g} (given)"
        if self.kind == "far":
            return f"far:{self.value:g} (false-alarm rate on these labeled frames)"
        return self.kind
