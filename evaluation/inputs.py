"""What `anomaly evaluate` measures: the scores (a CSV, or clips scored first) joined to their labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly.detector import Detector
from batch.local import score_sources
from evaluation.config import EvaluationConfig
from footage.ingest import IngestError, probe_source
from footage.labels import LabelError, Labels, SourceExtent, labels_path_for
from footage.scores_csv import read_scores_csv


@dataclass
class LabeledScores:
    """The evaluated frames: CSV columns plus labels, in CSV order."""

    cols: dict[str, np.ndarray]
    labels: np.ndarray
    kinds: list[str]

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(self.cols["source"]))

    def rows_of(self, source: str) -> np.ndarray:
        """Row positions of one source, in frame order."""
        rows = np.flatnonzero(self.cols["source"] == source)
        return rows[np.argsort(self.cols["frame_index"][rows], kind="stable")]


def read_scores(path: Path) -> dict[str, np.ndarray]:
    """A scores CSV to evaluate: a readable one with at least one scored frame."""
    cols = read_scores_csv(path)
    if len(cols["score"]) == 0:
        raise ValueError(f"{path} holds no scored frames")
    return cols


def score_clips(detector: Detector, config: EvaluationConfig, out_csv: Path) -> Path:
    """Score the clips with the model (the same code as `anomaly score`, every signal, so the report can
    show each one's figures); any unreadable clip is an error."""
    summary = score_sources(
        detector.with_all_signals(),
        list(config.sources),
        out_csv,
        sampling=config.sampling,
        batch_size=config.batch_size,
        progress=config.progress,
    )
    if summary.errors:
        raise IngestError("; ".join(f"{src}: {err}" for src, err in summary.errors.items()))
    return out_csv


def label_paths(config: EvaluationConfig, sources: Sequence[str]) -> list[Path]:
    """The label files given, or `<clip>.labels.csv` beside each clip."""
    if config.labels:
        return list(config.labels)
    found = [labels_path_for(Path(s)) for s in sources if labels_path_for(Path(s)).is_file()]
    if not found:
        raise LabelError("no labels: pass --labels, or put <clip>.labels.csv beside each clip")
    return found


def source_extents(sources: Sequence[str], cols: dict[str, np.ndarray]) -> tuple[dict[str, SourceExtent], list[str]]:
    """Length of each clip that can be probed (for the past-the-end check), and those that cannot."""
    extents, unknown = {}, []
    for src in sources:
        try:
            info = probe_source(src)
        except IngestError:
            unknown.append(src)
            continue
        scored = cols["frame_index"][cols["source"] == src]
        n = max(info.frame_count, int(scored.max()) + 1 if scored.size else 0)
        if n <= 0 or info.fps <= 0:
            unknown.append(src)
            continue
        extents[src] = SourceExtent(n_frames=n, duration_s=n / info.fps)
    return extents, unknown


def join_labels(cols: dict[str, np.ndarray], paths: Sequence[Path], notes: list[str]) -> LabeledScores:
    labels = Labels.read(paths)
    sources = list(dict.fromkeys(cols["source"]))
    labels.check_sources(sources)
    extents, unknown = source_extents(sources, cols)
    labels.check_extents(extents)
    if unknown:
        notes.append(
            "Could not open " + ", ".join(unknown) + " to check that the labels stay within the video's length."
        )
    joined, kinds = labels.join(list(cols["source"]), list(cols["frame_index"]), list(cols["timestamp_s"]))
    return LabeledScores(cols=cols, labels=joined, kinds=kinds)
