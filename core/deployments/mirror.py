"""Shadow traffic: copies of sampled requests sent to another version and compared, never returned.

``offer`` (data path) only appends to a bounded queue; when the queue is full the copy is dropped
and counted. Worker tasks send each copy at the lowest priority, wait for both answers and record
the comparison: label agreement and mean absolute score difference for tensors, identical
generations and token agreement for generated text, and the latency difference.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..admission import Pending
from ..envelope import Arrays, CancelSignal, InferenceRequest, Priority
from ..errors import LadleError
from ..generation import GenerationResult
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
        self.sequences = 0
        self.identical = 0
        self.tokens = 0
        self.agreeing_tokens = 0

    def record(
        self,
        primary: Arrays | GenerationResult,
        shadow: Arrays | GenerationResult,
        latency_diff: float,
        score_output: str | None,
    ) -> None:
        self.compared += 1
        self.latency_diffs.append(latency_diff)
        if isinstance(primary, GenerationResult) or isinstance(shadow, GenerationResult):
            self._record_generation(primary, shadow)
            return
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

    def _record_generation(
        self, primary: Arrays | GenerationResult, shadow: Arrays | GenerationResult
    ) -> None:
        """Generations agree token by token: identical sequences, and the share of positions that match."""
        if not (isinstance(primary, GenerationResult) and isinstance(shadow, GenerationResult)):
            return
        self.sequences += 1
        self.identical += primary.token_ids == shadow.token_ids
        longest = max(len(primary.token_ids), len(shadow.token_ids))
        self.tokens += longest
        self.agreeing_tokens += sum(a == b for a, b in zip(primary.token_ids, shadow.token_ids, strict=False))

    def describe(self) -> dict[str, Any]:
        diffs = np.asarray(self.latency_diffs, dtype=np.float64)
        generation = (
            {
                "identical_generations": self.identical / self.sequences,
                "token_agreement": self.agreeing_tokens / self.tokens if self.tokens else None,
            }
            if self.sequences
            else {}
        )
        return {
            **generation,
            "compared": self.compared,
            "failed": self.failed,
            "label_agreement": self.agreeing_rows / self.rows if self.rows else None,
            "mean_abs_score_diff": self.abs_score_diff_sum / self.scored_rows if self.scored_rows else None,
            "latency_diff_ms_p50": float(np.percentile(diffs, 50)) * 1e3 if len(diffs) else None,
            "latency_diff_ms_p95": float(np.percentile(diffs, 95)) * 1e3 if len(diffs) else None,
        }


class _Copy:
    __slots__ = ("primary", "primary_done", "request", "target")

    def __init__(self, request: InferenceRequest, target: Target, primary: asyncio.Future[Outcome]) -> None:
        self.request = request
        self.target = target
        self.primary = primary
        self.primary_done = 0.0

    def mark(self, _: object) -> None:
        self.primary_done = time.monotonic()


#: (outputs or a generation result, or ``None``; the error or ``None``)
Outcome = tuple["Arrays | GenerationResult | None", "BaseException | None"]


def _outcome_future(pending: Pending) -> asyncio.Future[Outcome]:
    """A future of a pending answer's outcome that never raises (and never cancels the answer)."""
    future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    def done(result: Arrays | GenerationResult | None, error: BaseException | None) -> None:
        if not future.done():
            future.set_result((result, error))

    pending.add_done_callback(done)
    return future


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

    def offer(self, request: InferenceRequest, shadows: tuple[Target, ...], primary: Pending) -> None:
        """Queue a copy of ``request`` per shadow target; drop (and count) when the queue is full."""
        if not self._workers:
            self._start()
        outcome: asyncio.Future[Outcome] | None = None
        for target in shadows:
            self.offered += 1
            if self._queue.full():
                self.dropped += 1
                continue
            if outcome is None:
                outcome = _outcome_future(primary)
            copy = _Copy(request, target, outcome)
            outcome.add_done_callback(copy.mark)
            self._queue.put_nowait(copy)

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
        shadow_request = original.derive(
            original.model,
            copy.target.version,
            parameters=dict(original.parameters),
            deadline=time.monotonic() + self.timeout,
            priority=Priority.LOW,
            cancel=CancelSignal(),
            id=None,
        )
        shadow_request.arrival = time.monotonic()
        try:
            endpoint.check(shadow_request)
            pending = endpoint.queue(shadow_request)
        except LadleError:
            self.dropped += 1
            return
        try:
            async with asyncio.timeout(self.timeout):
                if pending.stream is not None:
                    shadow_result: Arrays | GenerationResult = await pending.stream.collect()
                else:
                    assert pending.future is not None
                    shadow_result = await pending.future
        except (LadleError, TimeoutError):
            shadow_request.cancel.abandon("shadow timed out")
            stats.failed += 1
            return
        shadow_latency = time.monotonic() - shadow_request.arrival
        # asyncio.timeout, not wait_for: wait_for (3.11) can swallow a cancellation that races
        # with the answer, and a worker that misses its cancellation never stops.
        try:
            async with asyncio.timeout(self.timeout):
                primary_result, primary_error = await copy.primary
        except TimeoutError:
            return
        if primary_error is not None or primary_result is None:
            return  # the primary failed: nothing to compare
        primary_latency = (copy.primary_done or time.monotonic()) - original.arrival
        stats.record(primary_result, shadow_result, shadow_latency - primary_latency, self.score_output)

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
