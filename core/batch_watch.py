"""The watch over one running batch: its requests' deadlines, and whether its instance is stuck.

A queueing batcher arms one watch per running batch, with one timer at the earliest pending
deadline (not one per request). A request whose deadline passes while its batch runs is answered
504 then and its cancel signal is set.

Once every request of the batch has been answered that way and the batch still runs, the batch
*overruns* if it has also run for its *patience*: four times the batcher's usual batch time, and at
least ``MIN_PATIENCE`` seconds (a batch that is merely slow under load is not counted). Every
further span as long (the patience, or the batch's deadline span if longer) counts one more overrun
while it keeps running, so a hung instance is noticed even though it takes no new batch. A batch
that finishes in time resets the count. After ``limit`` overruns in a row the instance is marked
failed and the batch's task is cancelled (its accounting is released at once; the supervisor
replaces the instance).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol

from .batching import expire
from .envelope import Arrays, InferenceRequest
from .instance import Instance

__all__ = ["MIN_PATIENCE", "TIMER_SLACK", "BatchWatch", "WatchOwner"]

# Fire timers a hair after the deadline, so a coarse loop clock (uvloop keeps milliseconds) never
# wakes them just before it and makes them spin.
TIMER_SLACK = 0.001
#: The least time a batch runs before it can count as an overrun, seconds.
MIN_PATIENCE = 1.0


class WatchOwner(Protocol):
    """What a watch reads of its batcher, only once a batch is overdue."""

    @property
    def usual_batch_time(self) -> float: ...

    @property
    def max_overruns(self) -> int: ...


class BatchWatch:
    """Deadlines and overruns of one running batch of ``owner``'s."""

    __slots__ = ("futures", "handle", "instance", "overran", "owner", "requests", "span", "started", "task")

    def __init__(
        self,
        owner: WatchOwner,
        instance: Instance,
        requests: list[InferenceRequest],
        futures: list[asyncio.Future[Arrays]],
    ) -> None:
        self.owner = owner
        self.instance = instance
        self.requests = requests
        self.futures = futures
        self.handle: asyncio.TimerHandle | None = None
        self.started = time.monotonic()
        self.overran = False
        self.task: asyncio.Task[object] | None = None

    @classmethod
    def arm(
        cls,
        owner: WatchOwner,
        instance: Instance,
        requests: list[InferenceRequest],
        futures: list[asyncio.Future[Arrays]],
    ) -> BatchWatch | None:
        """The watch over a batch, or ``None`` when no request in it has a deadline."""
        watch = cls(owner, instance, requests, futures)
        if not watch._arm_next():
            return None
        watch.task = asyncio.current_task()
        return watch

    def _arm_next(self) -> bool:
        earliest = math.inf
        for request, future in zip(self.requests, self.futures, strict=True):
            deadline = request.deadline
            if deadline is not None and deadline < earliest and not future.done():
                earliest = deadline
        if earliest == math.inf:
            return False
        # deadlines are time.monotonic(), the event loop's clock (a past one fires at once)
        self.handle = asyncio.get_running_loop().call_at(earliest + TIMER_SLACK, self._fire)
        return True

    def _fire(self) -> None:
        now = time.monotonic()
        for request, future in zip(self.requests, self.futures, strict=True):
            if request.deadline is not None and request.deadline <= now:
                expire(future, request)
        if not self._arm_next():
            self._overdue()

    def _overdue(self) -> None:
        """Every request was answered 504 and the batch still runs: count an overrun when it is
        clearly stuck, and look again later while it keeps running."""
        now = time.monotonic()
        patience = max(4.0 * self.owner.usual_batch_time, MIN_PATIENCE)
        running = now - self.started
        if running < patience:  # slow under load, not stuck (yet): look again once it would be
            self._later(patience - running)
            return
        if not self.overran:
            latest = max(r.deadline for r in self.requests if r.deadline is not None)
            self.span = max(0.0, latest - self.started)
            self.overran = True
        instance = self.instance
        instance.overruns += 1
        limit = self.owner.max_overruns
        if limit and instance.overruns >= limit:
            instance.fail(f"overran its deadlines in {instance.overruns} batches in a row")
            if self.task is not None:
                self.task.cancel()
            return
        self._later(max(self.span, patience))

    def _later(self, delay: float) -> None:
        self.handle = asyncio.get_running_loop().call_later(delay + TIMER_SLACK, self._overdue)

    def cancel(self) -> None:
        """The batch finished: stop watching (an instance that finished in time starts over)."""
        if self.handle is not None:
            self.handle.cancel()
        if not self.overran and self.instance.overruns:
            self.instance.overruns = 0
