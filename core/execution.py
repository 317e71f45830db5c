"""Running one batch through a runtime with per-item error isolation.

This runs wherever the runtime lives (a thread of the front process or a worker process), so a
failing item is isolated next to the runtime instead of costing one process hop per item.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .envelope import Arrays, Batch
from .errors import LadleError, RuntimeFailureError
from .runtime import Runtime

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


def execute_isolated(runtime: Runtime, batch: Batch) -> list[ItemResult]:
    """Run ``batch``; if it fails and holds several items, run each alone so one bad item fails alone."""
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
