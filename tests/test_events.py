import hashlib
import json
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from anomaly.events import Event, EventConfig, EventTracker, find_events, track_source
from footage.events_json import read_events_json, write_events_json

FPS = 10.0


def rows(scores, fps: float = FPS):
    """(frame_index, timestamp_s, score) rows at `fps`."""
    return [(i, i / fps, float(s)) for i, s in enumerate(scores)]


def events(scores, threshold: float = 1.0, **config) -> list[Event]:
    return list(find_events("cam", rows(scores), threshold, EventConfig(**config)))


def test_no_events_below_threshold():
    assert events([0.0, 0.5, 0.99, 1.0, 0.2]) == []  # equal to the threshold is not above it


def test_single_stretch():
    (ev,) = events([0, 0, 2, 3, 5, 2, 0, 0])
    assert (ev.source, ev.start_frame, ev.end_frame, ev.n_frames) == ("cam", 2, 5, 4)
    assert ev.start_s == pytest.approx(0.2)
    assert ev.end_s == pytest.approx(0.5)
    assert ev.duration_s == pytest.approx(0.3)
    assert (ev.peak_score, ev.peak_frame) == (5.0, 4)
    d = ev.to_dict()
    assert d["duration_s"] == pytest.approx(0.3)
    assert d["peak_frame"] == 4


def test_two_separate_stretches():
    evs = events([0, 2, 2, 0, 0, 0, 3, 0])
    assert [(e.start_frame, e.end_frame, e.peak_score) for e in evs] == [(1, 2, 2.0), (6, 6, 3.0)]


def test_hysteresis_keeps_an_event_open_while_hovering():
    hovering = [0, 1.5, 0.9, 0.8, 1.2, 0.7, 1.1, 0.4, 0]
    # without hysteresis the dips below 1 split it into three events
    assert [(e.start_frame, e.end_frame) for e in events(hovering)] == [(1, 1), (4, 4), (6, 6)]
    # with hysteresis 0.35 it only ends when the score falls below 0.65 (frame 7)
    (ev,) = events(hovering, hysteresis=0.35)
    assert (ev.start_frame, ev.end_frame, ev.n_frames, ev.peak_frame) == (1, 6, 6, 1)


def test_hysteresis_does_not_open_an_event():
    assert events([0, 0.8, 0.9, 0.95, 0.5], hysteresis=0.3) == []


def test_smoothing_suppresses_a_one_frame_spike():
    assert events([0, 0, 0, 2.5, 0, 0, 0], window=3) == []  # 2.5 / 3 < 1
    assert len(events([0, 0, 0, 2.5, 0, 0, 0], window=1)) == 1


def test_smoothing_delays_the_start_and_end():
    scores = [0] * 5 + [2] * 5 + [0] * 5  # raw stretch: frames 5..9
    (raw,) = events(scores)
    assert (raw.start_frame, raw.end_frame) == (5, 9)
    (smoothed,) = events(scores, window=3)
    # moving average over 3: 2/3, 4/3, 2, 2, 2, 4/3, 2/3 from frame 5 on
    assert (smoothed.start_frame, smoothed.end_frame) == (6, 10)
    assert smoothed.peak_score == pytest.approx(2.0)
    assert smoothed.start_s == pytest.approx(0.6)


def test_smoothed_value_is_reported():
    tracker = EventTracker("cam", 1.0, EventConfig(window=2))
    assert tracker.update(0, 0.0, 4.0).smoothed == 4.0  # fewer frames than the window so far
    assert tracker.update(1, 0.1, 0.0).smoothed == 2.0
    assert tracker.update(2, 0.2, 1.0).smoothed == 0.5


def test_min_duration_drops_short_blips():
    scores = [0, 2, 0, 0, 2, 2, 2, 2, 2, 0]  # a one-frame blip (0 s) and a 0.4 s stretch
    assert len(events(scores)) == 2
    (ev,) = events(scores, min_duration_s=0.3)
    assert (ev.start_frame, ev.end_frame) == (4, 8)


