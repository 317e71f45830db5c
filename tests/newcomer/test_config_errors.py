"""Configuration errors behave one way: found before anything loads, naming the file, the key and
what was expected; ``keep_going`` serves what loaded; the command line is validated like the file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ladle.config import ServerConfig, load_server_config
from ladle.errors import ConfigError, LadleError
from ladle.server import Server
from ladle.testing.server import run_server


def server_config(tmp_path: Path, repository: Path, text: str) -> ServerConfig:
    path = tmp_path / "ladle.toml"
    path.write_text(f'[server]\nrepository = "{repository}"\n{text}')
    return load_server_config(path)


@pytest.mark.parametrize(
    ("table", "key", "expected"),
    [
        ('batcher = "dynamc"', "batcher", "no batcher named 'dynamc'; available: continuous, dynamic"),
        (
            'batcher = { name = "dynamic", max_batch_size = "8" }',
            "batcher",
            "max_batch_size: Input should be a valid integer (got '8')",
        ),
        ('batcher = { name = "dynamic", max_batch_sise = 8 }', "batcher", "max_batch_sise: unknown key"),
        ('router = "canry"', "router", "no router named 'canry'; available: ab, blue-green, canary"),
        ('split_router = "canry"', "split_router", "no router named 'canry'"),
        ('placement = "gpu"', "placement", "no placement named 'gpu'; available: fixed"),
        ('scaling = "autoscale"', "scaling", "no scaling_policy named 'autoscale'; available:"),
        (
            'scaling = { name = "fixed", instances = "2" }',
            "scaling",
            "instances: Input should be a valid integer",
        ),
        ('runtime = "sklarn"', "runtime", "no runtime named 'sklarn'; available:"),
    ],
)
def test_a_bad_plugin_choice_in_ladle_toml_stops_the_start_naming_file_and_key(
    tmp_path: Path, repository: Path, table: str, key: str, expected: str
) -> None:
    config = server_config(tmp_path, repository, f"[models.iris]\n{table}\n")
    with pytest.raises(LadleError) as caught:  # ConfigError, or the PluginError saying what is missing
        Server(config)
    error = caught.value
    source = f"{tmp_path / 'ladle.toml'} [models.iris]"
    assert error.message.startswith(f"{source}: {key}: "), error.message
    assert expected in error.message
    assert error.details["file"] == source and error.details["key"] == key


def test_a_bad_option_in_model_toml_names_model_toml(repository: Path) -> None:
    model_file = repository / "iris" / "model.toml"
    model_file.write_text('[batcher]\nname = "dynamic"\nmax_queue_delay = "soon"\n')
    with pytest.raises(ConfigError) as caught:
        Server(ServerConfig.model_validate({"server": {"repository": str(repository)}}))
    assert caught.value.message.startswith(f"{model_file}: batcher: batcher 'dynamic' options: ")
    assert "max_queue_delay" in caught.value.message


def test_a_section_for_a_model_not_in_the_repository_is_an_error(tmp_path: Path, repository: Path) -> None:
    config = server_config(tmp_path, repository, "[models.wiine]\ninstances = 2\n")
    with pytest.raises(ConfigError) as caught:
        Server(config)
    message = caught.value.message
    assert message.startswith(f"{tmp_path / 'ladle.toml'} [models.wiine]: no model 'wiine' in the repository")
    assert "its models: iris, slow" in message
    assert caught.value.details["key"] == "models.wiine"


def test_a_folder_whose_name_cannot_be_a_model_is_not_skipped_silently(repository: Path) -> None:
    (repository / "my model" / "1").mkdir(parents=True)
    (repository / ".cache").mkdir()  # hidden folders are nobody's model
    with pytest.raises(ConfigError) as caught:
        Server(ServerConfig.model_validate({"server": {"repository": str(repository)}}))
    folder = repository / "my model"
    assert caught.value.message == (
        f"{folder}: 'my model' is not a valid model name: use letters, digits, '.', '_' and '-'"
    )


def test_every_problem_is_listed_at_once(tmp_path: Path, repository: Path) -> None:
    config = server_config(
        tmp_path,
        repository,
        '[models.iris]\nbatcher = "dynamc"\n[models.slow]\nrouter = "canry"\n[models.x]\n',
    )
    with pytest.raises(ConfigError) as caught:
        Server(config)
    message = caught.value.message
    assert message.startswith("3 configuration problems:")
    assert "[models.x]: no model 'x'" in message and "'dynamc'" in message and "'canry'" in message
    assert {p["model"] for p in caught.value.details["problems"]} == {"iris", "slow", "x"}


def test_keep_going_serves_what_is_valid_and_readiness_follows_strict_readiness(
    tmp_path: Path, repository: Path
) -> None:
    text = '[models.slow]\nbatcher = "dynamc"\n'
    strict = server_config(tmp_path, repository, text.replace("[models", "keep_going = true\n[models", 1))
    server = Server(strict)
    assert set(server.manager.failures) == {"slow"} and "'dynamc'" in server.manager.failures["slow"]
    with run_server(server, wait_ready=False) as running, httpx.Client(base_url=running.url) as client:
        deadline = time.monotonic() + 60
        while server.manager.loading and time.monotonic() < deadline:
            time.sleep(0.05)
        body = {"inputs": [{"input": [5.1, 3.5, 1.4, 0.2]}]}
        assert client.post("/api/v1/models/iris/predict", json=body).status_code == 200
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and "slow" in ready.json()["failures"]  # strict by default
    lenient = server_config(tmp_path, repository, "keep_going = true\nstrict_readiness = false\n" + text)
    with (
        run_server(Server(lenient), wait_ready=False) as running,
        httpx.Client(base_url=running.url) as client,
    ):
        deadline = time.monotonic() + 60
        while client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "a lenient server never became ready"
            time.sleep(0.05)


def test_a_version_that_fails_to_load_names_its_config_files(tmp_path: Path, repository: Path) -> None:
    (repository / "iris" / "model.toml").write_text('options = { outptus = ["predict"] }\n')
    config = server_config(tmp_path, repository, "keep_going = true\n")
    server = Server(config)
    told: list[dict[str, str]] = []
    server.manager.start_failed.append(told.append)
    with run_server(server, wait_ready=False):
        deadline = time.monotonic() + 60
        while server.manager.loading and time.monotonic() < deadline:
            time.sleep(0.05)
    message = server.manager.failures["iris/2"]
    assert "outptus" in message and str(repository / "iris" / "model.toml") in message
    assert told == []  # keep_going: nobody is told the start failed


def ladle(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ladle.cli", *args, "--grpc-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kwargs,  # type: ignore[call-overload]
    )


def test_the_command_line_is_validated_like_the_file(repository: Path) -> None:
    process = ladle("serve", str(repository), "--port", "99999")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "--port: Input should be less than or equal to 65535 (got 99999)" in output
    assert "listening" not in output and "serving" not in output


def test_serve_stops_when_a_model_fails_to_load_unless_keep_going(repository: Path) -> None:
    (repository / "iris" / "model.toml").write_text('options = { outptus = ["predict"] }\n')
    process = ladle("serve", str(repository), "--port", str(free_port()))
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    assert "failed to load; the server stops" in output and "outptus" in output
    port = free_port()
    process = ladle("serve", str(repository), "--port", str(port), "--keep-going")
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready")
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if ready.json().get("loading") is False:
                break
            time.sleep(0.1)
        assert ready.status_code == 503 and set(ready.json()["failures"]) == {"iris/2"}
        assert httpx.get(f"http://127.0.0.1:{port}/v2/models/slow/ready").status_code == 200
    finally:
        process.terminate()
        process.communicate(timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
