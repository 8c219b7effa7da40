"""Frame-level quality figures: how well scores separate labeled anomalies from normal frames."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from anomaly.events import Event


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve, or None when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, scores))


def per_kind_auroc(labels: np.ndarray, kinds: Sequence[str], scores: np.ndarray) -> dict[str, float | None]:
    """AUROC of each anomaly kind against all normal frames (other kinds left out), by `kind_metrics`'s rule."""
    return {kind: entry["auroc"] for kind, entry in kind_metrics(labels, kinds, scores).items()}  # type: ignore[misc]


def frame_summary(labels: np.ndarray, kinds: Sequence[str], scores: np.ndarray, threshold: float) -> dict[str, object]:
    """Headline figures: AUROC overall and per kind, AP, false-alarm and detection rates at `threshold`."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    flagged = scores > threshold
    n_normal, n_anom = int((~labels).sum()), int(labels.sum())
    return {
        "frames": len(labels),
        "normal_frames": n_normal,
        "anomalous_frames": n_anom,
        "auroc": auroc(labels, scores),
        "average_precision": float(average_precision_score(labels, scores)) if 0 < n_anom < len(labels) else None,
        "auroc_per_kind": per_kind_auroc(labels, kinds, scores),
        "threshold": float(threshold),
        "false_alarm_rate": float(flagged[~labels].mean()) if n_normal else None,
        "detection_rate": float(flagged[labels].mean()) if n_anom else None,
    }


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Average precision (area under the precision-recall curve), or None when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    return float(average_precision_score(labels, scores))


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(false-positive rate, true-positive rate) along the ROC curve, or None with one class."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr


def pr_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(recall, precision) along the precision-recall curve, or None with one class."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    precision, recall, _ = precision_recall_curve(labels, scores)
    return recall, precision


def kind_parts(kind: str | None) -> tuple[str, ...]:
    """The kinds a label names: `fog+obstacle` is both a fog and an obstacle frame."""
    return tuple(p for p in (kind or "").split("+") if p and p != "normal")


def kind_metrics(labels: np.ndarray, kinds: Sequence[str], scores: np.ndarray) -> dict[str, dict[str, object]]:
    """Per anomaly kind: its frames against all normal frames (other kinds left out).

    A frame labeled `a+b` counts for kind `a` and for kind `b`. The one rule for every per-kind figure.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    parts = [kind_parts(k) if lab else () for k, lab in zip(kinds, labels, strict=True)]
    out: dict[str, dict[str, object]] = {}
    for kind in sorted({p for ps in parts for p in ps}):
        mine = np.array([kind in ps for ps in parts])
        keep = ~labels | mine
        out[kind] = {
            "frames": int(mine.sum()),
            "auroc": auroc(labels[keep], scores[keep]),
            "average_precision": average_precision(labels[keep], scores[keep]),
        }
    return out


@dataclass(frozen=True)
class Stretch:
    """A labeled anomalous stretch: consecutive scored frames of one source that are all labeled anomalous."""

    source: str
    start_frame: int
    end_frame: int  # inclusive
    start_s: float
    end_s: float  # timestamp of the last frame
    kind: str  # `a+b` when frames of the stretch carry several kinds
    n_frames: int


def _by_source(sources: Sequence[str]) -> dict[str, np.ndarray]:
    arr = np.asarray(sources, dtype=object)
    return {s: np.flatnonzero(arr == s) for s in dict.fromkeys(arr)}


def labeled_stretches(
    sources: Sequence[str],
    frame_indices: Sequence[int],
    timestamps_s: Sequence[float],
    labels: np.ndarray,
    kinds: Sequence[str],
) -> list[Stretch]:
    """Ground-truth events: runs of consecutive anomalous frames per source (in frame order)."""
    labels = np.asarray(labels).astype(bool)
    idx_all, ts_all = np.asarray(frame_indices), np.asarray(timestamps_s, dtype=np.float64)
    out: list[Stretch] = []
    for source, rows in _by_source(sources).items():
        rows = rows[np.argsort(idx_all[rows], kind="stable")]
        run: list[int] = []
        for r in [*rows, None]:
            if r is not None and labels[r]:
                run.append(r)
                continue
            if run:
                names = sorted({p for i in run for p in kind_parts(kinds[i])})
                out.append(
                    Stretch(
                        source=source,
                        start_frame=int(idx_all[run[0]]),
                        end_frame=int(idx_all[run[-1]]),
                        start_s=float(ts_all[run[0]]),
                        end_s=float(ts_all[run[-1]]),
                        kind="+".join(names),
                        n_frames=len(run),
                    )
                )
                run = []
    return out


