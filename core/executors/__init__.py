"""Executors: where a runtime instance runs. Placements choose one per instance.

- ``ThreadExecutor``: a dedicated thread of the front process (the default);
- ``ProcessExecutor``: a worker process rebuilt from the spec, tensors through shared memory; one
  CUDA context per process, so per-process limits (MPS) can be set through its ``env``.

Both make their blocking calls on a ``DedicatedThread``, which other event-loop code may use too.
"""

from __future__ import annotations

from typing import Literal

from ..plugin_host import PluginHost
from ..runtime import RuntimeSpec
from .base import Executor, RuntimeInfo, build_runtime
from .dedicated import DedicatedThread
from .isolation import ItemResult, execute_isolated
from .process import ProcessExecutor
from .thread import ThreadExecutor

__all__ = [
    "DedicatedThread",
    "Executor",
    "ItemResult",
    "ProcessExecutor",
    "RuntimeInfo",
    "ThreadExecutor",
    "build_runtime",
    "execute_isolated",
    "make_executor",
]


def make_executor(kind: Literal["thread", "process"] | str, spec: RuntimeSpec, host: PluginHost) -> Executor:
    """``"thread"`` or ``"process"``."""
    if kind == "process":
        return ProcessExecutor(spec, host)
    return ThreadExecutor(spec, host)
