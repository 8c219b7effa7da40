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
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from anomaly import __version__
from anomaly.detector import Detector
from service.batcher import Admission, CameraFrame, MicroBatcher, QueueFull, ScoredFrame, detector_scorer
from service.errors import ServiceError, unavailable
from service.images import decode_image, heatmap_png_base64
from service.metrics import ServiceMetrics
from service.schemas import ModelInfo
from service.settings import ServiceSettings
from service.streams import FrameTag, Slot, Stream, StreamOutcome, StreamRegistry

log = logging.getLogger("anomaly.service")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe_model(settings: ServiceSettings, detector: Detector) -> ModelInfo:
    pre = detector.config.preprocess
    return ModelInfo(
        version=file_digest(settings.model_path)[:12],
        file=Path(settings.model_path).name,
        anomaly_version=__version__,
        device=str(detector.device),
        input_width=pre.width,
        input_height=pre.height,
        roi=pre.roi,
        threshold=detector.threshold,
        calibration=detector.calibrated.summary(),
        events=settings.streams.events,
    )


def internal_error(exc: BaseException) -> ServiceError:
    return ServiceError(500, "internal_error", f"scoring failed: {type(exc).__name__}")


class ScoringService:
    def __init__(
        self, settings: ServiceSettings, detector: Detector, model: ModelInfo, metrics: ServiceMetrics
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.model = model
        self.metrics = metrics
        self.admission = Admission(settings.batching.queue_size)
        # a stream's id names its camera: its profile (from `anomaly calibrate`) scores it, else the fleet's
        self.streams = StreamRegistry(
            settings.streams, lambda stream_id: detector.for_camera(stream_id).threshold, on_open=self._log_profile
        )
        self.batcher: MicroBatcher[np.ndarray | CameraFrame, ScoredFrame] = MicroBatcher(
            detector_scorer(detector),
            max_batch=settings.batching.max_batch,
            max_wait_s=settings.batching.max_wait_ms / 1000.0,
            on_batch=self._record_batch,
        )
        self.accepting = False
        self._unanswered = 0
        self._all_answered = asyncio.Event()
        self._all_answered.set()
        self._decode_limiter = anyio.CapacityLimiter(settings.batching.decode_threads)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._expiry: asyncio.Task[None] | None = None

    # ---- lifecycle

    async def start(self) -> None:
        self.batcher.start()
        self.metrics.watch(lambda: len(self.streams), lambda: self.admission.in_use)
        self._expiry = asyncio.create_task(self._expire_idle_streams())
        self.accepting = True
        log.info(
            "model %s (%s) on %s, threshold %.3f; batches of up to %d frames, %.1f ms wait, queue %d",
            self.model.file,
            self.model.version,
            self.model.device,
            self.model.threshold,
            self.settings.batching.max_batch,
            self.settings.batching.max_wait_ms,
            self.settings.batching.queue_size,
        )

    @property
    def ready(self) -> bool:
        return self.accepting

    async def drain(self, timeout_s: float) -> None:
        """Refuse new frames; wait until every accepted frame has been scored and answered."""
        self.accepting = False
        if self._unanswered:
            log.info("draining: %d accepted frame(s) still to answer", self._unanswered)
            try:
                await asyncio.wait_for(self._all_answered.wait(), timeout_s)
            except asyncio.TimeoutError:
                log.error("drain timed out with %d frame(s) unanswered", self._unanswered)

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

    def admit(self, n: int) -> None:
        """Take room for `n` frames now, or refuse with a 503 (shutting down, or the queue is full)."""
        if not self.accepting:
            raise self._refusal("shutting_down", "the service is shutting down")
        if n > self.admission.capacity:
            raise ServiceError(413, "too_many_frames", f"{n} frames exceed the queue of {self.admission.capacity}")
        try:
            self.admission.try_acquire(n)
        except QueueFull:
            raise self._refusal("queue_full", "the scoring queue is full; retry after the Retry-After delay") from None
        self.begin(n)

    async def admit_waiting(self, n: int, on_wait: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Like `admit`, but wait for room instead of refusing; `on_wait` runs once if it has to wait."""
        if not self.accepting:
            raise self._refusal("shutting_down", "the service is shutting down")
        try:
            self.admission.try_acquire(n)
        except QueueFull:
            await on_wait()
            await self.admission.acquire(n)
            if not self.accepting:
                self.admission.release(n)
                raise self._refusal("shutting_down", "the service is shutting down") from None
        self.begin(n)

    def begin(self, n: int) -> None:
        self._unanswered += n
        self._all_answered.clear()

    def answered(self, n: int) -> None:
        self._unanswered -= n
        if self._unanswered <= 0:
            self._unanswered = 0
            self._all_answered.set()

    # ---- the frame path

    def _decode_sync(self, data: bytes, keep_original: bool) -> tuple[np.ndarray, np.ndarray | None]:
        image = decode_image(data, self.settings.limits)
        return self.detector.preprocessor.prepare(image), (image if keep_original else None)

    async def decode(self, data: bytes, keep_original: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode and prepare in a worker thread. On failure the frame's admission is given back."""
        try:
            return await anyio.to_thread.run_sync(self._decode_sync, data, keep_original, limiter=self._decode_limiter)
        except ServiceError as exc:
            self.metrics.bad_frames.labels(exc.code).inc()
            self.admission.release(1)
            raise
        except BaseException:
            self.admission.release(1)
            raise

    def _log_profile(self, stream_id: str) -> None:
        log.info("stream %s: %s", stream_id, self.detector.profile_note(stream_id))

    def _submit(self, prepared: np.ndarray, camera: str | None = None) -> asyncio.Future[ScoredFrame]:
        """Into the batcher; the frame's admission is given back once it is scored."""
        try:
            future = self.batcher.submit((prepared, camera))
        except RuntimeError:
            self.admission.release(1)
            raise self._refusal("shutting_down", "the service is shutting down") from None
        future.add_done_callback(lambda _: self.admission.release(1))
        return future

    def _record_batch(self, results: list[ScoredFrame], seconds: float) -> None:  # worker thread
        self.metrics.batch_size.observe(len(results))
        self.metrics.model_seconds.observe(seconds)
        self.metrics.frames_scored.inc(len(results))
        self.metrics.anomalies.inc(sum(r.is_anomaly for r in results))

    async def score_image(self, data: bytes, heatmap: bool) -> tuple[ScoredFrame, str | None]:
        """One stateless frame (POST /v1/score)."""
        start = time.perf_counter()
        self.admit(1)
        try:
            prepared, original = await self.decode(data, keep_original=heatmap)
            try:
                scored = await self._submit(prepared)
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

    def _attach(self, stream: Stream, slot: Slot, prepared: np.ndarray, start: float, endpoint: str) -> None:
        """Score `prepared` and fill `slot` with the outcome, whoever is (or is no longer) waiting."""
        try:
            future = self._submit(prepared, stream.stream_id)
        except ServiceError as exc:
            stream.fill(slot, exc, time.monotonic())
            return

        def done(f: asyncio.Future[ScoredFrame]) -> None:
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
        self.admit(len(frames))
        try:
            prepared: list[np.ndarray] = []
            for i, data in enumerate(frames):
                try:
                    prepared.append((await self.decode(data))[0])
                except ServiceError as exc:
                    self.admission.release(len(frames) - 1)  # the failed frame gave its own room back
                    if len(frames) > 1:
                        exc.detail = f"frame {i} of the message: {exc.detail}"
                    raise
                except BaseException:
                    self.admission.release(len(frames) - 1)
                    raise
            now = time.monotonic()
            slots = [stream.reserve(stream.tag(index, ts, fps), now) for index, ts in tag_requests]
            for slot, frame in zip(slots, prepared, strict=True):
                self._attach(stream, slot, frame, start, "stream_http")
            return list(await asyncio.gather(*(asyncio.shield(s.future) for s in slots)))
        finally:
            self.answered(len(frames))

    def submit_stream_frame(self, stream: Stream, data: bytes, tag: FrameTag) -> asyncio.Future[StreamOutcome]:
        """A WebSocket frame, already admitted: its slot is taken now (send order), decoding happens in a task."""
        slot = stream.reserve(tag, time.monotonic())
        start = time.perf_counter()

        async def run() -> None:
            try:
                prepared, _ = await self.decode(data)
            except ServiceError as exc:
                stream.fill(slot, exc, time.monotonic())
                return
            except BaseException as exc:
                stream.fill(slot, internal_error(exc), time.monotonic())
                raise
            self._attach(stream, slot, prepared, start, "stream_ws")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return slot.future
