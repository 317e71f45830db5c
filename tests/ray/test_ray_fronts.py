"""Two front processes (``ladle serve --workers 2``) share one Ray actor per instance.

No Ray address is configured: the first front that needs Ray starts a local one, the other joins
it, and the one that started it shuts it down once both let go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_workers import SERVE, Fronts, request  # the several-fronts harness of tests/test_workers.py

from ladle.testing import models

pytestmark = pytest.mark.slow


def test_two_fronts_batch_over_the_same_actor(tmp_path: Path, ray_session: Any) -> None:
    repository = tmp_path / "repo"
    models.build_xgboost(repository / "m" / "1", n_estimators=4)
    (repository / "m" / "model.toml").write_text('placement = { name = "ray", num_cpus = 0.5 }\n')
    (tmp_path / "ladle.toml").write_text(
        f'[server]\nrepository = "{repository}"\nkeep_alive_timeout = 120\n\n'
        "[plugins.options.ray]\nlocal_cpus = 2\n"
    )
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*SERVE, str(tmp_path / "ladle.toml"), "--workers", "2", "--port", "0", "--grpc-port", "0"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 30
        while "2 front processes on http://127.0.0.1:" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        port = int(log.read_text().split("2 front processes on http://127.0.0.1:")[1].split()[0])
        fronts = Fronts(process, port, log)
        pids = fronts.connect_all(2, timeout=240)
        actors = set()
        for pid in pids:
            status, body = request(fronts.connections[pid], "GET", "/api/v1/models")
            assert status == 200, body
            (instance,) = body["models"][0]["versions"][0]["instances"]
            assert instance["state"] == "ready"
            actors.add(instance["runtime"]["ray_pid"])
        (actor,) = actors  # one actor, though each front built its own instance and batcher
        assert actor not in pids and psutil.pid_exists(actor)
        features = models.breast_cancer()[0][:1].astype("float32").ravel().tolist()
        status, metadata = request(fronts.connections[pids[0]], "GET", "/v2/models/m")
        body = {
            "inputs": [
                {
                    "name": metadata["inputs"][0]["name"],
                    "shape": [1, 30],
                    "datatype": "FP32",
                    "data": features,
                }
            ]
        }
        for pid in pids:
            status, answer = request(fronts.connections[pid], "POST", "/v2/models/m/infer", body)
            assert status == 200, answer
        raylets = [p for p in psutil.Process(process.pid).children(recursive=True) if p.name() == "raylet"]
        assert len(raylets) == 1  # one local Ray for both fronts
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0, log.read_text()[-3000:]
        assert not psutil.pid_exists(actor) or psutil.Process(actor).status() == psutil.STATUS_ZOMBIE
        assert not raylets[0].is_running() or raylets[0].status() == psutil.STATUS_ZOMBIE
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
