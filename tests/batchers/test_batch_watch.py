"""The watch over running batches (ladle.batch_watch): one deadline timer per batcher."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from ladle import DeadlineExceededError, InferenceRequest
from ladle.batch_watch import BatchWatches

from .fakes import run_async


def _batch(seconds_left: float) -> tuple[list[InferenceRequest], list[asyncio.Future[Any]]]:
    request = InferenceRequest("m", {"x": np.ones((1, 1))}, deadline=time.monotonic() + seconds_left)
    return [request], [asyncio.get_running_loop().create_future()]


def _watches() -> tuple[BatchWatches, Any]:
    owner: Any = SimpleNamespace(usual_batch_time=0.01, max_overruns=0)
    instance: Any = SimpleNamespace(overruns=0, fail=lambda reason: None)
    return BatchWatches(owner), instance


@run_async
async def test_a_later_batch_with_an_earlier_deadline_moves_the_shared_timer_up() -> None:
    watches, instance = _watches()
    late_requests, late = _batch(0.5)
    soon_requests, soon = _batch(0.05)
    first = watches.arm(instance, late_requests, late)
    second = watches.arm(instance, soon_requests, soon)
    assert first is not None and second is not None
    await asyncio.sleep(0.2)
    assert isinstance(soon[0].exception(), DeadlineExceededError)  # answered 504 while it runs
    assert soon_requests[0].cancel.cancelled
    assert not late[0].done()  # the timer fired for the earlier batch and re-armed for this one
    await asyncio.sleep(0.45)
    assert isinstance(late[0].exception(), DeadlineExceededError)
    first.cancel()
    second.cancel()
    watches.close()


@run_async
async def test_a_batch_that_finished_is_not_watched_any_more() -> None:
    watches, instance = _watches()
    requests, futures = _batch(0.05)
    watch = watches.arm(instance, requests, futures)
    assert watch is not None
    watch.cancel()  # the batch finished before its deadline; its answer is the batcher's to give
    await asyncio.sleep(0.15)
    assert not futures[0].done() and not requests[0].cancel.cancelled
    watches.close()


@run_async
async def test_a_batch_without_deadlines_gets_no_watch() -> None:
    watches, instance = _watches()
    request = InferenceRequest("m", {"x": np.ones((1, 1))})
    assert watches.arm(instance, [request], [asyncio.get_running_loop().create_future()]) is None
