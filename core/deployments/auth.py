"""Bearer tokens and per-token rate limits for the control API (and, optionally, the data plane).

Tokens come from ``[server] api_token`` and the ``LADLE_API_TOKEN`` environment variable; either is
accepted. A request without a valid ``Authorization: Bearer <token>`` gets 401; one beyond its
token's budget (a token bucket: ``rate`` per second, bursts of ``burst``) gets 429 with
``Retry-After``. With ``[server] data_plane_token = true`` the data plane requires the token too:
``protect_data_plane(app, config)`` wraps the whole ASGI app (outermost, so a fast path inside it is
covered) in ``TokenMiddleware``.
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
    "RateLimiter",
    "TokenBucket",
    "TokenMiddleware",
    "configured_tokens",
    "protect_data_plane",
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
