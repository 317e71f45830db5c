"""Helpers of the hardening tests: a repository served by the doubling runtime, real servers on
loopback (in this process or as ``ladle serve``), and a raw-socket HTTP client for what httpx will
not send (half a request, a body that never ends)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from ladle.config import ServerConfig
from ladle.plugin_host import PluginHost
from ladle.server import Server
from ladle.testing.server import RunningServer, run_server

HERE = Path(__file__).parent
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}


def write_repository(root: Path, model_toml: str = "") -> Path:
    repo = root / "models"
    (repo / "doubler" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "doubler" / "model.toml").write_text(f'runtime = "doubling"\n{model_toml}')
    return repo


def plugin_host() -> PluginHost:
    host = PluginHost()
    host.add_module("hardening_runtime")
    host.discover()
    return host


@contextlib.contextmanager
def serve(repository: Path, **server: Any) -> Iterator[RunningServer]:
    """A real server in this process, ``server`` as ``[server]`` keys."""
    config = ServerConfig.model_validate({"server": {"repository": str(repository), **server}})
    with run_server(Server(config, plugin_host())) as running:
        yield running


def port_of(running: RunningServer) -> int:
    return int(running.url.rsplit(":", 1)[1])


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def read_response(sock: socket.socket) -> RawResponse | None:
    """One response from ``sock`` (``None`` if the server closed without answering)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return RawResponse(status, headers, rest[:length])


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (reading and dropping data)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def infer_request(body: bytes, extra: str = "", path: str = "/v2/models/doubler/infer") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: ladle\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def ladle_serve(config: Path, port: int, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``ladle serve CONFIG --port PORT`` as a user runs it, with this folder importable."""
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "ladle.cli", "serve", str(config), "--port", str(port), "--log-level", "info"],
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        stderr=subprocess.PIPE,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise AssertionError(f"ladle serve exited with {process.returncode}: {stderr}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("ladle serve did not become ready")


def stop(process: subprocess.Popen[bytes]) -> str:
    """Kill ``process`` if it still runs; its stderr."""
    if process.poll() is None:
        process.kill()
        process.wait()
    return process.stderr.read().decode(errors="replace") if process.stderr else ""
