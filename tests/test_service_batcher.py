"""Micro-batcher and admission, with a stand-in scorer (no model): batching, order, drain on close, failures."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.batcher import Admission, MicroBatcher, QueueFull


class Recorder:
    """Scores an item as item * 10 and records the batches it was given."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.fail_on in items:
            raise RuntimeError("model failure")
        return [i * 10 for i in items]


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_items_submitted_together_share_a_batch_and_keep_their_order() -> None:
    rec = Recorder()

    async def main() -> list[int]:
        b = MicroBatcher(rec, max_batch=8, max_wait_s=0.2)
        b.start()
        futures = [b.submit(i) for i in range(5)]
        out = await asyncio.gather(*futures)
        await b.close()
        return list(out)

    assert run(main()) == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1, 2, 3, 4]]
    assert rec.threads == {"anomaly-batcher"}  # scored off the event loop's thread


def test_a_full_batch_goes_without_waiting_and_the_rest_follow_in_order() -> None:
    rec = Recorder()
    sizes: list[int] = []

    async def main() -> float:
        b = MicroBatcher(rec, max_batch=3, max_wait_s=5.0, on_batch=lambda results, _: sizes.append(len(results)))
        b.start()
        loop = asyncio.get_running_loop()
        start = loop.time()
        futures = [b.submit(i) for i in range(7)]
        await asyncio.gather(*futures[:6])  # two full batches: no 5 s wait
        elapsed = loop.time() - start
        await b.close()  # the partial batch is scored on close, not dropped
        assert futures[6].result() == 60
        return elapsed

    assert run(main()) < 2.0
    assert [x for batch in rec.batches for x in batch] == list(range(7))
    assert sizes == [len(b) for b in rec.batches] and max(sizes) == 3


def test_a_failing_batch_fails_its_own_items_only() -> None:
    rec = Recorder(fail_on=1)

    async def main() -> None:
        b = MicroBatcher(rec, max_batch=2, max_wait_s=0.5)
        b.start()
        first = [b.submit(0), b.submit(1)]
        results = await asyncio.gather(*first, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert await b.submit(2) == 20  # the worker survived
        await b.close()
        with pytest.raises(RuntimeError, match="not running"):
            b.submit(3)

    run(main())


def test_admission_refuses_beyond_capacity_and_wakes_waiters_on_release() -> None:
    async def main() -> None:
        adm = Admission(3)
        adm.try_acquire(2)
        with pytest.raises(QueueFull):
            adm.try_acquire(2)
        adm.try_acquire(1)
        waiter = asyncio.create_task(adm.acquire(2))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        adm.release(1)
        await asyncio.sleep(0.01)
        assert not waiter.done()  # one free slot is not enough for two
        adm.release(1)
        await asyncio.wait_for(waiter, 1)
        assert adm.in_use == 3
        with pytest.raises(ValueError):
            adm.try_acquire(4)

    run(main())
