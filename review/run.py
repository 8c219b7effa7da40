"""A scored run as the review page sees it: the events of its events JSON files, and where their clips are.

A run is a folder holding one or more events JSON files (`events.json` or `*.events.json`, as written by
`anomaly score --events ... --clips ...`), or one such file. Clip and thumbnail paths in the JSON are
relative to the file's folder; only files inside the run folder are ever served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from footage.events_json import read_events_json
from review.store import DB_NAME


@dataclass(frozen=True)
class ReviewEvent:
    """One event of the run, with the absolute paths of its clip and thumbnail (None when absent or outside)."""

    data: dict[str, Any]
    clip: Path | None
    thumbnail: Path | None

    @property
    def id(self) -> str:
        return str(self.data["id"])


@dataclass
class ReviewRun:
    root: Path
    events: dict[str, ReviewEvent] = field(default_factory=dict)
    drift: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME


def events_files(path: Path) -> tuple[Path, list[Path]]:
    """The run folder and its events JSON files, for a folder or a single file."""
    path = Path(path)
    if path.is_file():
        return path.parent, [path]
    if not path.is_dir():
        raise ValueError(f"{path} is neither a run folder nor an events JSON file")
    found = sorted({*path.glob("events.json"), *path.glob("*.events.json")})
    if not found:
        raise ValueError(
            f"no events JSON in {path}: score with `anomaly score ... --events {path}/events.json --clips {path}/clips`"
        )
    return path, found


def inside(root: Path, relative: object, base: Path) -> Path | None:
    """`base / relative` if it is an existing file under `root` (no `..`, no link out), else None."""
    if not isinstance(relative, str) or not relative:
        return None
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(root.resolve()) or not candidate.is_file():
        return None
    return candidate


def load_run(path: Path) -> ReviewRun:
    root, files = events_files(path)
    run = ReviewRun(root=root.resolve(), files=files)
    for file in files:
        payload = read_events_json(file)
        for data in payload["events"]:
            event = ReviewEvent(
                data={**data, "threshold": payload.get("threshold"), "scored_at": payload.get("scored_at")},
                clip=inside(run.root, data.get("clip"), file.parent),
                thumbnail=inside(run.root, data.get("thumbnail"), file.parent),
            )
            run.events[event.id] = event
        run.drift.extend(payload.get("drift", []))
    return run
