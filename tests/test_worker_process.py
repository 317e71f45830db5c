"""The worker-process executor: shared-memory tensors, and a crashing child fails its instance only."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
import pytest

from ladle import (
    Arrays,
    Batch,
    InferenceRequest,
    Instance,
    InstanceFailedError,
    InstanceState,
    ModelNotReadyError,
    Runtime,
    RuntimeSpec,
    hookimpl,
    make_executor,
)
from ladle.plugin_host import PluginHost

CRASH = -7.0


class CrashyRuntime(Runtime):
    """Echoes its inputs plus its process id; a first value of -7 kills the process on the spot."""

    name = "crashy"

    def load(self) -> None:
        pass

    def predict(self, batch: Batch) -> Arrays:
        x = batch.inputs["x"]
        if x[0, 0] == CRASH:
            os._exit(3)  # no exception, no cleanup: the way a segfault or an OOM kill looks from outside
        return {"y": x * 2, "pid": np.full(batch.rows, os.getpid())}


@hookimpl
def register_runtimes(register: Any) -> None:
    register("crashy", CrashyRuntime)


def request(first: float, rows: int = 3) -> InferenceRequest:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    x[0, 0] = first
    return InferenceRequest("m", {"x": x})


def test_a_crashing_worker_fails_its_instance_and_not_the_server() -> None:
    host = PluginHost()
    host.add_module(__name__)  # by module name, so the worker process can rebuild the runtime
    host.collect()
    spec = RuntimeSpec("crashy", ".", model="m", version="1")

    async def scenario() -> None:
        instance = Instance(spec, make_executor("process", spec, host))
        await instance.start()
        try:
            big = request(1.0, rows=20_000)  # 320 kB of input through shared memory
            (result,) = await instance.execute(Batch.from_requests([big]))
            assert isinstance(result, dict)
            np.testing.assert_array_equal(result["y"], big.inputs["x"] * 2)
            assert int(result["pid"][0]) != os.getpid()
            with pytest.raises(InstanceFailedError, match="exit code 3"):
                await instance.execute(Batch.from_requests([request(CRASH)]))
            assert instance.state is InstanceState.FAILED
            with pytest.raises(ModelNotReadyError, match="failed"):
                await instance.execute(Batch.from_requests([request(1.0)]))
        finally:
            await instance.stop(1)

    asyncio.run(scenario())
