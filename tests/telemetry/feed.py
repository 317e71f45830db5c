"""Helpers that feed telemetry the way a batcher does: real envelopes, known timings."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ladle.envelope import Arrays, InferenceRequest, TraceContext
from ladle.telemetry import VersionObserver


def requests(
    count: int,
    *,
    model: str = "iris",
    rows: int = 1,
    inputs: Arrays | None = None,
    trace: TraceContext | None = None,
) -> list[InferenceRequest]:
    made = []
    for _ in range(count):
        arrays = inputs if inputs is not None else {"x": np.zeros((rows, 4), np.float32)}
        made.append(InferenceRequest(model, arrays, trace=trace))
    return made


def run_batch(
    observer: VersionObserver,
    batch: Sequence[InferenceRequest],
    *,
    queued: float,
    runtime: float,
    errors: Sequence[str | None] | None = None,
    outputs: Sequence[Arrays | None] | None = None,
    finished: float | None = None,
) -> float:
    """Report ``batch`` as having queued ``queued`` s and run ``runtime`` s, ending at ``finished``."""
    finished = time.monotonic() if finished is None else finished
    started = finished - runtime
    for request in batch:
        request.arrival = started - queued
    observer.batch_done(batch, started, finished, list(errors or [None] * len(batch)), outputs=outputs)
    return finished
