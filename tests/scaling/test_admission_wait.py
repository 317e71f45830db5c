"""Admission by predicted wait in the queueing batchers, with real instances on threads: a request
predicted to miss its deadline is refused at once, a lower priority is refused (and shed) first,
the status is configurable, and the check can be turned off."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from ladle import (
    Arrays,
    DeadlineExceededError,
    InferenceRequest,
    Instance,
    Priority,
    ReplicaSet,
    RuntimeSpec,
    ServerBusyError,
    ThreadExecutor,
    TooManyRequestsError,
)
from ladle.plugins.batchers.dynamic.batcher import DynamicBatcher

from .harness import make_host


@asynccontextmanager
async def batcher(delay: float, **options: Any) -> AsyncIterator[DynamicBatcher]:
    host = make_host()
    spec = RuntimeSpec("sleepy", ".", model="m", version="1", options={"delay": delay})
    replicas = ReplicaSet("m", "1")
    instance = Instance(spec, ThreadExecutor(spec, host), name="0")
    await instance.start()
    replicas.add(instance)
    queue = DynamicBatcher(replicas, {"max_batch_size": 1, **options})
    await queue.start()
    try:
        yield queue
    finally:
        await queue.stop(5)
        await instance.stop(5)


def request(seconds: float, priority: Priority = Priority.NORMAL) -> InferenceRequest:
    x = np.ones((1, 2), dtype=np.float32)
    return InferenceRequest("m", {"x": x}, deadline=time.monotonic() + seconds, priority=priority)


async def learn(queue: DynamicBatcher) -> None:
    """Run one batch so the batcher knows its batch time."""
    await queue.submit(request(10))
    assert queue.predicted_wait() == pytest.approx(0.1, abs=0.05)


def run(scenario: Any) -> None:
    asyncio.run(asyncio.wait_for(scenario, 30))


def test_a_request_predicted_to_miss_its_deadline_is_refused_at_once() -> None:
    async def scenario() -> None:
        async with batcher(0.1) as queue:
            await learn(queue)
            running = queue.submit(request(10))  # the instance is busy for ~0.1 s
            queued = [queue.submit(request(10)) for _ in range(3)]
            with pytest.raises(ServerBusyError) as refused:  # raised by submit itself: never queued
                queue.submit(request(0.3))  # 3 ahead, 1 running: ~0.5 s predicted
            error = refused.value
            assert error.status == 503 and error.retry_after is not None and error.retry_after >= 0.4
            assert error.details["predicted_wait"] > error.details["time_left"]
            assert queue.queue_depth == 3  # it never queued
            fits = queue.submit(request(2.0))
            outputs: list[Arrays] = await asyncio.gather(running, *queued, fits)
            assert len(outputs) == 5

    run(scenario())


def test_a_lower_priority_counts_everything_ahead_of_it_and_is_refused_first() -> None:
    async def scenario() -> None:
        async with batcher(0.1) as queue:
            await learn(queue)
            running = queue.submit(request(10))
            normal = [queue.submit(request(10)) for _ in range(3)]
            urgent = queue.submit(request(0.45, Priority.HIGH))  # jumps the normal lane: ~0.3 s
            with pytest.raises(ServerBusyError):
                queue.submit(request(0.45, Priority.LOW))  # behind all four: ~0.7 s
            await asyncio.gather(running, urgent, *normal)

    run(scenario())


def test_a_full_queue_sheds_its_newest_low_priority_request_for_a_higher_one() -> None:
    async def scenario() -> None:
        async with batcher(0.05, max_queue_size=2, shed_status=429) as queue:
            running = queue.submit(request(10))
            low = [queue.submit(request(10, Priority.LOW)) for _ in range(2)]
            high = queue.submit(request(10, Priority.HIGH))  # full: the newest low one gives way
            with pytest.raises(TooManyRequestsError) as shed:
                await low[1]
            assert shed.value.status == 429 and "higher priority" in shed.value.message
            with pytest.raises(ServerBusyError):  # a full queue of equal or higher priorities
                queue.submit(request(10, Priority.LOW))
            await asyncio.gather(running, high, low[0])

    run(scenario())


def test_with_shed_status_429_the_refusal_is_429() -> None:
    async def scenario() -> None:
        async with batcher(0.1, shed_status=429) as queue:
            await learn(queue)
            running = queue.submit(request(10))
            queued = [queue.submit(request(10)) for _ in range(3)]
            with pytest.raises(TooManyRequestsError) as refused:
                queue.submit(request(0.3))
            assert refused.value.status == 429 and refused.value.code == "too_many_requests"
            await asyncio.gather(running, *queued)

    run(scenario())


def test_with_admission_off_the_request_queues_and_times_out_at_its_deadline() -> None:
    async def scenario() -> None:
        async with batcher(0.1, admission="off") as queue:
            await learn(queue)
            running = queue.submit(request(10))
            queued = [queue.submit(request(10)) for _ in range(3)]
            late = queue.submit(request(0.3))
            assert queue.queue_depth == 4
            with pytest.raises(DeadlineExceededError):
                await late
            await asyncio.gather(running, *queued)

    run(scenario())
