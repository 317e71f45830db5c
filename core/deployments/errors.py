"""Errors of the control plane, in ladle's hierarchy (each carries its HTTP status)."""

from __future__ import annotations

from typing import Any

from ..errors import ClientError

__all__ = ["ConflictError", "RateLimitedError", "UnknownRequestError"]


class ConflictError(ClientError):
    """The change conflicts with the current state (static mode is read-only; nothing to roll back to)."""

    status = 409
    code = "conflict"


class RateLimitedError(ClientError):
    """Too many requests for this token; ``retry_after`` says when the next one is allowed."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float = 1.0, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class UnknownRequestError(ClientError):
    """Feedback for a request id this server does not remember (never served, or too old)."""

    status = 404
    code = "unknown_request"
