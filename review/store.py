"""Verdicts on reviewed events, kept in SQLite beside the run.

An analyst's verdicts are hours of work, so none may be lost: the database runs in WAL mode, every
verdict is its own committed transaction, and rows are only ever appended (a changed mind is a new
row; the latest row of an event is its verdict), so the history of who said what and when stays.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["normal", "anomaly", "skip"]
VERDICTS: tuple[Verdict, ...] = ("normal", "anomaly", "skip")
DB_NAME = "review.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    source TEXT NOT NULL,
    camera TEXT,
    start_frame INTEGER NOT NULL,
    end_frame INTEGER NOT NULL,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('normal', 'anomaly', 'skip')),
    note TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_by_event ON verdicts (event_id, id);
"""


class VerdictRecord(BaseModel):
    """One verdict on one event: the event's stretch is copied in, so the database stands on its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(min_length=1, max_length=64)
    source: str = Field(min_length=1)
    camera: str | None = None
    start_frame: int = Field(ge=0)
    end_frame: int = Field(ge=0)
    start_s: float
    end_s: float
    verdict: Verdict
    note: str = Field("", max_length=2000)
    reviewer: str = Field("", max_length=200)
    created_at: str = ""  # UTC ISO 8601; filled in when stored

    @classmethod
    def of_event(cls, event: Mapping[str, Any], verdict: Verdict, note: str = "", reviewer: str = "") -> VerdictRecord:
        """A verdict on `event` (an event of the events JSON), its stretch copied from it."""
        keys = ("source", "camera", "start_frame", "end_frame", "start_s", "end_s")
        return cls(event_id=str(event["id"]), **{k: event.get(k) for k in keys}, verdict=verdict, note=note,
                   reviewer=reviewer)  # fmt: skip


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ReviewStore:
    """The verdicts database of one run. Each call opens its own connection, so the store can be used
    from any thread of the review app."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with self._connect():
                pass
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path} is not a review database ({exc})") from None

    @classmethod
    def open_existing(cls, path: Path) -> ReviewStore:
        """A store that must already exist (reading feedback must not create an empty one by mistake)."""
        if not Path(path).is_file():
            raise ValueError(f"no review database at {path}: review the run first (`anomaly review RUN_DIR`)")
        return cls(path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=10.0)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed verdict survives a power cut
            db.row_factory = sqlite3.Row
            db.executescript(SCHEMA)  # every time: a database moved away under a running app is made again
            with db:  # one transaction, committed on leaving
                yield db

    def add(self, record: VerdictRecord) -> VerdictRecord:
        """Store one verdict, committed before this returns."""
        stored = record.model_copy(update={"created_at": record.created_at or utc_now()})
        row = stored.model_dump()
        with self._connect() as db:
            db.execute(
                f"INSERT INTO verdicts ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
            )
        return stored

    def history(self) -> list[VerdictRecord]:
        """Every verdict ever given, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM verdicts ORDER BY id").fetchall()
        return [VerdictRecord(**{k: v for k, v in dict(r).items() if k != "id"}) for r in rows]

    def latest(self) -> dict[str, VerdictRecord]:
        """Each reviewed event's current verdict (its latest row)."""
        return {r.event_id: r for r in self.history()}


def label_rows(verdicts: Iterable[VerdictRecord]) -> list[tuple[str, str, str, str]]:
    """Rows of the interval label CSV `anomaly evaluate` reads (`source,start_frame,end_frame,kind`).

    Stretches marked anomaly become intervals (their note, if any, as the kind); a source whose reviewed
    stretches are all normal gets the empty row that says "labeled, no anomaly". As with any interval
    labels, the frames of a labeled source that no interval covers count as normal: skipped and
    unreviewed stretches included.
    """
    latest = {v.event_id: v for v in verdicts}
    rows: list[tuple[str, str, str, str]] = []
    labeled: dict[str, bool] = {}
    for v in sorted(latest.values(), key=lambda v: (v.source, v.start_frame)):
        if v.verdict == "skip":
            continue
        labeled[v.source] = labeled.get(v.source, False) or v.verdict == "anomaly"
        if v.verdict == "anomaly":
            kind = " ".join(v.note.split())[:60].replace(",", ";") or "reviewed"
            rows.append((v.source, str(v.start_frame), str(v.end_frame), kind))
    rows += [(source, "", "", "") for source, has_anomaly in labeled.items() if not has_anomaly]
    return sorted(rows)


def labels_csv(verdicts: Iterable[VerdictRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["source", "start_frame", "end_frame", "kind"])
    writer.writerows(label_rows(verdicts))
    return out.getvalue()


def export_labels(verdicts: Iterable[VerdictRecord], out: Path) -> None:
    """Write `labels_csv` to `out` atomically (a temp file renamed over it)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    part.write_text(labels_csv(verdicts))
    os.replace(part, out)
