"""Verdicts in SQLite: appended, committed one by one, the latest one counts; exported as interval labels."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from footage.labels import Labels
from review.store import ReviewStore, VerdictRecord, export_labels, label_rows


def verdict(event_id: str, verdict: str, source: str = "a.mp4", start: int = 10, end: int = 20, **kw) -> VerdictRecord:
    return VerdictRecord(
        event_id=event_id,
        source=source,
        start_frame=start,
        end_frame=end,
        start_s=start / 10,
        end_s=end / 10,
        verdict=verdict,  # type: ignore[arg-type]
        **kw,
    )


def test_verdicts_survive_reopening_and_the_latest_counts(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "review.sqlite")
    store.add(verdict("e1", "anomaly", reviewer="ana"))
    store.add(verdict("e1", "normal", reviewer="bo", note="shadow of a bridge"))
    store.add(verdict("e2", "skip", start=40, end=45))
    again = ReviewStore(tmp_path / "review.sqlite")  # a restarted app
    assert [v.verdict for v in again.history()] == ["anomaly", "normal", "skip"]
    latest = again.latest()
    assert latest["e1"].verdict == "normal" and latest["e1"].reviewer == "bo"
    assert latest["e1"].created_at.endswith("+00:00")
    with sqlite3.connect(tmp_path / "review.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_bad_verdicts_and_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        verdict("e1", "maybe")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="not a review database"):
        ReviewStore(junk)
    with pytest.raises(ValueError, match="no review database"):
        ReviewStore.open_existing(tmp_path / "missing.sqlite")


def test_label_export_reads_back_as_interval_labels(tmp_path: Path) -> None:
    verdicts = [
        verdict("e1", "anomaly", note="tyre, on the road"),
        verdict("e2", "normal", start=50, end=60),
        verdict("e3", "normal", source="b.mp4"),
        verdict("e4", "skip", source="c.mp4"),
        verdict("e5", "anomaly", source="d.mp4"),
        verdict("e5", "normal", source="d.mp4"),  # changed mind: d.mp4 is all normal
    ]
    rows = label_rows(verdicts)
    assert rows == [("a.mp4", "10", "20", "tyre; on the road"), ("b.mp4", "", "", ""), ("d.mp4", "", "", "")]
    out = tmp_path / "labels.csv"
    export_labels(verdicts, out)
    labels = Labels.read([out])
    assert labels.sources == {"a.mp4", "b.mp4", "d.mp4"}  # the skipped-only source stays unlabeled
    assert not list(tmp_path.glob("*.part"))


def test_a_database_moved_away_under_a_running_app_is_made_again(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "review.sqlite")
    store.add(verdict("e1", "normal"))
    for f in tmp_path.glob("review.sqlite*"):
        f.rename(tmp_path / f"old-{f.name}")
    store.add(verdict("e2", "anomaly"))
    assert [v.event_id for v in store.history()] == ["e2"]
