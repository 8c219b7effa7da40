"""Ground-truth labels for clips, joined to scored frames.

Two CSV formats, told apart by their header:

- per frame: `source,frame_index,label[,kind]`, one row per frame (the sample set's format);
- intervals: `source,start_s,end_s[,kind]` (seconds) or `source,start_frame,end_frame[,kind]`, one row
  per anomalous stretch, both ends inclusive. Frames no interval covers are normal; a row with empty
  start and end marks a source that was labeled and holds no anomaly. Overlapping intervals of
  different kinds give the frame the kind `a+b`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
                    if table[key][0] not in (0, 1) or key[1] < 0:
                        raise LabelError(f"{path}:{line}: label must be 0 or 1 and frame_index >= 0, got {row}")
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


FRAME_HEADER = ("source", "frame_index", "label")
SECONDS_HEADER = ("source", "start_s", "end_s")
FRAMES_HEADER = ("source", "start_frame", "end_frame")
_TOLERANCE_S = 1e-6  # timestamps in a scores CSV are rounded to 0.1 ms


@dataclass(frozen=True)
class SourceExtent:
    """How long a source is, to catch labels that point past its end."""

    n_frames: int
    duration_s: float


@dataclass(frozen=True)
class LabelInterval:
    """One labeled anomalous stretch of a source; both ends inclusive."""

    source: str  # file name
    start: float
    end: float
    unit: Literal["s", "frame"]
    kind: str
    origin: str  # "file:line", for error messages

    def covers(self, frame_index: int, timestamp_s: float) -> bool:
        if self.unit == "frame":
            return self.start <= frame_index <= self.end
        return self.start - _TOLERANCE_S <= timestamp_s <= self.end + _TOLERANCE_S


def label_format(path: Path, header: Sequence[str]) -> Literal["frame", "s", "frame-interval"]:
    """Which label format a header announces; a clear error for anything else."""
    cols = set(header)
    kinds = [
        name
        for name, needed in (("frame", FRAME_HEADER), ("s", SECONDS_HEADER), ("frame-interval", FRAMES_HEADER))
        if set(needed) <= cols
    ]
    if len(kinds) == 1:
        return kinds[0]  # type: ignore[return-value]
    if len(kinds) > 1:
        raise LabelError(f"{path}: header {list(header)} fits more than one label format; keep the columns of one")
    raise LabelError(
        f"{path}: header {list(header)} is not a label format; expected columns "
        f"{','.join(FRAME_HEADER)}[,kind] (per frame), {','.join(SECONDS_HEADER)}[,kind] "
        f"or {','.join(FRAMES_HEADER)}[,kind] (intervals)"
    )


def _bound(text: str | None, unit: str, where: str) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text) if unit == "s" else float(int(text))
    except ValueError:
        what = "a number of seconds" if unit == "s" else "a whole frame number"
        raise LabelError(f"{where}: {text!r} is not {what}") from None
    if not math.isfinite(value) or value < 0:
        raise LabelError(f"{where}: {text!r} must be a finite value >= 0")
    return value


def read_intervals(path: Path, unit: Literal["s", "frame"]) -> dict[str, list[LabelInterval]]:
    """Intervals of one interval CSV per source file name (an empty list: labeled, all normal)."""
    start_col, end_col = ("start_s", "end_s") if unit == "s" else ("start_frame", "end_frame")
    out: dict[str, list[LabelInterval]] = {}
    with Path(path).open(newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            where = f"{path}:{line}"
            name = Path((row.get("source") or "").strip()).name
            if not name:
                raise LabelError(f"{where}: empty source")
            start, end = _bound(row.get(start_col), unit, where), _bound(row.get(end_col), unit, where)
            intervals = out.setdefault(name, [])
            if start is None and end is None:
                continue  # the source is labeled and normal throughout
            if start is None or end is None:
                raise LabelError(f"{where}: give both {start_col} and {end_col}, or neither (a normal source)")
            if end < start:
                raise LabelError(f"{where}: {end_col} {end:g} is before {start_col} {start:g}")
            kind = (row.get("kind") or "").strip()
            intervals.append(LabelInterval(name, start, end, unit, kind, where))
    return out


def combine_kinds(kinds: Sequence[str]) -> str:
    """Kinds of overlapping labels as one name: `fog` + `obstacle` -> `fog+obstacle`."""
    parts = sorted({p for k in kinds for p in k.split("+") if p})
    return "+".join(parts)


@dataclass
class Labels:
    """Labels of every format, per source file name: per-frame rows or intervals (never both for one source)."""

    frames: FrameLabels = field(default_factory=lambda: FrameLabels({}))
    intervals: dict[str, list[LabelInterval]] = field(default_factory=dict)

    @classmethod
    def read(cls, paths: Sequence[Path]) -> Labels:
        """Read label CSVs of either format, told apart by their header."""
        if not paths:
            raise LabelError("no label files given")
        frame_files: list[Path] = []
        intervals: dict[str, list[LabelInterval]] = {}
        for path in paths:
            path = Path(path)
            if not path.is_file():
                raise LabelError(f"label file not found: {path}")
            with path.open(newline="") as fh:
                header = next(csv.reader(fh), [])
            fmt = label_format(path, [h.strip() for h in header])
            if fmt == "frame":
                frame_files.append(path)
                continue
            for name, found in read_intervals(path, "s" if fmt == "s" else "frame").items():
                intervals.setdefault(name, []).extend(found)
        frames = FrameLabels.read(frame_files) if frame_files else FrameLabels({})
        both = {s for s, _ in frames.labels} & set(intervals)
        if both:
            raise LabelError(f"{', '.join(sorted(both))}: labeled both per frame and by intervals; keep one format")
        return cls(frames=frames, intervals=intervals)

    @property
    def sources(self) -> set[str]:
        """File names of the labeled sources."""
        return {s for s, _ in self.frames.labels} | set(self.intervals)

    def check_sources(self, evaluated: Sequence[str]) -> None:
        """Every labeled source must be among the evaluated ones (a typo would silently drop its labels)."""
        names = {Path(s).name for s in evaluated}
        unknown = sorted(self.sources - names)
        if unknown:
            raise LabelError(
                f"labels name source(s) that are not being evaluated: {', '.join(unknown)} "
                f"(evaluated: {', '.join(sorted(names)) or 'none'}); pass those clips or drop their labels"
            )

    def check_extents(self, extents: Mapping[str, SourceExtent]) -> None:
        """No label may point past the end of its video (labels for another cut or frame rate of the clip)."""
        by_name = {Path(s).name: e for s, e in extents.items()}
        last_frame: dict[str, int] = {}
        for name, idx in self.frames.labels:
            last_frame[name] = max(idx, last_frame.get(name, -1))
        for name, idx in sorted(last_frame.items()):
            extent = by_name.get(name)
            if extent is not None and idx >= extent.n_frames:
                raise LabelError(
                    f"labels of {name} go to frame {idx}, past the end of the video ({extent.n_frames} frames, "
                    f"last index {extent.n_frames - 1})"
                )
        for name, intervals in sorted(self.intervals.items()):
            extent = by_name.get(name)
            if extent is None:
                continue
            for iv in intervals:
                if iv.unit == "frame" and iv.end >= extent.n_frames:
                    raise LabelError(
                        f"{iv.origin}: interval ends at frame {iv.end:g}, past the end of {name} "
                        f"({extent.n_frames} frames, last index {extent.n_frames - 1})"
                    )
                if iv.unit == "s" and iv.end > extent.duration_s + _TOLERANCE_S:
                    raise LabelError(
                        f"{iv.origin}: interval ends at {iv.end:g} s, past the end of {name} "
                        f"({extent.duration_s:.3f} s long)"
                    )

    def join(
        self, sources: Sequence[str], frame_indices: Sequence[int], timestamps_s: Sequence[float]
    ) -> tuple[np.ndarray, list[str]]:
        """Labels and kinds of scored frames; a scored source without labels is an error."""
        out_labels = np.zeros(len(sources), dtype=bool)
        out_kinds = [""] * len(sources)
        names = np.asarray([Path(s).name for s in sources], dtype=object)
        per_frame_sources = {s for s, _ in self.frames.labels}
        for name in dict.fromkeys(names):
            rows = np.flatnonzero(names == name)
            if name in per_frame_sources:
                labels, kinds = self.frames.join([sources[i] for i in rows], [frame_indices[i] for i in rows])
                out_labels[rows] = labels
                for i, k in zip(rows, kinds, strict=True):
                    out_kinds[i] = k
            elif name in self.intervals:
                for i in rows:
                    hits = [iv for iv in self.intervals[name] if iv.covers(int(frame_indices[i]), timestamps_s[i])]
                    out_labels[i] = bool(hits)
                    out_kinds[i] = combine_kinds([iv.kind for iv in hits])
            else:
                raise LabelError(f"no labels for source {sources[rows[0]]}")
        return out_labels, out_kinds
