"""The passthrough batcher (ladle.plugins.batchers.passthrough): one request per batch, least-loaded, FIFO."""

from __future__ import annotations

import asyncio

import pytest

from ladle import ConfigError, PayloadTooLargeError, PluginHost, Priority, ReplicaSet
from ladle.plugins.batchers.passthrough.batcher import PassthroughBatcher

from .fakes import request, rig, run_async, until


@run_async
async def test_every_request_is_its_own_batch_served_fifo_whatever_its_priority() -> None:
    async with rig(PassthroughBatcher) as r:
        r.probe.close()
        first = request()
        f1 = r.batcher.submit(first)
        assert (r.batcher.in_flight, r.batcher.queue_depth) == (1, 0)
        await until(lambda: len(r.probe.batches) == 1)
        queued = [
            request(2.0, priority=Priority.LOW),
            request(3.0, rows=4),
            request(4.0, priority=Priority.HIGH),
        ]
        futures = [r.batcher.submit(q) for q in queued]
        r.probe.open()
        await asyncio.gather(f1, *futures)
        assert r.probe.batches == [[first.id], *([q.id] for q in queued)]
        assert r.probe.calls[2].shapes["x"] == (4, 3)


@run_async
async def test_requests_go_to_the_least_loaded_instance() -> None:
    async with rig(PassthroughBatcher, instances=2) as r:
        r.probe.close()
        futures = [r.batcher.submit(request(float(i))) for i in range(3)]
        assert (r.batcher.in_flight, r.batcher.queue_depth) == (2, 1)
        await until(lambda: len(r.probe.batches) == 2)
        assert r.probe.calls[0].runtime != r.probe.calls[1].runtime
        r.probe.open()
        await asyncio.gather(*futures)


@run_async
async def test_only_the_runtime_cap_limits_rows() -> None:
    async with rig(PassthroughBatcher, runtime_options={"max_batch_rows": 8}) as r:
        await r.batcher.submit(request(rows=8))
        with pytest.raises(PayloadTooLargeError) as caught:
            r.batcher.submit(request(rows=9))
        assert caught.value.status == 413
    async with rig(PassthroughBatcher) as r:
        result = await r.batcher.submit(request(rows=1000))
        assert result["y"].shape == (1000, 3)


def test_passthrough_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"batcher 'passthrough'.*max_batch_size: unknown key"):
        PassthroughBatcher(ReplicaSet("m", "1"), {"max_batch_size": 8})
    with pytest.raises(ConfigError, match="max_queue_size"):
        PassthroughBatcher(ReplicaSet("m", "1"), {"max_queue_size": -1})


def test_the_passthrough_batcher_is_registered_under_its_name(ladle_host: PluginHost) -> None:
    assert ladle_host.load("batcher", "passthrough") is PassthroughBatcher
