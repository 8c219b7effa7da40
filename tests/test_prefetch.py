"""prefetch: order, error propagation, early stop without hanging, bounded read-ahead; batched."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

from footage.prefetch import batched, prefetch


def counting_source(produced: list[int], closed: threading.Event, n: int | None = None) -> Iterator[int]:
    """Yields 0, 1, ... (forever when n is None), recording what it produced and when it is closed."""
    i = 0
    try:
        while n is None or i < n:
            produced.append(i)
            yield i
            i += 1
    finally:
        closed.set()


def test_order_is_preserved() -> None:
    assert list(prefetch(range(1000), maxsize=8)) == list(range(1000))


def test_empty_source() -> None:
    assert list(prefetch([])) == []


def test_runs_in_another_thread() -> None:
    def source() -> Iterator[str]:
        yield threading.current_thread().name

    assert list(prefetch(source())) != [threading.current_thread().name]


def test_exception_is_raised_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield from range(3)
        raise ValueError("boom at 3")

    got: list[int] = []
    with pytest.raises(ValueError, match="boom at 3"):
        got.extend(prefetch(source(), maxsize=2))
    assert got == [0, 1, 2]


def test_iteration_ends_for_good_after_an_error() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise RuntimeError("x")

    it = prefetch(source())
    assert next(it) == 1
    with pytest.raises(RuntimeError):
        next(it)
    assert list(it) == []


def test_break_and_drop_stops_the_worker() -> None:
    produced: list[int] = []
    closed = threading.Event()
    for item in prefetch(counting_source(produced, closed), maxsize=4):
        if item == 5:
            break
    gc.collect()
    assert closed.wait(1.0), "worker still running after the consumer went away"


def test_close_stops_the_worker() -> None:
    produced: list[int] = []
    closed = threading.Event()
    it = prefetch(counting_source(produced, closed), maxsize=4)
    assert next(it) == 0
    it.close()
    assert closed.is_set() and not it.worker_alive
    assert list(it) == []


def test_context_manager_stops_the_worker() -> None:
    produced: list[int] = []
    closed = threading.Event()
    with prefetch(counting_source(produced, closed), maxsize=4) as it:
        assert next(it) == 0
    assert closed.is_set()


def test_consumer_error_does_not_hang() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def consume() -> None:
        for item in prefetch(counting_source(produced, closed), maxsize=2):
            if item == 3:
                raise KeyError("consumer failed")

    with pytest.raises(KeyError):
        consume()
    gc.collect()
    assert closed.wait(1.0)


def test_maxsize_bounds_read_ahead() -> None:
    produced: list[int] = []
    closed = threading.Event()
    maxsize = 5
    with prefetch(counting_source(produced, closed), maxsize=maxsize) as it:
        next(it)
        time.sleep(0.3)  # plenty of time for an unbounded producer to run far ahead
        # one consumed + maxsize queued + one in the worker's hand, blocked on the full queue
        assert maxsize <= len(produced) <= maxsize + 2


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        prefetch(range(3), maxsize=0)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (3, [[0, 1, 2], [3, 4, 5], [6]]),
        (7, [[0, 1, 2, 3, 4, 5, 6]]),
        (10, [[0, 1, 2, 3, 4, 5, 6]]),
        (1, [[i] for i in range(7)]),
    ],
)
def test_batched(n: int, expected: list[list[int]]) -> None:
    assert list(batched(range(7), n)) == expected


def test_batched_edge_cases() -> None:
    assert list(batched([], 4)) == []
    with pytest.raises(ValueError, match="batch size"):
        list(batched([1], 0))


def test_batched_is_lazy() -> None:
    produced: list[int] = []
    closed = threading.Event()
    batches = batched(counting_source(produced, closed), 4)
    assert next(batches) == [0, 1, 2, 3]
    assert produced == [0, 1, 2, 3]
