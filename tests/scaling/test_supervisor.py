"""The supervisor in real servers: a worker killed with -9 under load is replaced and no request
hangs, a batch on a dead worker runs again on a healthy one, a stuck instance is replaced after
overrunning its deadlines, and a crash loop backs off until liveness reports the server lost."""

from __future__ import annotations

import io
import os
import signal
import time
from contextlib import redirect_stdout
from pathlib import Path

import httpx

from ladle.cli import main

from .harness import AUTH, HANG, TOKEN, Load, config, infer, serving, until, write_model


def _pid(client: httpx.Client, model: str) -> int:
    response = infer(client, model)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    return int(outputs["pid"][0])


def _events(client: httpx.Client, model: str) -> list[tuple[str, str]]:
    history = client.get(f"/api/v1/deployments/{model}").json()["history"]
    return [(event["kind"], event["message"]) for event in history["events"]]


def test_a_worker_killed_under_load_is_replaced_and_no_request_hangs(tmp_path: Path) -> None:
    repo = write_model(tmp_path / "models", "m", 'executor = "process"\noptions = { delay = 0.02 }\n')
    with (
        serving(config(repo)) as running,
        httpx.Client(base_url=running.url, timeout=10, headers=AUTH) as client,
    ):
        scaling = running.server.scaling
        first = _pid(client, "m")
        load = Load(running.url, "m", clients=4)
        until(lambda: len(load.statuses) > 20)
        os.kill(first, signal.SIGKILL)
        until(lambda: scaling.describe("m", "1")["restarts"] == 1, timeout=10)
        assert client.get("/v2/health/live").status_code == 200  # replacing is not a liveness failure
        until(lambda: scaling.describe("m", "1")["ready_replicas"] == 1, timeout=60)
        served = len(load.statuses)
        until(lambda: len(load.statuses) > served + 20)  # the replacement serves the load
        load.stop()  # raises if any request hung past the client's timeout

        assert set(load.statuses) <= {200, 503}, set(load.statuses)
        assert load.retry_after and all(value is not None for value in load.retry_after)
        assert load.pids - {first}, "nothing was served by the replacement"
        assert _pid(client, "m") != first
        assert client.get("/v2/health/ready").status_code == 200
        kinds = [kind for kind, _ in _events(client, "m")]
        assert kinds[:2] == ["instance_replaced", "instance_failed"]  # newest first
        assert any("exit code -9" in message for _, message in _events(client, "m"))
        metrics = client.get("/metrics").text
        assert (
            'ladle_instance_restarts_total{ladle_model_name="m",ladle_model_version="1",'
            'ladle_restart_reason="instance_failed"} 1.0' in metrics
        )
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["status", "m", "--url", running.url, "--token", TOKEN]) == 0
        assert "instance_failed" in out.getvalue() and "instance_replaced" in out.getvalue()


def test_with_a_second_instance_the_dead_workers_requests_run_again_and_all_succeed(tmp_path: Path) -> None:
    repo = write_model(
        tmp_path / "models",
        "m",
        'executor = "process"\ninstances = 2\noptions = { delay = 0.05 }\n'
        'batcher = { name = "dynamic", max_batch_size = 4 }\n',
    )
    with (
        serving(config(repo)) as running,
        httpx.Client(base_url=running.url, timeout=10, headers=AUTH) as client,
    ):
        load = Load(running.url, "m", clients=6)
        until(lambda: len(load.pids) == 2)
        victim = sorted(load.pids)[0]
        os.kill(victim, signal.SIGKILL)
        until(lambda: running.server.scaling.describe("m", "1")["restarts"] == 1, timeout=10)
        until(lambda: running.server.scaling.describe("m", "1")["ready_replicas"] == 2, timeout=60)
        load.stop()
        assert set(load.statuses) == {200}, {s: load.statuses.count(s) for s in set(load.statuses)}
        stats = client.get("/api/v1/stats").json()["versions"][0]
        assert stats["restarts"] == 1 and stats["restarts_total"] == 1


def test_an_instance_that_keeps_overrunning_its_deadlines_is_replaced(tmp_path: Path) -> None:
    repo = write_model(tmp_path / "models", "m", "timeout = 0.3\noptions = { hang = 6.0 }\n")
    with (
        serving(config(repo)) as running,
        httpx.Client(base_url=running.url, timeout=10, headers=AUTH) as client,
    ):
        stuck = infer(client, "m", HANG)
        assert stuck.status_code == 504  # at its deadline, although the instance is still stuck
        started = time.monotonic()
        until(lambda: running.server.scaling.describe("m", "1")["restarts"] == 1, timeout=10)
        assert time.monotonic() - started < 6.0, "replaced only once the stuck batch ended by itself"
        until(lambda: infer(client, "m").status_code == 200, timeout=10)
        failed = [message for kind, message in _events(client, "m") if kind == "instance_failed"]
        assert failed and "overran its deadlines in 3 batches in a row" in failed[0]


def test_a_crash_loop_backs_off_and_liveness_fails_once_the_restart_budget_is_spent(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    repo = write_model(
        tmp_path / "models",
        "m",
        f'timeout = 0.3\noptions = {{ hang = 4.0, fail_file = "{broken}" }}\n'
        "supervision = { backoff = 0.2, max_backoff = 0.4, max_restarts = 2, restart_window = 60 }\n",
    )
    with (
        serving(config(repo)) as running,
        httpx.Client(base_url=running.url, timeout=10, headers=AUTH) as client,
    ):
        broken.touch()  # from now on no instance of the version can load
        assert infer(client, "m", HANG).status_code == 504
        until(lambda: client.get("/v2/health/live").status_code == 503, timeout=20)
        lost = client.get("/v2/health/live")
        assert lost.json() == {"live": False, "unrecoverable": ["m"]}
        assert client.get("/v2/health/ready").status_code == 503
        refused = infer(client, "m")
        assert refused.status_code == 503 and refused.headers.get("retry-after")
        events = _events(client, "m")
        kinds = [kind for kind, _ in events]
        assert "restart_budget_exhausted" in kinds and kinds.count("start_failed") >= 2
        waits = [message for kind, message in events if kind == "start_failed"]
        assert any("next attempt in 0.4 s" in message for message in waits)  # capped at max_backoff

        broken.unlink()  # the cause goes away: the next attempt recovers the version
        until(lambda: client.get("/v2/health/live").status_code == 200, timeout=20)
        until(lambda: infer(client, "m").status_code == 200, timeout=20)
        assert "recovered" in [kind for kind, _ in _events(client, "m")]
