"""Command-line habits: ``ladle top`` finds the server through ``$LADLE_URL``, shows the traffic split
and quits on ``q``; ``ladle traffic`` takes ``1=50 2=50`` or the API's JSON; ``ladle status`` shows
the split in the history."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ladle.cli import main
from ladle.commands.traffic import parse_split
from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.server import RunningServer, run_server

TOKEN = "cli-token"


@pytest.fixture
def managed(repository: Path, tmp_path: Path) -> Iterator[RunningServer]:
    (repository / "iris" / "model.toml").write_text('version_policy = "all"\n')
    config = ServerConfig.model_validate(
        {"server": {"repository": str(repository), "state": str(tmp_path / "d.db"), "api_token": TOKEN}}
    )
    with run_server(Server(config)) as running:
        yield running


def test_parse_split_takes_pairs_and_the_api_json() -> None:
    assert parse_split(["1=50", "2=50"]) == {"1": 50.0, "2": 50.0}
    assert parse_split(['{"1": 90, "2": 10}']) == {"1": 90.0, "2": 10.0}
    assert parse_split(["-"], stdin='{"v1": 100}') == {"v1": 100.0}
    for bad, message in (
        (["1:50"], "'1:50' is not VERSION=PERCENT"),
        (['{"1": "half"}'], "the percent of version '1' must be a number"),
        (["{nope"], "not valid JSON"),
        (['["1", 50]'], "must be an object of version -> percent"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_split(bad)


def test_traffic_and_status_through_the_api(
    managed: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LADLE_URL", managed.url)
    monkeypatch.setenv("LADLE_API_TOKEN", TOKEN)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["traffic", "iris", '{"1": 50, "2": 50}']) == 0
    assert "iris: 1 50%, 2 50%" in capsys.readouterr().out
    assert main(["traffic", "iris", "1=100"]) == 0
    capsys.readouterr()
    assert main(["status", "iris"]) == 0
    history = capsys.readouterr().out.split("history", 1)[1]
    assert "1 100%" in history and "1 50%, 2 50%" in history  # each change's split in its row
    assert main(["traffic", "iris", "1=50"]) == 1
    assert "traffic weights must sum to 100" in capsys.readouterr().err


def test_top_uses_ladle_url_and_shows_the_split(managed: RunningServer) -> None:
    env = {**os.environ, "LADLE_URL": managed.url, "COLUMNS": "200"}
    top = subprocess.run(
        [sys.executable, "-m", "ladle.cli", "top", "--once", "--window", "60"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert top.returncode == 0, top.stdout + top.stderr
    assert managed.url in top.stdout and "traffic" in top.stdout and "100%" in top.stdout


def test_top_quits_on_q(managed: RunningServer) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 160, 0, 0))
    env = {**os.environ, "LADLE_URL": managed.url, "TERM": "xterm-256color", "COLUMNS": "160"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ladle.cli", "top", "--interval", "0.2"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"ladle top" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 65536)
        assert b"ladle top" in seen, seen[-2000:]
        os.write(master, b"q")
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        os.close(master)
