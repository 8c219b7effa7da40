"""The model behind the API: admission, decoding off the event loop, micro-batching, stream order, drain.

A frame's path: `admit` (bounded; 503 or a WebSocket pause when full) -> decode and
`preprocessor.prepare` in a worker thread -> the micro-batcher (`score_prepared`, the same core
as `anomaly score`) -> its stream slot, which publishes results in send order. Slots are filled
from callbacks on the batcher's futures, not by the request handlers, so a client that
disconnects mid-request cannot stall its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from anomaly import __version__
from anomaly.drift import DriftTracker
from anomaly.frame_scores import FrameScore, FrameScorer
from anomaly.model_files import model_sha256
from service.batcher import Admission, CameraFrame, MicroBatcher, QueueFull, Ticket, detector_scorer
from service.errors import ServiceError, unavailable
from service.images import decode_image, heatmap_png_base64
from service.live import LiveView, shrink
from service.metrics import ServiceMetrics
from service.schemas import ModelInfo
from service.settings import ServiceSettings
from service.streams import FrameTag, Slot, Stream, StreamOutcome, StreamRegistry

log = logging.getLogger("anomaly.service")


def describe_model(settings: ServiceSettings, detector: FrameScorer) -> ModelInfo:
    pre = detector.config.preprocess
    return ModelInfo(
        version=model_sha256(settings.model_path)[:12],
        file=Path(settings.model_path).name,
        anomaly_version=__version__,
        device=str(detector.device),
        input_width=pre.width,
        input_height=pre.height,
        roi=pre.roi,
        threshold=detector.threshold,
        calibration=detector.calibrated.summary(),
        events=settings.streams.events,
        drift=settings.streams.drift,
    )


def drift_tracker(settings: ServiceSettings, detector: FrameScorer) -> DriftTracker | None:
    """One drift monitor per camera (stream id), against its profile's reference; None when drift is off.

    Clients choose stream ids, so the monitors held are bounded like the streams (the camera heard from
    longest ago is forgotten); the service keeps no finished drift events (clients get them as messages).
    """
    if settings.streams.drift is None:
        return None
    return DriftTracker.for_scorer(
        settings.streams.drift, detector, max_cameras=settings.streams.max_streams, keep_events=0
    )


def internal_error(exc: BaseException) -> ServiceError:
    return ServiceError(500, "internal_error", f"scoring failed: {type(exc).__name__}")


class ScoringService:
    def __init__(
        self, settings: ServiceSettings, detector: FrameScorer, model_info: ModelInfo, metrics: ServiceMetrics
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.model_info = model_info
        self.metrics = metrics
        self.admission = Admission(settings.batching.queue_size)
        self.drift = drift_tracker(settings, detector)
        self.live = LiveView(settings.live, detector.preprocessor) if settings.live_view else None
        # a stream's id names its camera: its profile (from `anomaly calibrate`) scores it, else the fleet's
        self.streams = StreamRegistry(
            settings.streams,
            lambda stream_id: detector.for_camera(stream_id).threshold,
            on_open=self._log_profile,
            drift=self.drift,
        )
        self.batcher: MicroBatcher[np.ndarray | CameraFrame, FrameScore] = MicroBatcher(
            detector_scorer(detector),
            max_batch=settings.batching.max_batch,
            max_wait_s=settings.batching.max_wait_ms / 1000.0,
            on_batch=self._record_batch,
        )
        self.accepting = False
        self.stopping = asyncio.Event()  # set once the drain has answered every accepted frame: sockets close
        self.drained: bool | None = None  # after a drain: whether every accepted frame was answered in time
        self._unanswered = 0
        self._all_answered = asyncio.Event()
        self._all_answered.set()
        self._sockets = 0
        self._no_sockets = asyncio.Event()
        self._no_sockets.set()
        self._decode_limiter = anyio.CapacityLimiter(settings.batching.decode_threads)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._expiry: asyncio.Task[None] | None = None

    # ---- lifecycle

    async def start(self) -> None:
        self.batcher.start()
        cameras = None if self.drift is None else self.drift.states
        self.metrics.watch(lambda: len(self.streams), lambda: self.admission.in_use, cameras)
        self._expiry = asyncio.create_task(self._expire_idle_streams())
        self.accepting = True
        log.info(
            "model %s (%s) on %s, threshold %.3f; batches of up to %d frames, %.1f ms wait, queue %d",
            self.model_info.file,
            self.model_info.version,
            self.model_info.device,
            self.model_info.threshold,
            self.settings.batching.max_batch,
            self.settings.batching.max_wait_ms,
            self.settings.batching.queue_size,
        )

    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why /readyz should say 503: starting or draining, or a queue full for too long (a stuck model)."""
        if not self.accepting:
            return "shutting down: answering the frames already accepted"
        full_for = self.admission.full_for()
        if full_for > self.settings.batching.unready_after_s:
            return f"the scoring queue has been full for {full_for:.1f} s"
        return None

    def socket_opened(self) -> None:
        self._sockets += 1
        self._no_sockets.clear()

    def socket_closed(self) -> None:
        self._sockets -= 1
        if self._sockets <= 0:
            self._sockets = 0
            self._no_sockets.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new frames; answer every accepted one; then have each WebSocket send its last answers
        and close (1001). True when all of it finished within `timeout_s`."""
        self.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        complete = True
        if self._unanswered:
            log.info("draining: %d accepted frame(s) still to answer", self._unanswered)
            try:
                await asyncio.wait_for(self._all_answered.wait(), timeout_s)
            except asyncio.TimeoutError:
                log.error("drain timed out with %d frame(s) unanswered", self._unanswered)
                complete = False
        self.stopping.set()
        if self._sockets:
            try:
                await asyncio.wait_for(self._no_sockets.wait(), max(0.1, deadline - loop.time()))
            except asyncio.TimeoutError:
                log.error("drain timed out with %d WebSocket(s) still open", self._sockets)
                complete = False
        self.drained = complete if self.drained is None else (self.drained and complete)
        return complete

    async def stop(self, timeout_s: float) -> None:
        await self.drain(timeout_s)
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        await self.batcher.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    async def _expire_idle_streams(self) -> None:
        period = min(5.0, max(0.05, self.settings.streams.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            for stream_id in self.streams.expire():
                log.info("stream %s expired after %.0f s idle", stream_id, self.settings.streams.idle_timeout_s)

    # ---- admission and answer accounting

    def _refusal(self, code: str, detail: str) -> ServiceError:
        self.metrics.rejected.labels(code).inc()
        return unavailable(code, detail, self.settings.batching.retry_after_s)

    def admit(self, n: int) -> Ticket:
        """Take room for `n` frames now, or refuse with a 503 (shutting down, or the queue is full).
        The caller holds the ticket in a `with` block: room not handed to a scored frame is given back."""
        if not self.accepting:
            raise self._refusal("shutting_down", "the service is shutting down")
        if n > self.admission.capacity:
            raise ServiceError(413, "too_many_frames", f"{n} frames exceed the queue of {self.admission.capacity}")
        try:
            self.admission.try_acquire(n)
        except QueueFull:
            raise self._refusal("queue_full", "the scoring queue is full; retry after the Retry-After delay") from None
        return self.admission.ticket(n)

    async def admit_waiting(self, n: int, on_wait: Callable[[], Coroutine[Any, Any, None]]) -> Ticket:
        """Like `admit`, but wait for room instead of refusing; `on_wait` runs once if it has to wait.
        A frame read before shutdown began keeps waiting and is scored: it was accepted when it was read."""
        if n > self.admission.capacity:
            raise ServiceError(413, "too_many_frames", f"{n} frames exceed the queue of {self.admission.capacity}")
        try:
            self.admission.try_acquire(n)
        except QueueFull:
            await on_wait()
            await self.admission.acquire(n)
        return self.admission.ticket(n)

    def begin(self, n: int) -> None:
        self._unanswered += n
        self._all_answered.clear()

    def answered(self, n: int) -> None:
        self._unanswered -= n
        if self._unanswered <= 0:
            self._unanswered = 0
            self._all_answered.set()

    # ---- the frame path

    def _decode_sync(
        self, data: bytes, keep_original: bool, preview_width: int | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        image = decode_image(data, self.settings.limits)
        prepared = self.detector.preprocessor.prepare(image)
        if preview_width is not None:  # the live view's copy, shrunk here: the full-size frame is not kept
            return prepared, shrink(image, preview_width)
        return prepared, (image if keep_original else None)

    async def decode(
        self, data: bytes, keep_original: bool = False, preview_width: int | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode and prepare in a worker thread (the caller's ticket gives the room back on failure).
        `preview_width`: also return the frame shrunk to that width (instead of the original)."""
        try:
            return await anyio.to_thread.run_sync(
                self._decode_sync, data, keep_original, preview_width, limiter=self._decode_limiter
            )
        except ServiceError as exc:
            self.metrics.bad_frames.labels(exc.code).inc()
            raise

    def _log_profile(self, stream_id: str) -> None:
        log.info("stream %s: %s", stream_id, self.detector.profile_note(stream_id))

    def _submit(self, prepared: np.ndarray, ticket: Ticket, camera: str | None = None) -> asyncio.Future[FrameScore]:
        """Into the batcher (scored with `camera`'s profile); one unit of `ticket` now belongs to the frame
        and is given back once it is scored."""
        try:
            future = self.batcher.submit((prepared, camera))
        except RuntimeError:
            raise self._refusal("shutting_down", "the service is shutting down") from None
        ticket.hand_to(future)
        return future

    def _record_batch(self, results: list[FrameScore], seconds: float) -> None:  # worker thread
        self.metrics.batch_size.observe(len(results))
        self.metrics.model_seconds.observe(seconds)
        self.metrics.frames_scored.inc(len(results))
        self.metrics.anomalies.inc(sum(r.is_anomaly for r in results))

    async def score_image(self, data: bytes, heatmap: bool) -> tuple[FrameScore, str | None]:
        """One stateless frame (POST /v1/score)."""
        start = time.perf_counter()
        ticket = self.admit(1)
        self.begin(1)
        try:
            with ticket:
                prepared, original = await self.decode(data, keep_original=heatmap)
                future = self._submit(prepared, ticket)
                try:
                    scored = await asyncio.shield(future)  # a cancelled request leaves the frame to finish
                except ServiceError:
                    raise
                except Exception as exc:
                    raise internal_error(exc) from exc
            self.metrics.frame_latency.labels("score").observe(time.perf_counter() - start)
            png = None
            if heatmap and original is not None:
                png = await anyio.to_thread.run_sync(
                    heatmap_png_base64,
                    original,
                    scored.heatmap,
                    scored.threshold,
                    self.detector.preprocessor,
                    limiter=self._decode_limiter,
                )
            return scored, png
        finally:
            self.answered(1)

    def _preview_width(self, stream: Stream) -> int | None:
        """The live view's preview width when this stream's next decoded frame should be kept, else None."""
        if self.live is None or not self.live.preview_due(stream, time.monotonic()):
            return None
        return self.live.settings.max_width

    def _attach(
        self,
        stream: Stream,
        slot: Slot,
        prepared: np.ndarray,
        start: float,
        endpoint: str,
        ticket: Ticket,
        preview: np.ndarray | None = None,
    ) -> None:
        """Score `prepared` and fill `slot` with the outcome, whoever is (or is no longer) waiting."""
        if self.live is not None:
            self.live.follow(stream, slot.future, preview)
        try:
            future = self._submit(prepared, ticket, stream.stream_id)
        except ServiceError as exc:
            stream.fill(slot, exc, time.monotonic())
            return
        except Exception as exc:
            log.exception("submitting a frame failed")
            stream.fill(slot, internal_error(exc), time.monotonic())
            return

        def done(f: asyncio.Future[FrameScore]) -> None:
            if f.cancelled() or f.exception() is not None:
                exc = f.exception() if not f.cancelled() else asyncio.CancelledError()
                stream.fill(slot, internal_error(exc), time.monotonic())
                return
            self.metrics.frame_latency.labels(endpoint).observe(time.perf_counter() - start)
            stream.fill(slot, f.result(), time.monotonic())

        future.add_done_callback(done)

    async def score_stream_message(
        self, stream: Stream, frames: list[bytes], tag_requests: list[tuple[int | None, float | None]], fps: float
    ) -> list[StreamOutcome]:
        """An HTTP stream message: all its frames decode, or none enters the stream (4xx names the bad one).

        Frames are tagged only once all decoded, so a refused message does not use up frame indices.
        """
        start = time.perf_counter()
        ticket = self.admit(len(frames))
        self.begin(len(frames))
        try:
            with ticket:
                prepared: list[tuple[np.ndarray, np.ndarray | None]] = []
                for i, data in enumerate(frames):
                    try:
                        prepared.append(await self.decode(data, preview_width=self._preview_width(stream)))
                    except ServiceError as exc:
                        if len(frames) > 1:
                            exc.detail = f"frame {i} of the message: {exc.detail}"
                        raise
                slots: list[Slot] = []
                try:
                    now = time.monotonic()
                    for index, ts in tag_requests:
                        slots.append(stream.reserve(stream.tag(index, ts, fps), now))
                    for slot, (frame, preview) in zip(slots, prepared, strict=True):
                        self._attach(stream, slot, frame, start, "stream_http", ticket, preview)
                except BaseException as exc:
                    # a slot left empty would hold up every later frame of the stream
                    for slot in slots:
                        if not slot.filled:
                            stream.fill(slot, internal_error(exc), time.monotonic())
                    raise
            return list(await asyncio.gather(*(asyncio.shield(s.future) for s in slots)))
        finally:
            self.answered(len(frames))

    def submit_stream_frame(
        self, stream: Stream, data: bytes, tag: FrameTag, ticket: Ticket
    ) -> asyncio.Future[StreamOutcome]:
        """A WebSocket frame, already admitted (`ticket`): its slot is taken now (send order), decoding
        happens in a task, and the ticket's room is given back on every path."""
        try:
            slot = stream.reserve(tag, time.monotonic())
        except BaseException:
            ticket.close()
            raise
        start = time.perf_counter()

        async def run() -> None:
            with ticket:
                try:
                    prepared, preview = await self.decode(data, preview_width=self._preview_width(stream))
                    self._attach(stream, slot, prepared, start, "stream_ws", ticket, preview)
                except ServiceError as exc:
                    stream.fill(slot, exc, time.monotonic())
                except BaseException as exc:
                    if not slot.filled:
                        stream.fill(slot, internal_error(exc), time.monotonic())
                    if not isinstance(exc, Exception):
                        raise
                    log.exception("a WebSocket frame failed after admission")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return slot.future
