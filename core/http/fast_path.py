"""A lean ASGI path for the inference endpoints, in front of the starlette app.

Inference is the only per-request hot path; it skips starlette's routing, request and response
objects and middleware stack (tens of microseconds a request) and talks ASGI directly. Every
other route, and every method other than POST on these paths, goes on to starlette.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import LadleError, PayloadTooLargeError, RuntimeFailureError
from .responses import error_headers

__all__ = ["JSON_HEADERS", "FastPath", "FastRoutes", "Handler", "Reply"]

logger = logging.getLogger("ladle.http")

#: (status, body, headers)
Reply = tuple[int, bytes, Mapping[str, str]]
#: handler(model, version, body, headers) -> Reply; raises ``LadleError`` for client mistakes.
Handler = Callable[[str, str | None, bytes, Mapping[str, str]], Awaitable[Reply]]
JSON_HEADERS: Mapping[str, str] = {"content-type": "application/json"}
_JSON_RAW = [(b"content-type", b"application/json")]


class FastRoutes:
    """POST routes with ``{model}`` and optional ``{version}`` segments."""

    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], Handler]] = []

    def add(self, path: str, handler: Handler) -> None:
        pattern = re.escape(path).replace(r"\{model\}", r"(?P<model>[^/]+)")
        pattern = pattern.replace(r"\{version\}", r"(?P<version>[^/]+)")
        self._routes.append((re.compile(pattern + "$"), handler))

    def match(self, path: str) -> tuple[Handler, str, str | None] | None:
        for pattern, handler in self._routes:
            found = pattern.match(path)
            if found is not None:
                groups = found.groupdict()
                return handler, groups["model"], groups.get("version")
        return None


class FastPath:
    """ASGI middleware: serves the fast routes itself and hands everything else to ``app``."""

    def __init__(self, app: ASGIApp, routes: FastRoutes, max_body: int) -> None:
        self.app = app
        self.routes = routes
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        matched = self.routes.match(scope["path"])
        if matched is None:
            return await self.app(scope, receive, send)
        handler, model, version = matched
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self._body(headers, receive)
            status, content, reply_headers = await handler(model, version, body, headers)
        except LadleError as exc:
            status, content = exc.status, orjson.dumps(exc.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)
            reply_headers = {**JSON_HEADERS, **error_headers(exc)}
        except Exception as exc:  # a bug: answer 500 with JSON and log it, never drop the connection
            logger.exception("inference handler failed")
            error = RuntimeFailureError(f"internal error: {type(exc).__name__}: {exc}")
            status, content, reply_headers = 500, orjson.dumps(error.to_dict()), JSON_HEADERS
        raw = (
            _JSON_RAW
            if reply_headers is JSON_HEADERS
            else [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply_headers.items()]
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*raw, (b"content-length", str(len(content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": content})
        return None

    async def _body(self, headers: Mapping[str, str], receive: Receive) -> bytes:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise PayloadTooLargeError(
                f"request body of {length} bytes exceeds the limit of {self.max_body}", limit=self.max_body
            )
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLargeError(f"request body exceeds the limit of {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
