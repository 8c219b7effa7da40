"""Run an iterator ahead in a worker thread, so decoding overlaps with the model.

The worker fills a bounded queue (bounded memory: at most `maxsize` items wait). Exceptions from
the source travel through the queue and are raised in the consumer after the items before them.
When the consumer stops early (break, close(), `with` exit, or the iterator is garbage collected)
the worker is told to stop; it never blocks for good on a full queue, and it closes the source
iterator itself (a generator must be closed by the thread running it), which releases e.g. an
open video.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Iterable, Iterator
from itertools import islice
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_S = 0.05  # how often a blocked worker/consumer checks whether the other side has gone


class _End:
    """Last message from the worker: the source is exhausted, or failed with `error`."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put unless told to stop; False if stopped. Polls so a full queue never blocks for good."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _produce(source: Iterator[object], q: queue.Queue, stop: threading.Event) -> None:
    """Worker body. Holds no reference to the Prefetcher, so the consumer side can be collected."""
    end = _End()
    try:
        for item in source:
            if not _put(q, item, stop):
                return
    except BaseException as exc:  # handed to the consumer, raised there
        end = _End(exc)
    finally:
        close = getattr(source, "close", None)
        if stop.is_set() and close is not None:
            close()
    _put(q, end, stop)


def _shutdown(stop: threading.Event, q: queue.Queue) -> None:
    """Tell the worker to stop and drop what it prefetched (frees memory, unblocks its put)."""
    stop.set()
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


class Prefetcher(Iterator[T], Generic[T]):
    """Iterator over `source`'s items, produced ahead by a daemon thread. Use `close()` or `with`
    to stop early deterministically; dropping the iterator also stops the worker."""

    def __init__(self, source: Iterable[T], maxsize: int = 64) -> None:
        if maxsize < 1:
            raise ValueError(f"prefetch maxsize must be >= 1, got {maxsize}")
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=_produce, args=(iter(source), self._queue, self._stop), name="prefetch", daemon=True
        )
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, self._queue)
        self._thread.start()

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._get()
        if isinstance(item, _End):
            self._done = True
            self._finalizer.detach()
            if item.error is not None:
                raise item.error
            raise StopIteration
        return item

    def _get(self) -> object:
        while True:
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise RuntimeError("prefetch worker ended without a result") from None

    def close(self, timeout: float = 1.0) -> None:
        """Stop the worker and wait up to `timeout` s for it (it finishes the item in hand first)."""
        self._done = True
        self._finalizer()
        self._thread.join(timeout)

    @property
    def worker_alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def prefetch(iterable: Iterable[T], maxsize: int = 64) -> Prefetcher[T]:
    """`iterable` run ahead in a worker thread, at most `maxsize` items waiting (see module doc)."""
    return Prefetcher(iterable, maxsize)


def batched(iterable: Iterable[T], n: int) -> Iterator[list[T]]:
    """Lists of `n` consecutive items, the last one possibly shorter (itertools.batched is 3.12+)."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    it = iter(iterable)
    while batch := list(islice(it, n)):
        yield batch
