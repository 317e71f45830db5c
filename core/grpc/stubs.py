"""The generated ``inference.*`` protobuf modules the ingress serves: tritonclient's own.

Why these stubs. ``tritonclient[grpc]`` ships ``service_pb2``, ``service_pb2_grpc`` and
``model_config_pb2``, generated from the KServe V2 / Triton ``grpc_service.proto``. Generating a
second copy (with ``grpcio-tools``) fails twice over: two copies of the ``inference.*`` descriptors
in one process are refused by protobuf's default pool (``duplicate symbol
'inference.ServerLiveRequest'``), so a server with its own copy could not share a process with
``tritonclient.grpc`` (tests, benchmarks, an application that embeds ladle and calls Triton); and
``grpcio-tools`` 1.85 needs ``protobuf>=7`` while ``tritonclient`` 2.73 needs ``protobuf<7``, so
the pair cannot even be installed together. Serving tritonclient's modules means one set of
descriptors, the exact wire format its client speaks, and nothing to regenerate. The ``grpc``
extra therefore pins ``protobuf<7`` (which ``opentelemetry-proto``, ``googleapis-common-protos``
and ``onnx`` accept); the services are registered from these modules' message classes, not from
the generated servicer base, so the ingress does not depend on its helper code.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..errors import MissingDependencyError
from . import EXTRA

__all__ = ["SERVICE_NAME", "Stubs", "load_stubs"]

SERVICE_NAME = "inference.GRPCInferenceService"


class Stubs:
    """The message modules (``service`` = ``service_pb2``, ``model_config`` = ``model_config_pb2``)."""

    __slots__ = ("model_config", "service")

    def __init__(self, service: ModuleType, model_config: ModuleType) -> None:
        self.service: Any = service
        self.model_config: Any = model_config


_loaded: Stubs | None = None


def load_stubs() -> Stubs:
    """Import the stubs once; ``MissingDependencyError`` naming the extra when they are absent."""
    global _loaded
    if _loaded is None:
        try:
            import grpc  # noqa: F401  (the runtime the stubs need)
            from tritonclient.grpc import model_config_pb2, service_pb2
        except ImportError as exc:
            raise MissingDependencyError(
                f"the gRPC ingress needs the {EXTRA!r} extra: pip install 'ladle[{EXTRA}]' ({exc})",
                extra=EXTRA,
            ) from None
        _loaded = Stubs(service_pb2, model_config_pb2)
    return _loaded
