"""Incident clips: each anomalous stretch, with a few seconds before and after, as a short H.264 MP4 and a JPEG.

An analyst reviews flagged stretches in a browser, so a clip must play there (H.264, yuv420p, even size, the
index at the front) and be small (at most 640 px wide). Each frame shows the heat map and the score so far as a
line along the bottom, with the threshold across it.

The recorder is fed the scored frames of each source in order, with the event tracker's update of each frame,
and never decodes anything again: the frames before a stretch come from a ring buffer of `context_s` seconds of
already downscaled frames. The rule that keeps it right whatever the tracker's merge gap, minimum duration and
hysteresis do: a clip opens at the first frame that starts a stretch, takes every frame while the tracker is
active or an event is pending (may still merge), and closes `context_s` after the last active frame once nothing
is pending. Events that become final while it is open belong to it (several may share one clip); a clip that got
none (a blip dropped as too short) is deleted. Files are encoded under a temporary name and renamed when done,
so a clip on disk is always complete; an error or an interruption removes the partial file.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np

from anomaly.events import Event, TrackerUpdate
from anomaly.preprocess import Preprocessor
from footage.heatmap import draw_annotation

MAX_WIDTH = 640  # px: small files that still show an obstacle
STRIP_FRACTION = 0.15  # of the frame's height, at the bottom, for the score line
# ultrafast: 1.8 ms a 640x360 frame against veryfast's 5.9 ms on a 2-core CPU, for files about 1.7x as large
# (4 KB a frame: a 7 s clip at 15 frames/s is about 0.4 MB)
ENCODER_OPTIONS = {"preset": "ultrafast", "crf": "26"}
JPEG_QUALITY = 85
QUEUE_DEPTH = 16  # frames waiting to be drawn and encoded: bounds memory, and an error surfaces within as many


@dataclass(frozen=True)
class ClipFrame:
    """One scored frame, as the recorder needs it."""

    source: str
    image: np.ndarray  # HxWx3 uint8 BGR as decoded
    heat: np.ndarray  # the frame's heat map (model input size)
    score: float
    threshold: float
    timestamp_s: float
    index: int  # frame index in the source
    signal: str | None = None  # the signal with the largest z-score in this frame, if known


def clip_size(width: int, height: int, max_width: int = MAX_WIDTH) -> tuple[int, int]:
    """The clip's (width, height): at most `max_width` wide, aspect kept, both even (yuv420p needs it)."""
    w = max(2, min(width, max_width) // 2 * 2)
    return w, max(2, int(round(height * w / width)) // 2 * 2)


def fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The image at `size` (width, height); a copy either way, so a ring buffer never holds a batch's memory."""
    if (image.shape[1], image.shape[0]) == size:
        return image.copy()
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def draw_score_strip(frame: np.ndarray, scores: Sequence[float], threshold: float) -> np.ndarray:
    """Draw the scores so far as a line in a darkened strip along the bottom, the threshold as a red line."""
    h, w = frame.shape[:2]
    strip_h = max(8, int(round(STRIP_FRACTION * h)))
    strip = frame[h - strip_h :]
    strip[:] = cv2.convertScaleAbs(strip, alpha=0.35)
    values = np.asarray(scores, np.float64)
    lo, hi = min(float(values.min()), threshold), max(float(values.max()), threshold)
    span = max(hi - lo, 1e-6)
    top, bottom = h - strip_h + 2, h - 3

    def y(v: np.ndarray | float) -> np.ndarray:
        return np.round(bottom - (np.asarray(v) - lo) / span * (bottom - top)).astype(np.int32)

    cv2.line(frame, (0, int(y(threshold))), (w - 1, int(y(threshold))), (0, 0, 255), 1, cv2.LINE_AA)
    xs = np.round(np.linspace(0, w - 1, len(values)) if len(values) > 1 else np.array([w - 1])).astype(np.int32)
    points = np.stack([xs, y(values)], axis=1)
    cv2.polylines(frame, [points.reshape(-1, 1, 2)], False, (255, 255, 255), 1, cv2.LINE_AA)
    colour = (0, 0, 255) if values[-1] > threshold else (0, 200, 0)
    cv2.circle(frame, (int(points[-1, 0]), int(points[-1, 1])), 2, colour, -1, cv2.LINE_AA)
    return frame


class ClipFile:
    """One MP4 being encoded under a temporary name (`.name.mp4.part` beside it), renamed only when complete."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(f".{self.path.name}.part")
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.part), mode="w", format="mp4", options={"movflags": "+faststart"})
        try:
            self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            self._stream.width, self._stream.height = size
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = dict(ENCODER_OPTIONS)
        except BaseException:
            self.discard()
            raise

    def write(self, bgr: np.ndarray) -> None:
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(bgr, format="bgr24")):
            self._container.mux(packet)
        self.frames += 1

    def finish(self) -> None:
        """Flush the encoder, write the index at the front, and give the file its name."""
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            os.replace(self.part, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Drop the partial file (an error, an interruption, or a clip no event kept)."""
        with contextlib.suppress(Exception):  # the file goes whatever state the encoder is in
            self._container.close()
        self.part.unlink(missing_ok=True)


def write_jpeg(path: Path, bgr: np.ndarray) -> None:
    """A JPEG written under a temporary name and renamed, like the clips."""
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"cannot encode the thumbnail {path}")
    part = path.with_name(f".{path.name}.part")
    part.write_bytes(data.tobytes())
    os.replace(part, path)


class _Background:
    """One thread that draws and encodes clip frames, in order, while the caller scores the next batch
    (numpy, OpenCV and the encoder let go of the GIL). At most `QUEUE_DEPTH` frames wait."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clips")
        self._pending: deque[Future[None]] = deque()

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > QUEUE_DEPTH:
            self._pending.popleft().result()  # re-raises the worker's error here

    def drain(self) -> None:
        """Wait for every queued frame; the first error among them is raised."""
        while self._pending:
            self._pending.popleft().result()

    def abandon(self) -> None:
        """Drop the queued frames and wait for the one being encoded, whatever its outcome (the error path)."""
        for future in self._pending:
            future.cancel()
        for future in self._pending:
            with contextlib.suppress(BaseException):
                future.result()
        self._pending.clear()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Kept:
    """A frame kept for a clip: downscaled, not drawn yet (drawing needs the scores of the clip before it)."""

    image: np.ndarray
    heat: np.ndarray
    score: float
    threshold: float
    timestamp_s: float
    index: int
    signal: str | None


@dataclass
class _OpenClip:
    file: ClipFile
    start_frame: int
    start_s: float
    links: tuple[str, str]  # the clip's and the thumbnail's paths as the events JSON gives them
    scores: list[float] = field(default_factory=list)
    signals: dict[int, str | None] = field(default_factory=dict)  # by frame index, to name an event's peak
    worst: tuple[float, np.ndarray] | None = None  # the highest score and its drawn frame (the thumbnail)
    since_active: int = 0  # frames written after the last active one
    events: list[Event] = field(default_factory=list)
    last_index: int = -1


class _SourceClips:
    """The clips of one source: the ring buffer of recent frames and the clip being written, if any."""

    def __init__(self, recorder: ClipRecorder, source: str, fps: float, context_frames: int) -> None:
        self.recorder, self.source, self.fps = recorder, source, fps
        self.context_frames = context_frames
        self.ring: deque[_Kept] = deque(maxlen=context_frames)
        self.size: tuple[int, int] | None = None
        self.clip: _OpenClip | None = None

    def add(self, frame: ClipFrame, update: TrackerUpdate) -> None:
        if self.size is None:
            self.size = clip_size(frame.image.shape[1], frame.image.shape[0], self.recorder.max_width)
        kept = _Kept(
            fit(frame.image, self.size), np.array(frame.heat), float(frame.score), float(frame.threshold),
            float(frame.timestamp_s), int(frame.index), frame.signal,
        )  # fmt: skip
        if self.clip is not None:
            self.assign(update.finished)
            self.close_if_done(update)
        if self.clip is None and update.started:  # the clip begins with the buffered frames before this one
            self.clip = self.recorder.open_clip(self.source, self.ring[0] if self.ring else kept, self.fps, self.size)
            for earlier in self.ring:
                self.write(earlier)
        self.ring.append(kept)
        if self.clip is not None:
            self.write(kept)
            self.clip.since_active = 0 if update.active else self.clip.since_active + 1
            self.close_if_done(update)

    def write(self, kept: _Kept) -> None:
        clip = self.clip
        assert clip is not None
        clip.scores.append(kept.score)
        clip.signals[kept.index] = kept.signal
        clip.last_index = kept.index
        self.recorder.background.submit(self.draw_and_encode, clip, kept, len(clip.scores))

    def draw_and_encode(self, clip: _OpenClip, kept: _Kept, n_scores: int) -> None:
        """On the background thread: the frame with its heat map and the clip's first `n_scores` scores."""
        drawn = draw_annotation(kept.image, kept.heat, kept.score, kept.threshold, kept.timestamp_s, self.recorder.pre)
        drawn = draw_score_strip(drawn, clip.scores[:n_scores], kept.threshold)
        clip.file.write(drawn)
        if clip.worst is None or kept.score > clip.worst[0]:
            clip.worst = (kept.score, drawn)

    def assign(self, events: Sequence[Event]) -> None:
        """Events that became final belong to the open clip when their frames lie in it."""
        clip = self.clip
        if clip is None:
            return
        for ev in events:
            if ev.source == self.source and clip.start_frame <= ev.start_frame and ev.end_frame <= clip.last_index:
                ev.clip, ev.thumbnail = clip.links
                ev.clip_start_s = clip.start_s
                ev.signal = clip.signals.get(ev.peak_frame, ev.signal)
                clip.events.append(ev)

    def close_if_done(self, update: TrackerUpdate) -> None:
        """Close `context_s` after the last active frame, once no event may still grow."""
        if self.clip is None or update.active or update.pending:
            return
        if self.clip.since_active >= self.context_frames:
            self.end(error=False)

    def end(self, *, error: bool) -> None:
        """Close the open clip: kept when an event is assigned to it, else (or on an error) removed."""
        clip, self.clip = self.clip, None
        if clip is None:
            return
        background = self.recorder.background
        if error or not clip.events:
            background.abandon()
            clip.file.discard()
            return
        try:
            background.drain()
        except BaseException:
            background.abandon()
            clip.file.discard()
            raise
        clip.file.finish()
        assert clip.worst is not None
        write_jpeg(clip.file.path.with_suffix(".jpg"), clip.worst[1])
        self.recorder.written.append(clip.file.path)


class ClipRecorder:
    """Writes the incident clips of every source scored, fed frame by frame (see the module's docstring).

    `fps_of(source)` gives the rate at which the source's frames are fed (asked once per source); the events'
    `clip` and `thumbnail` are made relative to `links_relative_to` (the events JSON's folder). Use it as a
    context manager, or call `close(error=...)`: an exception removes every partial clip.
    """

    def __init__(
        self,
        directory: Path,
        preprocessor: Preprocessor,
        fps_of: Callable[[str], float],
        *,
        context_s: float = 2.0,
        max_width: int = MAX_WIDTH,
        links_relative_to: Path | None = None,
    ) -> None:
        if context_s < 0:
            raise ValueError(f"clip context must be 0 s or more, not {context_s}")
        self.directory = Path(directory)
        self.pre = preprocessor
        self.fps_of = fps_of
        self.context_s = context_s
        self.max_width = max_width
        self.links_relative_to = Path(links_relative_to) if links_relative_to is not None else self.directory
        self.written: list[Path] = []  # clips kept so far, in the order they closed
        self.background = _Background()
        self._sources: dict[str, _SourceClips] = {}
        self._names: dict[str, str] = {}  # file stem -> the source that has it (two sources, one stem)

    def add(self, frame: ClipFrame, update: TrackerUpdate) -> None:
        """The next frame of `frame.source` and what it did to that source's event tracker."""
        clips = self._sources.get(frame.source)
        if clips is None:
            fps = float(self.fps_of(frame.source))
            context = max(0, int(round(self.context_s * fps)))
            clips = self._sources[frame.source] = _SourceClips(self, frame.source, fps, context)
        clips.add(frame, update)

    def end_source(self, source: str, events: Sequence[Event] = ()) -> None:
        """The source has no more frames (it ended, or broke off): `events` are the tracker's last
        (`tracker.close()`); its open clip is closed."""
        clips = self._sources.pop(source, None)
        if clips is not None:
            clips.assign(events)
            clips.end(error=False)

    def close(self, error: bool = False) -> None:
        """End every source; with `error` (an exception, an interruption) remove their partial clips instead."""
        sources, self._sources = list(self._sources.values()), {}
        try:
            for clips in sources:
                clips.end(error=error)
        except BaseException:
            for clips in sources:
                clips.end(error=True)
            raise
        finally:
            self.background.shutdown()

    def __enter__(self) -> ClipRecorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(error=exc_type is not None)

    def open_clip(self, source: str, start: _Kept, fps: float, size: tuple[int, int]) -> _OpenClip:
        """Start encoding a clip of `source` whose first frame is `start`."""
        path = self.directory / f"{self._stem(source)}_{start.index:06d}.mp4"
        links = (self._link(path), self._link(path.with_suffix(".jpg")))
        return _OpenClip(ClipFile(path, fps, size), start.index, start.timestamp_s, links)

    def _stem(self, source: str) -> str:
        """The source's file stem; a second source with the same stem gets a suffix, so no clip is overwritten."""
        stem = Path(source).stem or "source"
        name, n = stem, 1
        while self._names.setdefault(name, source) != source:
            n += 1
            name = f"{stem}-{n}"
        return name

    def _link(self, path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), self.links_relative_to.resolve())).as_posix()
