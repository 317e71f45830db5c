"""Admission by predicted wait, and shedding by priority: the part of the queueing engine
(``ladle.queueing``) that decides whether a request that must queue is worth queueing.

A request that would queue is refused at once when its predicted completion is past its deadline:
``(ahead / per_batch + 1) * batch_time / instances + batch_time``, stretched by ``HEADROOM``, with
``ahead`` the requests queued at its priority and above, ``per_batch`` the requests a full batch took
and ``batch_time`` the usual batch time (both measured), ``instances`` those in the replica set (with
none, the time until a starting one is expected ready is added). ``submit`` reads the prediction as
``base + ahead * step`` from coefficients refreshed after batches and replica changes, so a queued
request pays a few reads and float operations. When the queue is full, a request of a higher
priority takes the place of the newest request of the lowest lower priority.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import TYPE_CHECKING, ClassVar

from .batching import BatchObserver, ReplicaSet
from .envelope import Arrays, InferenceRequest, Priority
from .errors import ServerBusyError

if TYPE_CHECKING:
    from .instance import Instance
    from .queueing import QueueOptions

__all__ = ["HEADROOM", "WaitAdmission"]

#: Predictions are stretched this much for the time between batches (dispatch, the event loop).
HEADROOM = 1.1
_LOWEST = len(Priority) - 1


class WaitAdmission:
    """Mixed into ``QueueingBatcher``: the wait prediction and the shedding it does."""

    # the engine's state this reads
    prioritised: ClassVar[bool]
    replicas: ReplicaSet
    observer: BatchObserver
    settings: QueueOptions
    _lanes: list[deque[tuple[InferenceRequest, asyncio.Future[Arrays]]]]
    _queued: int
    _queued_rows: int
    _concurrency: int
    _max_queue_size: int
    _admit: bool
    _shed_error: type[ServerBusyError]
    _batch_time: float
    _per_batch: float
    _wait_base: float
    _wait_step: float

    def _row_cap(self) -> float:
        raise NotImplementedError

    def _removed(self, count: int, rows: int) -> None:
        raise NotImplementedError

    def _idle_instance(self) -> Instance | None:
        raise NotImplementedError

    def _check_wait(self, request: InferenceRequest, deadline: float, now: float) -> None:
        """Refuse ``request`` (raise) when its predicted completion is past its deadline."""
        wait = self._wait(request.priority, now)
        if wait > deadline - now:
            raise self._shed(request, wait, deadline - now)

    def _ahead(self, priority: int) -> int:
        """Requests queued at ``priority`` and above (every queued one without priority lanes)."""
        if not self.prioritised or priority == _LOWEST:
            return self._queued
        if not priority:
            return len(self._lanes[0])
        return self._queued - sum([len(lane) for lane in self._lanes[priority + 1 :]])

    def _refresh_wait(self) -> None:
        """Recompute the prediction's coefficients (after a batch, or a change of instances)."""
        batch_time = self._batch_time
        instances = len(self.replicas.instances)
        if not batch_time or not instances or not self._admit:
            self._wait_base = self._wait_step = 0.0
            return
        share = HEADROOM * batch_time / (instances * self._concurrency)
        self._wait_step = share / (self._per_batch or self._fill_guess())
        self._wait_base = share + HEADROOM * batch_time

    def _wait(self, priority: int, now: float) -> float:
        """Predicted seconds until a request of ``priority`` queued now has its answer."""
        batch_time = self._batch_time
        ahead = self._ahead(priority)
        per_batch = self._per_batch or self._fill_guess()
        replicas = self.replicas
        instances = len(replicas.instances)
        start = 0.0
        if not instances:  # nothing serves yet: an instance is starting, or the version wakes one
            instances = replicas.pending or 1
            if replicas.ready_at:
                start = max(0.0, replicas.ready_at - now)
        per_instance = HEADROOM * batch_time / (instances * self._concurrency)
        return start + (ahead / per_batch + 1.0) * per_instance + HEADROOM * batch_time

    def _fill_guess(self) -> float:
        """Requests a full batch would take, before one was measured: the row cap over the mean
        rows of a queued request (one request when the cap is unbounded)."""
        cap = self._row_cap()
        if cap == math.inf:
            return 1.0
        rows = self._queued_rows / self._queued if self._queued else 1.0
        return max(1.0, cap / max(rows, 1.0))

    def predicted_wait(self, priority: Priority = Priority.NORMAL) -> float | None:
        if not self._queued and self._idle_instance() is not None:
            return self._batch_time  # it would go to the idle instance at once
        return self._wait(priority if self.prioritised else 0, time.monotonic()) if self._batch_time else 0.0

    def _shed(self, request: InferenceRequest, wait: float, left: float) -> ServerBusyError:
        self.observer.requests_dropped((request,), self._shed_error.code)
        return self._shed_error(
            f"request {request.id} would wait about {wait * 1000:.0f} ms for model "
            f"{self.replicas.model!r} version {self.replicas.version!r} but has {left * 1000:.0f} ms left "
            "before its deadline",
            retry_after=max(self.settings.retry_after, wait),
            predicted_wait=round(wait, 4),
            time_left=round(left, 4),
        )

    def _shed_lower(self, priority: int) -> bool:
        """Make room in a full queue by shedding the newest request of the lowest priority below
        ``priority``; whether one was shed."""
        if not self.prioritised:
            return False
        for lane in reversed(self._lanes[priority + 1 :]):
            if lane:
                request, future = lane.pop()
                self._removed(1, request.rows)
                if not future.done():
                    future.set_exception(
                        self._shed_error(
                            f"request {request.id} was shed for a request of higher priority: the queue "
                            f"of model {self.replicas.model!r} version {self.replicas.version!r} is full",
                            retry_after=self.settings.retry_after,
                            queue_size=self._max_queue_size,
                        )
                    )
                self.observer.requests_dropped((request,), self._shed_error.code)
                return True
        return False
