"""Ground-truth labels for clips, joined to scored frames."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class LabelError(ValueError):
    """Labels that cannot be read or do not match the scored frames."""


@dataclass
class FrameLabels:
    """Per-frame labels keyed by (source file name, frame index)."""

    labels: dict[tuple[str, int], tuple[int, str]]

    @classmethod
    def read(cls, paths: Sequence[Path]) -> FrameLabels:
        """Read per-frame CSVs with columns `source,frame_index,label` and optionally `kind`."""
        table: dict[tuple[str, int], tuple[int, str]] = {}
        for path in paths:
            with Path(path).open(newline="") as fh:
                reader = csv.DictReader(fh)
                missing = {"source", "frame_index", "label"} - set(reader.fieldnames or ())
                if missing:
                    raise LabelError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
                for line, row in enumerate(reader, start=2):
                    try:
                        key = (Path(row["source"]).name, int(row["frame_index"]))
                        table[key] = (int(row["label"]), (row.get("kind") or "").strip())
                    except ValueError as exc:
                        raise LabelError(f"{path}:{line}: {exc}") from exc
        return cls(table)

    def join(self, sources: Sequence[str], frame_indices: Sequence[int]) -> tuple[np.ndarray, list[str]]:
        """Labels and kinds for scored frames; every scored frame of a labeled source must be labeled."""
        labeled_sources = {s for s, _ in self.labels}
        out_labels, out_kinds = [], []
        for src, idx in zip(sources, frame_indices, strict=True):
            name = Path(src).name
            if name not in labeled_sources:
                raise LabelError(f"no labels for source {src}")
            try:
                label, kind = self.labels[(name, int(idx))]
            except KeyError:
                raise LabelError(f"{src}: frame {idx} is not in the labels (past the end?)") from None
            out_labels.append(label)
            out_kinds.append(kind)
        return np.asarray(out_labels, dtype=bool), out_kinds


def labels_path_for(video: Path) -> Path:
    """`clip.mp4` -> `clip.labels.csv` beside it (the sample set's convention)."""
    video = Path(video)
    return video.with_name(f"{video.stem}.labels.csv")
