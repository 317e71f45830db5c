"""KServe V2 / Open Inference Protocol REST endpoints (so ``tritonclient.http`` works unchanged)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..envelope import CancelSignal, InferenceRequest
from ..errors import InvalidRequestError, public_text
from ..request_context import RequestContext
from ..server import Server
from ..serving import ModelEndpoint, VersionEndpoint
from .fast_path import FastRoutes, Reply, json_answer_headers
from .limits import Drain
from .responses import JSON, json_response
from .v2_codec import HEADER_LENGTH, decode_request, encode_response

__all__ = ["routes"]

_READY = b'{"ready":true}'


def _metadata(endpoint: ModelEndpoint, version: VersionEndpoint | None) -> dict[str, Any]:
    chosen = version if version is not None else endpoint.latest()
    signature = chosen.signature if chosen is not None else None
    return {
        "name": endpoint.name,
        "versions": [version.version] if version is not None else list(endpoint.versions),
        "platform": chosen.spec.plugin if chosen is not None else "",
        "inputs": [s.to_dict() for s in signature.inputs] if signature else [],
        "outputs": [s.to_dict() for s in signature.outputs] if signature else [],
    }


def routes(server: Server, fast_routes: FastRoutes, drain: Drain | None = None) -> list[BaseRoute]:
    """The V2 routes; readiness answers 503 while ``drain`` is active (the server is stopping)."""
    manager = server.manager
    drain = drain if drain is not None else Drain()
    max_values = server.config.server.max_json_elements
    served = manager.models
    admission = manager.admission
    trace_context = server.trace_context

    async def live(request: Request) -> Response:
        # 503 only once the server cannot recover by itself: some model's versions have all spent
        # their restart budget with no ready instance (see ladle.supervisor); replacing is not that
        lost = server.scaling.unrecoverable()
        if lost:
            return json_response({"live": False, "unrecoverable": lost}, 503)
        return Response(b'{"live":true}', 200, media_type=JSON)

    async def ready(request: Request) -> Response:
        if drain.active:
            return json_response({"ready": False, "draining": True}, 503)
        if manager.ready:
            return Response(_READY, 200, media_type=JSON)
        failures = {name: public_text(message) for name, message in manager.failures.items()}
        return json_response({"ready": False, "loading": manager.loading, "failures": failures}, 503)

    async def model_metadata(request: Request) -> Response:
        endpoint = manager.endpoint(request.path_params["model"])
        version = request.path_params.get("version")
        return json_response(_metadata(endpoint, endpoint.loaded(version) if version else None))

    async def model_ready(request: Request) -> Response:
        endpoint = manager.endpoint(request.path_params["model"])
        version = request.path_params.get("version")
        is_ready = endpoint.loaded(version).ready if version else endpoint.ready
        body = {"name": endpoint.name, "ready": is_ready}
        return json_response(body, 200 if is_ready else 503)

    async def model_config(request: Request) -> Response:
        endpoint = manager.endpoint(request.path_params["model"])
        config = endpoint.config
        latest = endpoint.latest()
        return json_response(
            {
                "name": endpoint.name,
                "platform": latest.spec.plugin if latest is not None else config.runtime or "",
                "batcher": {"name": config.batcher.name, **config.batcher.options},
                "instances": config.instances,
                "executor": config.executor,
            }
        )

    async def infer(
        model: str | None, version: str | None, body: bytes, headers: Mapping[str, str], cancel: CancelSignal
    ) -> Reply:
        """V2 inference on a raw body; raises ``LadleError`` for anything the client got wrong."""
        assert model is not None
        if model not in served:
            manager.endpoint(model)  # 404 naming the served models, before the body is looked at
        length = headers.get(HEADER_LENGTH)
        header_length = None
        if length is not None:
            if not length.isdigit():
                raise InvalidRequestError(
                    f"Inference-Header-Content-Length must be an integer, got {length!r}"
                )
            header_length = int(length)
        decoded = decode_request(body, header_length, max_values)
        context = RequestContext.parse(headers, decoded.parameters, trace_context)
        request = InferenceRequest(
            model,
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
            protocol="v2",
            cancel=cancel,
        )
        answer = await admission.infer(request)
        content, json_length = encode_response(
            answer.model, answer.version, decoded.id, answer.outputs, decoded.outputs, decoded.binary_outputs
        )
        if json_length is None:
            return 200, content, json_answer_headers(answer)
        binary = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(json_length),
        }
        return 200, content, {**binary, **answer.headers()}

    fast_routes.add("/v2/models/{model}/infer", infer, "v2")
    fast_routes.add("/v2/models/{model}/versions/{version}/infer", infer, "v2")

    return [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{model}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/config", model_config, methods=["GET"]),
        Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
    ]
