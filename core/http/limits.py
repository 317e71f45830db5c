"""How the HTTP server holds connections: limits, timeouts and a drain a load balancer sees.

uvicorn's httptools protocol closes a keep-alive connection after ``timeout_keep_alive`` but has no
timeout for a client that never finishes its headers or its body, no limit on header size or count,
and closes every idle connection the moment it shuts down. ``LadleHttpProtocol`` adds, per
connection and at the cost of a few attribute writes per request:

- ``header_timeout``: a request's headers must arrive within this many seconds of its first byte
  (else 408, connection closed);
- ``body_timeout``: its body within this many seconds of the headers, plus one second for every
  ``min_body_rate`` bytes received (else 408), so a large upload on a slow link passes and a
  trickle does not hold a connection;
- ``keep_alive_timeout``: an idle connection, before its first request or between two, is closed;
- ``max_header_bytes`` and ``max_headers``: beyond either the request gets 431;
- ``max_connections``: a connection beyond it makes room by closing the longest-unused connection
  that carries no request (one that never sent any first); when every connection is busy, it gets
  503 with ``Retry-After`` on its first request and is closed.

The deadlines are checked by one timer per server (``Sweeper``, every fifth of the shortest timeout,
at most a second), never one per request; a client gets at least each timeout and at most two
checks more. A refusal is a JSON error body with ``Connection: close``; the server then reads and
discards what the client still sends for a moment (a lingering close) so that the client sees the
answer, not a reset.

Drain (``DrainingServer``): on SIGTERM readiness turns 503 at once (``Drain.active``), the server
keeps answering for ``drain_grace`` seconds, each answer from then on carries ``Connection:
close``, and only then does it stop accepting. At that point a connection that is mid-request is
answered; one that never sent a request is given a moment (its request may be on its way); idle
keep-alive connections are closed. A second signal, or SIGINT, skips the grace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import signal
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

import httptools
import orjson
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..config import ServerSection

__all__ = [
    "ConnectionLimits",
    "Drain",
    "DrainingServer",
    "LadleHttpProtocol",
    "Sweeper",
    "http_server",
    "raise_descriptor_limit",
]

logger = logging.getLogger("ladle.http")
server_log = logging.getLogger("uvicorn.error")  # what ``ladle serve --log-level`` shows

# parser phases of a connection
_IDLE, _HEADERS, _BODY, _LINGER = 0, 1, 2, 3
#: seconds a refused connection is read from (and its input discarded) before it is closed
LINGER_SECONDS = 2.0
#: seconds a connection that never sent a request is given once the server stops accepting
FRESH_CONNECTION_GRACE = 1.0
#: connections one check closes at most before it lets the event loop run (then goes on at once)
CLOSES_PER_SWEEP = 500
_RESERVED_DESCRIPTORS = 256  # files, pipes, sockets of the server itself beyond its connections


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-connection limits of one server (``[server]`` keys of the same names)."""

    header_timeout: float = 5.0
    body_timeout: float = 10.0
    min_body_rate: int = 64 * 1024
    keep_alive_timeout: float = 5.0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_connections: int = 16384

    @classmethod
    def of(cls, section: ServerSection) -> ConnectionLimits:
        return cls(
            header_timeout=section.header_timeout,
            body_timeout=section.body_timeout,
            min_body_rate=section.min_body_rate,
            keep_alive_timeout=section.keep_alive_timeout,
            max_header_bytes=section.max_header_bytes,
            max_headers=section.max_headers,
            max_connections=section.max_connections,
        )

    @property
    def sweep_interval(self) -> float:
        """Seconds between deadline checks: a fifth of the shortest timeout, within [0.05, 1]."""
        shortest = min(self.header_timeout, self.body_timeout, self.keep_alive_timeout)
        return min(1.0, max(0.05, shortest / 5))


