"""The dynamic batcher: batches what queues while every instance is busy, never makes a lone request wait.

Exact semantics:

- **Lone requests go at once.** When the queue is empty and an instance is idle (ready, with fewer
  than ``instance_concurrency`` batches in flight; default 1), ``submit`` dispatches the request
  at once as a batch of one. There is no batching window on an idle server.
- **Batches form from the queue.** Requests that arrive while every instance is busy queue; when
  an instance frees up, the queued requests become its next batch.
- **``max_batch_size`` counts rows**, not requests (default 32). A batch never holds more rows
  than ``max_batch_size`` nor than the runtime's cap (``ReplicaSet.max_batch_rows``). A single
  request with more rows than either is refused by ``submit`` with ``PayloadTooLargeError`` (413).
- **Shapes.** Only requests with equal ``InferenceRequest.shape_key()`` (names, dtypes and
  non-batch dimensions) share a batch, unless every instance's runtime declares ``pads``; then
  requests with equal names, dtypes and ranks share a batch and their non-batch dimensions are
  zero-padded at the end to the largest in the batch.
- **Priority lanes.** One FIFO lane per ``Priority``. A batch is filled from the highest class
  (lowest value) first; a lower class joins a batch only when every higher lane has been emptied
  into it, so a low class can never delay or starve a higher one. Inside a lane the order is FIFO
  among requests of one shape; a request that does not fit the remaining rows is not overtaken by
  later requests of its lane.
- **``preferred_batch_sizes``** (rows, default none) cut the queue into efficient batches: when a
  batch forms, its row budget is the largest preferred size that is <= the rows queued (all lanes
  and shapes) and <= the row cap; with fewer queued rows than the smallest preferred size, all
  that is compatible is taken.
- **``max_queue_delay``** (milliseconds, default 0) only matters with ``preferred_batch_sizes``:
  an instance that becomes free and finds fewer queued rows than the smallest preferred size waits
  for more requests until the oldest queued request has waited ``max_queue_delay`` (counted from
  its arrival), or until enough rows queue, whichever comes first. With no preferred sizes no
  instance ever waits, and the fast path above is never delayed.
- **Bounded queue.** ``max_queue_size`` requests (default 1024); beyond it ``submit`` raises
  ``ServerBusyError`` (503, ``retry_after`` seconds) at once.
- **Deadlines and cancellation.** A request whose deadline passes while queued is answered with
  ``DeadlineExceededError`` (504) at its deadline (one timer for the earliest queued deadline),
  before it costs compute; one already past its deadline is refused by ``submit``. A cancelled
  request (``request.cancel`` set, or its future cancelled) is skipped and its future cancelled.
- **Errors.** Per-item errors from ``Instance.execute`` go to that request's future only; an
  exception from ``execute`` (e.g. ``InstanceFailedError``) fails that batch's requests, and the
  other instances keep serving the queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator, model_validator

from ladle import (
    Batch,
    BatchItem,
    InferenceRequest,
    QueueEntry,
    QueueingBatcher,
    QueueOptions,
    Taken,
    as_tuple,
)

__all__ = ["DynamicBatcher", "DynamicOptions", "padded_batch"]

# How many requests of another shape one batch formation may step over in a lane.
_SCAN_LIMIT = 256


class DynamicOptions(QueueOptions):
    """Options of the dynamic batcher (see the module docstring for their exact meaning)."""

    max_batch_size: int = Field(default=32, ge=1, description="rows per batch")
    max_queue_delay: float = Field(default=0.0, ge=0, description="milliseconds")
    preferred_batch_sizes: tuple[int, ...] = ()

    _lists = field_validator("preferred_batch_sizes", mode="before")(as_tuple)

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _sorted_positive(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if any(size < 1 for size in sizes):
            raise ValueError("every preferred batch size must be >= 1")
        return tuple(sorted(set(sizes)))

    @model_validator(mode="after")
    def _within_max(self) -> DynamicOptions:
        if self.preferred_batch_sizes and self.preferred_batch_sizes[-1] > self.max_batch_size:
            raise ValueError(
                f"preferred_batch_sizes must be <= max_batch_size ({self.max_batch_size}), "
                f"got {list(self.preferred_batch_sizes)}"
            )
        return self


class DynamicBatcher(QueueingBatcher):
    """Adaptive batching in front of one version's replica set; see the module docstring."""

    plugin_name: ClassVar[str] = "dynamic"
    options_model: ClassVar[type[QueueOptions]] = DynamicOptions
    prioritised: ClassVar[bool] = True
    settings: DynamicOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_batch_size = self.settings.max_batch_size
        self._preferred = self.settings.preferred_batch_sizes
        self._delay = self.settings.max_queue_delay / 1000.0 if self._preferred else 0.0

    def _row_cap(self) -> float:
        cap = self.replicas.max_batch_rows
        return min(cap, self._max_batch_size) if cap else self._max_batch_size

    def _hold(self, now: float) -> float:
        if not self._delay or self._queued_rows >= self._preferred[0]:
            return 0.0
        oldest = min(lane[0][0].arrival for lane in self._lanes if lane)
        return oldest + self._delay - now

    def _budget(self, cap: float) -> float:
        """The rows the next batch may take: the largest preferred size that the queue can fill."""
        if self._preferred:
            available = min(cap, self._queued_rows)
            fitting = [size for size in self._preferred if size <= available]
            if fitting:
                return fitting[-1]
        return cap

    def _take(self, now: float) -> Taken | None:
        cap = self._row_cap()
        budget = self._budget(cap)
        layout = _padding_key if self.replicas.pads else InferenceRequest.shape_key
        taken: list[QueueEntry] = []
        rows = 0
        key: tuple[Any, ...] | None = None
        expired: list[QueueEntry] = []
        cancelled: list[QueueEntry] = []
        too_large: list[QueueEntry] = []
        dropped_rows = 0
        for lane in self._lanes:
            if not lane:
                continue
            skipped: list[QueueEntry] = []
            while lane:
                entry = lane.popleft()
                request, future = entry
                size = request.rows
                if request.deadline is not None and request.deadline <= now:
                    expired.append(entry)
                    dropped_rows += size
                    continue
                if future.done() or request.cancel.cancelled:
                    cancelled.append(entry)
                    dropped_rows += size
                    continue
                if size > cap:  # the runtime's cap shrank after this request was admitted
                    too_large.append(entry)
                    dropped_rows += size
                    continue
                if taken:
                    if rows + size > budget:
                        lane.appendleft(entry)  # not overtaken by later, smaller requests
                        break
                    if key is None:
                        key = layout(taken[0][0])
                    if layout(request) != key:
                        skipped.append(entry)
                        if len(skipped) >= _SCAN_LIMIT:
                            break
                        continue
                taken.append(entry)
                rows += size
                if rows >= budget:
                    break
            if skipped:
                lane.extendleft(reversed(skipped))
            if taken and (lane or rows >= budget):
                break  # strict priority: lower lanes join only once this lane is emptied
        self._removed(len(taken) + len(expired) + len(cancelled) + len(too_large), rows + dropped_rows)
        if expired or cancelled or too_large:
            self._drop(expired, cancelled, too_large)
        if not taken:
            return None
        requests, futures = map(list, zip(*taken, strict=True))
        return requests, futures

    def _make_batch(self, requests: list[InferenceRequest]) -> Batch:
        if len(requests) > 1 and self.replicas.pads:
            return padded_batch(requests)
        return Batch.from_requests(requests)


def _padding_key(request: InferenceRequest) -> tuple[Any, ...]:
    return tuple((name, a.dtype.str, a.ndim) for name, a in request.inputs.items())


def padded_batch(requests: Sequence[InferenceRequest]) -> Batch:
    """Concatenate requests whose non-batch dimensions differ, zero-padding each at the end. Each
    item records its own sizes (``extents``), so the outputs are cut back per request."""
    first = next(iter(requests[0].inputs))
    items = [
        BatchItem(r.id, r.rows, r.parameters, r.deadline, r.cancel.cancelled, r.inputs[first].shape[1:])
        for r in requests
    ]
    inputs = {}
    for name in requests[0].inputs:
        arrays = [r.inputs[name] for r in requests]
        target = tuple(max(dims) for dims in zip(*(a.shape[1:] for a in arrays), strict=True))
        inputs[name] = np.concatenate(
            [
                a
                if a.shape[1:] == target
                else np.pad(a, [(0, 0), *((0, t - d) for d, t in zip(a.shape[1:], target, strict=True))])
                for a in arrays
            ]
        )
    return Batch(inputs, items)
