"""The executor contract: where one runtime instance runs, behind an asynchronous ``execute``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from ..envelope import Batch
from ..errors import InstanceFailedError
from ..plugin_host import PluginHost, RuntimeCapabilities
from ..runtime import Runtime, RuntimeSpec, process_rss_bytes
from .isolation import ItemResult

__all__ = ["Executor", "RuntimeInfo", "build_runtime"]


@dataclass(frozen=True)
class RuntimeInfo:
    """What an executor learns from its runtime after warm-up (plain data, crosses processes)."""

    signature: dict[str, Any] | None
    memory_bytes: int | None
    max_batch_rows: int | None
    pads: bool
    details: dict[str, Any]

    @classmethod
    def of(cls, runtime: Runtime, rss_before: int, declared: RuntimeCapabilities) -> RuntimeInfo:
        """What ``runtime`` measured after warm-up, within the capabilities its plugin ``declared``."""
        signature = runtime.signature()
        measured = runtime.memory_bytes()
        if measured is None and rss_before:
            measured = max(0, process_rss_bytes() - rss_before)
        caps = [c for c in (declared.max_batch_rows, runtime.max_batch_rows) if c]
        return cls(
            signature.to_dict() if signature else None,
            measured,
            min(caps) if caps else None,
            declared.pads,
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
    """Where a runtime runs. ``load``, ``warmup`` and ``stop`` are control path; ``execute`` is hot.

    ``local_runtime`` is the runtime object when it lives in this process (a batcher that drives a
    runtime step by step needs it), ``None`` otherwise; ``pid`` is the process that runs it.
    """

    @abstractmethod
    async def load(self) -> None: ...

    @abstractmethod
    async def warmup(self) -> RuntimeInfo: ...

    @abstractmethod
    async def execute(self, batch: Batch) -> list[ItemResult]: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @property
    def local_runtime(self) -> Runtime | None:
        return None

    @property
    def pid(self) -> int | None:
        return None

    @property
    def lost(self) -> str:
        """Why the executor can no longer run batches although nobody stopped it (its worker
        process died, say); empty while it can. Polled by the supervisor, off the data path."""
        return ""
