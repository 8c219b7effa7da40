"""Turning per-frame scores into anomalous stretches (events), one frame at a time.

A safety analyst wants "an obstacle from 12.4 s to 14.1 s", not 25 flagged frames. The tracker is
incremental so the same code serves a recorded video (batch) and a live stream (service):

- scores are smoothed with a moving average over `window` frames (1 = no smoothing);
- an event opens when the smoothed score rises above `threshold`, and closes only when it falls
  below `threshold - hysteresis`, so a score hovering at the threshold does not flicker;
- gaps shorter than `merge_gap_s` between two stretches join them into one event;
- events shorter than `min_duration_s` are dropped as blips.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from pydantic import BaseModel, ConfigDict, Field


class EventConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(1, ge=1, description="frames in the moving average of scores used for events")
    hysteresis: float = Field(0.0, ge=0.0, description="score drop below the threshold that ends an event")
    min_duration_s: float = Field(0.0, ge=0.0, description="drop events shorter than this (seconds)")
    merge_gap_s: float = Field(0.0, ge=0.0, description="join events separated by less than this (seconds)")


def event_id(source: str, start_frame: int, end_frame: int) -> str:
    """A short name for an event that is the same in every run over the same footage (reviews refer to it)."""
    return hashlib.sha1(f"{source}|{start_frame}|{end_frame}".encode()).hexdigest()[:12]


@dataclass
class Event:
    source: str
    start_s: float
    end_s: float  # timestamp of the last anomalous frame
    start_frame: int
    end_frame: int  # index of the last anomalous frame (inclusive)
    peak_score: float
    peak_frame: int
    n_frames: int
    # Filled by whoever writes the run's outputs (None when not known); the tracker leaves them alone.
    camera: str | None = None  # the camera profile's name the run scored with
    signal: str | None = None  # the signal whose z-score was the largest at the peak frame
    clip: str | None = None  # the incident clip holding the event, relative to the events JSON's folder
    thumbnail: str | None = None  # JPEG of the clip's highest-scoring frame, likewise relative
    clip_start_s: float | None = None  # timestamp in the source where the clip begins (to seek to the event)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def id(self) -> str:
        return event_id(self.source, self.start_frame, self.end_frame)

    def to_dict(self) -> dict:
        return {**asdict(self), "duration_s": self.duration_s, "id": self.id}


@dataclass
class TrackerUpdate:
    """What one frame did to the event state."""

    smoothed: float
    active: bool  # inside an (unconfirmed or confirmed) anomalous stretch after this frame
    started: bool = False  # this frame opened a stretch
    ended: bool = False  # this frame closed a stretch
    finished: list[Event] = field(default_factory=list)  # events that are now final
    pending: bool = False  # a closed stretch may still merge with the next one (not final yet)


class EventTracker:
    """Streaming event detector for one source."""

    def __init__(self, source: str, threshold: float, config: EventConfig | None = None) -> None:
        self.source = source
        self.threshold = threshold
        self.config = config or EventConfig()
        self._recent: deque[float] = deque(maxlen=self.config.window)
        self._open: Event | None = None
        self._pending: Event | None = None  # closed, but may still merge with the next stretch

    def update(self, frame_index: int, timestamp_s: float, score: float) -> TrackerUpdate:
        self._recent.append(float(score))
        smoothed = sum(self._recent) / len(self._recent)
        cfg = self.config
        upd = TrackerUpdate(smoothed=smoothed, active=False)
        if self._pending is not None and timestamp_s - self._pending.end_s > cfg.merge_gap_s:
            upd.finished.extend(self._release_pending())
        if self._open is None:
            if smoothed > self.threshold:
                upd.started = True
                self._open = self._resume_or_new(frame_index, timestamp_s, smoothed)
        elif smoothed < self.threshold - cfg.hysteresis:
            upd.ended = True
            self._pending, self._open = self._open, None
            if cfg.merge_gap_s <= 0:
                upd.finished.extend(self._release_pending())
        if self._open is not None:
            ev = self._open
            ev.end_s, ev.end_frame, ev.n_frames = timestamp_s, frame_index, ev.n_frames + 1
            if smoothed > ev.peak_score:
                ev.peak_score, ev.peak_frame = smoothed, frame_index
            upd.active = True
        upd.pending = self._pending is not None
        return upd

    def _resume_or_new(self, frame_index: int, timestamp_s: float, smoothed: float) -> Event:
        if self._pending is not None:  # within merge_gap_s of the last stretch: continue it
            ev, self._pending = self._pending, None
            return ev
        return Event(self.source, timestamp_s, timestamp_s, frame_index, frame_index, smoothed, frame_index, 0)

    def _release_pending(self) -> list[Event]:
        ev, self._pending = self._pending, None
        if ev is None or ev.duration_s < self.config.min_duration_s:
            return []
        return [ev]

    def close(self) -> list[Event]:
        """End of input: the open stretch (if any) ends at the last frame."""
        if self._open is not None:
            self._pending, self._open = self._open, None
        return self._release_pending()


def track_source(
    source: str,
    rows: Iterable[tuple[int, float, float]],
    threshold: float,
    config: EventConfig | None = None,
) -> tuple[list[float], list[Event]]:
    """A whole recorded source through the streaming tracker: each frame's smoothed score, and the events.

    `rows` are (frame_index, timestamp_s, score) in time order. The service and `anomaly score` feed
    the same `EventTracker` frame by frame, so all three report the same events for the same scores.
    """
    tracker = EventTracker(source, threshold, config)
    smoothed: list[float] = []
    events: list[Event] = []
    for frame_index, timestamp_s, score in rows:
        update = tracker.update(int(frame_index), float(timestamp_s), float(score))
        smoothed.append(update.smoothed)
        events.extend(update.finished)
    events.extend(tracker.close())
    return smoothed, events


def find_events(
    source: str,
    rows: Iterable[tuple[int, float, float]],
    threshold: float,
    config: EventConfig | None = None,
) -> list[Event]:
    """Events of one source from (frame_index, timestamp_s, score) rows in time order."""
    return track_source(source, rows, threshold, config)[1]
