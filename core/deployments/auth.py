"""Bearer tokens and per-token rate limits for the control API (and, optionally, the data plane).

Tokens come from ``[server] api_token`` and the ``LADLE_API_TOKEN`` environment variable; either is
accepted. A request without a valid ``Authorization: Bearer <token>`` gets 401; one beyond its
token's budget (a token bucket: ``rate`` per second, bursts of ``burst``) gets 429 with
``Retry-After``. With ``[server] data_plane_token = true`` the data plane requires the token too:
``protect_data_plane(app, config)`` wraps the whole ASGI app (outermost, so a fast path inside it is
covered) in ``TokenMiddleware``. Without it the data plane (inference and feedback) is open, in
managed mode too; ``ladle serve`` says so at start (``startup_warnings``).

Guessing is throttled per client address (``FailedTokenThrottle``, installed whenever a token is
configured): after a few wrong tokens in a window, every request from that address that presents a
token gets 429 with ``Retry-After`` until the window has passed, without the token being looked at.
Tokens are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from ..config import ServerConfig
from ..errors import ConfigError, LadleError, UnauthorizedError
from .errors import RateLimitedError

__all__ = [
    "BearerAuth",
    "FailedTokenThrottle",
    "RateLimiter",
    "ThrottleMiddleware",
    "TokenBucket",
    "TokenMiddleware",
    "configured_tokens",
    "protect_data_plane",
    "startup_warnings",
    "throttle_failed_tokens",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_VARIABLE = "LADLE_API_TOKEN"


def configured_tokens(config: ServerConfig) -> list[str]:
    """The accepted tokens: ``[server] api_token`` and ``$LADLE_API_TOKEN`` (empty: none configured)."""
    tokens = [config.server.api_token, os.environ.get(TOKEN_VARIABLE)]
    return [t for t in dict.fromkeys(tokens) if t]


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; each request takes one."""

    __slots__ = ("_level", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._level = burst
        self._updated = time.monotonic()

    def wait(self, now: float) -> float:
        """Seconds until a token is available (0: one is), without taking it."""
        level = min(self.burst, self._level + (now - self._updated) * self.rate)
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate

    def full(self, now: float) -> bool:
        return self._level + (now - self._updated) * self.rate >= self.burst

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        level = min(self.burst, self._level + (now - self._updated) * self.rate)
        self._updated = now
        if level >= 1.0:
            self._level = level - 1.0
            return 0.0
        self._level = level
        return (1.0 - level) / self.rate


class RateLimiter:
    """One token bucket per key (a token, or ``"anonymous"``)."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, key: str) -> None:
        """Raise ``RateLimitedError`` (429) when ``key`` is over its budget."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 10_000:  # only valid tokens get buckets, so this stays small
                self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        wait = bucket.take(time.monotonic())
        if wait:
            raise RateLimitedError(
                f"rate limit of {self.rate:g} requests/s (bursts of {self.burst:g}) exceeded",
                retry_after=wait,
            )


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` against the configured tokens, then rate-limits
    (``rate`` requests per second per token, bursts of ``burst``; ``rate=None``: no limit)."""

    def __init__(self, tokens: Iterable[str], *, rate: float | None = 10.0, burst: float = 20.0) -> None:
        self._tokens = [t.encode() for t in tokens if t]
        self.limiter = RateLimiter(rate, burst) if rate is not None else None

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def token(self, authorization: str | None) -> str:
        """The presented token if it is valid; ``UnauthorizedError`` otherwise."""
        if not self._tokens:
            raise UnauthorizedError(
                "no API token is configured; set [server] api_token or the LADLE_API_TOKEN "
                "environment variable"
            )
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise UnauthorizedError("missing bearer token: send 'Authorization: Bearer <token>'")
        candidate = presented.strip().encode()
        # Compare with every token so the time taken does not say which one nearly matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        if not matched:
            raise UnauthorizedError("invalid bearer token")
        return presented.strip()

    def check(self, authorization: str | None, *, required: bool = True) -> None:
        """Authenticate when ``required``, then count against the token's (or the anonymous) budget."""
        key = self.token(authorization) if required else "anonymous"
        if self.limiter is not None:
            self.limiter.check(key)


class TokenMiddleware:
    """ASGI middleware: every HTTP request outside ``exempt`` path prefixes needs the bearer token.

    Health probes and metrics are exempt by default so orchestrators can reach them.
    """

    def __init__(
        self,
        app: ASGIApp,
        auth: BearerAuth,
        exempt: tuple[str, ...] = ("/v2/health/", "/metrics"),
    ) -> None:
        self.app = app
        self.auth = auth
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            self.auth.check(authorization)
        except LadleError as exc:
            await _reject(send, exc)
            return
        await self.app(scope, receive, send)


async def _reject(send: Send, error: LadleError) -> None:
    body = orjson.dumps(error.to_dict())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FailedTokenThrottle:
    """Failed bearer tokens per client address: ``failures`` of them within ``window`` seconds
    (a token bucket refilling at ``failures / window`` per second), then 429 for that address."""

    def __init__(self, failures: int = 5, window: float = 60.0, max_addresses: int = 10_000) -> None:
        if failures < 1 or window <= 0:
            raise ValueError("failures must be at least 1 and window positive")
        self.failures = failures
        self.window = window
        self.max_addresses = max_addresses
        self._buckets: dict[str, TokenBucket] = {}

    def wait(self, address: str) -> float:
        """Seconds until ``address`` may present a token again (0: now)."""
        bucket = self._buckets.get(address)
        return 0.0 if bucket is None else bucket.wait(time.monotonic())

    def failed(self, address: str) -> None:
        """Count one failed token from ``address``."""
        now = time.monotonic()
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                self._forget(now)
            bucket = self._buckets[address] = TokenBucket(self.failures / self.window, self.failures)
        bucket.take(now)

    def _forget(self, now: float) -> None:
        """Drop addresses whose budget has refilled; if none has, the oldest half."""
        full = [address for address, bucket in self._buckets.items() if bucket.full(now)]
        for address in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[address]


class ThrottleMiddleware:
    """ASGI middleware: counts 401 answers to requests that present a token, per client address,
    and answers 429 to such requests from an address over ``FailedTokenThrottle``'s budget."""

    def __init__(self, app: ASGIApp, throttle: FailedTokenThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(name == b"authorization" for name, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else ""
        throttle = self.throttle
        wait = throttle.wait(address)
        if wait:
            error = RateLimitedError(
                f"too many wrong bearer tokens from this address ({throttle.failures} in "
                f"{throttle.window:g} s); try again later",
                retry_after=wait,
            )
            await _reject(send, error)
            return

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                throttle.failed(address)
            await send(message)

        await self.app(scope, receive, watched)


def protect_data_plane(
    app: ASGIApp, config: ServerConfig, *, rate: float | None = None, burst: float = 1000.0
) -> ASGIApp:
    """``app`` behind the bearer token when ``[server] data_plane_token`` is set (else ``app``).

    The data plane is not rate-limited unless ``rate`` is given. Raises ``ConfigError`` when the
    token is required but none is configured, so such a server never starts open.
    """
    if not config.server.data_plane_token:
        return app
    tokens = configured_tokens(config)
    if not tokens:
        raise ConfigError(
            "[server] data_plane_token = true needs a token: set [server] api_token or LADLE_API_TOKEN",
            key="server.data_plane_token",
        )
    return TokenMiddleware(app, BearerAuth(tokens, rate=rate, burst=burst))


def throttle_failed_tokens(
    app: ASGIApp, config: ServerConfig, throttle: FailedTokenThrottle | None = None
) -> ASGIApp:
    """``app`` behind the failed-token throttle (default: 5 failures a minute per address) when a
    token is configured (else ``app``: there is no token to guess). Wrap it outermost, around
    ``protect_data_plane``, so that it sees every 401."""
    if not configured_tokens(config):
        return app
    return ThrottleMiddleware(app, throttle or FailedTokenThrottle())


def startup_warnings(config: ServerConfig) -> list[str]:
    """What an operator should know about how this server is protected (printed at start)."""
    if config.server.state is None:
        return []
    warnings = []
    if not config.server.data_plane_token:
        warnings.append(
            "managed mode with an open data plane: inference and feedback need no token; set "
            "[server] data_plane_token = true to require the API token there too"
        )
    if not configured_tokens(config):
        warnings.append(
            "managed mode without an API token: the control API refuses every change (401); set "
            "[server] api_token or the LADLE_API_TOKEN environment variable"
        )
    return warnings
