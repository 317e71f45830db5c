"""JSON responses, error responses and bounded body reading shared by every protocol adapter."""

from __future__ import annotations

import math
from typing import Any

import orjson
from starlette.responses import Response

from ..errors import LadleError

__all__ = ["JSON", "error_headers", "error_response", "json_response"]

JSON = "application/json"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, JSON)


def error_response(error: LadleError, headers: dict[str, str] | None = None) -> Response:
    """The JSON body of ``error`` with its status (and ``Retry-After`` when it carries one)."""
    return json_response(error.to_dict(), error.status, {**error_headers(error), **(headers or {})})


def error_headers(error: LadleError) -> dict[str, str]:
    """The headers an error response carries: the error's own, and ``Retry-After`` when it has one."""
    headers = dict(error.headers)
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return headers
