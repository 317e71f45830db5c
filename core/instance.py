"""Instance handles: one runtime instance behind an asynchronous ``execute(batch)``.

Every instance follows one lifecycle (loading -> warming -> ready -> draining -> stopped, or
failed) whatever executes it: a thread of the front process or a worker process (the executors in
``ladle.executors``); placements choose the executor of each instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from .envelope import Batch
from .errors import InstanceFailedError, ModelNotReadyError
from .executors import Executor, ItemResult, RuntimeInfo
from .runtime import InstanceState, RuntimeSpec
from .tensors import Signature

__all__ = ["Instance", "StateListener"]

StateListener = Callable[["Instance", InstanceState], None]


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
        #: Seconds the last ``start`` took (load and warm-up); 0 before one finished.
        self.start_seconds = 0.0
        #: Batches in a row that overran their deadlines (the batcher counts; the supervisor acts).
        self.overruns = 0
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
        begun = time.monotonic()
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
        self.start_seconds = time.monotonic() - begun
        self._set(InstanceState.READY)

    def fail(self, reason: str) -> None:
        """Mark the instance failed from outside (it overran its deadlines, its worker is gone);
        it takes no more batches and the supervisor replaces it."""
        if self.state is InstanceState.FAILED or self.state is InstanceState.STOPPED:
            return
        self.error = reason
        self._set(InstanceState.FAILED)

    def check(self) -> bool:
        """Fail the instance if its executor was lost while idle (a worker process killed between
        batches); returns whether it is still usable. Control path: the supervisor polls it."""
        if self.state is InstanceState.READY or self.state is InstanceState.DRAINING:
            lost = self.executor.lost
            if lost:
                self.fail(lost)
                return False
        return self.state is not InstanceState.FAILED

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
