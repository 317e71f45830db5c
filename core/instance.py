"""Instance handles: one runtime instance behind an asynchronous ``execute(batch)``.

Every instance follows one lifecycle (loading -> warming -> ready -> draining -> stopped, or
failed) whatever executes it: a thread of the front process (``ThreadExecutor``, the default) or a
worker process rebuilt from the spec (``ProcessExecutor`` in ``ladle.worker``). MPS packing and Ray
placements plug in as further executors on this same seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .envelope import Batch
from .errors import InstanceFailedError, ModelNotReadyError
from .execution import ItemResult, execute_isolated
from .plugin_host import PluginHost
from .runtime import InstanceState, Runtime, RuntimeSpec, process_rss_bytes
from .tensors import Signature

__all__ = ["Executor", "Instance", "RuntimeInfo", "ThreadExecutor", "build_runtime", "make_executor"]

StateListener = Callable[["Instance", InstanceState], None]


@dataclass(frozen=True)
class RuntimeInfo:
    """What an executor learns from its runtime after warm-up (plain data, crosses processes)."""

    signature: dict[str, Any] | None
    memory_bytes: int | None
    max_batch_rows: int | None
    pads: bool
    details: dict[str, Any]

    @classmethod
    def of(cls, runtime: Runtime, rss_before: int) -> RuntimeInfo:
        signature = runtime.signature()
        measured = runtime.memory_bytes()
        if measured is None and rss_before:
            measured = max(0, process_rss_bytes() - rss_before)
        return cls(
            signature.to_dict() if signature else None,
            measured,
            runtime.max_batch_rows,
            type(runtime).pads,
            runtime.describe(),
        )


def build_runtime(spec: RuntimeSpec, host: PluginHost) -> Runtime:
    """Instantiate the runtime a spec names, through the plugin registry."""
    factory = host.load("runtime", spec.plugin)
    runtime = factory(spec)
    if not isinstance(runtime, Runtime):
        raise InstanceFailedError(f"runtime plugin {spec.plugin!r} did not build a ladle.Runtime")
    return runtime


class Executor(ABC):
    """Where a runtime runs. ``load``, ``warmup`` and ``stop`` are control path; ``execute`` is hot."""

    @abstractmethod
    async def load(self) -> None: ...

    @abstractmethod
    async def warmup(self) -> RuntimeInfo: ...

    @abstractmethod
    async def execute(self, batch: Batch) -> list[ItemResult]: ...

    @abstractmethod
    async def stop(self) -> None: ...


class ThreadExecutor(Executor):
    """Runs the runtime on one dedicated thread of the front process, off the event loop."""

    def __init__(self, spec: RuntimeSpec, host: PluginHost) -> None:
        self.spec = spec
        self._host = host
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"ladle-{spec.model}-{spec.version}")
        self._runtime: Runtime | None = None
        self._rss_before = 0

    @property
    def runtime(self) -> Runtime | None:
        """The runtime object, for batchers that drive it directly in this process (continuous)."""
        return self._runtime

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def load(self) -> None:
        self._rss_before = process_rss_bytes()
        self._runtime = build_runtime(self.spec, self._host)
        await self._call(self._runtime.load)

    async def warmup(self) -> RuntimeInfo:
        runtime = self._runtime
        assert runtime is not None
        await self._call(runtime.warmup)
        return RuntimeInfo.of(runtime, self._rss_before)

    async def execute(self, batch: Batch) -> list[ItemResult]:
        runtime = self._runtime
        if runtime is None:
            raise ModelNotReadyError("instance is not loaded")
        result: list[ItemResult] = await asyncio.get_running_loop().run_in_executor(
            self._pool, execute_isolated, runtime, batch
        )
        return result

    async def stop(self) -> None:
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            await self._call(runtime.unload)
        self._pool.shutdown(wait=False)


def make_executor(kind: str, spec: RuntimeSpec, host: PluginHost) -> Executor:
    """``"thread"`` or ``"process"``."""
    if kind == "process":
        from .worker import ProcessExecutor

        return ProcessExecutor(spec, host)
    return ThreadExecutor(spec, host)


class Instance:
    """Handle on one runtime instance; the batcher sees only this."""

    def __init__(
        self,
        spec: RuntimeSpec,
        executor: Executor,
        *,
        name: str = "0",
        listener: StateListener | None = None,
    ) -> None:
        self.spec = spec
        self.name = name
        self.executor = executor
        self.state = InstanceState.LOADING
        self.info: RuntimeInfo | None = None
        self.signature: Signature | None = None
        self.in_flight = 0
        self.error = ""
        self.started_at = 0.0
        self.listener = listener
        self._idle = asyncio.Event()
        self._idle.set()

    def _set(self, state: InstanceState) -> None:
        self.state = state
        if self.listener is not None:
            self.listener(self, state)

    @property
    def ready(self) -> bool:
        return self.state is InstanceState.READY

    async def start(self) -> None:
        """Load and warm up; on failure the instance is ``FAILED`` and the error is re-raised."""
        try:
            self._set(InstanceState.LOADING)
            await self.executor.load()
            self._set(InstanceState.WARMING)
            self.info = await self.executor.warmup()
            self.signature = Signature.from_dict(self.info.signature) if self.info.signature else None
        except BaseException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self._set(InstanceState.FAILED)
            with contextlib.suppress(Exception):  # keep the load error, not a cleanup error
                await self.executor.stop()
            raise
        self.started_at = time.time()
        self._set(InstanceState.READY)

    async def execute(self, batch: Batch) -> list[ItemResult]:
        """Run a batch; per-item results are arrays or the ``LadleError`` of that item."""
        if self.state is not InstanceState.READY and self.state is not InstanceState.DRAINING:
            raise ModelNotReadyError(f"instance {self.name} is {self.state.value}")
        self.in_flight += 1
        self._idle.clear()
        try:
            return await self.executor.execute(batch)
        except InstanceFailedError as exc:
            self.error = exc.message
            self._set(InstanceState.FAILED)
            raise
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop taking work, wait for in-flight batches (up to ``drain_timeout``), then unload."""
        if self.state in (InstanceState.STOPPED,):
            return
        if self.state is not InstanceState.FAILED:
            self._set(InstanceState.DRAINING)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), drain_timeout)
        await self.executor.stop()
        if self.state is not InstanceState.FAILED:
            self._set(InstanceState.STOPPED)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "in_flight": self.in_flight,
            "memory_bytes": self.info.memory_bytes if self.info else None,
            "runtime": self.info.details if self.info else {},
            "error": self.error,
        }
