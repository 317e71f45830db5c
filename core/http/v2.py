"""KServe V2 / Open Inference Protocol REST endpoints (so ``tritonclient.http`` works unchanged)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..envelope import InferenceRequest
from ..errors import InvalidRequestError
from ..server import Server
from ..serving import ModelEndpoint, VersionEndpoint
from .fast_path import JSON_HEADERS, FastRoutes, Reply
from .request_context import RequestContext, answer
from .responses import JSON, json_response, read_body
from .v2_codec import HEADER_LENGTH, decode_request, encode_response

__all__ = ["routes"]

_READY = b'{"ready":true}'


def _metadata(endpoint: ModelEndpoint, version: VersionEndpoint | None) -> dict[str, Any]:
    chosen = version
    if chosen is None and endpoint.table.versions:
        chosen = endpoint.versions.get(endpoint.table.latest)
    signature = chosen.signature if chosen is not None else None
    return {
        "name": endpoint.name,
        "versions": [version.version] if version is not None else list(endpoint.versions),
        "platform": chosen.spec.plugin if chosen is not None else "",
        "inputs": [s.to_dict() for s in signature.inputs] if signature else [],
        "outputs": [s.to_dict() for s in signature.outputs] if signature else [],
    }


def routes(server: Server, fast_routes: FastRoutes) -> list[BaseRoute]:
    manager = server.manager
    limit = server.config.server.max_request_bytes
    trace_context = server.trace_context

    async def live(request: Request) -> Response:
        return Response(b'{"live":true}', 200, media_type=JSON)

    async def ready(request: Request) -> Response:
        if manager.ready:
            return Response(_READY, 200, media_type=JSON)
        return json_response({"ready": False, "loading": manager.loading, "failures": manager.failures}, 503)

    async def model_metadata(request: Request) -> Response:
        endpoint = manager.endpoint(request.path_params["model"])
        version = request.path_params.get("version")
        return json_response(_metadata(endpoint, endpoint.version(version) if version else None))

    async def model_ready(request: Request) -> Response:
        endpoint = manager.endpoint(request.path_params["model"])
        version = request.path_params.get("version")
        is_ready = endpoint.version(version).ready if version else endpoint.ready
        body = {"name": endpoint.name, "ready": is_ready}
        return json_response(body, 200 if is_ready else 503)

    async def model_config(request: Request) -> Response:
        endpoint = manager.endpoint(request.path_params["model"])
        config = endpoint.config
        return json_response(
            {
                "name": endpoint.name,
                "platform": config.runtime or "",
                "batcher": {"name": config.batcher.name, **config.batcher.options},
                "instances": config.instances,
                "executor": config.executor,
            }
        )

    async def infer(model: str, version: str | None, body: bytes, headers: Mapping[str, str]) -> Reply:
        """V2 inference on a raw body; raises ``LadleError`` for anything the client got wrong."""
        endpoint = manager.endpoint(model)
        length = headers.get(HEADER_LENGTH)
        header_length = None
        if length is not None:
            if not length.isdigit():
                raise InvalidRequestError(
                    f"Inference-Header-Content-Length must be an integer, got {length!r}"
                )
            header_length = int(length)
        decoded = decode_request(body, header_length)
        context = RequestContext.parse(headers, decoded.parameters, endpoint.timeout, trace_context)
        envelope = InferenceRequest(
            endpoint.name,
            decoded.inputs,
            version=version,
            id=decoded.id,
            parameters=decoded.parameters,
            deadline=context.deadline,
            priority=context.priority,
            routing_key=context.routing_key,
            trace=context.trace,
            outputs=decoded.outputs,
            rows=decoded.rows,
        )
        outputs, version_name, model_name, extra = await answer(endpoint, envelope)
        content, json_length = encode_response(
            model_name or endpoint.name,
            version_name,
            decoded.id,
            outputs,
            decoded.outputs,
            decoded.binary_outputs,
        )
        if json_length is None:
            return 200, content, JSON_HEADERS if model_name is None else {**JSON_HEADERS, **extra}
        binary = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(json_length),
        }
        return 200, content, {**binary, **extra}

    async def infer_route(request: Request) -> Response:
        body = await read_body(request, limit)
        params = request.path_params
        status, content, headers = await infer(params["model"], params.get("version"), body, request.headers)
        return Response(content, status, headers)

    fast_routes.add("/v2/models/{model}/infer", infer)
    fast_routes.add("/v2/models/{model}/versions/{version}/infer", infer)

    return [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{model}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/config", model_config, methods=["GET"]),
        Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/infer", infer_route, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer_route, methods=["POST"]),
    ]
