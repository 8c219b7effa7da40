"""Files of an evaluation: metrics.json, sweep.csv, the PNG figures and the strip of top frames."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from anomaly.detector import Detector
from anomaly.scoring import score_frames
from evaluation.inputs import LabeledScores
from evaluation.measures import Temporal
from evaluation.plots import (
    frame_pair,
    histogram_figure,
    kind_colours,
    pr_figure,
    roc_figure,
    save_png,
    timeline_figure,
)
from evaluation.report import Picture


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]


def clear_outputs(out: Path) -> None:
    """Remove images an earlier run left in the output folders (other clips, other frames); nothing else."""
    for folder, pattern in (("timelines", "*.png"), ("top_frames", "*.jpg"), ("top_normal_frames", "*.jpg")):
        for old in (out / folder).glob(pattern):
            old.unlink()


def write_sweep_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = ["threshold", "tp", "fp", "fn", "tn", "precision", "recall", "false_positive_rate", "f1"]
    with Path(path).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in rows:
            writer.writerow(
                ["" if r[c] is None else (f"{r[c]:.10g}" if isinstance(r[c], float) else r[c]) for c in columns]
            )
    return Path(path)


def _json_ready(value: Any) -> Any:
    """numpy scalars to Python, NaN to null (metrics.json must be strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, payload: Any) -> Path:
    Path(path).write_text(json.dumps(_json_ready(payload), indent=2, allow_nan=False))
    return Path(path)


def write_top_frames(
    scored: LabeledScores,
    rows: list[int],
    bgr: dict[int, np.ndarray],
    detector: Detector | None,
    folder: Path,
) -> list[Picture]:
    """Frames beside their heat maps (heat maps need the model), as JPEGs to keep the report light."""
    cols = scored.cols
    rows = [r for r in rows if r in bgr]
    if not rows:
        return []
    heat = score_frames(detector, [bgr[r] for r in rows]).heatmap if detector is not None else None
    pictures = []
    folder.mkdir(parents=True, exist_ok=True)
    for n, r in enumerate(rows):
        src, idx, t, s = cols["source"][r], int(cols["frame_index"][r]), float(cols["timestamp_s"][r]), cols["score"][r]
        if detector is not None and heat is not None:
            image = frame_pair(bgr[r], heat[n], preprocessor=detector.preprocessor, threshold=detector.threshold)
        else:
            image = frame_pair(bgr[r])
        path = folder / f"{n + 1:02d}_{safe_name(Path(src).stem)}_f{idx}.jpg"
        if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 88]):
            raise OSError(f"cannot write {path}")
        truth = f"labeled {scored.kinds[r] or 'anomaly'}" if scored.labels[r] else "labeled normal"
        pictures.append(Picture(path, f"{Path(src).name} frame {idx} at {t:.2f} s: score {s:.2f} ({truth})"))
    return pictures


def write_figures(
    scored: LabeledScores,
    thresholds: dict[str, Any],
    temporal: Temporal,
    baselines: dict[str, Any],
    out: Path,
) -> tuple[list[Picture], list[Picture]]:
    """Curves and histogram (model and baselines), and one score-over-time figure per clip."""
    cols, labels, scores = scored.cols, scored.labels, scored.cols["score"]
    curves = {"model": (labels, scores), **{b["label"]: (labels, b["scores"]) for b in baselines.values()}}
    op = thresholds["operating"]
    roc_marks, pr_marks = {}, {}
    if op["recall"] is not None and op["false_positive_rate"] is not None:
        roc_marks["operating threshold"] = (op["false_positive_rate"], op["recall"])
    if op["recall"] is not None and op["precision"] is not None:
        pr_marks["operating threshold"] = (op["recall"], op["precision"])
    lines = {"calibrated": thresholds["calibrated"]["threshold"]}
    if thresholds["best_f1"]["threshold"] is not None:
        lines["best F1"] = thresholds["best_f1"]["threshold"]
    if op["threshold"] not in lines.values():
        lines["operating"] = op["threshold"]
    figures = [
        Picture(save_png(roc_figure(curves, roc_marks), out / "roc.png"), "ROC curves of the model and baselines"),
        Picture(save_png(pr_figure(curves, pr_marks), out / "pr.png"), "Precision-recall curves"),
        Picture(
            save_png(histogram_figure(scores, labels, lines), out / "histogram.png"),
            "Score histograms of normal and anomalous frames",
        ),
    ]
    colours = kind_colours(scored.kinds)
    timelines = []
    for n, src in enumerate(scored.sources):
        rows = scored.rows_of(src)
        fig = timeline_figure(
            src,
            cols["timestamp_s"][rows],
            scores[rows],
            temporal.smoothed[rows],
            op["threshold"],
            [s for s in temporal.stretches if s.source == src],
            [e for e in temporal.events if e.source == src],
            colours,
        )
        path = save_png(fig, out / "timelines" / f"{n + 1:02d}_{safe_name(Path(src).stem)}.png")
        timelines.append(Picture(path, f"{src}: score over time; labeled stretches shaded, detected events in red"))
    return figures, timelines
