"""Per-request settings that arrive as headers or protocol parameters: deadline, priority, routing key,
trace context. Header names are case-insensitive; a parameter wins over a header."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .envelope import Priority, TraceContext
from .errors import InvalidRequestError

__all__ = [
    "DEADLINE_HEADER",
    "PRIORITY_HEADER",
    "ROUTING_KEY_HEADER",
    "RequestContext",
]

DEADLINE_HEADER = "ladle-timeout-ms"
PRIORITY_HEADER = "ladle-priority"
ROUTING_KEY_HEADER = "ladle-routing-key"


class RequestContext:
    """Deadline (absolute monotonic seconds, or ``None`` for the model's default), priority, routing
    key and trace of one request."""

    __slots__ = ("deadline", "priority", "routing_key", "trace")

    def __init__(
        self, deadline: float | None, priority: Priority, routing_key: str | None, trace: TraceContext | None
    ) -> None:
        self.deadline = deadline
        self.priority = priority
        self.routing_key = routing_key
        self.trace = trace

    @classmethod
    def parse(
        cls,
        headers: Mapping[str, str],
        parameters: Mapping[str, Any],
        trace_context: Callable[[Mapping[str, str]], TraceContext | None] | None = None,
    ) -> RequestContext:
        """Read ``timeout_ms``/``priority``/``routing_key`` parameters, else the ``Ladle-*`` headers.

        Without a timeout the deadline is ``None``: the admission pipeline then gives the request
        its model's default (``timeout`` in the model's config)."""
        trace = trace_context(headers) if trace_context is not None else None
        if not parameters and DEADLINE_HEADER not in headers and PRIORITY_HEADER not in headers:
            key = headers.get(ROUTING_KEY_HEADER)
            return cls(None, Priority.NORMAL, key, trace)  # nothing to parse: the common case
        deadline = None
        raw = parameters.get("timeout_ms", headers.get(DEADLINE_HEADER))
        if raw is not None:
            try:
                timeout_ms = float(raw)
            except (TypeError, ValueError):
                raise InvalidRequestError(
                    f"timeout_ms must be a number of milliseconds, got {raw!r}"
                ) from None
            if not 0 < timeout_ms <= 3_600_000:
                raise InvalidRequestError(f"timeout_ms must be in (0, 3600000], got {raw!r}")
            deadline = time.monotonic() + timeout_ms / 1000.0
        priority = Priority.NORMAL
        raw = parameters.get("priority", headers.get(PRIORITY_HEADER))
        if raw is not None:
            try:
                priority = Priority.parse(raw)
            except ValueError as exc:
                raise InvalidRequestError(str(exc), parameter="priority") from None
        key = parameters.get("routing_key", headers.get(ROUTING_KEY_HEADER))
        return cls(deadline, priority, str(key) if key is not None else None, trace)
