"""A recording runtime and helpers that drive batchers over real ``Instance``s, deterministically.

The runtime records every batch it starts, blocks on a gate the test opens (so a test decides when
an instance is busy and when it frees up), refuses rows with a negative value (a per-item error),
and can be told to crash its instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec

import numpy as np

from ladle import (
    Arrays,
    Batch,
    Batcher,
    Foreground,
    InferenceRequest,
    Instance,
    InstanceFailedError,
    InvalidInputError,
    PluginHost,
    Priority,
    ReplicaSet,
    Runtime,
    RuntimeSpec,
    ThreadExecutor,
    hookimpl,
)

P = ParamSpec("P")


@dataclass
class Call:
    """One ``predict`` call as the runtime saw it."""

    ids: list[str]
    shapes: dict[str, tuple[int, ...]]
    inputs: Arrays
    runtime: int  # id() of the runtime object: tells instances apart
    at: float  # time.monotonic() when the call started


@dataclass
class Probe:
    """Shared by a test and the runtimes it drives (same process, any thread)."""

    calls: list[Call] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.gate.set()

    def close(self) -> None:
        """From now on every batch blocks until ``open``."""
        self.gate.clear()

    def open(self) -> None:
        self.gate.set()

    @property
    def batches(self) -> list[list[str]]:
        """Request ids of each ``predict`` call, in the order the calls started."""
        with self.lock:
            return [call.ids for call in self.calls]

    def seen(self) -> set[str]:
        with self.lock:
            return {i for call in self.calls for i in call.ids}


PROBES: dict[str, Probe] = {}


class RecordingRuntime(Runtime):
    """Doubles ``x``; a row with a negative value is invalid input. Options: ``probe``, ``max_batch_rows``."""

    name = "recording"

    def load(self) -> None:
        self.probe = PROBES[self.spec.options["probe"]]
        self.max_batch_rows = self.spec.options.get("max_batch_rows")

    def predict(self, batch: Batch) -> Arrays:
        probe = self.probe
        call = Call(
            [item.request_id for item in batch.items],
            {name: a.shape for name, a in batch.inputs.items()},
            dict(batch.inputs),
            id(self),
            time.monotonic(),
        )
        with probe.lock:
            probe.calls.append(call)
        if not probe.gate.wait(20):
            raise RuntimeError("the test never opened the gate")
        x = batch.inputs["x"]
        if (x < 0).any():
            raise InvalidInputError("x must not be negative")
        return {"y": x * 2}


class PaddingRuntime(RecordingRuntime):
    """The same, registered as taking zero-padded batches of requests of different shapes."""

    name = "padding"


class CrashingExecutor(ThreadExecutor):
    """A thread executor whose instance dies on a batch holding a request with ``crash`` set."""

    async def execute(self, batch: Batch) -> list[Any]:
        if any(item.parameters.get("crash") for item in batch.items):
            probe: Probe = PROBES[self.spec.options["probe"]]
            await asyncio.to_thread(probe.gate.wait, 20)
            raise InstanceFailedError("the worker process died (simulated)")
        return await super().execute(batch)


class _TestPlugin:
    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        register("recording", RecordingRuntime)
        register("padding", PaddingRuntime, capabilities={"pads": True})


def make_host() -> PluginHost:
    """A fresh plugin host that knows only the test runtimes (no entry points)."""
    host = PluginHost()
    host.add_plugin(_TestPlugin(), "test-plugin")
    return host.collect()


class RecordingObserver:
    """Records what a batcher feeds its observer."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], list[str | None]]] = []
        self.dropped: list[tuple[list[str], str]] = []

    def batch_done(
        self,
        requests: Sequence[InferenceRequest],
        started: float,
        finished: float,
        errors: Sequence[str | None],
        outputs: Sequence[Arrays | None] | None = None,
        runtime: tuple[float, float] | None = None,
    ) -> None:
        assert started <= finished
        assert outputs is None or len(outputs) == len(requests)
        assert all((o is None) == (e is not None) for o, e in zip(outputs or (), errors, strict=False))
        assert runtime is None or started <= runtime[0] <= runtime[1] <= finished
        self.batches.append(([r.id for r in requests], list(errors)))

    def requests_dropped(self, requests: Sequence[InferenceRequest], code: str) -> None:
        self.dropped.append(([r.id for r in requests], code))


@dataclass
class Rig:
    """A batcher over real instances, with the probe that controls them."""

    batcher: Batcher
    replicas: ReplicaSet
    probe: Probe
    observer: RecordingObserver
    host: PluginHost
    spec: RuntimeSpec

    async def add_instance(self, executor: type[ThreadExecutor] = ThreadExecutor) -> Instance:
        instance = Instance(self.spec, executor(self.spec, self.host), name=str(len(self.replicas.instances)))
        await instance.start()
        self.replicas.add(instance)
        return instance


@contextlib.asynccontextmanager
async def rig(
    batcher_class: type[Batcher],
    options: dict[str, Any] | None = None,
    *,
    instances: int = 1,
    runtime: str = "recording",
    runtime_options: dict[str, Any] | None = None,
    executors: Sequence[type[ThreadExecutor]] = (),
    foreground: Foreground | None = None,
) -> AsyncIterator[Rig]:
    """Start ``instances`` instances and a batcher (of a replica set sharing ``foreground`` when
    given); stop everything afterwards."""
    probe = Probe()
    key = uuid.uuid4().hex
    PROBES[key] = probe
    host = make_host()
    spec = RuntimeSpec(
        runtime, ".", model="m", version="1", options={"probe": key, **(runtime_options or {})}
    )
    replicas = ReplicaSet("m", "1", foreground)
    observer = RecordingObserver()
    batcher = batcher_class(replicas, options or {}, observer)
    setup = Rig(batcher, replicas, probe, observer, host, spec)
    kinds = list(executors) or [ThreadExecutor] * instances
    for kind in kinds:
        await setup.add_instance(kind)
    await batcher.start()
    try:
        yield setup
    finally:
        probe.open()
        await batcher.stop(5)
        await asyncio.gather(*(i.stop(5) for i in replicas.instances))
        del PROBES[key]


def request(
    value: float = 1.0,
    *,
    rows: int = 1,
    width: int = 3,
    dtype: Any = np.float32,
    priority: Priority = Priority.NORMAL,
    deadline: float | None = None,
    parameters: dict[str, Any] | None = None,
) -> InferenceRequest:
    """A request whose ``x`` is ``rows`` x ``width``, filled with ``value`` (row i: value + i)."""
    x = (np.arange(rows, dtype=np.float64)[:, None] + value + np.zeros((1, width))).astype(dtype)
    return InferenceRequest(
        "m", {"x": x}, version="1", priority=priority, deadline=deadline, parameters=parameters
    )


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (polling the event loop) until ``condition`` holds; fail after ``timeout``."""
    limit = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > limit:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


async def turns(count: int = 20) -> None:
    """Let the event loop run ``count`` iterations (callbacks and tasks already due)."""
    for _ in range(count):
        await asyncio.sleep(0)


def run_async(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test in a fresh event loop, failing it instead of hanging after 60 s."""

    @functools.wraps(test)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 60))

    return wrapper


async def outcome(future: Awaitable[Arrays]) -> Arrays | BaseException:
    """The result of a future, or the exception it raises."""
    try:
        return await future
    except BaseException as exc:  # CancelledError included: a cancelled request is an outcome too
        return exc
