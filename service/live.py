"""The live view's state: each open stream's latest preview frame and its recent scores, as JSON snapshots.

Cheap by construction, since it runs beside the scoring of every frame:

- a preview is kept for at most `frames_per_s` frames per stream and second: the decode thread shrinks
  that frame to `max_width` (the full-size frame is never kept), and the frame's heat map is copied
  (a scored row is a view into its whole batch's heat maps);
- the JPEG (frame + heat map overlay, `footage.heatmap.heat_overlay`) is encoded only when a browser
  asks for it, in a worker thread, once per preview version;
- the score history is pooled into `history_points` bins over `history_s` of stream time (a bin keeps
  its highest score, so a one-frame spike still shows), in a bounded deque;
- one snapshot is built per push interval, whatever the number of viewers.

A stream's `LiveState` hangs on its `Stream`, so it goes away with the stream (closed or expired).
Everything but the JPEG encoding runs on the event loop: no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import cv2
import numpy as np

from anomaly.preprocess import Preprocessor
from footage.heatmap import heat_overlay
from service.settings import LiveSettings

if TYPE_CHECKING:
    from service.streams import Stream, StreamOutcome


def shrink(frame_bgr: np.ndarray, max_width: int) -> np.ndarray:
    """The frame at most `max_width` wide (aspect kept; never enlarged). A copy either way: the caller keeps it."""
    h, w = frame_bgr.shape[:2]
    if w <= max_width:
        return frame_bgr.copy()
    size = (max_width, max(1, round(h * max_width / w)))
    return cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)


def overlay_jpeg(preview: Preview, preprocessor: Preprocessor, quality: int) -> bytes:
    """The preview with its heat map overlaid, as a JPEG (blocking: run it in a worker thread)."""
    image = heat_overlay(preview.frame, preview.heatmap, preprocessor, preview.threshold)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - encoding a valid uint8 image does not fail
        raise RuntimeError("JPEG encoding failed")
    return jpeg.tobytes()


@dataclass(frozen=True)
class Preview:
    """A scored frame as the live view shows it; never modified, so a worker thread may read it."""

    frame: np.ndarray  # BGR, at most `max_width` wide
    heatmap: np.ndarray  # the frame's own heat map (model input size)
    threshold: float
    version: int


@dataclass
class LiveState:
    """One stream's live view: its latest result, its score history in bins, its latest preview."""

    bin_s: float
    history_s: float
    points: deque[tuple[float, float, bool]]  # (timestamp_s, highest score, any frame flagged) per bin
    latest: dict[str, Any] = field(default_factory=dict)
    event_since_s: float | None = None
    preview: Preview | None = None
    jpeg: tuple[int, bytes] | None = None  # (preview version, JPEG) of the last one encoded
    next_preview_at: float = -math.inf  # monotonic time from which the next decoded frame is kept

    @classmethod
    def of(cls, settings: LiveSettings) -> LiveState:
        points: deque[tuple[float, float, bool]] = deque(maxlen=settings.history_points)
        return cls(settings.history_s / settings.history_points, settings.history_s, points)

    def preview_due(self, now: float, frames_per_s: float) -> bool:
        """Whether the frame being decoded now should be kept as a preview (claims the slot if so)."""
        if now < self.next_preview_at:
            return False
        self.next_preview_at = now + 1.0 / frames_per_s
        return True

    def record(self, outcome: StreamOutcome, preview_frame: np.ndarray | None) -> None:
        """A published (in send order) result; `preview_frame`: its shrunk frame when one was kept."""
        scored = outcome.scored
        if scored is None:
            return
        ts = outcome.tag.timestamp_s
        self._add_point(ts, scored.score, scored.is_anomaly)
        update, drift = outcome.update, outcome.drift
        if update is not None and update.active:
            if update.started or self.event_since_s is None:
                self.event_since_s = ts
        else:
            self.event_since_s = None
        self.latest = {
            "frame_index": outcome.tag.frame_index,
            "timestamp_s": ts,
            "score": scored.score,
            "is_anomaly": scored.is_anomaly,
            "threshold": scored.threshold,
            "profile": scored.profile,
            "smoothed_score": None if update is None else update.smoothed,
            "drift": None if drift is None else {"drifting": drift.drifting, "exceed_fraction": drift.exceed_fraction},
        }
        if preview_frame is not None:
            version = 1 if self.preview is None else self.preview.version + 1
            self.preview = Preview(preview_frame, scored.heatmap, scored.threshold, version)

    def _add_point(self, ts: float, score: float, flagged: bool) -> None:
        """Pool into the current bin (keeping the max), open a new one, or restart after time went back."""
        if self.points and ts < self.points[-1][0] - self.bin_s:
            self.points.clear()  # the stream restarted its clock (a new clip): the old minute no longer fits
        if self.points and ts < self.points[-1][0] + self.bin_s:
            t0, best, any_flag = self.points[-1]
            self.points[-1] = (t0, max(best, score), any_flag or flagged)
        else:
            self.points.append((ts, score, flagged))
        while self.points and self.points[0][0] < ts - self.history_s:
            self.points.popleft()

    def view(self, stream: Stream, now: float) -> dict[str, Any]:
        """This stream's entry of a snapshot (JSON-ready; floats rounded to keep it small)."""
        ts, scores, flags = zip(*self.points, strict=True) if self.points else ((), (), ())
        version = None if self.preview is None else self.preview.version
        return {
            "stream_id": stream.stream_id,
            **self.latest,
            "event_open": self.event_since_s is not None,
            "event_since_s": self.event_since_s,
            "frames": stream.frames,
            "websockets": stream.websockets,
            "idle_s": round(max(0.0, now - stream.last_seen), 2),
            "history": {"t": [round(t, 3) for t in ts], "score": [round(s, 3) for s in scores], "anomaly": flags},
            "frame_url": None if version is None else f"v1/live/streams/{stream.stream_id}/frame.jpg?v={version}",
        }


