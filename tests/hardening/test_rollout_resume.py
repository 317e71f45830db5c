"""A guarded rollout survives restarts: its step's start time and the guards' samples are in the
store, so a restarted server resumes the step where it was and judges with the evidence it had
(a server that keeps restarting still moves the canary forward), after a clean stop or kill -9."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from hardening_support import BODY, free_port, ladle_serve, plugin_host, stop, wait_ready, write_repository

from ladle import InferenceRequest
from ladle.config import ServerConfig
from ladle.deployments.controller import DeploymentController
from ladle.deployments.store import MIGRATIONS, SCHEMA_VERSION, DeploymentStore
from ladle.serving import ModelManager

TOKEN = "rollout-test-token"


def plan(interval: float) -> dict[str, Any]:
    return {
        "steps": [50, 100],
        "interval": interval,
        "check_every": 0.05,
        "guard": {"min_samples": 5, "window": 600},
    }


@asynccontextmanager
async def managed(repo: Path, store: Path) -> AsyncIterator[tuple[ModelManager, DeploymentController]]:
    config = ServerConfig.model_validate({"server": {"repository": str(repo), "state": str(store)}})
    manager = ModelManager(config, plugin_host())
    controller = DeploymentController(manager)
    await controller.start()
    try:
        yield manager, controller
    finally:
        await controller.close()
        await manager.close(5.0)


async def send(manager: ModelManager, count: int) -> None:
    x = np.asarray([[1.0, 2.0]], dtype=np.float32)
    for index in range(count):  # keyed: the canary router spreads them over both versions
        request = InferenceRequest("doubler", {"x": x}, routing_key=f"user-{index}")
        await manager.admission.infer(request)


def judged_requests(controller: DeploymentController) -> int:
    verdict = controller.rollouts["doubler"].describe()["verdict"]
    return 0 if verdict is None else int(verdict["canary"]["requests"] + verdict["stable"]["requests"])


async def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.02)


def test_a_restarted_rollout_resumes_its_step_with_its_samples(tmp_path: Path) -> None:
    async def scenario() -> None:
        repo = write_repository(tmp_path)
        store = tmp_path / "deployments.db"
        interval = 4.0
        async with managed(repo, store) as (manager, controller):
            (repo / "doubler" / "2").mkdir()
            await controller.deploy("doubler", "2", options={"rollout": plan(interval)})
            rollout = controller.rollouts["doubler"]
            step_started_at = rollout.step_started_at
            await send(manager, 40)
            await wait_until(lambda: judged_requests(controller) >= 40, 5)
        await asyncio.sleep(2.5)  # the server is down for a while
        restarted = time.time()
        async with managed(repo, store) as (manager, controller):
            rollout = controller.rollouts["doubler"]
            assert rollout.step == 0 and rollout.state == "running"
            # the evidence came back with it: no request was sent since the restart
            await wait_until(lambda: judged_requests(controller) >= 40, 5)
            assert abs(rollout.step_started_at - step_started_at) < 0.5
            # the step began before the restart: it ends `interval` after that start, not after the restart
            await wait_until(lambda: rollout.state == "promoted", 10)
            promoted = time.time()
            assert promoted - step_started_at < interval + 1.5 < promoted - step_started_at + 2.5
            assert promoted - restarted < interval

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_kill_9_keeps_the_step_start_and_the_samples(tmp_path: Path) -> None:
    write_repository(tmp_path)
    config = tmp_path / "ladle.toml"
    config.write_text(
        '[server]\nrepository = "models"\nstate = "deployments.db"\ndrain_grace = 0\n'
        '[plugins]\nmodules = ["hardening_runtime"]\n'
    )
    store_path = tmp_path / "deployments.db"
    auth = {"authorization": f"Bearer {TOKEN}"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ladle_serve(config, port, env={"LADLE_API_TOKEN": TOKEN})
    try:
        wait_ready(url, process)
        (tmp_path / "models" / "doubler" / "2").mkdir()
        deployed = httpx.post(
            f"{url}/api/v1/deployments",
            json={"model": "doubler", "version": "2", "options": {"rollout": plan(3600.0)}},
            headers=auth,
            timeout=60,
        )
        assert deployed.status_code == 201, deployed.text
        with httpx.Client(base_url=url, timeout=10) as client:
            for index in range(40):
                keyed = {"ladle-routing-key": f"user-{index}"}
                assert client.post("/v2/models/doubler/infer", json=BODY, headers=keyed).status_code == 200
        deadline = time.monotonic() + 20
        saved = None
        while time.monotonic() < deadline:  # a save every couple of seconds
            saved = progress(store_path)
            if saved is not None and sample_count(saved[1]) >= 40:
                break
            time.sleep(0.2)
        assert saved is not None and sample_count(saved[1]) >= 40
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        log = stop(process)
    assert "warning: managed mode with an open data plane" in log and TOKEN not in log
    process = ladle_serve(config, port, env={"LADLE_API_TOKEN": TOKEN})
    try:
        wait_ready(url, process)
        deadline = time.monotonic() + 20
        while True:
            state = httpx.get(f"{url}/api/v1/deployments/doubler", headers=auth).json()
            verdict = state["rollout"].get("verdict")
            if verdict and verdict["canary"]["requests"] + verdict["stable"]["requests"] >= 40:
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        assert state["rollout"]["state"] == "running" and state["rollout"]["step"] == 0
        assert state["traffic"] == {"1": 50.0, "2": 50.0}
        resumed = progress(store_path)
        assert resumed is not None and resumed[0] == saved[0]  # the step began where it had begun
    finally:
        stop(process)


def progress(path: Path) -> tuple[float, bytes] | None:
    """The store's ``(step_started_at, samples)`` of the doubler's rollout, read as another process."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        query = "SELECT step_started_at, samples FROM rollout_progress WHERE model = 'doubler'"
        row = db.execute(query).fetchone()
    finally:
        db.close()
    return None if row is None else (float(row[0]), bytes(row[1]))


def sample_count(blob: bytes) -> int:
    from ladle.deployments.guards import decode_samples

    return sum(len(outcomes) for outcomes, _ in decode_samples(blob).values())


def test_a_store_of_the_first_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO models (name, created_at, updated_at) VALUES ('m', 0, 0)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = DeploymentStore.open(path)
    try:
        assert [m.name for m in store.models()] == ["m"]
        assert store.rollout_progress("m") is None
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        store.close()