def test_merge_gap_joins_two_stretches():
    scores = [0, 2, 2, 0, 0, 3, 2, 0, 0, 0, 0, 0]  # gap: frames 3-4, next stretch at 0.5 s, 0.3 s after 0.2 s
    assert len(events(scores)) == 2
    (ev,) = events(scores, merge_gap_s=0.35)
    assert (ev.start_frame, ev.end_frame, ev.peak_score, ev.peak_frame) == (1, 6, 3.0, 5)
    assert ev.n_frames == 4  # anomalous frames only, not the gap
    # a gap longer than merge_gap_s keeps them apart
    assert len(events(scores, merge_gap_s=0.25)) == 2


def test_merge_then_min_duration():
    # two 0-s blips 0.2 s apart merge into one 0.2 s event that survives min_duration 0.15
    scores = [0, 2, 0, 2, 0, 0, 0, 0]
    assert events(scores, min_duration_s=0.15) == []
    (ev,) = events(scores, min_duration_s=0.15, merge_gap_s=0.25)
    assert (ev.start_frame, ev.end_frame) == (1, 3)


def test_open_event_is_closed_by_close():
    tracker = EventTracker("cam", 1.0)
    finished = []
    for i, t, s in rows([0, 0, 2, 3, 4]):
        finished += tracker.update(i, t, s).finished
    assert finished == []
    (ev,) = tracker.close()
    assert (ev.start_frame, ev.end_frame, ev.peak_score) == (2, 4, 4.0)
    assert tracker.close() == []  # nothing left


def test_close_releases_a_pending_event_waiting_for_a_merge():
    tracker = EventTracker("cam", 1.0, EventConfig(merge_gap_s=1.0))
    finished = []
    for i, t, s in rows([2, 2, 0, 0]):
        finished += tracker.update(i, t, s).finished
    assert finished == []  # might still merge with a stretch in the next second
    (ev,) = tracker.close()
    assert (ev.start_frame, ev.end_frame) == (0, 1)


def test_pending_event_is_released_once_the_gap_is_exceeded():
    tracker = EventTracker("cam", 1.0, EventConfig(merge_gap_s=0.25))
    out = [tracker.update(i, t, s) for i, t, s in rows([2, 0, 0, 0, 0])]
    assert [len(u.finished) for u in out] == [0, 0, 0, 1, 0]  # 0.3 s after the last anomalous frame


def test_update_flags():
    tracker = EventTracker("cam", 1.0)
    ups = [tracker.update(i, t, s) for i, t, s in rows([0, 2, 2, 0])]
    assert [u.active for u in ups] == [False, True, True, False]
    assert [u.started for u in ups] == [False, True, False, False]
    assert [u.ended for u in ups] == [False, False, False, True]
    assert [len(u.finished) for u in ups] == [0, 0, 0, 1]


def test_find_events_on_a_sequence():
    scores = [0.1, 0.2, 1.4, 1.8, 1.1, 0.3, 0.2, 0.1, 2.5, 0.2, 0.1, 1.5, 1.7, 1.6, 1.2, 0.9, 0.2]
    evs = list(find_events("drive.mp4", rows(scores, fps=5.0), 1.0, EventConfig(min_duration_s=0.1)))
    assert [(e.start_frame, e.end_frame, e.peak_frame) for e in evs] == [(2, 4, 3), (11, 14, 12)]
    assert all(e.source == "drive.mp4" for e in evs)
    assert evs[1].start_s == pytest.approx(2.2)
    assert evs[1].end_s == pytest.approx(2.8)


def test_find_events_handles_empty_input():
    assert find_events("x", [], 1.0) == []


