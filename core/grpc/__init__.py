"""KServe V2 gRPC ingress (``inference.GRPCInferenceService``), so ``tritonclient.grpc`` works unchanged.

It is a thin adapter onto the admission pipeline, served by ``grpc.aio`` in the HTTP server's own
process and event loop, started and stopped with the server's lifespan when ``[server] grpc_port``
is set (``ladle serve`` sets it to 8001 when the ``grpc`` extra is installed; ``0`` turns it off)::

    stubs       the generated ``inference.*`` modules (tritonclient's own; see ``stubs``)
    codec       tensors <-> numpy: raw and typed contents, every V2 datatype, parameters
    generation  ModelStreamInfer for generative models: ``text_input`` in, ``text_output`` chunks out
    status      ladle's error tree -> gRPC status codes (one table)
    service     the servicer: health, metadata, ModelInfer, ModelStreamInfer
    server      the ``grpc.aio`` server: message limits, health and reflection services, drain

Nothing here imports ``grpc`` at import time: ``ladle --help`` and a server without the extra never
load it.
"""

from __future__ import annotations

import importlib.util
import socket

__all__ = [
    "DEFAULT_GRPC_PORT",
    "EXTRA",
    "MAX_MESSAGE_BYTES",
    "default_grpc_port",
    "grpc_available",
    "port_is_free",
]

#: Triton's and KServe's gRPC port (HTTP is 8000).
DEFAULT_GRPC_PORT = 8001
#: The pyproject extra that brings the gRPC ingress.
EXTRA = "grpc"
#: What ``tritonclient.grpc`` sends and accepts at most (``INT32_MAX``), the default message limit.
MAX_MESSAGE_BYTES = 2**31 - 1
_MODULES = ("grpc", "grpc_health.v1", "grpc_reflection.v1alpha", "tritonclient.grpc")


def grpc_available() -> bool:
    """Whether the ``grpc`` extra is installed (found without importing grpc itself)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in _MODULES)
    except (ImportError, ValueError):
        return False


def default_grpc_port() -> int:
    """The port ``ladle serve`` binds when ``[server] grpc_port`` is unset: 8001 with the extra, else 0."""
    return DEFAULT_GRPC_PORT if grpc_available() else 0


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (as gRPC binds it: with ``SO_REUSEADDR``)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError:
        return False
    return True
