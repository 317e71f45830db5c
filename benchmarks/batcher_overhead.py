"""Per-request overhead of the built-in batchers, side by side with calling the instance directly.

The runtime is trivial (it returns its input), so what is measured is the path around it:
``submit`` -> queue / dispatch -> ``Instance.execute`` -> per-request future -> caller. Two executors:

- ``inline`` runs the runtime on the event loop (no thread hop): the batcher's own cost, isolated;
- ``thread`` is the default ``ThreadExecutor`` (one thread hop per batch), as a server runs it.

Two loads: one client awaiting each answer before the next request (latency path; the lone-request
fast path), and many concurrent clients (what queues while the instance is busy gets batched).

Run: ``python benchmarks/batcher_overhead.py [--requests 20000] [--clients 1 64] [--loop asyncio uvloop]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ladle import (
    Arrays,
    Batch,
    Batcher,
    Executor,
    InferenceRequest,
    Instance,
    ItemResult,
    PluginHost,
    ReplicaSet,
    Runtime,
    RuntimeCapabilities,
    RuntimeInfo,
    RuntimeSpec,
    ThreadExecutor,
    build_runtime,
    execute_isolated,
    hookimpl,
)
from ladle.plugins.batchers.dynamic.batcher import DynamicBatcher
from ladle.plugins.batchers.passthrough.batcher import PassthroughBatcher


class EchoRuntime(Runtime):
    name = "echo"

    def load(self) -> None:
        pass

    def predict(self, batch: Batch) -> Arrays:
        return {"y": batch.inputs["x"]}


class _Plugin:
    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        register("echo", EchoRuntime)


class InlineExecutor(Executor):
    """Runs the runtime on the event loop itself: no thread hop, so only the batching path is timed."""

    def __init__(self, spec: RuntimeSpec, host: PluginHost) -> None:
        self.runtime = build_runtime(spec, host)

    async def load(self) -> None:
        self.runtime.load()

    async def warmup(self) -> RuntimeInfo:
        return RuntimeInfo.of(self.runtime, 0, RuntimeCapabilities())

    async def execute(self, batch: Batch) -> list[ItemResult]:
        return execute_isolated(self.runtime, batch)

    async def stop(self) -> None:
        pass


Submit = Callable[[InferenceRequest], Awaitable[Arrays]]


async def _drive(submit: Submit, requests: list[InferenceRequest], clients: int) -> float:
    """Seconds to answer every request with ``clients`` concurrent callers."""
    chunks = [requests[i::clients] for i in range(clients)]

    async def client(chunk: list[InferenceRequest]) -> None:
        for request in chunk:
            await submit(request)

    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        await asyncio.gather(*(client(chunk) for chunk in chunks))
        return time.perf_counter() - start
    finally:
        gc.enable()


async def _measure(executor: str, mode: str, clients: int, count: int, repeat: int) -> float:
    """Microseconds per request: the fastest of ``repeat`` runs."""
    host = PluginHost()
    host.add_plugin(_Plugin(), "bench")
    host.collect()
    spec = RuntimeSpec("echo", ".", model="m", version="1")
    executor_class = InlineExecutor if executor == "inline" else ThreadExecutor
    instance = Instance(spec, executor_class(spec, host))
    await instance.start()
    replicas = ReplicaSet("m", "1")
    replicas.add(instance)
    batcher: Batcher | None = None
    submit: Submit
    if mode == "direct":

        async def direct(request: InferenceRequest) -> Arrays:
            (result,) = await instance.execute(Batch.from_requests([request]))
            assert not isinstance(result, Exception)
            return result

        submit = direct
    else:
        kind = DynamicBatcher if mode == "dynamic" else PassthroughBatcher
        batcher = kind(replicas, {"max_queue_size": 100_000})
        await batcher.start()
        submit = batcher.submit
    x = np.ones((1, 8), dtype=np.float32)
    times = []
    for _ in range(repeat):
        requests = [InferenceRequest("m", {"x": x}, version="1") for _ in range(count)]
        times.append(await _drive(submit, requests, clients) / count * 1e6)
    if batcher is not None:
        await batcher.stop(5)
    await instance.stop(5)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--loop", nargs="+", default=["asyncio", "uvloop"], choices=["asyncio", "uvloop"])
    args = parser.parse_args()
    print(f"{args.requests} one-row requests per run, best of {args.repeat}; µs/request (ratio to direct)")
    for loop_name in args.loop:
        if loop_name == "uvloop":
            try:
                import uvloop
            except ImportError:
                print("uvloop is not installed; skipped")
                continue
            runner: Callable[[Any], Any] = uvloop.run
        else:
            runner = asyncio.run
        for executor in ("inline", "thread"):
            for clients in args.clients:
                # rounds interleave the modes, so drift in the machine's speed hits each alike
                figures = {mode: float("inf") for mode in ("direct", "passthrough", "dynamic")}
                for _ in range(args.repeat):
                    for mode in figures:
                        value = runner(_measure(executor, mode, clients, args.requests, 1))
                        figures[mode] = min(figures[mode], value)
                base = figures["direct"]
                cells = "  ".join(
                    f"{mode} {value:7.2f} ({value / base:4.2f}x)" for mode, value in figures.items()
                )
                print(f"{loop_name:7} {executor:6} clients={clients:<3} {cells}")
    print(
        "overhead = batcher - direct; with one client and the inline executor it is the batcher's own "
        "per-request cost (fast path), with many clients dynamic batching amortises the per-batch cost"
    )


if __name__ == "__main__":
    main()
