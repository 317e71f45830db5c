"""The queueing engine of batchers that run in the front process (the passthrough and dynamic ones).

A batcher plugin subclasses ``QueueingBatcher`` and writes ``_take``: which queued requests form the
next batch. The engine owns everything else:

- admission: refuses at once in ``submit`` (413 too many rows, 503 queue full or not serving,
  504 deadline already passed) instead of queueing work that can never be served;
- the fast path: with the queue empty and an instance idle (ready, fewer batches in flight than
  ``instance_concurrency``), the request is dispatched at once as a batch of one;
- the queue: ``collections.deque`` lanes of ``(request, future)`` pairs, bounded by
  ``max_queue_size`` requests;
- deadlines: one timer armed for the earliest deadline in the queue (not one per request) drops
  expired requests with ``DeadlineExceededError`` when their deadline passes, before they cost
  compute; a request that is cancelled (``request.cancel`` or its future) is skipped. A running
  batch has one timer too, for its earliest deadline: a request whose deadline passes while its
  batch runs is answered 504 then, and its cancel signal is set (``enforces_deadlines``);
- dispatch: one task per batch, which runs ``Instance.execute`` and sets each request's future
  from its per-item result; an exception from ``execute`` fails that batch only;
- drain: ``stop`` refuses new work, finishes what is queued and in flight, then stops.

The batcher counts its own batches per instance (``Instance.in_flight`` rises only once the batch
task runs), so two requests submitted in one loop iteration never land on one instance beyond its
concurrency limit. The observer is fed once per batch and once per group of dropped requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from .batching import Batcher, BatchObserver, ReplicaSet, expire
from .envelope import Arrays, Batch, InferenceRequest, Priority
from .errors import (
    DeadlineExceededError,
    LadleError,
    ModelNotReadyError,
    PayloadTooLargeError,
    RuntimeFailureError,
    ServerBusyError,
)
from .instance import Instance
from .options import PluginOptions, parse_options
from .runtime import InstanceState

__all__ = ["CANCELLED", "QueueEntry", "QueueOptions", "QueueingBatcher", "Taken"]

QueueEntry = tuple[InferenceRequest, "asyncio.Future[Arrays]"]
Taken = tuple[list[InferenceRequest], list["asyncio.Future[Arrays]"]]

#: The code reported to the observer for requests skipped because they were cancelled.
CANCELLED = "cancelled"

_READY = InstanceState.READY
_LIVE = (InstanceState.LOADING, InstanceState.WARMING, InstanceState.READY)
# Fire the deadline timer a hair after the earliest deadline, so a coarse loop clock (uvloop keeps
# milliseconds) never wakes it just before the deadline and makes it spin.
_TIMER_SLACK = 0.001


class QueueOptions(PluginOptions):
    """Options every queueing batcher takes."""

    max_queue_size: int = Field(default=1024, ge=1, description="queued requests before 503")
    instance_concurrency: int = Field(default=1, ge=1, description="batches in flight per instance")
    retry_after: float = Field(default=1.0, gt=0, description="Retry-After of a 503, seconds")


class QueueingBatcher(Batcher):
    """Base of the built-in batchers; subclasses decide how queued requests form a batch (``_take``)."""

    #: The registered name, used in error messages.
    plugin_name: ClassVar[str] = "queueing"
    options_model: ClassVar[type[QueueOptions]] = QueueOptions
    #: One FIFO lane, or one lane per ``Priority`` (lower value served first).
    prioritised: ClassVar[bool] = False
    enforces_deadlines: ClassVar[bool] = True

    def __init__(
        self,
        replicas: ReplicaSet,
        options: Mapping[str, Any],
        observer: BatchObserver | None = None,
    ) -> None:
        super().__init__(replicas, options, observer)
        self.settings = parse_options(self.options_model, options, f"batcher {self.plugin_name!r}")
        self._max_queue_size = self.settings.max_queue_size
        self._concurrency = self.settings.instance_concurrency
        self._lanes: list[deque[QueueEntry]] = [
            deque() for _ in range(len(Priority) if self.prioritised else 1)
        ]
        self._queued = 0
        self._queued_rows = 0
        self._dispatched = 0  # requests handed to instances and not yet answered
        self._load: dict[Instance, int] = {}  # batches per instance, counted from dispatch
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._drained = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = math.inf
        self._hold_timer: asyncio.TimerHandle | None = None

    # the data path ---------------------------------------------------------------------------

    def submit(self, request: InferenceRequest) -> asyncio.Future[Arrays]:
        if self._closed:
            raise ModelNotReadyError(
                f"model {self.replicas.model!r} version {self.replicas.version!r} is stopping"
            )
        rows = request.rows
        if rows > 1 and rows > self._row_cap():
            raise self._too_large(request)
        deadline = request.deadline
        if deadline is not None and deadline <= time.monotonic():
            self.observer.requests_dropped((request,), DeadlineExceededError.code)
            raise DeadlineExceededError(f"request {request.id} arrived after its deadline")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Arrays] = loop.create_future()
        if not self._queued:
            instance = self._idle_instance()
            if instance is not None:
                self._dispatch(instance, [request], [future])
                return future
            if not self._serviceable():
                raise self._no_live_instance()
        if self._queued >= self._max_queue_size:
            raise ServerBusyError(
                f"the queue of model {self.replicas.model!r} version {self.replicas.version!r} is full "
                f"({self._max_queue_size} requests)",
                retry_after=self.settings.retry_after,
                queue_size=self._max_queue_size,
            )
        self._lanes[request.priority if self.prioritised else 0].append((request, future))
        self._queued += 1
        self._queued_rows += rows
        if deadline is not None and deadline < self._deadline_at:
            self._arm_deadline(deadline)
        if self._hold_timer is not None:  # an instance is idle, waiting for companions
            self._pump()
        return future

    def _row_cap(self) -> float:
        """The most rows one batch may hold: the runtime's cap (subclasses add their own)."""
        cap = self.replicas.max_batch_rows
        return cap if cap else math.inf

    def _too_large(self, request: InferenceRequest) -> PayloadTooLargeError:
        cap = self._row_cap()
        return PayloadTooLargeError(
            f"request {request.id} has {request.rows} rows; model {self.replicas.model!r} "
            f"version {self.replicas.version!r} takes at most {cap:.0f} rows per batch",
            rows=request.rows,
            max_rows=int(cap),
        )

    def _idle_instance(self) -> Instance | None:
        """The ready instance with the fewest batches in flight, if it is under the concurrency limit."""
        best: Instance | None = None
        best_load = self._concurrency
        load = self._load
        for instance in self.replicas.instances:
            if instance.state is _READY:
                n = load.get(instance, 0)
                if n < best_load:
                    best, best_load = instance, n
                    if not n:
                        break
        return best

    def _serviceable(self) -> bool:
        """Whether any instance is ready or on its way to ready."""
        return any(i.state in _LIVE for i in self.replicas.instances)

    def _no_live_instance(self) -> ModelNotReadyError:
        return ModelNotReadyError(
            f"model {self.replicas.model!r} version {self.replicas.version!r} has no live instance"
        )

    def _dispatch(
        self, instance: Instance, requests: list[InferenceRequest], futures: list[asyncio.Future[Arrays]]
    ) -> None:
        self._load[instance] = self._load.get(instance, 0) + 1
        self._dispatched += len(requests)
        assert self._loop is not None
        task = self._loop.create_task(self._run(instance, requests, futures))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _make_batch(self, requests: list[InferenceRequest]) -> Batch:
        return Batch.from_requests(requests)

    async def _run(
        self, instance: Instance, requests: list[InferenceRequest], futures: list[asyncio.Future[Arrays]]
    ) -> None:
        started = time.monotonic()
        errors: list[str | None]
        outputs: list[Arrays | None] | None = None
        ran = started
        watch = _RunningDeadlines.arm(requests, futures)
        try:
            batch = self._make_batch(requests)
            ran = time.monotonic()
            results = await instance.execute(batch)
            if len(results) != len(requests):
                raise RuntimeFailureError(
                    f"instance {instance.name} returned {len(results)} results for {len(requests)} requests"
                )
        except (Exception, asyncio.CancelledError) as exc:
            error = _batch_error(exc, instance)
            for future in futures:
                if not future.done():
                    future.set_exception(error)
            errors = [error.code] * len(requests)
        else:
            errors = []
            outputs = []
            for future, result in zip(futures, results, strict=True):
                if isinstance(result, LadleError):
                    errors.append(result.code)
                    outputs.append(None)
                    if not future.done():
                        future.set_exception(result)
                else:
                    errors.append(None)
                    outputs.append(result)
                    if not future.done():
                        future.set_result(result)
        if watch is not None:
            watch.cancel()
        finished = time.monotonic()
        self._finish(instance, len(requests))
        self.observer.batch_done(requests, started, finished, errors, outputs, (ran, finished))

    def _finish(self, instance: Instance, count: int) -> None:
        left = self._load.get(instance, 1) - 1
        if left:
            self._load[instance] = left
        else:
            self._load.pop(instance, None)
        self._dispatched -= count
        if self._queued:
            if not self._serviceable():
                self._fail_queued(self._no_live_instance())
            else:
                self._pump()
        self._check_drained()

    def _pump(self) -> None:
        """Hand queued work to idle instances until either runs out."""
        while self._queued:
            instance = self._idle_instance()
            if instance is None:
                break
            now = time.monotonic()
            if not self._closed:
                wait = self._hold(now)
                if wait > 0:
                    if self._hold_timer is None:
                        assert self._loop is not None
                        self._hold_timer = self._loop.call_later(wait, self._hold_over)
                    return
            if self._hold_timer is not None:
                self._hold_timer.cancel()
                self._hold_timer = None
            taken = self._take(now)
            if taken is not None:
                self._dispatch(instance, *taken)
        self._check_drained()

    def _hold(self, now: float) -> float:
        """Seconds an idle instance should still wait for companions (dynamic batching only)."""
        return 0.0

    def _hold_over(self) -> None:
        self._hold_timer = None
        self._pump()

    def _take(self, now: float) -> Taken | None:
        """Remove the next batch from the queue; ``None`` when what it looked at was all dropped.

        Must remove at least one entry whenever the queue is not empty.
        """
        raise NotImplementedError

    def _removed(self, count: int, rows: int) -> None:
        self._queued -= count
        self._queued_rows -= rows

    def _drop(
        self, expired: list[QueueEntry], cancelled: list[QueueEntry], too_large: list[QueueEntry]
    ) -> None:
        """Answer requests that leave the queue without running; one observer call per kind."""
        if expired:
            for request, future in expired:
                if not future.done():
                    future.set_exception(
                        DeadlineExceededError(f"request {request.id} waited past its deadline in the queue")
                    )
            self.observer.requests_dropped([e[0] for e in expired], DeadlineExceededError.code)
        if cancelled:
            for _, future in cancelled:
                future.cancel()
            self.observer.requests_dropped([e[0] for e in cancelled], CANCELLED)
        if too_large:
            for request, future in too_large:
                if not future.done():
                    future.set_exception(self._too_large(request))
            self.observer.requests_dropped([e[0] for e in too_large], PayloadTooLargeError.code)

    # deadlines -------------------------------------------------------------------------------

    def _arm_deadline(self, deadline: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        assert self._loop is not None
        self._deadline_at = deadline
        delay = max(0.0, deadline - time.monotonic()) + _TIMER_SLACK
        self._deadline_timer = self._loop.call_later(delay, self._sweep)

    def _sweep(self) -> None:
        """Drop expired and cancelled requests from every lane; re-arm for the next deadline."""
        self._deadline_timer = None
        self._deadline_at = math.inf
        now = time.monotonic()
        expired: list[QueueEntry] = []
        cancelled: list[QueueEntry] = []
        earliest = math.inf
        removed_rows = 0
        for lane in self._lanes:
            if not lane:
                continue
            kept: list[QueueEntry] = []
            for entry in lane:
                request, future = entry
                deadline = request.deadline
                if deadline is not None and deadline <= now:
                    expired.append(entry)
                elif future.done() or request.cancel.cancelled:
                    cancelled.append(entry)
                else:
                    kept.append(entry)
                    if deadline is not None and deadline < earliest:
                        earliest = deadline
                    continue
                removed_rows += request.rows
            if len(kept) != len(lane):
                lane.clear()
                lane.extend(kept)
        self._removed(len(expired) + len(cancelled), removed_rows)
        self._drop(expired, cancelled, [])
        if earliest < math.inf:
            self._arm_deadline(earliest)
        self._check_drained()

    # lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._watcher is None:
            self._watcher = self._loop.create_task(self._watch_replicas())
        self._pump()

    async def _watch_replicas(self) -> None:
        """Serve queued work as soon as the replica set gains an instance."""
        changed = self.replicas.changed
        while True:
            await changed.wait()
            changed.clear()
            self._pump()

    def _check_drained(self) -> None:
        if self._closed and not self._queued and not self._dispatched:
            self._drained.set()

    def _fail_queued(self, error: LadleError) -> None:
        entries = [entry for lane in self._lanes for entry in lane]
        for lane in self._lanes:
            lane.clear()
        self._queued = self._queued_rows = 0
        for _, future in entries:
            if not future.done():
                future.set_exception(error)
        if entries:
            self.observer.requests_dropped([e[0] for e in entries], error.code)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Refuse new work (``ModelNotReadyError``), finish queued and in-flight work, then stop.

        Work still queued after ``drain_timeout`` fails with ``ModelNotReadyError``; batches still
        running are abandoned and their requests fail the same way.
        """
        self._closed = True
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        self._pump()
        if self._queued or self._dispatched:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
        if self._queued:
            self._fail_queued(ModelNotReadyError("the batcher stopped before the request ran"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
            self._deadline_at = math.inf

    @property
    def queue_depth(self) -> int:
        """Requests waiting for an instance (cancelled ones count until they are swept out)."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Requests handed to instances and not yet answered."""
        return self._dispatched


class _RunningDeadlines:
    """One timer per running batch, at its earliest pending deadline; expired requests get 504 then."""

    __slots__ = ("futures", "handle", "requests")

    def __init__(self, requests: list[InferenceRequest], futures: list[asyncio.Future[Arrays]]) -> None:
        self.requests = requests
        self.futures = futures
        self.handle: asyncio.TimerHandle | None = None

    @classmethod
    def arm(
        cls, requests: list[InferenceRequest], futures: list[asyncio.Future[Arrays]]
    ) -> _RunningDeadlines | None:
        """The watch over a batch, or ``None`` when no request in it has a deadline."""
        watch = cls(requests, futures)
        return watch if watch._arm_next(time.monotonic()) else None

    def _arm_next(self, now: float) -> bool:
        earliest = math.inf
        for request, future in zip(self.requests, self.futures, strict=True):
            deadline = request.deadline
            if deadline is not None and deadline < earliest and not future.done():
                earliest = deadline
        if earliest == math.inf:
            return False
        delay = max(0.0, earliest - now) + _TIMER_SLACK
        self.handle = asyncio.get_running_loop().call_later(delay, self._fire)
        return True

    def _fire(self) -> None:
        now = time.monotonic()
        for request, future in zip(self.requests, self.futures, strict=True):
            if request.deadline is not None and request.deadline <= now:
                expire(future, request)
        self._arm_next(now)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


def _batch_error(exc: BaseException, instance: Instance) -> LadleError:
    if isinstance(exc, LadleError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return ModelNotReadyError(f"instance {instance.name} stopped before the batch finished")
    return RuntimeFailureError(f"instance {instance.name} failed: {type(exc).__name__}: {exc}")