def test_track_source_gives_each_frames_smoothed_score_and_the_trackers_events():
    scores = [0, 0, 2, 3, 0, 0, 0, 2, 0, 0]
    rows = [(i, i / 10, s) for i, s in enumerate(scores)]
    smoothed, events = track_source("a", rows, 1.0, EventConfig(window=2))
    assert smoothed == [0, 0, 1, 2.5, 1.5, 0, 0, 1, 1, 0]
    tracker = EventTracker("a", 1.0, EventConfig(window=2))
    expected = [e for row in rows for e in tracker.update(*row).finished] + tracker.close()
    assert [e.to_dict() for e in events] == [e.to_dict() for e in expected]
    assert [(e.start_frame, e.end_frame) for e in events] == [(3, 4)]  # 1.0 at frame 7 is not above 1.0


@pytest.mark.parametrize(
    "bad", [{"window": 0}, {"hysteresis": -0.1}, {"min_duration_s": -1}, {"merge_gap_s": -1}, {"colour": 1}]
)
def test_event_config_validation(bad):
    with pytest.raises(ValidationError):
        EventConfig(**bad)


def test_pending_says_when_a_closed_stretch_may_still_merge():
    tracker = EventTracker("cam", 1.0, EventConfig(merge_gap_s=0.25))
    out = [tracker.update(i, t, s) for i, t, s in rows([2, 0, 0, 0, 0])]
    assert [u.pending for u in out] == [False, True, True, False, False]  # released at 0.3 s
    assert not any(u.pending for u in [EventTracker("cam", 1.0).update(i, t, s) for i, t, s in rows([2, 0, 0])])


def test_an_events_id_is_stable_and_its_dict_keeps_the_old_keys():
    (ev,) = events([0, 0, 2, 3, 5, 2, 0, 0])
    assert ev.id == hashlib.sha1(b"cam|2|5").hexdigest()[:12]
    assert ev.id == events([0, 0, 2, 3, 5, 2, 0, 0])[0].id
    old = ["source", "start_s", "end_s", "start_frame", "end_frame", "peak_score", "peak_frame", "n_frames"]
    d = ev.to_dict()
    assert list(d)[:8] == old and d["duration_s"] == pytest.approx(0.3) and d["id"] == ev.id
    assert {k: d[k] for k in ("camera", "signal", "clip", "thumbnail", "clip_start_s")} == dict.fromkeys(
        ("camera", "signal", "clip", "thumbnail", "clip_start_s")
    )
    assert json.loads(json.dumps(d)) == d


def test_the_events_json_has_the_run_and_reads_back(tmp_path):
    (ev,) = events([0, 2, 3, 0])
    ev.camera = "van7"
    path = tmp_path / "out" / "events.json"
    when = datetime(2026, 11, 20, 8, 30, tzinfo=timezone.utc)
    write_events_json(path, [ev], 1.0, camera="van7", scored_at=when)
    payload = read_events_json(path)
    assert (payload["threshold"], payload["camera"], payload["scored_at"]) == (1.0, "van7", "2026-11-20T08:30:00+00:00")
    assert payload["events"] == [ev.to_dict()]
    assert [p.name for p in path.parent.iterdir()] == ["events.json"]  # no temporary file left


def test_an_events_json_of_an_older_release_reads_with_the_new_keys(tmp_path):
    path = tmp_path / "events.json"
    (ev,) = events([0, 2, 3, 0])
    old = {k: v for k, v in ev.to_dict().items() if k not in ("id", "camera", "signal", "clip", "thumbnail")}
    path.write_text(json.dumps({"threshold": 1.0, "events": [old]}))
    payload = read_events_json(path)
    assert (payload["camera"], payload["scored_at"]) == (None, None)
    assert payload["events"][0]["id"] == ev.id and payload["events"][0]["clip"] is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such events file"),
        ("{not json", "not valid JSON"),
        ('{"threshold": 1.0}', "no list of events"),
        ('{"threshold": "x", "events": []}', "no numeric threshold"),
        ('{"threshold": 1.0, "events": [{"source": "a"}]}', "event 0 lacks start_s"),
    ],
)
def test_a_missing_or_corrupt_events_json_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "events.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        read_events_json(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
