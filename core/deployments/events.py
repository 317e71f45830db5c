"""The deployment history: every change, load failure and circuit-breaker transition of a model.

In managed mode events are rows of the deployment store, written in the same transaction as the
change they describe; in static mode they are kept in a bounded ring in memory. Circuit breakers
note their transitions on the data path; a background task moves them into the history once a
second (the data path never writes to the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from .resilience import CircuitBreaker
from .store import DeploymentStore, EventRecord, Transaction

__all__ = ["EventLog", "iso_time"]

Commit = Callable[[Callable[[Transaction], None]], Awaitable[None]]
#: (model, version, wall time, state, why)
BreakerEvent = tuple[str, str, float, str, str]


def iso_time(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class EventLog:
    """Records and reads a server's deployment events."""

    def __init__(
        self,
        store: Callable[[], DeploymentStore | None],
        commit: Commit,
        breakers: Callable[[], Iterable[tuple[str, Mapping[str, CircuitBreaker]]]],
        capacity: int = 1000,
    ) -> None:
        self._store = store
        self._commit = commit
        self._breakers = breakers
        self._memory: deque[EventRecord] = deque(maxlen=capacity)
        self._ids = 0
        self._watcher: asyncio.Task[None] | None = None

    def _remember(
        self, model: str, version: str | None, kind: str, message: str, details: Any, at: float
    ) -> None:
        self._ids += 1
        self._memory.append(EventRecord(self._ids, model, version, kind, message, dict(details or {}), at))

    async def record(
        self,
        model: str,
        kind: str,
        message: str,
        *,
        version: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """One event (in its own transaction; changes write theirs inside the change's transaction)."""
        if self._store() is not None:
            await self._commit(lambda tx: tx.event(model, kind, message, version=version, details=details))
        else:
            self._remember(model, version, kind, message, details, time.time())

    async def history(self, model: str, limit: int = 50) -> dict[str, Any]:
        """The model's recent splits and events, newest first."""
        await self.drain_breakers()
        store = self._store()
        if store is not None:
            splits = await asyncio.to_thread(store.splits, model, limit)
            events = await asyncio.to_thread(store.events, model, limit)
        else:
            splits = []
            events = [e for e in reversed(self._memory) if e.model == model][:limit]
        return {
            "splits": [
                {"at": iso_time(s.created_at), "traffic": s.weights, "reason": s.reason} for s in splits
            ],
            "events": [
                {
                    "at": iso_time(e.created_at),
                    "kind": e.kind,
                    "version": e.version,
                    "message": e.message,
                    "details": e.details,
                }
                for e in events
            ],
        }

    # circuit breakers ------------------------------------------------------------------------------

    def _take_breaker_events(self) -> list[BreakerEvent]:
        """Take the transitions the data path noted (on the event loop's thread)."""
        pending: list[BreakerEvent] = []
        for model, breakers in self._breakers():
            for version, breaker in breakers.items():
                if breaker.transitions:
                    moved, breaker.transitions = breaker.transitions, []
                    pending.extend((model, version, at, state.value, why) for at, state, why in moved)
        return pending

    def _write_breaker_events(self, pending: list[BreakerEvent]) -> None:
        store = self._store()
        if store is not None:
            with store.transaction() as tx:
                for model, version, _, state, why in pending:
                    tx.event(model, f"circuit_{state}", why, version=version)
            return
        for model, version, at, state, why in pending:
            self._remember(model, version, f"circuit_{state}", why, {}, at)

    async def drain_breakers(self) -> None:
        """Move circuit-breaker transitions into the history."""
        pending = self._take_breaker_events()
        if pending:
            await asyncio.to_thread(self._write_breaker_events, pending)

    def start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.drain_breakers()
            except Exception:  # the history must never take the server down
                continue

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.drain_breakers()
