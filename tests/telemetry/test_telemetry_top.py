"""``ladle top`` against a live server on an ephemeral loopback port, in a pseudo-terminal."""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette

from ladle.commands import top
from ladle.telemetry import Telemetry, telemetry_routes

from .feed import requests, run_batch

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
RUN_TOP = (
    "import argparse, sys\nfrom ladle.commands import top\n"
    "p = argparse.ArgumentParser(); top.configure(p); sys.exit(top.run(p.parse_args(sys.argv[1:])))"
)


@pytest.fixture
def server_url() -> Iterator[str]:
    telemetry = Telemetry({"metrics": False})
    telemetry.stats.register_gauges(
        "iris", "3", queue_depth=lambda: 12, in_flight=lambda: 1, instances=lambda: 2
    )
    observer = telemetry.observer_for("iris", "3")
    for _ in range(4):
        run_batch(observer, requests(8), queued=0.05, runtime=0.2, errors=[None] * 7 + ["runtime_error"])
    config = uvicorn.Config(
        Starlette(routes=telemetry_routes(telemetry)),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        telemetry.close()


def read_until(fd: int, needles: list[str], timeout: float) -> str:
    """Terminal output (escape sequences removed) once every needle showed up, or at the timeout."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            text = ANSI.sub("", seen.decode(errors="replace"))
            if all(n in text for n in needles):
                return text
    return ANSI.sub("", seen.decode(errors="replace"))


def _as_in_a_terminal() -> None:
    """Ctrl-C's default disposition in the child, whatever the test runner ignores (an ignored
    SIGINT is inherited, and Python then installs no handler for it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ignored(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((line.split()[1] for line in status if line.startswith("SigIgn:")), "?")
    except OSError:
        return "?"


def exit_status(fd: int, process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The process's exit status once it ends, reading its terminal meanwhile: a terminal nobody
    reads fills up, and then the last frame and the terminal restore block the exit."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                os.read(fd, 65536)
            except OSError:
                break
    try:
        return process.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def test_top_renders_a_live_server_in_a_terminal(server_url: str) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "30"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_TOP, server_url, "--interval", "0.2", "--window", "60"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
        preexec_fn=_as_in_a_terminal,
    )
    os.close(slave)
    try:
        # p50 of requests that waited 50 ms and ran 200 ms; 4 errors of 32; queue depth 12
        text = read_until(master, ["iris", "250.0", "12.5", " 12 "], timeout=30)
        assert "iris" in text and "250.0" in text, text[-2000:]
        assert "12.5" in text  # error percentage
        assert "ladle top" in text
        process.send_signal(signal.SIGINT)
        status = exit_status(master, process, timeout=10)
        assert status == 0, f"exit status {status}; ignored signals {_ignored(process.pid)}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        os.close(master)


def test_top_once_reports_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    top.configure(parser)
    status = top.run(parser.parse_args(["http://127.0.0.1:9", "--once"]))
    assert status == 1
    assert "cannot reach" in capsys.readouterr().out
