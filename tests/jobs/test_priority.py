"""Jobs use only the capacity online traffic leaves: with a job keeping a slow model's only
instance busy and its queue full, an online request is dispatched at the next free instance, ahead
of every queued job request. Latencies are measured and printed, never asserted (speed claims live
in benchmarks/batch_scoring.py)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jobs_helpers import wait_for_job, write_repository

from ladle import PluginHost
from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.server import RunningServer, run_server

DELAY = 0.05  # seconds per batch
MARK = 10_000.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    batches = tmp_path / "batches.txt"
    repo = write_repository(
        tmp_path,
        {
            "slow": f'options = {{ delay = {DELAY}, batches = "{batches}" }}\n'
            "batcher = { max_batch_size = 4 }\n"
        },
    )
    config = ServerConfig.model_validate(
        {
            "server": {"repository": str(repo)},
            "jobs": {"store": str(tmp_path / "jobs.sqlite3"), "batch_rows": 4, "concurrency": 4},
        }
    )
    plugins = PluginHost()
    plugins.add_module("jobs_runtime")
    with run_server(Server(config, plugins.discover())) as running:
        yield running, batches


def batches_started(path: Path) -> list[tuple[float, list[float]]]:
    runs = []
    for line in path.read_text().splitlines():
        started, _, *firsts = line.split()
        runs.append((float(started), [float(v) for v in firsts]))
    return runs


def test_online_requests_overtake_every_queued_job_request(served: tuple[RunningServer, Path]) -> None:
    running, log = served
    with httpx.Client(base_url=running.url, timeout=30) as client:
        idle = []
        for k in range(5):
            began = time.perf_counter()
            assert (
                client.post("/api/v1/models/slow/predict", json={"inputs": [{"x": [1, k]}]}).status_code
                == 200
            )
            idle.append(time.perf_counter() - began)
        job = client.post(
            "/api/v1/models/slow/jobs", json={"inputs": [{"x": [i, 0]} for i in range(400)]}
        ).json()
        while client.get(f"/api/v1/jobs/{job['id']}").json()["progress"]["done"] < 8:
            time.sleep(0.01)
        sent, busy = [], []
        for k in range(8):
            time.sleep(DELAY * 0.7)  # land at varied points of a running job batch
            sent.append(time.monotonic())
            began = time.perf_counter()
            answer = client.post("/api/v1/models/slow/predict", json={"inputs": [{"x": [MARK + k, 0]}]})
            busy.append(time.perf_counter() - began)
            assert answer.status_code == 200 and answer.json()["outputs"][0]["y"][0] == 2 * (MARK + k)
        state = client.get(f"/api/v1/jobs/{job['id']}").json()
        assert state["status"] == "running"  # the job was still queueing work throughout
        client.delete(f"/api/v1/jobs/{job['id']}")
        wait_for_job(client, job["id"])
    runs = batches_started(log)
    for k, at in enumerate(sent):
        after = [firsts for started, firsts in runs if started >= at]
        online = next(i for i, firsts in enumerate(after) if MARK + k in firsts)
        # At most one job batch starts between sending and dispatch: the one that may begin in the
        # instant before the request reaches the batcher. Without priority it would queue behind
        # three job requests.
        assert online <= 1, (k, after[: online + 1])
    print(
        f"\nonline latency, idle: median {statistics.median(idle) * 1000:.0f} ms; "
        f"with a job running: median {statistics.median(busy) * 1000:.0f} ms, max {max(busy) * 1000:.0f} ms "
        f"(one batch takes {DELAY * 1000:.0f} ms)"
    )
