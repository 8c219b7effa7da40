"""The scores CSV: its columns, how a row is written, and how a file is read back. The one home of the schema.

`anomaly score` (local and Ray engines), `anomaly evaluate` and the demo all go through here, so a
row is formatted the same way everywhere. The local engine streams rows into the final file and
flushes every batch (a run can be watched with `tail -f`, and an interrupted run leaves an exact
prefix of whole rows); the Ray engine writes each source's file whole, atomically.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from pydantic import BaseModel, ConfigDict

from anomaly.frame_scores import EXTRA_SCORE_FIELDS, OPTIONAL_SCORE_FIELDS, SCORE_FIELDS, FrameScores
from footage.ingest import Frame
from footage.sampling import SamplingConfig

# what every scores CSV holds; the extra signals follow (empty for a model without them)
REQUIRED_COLUMNS = ("source", "frame_index", "timestamp_s", *SCORE_FIELDS, "is_anomaly")
CSV_COLUMNS = (*REQUIRED_COLUMNS, *EXTRA_SCORE_FIELDS)
# columns whose cells may be empty (a signal the scorer skipped); read back only when every row has them
MAYBE_EMPTY = frozenset({*OPTIONAL_SCORE_FIELDS, *EXTRA_SCORE_FIELDS})


@dataclass
class ScoredBatch:
    """Frames and their scores, in the same order."""

    frames: Sequence[Frame]
    scores: FrameScores


def csv_rows(batch: ScoredBatch) -> Iterator[tuple]:
    """The CSV rows of a scored batch: timestamps to 0.1 ms, scores to six significant digits, a
    signal the scorer skipped as an empty cell."""
    columns = [getattr(batch.scores, name) for name in SCORE_FIELDS]
    extras = [getattr(batch.scores, name) for name in EXTRA_SCORE_FIELDS]
    for i, f in enumerate(batch.frames):
        yield (
            f.source,
            f.index,
            f"{f.timestamp_s:.4f}",
            *("" if c is None else f"{c[i]:.6g}" for c in columns),
            int(batch.scores.is_anomaly[i]),
            *("" if c is None else f"{c[i]:.6g}" for c in extras),
        )


def csv_text(rows: Iterable[tuple]) -> str:
    """Rows as `ScoresWriter` writes them (same dialect, same line ends)."""
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


class ScoresWriter:
    """Writes a scores CSV: the header (unless it continues a file), then whole rows, flushed batch by batch."""

    def __init__(self, fh: IO[str], *, header: bool = True) -> None:
        self._fh = fh
        self._csv = csv.writer(fh)
        if header:
            self._csv.writerow(CSV_COLUMNS)

    def write(self, batch: ScoredBatch) -> None:
        self._csv.writerows(csv_rows(batch))
        self._fh.flush()


def atomic_write_text(path: Path, text: str) -> None:
    """Write beside the target, then rename: readers see the old file or the whole new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_scores_csv(path: Path) -> dict[str, np.ndarray]:
    """A scores CSV back as columns (numeric ones as arrays), with a clear error for anything else.

    A column that may be empty (`MAYBE_EMPTY`: a signal computed only on request) is there only when
    every row holds it."""
    path = Path(path)
    if not path.is_file():
        raise OSError(f"scores CSV not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} is not a scores CSV from `anomaly score` (missing {', '.join(missing)})")
        rows = list(reader)
    if not rows:
        return {c: np.array([], dtype=object if c == "source" else np.float64) for c in CSV_COLUMNS}
    cols: dict[str, np.ndarray] = {"source": np.array([r["source"] for r in rows], dtype=object)}
    try:
        for c in CSV_COLUMNS[1:]:
            if c not in MAYBE_EMPTY or all(r.get(c) not in ("", None) for r in rows):
                cols[c] = np.array([float(r[c]) for r in rows])
    except (TypeError, ValueError):
        raise ValueError(f"{path}: column {c} holds a value that is not a number") from None
    if not np.isfinite(cols["score"]).all():
        raise ValueError(f"{path}: some scores are not finite numbers")
    cols["frame_index"] = cols["frame_index"].astype(int)
    cols["is_anomaly"] = cols["is_anomaly"].astype(bool)
    return cols


