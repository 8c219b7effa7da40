"""The numbers of the report: frame-level figures overall, per kind and per signal; thresholds; events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly.events import Event, EventConfig, track_source
from anomaly.frame_scores import SIGNAL_FIELDS
from anomaly.metrics import (
    Stretch,
    StretchMatch,
    auroc,
    average_precision,
    event_metrics,
    kind_metrics,
    kind_parts,
    labeled_stretches,
    match_events,
    normal_hours,
)
from anomaly.thresholds import (
    ThresholdChoice,
    ThresholdSweep,
    best_f1,
    operating_point,
    threshold_for_fpr,
)
from evaluation.inputs import LabeledScores

TOP_FRAME_GAP_S = 1.0  # the strip shows at most one frame per second of a clip, not one event ten times
UNDEFINED_POINT = dict.fromkeys(
    ("threshold", "tp", "fp", "fn", "tn", "precision", "recall", "false_positive_rate", "f1")
)


def frame_figures(scored: LabeledScores, op: float) -> dict[str, Any]:
    """Frame-level figures of the model: overall and per kind (with the share flagged at threshold `op`)."""
    cols, labels, kinds = scored.cols, scored.labels, scored.kinds
    per_kind = kind_metrics(labels, kinds, cols["score"])
    flagged = cols["score"] > op
    for kind, entry in per_kind.items():
        mine = np.array([lab and kind in kind_parts(k) for lab, k in zip(labels, kinds, strict=True)])
        entry["recall"] = float(flagged[mine].mean())
    return {
        "auroc": auroc(labels, cols["score"]),
        "average_precision": average_precision(labels, cols["score"]),
        "per_kind": per_kind,
    }


def signal_figures(scored: LabeledScores) -> dict[str, Any]:
    """AUROC of each raw signal in the CSV, to show which one carries which kind."""
    return {
        name: {
            "auroc": auroc(scored.labels, scored.cols[col]),
            "auroc_per_kind": {
                k: v["auroc"] for k, v in kind_metrics(scored.labels, scored.kinds, scored.cols[col]).items()
            },
        }
        for name, col in SIGNAL_FIELDS.items()
        if col in scored.cols
    }


def top_rows(
    scored: LabeledScores,
    k: int,
    among: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    gap_s: float = TOP_FRAME_GAP_S,
) -> list[int]:
    """The k highest-scoring rows (of those `among` marks) for a strip an analyst reads: no two from the
    same group (labeled stretch, id >= 0) and none within `gap_s` seconds of another of its clip."""
    cols = scored.cols
    chosen: list[int] = []
    for r in np.argsort(-cols["score"], kind="stable"):
        if len(chosen) >= k:
            break
        if among is not None and not among[r]:
            continue
        if groups is not None and groups[r] >= 0 and any(groups[c] == groups[r] for c in chosen):
            continue
        if any(
            cols["source"][c] == cols["source"][r] and abs(cols["timestamp_s"][c] - cols["timestamp_s"][r]) < gap_s
            for c in chosen
        ):
            continue
        chosen.append(int(r))
    return chosen


def stretch_ids(scored: LabeledScores, stretches: Sequence[Stretch]) -> np.ndarray:
    """Per row, the position of the labeled stretch it belongs to (-1 for normal frames)."""
    cols = scored.cols
    ids = np.full(len(scored.labels), -1)
    for i, st in enumerate(stretches):
        inside = (cols["frame_index"] >= st.start_frame) & (cols["frame_index"] <= st.end_frame)
        ids[(cols["source"] == st.source) & inside & scored.labels] = i
    return ids


def threshold_table(
    scored: LabeledScores,
    result: ThresholdSweep,
    calibrated: tuple[float, str],
    choice: ThresholdChoice,
    report_far: float,
) -> dict[str, Any]:
    """Figures at the calibrated, best-F1, target-FPR and operating thresholds."""
    labels, scores = scored.labels, scored.cols["score"]
    operating = choice.resolve(result, calibrated[0])
    far = threshold_for_fpr(result, report_far).to_dict() if result.negatives else UNDEFINED_POINT
    return {
        "calibrated": {**operating_point(labels, scores, calibrated[0]).to_dict(), "source": calibrated[1]},
        "best_f1": best_f1(result).to_dict() if result.positives else UNDEFINED_POINT,
        "report_far": {"target": report_far, **far},
        "operating": {**operating_point(labels, scores, operating).to_dict(), "choice": choice.describe()},
    }


@dataclass
class Temporal:
    """The clips run through the event tracker at the operating threshold, and the labeled stretches."""

    smoothed: np.ndarray
    events: list[Event]
    stretches: list[Stretch]
    metrics: dict[str, Any]
    matches: list[StretchMatch]
    false_alarms: list[int]


def temporal_view(scored: LabeledScores, threshold: float, config: EventConfig) -> Temporal:
    cols, labels = scored.cols, scored.labels
    smoothed = np.empty(len(labels))
    events: list[Event] = []
    for src in scored.sources:
        rows = scored.rows_of(src)
        rows_of_source = zip(cols["frame_index"][rows], cols["timestamp_s"][rows], cols["score"][rows], strict=True)
        smoothed[rows], found = track_source(src, rows_of_source, threshold, config)
        events.extend(found)
    stretches = labeled_stretches(cols["source"], cols["frame_index"], cols["timestamp_s"], labels, scored.kinds)
    hours = normal_hours(cols["source"], cols["timestamp_s"], labels)
    matches, false_alarms = match_events(stretches, events)
    return Temporal(smoothed, events, stretches, event_metrics(stretches, events, hours), matches, false_alarms)