class Drain:
    """Whether the server is draining; readiness reads ``active``, the drain ends at ``deadline``."""

    __slots__ = ("active", "deadline", "reason")

    def __init__(self) -> None:
        self.active = False
        self.deadline: float | None = None
        self.reason = ""

    def begin(self, grace: float, reason: str) -> None:
        """Turn readiness off now and let the server go on answering for ``grace`` seconds."""
        if not self.active:
            self.active = True
            self.reason = reason
            self.deadline = time.monotonic() + grace


class _Refusal(Exception):
    """Raised inside a parser callback to answer ``status`` and close (see ``data_received``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _error_bytes(status: int, code: str, message: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"error": message, "code": code})
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body),
            extra,
            b"\r\n",
            body,
        )
    )


_OVER_CAPACITY = orjson.dumps(
    {
        "error": "the server is at its connection limit ([server] max_connections); retry shortly",
        "code": "too_many_connections",
    }
)


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    """The app a connection beyond ``max_connections`` gets: 503, then the connection closes."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_OVER_CAPACITY)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _OVER_CAPACITY})


_on_message_begin = HttpToolsProtocol.on_message_begin
_on_headers_complete = HttpToolsProtocol.on_headers_complete
_on_body = HttpToolsProtocol.on_body
_on_message_complete = HttpToolsProtocol.on_message_complete


