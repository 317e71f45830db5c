"""The passthrough batcher: every request is its own batch.

A request goes at once to the least-loaded ready instance (fewer than ``instance_concurrency``
batches in flight; default 1). When every instance is busy it waits in one FIFO queue of at most
``max_queue_size`` requests (default 1024; beyond that ``submit`` raises ``ServerBusyError``, 503,
at once). A request with more rows than the runtime's cap (``ReplicaSet.max_batch_rows``) is
refused by ``submit`` with ``PayloadTooLargeError`` (413). Deadlines, cancellation, per-item
errors, instance failures and draining behave as in the dynamic batcher (see
``ladle.QueueingBatcher``); priorities are ignored (plain FIFO).
"""

from __future__ import annotations

from typing import ClassVar

from ladle import QueueEntry, QueueingBatcher, Taken

__all__ = ["PassthroughBatcher"]


class PassthroughBatcher(QueueingBatcher):
    """One request per batch; FIFO when all instances are busy."""

    plugin_name: ClassVar[str] = "passthrough"

    def _take(self, now: float) -> Taken | None:
        lane = self._lanes[0]
        cap = self._row_cap()
        expired: list[QueueEntry] = []
        cancelled: list[QueueEntry] = []
        too_large: list[QueueEntry] = []
        taken: Taken | None = None
        removed_rows = 0
        while lane:
            entry = lane.popleft()
            request, future = entry
            removed_rows += request.rows
            if request.deadline is not None and request.deadline <= now:
                expired.append(entry)
            elif future.done() or request.cancel.cancelled:
                cancelled.append(entry)
            elif request.rows > cap:
                too_large.append(entry)
            else:
                taken = ([request], [future])
                break
        self._removed(len(expired) + len(cancelled) + len(too_large) + (taken is not None), removed_rows)
        if expired or cancelled or too_large:
            self._drop(expired, cancelled, too_large)
        return taken
