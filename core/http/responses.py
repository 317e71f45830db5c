"""JSON responses, error responses and bounded body reading shared by every protocol adapter."""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidRequestError, LadleError, PayloadTooLargeError

__all__ = ["JSON", "error_headers", "error_response", "json_response", "log_server_error", "read_json_object"]

JSON = "application/json"

logger = logging.getLogger("ladle.http")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, JSON)


def error_response(
    error: LadleError, headers: dict[str, str] | None = None, *, request: Request | None = None
) -> Response:
    """The JSON body of ``error`` with its status and headers (``Retry-After`` when it carries one);
    a 500 is logged in full first (``request`` names the route in the log)."""
    log_server_error(error, f"{request.method} {request.url.path}" if request is not None else "")
    return json_response(error.to_dict(), error.status, {**error_headers(error), **(headers or {})})


def log_server_error(error: LadleError, where: str = "") -> None:
    """Log a 500 with everything it knows: the client gets the public body only."""
    if error.status == 500:
        logger.error("%s%s", f"{where}: " if where else "", error.log_detail())


def error_headers(error: LadleError) -> dict[str, str]:
    """The headers an error response carries: the error's own, and ``Retry-After`` when it has one."""
    headers = dict(error.headers)
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return headers


async def read_json_object(request: Request, limit: int, *, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, refused with 413 past ``limit`` bytes (before they are all
    read) and 400 when it is not one; ``optional``: an empty body reads as ``{}``.

    The control routes read any ``Content-Type``: ``curl -d`` sends a form type with JSON in it.
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"request body exceeds {limit} bytes", limit=limit)
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > limit:
            raise PayloadTooLargeError(f"request body exceeds {limit} bytes", limit=limit)
    if not raw.strip():
        if optional:
            return {}
        raise InvalidRequestError("request body must be a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object")
    return body
