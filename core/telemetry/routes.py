"""HTTP routes of the telemetry layer: ``GET /metrics`` and ``GET /api/v1/stats``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import InvalidRequestError, LadleError

if TYPE_CHECKING:
    from .telemetry import Telemetry

__all__ = ["telemetry_routes"]


def _json(body: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json"
    )


def _error(error: LadleError) -> Response:
    return _json(error.to_dict(), error.status)


def telemetry_routes(telemetry: Telemetry) -> list[Route]:
    """Routes to mount on the server's app.

    ``GET /metrics``: Prometheus text (OpenMetrics when the ``Accept`` header asks for it); left
    out when ``[telemetry] metrics = false``.
    ``GET /api/v1/stats?window=10``: JSON figures per model version over the last ``window``
    seconds (default 10, at most the configured horizon), plus resources and log counters.
    """

    async def metrics(request: Request) -> Response:
        try:
            body, content_type = await run_in_threadpool(
                telemetry.prometheus_text, request.headers.get("accept")
            )
        except LadleError as exc:
            return _error(exc)
        return Response(body, media_type=content_type)

    async def stats(request: Request) -> Response:
        raw = request.query_params.get("window", "10")
        horizon = telemetry.stats.horizon
        try:
            seconds = float(raw)
        except ValueError:
            seconds = float("nan")
        if not 0 < seconds <= horizon:  # also false for NaN
            return _error(
                InvalidRequestError(
                    f"window must be a number of seconds in (0, {horizon:g}]", parameter="window", got=raw
                )
            )
        return _json(await run_in_threadpool(telemetry.snapshot, seconds))

    routes = [Route("/api/v1/stats", stats, methods=["GET"], name="stats")]
    if telemetry.config.metrics:
        routes.append(Route("/metrics", metrics, methods=["GET"], name="metrics"))
    return routes
