"""Per-stream state: frame tags, in-order delivery, temporal smoothing and events, camera drift, idle expiry.

Frames of one stream are batched with other streams' frames and may finish decoding out of
order, but the event tracker must see them in the order they were sent. Each frame therefore
takes a slot in its stream's queue when it arrives; when it is scored the slot is filled, and
slots are released strictly from the head: the tracker is updated and the frame's result
published in send order. The camera's drift monitor (the stream id names the camera) is fed at the
same point, so it too sees the camera's frames in time order. Everything here runs on the event
loop, so no locks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from anomaly.drift import DriftTracker, DriftUpdate
from anomaly.events import Event, EventConfig, EventTracker, TrackerUpdate
from anomaly.frame_scores import FrameScore
from service.errors import ServiceError, unavailable
from service.live import LiveState
from service.settings import StreamSettings

log = logging.getLogger("anomaly.service")


@dataclass(frozen=True)
class FrameTag:
    frame_index: int
    timestamp_s: float


@dataclass
class StreamOutcome:
    """A frame's result in its stream: scores with the tracker's update, or why it was not scored."""

    tag: FrameTag
    scored: FrameScore | None = None
    update: TrackerUpdate | None = None
    error: ServiceError | None = None
    drift: DriftUpdate | None = None  # the camera's drift state after the frame (None: drift is off)


@dataclass
class Slot:
    tag: FrameTag
    future: asyncio.Future[StreamOutcome]
    scored: FrameScore | None = None
    error: ServiceError | None = None

    @property
    def filled(self) -> bool:
        return self.scored is not None or self.error is not None


@dataclass
class Stream:
    stream_id: str
    tracker: EventTracker
    last_seen: float
    next_index: int = 0
    websockets: int = 0
    frames: int = 0
    drift: DriftTracker | None = None  # the service's, fed with this stream's frames under its id (the camera)
    live: LiveState | None = None  # the live view's state of the stream (service.live), when it is on
    _slots: deque[Slot] = field(default_factory=deque)

    def tag(self, frame_index: int | None, timestamp_s: float | None, fps: float) -> FrameTag:
        """The client's tags, or the next index and index / fps where it sent none.

        The API bounds tags (index within int64, fps >= 0.01, finite timestamps), so the division stays
        finite; the check below is the last line that keeps a non-finite time out of a response.
        """
        index = self.next_index if frame_index is None else frame_index
        timestamp = float(index) / fps if timestamp_s is None else float(timestamp_s)
        if not math.isfinite(timestamp):
            raise ServiceError(422, "invalid_tag", f"frame {index} at {fps} fps has no finite timestamp")
        self.next_index = index + 1
        return FrameTag(index, timestamp)

    def reserve(self, tag: FrameTag, now: float) -> Slot:
        slot = Slot(tag, asyncio.get_running_loop().create_future())
        self._slots.append(slot)
        self.last_seen = now
        return slot

    def fill(self, slot: Slot, outcome: FrameScore | ServiceError, now: float) -> None:
        if isinstance(outcome, ServiceError):
            slot.error = outcome
        else:
            slot.scored = outcome
        self.last_seen = now
        while self._slots and self._slots[0].filled:
            self._publish(self._slots.popleft())

    def _publish(self, slot: Slot) -> None:
        result = StreamOutcome(slot.tag, scored=slot.scored, error=slot.error)
        if slot.scored is not None:
            try:
                result.update = self.tracker.update(slot.tag.frame_index, slot.tag.timestamp_s, slot.scored.score)
                self.frames += 1
            except Exception as exc:  # the frame still gets an answer, and later frames are not held up
                log.exception("event tracking failed on stream %s", self.stream_id)
                result.scored = None
                result.error = ServiceError(500, "internal_error", f"event tracking failed: {type(exc).__name__}")
        if result.scored is not None and self.drift is not None:
            result.drift = self._drift(slot.tag, result.scored)
        if not slot.future.done():
            slot.future.set_result(result)

    def _drift(self, tag: FrameTag, scored: FrameScore) -> DriftUpdate | None:
        """The camera's drift after this frame; a failure here is logged and costs the frame nothing."""
        assert self.drift is not None
        try:
            return self.drift.update(self.stream_id, tag.timestamp_s, scored.score)
        except Exception:
            log.exception("drift tracking failed on stream %s", self.stream_id)
            return None

    @property
    def pending(self) -> int:
        return len(self._slots)

    @property
    def busy(self) -> bool:
        return bool(self._slots) or self.websockets > 0


class StreamRegistry:
    def __init__(
        self,
        settings: StreamSettings,
        threshold: float | Callable[[str], float],
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[str], None] | None = None,
        drift: DriftTracker | None = None,
    ) -> None:
        """`threshold`: one for every stream, or the threshold of a stream's camera profile by stream id.
        `drift`: the cameras' drift monitors, fed with every scored frame under its stream's id."""
        self.settings = settings
        self.threshold = threshold
        self.clock = clock
        self.on_open = on_open
        self.drift = drift
        self._streams: dict[str, Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def get(self, stream_id: str) -> Stream | None:
        return self._streams.get(stream_id)

    def __iter__(self) -> Iterator[Stream]:
        """The open streams (a copy of the list: the registry may change while a caller iterates)."""
        return iter(list(self._streams.values()))

    def open(self, stream_id: str, retry_after_s: int) -> Stream:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.last_seen = self.clock()
            return stream
        if len(self._streams) >= self.settings.max_streams:
            self.expire()
            if len(self._streams) >= self.settings.max_streams:
                raise unavailable(
                    "too_many_streams",
                    f"the service already holds {self.settings.max_streams} streams; close one or retry later",
                    retry_after_s,
                )
        threshold = self.threshold(stream_id) if callable(self.threshold) else self.threshold
        tracker = EventTracker(stream_id, threshold, self.settings.events)
        stream = Stream(stream_id, tracker, self.clock(), drift=self.drift)
        self._streams[stream_id] = stream
        if self.on_open is not None:
            self.on_open(stream_id)
        return stream

    def close(self, stream_id: str) -> list[Event] | None:
        """Forget a stream; returns the events its open stretch finishes, or None if it is unknown."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        if stream.busy:
            raise ServiceError(409, "stream_busy", "the stream has frames in flight or an open WebSocket")
        del self._streams[stream_id]
        return stream.tracker.close()

    def expire(self) -> list[str]:
        """Drop streams idle for longer than the timeout (never one with frames in flight or a WebSocket)."""
        now = self.clock()
        idle = [
            sid for sid, s in self._streams.items() if not s.busy and now - s.last_seen > self.settings.idle_timeout_s
        ]
        for sid in idle:
            del self._streams[sid]
        return idle

    @property
    def event_config(self) -> EventConfig:
        return self.settings.events
