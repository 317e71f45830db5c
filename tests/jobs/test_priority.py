"""Jobs use only the capacity online traffic leaves: with a job keeping a slow model's only
instance busy and its queue full, an online request is dispatched at the next free instance, ahead
of every queued job request. Latencies are measured and printed, never asserted (speed claims live
in benchmarks/batch_scoring.py)."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jobs_helpers import wait_for_job, write_repository

from ladle import PluginHost
from ladle.batching import Foreground
from ladle.config import ServerConfig
from ladle.jobs.runner import WorkPacer
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


def test_the_runner_s_own_work_keeps_to_its_share_while_online_requests_arrive(tmp_path: Path) -> None:
    # The batcher does not pace this model's job batches (background_share = 1), so only the
    # runner's pacer of its own work per chunk holds the job back.
    repo = write_repository(tmp_path, {"fast": "batcher = { max_batch_size = 4, background_share = 1.0 }\n"})
    config = ServerConfig.model_validate(
        {
            "server": {"repository": str(repo)},
            "jobs": {
                "store": str(tmp_path / "jobs.sqlite3"),
                "batch_rows": 4,
                "concurrency": 4,
                "work_share": 0.0001,
            },
        }
    )
    plugins = PluginHost()
    plugins.add_module("jobs_runtime")
    stop = threading.Event()

    def online(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                assert client.post("/api/v1/models/fast/predict", json={"inputs": [{"x": [1, 2]}]}).is_success

    with (
        run_server(Server(config, plugins.discover())) as running,
        httpx.Client(base_url=running.url, timeout=30) as client,
    ):
        traffic = threading.Thread(target=online, args=(running.url,))
        traffic.start()
        try:
            time.sleep(0.2)
            job = client.post(
                "/api/v1/models/fast/jobs", json={"inputs": [{"x": [i, 0]} for i in range(100)]}
            )
            time.sleep(2.0)
            during = client.get(f"/api/v1/jobs/{job.json()['id']}").json()["progress"]["done"]
        finally:
            stop.set()
            traffic.join()
        state = wait_for_job(client, job.json()["id"], timeout=10)
    # Unpaced, the 25 chunks take well under a second here; paced, a chunk's few milliseconds of
    # store and line work buy it tens of seconds of waiting, so only the first window of chunks
    # (started before any was measured) and perhaps one more run.
    assert during <= 24, during
    assert state["status"] == "succeeded" and state["progress"]["done"] == 100  # at full speed once it stops


def test_a_pacer_waits_its_share_only_while_online_work_is_recent() -> None:
    async def scenario() -> tuple[float, float, float]:
        foreground = Foreground()
        pacer = WorkPacer(foreground, share=0.25)
        pacer.spent(0.1)  # no online work: nothing to wait for
        began = time.monotonic()
        await pacer.wait()
        unpaced = time.monotonic() - began
        foreground.mark(time.monotonic())
        pacer.spent(0.05)  # 0.05 s at a quarter share: 0.15 s more
        began = time.monotonic()
        await pacer.wait()
        paced = time.monotonic() - began
        foreground.mark(time.monotonic())
        pacer.spent(10.0)  # a long pause, cut short when online work is no longer recent
        began = time.monotonic()
        await pacer.wait()
        return unpaced, paced, time.monotonic() - began

    unpaced, paced, cut = asyncio.run(scenario())
    assert unpaced < 0.05
    assert 0.13 <= paced < 0.25
    assert Foreground.window - 0.02 <= cut < 1.0
