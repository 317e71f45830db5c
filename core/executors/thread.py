"""The thread executor: the runtime on one dedicated thread of the front process."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..envelope import Batch
from ..errors import ModelNotReadyError
from ..plugin_host import PluginHost
from ..runtime import Runtime, RuntimeSpec, process_rss_bytes
from .base import Executor, RuntimeInfo, build_runtime
from .dedicated import DedicatedThread
from .isolation import ItemResult, execute_isolated

__all__ = ["ThreadExecutor"]


class ThreadExecutor(Executor):
    """Runs the runtime on one dedicated thread of the front process, off the event loop."""

    def __init__(self, spec: RuntimeSpec, host: PluginHost) -> None:
        self.spec = spec
        self._host = host
        self._thread = DedicatedThread(f"ladle-{spec.model}-{spec.version}")
        self._runtime: Runtime | None = None
        self._rss_before = 0

    @property
    def local_runtime(self) -> Runtime | None:
        return self._runtime

    @property
    def pid(self) -> int | None:
        return os.getpid()

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await self._thread.call(function, *args)

    async def load(self) -> None:
        self._rss_before = process_rss_bytes()
        self._runtime = build_runtime(self.spec, self._host)
        await self._call(self._runtime.load)

    async def warmup(self) -> RuntimeInfo:
        runtime = self._runtime
        assert runtime is not None
        await self._call(runtime.warmup)
        return RuntimeInfo.of(
            runtime, self._rss_before, self._host.get("runtime", self.spec.plugin).capabilities
        )

    async def execute(self, batch: Batch) -> list[ItemResult]:
        runtime = self._runtime
        if runtime is None:
            raise ModelNotReadyError("instance is not loaded")
        return await self._thread.call(execute_isolated, runtime, batch)

    async def stop(self) -> None:
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            await self._call(runtime.unload)
        self._thread.close()
