"""Per-request settings that arrive as headers or protocol parameters: deadline, priority, routing key,
trace context. Header names are case-insensitive; a parameter wins over a header."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..deployments.delivery import ServedOutputs
from ..envelope import Arrays, InferenceRequest, Priority, TraceContext
from ..errors import InvalidRequestError, LadleError

if TYPE_CHECKING:
    from ..serving import ModelEndpoint

__all__ = [
    "DEADLINE_HEADER",
    "PRIORITY_HEADER",
    "ROUTING_KEY_HEADER",
    "VERSION_HEADER",
    "RequestContext",
    "answer",
    "served_by",
]

DEADLINE_HEADER = "ladle-timeout-ms"
PRIORITY_HEADER = "ladle-priority"
ROUTING_KEY_HEADER = "ladle-routing-key"
VERSION_HEADER = "Ladle-Model-Version"
SERVED_FROM_HEADER = "Ladle-Served-From"
FALLBACK_HEADER = "Ladle-Fallback-Reason"


def served_by(outputs: Arrays, version: str) -> tuple[str, str | None, dict[str, str]]:
    """(version, model or ``None``, headers) of outputs that may come from elsewhere than the
    routed version: a cache, a cascade's larger model, or a fallback (see ``ServedOutputs``)."""
    if not isinstance(outputs, ServedOutputs):
        return version, None, {VERSION_HEADER: version}
    served = outputs.version if outputs.version is not None else version
    headers = {VERSION_HEADER: served, SERVED_FROM_HEADER: outputs.source}
    if outputs.reason:
        headers[FALLBACK_HEADER] = outputs.reason
    return served, outputs.model, headers


async def answer(
    endpoint: ModelEndpoint, request: InferenceRequest
) -> tuple[Arrays, str, str | None, dict[str, str]]:
    """Route and await ``request``: its outputs, then ``served_by``'s version, model and headers.
    A failure carries the version header of the version it reached."""
    served, future = endpoint.submit(request)
    try:
        outputs = await future
    except LadleError as exc:
        exc.headers = {VERSION_HEADER: served.version}
        raise
    return (outputs, *served_by(outputs, served.version))


class RequestContext:
    """Deadline (absolute monotonic seconds), priority, routing key and trace of one request."""

    __slots__ = ("deadline", "priority", "routing_key", "trace")

    def __init__(
        self, deadline: float, priority: Priority, routing_key: str | None, trace: TraceContext | None
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
        default_timeout: float,
        trace_context: Callable[[Mapping[str, str]], TraceContext | None] | None = None,
    ) -> RequestContext:
        """Read ``timeout_ms``/``priority``/``routing_key`` parameters, else the ``Ladle-*`` headers."""
        timeout = default_timeout
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
            timeout = timeout_ms / 1000.0
        priority = Priority.NORMAL
        raw = parameters.get("priority", headers.get(PRIORITY_HEADER))
        if raw is not None:
            try:
                priority = Priority.parse(raw)
            except ValueError as exc:
                raise InvalidRequestError(str(exc), parameter="priority") from None
        key = parameters.get("routing_key", headers.get(ROUTING_KEY_HEADER))
        trace = trace_context(headers) if trace_context is not None else None
        return cls(time.monotonic() + timeout, priority, str(key) if key is not None else None, trace)