def normal_hours(sources: Sequence[str], timestamps_s: Sequence[float], labels: np.ndarray) -> float:
    """Hours of normal driving: normal frames times each source's frame spacing (stride-aware)."""
    labels = np.asarray(labels).astype(bool)
    ts = np.asarray(timestamps_s, dtype=np.float64)
    seconds = 0.0
    for rows in _by_source(sources).values():
        steps = np.diff(np.sort(ts[rows]))
        steps = steps[steps > 0]
        if steps.size:
            seconds += float(np.median(steps)) * int((~labels[rows]).sum())
    return seconds / 3600.0


@dataclass
class StretchMatch:
    """Whether the model fired inside a labeled stretch, and how late."""

    stretch: Stretch
    events: list[int] = field(default_factory=list)  # positions of the overlapping detected events
    delay_s: float | None = None  # labeled start -> start of the first overlapping event (0 if already under way)

    @property
    def detected(self) -> bool:
        return bool(self.events)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self.stretch), "detected": self.detected, "delay_s": self.delay_s, "events": self.events}


def _overlaps(ev: Event, st: Stretch) -> bool:
    return ev.source == st.source and ev.start_frame <= st.end_frame and ev.end_frame >= st.start_frame


def match_events(stretches: Sequence[Stretch], events: Sequence[Event]) -> tuple[list[StretchMatch], list[int]]:
    """Match detected events to labeled stretches: the matches, and positions of events that hit no stretch."""
    matches = []
    hit: set[int] = set()
    for st in stretches:
        overlapping = [i for i, ev in enumerate(events) if _overlaps(ev, st)]
        hit.update(overlapping)
        delay = min((max(0.0, events[i].start_s - st.start_s) for i in overlapping), default=None)
        matches.append(StretchMatch(st, overlapping, delay))
    return matches, [i for i in range(len(events)) if i not in hit]


def _delay_summary(delays: list[float]) -> dict[str, float | None]:
    if not delays:
        return {"mean": None, "median": None, "max": None}
    return {"mean": float(np.mean(delays)), "median": float(np.median(delays)), "max": float(np.max(delays))}


def event_metrics(stretches: Sequence[Stretch], events: Sequence[Event], hours_normal: float) -> dict[str, object]:
    """Event-level figures: labeled stretches the model fired inside, detection delay, false alarms per hour.

    A labeled stretch counts as detected when any detected event overlaps it; an event that overlaps
    no labeled stretch is a false alarm.
    """
    matches, false_alarms = match_events(stretches, events)
    detected = [m for m in matches if m.detected]
    per_kind: dict[str, dict[str, object]] = {}
    for kind in sorted({p for st in stretches for p in kind_parts(st.kind)}):
        mine = [m for m in matches if kind in kind_parts(m.stretch.kind)]
        found = [m for m in mine if m.detected]
        per_kind[kind] = {
            "labeled": len(mine),
            "detected": len(found),
            "recall": len(found) / len(mine),
            "delay_s": _delay_summary([m.delay_s for m in found if m.delay_s is not None]),
        }
    return {
        "labeled_events": len(stretches),
        "detected_events": len(detected),
        "event_recall": len(detected) / len(stretches) if stretches else None,
        "predicted_events": len(events),
        "false_alarms": len(false_alarms),
        "normal_hours": hours_normal,
        "false_alarms_per_hour": len(false_alarms) / hours_normal if hours_normal > 0 else None,
        "delay_s": _delay_summary([m.delay_s for m in detected if m.delay_s is not None]),
        "per_kind": per_kind,
    }
