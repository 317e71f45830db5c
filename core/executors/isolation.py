"""Running one batch through a runtime with per-item error isolation.

This runs wherever the runtime lives (a thread of the front process or a worker process), so a
failing item is isolated next to the runtime instead of costing one process hop per item.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..envelope import Arrays, Batch
from ..errors import DeadlineExceededError, LadleError, RequestCancelledError, RuntimeFailureError
from ..runtime import Runtime

__all__ = ["ItemResult", "execute_isolated"]

ItemResult = Arrays | LadleError


def _as_error(exc: BaseException, runtime: Runtime) -> LadleError:
    if isinstance(exc, LadleError):
        return exc
    return RuntimeFailureError(
        f"runtime {runtime.name!r} failed: {type(exc).__name__}: {exc}",
        model=runtime.spec.model,
        version=runtime.spec.version,
    )


def _checked(outputs: Any, batch: Batch, runtime: Runtime) -> Arrays:
    if not isinstance(outputs, dict) or not outputs:
        raise RuntimeFailureError(
            f"runtime {runtime.name!r} returned {type(outputs).__name__}, not named arrays"
        )
    rows = batch.rows
    for name, array in outputs.items():
        if not isinstance(array, np.ndarray):
            array = outputs[name] = np.asarray(array)
        if array.ndim == 0 or array.shape[0] != rows:
            raise RuntimeFailureError(
                f"runtime {runtime.name!r} returned output {name!r} with shape {list(array.shape)} "
                f"for a batch of {rows} rows"
            )
    return outputs


def _skipped(batch: Batch) -> dict[int, LadleError]:
    """Items that must not run: cancelled, or past their deadline."""
    now = time.monotonic()
    skipped: dict[int, LadleError] = {}
    for index, item in enumerate(batch.items):
        if item.cancelled:
            skipped[index] = RequestCancelledError(
                "request was cancelled before it ran", request_id=item.request_id
            )
        elif item.deadline is not None and item.deadline <= now:
            skipped[index] = DeadlineExceededError(
                "deadline passed before the request ran", request_id=item.request_id
            )
    return skipped


def execute_isolated(runtime: Runtime, batch: Batch) -> list[ItemResult]:
    """Run ``batch`` without its cancelled or expired items; if it fails and holds several items,
    run each alone so one bad item fails alone."""
    skipped = _skipped(batch)
    if not skipped:
        return _run(runtime, batch)
    live = [i for i in range(len(batch.items)) if i not in skipped]
    if not live:
        return [skipped[i] for i in range(len(batch.items))]
    ran = iter(_run(runtime, batch.subset(live)))
    return [skipped[i] if i in skipped else next(ran) for i in range(len(batch.items))]


def _run(runtime: Runtime, batch: Batch) -> list[ItemResult]:
    try:
        outputs: list[ItemResult] = list(batch.split(_checked(runtime.predict(batch), batch, runtime)))
        return outputs
    except Exception as exc:
        if len(batch.items) == 1:
            return [_as_error(exc, runtime)]
    results: list[ItemResult] = []
    for index in range(len(batch.items)):
        single = batch.select(index)
        try:
            results.append(_checked(runtime.predict(single), single, runtime))
        except Exception as exc:
            results.append(_as_error(exc, runtime))
    return results