class Sweeper:
    """One timer per server that enforces every connection's deadlines, and the connections that
    hold nothing to answer, oldest first (those that never sent a request apart): what is closed to
    make room when ``max_connections`` is reached."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.connections: set[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: loop time at the last check (or connection): the clock of the per-request timestamps
        self.now = 0.0
        self.fresh: dict[LadleHttpProtocol, None] = {}  # connected, no request yet
        self.idle: dict[LadleHttpProtocol, None] = {}  # answered, waiting for the next request

    def evict(self) -> bool:
        """Close the longest-unused connection that carries no request; ``False`` if none does."""
        for pool in (self.fresh, self.idle):
            while pool:
                connection = next(iter(pool))
                connection.unlist()
                if not connection.transport.is_closing():
                    connection.transport.close()
                    return True
        return False

    def ensure(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        """Start sweeping ``connections`` (the server's set) if not already."""
        self.connections = connections
        self.now = loop.time()
        if self._timer is None:
            self._timer = loop.call_later(self.limits.sweep_interval, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        connections = self.connections
        if not connections:
            return  # the next connection starts the timer again
        now = self.now = loop.time()
        acted = 0
        for connection in list(connections):
            if isinstance(connection, LadleHttpProtocol) and connection.check_deadlines(now):
                acted += 1
                if acted == CLOSES_PER_SWEEP:  # thousands expiring at once: close them in slices
                    self._timer = loop.call_later(0.01, self._sweep, loop)
                    return
        self._timer = loop.call_later(self.limits.sweep_interval, self._sweep, loop)


class LadleHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ladle's connection limits and drain (module docstring).

    ``bind`` makes the subclass a server uses, with its limits, drain state and sweeper.
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    drain: ClassVar[Drain] = Drain()
    sweeper: ClassVar[Sweeper] = Sweeper(ConnectionLimits())

    @classmethod
    def bind(cls, limits: ConnectionLimits, drain: Drain) -> type[LadleHttpProtocol]:
        attributes = {"limits": limits, "drain": drain, "sweeper": Sweeper(limits)}
        return type("BoundLadleHttpProtocol", (cls,), attributes)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._since = 0.0  # when the current phase began (loop time)
        self._idle_since = 0.0  # when the connection last had nothing to answer
        self._header_bytes = 0  # bytes of the current request's headers read before this chunk
        self._chunk = 0  # bytes in the chunk being parsed
        self._body_bytes = 0
        self._served = 0
        self._closing = False
        self._listed: dict[LadleHttpProtocol, None] | None = None  # the sweeper's pool it is in

    # connection events ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sweeper = self.sweeper
        sweeper.ensure(self.loop, self.connections)
        self._idle_since = sweeper.now
        if len(self.connections) > self.limits.max_connections and not sweeper.evict():
            self.app = _over_capacity  # every connection is busy: refuse this one
        sweeper.fresh[self] = None
        self._listed = sweeper.fresh

    def connection_lost(self, exc: Exception | None) -> None:
        self.unlist()
        super().connection_lost(exc)

    def unlist(self) -> None:
        """Leave the sweeper's list of unused connections (a request began, or it closed)."""
        listed = self._listed
        if listed is not None:
            self._listed = None
            listed.pop(self, None)

    def data_received(self, data: bytes) -> None:
        if self._phase == _LINGER:
            return  # refused: what the client still sends is read and dropped
        self._chunk = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refusal):
                self.refuse(cause.status, cause.code, cause.message)
            else:
                self.refuse(400, "bad_request", "invalid HTTP request")
            return
        if self._phase == _HEADERS:
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self.refuse(431, "headers_too_large", self._header_message())

    # parser callbacks --------------------------------------------------------------------------

    # The parser callbacks run on every request: the parent's are called directly (no super()), and
    # times come from the sweeper's clock (``Sweeper.now``, as precise as its checks).

    def on_message_begin(self) -> None:
        if self._listed is not None:
            self.unlist()
        _on_message_begin(self)
        self._phase = _HEADERS
        self._since = self.sweeper.now
        self._header_bytes = 0

    def on_headers_complete(self) -> None:
        limits = self.limits
        if len(self.headers) > limits.max_headers or (
            self._header_bytes + self._chunk > limits.max_header_bytes  # this chunk may hold them all
            and len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > limits.max_header_bytes
        ):
            raise _Refusal(431, "headers_too_large", self._header_message())
        _on_headers_complete(self)
        self._phase = _BODY
        self._since = self.sweeper.now
        self._body_bytes = 0
        if self.drain.active and self.cycle is not None and self.cycle.scope is self.scope:
            self.cycle.keep_alive = False  # draining: this answer closes the connection

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        _on_body(self, body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        _on_message_complete(self)

    def on_response_complete(self) -> None:
        # uvicorn's, without its keep-alive timer per response: the sweeper closes idle connections.
        self.server_state.total_requests += 1
        self._served += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        self._idle_since = self.sweeper.now
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._phase == _IDLE:
            idle = self.sweeper.idle
            idle[self] = None
            self._listed = idle

    # limits -----------------------------------------------------------------------------------

    def _header_message(self) -> str:
        limits = self.limits
        return (
            f"request headers exceed the limit of {limits.max_header_bytes} bytes or "
            f"{limits.max_headers} fields"
        )

    def _answering(self) -> bool:
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete

    def check_deadlines(self, now: float) -> bool:
        """Refuse or close this connection if it has overrun a deadline (called by the sweeper);
        whether it did."""
        if self.transport is None or self.transport.is_closing():
            return False
        phase = self._phase
        limits = self.limits
        # timestamps come from the sweeper's clock, up to one interval early: never cut short
        now -= limits.sweep_interval
        if phase == _HEADERS:
            if now - self._since > limits.header_timeout:
                self.refuse(
                    408,
                    "request_timeout",
                    f"request headers did not arrive within {limits.header_timeout:g} s",
                )
                return True
        elif phase == _BODY:
            if self.flow.read_paused:
                return False  # the application is not reading yet; the client is not the one waiting
            allowed = limits.body_timeout + self._body_bytes / limits.min_body_rate
            if now - self._since > allowed:
                self.refuse(
                    408,
                    "request_timeout",
                    f"request body did not arrive within {limits.body_timeout:g} s "
                    f"(plus 1 s per {limits.min_body_rate} bytes received)",
                )
                return True
        elif phase == _LINGER:
            if now - self._since > LINGER_SECONDS - limits.sweep_interval:
                self.transport.abort()
                return True
        elif not self._answering() and not self.pipeline:
            allowed = limits.keep_alive_timeout
            if self._closing and not self._served:
                allowed = min(FRESH_CONNECTION_GRACE, allowed)  # counted from the shutdown
            if now - self._idle_since > allowed:
                self.transport.close()
                return True
        return False

    def refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with a JSON error body, then close after a lingering read."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answered_already = cycle is not None and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the application sees http.disconnect; its answer is dropped
            cycle.message_event.set()
        self.pipeline.clear()
        self._phase = _LINGER
        self._since = self.sweeper.now
        if answered_already:
            self.transport.close()  # a response is already (partly) out: nothing else can follow
            return
        self.transport.write(_error_bytes(status, code, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    # drain ------------------------------------------------------------------------------------

    def drain_notice(self) -> None:
        """The drain began: an answer not yet started closes its connection."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.keep_alive = False

    def shutdown(self) -> None:
        """The server stops accepting: close only what cannot be carrying a request."""
        self._closing = True
        if self._phase != _IDLE:
            return  # mid-request: it is answered (draining adds Connection: close), then closes
        if self._answering():
            if not self.pipeline:
                self.cycle.keep_alive = False
            return
        if self._served:
            self.transport.close()  # idle keep-alive connection
        else:  # never used: a request may be on its way; the sweeper gives it FRESH_CONNECTION_GRACE
            self._idle_since = self.loop.time()  # the real time: the grace is short


def raise_descriptor_limit(max_connections: int) -> int:
    """Raise the soft open-files limit so ``max_connections`` fit; the connections that fit."""
    wanted = max_connections + _RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return max_connections
    fitting = max(1, soft - _RESERVED_DESCRIPTORS)
    logger.warning(
        "the open-files limit (%d) leaves room for %d connections, fewer than [server] "
        "max_connections = %d; raise it with ulimit -n",
        soft,
        fitting,
        max_connections,
    )
    return fitting


class DrainingServer(uvicorn.Server):
    """uvicorn's server with ladle's drain: SIGTERM starts ``drain_grace`` seconds of answering
    with readiness off before the server stops accepting (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.grace = grace
        self._noticed = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self.drain.active and self.grace > 0:
            self.drain.begin(self.grace, "SIGTERM")
            self._notice()
            return
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        self.drain.begin(0.0, name)
        super().handle_exit(sig, frame)

    def begin_drain(self) -> None:
        """What SIGTERM does (callable from any thread)."""
        self.handle_exit(signal.SIGTERM, None)

    def _notice(self) -> None:
        """Every answer not yet started closes its connection (idempotent; safe in a signal handler,
        which runs on the loop's own thread between two bytecodes)."""
        for connection in list(self.server_state.connections):
            if isinstance(connection, LadleHttpProtocol):
                connection.drain_notice()

    async def on_tick(self, counter: int) -> bool:
        drain = self.drain
        if drain.active:
            if not self._noticed:  # begin_drain may have come from another thread
                self._noticed = True
                grace = max(0.0, (drain.deadline or 0.0) - time.monotonic())
                server_log.info("draining (%s): readiness is off; answering for %.3g s", drain.reason, grace)
                self._notice()
            if drain.deadline is not None and time.monotonic() >= drain.deadline:
                self.should_exit = True
        return await super().on_tick(counter)


def http_server(
    app: ASGIApp,
    section: ServerSection,
    drain: Drain,
    *,
    host: str,
    port: int,
    log_level: str = "warning",
    **options: Any,
) -> DrainingServer:
    """The uvicorn server ladle runs: its protocol with ``section``'s limits, and the drain."""
    limits = ConnectionLimits.of(section)
    fitting = raise_descriptor_limit(limits.max_connections)
    if fitting < limits.max_connections:
        limits = dataclasses.replace(limits, max_connections=fitting)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=LadleHttpProtocol.bind(limits, drain),
        log_level=log_level,
        access_log=False,
        proxy_headers=False,  # ladle reads no X-Forwarded-* header; skip the middleware on every request
        server_header=False,
        timeout_keep_alive=max(1, round(limits.keep_alive_timeout)),
        timeout_graceful_shutdown=int(section.drain_timeout) or None,
        **options,
    )
    return DrainingServer(config, drain, section.drain_grace)
