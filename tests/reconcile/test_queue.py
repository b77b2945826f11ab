"""The work queue on its own: coalescing, one key at a time, the bound, backoff, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from shellgate.controller.metrics import Metrics
from shellgate.controller.reconcile.queue import WorkQueue

pytestmark = pytest.mark.timeout(20)


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name, {"queue": "sandbox"}) or 0.0


async def test_a_waiting_key_is_not_added_twice() -> None:
    metrics = Metrics()
    queue: WorkQueue[str] = WorkQueue("sandbox", metrics=metrics)
    for key in ("a", "b", "a", "a", "b"):
        assert queue.offer(key)
    await queue.add("a")
    assert len(queue) == 2
    assert [await queue.get(), await queue.get()] == ["a", "b"]
    assert sample(metrics, "shellgate_workqueue_adds_total") == 2
    assert sample(metrics, "shellgate_workqueue_depth") == 0


async def test_a_key_added_while_processing_is_processed_once_more_afterwards() -> None:
    queue: WorkQueue[str] = WorkQueue("sandbox")
    queue.offer("a")
    key = await queue.get()
    assert key == "a"
    queue.offer("a")
    queue.offer("a")
    assert len(queue) == 0  # not handed to a second worker while the first holds it
    queue.done("a")
    assert len(queue) == 1
    assert await queue.get() == "a"
    queue.done("a")
    assert queue.idle


async def test_workers_never_process_one_key_concurrently() -> None:
    queue: WorkQueue[str] = WorkQueue("sandbox")
    running: set[str] = set()
    overlaps = 0
    processed: list[str] = []
    release = asyncio.Event()
    both_held = asyncio.Event()

    async def handler(key: str) -> None:
        nonlocal overlaps
        if key in running:
            overlaps += 1
        running.add(key)
        processed.append(key)
        if running == {"a", "b"}:
            both_held.set()
        await release.wait()
        running.discard(key)

    workers = asyncio.create_task(queue.run(handler, workers=4))
    queue.offer("a")
    queue.offer("b")
    await asyncio.wait_for(both_held.wait(), 5)
    for _ in range(10):  # while both are held, with two idle workers ready to take them
        queue.offer("a")
        queue.offer("b")
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert running == {"a", "b"} and overlaps == 0
    release.set()
    await asyncio.wait_for(queue.wait_idle(), 5)
    queue.shutdown()
    await workers
    assert overlaps == 0
    # Once, then once more for all the adds made meanwhile.
    assert processed.count("a") == 2 and processed.count("b") == 2


async def test_a_full_queue_drops_offers_and_blocks_adds_until_there_is_room() -> None:
    metrics = Metrics()
    queue: WorkQueue[str] = WorkQueue("sandbox", max_waiting=2, metrics=metrics)
    assert queue.offer("a") and queue.offer("b")
    assert queue.offer("a")  # already waiting: coalesced, not refused
    assert not queue.offer("c")
    assert sample(metrics, "shellgate_workqueue_dropped_total") == 1
    blocked = asyncio.create_task(queue.add("d"))
    await asyncio.sleep(0.02)
    assert not blocked.done()  # back-pressure on the producer
    assert await queue.get() == "a"
    await asyncio.wait_for(blocked, 1)
    assert [await queue.get(), await queue.get()] == ["b", "d"]


async def test_failures_are_retried_with_growing_backoff_then_forgotten() -> None:
    metrics = Metrics()
    queue: WorkQueue[str] = WorkQueue(
        "sandbox", base_delay=0.01, max_delay=1.0, metrics=metrics, rng=random.Random(1)
    )
    delays = [queue.add_rate_limited("a") for _ in range(4)]
    assert [round(d / 0.01) for d in delays] != [0, 0, 0, 0]
    for attempt, delay in enumerate(delays):
        ceiling = 0.01 * 2**attempt
        assert ceiling / 2 <= delay <= ceiling  # jittered under a doubling ceiling
    assert queue.failures("a") == 4
    queue.forget("a")
    assert queue.failures("a") == 0
    assert sample(metrics, "shellgate_workqueue_retries_total") == 4


async def test_a_failing_handler_is_retried_until_it_succeeds() -> None:
    queue: WorkQueue[str] = WorkQueue("sandbox", base_delay=0.005)
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async def flaky(key: str) -> None:
        attempts.append(loop.time())
        if len(attempts) < 4:
            raise RuntimeError("injected")

    workers = asyncio.create_task(queue.run(flaky, workers=1))
    queue.offer("a")
    await asyncio.wait_for(queue.wait_idle(), 5)
    queue.shutdown()
    await workers
    assert len(attempts) == 4
    assert queue.failures("a") == 0  # forgotten after the success


async def test_a_handler_that_always_fails_is_given_up_after_max_retries() -> None:
    queue: WorkQueue[str] = WorkQueue("sandbox", base_delay=0.001)
    attempts = 0

    async def broken(key: str) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("injected")

    workers = asyncio.create_task(queue.run(broken, workers=1, max_retries=3))
    queue.offer("a")
    await asyncio.wait_for(queue.wait_idle(), 5)
    queue.shutdown()
    await workers
    assert attempts == 4  # the first try and three retries


async def test_shutdown_wakes_workers_and_producers_and_cancels_retries() -> None:
    queue: WorkQueue[str] = WorkQueue("sandbox", max_waiting=1)
    queue.offer("a")
    blocked = asyncio.create_task(queue.add("b"))
    queue.add_after("c", 60)
    await asyncio.sleep(0.01)
    queue.shutdown()
    await asyncio.wait_for(blocked, 1)
    assert await queue.get() is None
    assert not queue.offer("d")
    assert queue.idle or len(queue) <= 1
    waiting = asyncio.create_task(queue.run(lambda key: asyncio.sleep(0), workers=2))
    await asyncio.wait_for(waiting, 1)  # workers return at once


async def test_cancelling_the_workers_releases_the_key_they_held() -> None:
    queue: WorkQueue[str] = WorkQueue("sandbox")
    started = asyncio.Event()

    async def slow(key: str) -> None:
        started.set()
        await asyncio.sleep(60)

    workers = asyncio.create_task(queue.run(slow, workers=1))
    queue.offer("a")
    await started.wait()
    workers.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await workers
    assert queue.idle
