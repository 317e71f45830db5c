"""Real ladle servers with the gRPC ingress on loopback ports, and the official ``tritonclient.grpc``.

The folder has no ``__init__.py`` on purpose: as a package it would be imported as ``grpc`` and
shadow the real grpc package for the whole suite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_support import GrpcServer, serving, write_repository


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("grpc"))


@pytest.fixture(scope="session")
def served(repository: Path) -> Iterator[GrpcServer]:
    with serving(repository) as server:
        yield server


@pytest.fixture(scope="session")
def client(served: GrpcServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = served.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def rows() -> np.ndarray:
    from ladle.testing.models import breast_cancer

    return breast_cancer()[0]
