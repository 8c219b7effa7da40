"""The events JSON of `anomaly score --events`: the threshold, the run's camera and time, and every detected event.

Written atomically (a temporary file, then a rename) so that a reader (the review app) never sees half a file;
`read_events_json` is the one reader, so files of older releases (without `id`, `camera`, `scored_at` or the
clip fields) come back with those keys present.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anomaly.events import Event, event_id

# Keys every event of every release has, and those a later release added (None when unknown).
EVENT_KEYS = ("source", "start_s", "end_s", "start_frame", "end_frame", "peak_score", "peak_frame", "n_frames")
OPTIONAL_EVENT_KEYS = ("camera", "signal", "clip", "thumbnail", "clip_start_s")


def write_events_json(
    path: Path,
    events: Sequence[Event],
    threshold: float,
    *,
    camera: str | None = None,
    scored_at: datetime | None = None,
    drift: Sequence[dict[str, Any]] = (),
) -> None:
    """Write the events of a run; `scored_at` defaults to now (UTC); `drift`: the camera drift found
    (`anomaly.drift.DriftEvent.to_dict()`, with the source where each started and ended)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    when = (scored_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    payload = {
        "threshold": threshold,
        "scored_at": when.isoformat(timespec="seconds"),
        "camera": camera,
        "events": [e.to_dict() for e in events],
        "drift": list(drift),
    }
    part = path.with_name(f".{path.name}.part")
    part.write_text(json.dumps(payload, indent=2))
    os.replace(part, path)


def read_events_json(path: Path) -> dict[str, Any]:
    """The payload of an events JSON, checked; a missing or corrupt file is a one-line ValueError."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such events file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the events file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        raise ValueError(f"{path}: not an events JSON (no list of events)")
    if not isinstance(payload.get("threshold"), (int, float)):
        raise ValueError(f"{path}: not an events JSON (no numeric threshold)")
    payload.setdefault("scored_at", None)
    payload.setdefault("camera", None)
    payload.setdefault("drift", [])
    if not isinstance(payload["drift"], list):
        raise ValueError(f"{path}: not an events JSON (drift is not a list)")
    payload["events"] = [_checked_event(path, i, e) for i, e in enumerate(payload["events"])]
    return payload


def _checked_event(path: Path, i: int, event: Any) -> dict[str, Any]:
    """One event of the file with every key of this release (an older file's gain None and their `id`)."""
    if not isinstance(event, dict):
        raise ValueError(f"{path}: event {i} is not an object")
    missing = [k for k in EVENT_KEYS if k not in event]
    if missing:
        raise ValueError(f"{path}: event {i} lacks {', '.join(missing)}")
    for key in OPTIONAL_EVENT_KEYS:
        event.setdefault(key, None)
    event.setdefault("duration_s", event["end_s"] - event["start_s"])
    event.setdefault("id", event_id(event["source"], event["start_frame"], event["end_frame"]))
    return event
