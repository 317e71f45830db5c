"""The starlette application: KServe V2, the ladle API, health, and error mapping.

Status table (every error body is JSON: ``{"error": message, "code": ..., ...details}``):

=====  ==============================================================================
400    malformed body or parameter; a runtime's ``InvalidInputError``
401    missing or wrong bearer token (when tokens are configured)
404    unknown model, version or route
405    method not allowed on the route
408    headers or body not sent in time (``[server] header_timeout``, ``body_timeout``)
413    body larger than ``max_request_bytes``, JSON of more than ``max_json_elements`` values, or
       more rows than the batcher accepts
415    a body that is neither JSON nor (with the binary extension) application/octet-stream
422    input names, datatypes or shapes do not match the model's signature
429    too many failed bearer tokens from this address (``Retry-After`` says when to try again)
431    request headers larger than ``max_header_bytes`` or more than ``max_headers`` fields
500    any other runtime failure (a bug or a dead backend)
503    queue full (with ``Retry-After``), model not ready, server draining, or beyond
       ``max_connections`` (with ``Retry-After``)
504    the request's deadline passed (queued requests are dropped before they run)
=====  ==============================================================================
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from .. import __version__
from ..deployments.auth import protect_data_plane, throttle_failed_tokens
from ..errors import LadleError, RequestCancelledError, RuntimeFailureError, public_text
from ..server import Server
from . import generation_api, ladle_api, openapi, pages, triton_extensions, v2
from .fast_path import FastPath, FastRoutes
from .limits import Drain
from .responses import error_response, json_response

__all__ = ["create_app"]


async def _ladle_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LadleError)
    return error_response(exc, request=request)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client left (or was timed out by ladle.http.limits) mid-body: nobody reads this answer.
    return error_response(RequestCancelledError("the client went away before sending the whole body"))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return json_response(
        {"error": f"{exc.detail}: {request.method} {request.url.path}", "code": code},
        exc.status_code,
        dict(exc.headers) if exc.headers else None,
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    error = RuntimeFailureError(f"internal error: {type(exc).__name__}")
    return error_response(error)


def _server_routes(server: Server) -> list[BaseRoute]:
    async def models(request: Request) -> Response:
        failures = {name: public_text(message) for name, message in server.manager.failures.items()}
        return json_response({"models": server.manager.describe(), "failures": failures})

    async def server_metadata(request: Request) -> Response:
        return json_response(
            {
                "name": "ladle",
                "version": __version__,
                "extensions": ["binary_tensor_data", "model_repository", "statistics", "ladle_api"],
            }
        )

    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/api/v1/models", models, methods=["GET"]),
    ]


def create_app(server: Server, drain: Drain | None = None) -> ASGIApp:
    """Build the ASGI app for ``server``; its lifespan loads models in the background and drains on stop.

    ``drain`` is the server's drain state (``ladle.http.limits``): readiness is 503 while it is active.
    """
    fast_routes = FastRoutes()  # matched in the order added: the busiest routes first
    v2_routes = v2.routes(server, fast_routes, drain)
    ladle_api.routes(server, fast_routes)
    routes: list[BaseRoute] = [
        *_server_routes(server),
        *pages.routes(server),
        *triton_extensions.routes(server),  # before v2's /v2/models/{model}: /v2/models/stats is theirs
        *v2_routes,
        *generation_api.routes(server, fast_routes),
        *openapi.routes(),
        *server.extra_routes,
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            LadleError: _ladle_error,
            HTTPException: _http_error,
            ClientDisconnect: _client_gone,
            Exception: _unexpected,
        },
        lifespan=server.lifespan,
    )
    app.state.server = server
    fast = FastPath(
        app, fast_routes, server.config.server.max_request_bytes, refused=server.manager.admission.refused
    )
    return throttle_failed_tokens(protect_data_plane(fast, server.config), server.config)
