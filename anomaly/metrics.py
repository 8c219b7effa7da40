"""Frame-level quality figures: how well scores separate labeled anomalies from normal frames."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve, or None when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, scores))


def per_kind_auroc(labels: np.ndarray, kinds: Sequence[str], scores: np.ndarray) -> dict[str, float | None]:
    """AUROC of each anomaly kind against all normal frames (other kinds left out)."""
    labels = np.asarray(labels).astype(bool)
    kinds_arr = np.asarray(kinds, dtype=object)
    result: dict[str, float | None] = {}
    for kind in sorted({k for k, lab in zip(kinds_arr, labels, strict=True) if lab and k}):
        keep = ~labels | (kinds_arr == kind)
        result[kind] = auroc(labels[keep], np.asarray(scores)[keep])
    return result


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
