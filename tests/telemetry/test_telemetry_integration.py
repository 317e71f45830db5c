"""The observer behind a real batcher and a real instance: the figures match what was served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from ladle import InferenceRequest, Instance, LadleError, PluginHost, ReplicaSet, RuntimeSpec, make_executor
from ladle.batching import Batcher
from ladle.telemetry import Telemetry
from ladle.testing.conformance import probe_inputs, write_probe


async def serve(telemetry: Telemetry, artifact: Path) -> tuple[list[object], dict[str, float | None]]:
    host = PluginHost()
    host.add_module("ladle.testing.conformance")
    host.discover()
    spec = RuntimeSpec(plugin="conformance-probe", artifact=str(artifact), model="probe", version="1")
    replicas = ReplicaSet("probe", "1")
    instance = Instance(spec, make_executor("thread", spec, host))
    replicas.add(instance)
    await instance.start()
    batcher: Batcher = host.load("batcher", "dynamic")(replicas, {}, telemetry.observer_for("probe", "1"))
    await batcher.start()
    telemetry.version_ready("probe", "1", batcher=batcher)
    try:
        inputs = [probe_inputs(2, seed) for seed in range(30)]
        inputs.append({"x": np.full((1, 4), -1.0, np.float32)})  # refused by the runtime: invalid_input
        futures = [batcher.submit(InferenceRequest("probe", x, version="1")) for x in inputs]
        results = list(await asyncio.gather(*futures, return_exceptions=True))
        window = telemetry.stats.window("probe", "1", 10)
        gauges = {"instances": window.instances, "queue_depth": window.queue_depth}
    finally:
        await batcher.stop(5)
        await instance.stop(5)
    return results, gauges


def test_a_real_batcher_feeds_the_stats(tmp_path: Path) -> None:
    telemetry = Telemetry({"metrics": False})
    try:
        results, gauges = asyncio.run(serve(telemetry, write_probe(tmp_path / "probe")))
        window = telemetry.stats.window("probe", "1", 10)
    finally:
        telemetry.close()
    failures = [r for r in results if isinstance(r, LadleError)]
    assert len(failures) == 1 and failures[0].code == "invalid_input"
    assert window.requests == 31
    assert window.errors_by_type == {"invalid_input": 1}
    assert window.batches >= 1
    assert window.batch_requests_mean is not None
    assert window.batches * window.batch_requests_mean == pytest.approx(31)
    assert window.batch_rows_mean is not None
    assert window.batches * window.batch_rows_mean == pytest.approx(61)
    assert window.latency_p99 is not None and window.latency_p99 > 0
    assert gauges == {"instances": 1, "queue_depth": 0}
