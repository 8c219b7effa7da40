"""Incident clips (`anomaly score --events E --clips DIR`): one browser-playable H.264 MP4 and JPEG per stretch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from factories import TINY, road_frames, video_with_square, write_video
from typer.testing import CliRunner

from anomaly.config import SIGNAL_NAMES
from anomaly.events import Event, EventConfig, EventTracker
from anomaly.preprocess import Preprocessor
from batch.local import score_sources
from cli.main import app
from footage.clips import ClipFrame, ClipRecorder, clip_size
from footage.events_json import read_events_json
from footage.scores_csv import WrittenRows

FPS = 10.0
SOURCE = "drives/a.mp4"
HEAT = np.zeros((TINY.preprocess.height, TINY.preprocess.width), np.float32)


def record(
    directory: Path,
    scores: Sequence[float],
    *,
    context_s: float = 0.5,
    frames: np.ndarray | None = None,
    signals: Sequence[str] | None = None,
    fail_at: int | None = None,
    **event_config: float,
) -> list[Event]:
    """Drive a recorder with a tracker over `scores` (threshold 1) as `anomaly score` does; the source's events."""
    frames = road_frames(len(scores)) if frames is None else frames
    tracker = EventTracker(SOURCE, 1.0, EventConfig(**event_config))
    events: list[Event] = []
    with ClipRecorder(directory, Preprocessor(TINY.preprocess), lambda _: FPS, context_s=context_s) as recorder:
        for i, score in enumerate(scores):
            if i == fail_at:
                raise RuntimeError("scoring broke down")
            update = tracker.update(i, i / FPS, score)
            signal = signals[i] if signals else None
            recorder.add(ClipFrame(SOURCE, frames[i], HEAT, score, 1.0, i / FPS, i, signal), update)
            events.extend(update.finished)
        last = tracker.close()
        recorder.end_source(SOURCE, last)
    return events + last


