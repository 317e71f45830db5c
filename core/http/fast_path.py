"""A lean ASGI path for the inference endpoints, in front of the starlette app.

Inference is the only per-request hot path; it skips starlette's routing, request and response
objects and middleware stack (tens of microseconds a request) and talks ASGI directly. Every
other route, and every method other than POST on these paths, goes on to starlette.

Each request gets its cancel signal here, and this is where a client that goes away is noticed
(``ladle.http.disconnect``): every HTTP adapter hands that signal to its envelope. A handler
answers with bytes, or with an async iterator of bytes for a streamed (server-sent events) answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..admission import Answer
from ..envelope import CancelSignal
from ..errors import (
    LadleError,
    PayloadTooLargeError,
    RequestCancelledError,
    RuntimeFailureError,
    UnsupportedMediaTypeError,
)
from .disconnect import DisconnectWatch, watch_now
from .responses import error_headers, log_server_error

__all__ = [
    "JSON_HEADERS",
    "FastPath",
    "FastRoutes",
    "Handler",
    "Reply",
    "check_media_type",
    "json_answer_headers",
]

logger = logging.getLogger("ladle.http")

_RawHeaders = list[tuple[bytes, bytes]]
#: (status, body or an async iterator of body chunks, headers or already encoded header pairs)
Reply = tuple[int, bytes | AsyncGenerator[bytes, None], Mapping[str, str] | _RawHeaders]
#: handler(model or ``None``, version, body, headers, cancel) -> Reply; raises ``LadleError`` for
#: client mistakes.
Handler = Callable[[str | None, str | None, bytes, Mapping[str, str], CancelSignal], Awaitable[Reply]]
#: A matched route: (handler, model or ``None``, version or ``None``, protocol).
_Match = tuple[Handler, str | None, str | None, str]
JSON_HEADERS: Mapping[str, str] = {"content-type": "application/json"}
_ENCODED: dict[tuple[str, str], tuple[bytes, bytes]] = {}
_ANSWERS: dict[tuple[str, str, str, str | None], _RawHeaders] = {}
#: The most entries each of this module's caches holds (encoded headers, answers, route matches).
_CACHE_LIMIT = 4096


def json_answer_headers(answer: Answer) -> _RawHeaders:
    """The encoded headers of a JSON answer (the few distinct sets a server sends are built once)."""
    key = (answer.version, answer.source, answer.reason, answer.arm)
    raw = _ANSWERS.get(key)
    if raw is None:
        raw = _encode({**JSON_HEADERS, **answer.headers()})
        if len(_ANSWERS) < _CACHE_LIMIT:
            _ANSWERS[key] = raw
    return raw


def _encode(headers: Mapping[str, str] | _RawHeaders) -> _RawHeaders:
    """ASGI header pairs (a fresh list); the few distinct pairs a server sends are encoded once."""
    if isinstance(headers, list):
        return list(headers)
    raw = []
    for key, value in headers.items():
        pair = _ENCODED.get((key, value))
        if pair is None:
            pair = (key.lower().encode("latin-1"), value.encode("latin-1"))
            if len(_ENCODED) < _CACHE_LIMIT:
                _ENCODED[key, value] = pair
        raw.append(pair)
    return raw


async def _not_allowed(scope: Scope, send: Send) -> None:
    body = orjson.dumps(
        {"error": f"Method Not Allowed: {scope['method']} {scope['path']}", "code": "method_not_allowed"}
    )
    headers = [*_encode({**JSON_HEADERS, "allow": "POST"}), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def check_media_type(content_type: str, headers: Mapping[str, str]) -> None:
    """415 unless the body is JSON (``application/json``, ``*/*+json``) or, with the binary tensor
    extension's ``Inference-Header-Content-Length``, ``application/octet-stream``. A request
    without ``Content-Type`` is read as JSON (``tritonclient`` sends none)."""
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return
    if media == "application/octet-stream" and "inference-header-content-length" in headers:
        return
    raise UnsupportedMediaTypeError(
        f"Content-Type {media!r} is not read here: send application/json (or application/octet-stream "
        "with Inference-Header-Content-Length for binary tensors)",
        content_type=media[:100],
    )


def _gone() -> RequestCancelledError:
    return RequestCancelledError("the client went away before sending the whole body")


class FastRoutes:
    """POST routes with optional ``{model}`` and ``{version}`` segments, each of one protocol."""

    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], Handler, str]] = []
        #: Matches by request path: a server sees few distinct paths, and a dict lookup is cheaper
        #: than the patterns (bounded, so made-up paths cannot grow it without limit).
        self._matched: dict[str, _Match | None] = {}
        #: The paths added, as given (``/v2/models/{model}/infer``).
        self.paths: list[str] = []

    def add(self, path: str, handler: Handler, protocol: str) -> None:
        self.paths.append(path)
        pattern = re.escape(path).replace(r"\{model\}", r"(?P<model>[^/]+)")
        pattern = pattern.replace(r"\{version\}", r"(?P<version>[^/]+)")
        self._routes.append((re.compile(pattern + "$"), handler, protocol))
        self._matched.clear()

    def match(self, path: str) -> _Match | None:
        """(handler, model, version, protocol) of the route ``path`` takes, or ``None``."""
        try:
            return self._matched[path]
        except KeyError:
            pass
        matched = None
        for pattern, handler, protocol in self._routes:
            found = pattern.match(path)
            if found is not None:
                groups = found.groupdict()
                matched = handler, groups.get("model"), groups.get("version"), protocol
                break
        if len(self._matched) < _CACHE_LIMIT:
            self._matched[path] = matched
        return matched


class FastPath:
    """ASGI middleware: serves the fast routes itself and hands everything else to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        routes: FastRoutes,
        max_body: int,
        refused: Callable[[str, str, LadleError], None] | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.max_body = max_body
        #: Counts a refusal the admission pipeline did not see: (model, protocol, error).
        self.refused = refused
        self.watch = DisconnectWatch()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        matched = self.routes.match(scope["path"])
        if matched is None:
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await _not_allowed(scope, send)
        handler, model, version, protocol = matched
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        cancel = CancelSignal()
        try:
            try:
                body = await self._body(headers, receive)
                # Watched only once the body is read (one receiver at a time), until answered.
                watched = self.watch.track(receive, cancel)
                try:
                    status, content, reply_headers = await handler(model, version, body, headers, cancel)
                finally:
                    del watched[cancel]
            except LadleError as exc:
                if not exc.counted and self.refused is not None:
                    self.refused(model or "", protocol, exc)  # refused before the admission pipeline
                log_server_error(exc, f"{scope['method']} {scope['path']}")
                status, content = exc.status, orjson.dumps(exc.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)
                reply_headers = {**JSON_HEADERS, **error_headers(exc)}
            except Exception as exc:  # a bug: answer 500 with JSON and log it, never drop the connection
                logger.exception("inference handler failed")
                error = RuntimeFailureError(f"internal error: {type(exc).__name__}")
                status, content, reply_headers = 500, orjson.dumps(error.to_dict()), JSON_HEADERS
            if isinstance(content, bytes):
                length = (b"content-length", str(len(content)).encode())
                raw = (
                    [*reply_headers, length]
                    if type(reply_headers) is list
                    else [*_encode(reply_headers), length]
                )
                await send({"type": "http.response.start", "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": content})
                return None
            watcher = watch_now(receive, cancel)
            try:
                await self._stream(status, content, reply_headers, cancel, send)
            finally:
                watcher.cancel()
        finally:
            cancel.finished = True  # the answer went out: a disconnect from now on changes nothing
        return None

    @staticmethod
    async def _stream(
        status: int,
        chunks: AsyncGenerator[bytes, None],
        headers: Mapping[str, str] | _RawHeaders,
        cancel: CancelSignal,
        send: Send,
    ) -> None:
        await send({"type": "http.response.start", "status": status, "headers": _encode(headers)})
        try:
            async for chunk in chunks:
                if cancel.abandoned:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await chunks.aclose()  # left early: run the generator's cleanup (it aborts the generation)
        if not cancel.abandoned:
            await send({"type": "http.response.body", "body": b""})

    async def _body(self, headers: Mapping[str, str], receive: Receive) -> bytes:
        content_type = headers.get("content-type")
        if content_type is not None and content_type != "application/json":
            check_media_type(content_type, headers)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise PayloadTooLargeError(
                f"request body of {length} bytes exceeds the limit of {self.max_body}", limit=self.max_body
            )
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: gone (or timed out) mid-body
            raise _gone()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":
                raise _gone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLargeError(f"request body exceeds the limit of {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
