"""The batcher conformance kit: what every tensor batcher, built-in or third-party, must do.

Subclass :class:`BatcherConformance`, name the batcher and its options, and pytest runs every
check against real instances of a slow, counting runtime on threads::

    from ladle.testing.batcher_kit import BatcherConformance

    class TestMyBatcher(BatcherConformance):
        batcher = "mine"
        options = {"max_queue_size": 8}

The checks: each request gets its own outputs (rows split right, in any batch), a request already
past its deadline is refused at once and one whose deadline passes while it waits fails by that
deadline, a request whose future is cancelled is not run, a full or over-large request is refused
at once rather than queued, and ``stop`` answers everything it accepted (nothing hangs).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pytest

from ..batching import Batcher, ReplicaSet
from ..envelope import Arrays, Batch, InferenceRequest
from ..errors import DeadlineExceededError, LadleError, PayloadTooLargeError, ServerBusyError
from ..executors import ThreadExecutor
from ..hookspecs import hookimpl
from ..instance import Instance
from ..plugin_host import PluginHost, Register
from ..runtime import Runtime, RuntimeSpec
from ..tensors import Signature, TensorSpec

__all__ = ["BatcherConformance", "CountingRuntime"]

_RUNS: dict[str, int] = {}
_LOCK = threading.Lock()


class CountingRuntime(Runtime):
    """``y = x + 1`` for ``x`` FP32 ``[-1, 2]``; sleeps ``delay`` seconds per batch and counts the rows
    of real requests it ran (not warm-up's zeros) under ``options["key"]``."""

    name = "kit-counting"

    def load(self) -> None:
        self.delay = float(self.spec.options.get("delay", 0.0))
        self.key = str(self.spec.options.get("key", ""))

    def signature(self) -> Signature:
        return Signature((TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 2)),))

    def predict(self, batch: Batch) -> Arrays:
        time.sleep(self.delay)
        if batch.inputs["x"].any():  # warm-up's zeros are not counted
            with _LOCK:
                _RUNS[self.key] = _RUNS.get(self.key, 0) + batch.rows
        return {"y": batch.inputs["x"] + 1}

    def memory_bytes(self) -> int:
        return 8


@hookimpl
def register_runtimes(register: Register) -> None:
    register("kit-counting", CountingRuntime, description="the batcher kit's counting runtime")