class LiveView:
    """The service's live view: per-stream state factory, shared snapshots, and the viewers' count."""

    def __init__(self, settings: LiveSettings, preprocessor: Preprocessor) -> None:
        self.settings = settings
        self.preprocessor = preprocessor
        self.viewers = 0
        self.limiter = anyio.CapacityLimiter(2)  # JPEGs encoded at once (each is small: a few ms)
        self._snapshot: tuple[float, str] | None = None  # (built at, JSON) shared by every viewer

    def state(self, stream: Stream) -> LiveState:
        if stream.live is None:
            stream.live = LiveState.of(self.settings)
        return stream.live

    def preview_due(self, stream: Stream, now: float) -> bool:
        return self.state(stream).preview_due(now, self.settings.frames_per_s)

    def follow(self, stream: Stream, future: asyncio.Future[StreamOutcome], preview_frame: np.ndarray | None) -> None:
        """Record the frame's outcome once its stream publishes it (futures resolve in send order)."""
        state = self.state(stream)

        def done(f: asyncio.Future[StreamOutcome]) -> None:
            if not f.cancelled() and f.exception() is None:
                state.record(f.result(), preview_frame)

        future.add_done_callback(done)

    def snapshot_json(self, streams: Iterable[Stream], now: float) -> str:
        """Every open stream with live state, as one JSON line; rebuilt at most once per half push interval."""
        if self._snapshot is not None and now - self._snapshot[0] < self.settings.push_interval_s / 2:
            return self._snapshot[1]
        views = [s.live.view(s, now) for s in streams if s.live is not None and s.live.latest]
        views.sort(key=lambda v: v["stream_id"])
        text = json.dumps({"history_s": self.settings.history_s, "streams": views}, separators=(",", ":"))
        self._snapshot = (now, text)
        return text

    def jpeg_job(self, state: LiveState) -> tuple[Preview, bytes | None] | None:
        """The preview to serve and its cached JPEG (None: encode it); None when the stream has no preview yet."""
        preview = state.preview
        if preview is None:
            return None
        cached = state.jpeg
        return preview, (cached[1] if cached is not None and cached[0] == preview.version else None)

    def encode(self, preview: Preview) -> bytes:
        """Blocking: the preview's JPEG (called in a worker thread)."""
        return overlay_jpeg(preview, self.preprocessor, self.settings.jpeg_quality)

    @property
    def full(self) -> bool:
        return self.viewers >= self.settings.max_viewers

    @contextlib.contextmanager
    def viewing(self) -> Iterator[None]:
        """One open event stream, counted for as long as it runs (released on every path)."""
        self.viewers += 1
        try:
            yield
        finally:
            self.viewers -= 1
