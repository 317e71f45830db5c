"""``ladle serve --workers N``: several front processes on one port sharing one deployment store.

Each test starts a real server in a subprocess. Which front answered a connection is read from the
kernel (the process that holds the server side of it), so a change can be sent through one front
and looked for in the other.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from ladle.testing import models

TOKEN = "front-secret"
SERVE = [sys.executable, "-m", "ladle.cli", "serve"]
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fronts")
    models.build_xgboost(root / "repo" / "m" / "1", n_estimators=4)
    models.build_xgboost(root / "repo" / "m" / "2", n_estimators=5, seed=1)
    (root / "repo" / "m" / "model.toml").write_text('version_policy = "all"\n')
    return root


@dataclass
class Fronts:
    """A running ``ladle serve --workers N`` and a connection to each of its fronts."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    connections: dict[int, http.client.HTTPConnection] = field(default_factory=dict)

    def pids(self) -> list[int]:
        """The fronts: children of the parent that listen on the port."""
        found = []
        for child in psutil.Process(self.process.pid).children():
            try:
                listening = child.net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.port for c in listening):
                found.append(child.pid)
        return sorted(found)

    def server_side(self, local_port: int) -> int | None:
        """The front process holding the server end of the connection from ``local_port``."""
        for pid in self.pids():
            for connection in psutil.Process(pid).net_connections(kind="tcp"):
                if connection.raddr and connection.raddr.port == local_port:
                    return pid
        return None

    def connect_all(self, count: int, timeout: float = 120) -> list[int]:
        """Open keep-alive connections until every front has one; returns the front pids."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.pids()
            self.connections = {p: c for p, c in self.connections.items() if p in pids}
            if len(pids) == count and all(p in self.connections for p in pids):
                return pids
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                status, _ = request(connection, "GET", "/v2/health/ready")
            except OSError:
                time.sleep(0.2)
                continue
            if connection.sock is None:  # the server closed it after answering (not ready yet)
                time.sleep(0.1)
                continue
            pid = self.server_side(connection.sock.getsockname()[1])
            if status == 200 and pid is not None and pid not in self.connections:
                self.connections[pid] = connection
            else:
                connection.close()
                time.sleep(0.05)
        raise AssertionError(f"not every front answered ready; log:\n{self.log.read_text()[-3000:]}")


def request(
    connection: http.client.HTTPConnection, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    payload = json.dumps(body).encode() if body is not None else None
    connection.request(method, path, body=payload, headers=AUTH)
    response = connection.getresponse()
    data = response.read()
    return response.status, json.loads(data) if data else None


def traffic(connection: http.client.HTTPConnection) -> dict[str, float]:
    status, body = request(connection, "GET", "/api/v1/deployments/m")
    assert status == 200, body
    return dict(body["traffic"])


def wait_for(connection: http.client.HTTPConnection, split: dict[str, float], timeout: float = 5.0) -> float:
    """Seconds until the front behind ``connection`` serves ``split``."""
    started = time.monotonic()
    while (seen := traffic(connection)) != split:
        assert time.monotonic() - started < timeout, f"still {seen}, not {split}"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def fronts(project: Path, tmp_path: Path) -> Iterator[Fronts]:
    state = tmp_path / "deployments.db"
    (tmp_path / "ladle.toml").write_text(
        f'[server]\nrepository = "{project / "repo"}"\nstate = "{state}"\napi_token = "{TOKEN}"\n'
        "keep_alive_timeout = 120\n"  # the connections to each front stay open through a test
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*SERVE, str(tmp_path / "ladle.toml"), "--workers", "2", "--port", "0", "--grpc-port", "0"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"2 front processes on http://127\.0\.0\.1:(\d+)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield Fronts(process, int(found.group(1)), log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_traffic_change_through_either_front_reaches_the_other(fronts: Fronts) -> None:
    # one of the two is the writer, the other relays its changes to it: each takes one change here
    one, other = fronts.connect_all(2)
    at_one, at_other = fronts.connections[one], fronts.connections[other]
    assert traffic(at_one) == traffic(at_other) == {"2": 100.0}

    status, body = request(at_one, "PUT", "/api/v1/deployments/m/traffic", {"1": 30, "2": 70})
    assert status == 200, body
    assert body["traffic"] == {"1": 30.0, "2": 70.0}
    assert traffic(at_one) == {"1": 30.0, "2": 70.0}  # the front that took the change serves it
    wait_for(at_other, {"1": 30.0, "2": 70.0})

    status, body = request(at_other, "PUT", "/api/v1/deployments/m/traffic", {"1": 100})
    assert status == 200, body
    assert traffic(at_other) == {"1": 100.0}
    seconds = wait_for(at_one, {"1": 100.0})
    print(f"the other front served the new split after {seconds * 1000:.0f} ms")

    # the data path of both fronts follows the table: every answer now comes from version 1
    features = models.breast_cancer()[0][:1].astype("float32")
    body = {
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": features.ravel().tolist()}]
    }
    status, metadata = request(at_one, "GET", "/v2/models/m")
    body["inputs"][0]["name"] = metadata["inputs"][0]["name"]
    for connection in (at_one, at_other):
        connection.request("POST", "/v2/models/m/infer", body=json.dumps(body).encode(), headers=AUTH)
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        assert response.getheader("Ladle-Model-Version") == "1"

    # a refused change is refused the same way through either (the writer's answer, relayed)
    for connection in (at_one, at_other):
        status, body = request(connection, "PUT", "/api/v1/deployments/m/traffic", {"1": 50})
        assert status == 400 and "100" in body["error"], body

    fronts.process.send_signal(signal.SIGTERM)
    assert fronts.process.wait(60) == 0
    assert not any(_running(pid) for pid in (one, other))


def test_a_front_that_dies_is_started_again_and_catches_up(fronts: Fronts) -> None:
    pids = fronts.connect_all(2)
    status, _ = request(fronts.connections[pids[0]], "PUT", "/api/v1/deployments/m/traffic", {"1": 100})
    assert status == 200
    victim = pids[1]
    os.kill(victim, signal.SIGKILL)
    fronts.connections.pop(victim).close()
    replaced = fronts.connect_all(2)
    assert victim not in replaced
    for pid in replaced:
        assert traffic(fronts.connections[pid]) == {"1": 100.0}  # restored from the store, not config
    assert "died" in fronts.log.read_text()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_workers_must_be_positive(project: Path) -> None:
    result = subprocess.run(
        [*SERVE, str(project / "repo"), "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--workers" in result.stderr
