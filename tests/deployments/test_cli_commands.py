"""``ladle deploy / traffic / rollback / status`` against a real control API on a loopback port."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from ladle.cli import main

from .harness import make_config, write_version
from .test_routes import TOKEN, control_app


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    import uvicorn

    repo = tmp_path / "models"
    write_version(repo, "fraud", "v1")
    app = control_app(make_config(repo, tmp_path / "d.db", api_token=TOKEN))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    userver = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(userver.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not userver.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    port = userver.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", repo
    finally:
        userver.should_exit = True
        thread.join(timeout=30)


def test_the_commands_drive_the_api(server: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    url, repo = server
    connection = ["--url", url, "--token", TOKEN]
    write_version(repo, "fraud", "v2")
    assert main(["deploy", "fraud", "v2", "--traffic", "30", *connection]) == 0
    assert "fraud: v1 70%, v2 30% (router canary, managed mode)" in capsys.readouterr().out

    assert main(["traffic", "fraud", "v1=50", "v2=50", *connection]) == 0
    assert "v1 50%, v2 50%" in capsys.readouterr().out

    assert main(["status", *connection]) == 0
    assert "fraud: v1 50%, v2 50%" in capsys.readouterr().out

    assert main(["status", "fraud", "--json", *connection]) == 0
    state = orjson.loads(capsys.readouterr().out)
    assert state["traffic"] == {"v1": 50.0, "v2": 50.0}
    assert state["history"]["events"][0]["kind"] == "traffic"

    assert main(["rollback", "fraud", *connection]) == 0
    assert "fraud: v1 100%" in capsys.readouterr().out

    write_version(repo, "fraud", "v3")
    deploy = ["deploy", "fraud", "v3", "--steps", "20,100", "--interval", "3600", "--max-wait", "7200"]
    assert main([*deploy, *connection]) == 0
    assert "rollout of v3 running at 20" in capsys.readouterr().out
    assert main(["status", "fraud", "--json", *connection]) == 0
    assert orjson.loads(capsys.readouterr().out)["rollout"]["max_wait"] == 7200

    assert main(["status", "fraud", *connection]) == 0
    shown = capsys.readouterr().out
    assert "rollout_step" not in shown and "deployed" in shown and "v3" in shown


def test_errors_are_reported_with_exit_status_1(
    server: tuple[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = server
    assert main(["traffic", "fraud", "v1=60", "--url", url, "--token", TOKEN]) == 1
    assert "error: 400: traffic weights must sum to 100" in capsys.readouterr().err
    monkeypatch.setenv("LADLE_URL", url)
    monkeypatch.setenv("LADLE_API_TOKEN", "wrong")
    assert main(["status"]) == 1  # URL and token from the environment
    assert "401: invalid bearer token" in capsys.readouterr().err
    assert main(["traffic", "fraud", "v1:100", "--url", url]) == 2
    assert "not VERSION=PERCENT" in capsys.readouterr().err
    assert main(["status", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach" in capsys.readouterr().err
