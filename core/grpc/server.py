"""The ``grpc.aio`` server of one ladle process: the inference service, gRPC health and reflection.

It runs in the event loop of the HTTP server (started from the server's lifespan) and binds
``[server] host`` at ``[server] grpc_port``, sharing the port only among the fronts of ``ladle serve
--workers N`` (through ``SO_REUSEPORT``, as HTTP does); otherwise a taken port fails the start.
Messages up to ``[server] grpc_max_message_bytes`` pass both ways (default ``INT32_MAX``, what
``tritonclient.grpc`` allows; gRPC refuses a larger one with RESOURCE_EXHAUSTED). Health
(``grpc.health.v1.Health``): the service ``""`` is SERVING while the server is live,
``inference.GRPCInferenceService`` SERVING while it is ready (every model loaded); both turn
NOT_SERVING when a stop begins. ``stop(grace)`` refuses new calls, lets the calls in flight finish
for up to ``grace`` seconds, then cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .stubs import SERVICE_NAME, load_stubs

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["GrpcIngress"]

#: How often the health service's readiness is brought up to date (seconds).
HEALTH_REFRESH = 0.25


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcIngress:
    """Serves ``inference.GRPCInferenceService`` for ``server`` (``start`` / ``stop``)."""

    def __init__(self, server: Server) -> None:
        section = server.config.server
        self.server = server
        self.host = section.host
        self.port = int(section.grpc_port or 0)
        self.max_message_bytes = int(section.grpc_max_message_bytes)
        self._grpc: Any = None
        self._health: Any = None
        self._refresh: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and start serving; ``ConfigError`` when the port cannot be bound,
        ``MissingDependencyError`` without the ``grpc`` extra."""
        stubs = load_stubs()
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        from ..fronts import current_front
        from .service import InferenceService

        service = InferenceService(self.server, stubs)
        limit = self.max_message_bytes
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # the fronts of `ladle serve --workers N` share the port, as they share HTTP's
            ("grpc.so_reuseport", 1 if current_front() is not None else 0),
        ]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((service.handler(),))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection((SERVICE_NAME, health_name, reflection.SERVICE_NAME), server)
        address = _address(self.host, self.port)
        try:
            server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot serve gRPC on {address}: {exc}".split(";")[0], key="server.grpc_port"
            ) from None
        await server.start()
        self._grpc = server
        self._serving = health_pb2.HealthCheckResponse.SERVING
        self._not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set(SERVICE_NAME, self._not_serving)
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_health())

    async def _refresh_health(self) -> None:
        manager = self.server.manager
        ready: bool | None = None
        while True:
            now = manager.ready
            if now != ready:
                ready = now
                await self._health.set(SERVICE_NAME, self._serving if now else self._not_serving)
            await asyncio.sleep(HEALTH_REFRESH)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, drain those in flight for up to ``grace`` seconds, cancel the rest."""
        if self._grpc is None:
            return
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        await self._health.enter_graceful_shutdown()
        server, self._grpc = self._grpc, None
        await server.stop(grace)
