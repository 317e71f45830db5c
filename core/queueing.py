"""The queueing engine of batchers that run in the front process (the passthrough and dynamic ones).

A batcher plugin subclasses ``QueueingBatcher`` and writes ``_take``: which queued requests form the
next batch. The engine owns everything else:

- admission: refuses at once in ``submit`` (413 too many rows, 503 queue full or not serving,
  504 deadline already passed) instead of queueing work that can never be served; with
  ``admission = "predicted-wait"`` (the default) also a request that would have to queue and whose
  predicted completion is past its deadline (503 with Retry-After, or 429 with ``shed_status =
  429``). The prediction is ``(ahead / per_batch + 1) * batch_time / instances + batch_time``:
  ``ahead`` the requests queued at the request's priority and above, ``per_batch`` how many
  requests a full batch took (measured), ``+ 1`` the batches running ahead of it (it queues only
  when every instance is busy), ``batch_time`` the usual time a batch runs (measured),
  ``instances`` those in the replica set (with none, the time until a starting one is expected
  ready is added), stretched by 10% for the time between batches. Nothing is predicted before a
  batch ran, and an idle instance always takes a request;
- shedding by priority: when the queue is full, a request of a higher priority takes the place of
  the newest queued request of the lowest lower priority (that one gets the 503), so batch or
  low-priority traffic is shed first;
- background work: while requests above ``Priority.LOW`` keep coming to any model of the server
  (foreground work started within the last quarter second, as the replica set's shared
  ``Foreground`` tells), low-priority requests (jobs, ``ladle batch``) take at most
  ``background_share`` of an instance's time: after a batch that carried them ran for ``t``
  seconds, the next such batch waits ``t * (1 / share - 1)``, and no batch of higher-priority
  requests is filled up with them meanwhile. With no other traffic they run at full speed
  (prioritised batchers only). A batch cannot be interrupted, so every online request that arrives
  while a background batch runs waits for it: the share is about the fraction of online requests
  that wait, and the default (0.001) keeps it under a tenth of the 1% a p99 is made of;
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
- lost instances: when the instance of a running batch fails (its worker died, it overran its
  deadlines, see ``ladle.batch_watch``), each request of the batch runs once more on another
  ready instance if there is one (``retry_failed``, default true; set it false for a model whose
  inference is not idempotent), otherwise it fails at once with 503 and Retry-After. A batch whose
  instance the control path took out of the replica set before it ran (scaled down) goes back to
  the queue without counting as a retry. With no live instance left, the queue fails the same way,
  unless an instance is starting (``ReplicaSet.pending``) or the version can wake one
  (``ReplicaSet.wake``, a version scaled to zero): then requests wait for it, bounded by their
  deadlines;
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
from typing import Any, ClassVar, Literal, cast

from pydantic import Field

from .batch_watch import TIMER_SLACK, BatchWatches
from .batching import Batcher, BatchObserver, ReplicaSet
from .envelope import Arrays, Batch, InferenceRequest, Priority
from .errors import (
    DeadlineExceededError,
    InstanceFailedError,
    LadleError,
    ModelNotReadyError,
    PayloadTooLargeError,
    RuntimeFailureError,
    ServerBusyError,
    TooManyRequestsError,
)
from .instance import Instance
from .options import PluginOptions, parse_options
from .runtime import InstanceState
from .wait_admission import WaitAdmission

__all__ = ["CANCELLED", "QueueEntry", "QueueOptions", "QueueingBatcher", "Taken"]

QueueEntry = tuple[InferenceRequest, "asyncio.Future[Arrays]"]
Taken = tuple[list[InferenceRequest], list["asyncio.Future[Arrays]"]]

#: The code reported to the observer for requests skipped because they were cancelled.
CANCELLED = "cancelled"

_READY = InstanceState.READY
_FAILED = InstanceState.FAILED
_LOW = Priority.LOW
_LIVE = (InstanceState.LOADING, InstanceState.WARMING, InstanceState.READY)
_TIMER_SLACK = TIMER_SLACK
#: Weight of the newest batch in the measured batch time and batch fill.
_EWMA = 0.2


class QueueOptions(PluginOptions):
    """Options every queueing batcher takes."""

    max_queue_size: int = Field(default=1024, ge=1, description="queued requests before 503")
    instance_concurrency: int = Field(default=1, ge=1, description="batches in flight per instance")
    retry_after: float = Field(default=1.0, gt=0, description="Retry-After of a 503, seconds")
    admission: Literal["predicted-wait", "off"] = Field(
        default="predicted-wait", description="refuse at once what is predicted to miss its deadline"
    )
    shed_status: Literal[503, 429] = Field(default=503, description="status of a shed request")
    retry_failed: bool = Field(
        default=True, description="run a batch once more elsewhere when its instance dies (idempotent)"
    )
    max_overruns: int = Field(
        default=3, ge=0, description="batches in a row that overrun before the instance fails (0: never)"
    )
    background_share: float = Field(
        default=0.001,
        gt=0,
        le=1,
        description="share of instance time low-priority work gets while other requests arrive (1: all)",
    )


class QueueingBatcher(WaitAdmission, Batcher):
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
        #: The lane of each priority (every priority shares the one lane without priority lanes).
        self._lane_of = self._lanes if self.prioritised else self._lanes * len(Priority)
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
        self._watches = BatchWatches(self)
        self._hold_timer: asyncio.TimerHandle | None = None
        self._admit = self.settings.admission == "predicted-wait"
        self._shed_error = TooManyRequestsError if self.settings.shed_status == 429 else ServerBusyError
        self._retry_failed = self.settings.retry_failed
        #: Measured: seconds a batch usually runs, and requests a batch takes when more are queued.
        self._batch_time = 0.0
        self._per_batch = 0.0
        #: The prediction as ``base + ahead * step`` (``step`` 0: predict the slow way, or not at all).
        self._wait_base = 0.0
        self._wait_step = 0.0
        self._max_overruns = self.settings.max_overruns
        #: Requests already run once on an instance that died (they get no second retry).
        self._retried: set[InferenceRequest] = set()
        share = self.settings.background_share
        #: Pause after a batch of low-priority work per second it ran (``None``: no limit).
        self._background_pause = 1.0 / share - 1.0 if self.prioritised and share < 1 else None
        self._foreground = replicas.foreground
        self._background_at = 0.0  # when low-priority work may start again while others arrive

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
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self.observer.requests_dropped((request,), DeadlineExceededError.code)
            raise DeadlineExceededError(f"request {request.id} arrived after its deadline")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Arrays] = loop.create_future()
        priority = request.priority
        held = priority is _LOW and self._background_wait(now) > 0  # background work waits its turn
        queued = self._queued
        if not held:
            if not queued:
                instance = self._idle_instance()
                if instance is not None:
                    self._dispatch(instance, [request], [future])
                    return future
                if not self._serviceable():
                    raise self._no_live_instance()
            if deadline is not None:
                # every queued request pays this: a few reads and float operations
                step = self._wait_step  # 0: admission off, nothing measured, stale, or no instance
                if step:
                    if self._wait_base + queued * step > deadline - now:  # may miss: look closer
                        self._check_wait(request, deadline, now)
                elif self._batch_time and self._admit:
                    self._refresh_wait()
                    self._check_wait(request, deadline, now)
        if queued >= self._max_queue_size and not self._shed_lower(priority):
            self.observer.requests_dropped((request,), ServerBusyError.code)
            raise ServerBusyError(
                f"the queue of model {self.replicas.model!r} version {self.replicas.version!r} is full "
                f"({self._max_queue_size} requests)",
                retry_after=self.settings.retry_after,
                queue_size=self._max_queue_size,
            )
        self._lane_of[priority].append((request, future))
        self._queued += 1
        self._queued_rows += rows
        if deadline is not None and deadline < self._deadline_at:
            self._arm_deadline(deadline)
        if held or self._hold_timer is not None:  # an instance may be idle, waiting
            self._pump()  # (for held work: arms the timer that starts it)
        return future

    def _background_wait(self, now: float) -> float:
        """Seconds before low-priority work may start (0 or less: now; see the module docstring)."""
        if self._background_pause is None or not self._foreground.recent(now):
            return 0.0
        return self._background_at - now

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
        """Whether any instance is ready or on its way to ready (one may be woken for it)."""
        replicas = self.replicas
        if replicas.pending or any(i.state in _LIVE for i in replicas.instances):
            return True
        wake = replicas.wake
        return wake is not None and wake()

    def _no_live_instance(self) -> ModelNotReadyError:
        return self._unavailable(
            f"model {self.replicas.model!r} version {self.replicas.version!r} has no live instance"
        )

    def _unavailable(self, message: str) -> ModelNotReadyError:
        error = ModelNotReadyError(message, model=self.replicas.model, version=self.replicas.version)
        error.retry_after = self.settings.retry_after
        return error

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
        count = len(requests)
        errors: list[str | None]
        outputs: list[Arrays | None] | None = None
        ran = started
        if requests[0].priority is not _LOW:  # lanes in priority order: foreground work is running
            self._foreground.at = started  # (``mark`` inline: this runs per batch)
        watch = self._watches.arm(instance, requests, futures)
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
            state = instance.state
            if state is not _READY and (
                state is _FAILED or isinstance(error, ModelNotReadyError | InstanceFailedError)
            ):
                requests, futures, error = self._lost(instance, requests, futures, error)
            for future in futures:
                if not future.done():
                    future.set_exception(error)
            errors = [error.code] * len(requests)
        else:
            if any([isinstance(result, LadleError) for result in results]):
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
            else:  # the usual batch: every request has its outputs
                answered = cast("list[Arrays]", results)
                for future, arrays in zip(futures, answered, strict=True):
                    if not future.done():
                        future.set_result(arrays)
                errors = [None] * count
                outputs = cast("list[Arrays | None]", answered)
        if watch is not None:
            watch.cancel()
        if self._retried:
            self._retried.difference_update(requests)
        finished = time.monotonic()
        elapsed = finished - started
        pause = self._background_pause
        if pause is not None and requests and requests[-1].priority is _LOW:  # lanes in priority order
            self._background_at = finished + elapsed * pause
        if outputs is not None:  # it ran: the usual batch time follows it
            usual = self._batch_time
            self._batch_time = usual + _EWMA * (elapsed - usual) if usual else elapsed
            if self._queued:
                self._refresh_wait()
            else:
                self._wait_step = 0.0  # stale: the next request that queues refreshes it
        self._finish(instance, count)
        if requests:
            self.observer.batch_done(requests, started, finished, errors, outputs, (ran, finished))

    @property
    def usual_batch_time(self) -> float:
        """Seconds a batch usually runs (an average of the last batches; 0 before one ran)."""
        return self._batch_time

    @property
    def max_overruns(self) -> int:
        return self._max_overruns

    def _lost(
        self,
        instance: Instance,
        requests: list[InferenceRequest],
        futures: list[asyncio.Future[Arrays]],
        error: LadleError,
    ) -> tuple[list[InferenceRequest], list[asyncio.Future[Arrays]], LadleError]:
        """The batch's instance is gone: requeue what may run elsewhere; the rest (returned, with
        the error to answer) fails at once with 503 and Retry-After."""
        failed = instance.state is _FAILED
        others = any(i is not instance and i.state is _READY for i in self.replicas.instances)
        again: list[tuple[InferenceRequest, asyncio.Future[Arrays]]] = []
        left_requests: list[InferenceRequest] = []
        left_futures: list[asyncio.Future[Arrays]] = []
        for request, future in zip(requests, futures, strict=True):
            if future.done():
                left_requests.append(request)  # answered already (504 at its deadline)
                left_futures.append(future)
            elif not failed:  # taken out of the replica set before it ran: nothing ran
                again.append((request, future))
            elif others and self._retry_failed and request not in self._retried:
                self._retried.add(request)
                again.append((request, future))
            else:
                left_requests.append(request)
                left_futures.append(future)
        if again:
            self._requeue(again)
        if failed:
            reason = instance.error or error.message
            error = self._unavailable(
                f"instance {instance.name} of model {self.replicas.model!r} version "
                f"{self.replicas.version!r} failed while running the request ({reason}); it is being replaced"
            )
        return left_requests, left_futures, error

    def _requeue(self, entries: list[QueueEntry]) -> None:
        """Put requests back at the front of their lanes, in their order."""
        earliest = math.inf
        rows = 0
        for request, future in reversed(entries):
            self._lane_of[request.priority].appendleft((request, future))
            rows += request.rows
            if request.deadline is not None and request.deadline < earliest:
                earliest = request.deadline
        self._queued += len(entries)
        self._queued_rows += rows
        if earliest < self._deadline_at:
            self._arm_deadline(earliest)

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
            held = False  # background work waits its turn (module docstring)
            if not self._closed:
                wait = self._hold(now)
                if self._background_pause is not None and self._lanes[_LOW]:
                    background = self._background_wait(now)
                    held = background > 0
                    if held and len(self._lanes[_LOW]) == self._queued:
                        wait = max(wait, background)
                if wait > 0:
                    if self._hold_timer is None:
                        assert self._loop is not None
                        self._hold_timer = self._loop.call_later(wait, self._hold_over)
                    return
            if self._hold_timer is not None:
                self._hold_timer.cancel()
                self._hold_timer = None
            if held:
                low, self._lanes[_LOW] = self._lanes[_LOW], deque()
                try:
                    taken = self._take(now)
                finally:
                    self._lanes[_LOW] = low
            else:
                taken = self._take(now)
            if taken is not None:
                if self._queued:  # a full batch: it shows how many requests one batch takes
                    fill = self._per_batch
                    size = len(taken[0])
                    self._per_batch = fill + _EWMA * (size - fill) if fill else float(size)
                    self._refresh_wait()
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
            self._refresh_wait()
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
        self._watches.close()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for an instance (cancelled ones count until they are swept out)."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Requests handed to instances and not yet answered."""
        return self._dispatched


def _batch_error(exc: BaseException, instance: Instance) -> LadleError:
    if isinstance(exc, LadleError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return ModelNotReadyError(f"instance {instance.name} stopped before the batch finished")
    return RuntimeFailureError(f"instance {instance.name} failed: {type(exc).__name__}: {exc}")
