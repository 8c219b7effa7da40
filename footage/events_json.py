"""The events JSON of `anomaly score --events`: the threshold and every detected event."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from anomaly.events import Event


def write_events_json(path: Path, events: Sequence[Event], threshold: float) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"threshold": threshold, "events": [e.to_dict() for e in events]}
    path.write_text(json.dumps(payload, indent=2))
