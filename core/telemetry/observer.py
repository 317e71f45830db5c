"""The batch observer a batcher feeds: one call per batch, fanned out to stats, spans, quality, logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..envelope import Arrays, InferenceRequest
from .stats import VersionStats

if TYPE_CHECKING:
    from .inference_log import InferenceLog
    from .quality import _VersionQuality
    from .tracing import SpanEmitter

__all__ = ["VersionObserver"]

_log = logging.getLogger("ladle.telemetry")


class VersionObserver:
    """Implements ``ladle.batching.BatchObserver`` for one model version.

    Besides the protocol's arguments, ``batch_done`` takes the per-request ``outputs`` (``None``
    for failed requests) for quality monitoring and output logging, and the ``runtime`` interval
    (``time.monotonic()`` start and end) when the batcher knows it apart from the batch's.
    """

    __slots__ = ("_logs", "_quality", "_spans", "failures", "model", "stats", "version")

    def __init__(
        self,
        stats: VersionStats,
        spans: SpanEmitter | None = None,
        quality: _VersionQuality | None = None,
        logs: InferenceLog | None = None,
    ) -> None:
        self.model = stats.model
        self.version = stats.version
        self.stats = stats
        self._spans = spans
        self._quality = quality
        self._logs = logs
        self.failures = 0

    def batch_done(
        self,
        requests: Sequence[InferenceRequest],
        started: float,
        finished: float,
        errors: Sequence[str | None],
        outputs: Sequence[Arrays | None] | None = None,
        runtime: tuple[float, float] | None = None,
    ) -> None:
        if not requests:
            return
        self.stats.record_batch(requests, started, finished, errors)
        try:
            if self._spans is not None:
                for request in requests:
                    trace = request.trace
                    if trace is not None and trace.sampled:
                        self._spans.emit_batch(
                            self.model, self.version, requests, started, finished, errors, runtime
                        )
                        break
            if self._quality is not None:
                self._quality.observe(requests, outputs, finished)
            if self._logs is not None:
                self._logs.record_batch(self.model, self.version, requests, finished, errors, outputs)
        except Exception:  # telemetry must never fail a batch; make the fault visible instead
            self._failed()

    def requests_dropped(self, requests: Sequence[InferenceRequest], code: str) -> None:
        if not requests:
            return
        now = time.monotonic()
        self.stats.record_dropped(len(requests), code, now)
        try:
            if self._spans is not None:
                self._spans.emit_dropped(self.model, self.version, requests, code, now)
            if self._logs is not None:
                self._logs.record_dropped(self.model, self.version, requests, code)
        except Exception:  # as above
            self._failed()

    def _failed(self) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 1000 == 0:
            _log.exception("telemetry failed for %s/%s (%d times)", self.model, self.version, self.failures)
