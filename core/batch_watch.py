"""The watch over running batches: their requests' deadlines, and whether an instance is stuck.

A queueing batcher keeps one ``BatchWatches``; each running batch is a ``BatchWatch`` in it. One
timer serves them all, armed at the earliest pending deadline of any running batch (a batch that
finishes first leaves its watch and the timer, when it fires, re-arms for the others): per batch
this costs a set insertion, not a timer. A request whose deadline passes while its batch runs is
answered 504 then and its cancel signal is set.

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
from typing import Protocol, cast

from .batching import expire
from .envelope import Arrays, InferenceRequest
from .instance import Instance

__all__ = ["MIN_PATIENCE", "TIMER_SLACK", "BatchWatch", "BatchWatches", "WatchOwner"]

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


class BatchWatches:
    """The running batches of one batcher (``owner``), under one deadline timer."""

    __slots__ = ("_at", "_running", "_timer", "owner")

    def __init__(self, owner: WatchOwner) -> None:
        self.owner = owner
        self._running: set[BatchWatch] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def arm(
        self, instance: Instance, requests: list[InferenceRequest], futures: list[asyncio.Future[Arrays]]
    ) -> BatchWatch | None:
        """Watch a batch that starts now; ``None`` when no request in it has a deadline."""
        deadlines = [r.deadline for r in requests]
        if None in deadlines:  # rare: the admission pipeline gives every request a deadline
            deadlines = [deadline for deadline in deadlines if deadline is not None]
            if not deadlines:
                return None
        watch = BatchWatch(self, instance, requests, futures, min(cast("list[float]", deadlines)))
        self._running.add(watch)
        if watch.due < self._at:
            self._schedule(watch.due)
        return watch

    def _schedule(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = due
        # deadlines are time.monotonic(), the event loop's clock (a past one fires at once)
        self._timer = asyncio.get_running_loop().call_at(due + TIMER_SLACK, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._at = math.inf
        now = time.monotonic()
        for watch in [w for w in self._running if w.due <= now]:
            watch.expire_due(now)
        if self._running:
            self._schedule(min(w.due for w in self._running))

    def finished(self, watch: BatchWatch) -> None:
        self._running.discard(watch)

    def close(self) -> None:
        """Stop the timer (the batcher stopped; its batches were cancelled)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._at = math.inf
        self._running.clear()


class BatchWatch:
    """Deadlines and overruns of one running batch (made by ``BatchWatches.arm``)."""

    __slots__ = (
        "due",
        "futures",
        "handle",
        "instance",
        "overran",
        "requests",
        "span",
        "started",
        "task",
        "watches",
    )

    def __init__(
        self,
        watches: BatchWatches,
        instance: Instance,
        requests: list[InferenceRequest],
        futures: list[asyncio.Future[Arrays]],
        due: float,
    ) -> None:
        self.watches = watches
        self.instance = instance
        self.requests = requests
        self.futures = futures
        #: The earliest deadline of a request still waiting for its answer.
        self.due = due
        #: The overrun timer, once every request was answered 504 and the batch still runs.
        self.handle: asyncio.TimerHandle | None = None
        self.started = time.monotonic()
        self.overran = False
        self.span = 0.0
        self.task: asyncio.Task[object] | None = asyncio.current_task()

    def expire_due(self, now: float) -> None:
        """Answer 504 to the requests whose deadline passed; once none is left, watch the batch
        itself for overruns."""
        earliest = math.inf
        for request, future in zip(self.requests, self.futures, strict=True):
            deadline = request.deadline
            if deadline is None or future.done():
                continue
            if deadline <= now:
                expire(future, request)
            elif deadline < earliest:
                earliest = deadline
        self.due = earliest
        if earliest == math.inf:
            self.watches.finished(self)
            self._overdue()

    def _overdue(self) -> None:
        """Every request was answered 504 and the batch still runs: count an overrun when it is
        clearly stuck, and look again later while it keeps running."""
        owner = self.watches.owner
        now = time.monotonic()
        patience = max(4.0 * owner.usual_batch_time, MIN_PATIENCE)
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
        limit = owner.max_overruns
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
        self.watches.finished(self)
        if self.handle is not None:
            self.handle.cancel()
        if not self.overran and self.instance.overruns:
            self.instance.overruns = 0
