"""Figures of an evaluation: ROC and precision-recall curves, score over time per clip, score histograms.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot, no global backend
state), so they render headless and from any thread. Each builder returns a `Figure`; `save_png`
writes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from anomaly.events import Event
from anomaly.metrics import Stretch, auroc, average_precision, kind_parts, pr_points, roc_points
from anomaly.preprocess import Preprocessor
from footage.heatmap import heat_overlay

Curve = tuple[np.ndarray, np.ndarray]  # (labels, scores) of one scorer
KIND_COLOURS = ("#e6550d", "#3182bd", "#31a354", "#756bb1", "#d6616b", "#8c6d31", "#17becf", "#e7ba52")


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def kind_colours(kinds: Sequence[str]) -> dict[str, str]:
    """A stable colour per anomaly kind (sorted names, so every figure agrees)."""
    names = sorted({p for k in kinds for p in kind_parts(k)})
    return {k: KIND_COLOURS[i % len(KIND_COLOURS)] for i, k in enumerate(names)}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def roc_figure(curves: Mapping[str, Curve], marks: Mapping[str, tuple[float, float]] | None = None) -> Figure:
    """ROC curve of each scorer (AUROC in the legend); `marks` are named (FPR, TPR) operating points."""
    fig = new_figure(5.5, 4.5)
    ax = fig.add_subplot()
    for name, (labels, scores) in curves.items():
        pts = roc_points(labels, scores)
        if pts is not None:
            ax.plot(pts[0], pts[1], label=f"{name} (AUROC {_fmt(auroc(labels, scores))})")
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1, label="chance")
    for name, (x, y) in (marks or {}).items():
        ax.plot([x], [y], marker="o", linestyle="none", label=f"{name} (FPR {x:.3f}, TPR {y:.3f})")
    ax.set(xlabel="false-positive rate (normal frames flagged)", ylabel="true-positive rate (anomalous frames flagged)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title="ROC, frame level")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pr_figure(curves: Mapping[str, Curve], marks: Mapping[str, tuple[float, float]] | None = None) -> Figure:
    """Precision-recall curve of each scorer (average precision in the legend); `marks` are (recall, precision)."""
    fig = new_figure(5.5, 4.5)
    ax = fig.add_subplot()
    base = None
    for name, (labels, scores) in curves.items():
        pts = pr_points(labels, scores)
        if pts is not None:
            ax.plot(pts[0], pts[1], label=f"{name} (AP {_fmt(average_precision(labels, scores))})")
            base = float(np.mean(np.asarray(labels, dtype=bool)))
    if base is not None:
        ax.axhline(base, color="0.7", linestyle=":", linewidth=1, label=f"chance ({base:.2f})")
    for name, (x, y) in (marks or {}).items():
        ax.plot([x], [y], marker="o", linestyle="none", label=f"{name} (recall {x:.3f}, precision {y:.3f})")
    ax.set(xlabel="recall (anomalous frames flagged)", ylabel="precision (flagged frames that are anomalous)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall, frame level")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)
    return fig


def timeline_figure(
    source: str,
    timestamps_s: np.ndarray,
    scores: np.ndarray,
    smoothed: np.ndarray,
    threshold: float,
    stretches: Sequence[Stretch],
    events: Sequence[Event],
    colours: Mapping[str, str],
) -> Figure:
    """One clip's score over time: labeled stretches shaded by kind, detected events as bars, the threshold."""
    fig = new_figure(10, 3.2)
    ax = fig.add_subplot()
    for st in stretches:
        parts = kind_parts(st.kind) or ("",)
        ax.axvspan(st.start_s, st.end_s, color=colours.get(parts[0], "0.6"), alpha=0.25, linewidth=0)
    ax.plot(timestamps_s, scores, color="0.55", linewidth=0.7, label="score")
    if not np.allclose(smoothed, scores):
        ax.plot(timestamps_s, smoothed, color="black", linewidth=1.3, label="smoothed")
    ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
    top = max(float(np.max(scores, initial=threshold)), threshold) * 1.05 + 1e-9
    bottom = min(float(np.min(scores, initial=0.0)), 0.0)
    bar_h = (top - bottom) * 0.05
    ax.broken_barh(
        [(e.start_s, max(e.duration_s, 1e-3)) for e in events], (top, bar_h), color="red", label="detected events"
    )
    ax.set_ylim(bottom, top + bar_h * 1.5)
    if len(timestamps_s):
        ax.set_xlim(float(np.min(timestamps_s)), float(np.max(timestamps_s)))
    shown = sorted({p for st in stretches for p in (kind_parts(st.kind) or ("",))})
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color=colours.get(k, "0.6"), alpha=0.25, label=f"labeled: {k or 'anomaly'}") for k in shown]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, ncol=6, frameon=False)
    ax.set(xlabel="time (s)", ylabel="anomaly score", title=Path(source).name)
    return fig


def histogram_figure(scores: np.ndarray, labels: np.ndarray, thresholds: Mapping[str, float]) -> Figure:
    """Score distributions of normal and anomalous frames (densities), with named thresholds."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    fig = new_figure(6.5, 4)
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(scores, bins=min(60, max(10, len(scores) // 20)))
    for mask, name, colour in ((~labels, "normal", "#3182bd"), (labels, "anomalous", "#e6550d")):
        if mask.any():
            ax.hist(scores[mask], bins=bins, density=True, alpha=0.55, color=colour, label=f"{name} ({mask.sum()})")
    styles = ("--", "-.", ":", (0, (5, 1)))
    for i, (name, value) in enumerate(thresholds.items()):
        ax.axvline(value, color="black", linestyle=styles[i % len(styles)], linewidth=1, label=f"{name} {value:.3g}")
    ax.set(xlabel="anomaly score", ylabel="density", title="Scores of normal and anomalous frames")
    ax.legend(fontsize=8)
    return fig


def frame_pair(
    frame_bgr: np.ndarray,
    heat: np.ndarray | None = None,
    *,
    preprocessor: Preprocessor | None = None,
    threshold: float = 0.5,
    width: int = 320,
) -> np.ndarray:
    """The frame and, beside it, its error heat map overlaid (or the frame alone without a heat map).

    The preprocessor places the heat map on the model's region of interest; the model's
    `threshold` sets the colour scale, as in `anomaly score --annotate`.
    """
    h, w = frame_bgr.shape[:2]
    size = (width, max(1, round(h * width / w)))
    left = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)
    if heat is None:
        return left
    if preprocessor is None:
        raise ValueError("placing a heat map needs the model's preprocessor")
    overlaid = heat_overlay(frame_bgr, heat, preprocessor, threshold)
    right = cv2.resize(overlaid, size, interpolation=cv2.INTER_AREA)
    return np.concatenate([left, np.full((size[1], 4, 3), 255, np.uint8), right], axis=1)
