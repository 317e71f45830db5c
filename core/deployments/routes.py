"""The control-plane HTTP API (starlette routes over a ``DeploymentController``).

=======  ==============================================  ============================================
method   path                                            does
=======  ==============================================  ============================================
GET      /api/v1/deployments                             every model: mode, router, traffic, versions
GET      /api/v1/deployments/{name}                      one model, with split and event history
POST     /api/v1/deployments                             deploy ``{"model", "version", "traffic",
                                                         "options": {"rollout", "router", "resilience"}}``
PUT      /api/v1/deployments/{name}/traffic              ``{"v1": 90, "v2": 10}`` (sums to 100)
POST     /api/v1/deployments/{name}/rollback             ``{}`` or ``{"version": "v1"}``
DELETE   /api/v1/deployments/{name}/versions/{version}   unload a version without traffic
POST     /api/v1/models/{name}/feedback                  ``{"request_id": ..., "label": ...}``
=======  ==============================================  ============================================

Every control route needs the bearer token when one is configured; without one, reads are open and
changes are refused (401). Feedback follows the data plane's rule (``[server] data_plane_token``).
In static mode every change answers 409. Errors are JSON bodies with the status of their class.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..config import ServerConfig, validation_error
from ..errors import InvalidRequestError, LadleError, PayloadTooLargeError
from .auth import BearerAuth, configured_tokens
from .controller import DeploymentController

__all__ = ["DeployBody", "control_routes"]

Handler = Callable[[Request], Awaitable[Response]]
_Body = TypeVar("_Body", bound=BaseModel)


class DeployBody(BaseModel):
    """The body of ``POST /api/v1/deployments``."""

    model_config = ConfigDict(extra="forbid")

    model: str
    version: str
    traffic: float | None = Field(default=None, ge=0, le=100)
    options: dict[str, Any] = Field(default_factory=dict)


class _RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = None


class _FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str
    label: Any


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, "application/json"
    )


def _error(error: LadleError) -> Response:
    headers: dict[str, str] = dict(error.headers)
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return _json(error.to_dict(), error.status, headers)


async def _body(request: Request, limit: int, *, optional: bool = False) -> Any:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"request body exceeds {limit} bytes", limit=limit)
    raw = await request.body()
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


def _parse(schema: type[_Body], body: Any, what: str) -> _Body:
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        error = validation_error(what, exc)
        raise InvalidRequestError(error.message, problems=error.details.get("problems", [])) from None


def control_routes(
    controller: DeploymentController,
    config: ServerConfig | None = None,
    *,
    auth: BearerAuth | None = None,
    rate: float = 10.0,
    burst: float = 20.0,
) -> list[Route]:
    """The control API routes. ``auth`` defaults to the configured tokens with ``rate``/``burst``."""
    config = config or controller.config
    auth = auth or BearerAuth(configured_tokens(config), rate=rate, burst=burst)
    limit = min(config.server.max_request_bytes, 1024 * 1024)  # control bodies are small

    def guarded(handler: Handler, *, write: bool = False, data_plane: bool = False) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                authorization = request.headers.get("authorization")
                if data_plane:
                    auth.check(authorization, required=config.server.data_plane_token)
                else:
                    auth.check(authorization, required=write or auth.enabled)
                return await handler(request)
            except LadleError as exc:
                return _error(exc)

        return endpoint

    async def list_deployments(request: Request) -> Response:
        return _json(await controller.describe_all())

    async def get_deployment(request: Request) -> Response:
        limit_text = request.query_params.get("limit", "50")
        if not limit_text.isdigit() or not 0 < int(limit_text) <= 1000:
            raise InvalidRequestError("limit must be an integer from 1 to 1000")
        return _json(await controller.describe(request.path_params["name"], limit=int(limit_text)))

    async def deploy(request: Request) -> Response:
        body = _parse(DeployBody, await _body(request, limit), "body")
        state = await controller.deploy(body.model, body.version, body.traffic, body.options)
        return _json(state, 201)

    async def traffic(request: Request) -> Response:
        weights = await _body(request, limit)
        return _json(await controller.set_traffic(request.path_params["name"], weights))

    async def rollback(request: Request) -> Response:
        body = _parse(_RollbackBody, await _body(request, limit, optional=True), "body")
        return _json(await controller.rollback(request.path_params["name"], body.version))

    async def retire(request: Request) -> Response:
        params = request.path_params
        return _json(await controller.retire(params["name"], params["version"]))

    async def feedback(request: Request) -> Response:
        body = _parse(_FeedbackBody, await _body(request, limit), "body")
        result = controller.feedback(request.path_params["name"], body.request_id, body.label)
        return _json(result, 202 if not result["recorded"] else 200)

    return [
        Route("/api/v1/deployments", guarded(list_deployments), methods=["GET"]),
        Route("/api/v1/deployments", guarded(deploy, write=True), methods=["POST"]),
        Route("/api/v1/deployments/{name}", guarded(get_deployment), methods=["GET"]),
        Route("/api/v1/deployments/{name}/traffic", guarded(traffic, write=True), methods=["PUT"]),
        Route("/api/v1/deployments/{name}/rollback", guarded(rollback, write=True), methods=["POST"]),
        Route(
            "/api/v1/deployments/{name}/versions/{version}",
            guarded(retire, write=True),
            methods=["DELETE"],
        ),
        Route("/api/v1/models/{name}/feedback", guarded(feedback, data_plane=True), methods=["POST"]),
    ]
