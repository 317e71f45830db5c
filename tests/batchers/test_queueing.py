"""Behaviour both built-in batchers share (ladle.QueueingBatcher): admission, deadlines,
cancellation, error isolation, instance failure, draining and the observer."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from ladle import (
    Arrays,
    Batcher,
    DeadlineExceededError,
    InferenceRequest,
    InstanceState,
    InvalidInputError,
    ModelNotReadyError,
    ServerBusyError,
    ThreadExecutor,
)
from ladle.batching import enforce_deadline
from ladle.plugins.batchers.dynamic.batcher import DynamicBatcher
from ladle.plugins.batchers.passthrough.batcher import PassthroughBatcher

from .fakes import CrashingExecutor, outcome, request, rig, run_async, turns, until

BATCHERS = pytest.mark.parametrize(
    "kind", [DynamicBatcher, PassthroughBatcher], ids=["dynamic", "passthrough"]
)


@BATCHERS
@run_async
async def test_a_full_queue_refuses_at_once_with_503_and_retry_after(kind: type[Batcher]) -> None:
    async with rig(kind, {"max_queue_size": 2, "retry_after": 0.5}) as r:
        r.probe.close()
        futures = [r.batcher.submit(request())]
        futures += [r.batcher.submit(request()) for _ in range(2)]
        assert r.batcher.queue_depth == 2
        with pytest.raises(ServerBusyError) as caught:
            r.batcher.submit(request())
        assert caught.value.status == 503 and caught.value.retry_after == 0.5
        assert r.batcher.queue_depth == 2
        r.probe.open()
        await asyncio.gather(*futures)
        await r.batcher.submit(request())  # room again
        assert len(r.probe.batches) == 4 if kind is PassthroughBatcher else 3


@BATCHERS
@run_async
async def test_a_request_whose_deadline_passes_in_the_queue_is_dropped_promptly_without_compute(
    kind: type[Batcher],
) -> None:
    async with rig(kind) as r:
        r.probe.close()
        f0 = r.batcher.submit(request())
        await until(lambda: len(r.probe.batches) == 1)
        doomed = request(2.0, deadline=time.monotonic() + 0.03)
        survivor = request(3.0, deadline=time.monotonic() + 30)
        fd = r.batcher.submit(doomed)
        fs = r.batcher.submit(survivor)
        # answered at its deadline while the only instance is still busy
        error = await outcome(fd)
        assert isinstance(error, DeadlineExceededError) and error.status == 504
        assert r.batcher.queue_depth == 1 and not f0.done()
        assert r.observer.dropped == [([doomed.id], "deadline_exceeded")]
        r.probe.open()
        await asyncio.gather(f0, fs)
        assert doomed.id not in r.probe.seen()
        assert survivor.id in r.probe.seen()


@BATCHERS
@run_async
async def test_a_deadline_that_passes_while_the_batch_runs_is_answered_504_then(kind: type[Batcher]) -> None:
    assert kind.enforces_deadlines
    async with rig(kind) as r:
        r.probe.close()
        doomed = request(deadline=time.monotonic() + 0.05)
        patient = request(2.0, deadline=time.monotonic() + 30)
        f_doomed = r.batcher.submit(doomed)
        await until(lambda: len(r.probe.batches) == 1)
        f_patient = r.batcher.submit(patient)
        error = await asyncio.wait_for(outcome(f_doomed), 2)  # while the instance is still blocked
        assert isinstance(error, DeadlineExceededError) and error.status == 504
        assert doomed.cancel.cancelled and doomed.cancel.reason == "deadline"
        assert not f_patient.done()
        r.probe.open()
        assert (await f_patient) is not None
        assert r.batcher.in_flight == 0


@BATCHERS
@run_async
async def test_a_request_already_past_its_deadline_is_refused_at_submit(kind: type[Batcher]) -> None:
    async with rig(kind) as r:
        late = request(deadline=time.monotonic() - 0.001)
        with pytest.raises(DeadlineExceededError):
            r.batcher.submit(late)
        assert r.probe.batches == [] and r.observer.dropped == [([late.id], "deadline_exceeded")]


@BATCHERS
@run_async
async def test_cancelled_requests_are_skipped(kind: type[Batcher]) -> None:
    async with rig(kind) as r:
        r.probe.close()
        f0 = r.batcher.submit(request())
        await until(lambda: len(r.probe.batches) == 1)
        signalled, abandoned, kept = request(2.0), request(3.0), request(4.0)
        f_signalled = r.batcher.submit(signalled)
        f_abandoned = r.batcher.submit(abandoned)
        f_kept = r.batcher.submit(kept)
        signalled.cancel.cancel("client went away")
        f_abandoned.cancel()
        r.probe.open()
        await asyncio.gather(f0, f_kept)
        assert f_signalled.cancelled() and f_abandoned.cancelled()
        assert r.probe.seen() == {r.probe.batches[0][0], kept.id}
        assert sorted(ids for dropped, code in r.observer.dropped for ids in dropped) == sorted(
            [signalled.id, abandoned.id]
        )
        assert r.batcher.queue_depth == 0


@BATCHERS
@run_async
async def test_a_failing_item_fails_alone(kind: type[Batcher]) -> None:
    async with rig(kind) as r:
        r.probe.close()
        f0 = r.batcher.submit(request())
        await until(lambda: len(r.probe.batches) == 1)
        good_a, bad, good_b = request(1.0), request(-1.0), request(2.0)
        futures = [r.batcher.submit(q) for q in (good_a, bad, good_b)]
        r.probe.open()
        await f0
        results = [await outcome(f) for f in futures]
        if kind is DynamicBatcher:  # tried as one batch first, then item by item next to the runtime
            assert r.probe.batches[1] == [good_a.id, bad.id, good_b.id]
            assert [ids for ids, _ in r.observer.batches][1] == [good_a.id, bad.id, good_b.id]
        assert isinstance(results[1], InvalidInputError) and results[1].status == 400
        for req, result in ((good_a, results[0]), (good_b, results[2])):
            assert isinstance(result, dict)
            np.testing.assert_array_equal(result["y"], req.inputs["x"] * 2)
        codes = [code for _, errors in r.observer.batches for code in errors]
        assert sorted(codes, key=str) == sorted([None, None, None, "invalid_input"], key=str)


@BATCHERS
@run_async
async def test_a_batch_whose_instance_dies_runs_once_more_on_a_healthy_one(kind: type[Batcher]) -> None:
    async with rig(kind, executors=[CrashingExecutor, ThreadExecutor]) as r:
        crashing, healthy = r.replicas.instances
        r.probe.close()
        doomed = request(1.0, parameters={"crash": True})
        f_doomed = r.batcher.submit(doomed)  # the first idle instance: the crashing one
        f_busy = r.batcher.submit(request(2.0))  # the healthy one
        queued = [request(3.0), request(4.0)]
        f_queued = [r.batcher.submit(q) for q in queued]
        assert r.batcher.queue_depth == 2
        r.probe.open()
        retried = await outcome(f_doomed)  # the crashing executor only dies; the healthy one answers
        assert isinstance(retried, dict), retried
        np.testing.assert_array_equal(retried["y"], doomed.inputs["x"] * 2)
        assert crashing.state is InstanceState.FAILED
        await asyncio.gather(f_busy, *f_queued)
        later = await r.batcher.submit(request(5.0))
        np.testing.assert_array_equal(later["y"], np.full((1, 3), 10.0))
        assert healthy.ready and {c.runtime for c in r.probe.calls} == {r.probe.calls[0].runtime}
        assert all(errors == [None] * len(errors) for _, errors in r.observer.batches)
        assert doomed.id in [i for ids, _ in r.observer.batches for i in ids]


@BATCHERS
@run_async
async def test_without_retries_a_lost_batch_fails_at_once_with_503(kind: type[Batcher]) -> None:
    async with rig(kind, {"retry_failed": False}, executors=[CrashingExecutor, ThreadExecutor]) as r:
        r.probe.close()
        f_doomed = r.batcher.submit(request(parameters={"crash": True}))
        f_busy = r.batcher.submit(request(2.0))
        r.probe.open()
        error = await outcome(f_doomed)
        assert isinstance(error, ModelNotReadyError) and error.status == 503 and error.retry_after == 1.0
        assert "being replaced" in error.message
        assert isinstance(await f_busy, dict)
        assert r.observer.batches[0][1] == ["model_not_ready"]


@BATCHERS
@run_async
async def test_when_the_last_instance_dies_queued_and_new_requests_get_503(kind: type[Batcher]) -> None:
    async with rig(kind, executors=[CrashingExecutor]) as r:
        r.probe.close()
        f_doomed = r.batcher.submit(request(parameters={"crash": True}))
        f_queued = r.batcher.submit(request(2.0))
        r.probe.open()
        lost = await outcome(f_doomed)  # no healthy instance to retry on: 503 at once
        assert isinstance(lost, ModelNotReadyError) and lost.retry_after is not None
        error = await outcome(f_queued)
        assert isinstance(error, ModelNotReadyError) and error.status == 503 and error.retry_after
        with pytest.raises(ModelNotReadyError):
            r.batcher.submit(request(3.0))


@BATCHERS
@run_async
async def test_stop_refuses_new_work_and_finishes_queued_and_in_flight_work(kind: type[Batcher]) -> None:
    async with rig(kind) as r:
        r.probe.close()
        futures = [r.batcher.submit(request(float(i))) for i in range(3)]
        await until(lambda: len(r.probe.batches) == 1)
        stopping = asyncio.create_task(r.batcher.stop(10))
        await turns()
        assert not stopping.done()
        with pytest.raises(ModelNotReadyError):
            r.batcher.submit(request())
        r.probe.open()
        await stopping
        assert all(f.done() and f.exception() is None for f in futures)
        assert r.batcher.queue_depth == 0 and r.batcher.in_flight == 0


@BATCHERS
@run_async
async def test_stop_gives_up_after_the_drain_timeout(kind: type[Batcher]) -> None:
    async with rig(kind) as r:
        r.probe.close()
        running = r.batcher.submit(request())
        waiting = r.batcher.submit(request(2.0))
        await until(lambda: len(r.probe.batches) == 1)
        await r.batcher.stop(0.02)
        for future in (running, waiting):
            assert isinstance(await outcome(future), ModelNotReadyError)
        assert r.batcher.queue_depth == 0


@BATCHERS
@run_async
async def test_the_observer_is_fed_once_per_batch(kind: type[Batcher]) -> None:
    async with rig(kind) as r:
        r.probe.close()
        futures = [r.batcher.submit(request(float(i))) for i in range(4)]
        await until(lambda: len(r.probe.batches) == 1)
        r.probe.open()
        await asyncio.gather(*futures)
        assert [ids for ids, _ in r.observer.batches] == r.probe.batches
        assert all(errors == [None] * len(ids) for ids, errors in r.observer.batches)


class _SilentBatcher(Batcher):
    """Queues nothing and never answers: only the deadline can."""

    def submit(self, request: InferenceRequest) -> asyncio.Future[Arrays]:
        return asyncio.get_running_loop().create_future()


@run_async
async def test_a_batcher_that_does_not_enforce_deadlines_gets_a_timer_per_request() -> None:
    async with rig(DynamicBatcher) as r:
        silent = _SilentBatcher(r.batcher.replicas, {})
        assert not silent.enforces_deadlines
        timed, untimed = request(deadline=time.monotonic() + 0.03), request()
        f_timed, f_untimed = silent.submit(timed), silent.submit(untimed)
        enforce_deadline(silent, timed, f_timed)
        enforce_deadline(silent, untimed, f_untimed)
        error = await asyncio.wait_for(outcome(f_timed), 2)
        assert isinstance(error, DeadlineExceededError) and timed.cancel.reason == "deadline"
        assert not f_untimed.done()
