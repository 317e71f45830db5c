"""The control-plane HTTP API (starlette routes over a ``DeploymentController``).

=======  ==============================================  ============================================
method   path                                            does
=======  ==============================================  ============================================
GET      /api/v1/deployments                             every model: mode, router, traffic, versions
GET      /api/v1/deployments/{name}                      one model, with split and event history
POST     /api/v1/deployments                             deploy ``{"model_name", "version",
                                                         "traffic_percent", "resources": {"gpu",
                                                         "replicas"}, "options": {"rollout",
                                                         "router", "resilience"}}`` (``model`` and
                                                         ``traffic`` are accepted for the first two)
PUT      /api/v1/deployments/{name}/traffic              ``{"v1": 90, "v2": 10}`` (sums to 100)
PUT      /api/v1/deployments/{name}/versions/{version}/  ``{"replicas": 4}``: the version's instance
         replicas                                        count (its floor under an autoscaling
                                                         policy); static mode too
POST     /api/v1/deployments/{name}/rollback             ``{}`` or ``{"version": "v1"}``
DELETE   /api/v1/deployments/{name}/versions/{version}   unload a version without traffic
POST     /api/v1/models/{name}/feedback                  ``{"request_id": ..., "label": ...}``
=======  ==============================================  ============================================

Every control route needs the bearer token when one is configured; without one, reads are open and
changes are refused (401). Feedback follows the data plane's rule (``[server] data_plane_token``).
In static mode every change but replicas answers 409. Errors are JSON bodies with the status of their class.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..config import ServerConfig, validation_error
from ..errors import InvalidRequestError, LadleError
from ..http.responses import error_response, json_response, read_json_object
from .auth import BearerAuth, configured_tokens
from .controller import DeploymentController
from .resources import DeploymentResources

__all__ = ["DeployBody", "FeedbackBody", "RollbackBody", "ScaleBody", "control_routes"]

Handler = Callable[[Request], Awaitable[Response]]
_Body = TypeVar("_Body", bound=BaseModel)


class DeployBody(BaseModel):
    """The body of ``POST /api/v1/deployments``: the design brief's ``{"model_name", "version",
    "traffic_percent", "resources": {"gpu", "replicas"}}``, or ``model`` / ``traffic``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(validation_alias=AliasChoices("model_name", "model"))
    version: str
    traffic: float | None = Field(
        default=None, ge=0, le=100, validation_alias=AliasChoices("traffic_percent", "traffic")
    )
    resources: DeploymentResources | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class ScaleBody(BaseModel):
    """The body of ``PUT /api/v1/deployments/{name}/versions/{version}/replicas``."""

    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(ge=0, le=256, strict=True)


class RollbackBody(BaseModel):
    """The body of ``POST /api/v1/deployments/{name}/rollback``: the version to go back to, or none."""

    model_config = ConfigDict(extra="forbid")
    version: str | None = None


class FeedbackBody(BaseModel):
    """The body of ``POST /api/v1/models/{name}/feedback``: a served request's true label."""

    model_config = ConfigDict(extra="forbid")
    request_id: str
    label: Any


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
                return error_response(exc, request=request)

        return endpoint

    async def list_deployments(request: Request) -> Response:
        return json_response(await controller.describe_all())

    async def get_deployment(request: Request) -> Response:
        limit_text = request.query_params.get("limit", "50")
        if not limit_text.isdigit() or not 0 < int(limit_text) <= 1000:
            raise InvalidRequestError("limit must be an integer from 1 to 1000")
        return json_response(await controller.describe(request.path_params["name"], limit=int(limit_text)))

    async def deploy(request: Request) -> Response:
        raw = await read_json_object(request, limit)
        for name, alias in (("model_name", "model"), ("traffic_percent", "traffic")):
            if name in raw and alias in raw:
                raise InvalidRequestError(f"give {name!r} or {alias!r}, not both", field=name)
        body = _parse(DeployBody, raw, "body")
        state = await controller.deploy(body.model, body.version, body.traffic, body.options, body.resources)
        return json_response(state, 201)

    async def traffic(request: Request) -> Response:
        weights = await read_json_object(request, limit)
        return json_response(await controller.set_traffic(request.path_params["name"], weights))

    async def rollback(request: Request) -> Response:
        body = _parse(RollbackBody, await read_json_object(request, limit, optional=True), "body")
        return json_response(await controller.rollback(request.path_params["name"], body.version))

    async def replicas(request: Request) -> Response:
        body = _parse(ScaleBody, await read_json_object(request, limit), "body")
        params = request.path_params
        return json_response(await controller.scale(params["name"], params["version"], body.replicas))

    async def retire(request: Request) -> Response:
        params = request.path_params
        return json_response(await controller.retire(params["name"], params["version"]))

    async def placement(request: Request) -> Response:
        placements = controller.manager.placements
        return json_response({name: placements[name].describe() for name in sorted(placements)})

    async def feedback(request: Request) -> Response:
        body = _parse(FeedbackBody, await read_json_object(request, limit), "body")
        result = controller.feedback(request.path_params["name"], body.request_id, body.label)
        return json_response(result, 202 if not result["recorded"] else 200)

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
        Route(
            "/api/v1/deployments/{name}/versions/{version}/replicas",
            guarded(replicas, write=True),
            methods=["PUT"],
        ),
        Route("/api/v1/models/{name}/feedback", guarded(feedback, data_plane=True), methods=["POST"]),
        Route("/api/v1/placement", guarded(placement), methods=["GET"]),
    ]
