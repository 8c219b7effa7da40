"""Per-stream state: tags, results published in send order whatever order scoring finishes in, expiry."""

from __future__ import annotations

import asyncio

import pytest
from factories import frame_score

from anomaly.events import EventConfig, EventTracker
from service.errors import ServiceError
from service.settings import StreamSettings
from service.streams import StreamRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_tags_default_to_the_next_index_and_index_over_fps() -> None:
    reg = StreamRegistry(StreamSettings(), threshold=1.0)
    s = reg.open("cam", retry_after_s=1)
    assert (s.tag(None, None, 10.0).frame_index, s.tag(None, None, 10.0).timestamp_s) == (0, 0.1)
    t = s.tag(40, None, 10.0)
    assert (t.frame_index, t.timestamp_s) == (40, 4.0)
    t = s.tag(None, 9.5, 10.0)
    assert (t.frame_index, t.timestamp_s) == (41, 9.5)


def test_results_are_published_in_send_order_and_the_tracker_sees_frames_in_order() -> None:
    scores = [0.0, 3.0, 3.0, 0.0, 2.0, 0.0]
    config = EventConfig(window=2)

    async def main() -> list:
        reg = StreamRegistry(StreamSettings(events=config), threshold=1.0)
        s = reg.open("cam", retry_after_s=1)
        slots = [s.reserve(s.tag(None, None, 10.0), now=0.0) for _ in scores]
        # scoring finishes in a scrambled order; frame 3 failed to decode
        for i in (4, 1, 5, 3, 0, 2):
            assert not slots[0].future.done() or i != 4
            s.fill(slots[i], ServiceError(400, "corrupt_image", "bad") if i == 3 else frame_score(scores[i]), now=1.0)
            if i == 4:
                assert not any(slot.future.done() for slot in slots)  # frame 0 not scored yet: nothing published
        assert s.pending == 0 and not s.busy
        return [slot.future.result() for slot in slots]

    outcomes = asyncio.run(main())
    assert [o.tag.frame_index for o in outcomes] == list(range(6))
    assert outcomes[3].error is not None and outcomes[3].update is None
    tracker = EventTracker("cam", 1.0, config)
    for o in outcomes:
        if o.scored is None:
            continue
        expected = tracker.update(o.tag.frame_index, o.tag.timestamp_s, o.scored.score)
        assert (o.update.smoothed, o.update.started, o.update.ended) == (
            expected.smoothed,
            expected.started,
            expected.ended,
        )
    assert [o.update.started for o in outcomes if o.update] == [False, True, False, False, False]


def test_idle_streams_expire_but_not_while_busy_and_the_count_is_bounded() -> None:
    clock = Clock()
    reg = StreamRegistry(StreamSettings(idle_timeout_s=10, max_streams=2), threshold=1.0, clock=clock)
    a = reg.open("a", retry_after_s=1)
    reg.open("b", retry_after_s=1)
    with pytest.raises(ServiceError) as full:
        reg.open("c", retry_after_s=4)
    assert full.value.status == 503 and full.value.headers == {"Retry-After": "4"}
    a.websockets = 1  # an open WebSocket keeps its stream however quiet it is
    clock.now = 11.0
    assert reg.expire() == ["b"]
    reg.open("c", retry_after_s=1)  # room again
    with pytest.raises(ServiceError) as busy:
        reg.close("a")
    assert busy.value.status == 409
    a.websockets = 0
    assert reg.close("a") == [] and reg.get("a") is None
    assert reg.close("a") is None
    assert len(reg) == 1


def test_closing_a_stream_finishes_its_open_event() -> None:
    async def main() -> list:
        reg = StreamRegistry(StreamSettings(), threshold=1.0)
        s = reg.open("cam", retry_after_s=1)
        for value in (0.0, 5.0, 6.0):
            s.fill(s.reserve(s.tag(None, None, 10.0), now=0.0), frame_score(value), now=0.0)
        return reg.close("cam")

    (event,) = asyncio.run(main())
    assert (event.start_frame, event.end_frame, event.peak_score) == (1, 2, 6.0)
