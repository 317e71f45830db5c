"""The gRPC ingress in the server's life: started with it, drained with it, ``ladle serve
--grpc-port``, the default port, and a server without the extra never importing grpc."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc_runtimes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_support import free_port, infer_input, plugin_host, serving
from tritonclient.utils import InferenceServerException

import ladle.grpc
from ladle.config import ServerConfig
from ladle.errors import ConfigError
from ladle.server import Server

HERE = Path(__file__).parent


def slow_repository(root: Path, slow_s: float) -> Path:
    repo = root / "models"
    (repo / "slow" / "1").mkdir(parents=True)
    (repo / "slow" / "model.toml").write_text(
        f'runtime = "grpc_behaviour"\noptions = {{ slow_s = {slow_s} }}\n'
    )
    return repo


def send(client: grpcclient.InferenceServerClient, first: float, done: dict[str, Any]) -> None:
    x = np.array([[first, 0.0]], dtype=np.float32)
    client.async_infer(
        "slow", [infer_input("x", x, "FP32")], lambda result, error: done.update(answer=(result, error))
    )


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_stopping_drains_calls_in_flight_then_refuses_new_ones(tmp_path: Path) -> None:
    with serving(slow_repository(tmp_path, 0.6)) as server:
        client = server.client()
        done: dict[str, Any] = {}
        send(client, -3.0, done)
        wait_for(lambda: -3.0 in grpc_runtimes.SEEN)
        server.running.uvicorn.should_exit = True  # what the end of a drain does
        wait_for(lambda: "answer" in done)
        result, error = done["answer"]
        assert error is None
        np.testing.assert_array_equal(result.as_numpy("y"), [[-6.0, 0.0]])
        with pytest.raises(InferenceServerException) as caught:
            client.infer("slow", [infer_input("x", np.zeros((1, 2), np.float32), "FP32")], client_timeout=5)
        assert "UNAVAILABLE" in str(caught.value.status())
        client.close()


def test_calls_longer_than_the_drain_timeout_are_cancelled(tmp_path: Path) -> None:
    with serving(slow_repository(tmp_path, 3.0), drain_timeout=0.2) as server:
        client = server.client()
        done: dict[str, Any] = {}
        send(client, -3.0, done)
        wait_for(lambda: -3.0 in grpc_runtimes.SEEN)
        server.running.uvicorn.should_exit = True
        wait_for(lambda: "answer" in done)
        _, error = done["answer"]
        assert error is not None and str(error.status()) in ("StatusCode.CANCELLED", "StatusCode.UNAVAILABLE")
        client.close()


def test_a_grpc_port_that_is_taken_fails_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ServerConfig.model_validate(
            {"server": {"repository": str(slow_repository(tmp_path, 0.1)), "grpc_port": port}}
        )
        ingress = ladle.grpc.server.GrpcIngress(Server(config, plugin_host()))
        with pytest.raises(ConfigError) as caught:
            asyncio.run(ingress.start())
        assert f"cannot serve gRPC on 127.0.0.1:{port}" in caught.value.message


def serve_args(*argv: str) -> argparse.Namespace:
    from ladle.commands import serve

    parser = argparse.ArgumentParser()
    serve.configure(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def default_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    port = free_port()  # stands in for 8001, which another server on this host may hold
    monkeypatch.setattr(ladle.grpc, "DEFAULT_GRPC_PORT", port)
    yield port


def test_ladle_serve_resolves_the_grpc_port(
    tmp_path: Path, default_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from ladle.commands.serve import build

    assert ladle.grpc.DEFAULT_GRPC_PORT != 8001 and ladle.grpc.default_grpc_port() == default_port
    repo = slow_repository(tmp_path, 0.1)
    (tmp_path / "ladle.toml").write_text(
        '[server]\nrepository = "models"\n[plugins]\nmodules = ["grpc_runtimes"]\n'
    )
    server, _, _ = build(serve_args(str(tmp_path / "ladle.toml")))
    assert server.config.server.grpc_port == default_port  # unset: the default, with the extra
    server, _, _ = build(serve_args(str(tmp_path / "ladle.toml"), "--grpc-port", "0"))
    assert server.config.server.grpc_port == 0
    (tmp_path / "other.toml").write_text(
        '[server]\nrepository = "models"\ngrpc_port = 9123\n[plugins]\nmodules = ["grpc_runtimes"]\n'
    )
    server, _, _ = build(serve_args(str(tmp_path / "other.toml")))
    assert server.config.server.grpc_port == 9123
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", default_port))
        taken.listen()
        server, _, _ = build(serve_args(str(tmp_path / "ladle.toml")))
    assert server.config.server.grpc_port == 0  # the default is taken: HTTP only, with a warning
    assert f"default gRPC port {default_port} is taken" in capsys.readouterr().err
    assert repo.is_dir()


def test_the_default_port_is_tritons() -> None:
    from ladle.kubernetes.plan import DEFAULT_GRPC_PORT

    assert ladle.grpc.DEFAULT_GRPC_PORT == DEFAULT_GRPC_PORT == 8001
    assert ServerConfig().server.grpc_port is None
    assert ServerConfig().server.grpc_max_message_bytes == 2**31 - 1  # tritonclient's own limit


def test_ladle_serve_grpc_port_serves_and_drains_on_sigterm(tmp_path: Path) -> None:
    slow_repository(tmp_path, 0.8)
    (tmp_path / "ladle.toml").write_text('[plugins]\nmodules = ["grpc_runtimes"]\n')
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    argv = ["serve", str(tmp_path / "ladle.toml"), "--port", str(port), "--grpc-port", str(grpc_port)]
    process = subprocess.Popen([sys.executable, "-m", "ladle.cli", *argv], env=env, stderr=subprocess.PIPE)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "not ready"
            try:
                if client.is_server_ready():
                    break
            except InferenceServerException:
                pass
            time.sleep(0.1)
        done: dict[str, Any] = {}
        thread = threading.Thread(target=send, args=(client, -3.0, done))
        thread.start()
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: "answer" in done, timeout=30)
        _, error = done["answer"]
        assert error is None, error
        assert process.wait(timeout=60) == 0
        stderr = process.stderr.read().decode() if process.stderr else ""
        assert f"gRPC on 127.0.0.1:{grpc_port}" in stderr
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
            process.wait()


BLOCK_GRPC = textwrap.dedent(
    """
    import sys
    for name in ("grpc", "grpc_health", "grpc_reflection", "tritonclient", "tritonclient.grpc"):
        sys.modules[name] = None  # as if the grpc extra were not installed
    """
)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_without_the_extra_serve_is_http_only_and_an_asked_port_names_the_extra(tmp_path: Path) -> None:
    slow_repository(tmp_path, 0.1)
    (tmp_path / "ladle.toml").write_text('[plugins]\nmodules = ["grpc_runtimes"]\n')
    code = BLOCK_GRPC + textwrap.dedent(
        """
        import argparse
        from ladle.cli import main
        from ladle.commands import serve
        parser = argparse.ArgumentParser()
        serve.configure(parser)
        server, _, _ = serve.build(parser.parse_args(["ladle.toml"]))
        print("default", server.config.server.grpc_port)
        print("exit", main(["serve", "ladle.toml", "--grpc-port", "9123"]))
        """
    )
    completed = run_python(code, tmp_path)
    assert "default 0" in completed.stdout, completed.stderr
    assert "exit 2" in completed.stdout
    assert "pip install 'ladle[grpc]'" in completed.stderr


def test_help_and_a_server_without_grpc_never_import_grpc(tmp_path: Path) -> None:
    repo = slow_repository(tmp_path, 0.1)
    code = textwrap.dedent(
        f"""
        import contextlib, io, sys
        from ladle.cli import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main(["--help"])
        assert "grpc" not in sys.modules, "ladle --help imported grpc"
        from ladle.plugin_host import PluginHost
        from ladle.config import ServerConfig
        from ladle.server import Server
        from ladle.testing.server import run_server
        config = ServerConfig.model_validate({{"server": {{"repository": {str(repo)!r}, "grpc_port": 0}}}})
        host = PluginHost()
        host.add_module("grpc_runtimes")
        host.discover()
        with run_server(Server(config, host)):
            pass
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "tritonclient"))
        print("loaded", loaded)
        """
    )
    completed = run_python(code, tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "loaded []" in completed.stdout
