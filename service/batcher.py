"""Micro-batching: frames from all clients scored together, in one worker thread, with a bounded intake.

A pass through the model costs little more for 8 frames than for 1, so frames arriving within a
few milliseconds of each other (from any client) are scored as one batch. The model runs in a
dedicated thread: the event loop keeps accepting requests and answering health checks while it
works. One worker, first in first out, so results leave in the order frames entered.

`Admission` bounds how many frames are inside the service (accepted, not yet scored). When it is
full, HTTP callers get a 503 with Retry-After and WebSocket callers are paused: memory stays flat
however fast clients send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from anomaly.frame_scores import FrameScore, FrameScorer

log = logging.getLogger("anomaly.service")

T = TypeVar("T")
R = TypeVar("R")


CameraFrame = tuple[np.ndarray, str | None]  # a prepared frame and the camera (stream) it comes from


def detector_scorer(detector: FrameScorer) -> Callable[[list[np.ndarray | CameraFrame]], list[FrameScore]]:
    """Batch scorer over frames already passed through `detector.preprocessor.prepare`.

    A frame may come with its camera: frames of one batch are scored together per camera profile
    (`Detector.for_camera`: the camera's own, else the fleet's; no camera: the detector's own
    profile), and answered in their order.
    """
    profiles: dict[str | None, FrameScorer] = {}

    def score(items: list[np.ndarray | CameraFrame]) -> list[FrameScore]:
        cameras = [item[1] if isinstance(item, tuple) else None for item in items]
        frames = [item[0] if isinstance(item, tuple) else item for item in items]
        out: list[FrameScore | None] = [None] * len(items)
        for camera in dict.fromkeys(cameras):
            if camera not in profiles:
                profiles[camera] = detector if camera is None else detector.for_camera(camera)
            idx = [i for i, c in enumerate(cameras) if c == camera]
            for i, result in zip(idx, profiles[camera].score_prepared([frames[i] for i in idx]).rows(), strict=True):
                out[i] = result
        return out  # type: ignore[return-value]

    return score


class QueueFull(Exception):
    pass


class Admission:
    """Counts frames inside the service against a fixed capacity. Event-loop only (no locks needed).

    It also remembers since when it has been full, so readiness can tell a busy service from a stuck one.
    """

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.clock = clock
        self.full_since: float | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self, n: int = 1) -> None:
        if n > self.capacity:
            raise ValueError(f"{n} frames can never fit a queue of {self.capacity}")
        if self.in_use + n > self.capacity:
            if self.full_since is None:
                self.full_since = self.clock()
            raise QueueFull
        self.in_use += n
        if self.in_use >= self.capacity and self.full_since is None:
            self.full_since = self.clock()

    async def acquire(self, n: int = 1) -> None:
        """Wait for room (used by WebSockets, which pause instead of being refused)."""
        while True:
            try:
                self.try_acquire(n)
                return
            except QueueFull:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)

    def release(self, n: int = 1) -> None:
        self.in_use -= n
        assert self.in_use >= 0, "released more frames than were admitted"
        if self.in_use < self.capacity:
            self.full_since = None
        while self._waiters:  # wake every waiter: each re-checks for room itself
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def full_for(self) -> float:
        """Seconds the queue has been full without a break (0 when it has room)."""
        return 0.0 if self.full_since is None else self.clock() - self.full_since

    def ticket(self, n: int) -> Ticket:
        """Room for `n` frames that were just acquired, as a context manager that gives back what is left."""
        return Ticket(self, n)


class Ticket:
    """Room for frames taken from an `Admission`, released on every path.

    Each unit is either still held here (given back when the `with` block ends, however it ends) or
    handed to the future of a submitted frame (given back when that frame is scored or fails).
    """

    def __init__(self, admission: Admission, n: int) -> None:
        self.admission = admission
        self.held = n

    def release(self, n: int = 1) -> None:
        n = min(n, self.held)
        if n > 0:
            self.held -= n
            self.admission.release(n)

    def hand_to(self, future: asyncio.Future[Any]) -> None:
        """One unit now belongs to `future`: released when it is done, not when the block ends."""
        if self.held <= 0:
            raise RuntimeError("no admitted frame left on this ticket")
        self.held -= 1
        future.add_done_callback(lambda _: self.admission.release(1))

    def close(self) -> None:
        self.release(self.held)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass
class _Item(Generic[T, R]):
    payload: T
    future: asyncio.Future[R]
    enqueued: float


class MicroBatcher(Generic[T, R]):
    """Collects submitted items for up to `max_wait_s` after the first one (or until `max_batch`),
    then runs `score_batch` on them in the worker thread and resolves each item's future."""

    def __init__(
        self,
        score_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[list[R], float], None] | None = None,
        name: str = "anomaly-batcher",
    ) -> None:
        self.score_batch = score_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._items: deque[_Item[T, R]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def submit(self, payload: T) -> asyncio.Future[R]:
        """Queue one item (from the event loop); the future resolves when its batch has been scored."""
        if self._loop is None or self._closing:
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future[R] = self._loop.create_future()
        with self._cond:
            self._items.append(_Item(payload, future, time.monotonic()))
            self._cond.notify()
        return future

    async def close(self) -> None:
        """Score everything already submitted, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    def _next_batch(self) -> list[_Item[T, R]] | None:
        with self._cond:
            while not self._items and not self._closing:
                self._cond.wait()
            if not self._items:
                return None
            deadline = self._items[0].enqueued + self.max_wait_s
            while len(self._items) < self.max_batch and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self.max_batch, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            start = time.perf_counter()
            try:
                results = list(self.score_batch([item.payload for item in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"scorer returned {len(results)} results for {len(batch)} frames")
            except Exception as exc:  # a model failure fails this batch's requests, not the worker
                log.exception("scoring a batch of %d frames failed", len(batch))
                self._resolve(batch, [exc] * len(batch))
                continue
            if self.on_batch is not None:
                self.on_batch(results, time.perf_counter() - start)
            self._resolve(batch, results)

    def _resolve(self, batch: list[_Item[T, R]], outcomes: Sequence[R | Exception]) -> None:
        assert self._loop is not None
        pairs = [(item.future, out) for item, out in zip(batch, outcomes, strict=True)]
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(_settle, pairs)


def _settle(pairs: list[tuple[asyncio.Future, object]]) -> None:
    for future, outcome in pairs:
        if future.done():  # the waiter was cancelled
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