class BatcherConformance:
    """Checks for one batcher; set ``batcher`` (its registered name) and, optionally, ``options``.

    ``queue_bound`` is the ``max_queue_size`` option the overload check sets (``None`` skips it,
    for a batcher without a bounded queue); ``row_cap_option`` names the option capping rows per
    batch (``None`` skips the over-large check).
    """

    batcher: ClassVar[str]
    options: ClassVar[Mapping[str, Any]] = {}
    queue_bound: ClassVar[str | None] = "max_queue_size"
    row_cap_option: ClassVar[str | None] = None
    timeout: ClassVar[float] = 30.0

    def plugin_host(self) -> PluginHost:
        host = PluginHost()
        host.add_module(__name__)
        return host.discover()

    def _run(self, scenario: Any) -> Any:
        return asyncio.run(asyncio.wait_for(scenario, self.timeout))

    async def _started(
        self, key: str, delay: float, instances: int = 1, **options: Any
    ) -> tuple[Batcher, ReplicaSet]:
        host = self.plugin_host()
        _RUNS.pop(key, None)
        replicas = ReplicaSet("kit", key)
        spec = RuntimeSpec(
            "kit-counting", ".", model="kit", version=key, options={"delay": delay, "key": key}
        )
        for index in range(instances):
            instance = Instance(spec, ThreadExecutor(spec, host), name=str(index))
            replicas.add(instance)
            await instance.start()
        factory = host.load("batcher", self.batcher)
        batcher: Batcher = factory(replicas, {**self.options, **options}, None)
        await batcher.start()
        return batcher, replicas

    @staticmethod
    async def _stop(batcher: Batcher, replicas: ReplicaSet) -> None:
        await batcher.stop(5.0)
        for instance in replicas.instances:
            await instance.stop(5.0)

    @staticmethod
    def _request(value: float, rows: int = 1, deadline: float | None = None) -> InferenceRequest:
        x = np.full((rows, 2), value, dtype=np.float32)
        return InferenceRequest("kit", {"x": x}, deadline=deadline or time.monotonic() + 10)

    def test_every_request_gets_its_own_outputs(self) -> None:
        async def scenario() -> None:
            batcher, replicas = await self._started("own", 0.005, instances=2)
            try:
                requests = [self._request(float(i), rows=1 + i % 3) for i in range(40)]
                answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
                for request, outputs in zip(requests, answers, strict=True):
                    np.testing.assert_array_equal(outputs["y"], request.inputs["x"] + 1)
            finally:
                await self._stop(batcher, replicas)

        self._run(scenario())

    def test_deadlines_are_kept_queued_or_refused(self) -> None:
        async def scenario() -> None:
            batcher, replicas = await self._started("deadline", 0.3)
            try:
                with pytest.raises(DeadlineExceededError):
                    await batcher.submit(self._request(1.0, deadline=time.monotonic() - 0.01))
                running = batcher.submit(self._request(1.0))
                short = time.monotonic() + 0.1
                waiting = batcher.submit(self._request(2.0, deadline=short))
                with pytest.raises(DeadlineExceededError):
                    await waiting
                assert time.monotonic() < short + 0.15, "the queued request failed long after its deadline"
                await running
            finally:
                await self._stop(batcher, replicas)

        self._run(scenario())

    def test_a_cancelled_request_does_not_run(self) -> None:
        async def scenario() -> None:
            batcher, replicas = await self._started("cancel", 0.2)
            try:
                first = batcher.submit(self._request(1.0))
                abandoned = [batcher.submit(self._request(2.0)) for _ in range(3)]
                await asyncio.sleep(0.01)
                for future in abandoned:
                    future.cancel()
                await first
                await asyncio.sleep(0.3)
                assert _RUNS.get("cancel", 0) == 1, f"cancelled requests ran: {_RUNS.get('cancel')} rows"
            finally:
                await self._stop(batcher, replicas)

        self._run(scenario())

    def test_overload_is_refused_at_once(self) -> None:
        bound = self.queue_bound
        if bound is None:
            pytest.skip("the batcher declares no bounded queue")

        async def scenario() -> None:
            batcher, replicas = await self._started("overload", 0.2, **{bound: 1})
            accepted = []
            try:
                with pytest.raises(ServerBusyError):
                    for _ in range(4):  # one runs, one queues, the next is refused without waiting
                        accepted.append(batcher.submit(self._request(1.0)))
                await asyncio.gather(*accepted)
            finally:
                await self._stop(batcher, replicas)

        self._run(scenario())

    def test_a_request_over_the_row_cap_is_refused(self) -> None:
        cap = self.row_cap_option
        if cap is None:
            pytest.skip("the batcher declares no row cap")

        async def scenario() -> None:
            batcher, replicas = await self._started("rows", 0.0, **{cap: 4})
            try:
                with pytest.raises(PayloadTooLargeError):
                    batcher.submit(self._request(1.0, rows=5))
            finally:
                await self._stop(batcher, replicas)

        self._run(scenario())

    def test_stop_answers_everything_it_accepted(self) -> None:
        async def scenario() -> None:
            batcher, replicas = await self._started("stop", 0.05)
            futures = [batcher.submit(self._request(float(i))) for i in range(6)]
            await asyncio.sleep(0.01)
            await self._stop(batcher, replicas)
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            for outcome in outcomes:
                assert isinstance(outcome, dict | LadleError), f"not answered: {outcome!r}"

        self._run(scenario())