RUN_RECORD_FORMAT = 1


class ScoringRun(BaseModel):
    """What a scores CSV is being written with, kept beside it so that `--resume` continues only the same run.

    `finished` lists the sources whose frames are all in the CSV (or that ended with the error in
    `problems`); the CSV itself says how far the unfinished one got.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = RUN_RECORD_FORMAT
    model_sha256: str
    threshold: float
    sampling: SamplingConfig
    columns: tuple[str, ...] = CSV_COLUMNS
    all_signals: bool = False  # every signal column filled, or only those the score uses (and the cheap ones)
    sources: tuple[str, ...]
    finished: tuple[str, ...] = ()
    problems: dict[str, str] = {}

    def differences(self, other: ScoringRun) -> list[str]:
        """What would make rows of `other` differ from rows of this run (empty: the same run)."""
        checks = {
            "model file": (self.model_sha256[:12], other.model_sha256[:12]),
            "threshold": (self.threshold, other.threshold),
            "sampling": (self.sampling.model_dump(), other.sampling.model_dump()),
            "columns": (self.columns, other.columns),
            "--all-signals": (self.all_signals, other.all_signals),
            "sources": (self.sources, other.sources),
            "record format": (self.format, other.format),
        }
        return [f"{name} {mine} vs {theirs}" for name, (mine, theirs) in checks.items() if mine != theirs]


def run_record_path(csv_path: Path) -> Path:
    return Path(csv_path).with_name(Path(csv_path).name + ".run.json")


def write_run_record(csv_path: Path, run: ScoringRun) -> None:
    atomic_write_text(run_record_path(csv_path), run.model_dump_json(indent=1) + "\n")


def read_run_record(csv_path: Path) -> ScoringRun | None:
    """The record beside `csv_path`; None when there is none or it cannot be read as one."""
    path = run_record_path(csv_path)
    try:
        return ScoringRun.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class WrittenRows:
    """What an interrupted run left in its CSV, per source in file order."""

    last_index: dict[str, int]  # the last frame index written
    rows: dict[str, list[tuple[int, float, float]]]  # (frame_index, timestamp_s, score), to replay events
    finished: tuple[str, ...] = ()  # from the run record: sources not to read again
    problems: dict[str, str] = field(default_factory=dict)  # and the errors they ended with
    anomalies_per_source: dict[str, int] = field(default_factory=dict)  # rows above the threshold, per source

    @property
    def frames(self) -> int:
        return sum(len(r) for r in self.rows.values())

    @property
    def anomalies(self) -> int:
        return sum(self.anomalies_per_source.values())


def cut_to_complete_rows(csv_path: Path) -> WrittenRows:
    """Drop a half-written last line (a run killed mid-write) and read what the complete rows hold."""
    path = Path(csv_path)
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with path.open("r+b") as fh:
            fh.truncate(len(complete))
    written = WrittenRows(last_index={}, rows={})
    reader = csv.reader(io.StringIO(complete.decode("utf-8"), newline=""))
    header = next(reader, None)
    if header is None:
        return written
    if tuple(header) != CSV_COLUMNS:
        raise ValueError(f"{path} is not a scores CSV of this version (its columns are {','.join(header)})")
    at = {name: i for i, name in enumerate(CSV_COLUMNS)}
    for row in reader:
        source, index = row[at["source"]], int(row[at["frame_index"]])
        timestamp, score = float(row[at["timestamp_s"]]), float(row[at["score"]])
        written.rows.setdefault(source, []).append((index, timestamp, score))
        written.last_index[source] = index
        flagged = int(row[at["is_anomaly"]])
        written.anomalies_per_source[source] = written.anomalies_per_source.get(source, 0) + flagged
    return written
