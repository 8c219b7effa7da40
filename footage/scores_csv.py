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
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from anomaly.frame_scores import SCORE_FIELDS, FrameScores
from footage.ingest import Frame

CSV_COLUMNS = ("source", "frame_index", "timestamp_s", *SCORE_FIELDS, "is_anomaly")


@dataclass
class ScoredBatch:
    """Frames and their scores, in the same order."""

    frames: Sequence[Frame]
    scores: FrameScores


def csv_rows(batch: ScoredBatch) -> Iterator[tuple]:
    """The CSV rows of a scored batch: timestamps to 0.1 ms, scores to six significant digits."""
    columns = [getattr(batch.scores, name) for name in SCORE_FIELDS]
    for i, f in enumerate(batch.frames):
        yield (
            f.source,
            f.index,
            f"{f.timestamp_s:.4f}",
            *(f"{c[i]:.6g}" for c in columns),
            int(batch.scores.is_anomaly[i]),
        )


def csv_text(rows: Iterable[tuple]) -> str:
    """Rows as `ScoresWriter` writes them (same dialect, same line ends)."""
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


class ScoresWriter:
    """Writes a scores CSV: the header, then whole rows, flushed batch by batch."""

    def __init__(self, fh: IO[str]) -> None:
        self._fh = fh
        self._csv = csv.writer(fh)
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
    """A scores CSV back as columns (numeric ones as arrays), with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise OSError(f"scores CSV not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} is not a scores CSV from `anomaly score` (missing {', '.join(missing)})")
        rows = list(reader)
    if not rows:
        return {c: np.array([], dtype=object if c == "source" else np.float64) for c in CSV_COLUMNS}
    cols: dict[str, np.ndarray] = {"source": np.array([r["source"] for r in rows], dtype=object)}
    try:
        for c in CSV_COLUMNS[1:]:
            cols[c] = np.array([float(r[c]) for r in rows])
    except (TypeError, ValueError):
        raise ValueError(f"{path}: column {c} holds a value that is not a number") from None
    if not np.isfinite(cols["score"]).all():
        raise ValueError(f"{path}: some scores are not finite numbers")
    cols["frame_index"] = cols["frame_index"].astype(int)
    cols["is_anomaly"] = cols["is_anomaly"].astype(bool)
    return cols