def decoded(path: Path) -> tuple[str, str, int, int, int]:
    """(codec, pixel format, width, height, frames decoded) of a video, read with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        n = sum(1 for _ in container.decode(stream))
        ctx = stream.codec_context
        return ctx.name, ctx.format.name, ctx.width, ctx.height, n


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_a_stretch_becomes_an_h264_clip_with_context_and_a_thumbnail(tmp_path):
    scores = [0.0] * 20 + [3.0] * 5 + [0.0] * 20  # frames 20..24, 0.5 s (5 frames) of context each side
    (ev,) = record(tmp_path, scores)
    assert files(tmp_path) == ["a_000015.jpg", "a_000015.mp4"]
    assert decoded(tmp_path / "a_000015.mp4") == ("h264", "yuv420p", 96, 64, 5 + 5 + 5)
    data = (tmp_path / "a_000015.mp4").read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # index first: a browser plays it before it has it all
    assert (ev.clip, ev.thumbnail, ev.clip_start_s) == ("a_000015.mp4", "a_000015.jpg", 1.5)
    thumb = cv2.imread(str(tmp_path / "a_000015.jpg"))
    assert thumb is not None and thumb.shape == (64, 96, 3)


def test_the_context_is_cut_at_the_ends_of_the_source(tmp_path):
    scores = [0.0, 3.0, 3.0] + [0.0] * 10 + [3.0, 3.0]  # 1 frame before the first stretch; none after the second
    first, second = record(tmp_path, scores)
    assert (first.clip, second.clip) == ("a_000000.mp4", "a_000008.mp4")
    assert decoded(tmp_path / "a_000000.mp4")[-1] == 1 + 2 + 5
    assert decoded(tmp_path / "a_000008.mp4")[-1] == 5 + 2


def test_a_blip_dropped_as_too_short_leaves_no_file(tmp_path):
    scores = [0.0] * 10 + [3.0] + [0.0] * 10
    assert record(tmp_path, scores, min_duration_s=0.3) == []
    assert files(tmp_path) == []


def test_a_kept_event_keeps_its_clip_when_a_blip_shares_it(tmp_path):
    scores = [0.0] * 5 + [3.0] + [0.0] * 3 + [3.0] * 6 + [0.0] * 10
    (ev,) = record(tmp_path, scores, min_duration_s=0.3)
    assert (ev.start_frame, ev.clip) == (9, "a_000000.mp4")
    assert decoded(tmp_path / "a_000000.mp4")[-1] == 5 + 10 + 5  # the blip's clip went on into the event's


def test_stretches_merged_by_the_gap_and_events_close_together_share_one_clip(tmp_path):
    scores = [0.0] * 10 + [3.0] * 3 + [0.0] * 3 + [3.0] * 3 + [0.0] * 20
    (merged,) = record(tmp_path / "merged", scores, merge_gap_s=0.45)
    assert (merged.start_frame, merged.end_frame, merged.clip) == (10, 18, "a_000005.mp4")
    assert decoded(tmp_path / "merged" / merged.clip)[-1] == 5 + 9 + 5
    first, second = record(tmp_path / "apart", scores)  # two events, the second within the first's context
    assert first.id != second.id
    assert first.clip == second.clip == "a_000005.mp4" and first.clip_start_s == second.clip_start_s == 0.5
    assert files(tmp_path / "apart") == ["a_000005.jpg", "a_000005.mp4"]


def test_a_pending_event_keeps_the_clip_open_past_the_context(tmp_path):
    scores = [0.0] * 10 + [3.0] * 3 + [0.0] * 30
    (ev,) = record(tmp_path, scores, context_s=0.2, merge_gap_s=0.95)
    # frames 8..12, then every frame while the event may still merge (up to 0.95 s after frame 12)
    assert decoded(tmp_path / ev.clip)[-1] == 2 + 3 + 9


def test_the_peak_frames_strongest_signal_is_named(tmp_path):
    scores = [0.0] * 5 + [2.0, 4.0, 2.0] + [0.0] * 5
    signals = ["recon"] * 6 + ["spatial"] + ["recon"] * 6
    (ev,) = record(tmp_path, scores, signals=signals)
    assert (ev.peak_frame, ev.signal) == (6, "spatial")


def test_an_error_mid_clip_leaves_neither_a_partial_nor_a_final_file(tmp_path):
    scores = [0.0] * 5 + [3.0] * 10
    with pytest.raises(RuntimeError, match="broke down"):
        record(tmp_path, scores, fail_at=10)
    assert files(tmp_path) == []


def test_frames_are_downscaled_to_an_even_size_at_most_640_wide(tmp_path):
    assert clip_size(1920, 1080) == (640, 360)
    assert clip_size(700, 395) == (640, 360)
    assert clip_size(97, 63) == (96, 62)
    frames = np.stack([cv2.resize(f, (701, 395)) for f in road_frames(6)])
    (ev,) = record(tmp_path, [3.0] * 6, frames=frames)
    assert decoded(tmp_path / ev.clip)[2:] == (640, 360, 6)


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    return video_with_square(tmp_path_factory.mktemp("drive") / "van7.mp4", 30, seed=1, anomalous=slice(10, 15))


def test_scoring_writes_clips_that_the_events_json_points_at(tiny_trained, drive, tmp_path):
    everything = tiny_trained.detector.with_threshold(-1e9)  # one event over the whole drive
    events_path = tmp_path / "out" / "events.json"
    summary = score_sources(
        everything,
        [str(drive)],
        tmp_path / "s.csv",
        events_path=events_path,
        clips_dir=tmp_path / "clips",
        camera="van7",
        progress=False,
    )
    payload = read_events_json(events_path)
    assert payload["camera"] == "van7" and payload["scored_at"].endswith("+00:00")
    (ev,) = payload["events"]
    assert (ev["clip"], ev["thumbnail"]) == ("../clips/van7_000000.mp4", "../clips/van7_000000.jpg")
    assert ev["id"] == summary.events[0].id and ev["camera"] == "van7" and ev["signal"] in SIGNAL_NAMES
    for key in ("clip", "thumbnail"):
        assert (events_path.parent / ev[key]).is_file()
    codec, *_, n_frames = decoded(events_path.parent / ev["clip"])
    assert (codec, n_frames) == ("h264", 30)
    cap = cv2.VideoCapture(str(events_path.parent / ev["clip"]))
    assert cap.read()[0]  # OpenCV plays it too


def test_scoring_refuses_clips_without_events_or_when_resuming(tiny_trained, drive, tmp_path):
    det = tiny_trained.detector
    with pytest.raises(ValueError, match="--clips needs --events"):
        score_sources(det, [str(drive)], tmp_path / "s.csv", clips_dir=tmp_path / "c", progress=False)
    resume = WrittenRows(last_index={}, rows={})
    with pytest.raises(ValueError, match="--clips cannot continue"):
        score_sources(
            det, [str(drive)], tmp_path / "s.csv", events_path=tmp_path / "e.json", clips_dir=tmp_path / "c",
            resume_from=resume, progress=False,
        )  # fmt: skip


def test_the_cli_refuses_clips_without_events_in_one_line(tiny_trained, drive, tmp_path):
    args = ["score", str(drive), "-m", str(tiny_trained.path), "-o", str(tmp_path / "s.csv"), "--clips", "c"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: --clips needs --events FILE: the events JSON is what points "
                                                   "at the clips"]  # fmt: skip
    assert not (tmp_path / "s.csv").exists()


def test_a_source_that_breaks_off_keeps_its_clip_and_the_next_source_gets_its_own(tiny_trained, drive, tmp_path):
    cut = write_video(tmp_path / "cut.avi", road_frames(20, seed=4))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # decoding stops with an error halfway
    summary = score_sources(
        tiny_trained.detector.with_threshold(-1e9),
        [str(cut), str(drive)],
        tmp_path / "s.csv",
        events_path=tmp_path / "events.json",
        clips_dir=tmp_path / "clips",
        progress=False,
        on_error=lambda *_: None,
    )
    assert str(cut) in summary.with_problems
    assert [(e.source, e.clip) for e in summary.events] == [
        (str(cut), "clips/cut_000000.mp4"),
        (str(drive), "clips/van7_000000.mp4"),
    ]
    assert decoded(tmp_path / "clips" / "cut_000000.mp4")[-1] == summary.frames_per_source[str(cut)]
    assert files(tmp_path / "clips") == ["cut_000000.jpg", "cut_000000.mp4", "van7_000000.jpg", "van7_000000.mp4"]


def test_scoring_that_dies_mid_clip_leaves_no_clip_file(tiny_trained, drive, tmp_path, monkeypatch):
    det = tiny_trained.detector.with_threshold(-1e9)
    real, calls = type(det).score_prepared, []

    def dying(detector, images):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt  # as Ctrl-C would
        return real(detector, images)

    monkeypatch.setattr(type(det), "score_prepared", dying)
    with pytest.raises(KeyboardInterrupt):
        score_sources(
            det, [str(drive)], tmp_path / "s.csv", batch_size=4, events_path=tmp_path / "e.json",
            clips_dir=tmp_path / "clips", progress=False,
        )  # fmt: skip
    assert files(tmp_path / "clips") == [] and not (tmp_path / "e.json").exists()
