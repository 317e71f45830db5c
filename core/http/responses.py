"""JSON responses, error responses and bounded body reading shared by every protocol adapter."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..errors import LadleError, PayloadTooLargeError

__all__ = ["JSON", "error_headers", "error_response", "json_response", "read_body"]

JSON = "application/json"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, JSON)


def error_response(error: LadleError, headers: dict[str, str] | None = None) -> Response:
    """The JSON body of ``error`` with its status (and ``Retry-After`` when it carries one)."""
    return json_response(error.to_dict(), error.status, {**error_headers(error), **(headers or {})})


def error_headers(error: LadleError) -> dict[str, str]:
    """The headers an error response carries: the error's own, and ``Retry-After`` when it has one."""
    headers = dict(getattr(error, "headers", None) or {})
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return headers


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(
            f"request body of {length} bytes exceeds the limit of {limit}", limit=limit
        )
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes", limit=limit)
    return body
