"""The dynamic batcher (ladle.plugins.batchers.dynamic): batch composition, lanes, holding, options."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from ladle import (
    ConfigError,
    DeadlineExceededError,
    Foreground,
    PayloadTooLargeError,
    PluginHost,
    Priority,
    ReplicaSet,
)
from ladle.plugins.batchers.dynamic.batcher import DynamicBatcher

from .fakes import outcome, request, rig, run_async, turns, until


@run_async
async def test_lone_request_goes_at_once_and_what_queued_meanwhile_forms_the_next_batch() -> None:
    async with rig(DynamicBatcher) as r:
        r.probe.close()
        first = request(1.0)
        f1 = r.batcher.submit(first)
        # dispatched inside submit: nothing queued, one request in flight before any other arrived
        assert (r.batcher.queue_depth, r.batcher.in_flight) == (0, 1)
        await until(lambda: r.probe.batches == [[first.id]])
        later = [request(10.0 * i) for i in range(2, 5)]
        futures = [r.batcher.submit(q) for q in later]
        assert r.batcher.queue_depth == 3
        r.probe.open()
        results = await asyncio.gather(f1, *futures)
        assert r.probe.batches == [[first.id], [q.id for q in later]]
        for req, result in zip([first, *later], results, strict=True):
            np.testing.assert_array_equal(result["y"], req.inputs["x"] * 2)
        assert [ids for ids, _ in r.observer.batches] == r.probe.batches


@run_async
async def test_lone_request_is_not_held_for_preferred_sizes() -> None:
    options = {"preferred_batch_sizes": [4, 8], "max_queue_delay": 600_000}
    async with rig(DynamicBatcher, options) as r:
        lone = request()
        result = await r.batcher.submit(lone)  # would wait ten minutes if held
        np.testing.assert_array_equal(result["y"], lone.inputs["x"] * 2)
        assert r.probe.batches == [[lone.id]]


@run_async
async def test_max_batch_size_counts_rows_and_no_request_overtakes_one_that_does_not_fit() -> None:
    async with rig(DynamicBatcher, {"max_batch_size": 4}) as r:
        r.probe.close()
        busy = request()
        f0 = r.batcher.submit(busy)
        await until(lambda: len(r.probe.batches) == 1)
        queued = [request(float(i), rows=n) for i, n in enumerate([2, 1, 2, 1, 3])]
        futures = [r.batcher.submit(q) for q in queued]
        r.probe.open()
        results = await asyncio.gather(f0, *futures)
        a, b, c, d, e = (q.id for q in queued)
        assert r.probe.batches == [[busy.id], [a, b], [c, d], [e]]
        assert all(call.shapes["x"][0] <= 4 for call in r.probe.calls)
        for req, result in zip(queued, results[1:], strict=True):
            np.testing.assert_array_equal(result["y"], req.inputs["x"] * 2)


@run_async
async def test_a_request_with_more_rows_than_max_batch_size_is_refused_at_submit() -> None:
    async with rig(DynamicBatcher, {"max_batch_size": 4}) as r:
        with pytest.raises(PayloadTooLargeError) as caught:
            r.batcher.submit(request(rows=5))
        assert caught.value.status == 413
        assert caught.value.details == {"rows": 5, "max_rows": 4}
        assert r.batcher.queue_depth == 0 and r.probe.batches == []
        await r.batcher.submit(request(rows=4))  # exactly the cap is fine


@run_async
async def test_the_runtime_cap_bounds_batches_and_admission() -> None:
    async with rig(DynamicBatcher, {"max_batch_size": 32}, runtime_options={"max_batch_rows": 2}) as r:
        with pytest.raises(PayloadTooLargeError, match="at most 2 rows"):
            r.batcher.submit(request(rows=3))
        r.probe.close()
        f0 = r.batcher.submit(request())
        await until(lambda: len(r.probe.batches) == 1)
        futures = [r.batcher.submit(request(float(i))) for i in range(5)]
        r.probe.open()
        await asyncio.gather(f0, *futures)
        assert [len(ids) for ids in r.probe.batches] == [1, 2, 2, 1]


@run_async
async def test_only_shape_compatible_requests_share_a_batch() -> None:
    async with rig(DynamicBatcher) as r:
        r.probe.close()
        f0 = r.batcher.submit(request())
        await until(lambda: len(r.probe.batches) == 1)
        wide_a = request(1.0, width=3)
        narrow = request(2.0, width=4)
        wide_b = request(3.0, width=3)
        ints = request(4.0, width=3, dtype=np.int64)
        futures = [r.batcher.submit(q) for q in (wide_a, narrow, wide_b, ints)]
        r.probe.open()
        await asyncio.gather(f0, *futures)
        assert r.probe.batches[1:] == [[wide_a.id, wide_b.id], [narrow.id], [ints.id]]


@run_async
async def test_a_padding_runtime_shares_batches_across_shapes_with_zero_padding() -> None:
    async with rig(DynamicBatcher, runtime="padding") as r:
        r.probe.close()
        f0 = r.batcher.submit(request())
        await until(lambda: len(r.probe.batches) == 1)
        short = request(1.0, width=2)
        long = request(5.0, width=4)
        futures = [r.batcher.submit(q) for q in (short, long)]
        r.probe.open()
        results = await asyncio.gather(f0, *futures)
        call = r.probe.calls[1]
        assert call.ids == [short.id, long.id]
        np.testing.assert_array_equal(call.inputs["x"], [[1, 1, 0, 0], [5, 5, 5, 5]])
        np.testing.assert_array_equal(results[2]["y"], [[10, 10, 10, 10]])
        np.testing.assert_array_equal(results[1]["y"], [[2, 2]])  # cut back to the request's own width


@run_async
async def test_preferred_sizes_cut_the_queue_into_the_largest_size_that_fits() -> None:
    async with rig(DynamicBatcher, {"max_batch_size": 8, "preferred_batch_sizes": [2, 4]}) as r:
        r.probe.close()
        f0 = r.batcher.submit(request())
        await until(lambda: len(r.probe.batches) == 1)
        futures = [r.batcher.submit(request(float(i))) for i in range(7)]
        r.probe.open()
        await asyncio.gather(f0, *futures)
        # 7 queued rows -> 4, then 3 -> 2, then 1 (below every preferred size: taken as it is)
        assert [len(ids) for ids in r.probe.batches] == [1, 4, 2, 1]


@run_async
async def test_a_freed_instance_holds_for_a_preferred_size_until_enough_rows_queue() -> None:
    options = {"preferred_batch_sizes": [3], "max_queue_delay": 600_000}
    async with rig(DynamicBatcher, options) as r:
        r.probe.close()
        first = request()
        f1 = r.batcher.submit(first)
        await until(lambda: len(r.probe.batches) == 1)
        second = request(2.0)
        f2 = r.batcher.submit(second)
        r.probe.open()
        await f1
        await turns()
        # the instance is free, but 1 queued row < 3: it waits for companions
        assert (r.batcher.queue_depth, r.batcher.in_flight) == (1, 0)
        third = request(3.0)
        f3 = r.batcher.submit(third)
        assert (r.batcher.queue_depth, r.batcher.in_flight) == (2, 0)
        fourth = request(4.0)
        f4 = r.batcher.submit(fourth)  # 3 rows queued: dispatched within submit
        assert (r.batcher.queue_depth, r.batcher.in_flight) == (0, 3)
        await asyncio.gather(f2, f3, f4)
        assert r.probe.batches == [[first.id], [second.id, third.id, fourth.id]]


@run_async
async def test_holding_ends_once_the_oldest_request_waited_max_queue_delay() -> None:
    async with rig(DynamicBatcher, {"preferred_batch_sizes": [4], "max_queue_delay": 50}) as r:
        r.probe.close()
        f1 = r.batcher.submit(request())
        await until(lambda: len(r.probe.batches) == 1)
        lone = request(2.0)
        f2 = r.batcher.submit(lone)
        r.probe.open()
        await asyncio.gather(f1, f2)
        assert r.probe.batches[1] == [lone.id]
        assert r.probe.calls[1].at - lone.arrival >= 0.05


@run_async
async def test_max_queue_delay_alone_never_holds_an_instance() -> None:
    async with rig(DynamicBatcher, {"max_queue_delay": 600_000}) as r:
        r.probe.close()
        f1 = r.batcher.submit(request())
        await until(lambda: len(r.probe.batches) == 1)
        f2 = r.batcher.submit(request(2.0))
        r.probe.open()
        await f1
        assert r.batcher.in_flight == 1  # the freed instance took the queued request at once
        await f2


@run_async
async def test_higher_priority_lanes_are_batched_first_and_fifo_within_a_lane() -> None:
    async with rig(DynamicBatcher, {"max_batch_size": 2}) as r:
        r.probe.close()
        busy = request()
        f0 = r.batcher.submit(busy)
        await until(lambda: len(r.probe.batches) == 1)
        low_a = request(1.0, priority=Priority.LOW)
        normal = request(2.0, priority=Priority.NORMAL)
        high_a = request(3.0, priority=Priority.HIGH)
        low_b = request(4.0, priority=Priority.LOW)
        high_b = request(5.0, priority=Priority.HIGH)
        futures = [r.batcher.submit(q) for q in (low_a, normal, high_a, low_b, high_b)]
        r.probe.open()
        await asyncio.gather(f0, *futures)
        # a lower lane only fills what a higher lane left room for once that lane is empty
        assert r.probe.batches == [[busy.id], [high_a.id, high_b.id], [normal.id, low_a.id], [low_b.id]]


@run_async
async def test_instance_concurrency_allows_several_batches_per_instance() -> None:
    async with rig(DynamicBatcher, {"instance_concurrency": 2}) as r:
        r.probe.close()
        f1 = r.batcher.submit(request())
        f2 = r.batcher.submit(request())
        f3 = r.batcher.submit(request())
        assert (r.batcher.in_flight, r.batcher.queue_depth) == (2, 1)
        r.probe.open()
        await asyncio.gather(f1, f2, f3)


@run_async
async def test_an_instance_added_later_takes_queued_work_at_once() -> None:
    async with rig(DynamicBatcher) as r:
        r.probe.close()
        f1 = r.batcher.submit(request())
        await until(lambda: len(r.probe.batches) == 1)
        waiting = request(2.0)
        f2 = r.batcher.submit(waiting)
        assert r.batcher.queue_depth == 1
        await r.add_instance()
        await until(lambda: len(r.probe.batches) == 2)  # the new instance started it; the gate is shut
        assert r.probe.batches[1] == [waiting.id]
        assert r.probe.calls[0].runtime != r.probe.calls[1].runtime
        r.probe.open()
        await asyncio.gather(f1, f2)


def _batcher(options: dict[str, object]) -> DynamicBatcher:
    return DynamicBatcher(ReplicaSet("m", "1"), options)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_queue_delay": -1}, "max_queue_delay"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"preferred_batch_sizes": [0, 4]}, "preferred_batch_sizes"),
        ({"preferred_batch_sizes": [64], "max_batch_size": 32}, "max_batch_size (32)"),
        ({"instance_concurrency": "many"}, "instance_concurrency"),
        ({"max_batch": 8}, "max_batch: unknown key"),
    ],
)
def test_bad_options_are_refused_at_construction_naming_the_option(
    options: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError, match="batcher 'dynamic'") as caught:
        _batcher(options)
    assert named in caught.value.message


def test_options_are_normalised() -> None:
    batcher = _batcher({"preferred_batch_sizes": [8, 2, 8], "max_batch_size": 8})
    assert batcher.settings.preferred_batch_sizes == (2, 8)
    assert batcher.settings.max_queue_delay == 0.0


def test_the_dynamic_batcher_is_registered_under_its_name(ladle_host: PluginHost) -> None:
    assert ladle_host.load("batcher", "dynamic") is DynamicBatcher
    assert ladle_host.get("batcher", "dynamic").plugin == "batcher-dynamic"


@run_async
async def test_deadline_drop_in_a_lower_lane_does_not_block_higher_lanes() -> None:
    async with rig(DynamicBatcher) as r:
        r.probe.close()
        f0 = r.batcher.submit(request())
        await until(lambda: len(r.probe.batches) == 1)
        doomed = request(priority=Priority.LOW, deadline=time.monotonic() + 0.02)
        fd = r.batcher.submit(doomed)
        high = request(2.0, priority=Priority.HIGH)
        fh = r.batcher.submit(high)
        assert isinstance(await outcome(fd), DeadlineExceededError)  # while the instance is still busy
        r.probe.open()
        await asyncio.gather(f0, fh)
        assert doomed.id not in r.probe.seen()


async def _slow_batch(r: Any, item: Any, seconds: float) -> float:
    """Run ``item`` alone for at least ``seconds``; the time its answer came back."""
    r.probe.close()
    future = r.batcher.submit(item)
    await until(lambda: item.id in r.probe.seen())
    await asyncio.sleep(seconds)
    r.probe.open()
    await future
    return time.monotonic()


@run_async
async def test_background_work_takes_its_share_of_the_instance_while_other_requests_arrive() -> None:
    async with rig(DynamicBatcher, {"max_batch_size": 4, "background_share": 0.5}) as r:
        await r.batcher.submit(request())  # other traffic is arriving
        job_a = request(1.0, priority=Priority.LOW)
        finished = await _slow_batch(r, job_a, 0.1)  # ran >= 0.1 s: the next waits >= 0.1 s more
        job_b = request(2.0, priority=Priority.LOW)
        held = r.batcher.submit(job_b)
        online = request(3.0)
        await r.batcher.submit(online)  # served at once, not filled up with the held job request
        assert [online.id] in r.probe.batches
        await held
        started = next(call.at for call in r.probe.calls if job_b.id in call.ids)
        assert started - finished >= 0.095


@run_async
async def test_background_work_runs_back_to_back_when_nothing_else_arrives() -> None:
    async with rig(DynamicBatcher, {"max_batch_size": 4}) as r:  # share 0.001: a pause would be >= 99.9 s
        finished = await _slow_batch(r, request(1.0, priority=Priority.LOW), 0.1)
        job_b = request(2.0, priority=Priority.LOW)
        await r.batcher.submit(job_b)
        started = next(call.at for call in r.probe.calls if job_b.id in call.ids)
        assert started - finished < 0.5


@run_async
async def test_online_traffic_to_another_model_paces_background_work_too() -> None:
    shared = Foreground()  # what the replica sets of one server share
    options = {"max_batch_size": 4, "background_share": 0.5}
    async with (
        rig(DynamicBatcher, options, foreground=shared) as online,
        rig(DynamicBatcher, options, foreground=shared) as jobs,
    ):
        await online.batcher.submit(request())  # the other model serves online traffic
        finished = await _slow_batch(jobs, request(1.0, priority=Priority.LOW), 0.1)
        job_b = request(2.0, priority=Priority.LOW)
        await jobs.batcher.submit(job_b)
        started = next(call.at for call in jobs.probe.calls if job_b.id in call.ids)
        assert started - finished >= 0.095
    async with rig(DynamicBatcher, options) as online, rig(DynamicBatcher, options) as jobs:
        await online.batcher.submit(request())  # another server's traffic: nothing to pace for
        finished = await _slow_batch(jobs, request(1.0, priority=Priority.LOW), 0.1)
        job_b = request(2.0, priority=Priority.LOW)
        await jobs.batcher.submit(job_b)
        started = next(call.at for call in jobs.probe.calls if job_b.id in call.ids)
        assert started - finished < 0.05


def test_background_share_is_validated() -> None:
    for share, problem in ((0, "greater than 0"), (1.5, "less than or equal to 1")):
        with pytest.raises(ConfigError, match=f"background_share: Input should be {problem}"):
            DynamicBatcher(ReplicaSet("m", "1"), {"background_share": share})
