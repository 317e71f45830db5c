"""Shadow traffic: copies of sampled requests sent to another version and compared, never returned.

``offer`` (data path) only appends to a bounded queue; when the queue is full the copy is dropped
and counted. Worker tasks send each copy at the lowest priority, wait for both answers and record
the comparison: label agreement, mean absolute score difference and latency difference.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..envelope import Arrays, InferenceRequest, Priority
from ..errors import LadleError
from ..routing import Target
from .guards import predicted_labels, row_scores

if TYPE_CHECKING:
    from ..serving import VersionEndpoint

__all__ = ["ShadowMirror", "ShadowStats"]


class ShadowStats:
    """Comparisons of one shadow version with the primaries it mirrored."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.compared = 0
        self.failed = 0
        self.rows = 0
        self.agreeing_rows = 0
        self.scored_rows = 0
        self.abs_score_diff_sum = 0.0
        self.latency_diffs: deque[float] = deque(maxlen=capacity)

    def record(self, primary: Arrays, shadow: Arrays, latency_diff: float, score_output: str | None) -> None:
        self.compared += 1
        self.latency_diffs.append(latency_diff)
        p_labels = predicted_labels(primary, score_output)
        s_labels = predicted_labels(shadow, score_output)
        if p_labels is not None and s_labels is not None and p_labels.shape == s_labels.shape:
            self.rows += len(p_labels)
            self.agreeing_rows += int(np.count_nonzero(p_labels == s_labels))
        p_scores = row_scores(primary, score_output)
        s_scores = row_scores(shadow, score_output)
        if p_scores is not None and s_scores is not None and p_scores.shape == s_scores.shape:
            diff = np.abs(p_scores.astype(np.float64) - s_scores.astype(np.float64))
            self.scored_rows += len(diff)
            self.abs_score_diff_sum += float(diff.sum())

    def describe(self) -> dict[str, Any]:
        diffs = np.asarray(self.latency_diffs, dtype=np.float64)
        return {
            "compared": self.compared,
            "failed": self.failed,
            "label_agreement": self.agreeing_rows / self.rows if self.rows else None,
            "mean_abs_score_diff": self.abs_score_diff_sum / self.scored_rows if self.scored_rows else None,
            "latency_diff_ms_p50": float(np.percentile(diffs, 50)) * 1e3 if len(diffs) else None,
            "latency_diff_ms_p95": float(np.percentile(diffs, 95)) * 1e3 if len(diffs) else None,
        }


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Copy:
    __slots__ = ("primary", "primary_done", "request", "target")

    def __init__(self, request: InferenceRequest, target: Target, primary: asyncio.Future[Arrays]) -> None:
        self.request = request
        self.target = target
        self.primary = primary
        self.primary_done = 0.0

    def mark(self, _: object) -> None:
        self.primary_done = time.monotonic()


class ShadowMirror:
    """The shadow queue and workers of one model."""

    def __init__(
        self,
        resolve: Callable[[Target], VersionEndpoint | None],
        *,
        queue: int = 256,
        concurrency: int = 2,
        timeout: float = 10.0,
        score_output: str | None = None,
    ) -> None:
        self._resolve = resolve
        self._queue: asyncio.Queue[_Copy] = asyncio.Queue(maxsize=queue)
        self.concurrency = concurrency
        self.timeout = timeout
        self.score_output = score_output
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self.offered = 0
        self.dropped = 0
        self.stats: dict[str, ShadowStats] = {}

    def offer(
        self, request: InferenceRequest, shadows: tuple[Target, ...], primary: asyncio.Future[Arrays]
    ) -> None:
        """Queue a copy of ``request`` per shadow target; drop (and count) when the queue is full."""
        if not self._workers:
            self._start()
        for target in shadows:
            self.offered += 1
            copy = _Copy(request, target, primary)
            try:
                self._queue.put_nowait(copy)
            except asyncio.QueueFull:
                self.dropped += 1
                continue
            primary.add_done_callback(copy.mark)

    def _start(self) -> None:
        self._workers = [
            asyncio.get_running_loop().create_task(self._work()) for _ in range(self.concurrency)
        ]

    async def _work(self) -> None:
        while not self._closed:
            copy = await self._queue.get()
            try:
                await self._compare(copy)
            except Exception:  # a shadow must never disturb serving; count it and go on
                self._stats(copy.target.version).failed += 1

    def _stats(self, version: str) -> ShadowStats:
        stats = self.stats.get(version)
        if stats is None:
            stats = self.stats[version] = ShadowStats()
        return stats

    async def _compare(self, copy: _Copy) -> None:
        original = copy.request
        stats = self._stats(copy.target.version)
        endpoint = self._resolve(copy.target)
        if endpoint is None:
            self.dropped += 1
            return
        shadow_request = InferenceRequest(
            original.model,
            original.inputs,
            version=copy.target.version,
            parameters=dict(original.parameters),
            deadline=time.monotonic() + self.timeout,
            priority=Priority.LOW,
            routing_key=original.routing_key,
            outputs=original.outputs,
            rows=original.rows,
        )
        try:
            future = endpoint.batcher.submit(shadow_request)
        except LadleError:
            self.dropped += 1
            return
        # asyncio.timeout, not wait_for: wait_for (3.11) can swallow a cancellation that races
        # with the answer, and a worker that misses its cancellation never stops.
        try:
            async with asyncio.timeout(self.timeout):
                shadow_outputs = await future
        except (LadleError, TimeoutError):
            shadow_request.cancel.cancel("shadow timed out")
            stats.failed += 1
            return
        shadow_latency = time.monotonic() - shadow_request.arrival
        try:
            async with asyncio.timeout(self.timeout):
                primary_outputs = await asyncio.shield(copy.primary)  # never cancel the client's request
        except (LadleError, TimeoutError):
            return  # the primary failed: nothing to compare
        except asyncio.CancelledError:
            if copy.primary.cancelled() and not _cancelling():
                return
            raise
        primary_latency = (copy.primary_done or time.monotonic()) - original.arrival
        stats.record(primary_outputs, shadow_outputs, shadow_latency - primary_latency, self.score_output)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        """Stop the workers; copies still queued are abandoned."""
        self._closed = True
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "dropped": self.dropped,
            "queued": self.queued,
            "versions": {version: stats.describe() for version, stats in self.stats.items()},
        }
