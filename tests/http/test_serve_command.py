"""``ladle serve`` as a user runs it: a subprocess, readiness after load, drain on SIGTERM."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from behaviour_runtime import SLOW

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_drains_in_flight_requests_and_exits_zero(tmp_path: Path, signum: int) -> None:
    (tmp_path / "models" / "echo" / "1").mkdir(parents=True)
    (tmp_path / "models" / "echo" / "model.toml").write_text(
        'runtime = "behaviour"\noptions = { slow_s = 1.0 }\n'
    )
    (tmp_path / "ladle.toml").write_text('[plugins]\nmodules = ["behaviour_runtime"]\n')
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "ladle.cli", "serve", str(tmp_path / "ladle.toml"), "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [SLOW, 5]}]}
        result: dict[str, httpx.Response] = {}
        thread = threading.Thread(
            target=lambda: result.setdefault(
                "r", httpx.post(f"{url}/v2/models/echo/infer", json=body, timeout=30)
            )
        )
        thread.start()
        time.sleep(0.3)  # the slow request is in the runtime now
        process.send_signal(signum)
        thread.join(30)
        assert result["r"].status_code == 200 and result["r"].json()["outputs"][0]["data"] == [SLOW * 2, 10]
        assert process.wait(30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/v2/health/live")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = process.stderr.read().decode() if process.stderr else ""
    assert "echo/1: ready" in log


def test_serve_reports_invalid_config_with_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "ladle.toml").write_text("[server]\nprot = 8000\n")
    result = subprocess.run(
        [sys.executable, "-m", "ladle.cli", "serve", str(tmp_path / "ladle.toml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "ladle.toml" in result.stderr and "server.prot" in result.stderr and "unknown key" in result.stderr


def test_the_readme_demo_serves_both_models_and_the_printed_curl_works(tmp_path: Path) -> None:
    """``ladle demo``, the README's first command, end to end: it builds, serves and answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ladle.cli", "demo", "--dir", str(tmp_path / "demo"), "--port", str(port)],
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout=120)
        from ladle.commands.demo import curl_example

        words = shlex.split(curl_example("127.0.0.1", port))  # sent as curl sends it
        header, body = words[words.index("-H") + 1], words[words.index("-d") + 1]
        name, value = header.split(": ", 1)
        answer = httpx.post(words[words.index("POST") + 1], content=body, headers={name: value}, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["shape"][0] == 1
        assert httpx.get(f"{url}/v2/models/breast_cancer_onnx", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
