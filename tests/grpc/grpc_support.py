"""Helpers of the gRPC tests: servers with the gRPC ingress on free loopback ports, and tensors."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from ladle.config import ServerConfig
from ladle.plugin_host import PluginHost
from ladle.server import Server
from ladle.testing.server import RunningServer, run_server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GrpcServer:
    """A running ladle server: its HTTP base URL and its gRPC address."""

    def __init__(self, running: RunningServer, grpc_port: int) -> None:
        self.running = running
        self.url = running.url
        self.grpc = f"127.0.0.1:{grpc_port}"

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.grpc)


def write_repository(root: Path) -> Path:
    from ladle.testing.models import build_onnx_mlp, build_xgboost

    repo = root / "models"
    build_xgboost(repo / "bc" / "1", n_estimators=20, max_depth=3, file_name="model.ubj")
    build_onnx_mlp(repo / "mlp" / "1")
    models = {
        "echo": ('runtime = "grpc_echo"\nversion_policy = "all"\n', ("1", "2")),
        # -3 holds its instance for 1.5 s: room for two calls to expire behind it on a busy machine
        "behaviour": ('runtime = "grpc_behaviour"\ntimeout = 5.0\noptions = { slow_s = 1.5 }\n', ("1",)),
        "tiny_queue": (
            'runtime = "grpc_behaviour"\n[batcher]\nmax_queue_size = 1\nmax_batch_size = 1\n',
            ("1",),
        ),
    }
    for name, (config, versions) in models.items():
        for version in versions:
            (repo / name / version).mkdir(parents=True)
        (repo / name / "model.toml").write_text(config)
    return repo


def plugin_host() -> PluginHost:
    host = PluginHost()
    host.add_module("grpc_runtimes")
    host.discover()
    return host


@contextlib.contextmanager
def serving(repository: Path, wait_ready: bool = True, **server: Any) -> Iterator[GrpcServer]:
    """A server over ``repository`` with gRPC on a free port (``server``: more ``[server]`` keys)."""
    port = free_port()
    config = ServerConfig.model_validate(
        {"server": {"repository": str(repository), "grpc_port": port, **server}}
    )
    with run_server(Server(config, plugin_host()), wait_ready=wait_ready) as running:
        yield GrpcServer(running, port)


def infer_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor
