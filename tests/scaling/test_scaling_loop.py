"""The scaling loop in real servers: a step load on a 20 ms model scales 1 -> 4 and back (threads and
worker processes), a version scales to zero and its first request waits for an instance, removing
instances under load loses no request, and manual changes go through the API and ``ladle scale``."""

from __future__ import annotations

import io
import re
import time
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import pytest

from ladle.cli import main
from ladle.testing.server import RunningServer

from .harness import AUTH, TOKEN, Load, config, infer, serving, until, write_model

QUEUE_DEPTH = (
    'scaling = { name = "queue-depth", min_instances = 1, max_instances = 4, '
    "target_ongoing_requests = 2, upscale_delay = 0, downscale_delay = 1 }\n"
)


def _replicas(client: httpx.Client, model: str, version: str = "1") -> tuple[int, int]:
    """(desired, ready) as ``GET /api/v1/deployments/{model}`` reports them (rate-limited: call it
    a few times only; poll ``_counts``)."""
    response = client.get(f"/api/v1/deployments/{model}")
    assert response.status_code == 200, response.text
    entry = next(v for v in response.json()["versions"] if v["version"] == version)
    return entry["replicas"], entry["ready_replicas"]


def _counts(running: RunningServer, model: str, version: str = "1") -> tuple[int, int]:
    figures = running.server.scaling.describe(model, version)
    return figures["replicas"], figures["ready_replicas"]


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_step_load_scales_one_to_four_and_back(tmp_path: Path, executor: str) -> None:
    repo = write_model(
        tmp_path / "models",
        "m",
        f'executor = "{executor}"\noptions = {{ delay = 0.02 }}\n'
        'batcher = { name = "dynamic", max_batch_size = 1 }\n' + QUEUE_DEPTH,
    )
    with (
        serving(config(repo)) as running,
        httpx.Client(base_url=running.url, timeout=10, headers=AUTH) as client,
    ):
        assert _replicas(client, "m") == (1, 1)
        load = Load(running.url, "m", clients=8)  # 8 ongoing / a target of 2 = 4 instances
        until(lambda: _counts(running, "m") == (4, 4), timeout=60)
        if executor == "process":
            until(lambda: len(load.pids) == 4, timeout=10)  # all four serve
        metrics = client.get("/metrics").text
        assert re.search(
            r'ladle_ongoing_requests\{ladle_model_name="m",ladle_model_version="1"\} [1-9]', metrics
        )
        assert 'ladle_instance_desired{ladle_model_name="m",ladle_model_version="1"} 4.0' in metrics
        load.stop()

        until(lambda: _counts(running, "m") == (1, 1), timeout=30)  # one step at a time, after 1 s
        assert _replicas(client, "m") == (1, 1)
        assert set(load.statuses) == {200}
        scaled = [
            e["details"]
            for e in client.get("/api/v1/deployments/m").json()["history"]["events"]
            if e["kind"] == "scaled"
        ]
        steps = [(d["from"], d["to"]) for d in reversed(scaled)]
        ups = [step for step in steps if step[1] > step[0]]
        downs = steps[len(ups) :]
        assert ups[0][0] == 1 and ups[-1][1] == 4, steps  # up at once (in steps as the clients start)
        assert downs == [(4, 3), (3, 2), (2, 1)], steps  # down one instance at a time
        assert {d["reason"] for d in scaled} == {"load"}
        metrics = client.get("/metrics").text
        assert f'ladle_scale_direction="up",ladle_scale_reason="load"}} {len(ups)}.0' in metrics
        assert 'ladle_scale_direction="down",ladle_scale_reason="load"} 3.0' in metrics


def test_scale_to_zero_and_the_first_request_waits_for_an_instance(tmp_path: Path) -> None:
    repo = write_model(
        tmp_path / "models",
        "m",
        "options = { load_delay = 0.6 }\n"
        'scaling = { name = "queue-depth", min_instances = 0, downscale_delay = 0.5 }\n',
    )
    with (
        serving(config(repo)) as running,
        httpx.Client(base_url=running.url, timeout=10, headers=AUTH) as client,
    ):
        until(lambda: _counts(running, "m") == (0, 0), timeout=20)
        assert _replicas(client, "m") == (0, 0)
        assert client.get("/v2/health/ready").status_code == 200  # scaled to zero on purpose
        assert client.get("/v2/models/m/ready").status_code == 200
        started = time.monotonic()
        first = infer(client, "m")
        waited = time.monotonic() - started
        assert first.status_code == 200, first.text
        assert waited >= 0.6, "the first request did not wait for the instance to load"
        assert _replicas(client, "m") == (1, 1)
        until(lambda: _counts(running, "m") == (0, 0), timeout=20)

        # a deadline shorter than the start is answered by that deadline, not left waiting
        short = infer(client, "m", headers={"Ladle-Timeout-Ms": "100"})
        assert short.status_code in (503, 504), short.text
        until(lambda: _counts(running, "m")[1] == 1, timeout=20)  # the instance still came up


def test_removing_instances_under_load_loses_no_request(tmp_path: Path) -> None:
    repo = write_model(
        tmp_path / "models",
        "m",
        'instances = 3\noptions = { delay = 0.05 }\nbatcher = { name = "dynamic", max_batch_size = 2 }\n',
    )
    with (
        serving(config(repo)) as running,
        httpx.Client(base_url=running.url, timeout=30, headers=AUTH) as client,
    ):
        load = Load(running.url, "m", clients=6)
        until(lambda: len(load.statuses) > 20)
        response = client.put("/api/v1/deployments/m/versions/1/replicas", json={"replicas": 1})
        assert response.status_code == 200, response.text
        assert _replicas(client, "m") == (1, 1)
        served = len(load.statuses)
        until(lambda: len(load.statuses) > served + 10)
        load.stop()
        assert set(load.statuses) == {200}, {s: load.statuses.count(s) for s in set(load.statuses)}

        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["scale", "m", "1", "2", "--url", running.url, "--token", TOKEN]) == 0
        assert "m 1: 2/2 instances ready (scaling policy fixed)" in out.getvalue()
        assert _replicas(client, "m") == (2, 2)
        kinds = [e["kind"] for e in client.get("/api/v1/deployments/m").json()["history"]["events"]]
        assert kinds.count("scaled") == 2


def test_bad_manual_changes_are_4xx_naming_what_is_wrong(tmp_path: Path) -> None:
    repo = write_model(tmp_path / "models", "m", "")
    with (
        serving(config(repo)) as running,
        httpx.Client(base_url=running.url, timeout=10, headers=AUTH) as client,
    ):
        too_many = client.put("/api/v1/deployments/m/versions/1/replicas", json={"replicas": 300})
        assert too_many.status_code == 400 and "replicas" in too_many.text
        not_int = client.put("/api/v1/deployments/m/versions/1/replicas", json={"replicas": "2"})
        assert not_int.status_code == 400
        unknown = client.put("/api/v1/deployments/m/versions/9/replicas", json={"replicas": 2})
        assert unknown.status_code == 404 and "loaded: 1" in unknown.json()["error"]
        assert main(["scale", "m", "9", "2", "--url", running.url, "--token", TOKEN]) == 1
        with pytest.raises(SystemExit):
            main(["scale", "m", "1", "many"])


def test_bad_scaling_options_stop_the_server_before_anything_loads(tmp_path: Path) -> None:
    from ladle import ConfigError
    from ladle.server import Server

    from .harness import make_host

    repo = write_model(tmp_path / "models", "m", 'scaling = { name = "queue-depth", max_replicas = 3 }\n')
    with pytest.raises(ConfigError, match="max_replicas"):
        Server(config(repo), make_host())


def test_a_missed_latency_objective_adds_an_instance(tmp_path: Path) -> None:
    repo = write_model(
        tmp_path / "models",
        "m",
        "options = { delay = 0.15 }\nlatency_slo = { p99 = 0.05 }\n"
        'batcher = { name = "dynamic", max_batch_size = 1 }\n'
        'scaling = { name = "queue-depth", max_instances = 3, target_ongoing_requests = 100 }\n',
    )
    with (
        serving(config(repo)) as running,
        httpx.Client(base_url=running.url, timeout=10, headers=AUTH) as client,
    ):
        load = Load(running.url, "m", clients=1)  # one at a time: load alone never asks for more
        until(lambda: _counts(running, "m") == (2, 2), timeout=30)
        load.stop()
        assert set(load.statuses) == {200}
        scaled = [e["details"] for e in client.get("/api/v1/deployments/m").json()["history"]["events"]]
        assert {"from": 1, "to": 2, "reason": "latency"}.items() <= next(
            d for d in scaled if d.get("to") == 2
        ).items()
        stats = client.get("/api/v1/stats", params={"window": 10}).json()
        entry = next(v for v in stats["versions"] if v["model"] == "m")
        assert entry["slo"]["p99"]["met"] is False and entry["slo"]["p99"]["target"] == 0.05
