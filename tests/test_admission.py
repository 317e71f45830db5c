"""The one admission path, end to end through real servers: every answer names its version, checks
run before anything queues, clients that leave cancel their requests, experiment arms are reported."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ladle import Arrays, Batch, PluginHost, Runtime, Signature, TensorSpec, hookimpl
from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.server import RunningServer, run_server

#: (model, version) -> batches run
RUNS: Counter[tuple[str, str]] = Counter()


class CountingRuntime(Runtime):
    """Doubles ``x``; counts its batches and sleeps ``delay`` seconds in each."""

    name = "counting"

    def load(self) -> None:
        self.delay = float(self.spec.options.get("delay", 0.0))

    def signature(self) -> Signature:
        return Signature((TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 2)),))

    def predict(self, batch: Batch) -> Arrays:
        if batch.inputs["x"].any():  # warm-up's zeros are not counted
            RUNS[(self.spec.model, self.spec.version)] += 1
        time.sleep(self.delay)
        return {"y": batch.inputs["x"] * 2}


@hookimpl
def register_runtimes(register: Any) -> None:
    register("counting", CountingRuntime)


def v2(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
        **extra,
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("admission") / "models"
    models = {
        "fast": "options = { delay = 0.0 }\n",
        "slow": 'options = { delay = 0.2 }\nbatcher = { name = "dynamic", max_batch_size = 1 }\n',
        "experiment": 'version_policy = "all"\nrouter = { name = "ab", arms = { control = "1", '
        'treatment = "2" } }\ntraffic = { "1" = 50, "2" = 50 }\n',
    }
    for name, toml in models.items():
        for version in ("1", "2") if name == "experiment" else ("1",):
            (repo / name / version).mkdir(parents=True)
        (repo / name / "model.toml").write_text(f'runtime = "counting"\n{toml}')
    host = PluginHost()
    host.add_module(__name__)
    host.discover()
    logs = {"enabled": True, "path": str(repo.parent / "logs.sqlite3"), "flush_interval": 0.05}
    config = ServerConfig.model_validate({"server": {"repository": str(repo)}, "telemetry": {"logs": logs}})
    with run_server(Server(config, host)) as running:
        yield running


@pytest.fixture(scope="module")
def client(served: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        yield client


def test_every_answer_names_its_version_on_every_protocol(client: httpx.Client) -> None:
    x = np.ones((1, 2), np.float32)
    json_answer = client.post("/v2/models/fast/infer", json=v2(x))
    assert json_answer.status_code == 200 and json_answer.headers["Ladle-Model-Version"] == "1"
    ladle_answer = client.post("/api/v1/models/fast/predict", json={"inputs": [{"x": [1.0, 2.0]}]})
    assert ladle_answer.headers["Ladle-Model-Version"] == "1" and ladle_answer.json()["version"] == "1"
    refused = client.post("/v2/models/fast/infer", json=v2(np.ones((1, 3), np.float32)))
    assert refused.status_code == 422 and refused.headers["Ladle-Model-Version"] == "1"


def test_an_unknown_requested_output_is_refused_before_the_model_runs(client: httpx.Client) -> None:
    before = RUNS[("fast", "1")]
    x = np.ones((1, 2), np.float32)
    response = client.post("/v2/models/fast/infer", json=v2(x, outputs=[{"name": "nope"}]))
    assert response.status_code == 400, response.text
    assert response.json()["available"] == ["y"] and "'nope'" in response.json()["error"]
    assert RUNS[("fast", "1")] == before  # refused before queueing: the model never ran
    ok = client.post("/v2/models/fast/infer", json=v2(x, outputs=[{"name": "y"}]))
    assert ok.status_code == 200 and RUNS[("fast", "1")] == before + 1


def test_clients_that_go_away_cancel_their_queued_requests(
    served: RunningServer, client: httpx.Client
) -> None:
    before = RUNS[("slow", "1")]
    x = np.ones((1, 2), np.float32)

    def leave_early(_: int) -> str:
        try:
            with httpx.Client(base_url=served.url, timeout=0.1) as impatient:
                impatient.post("/v2/models/slow/infer", json=v2(x))
        except httpx.TimeoutException:
            return "left"
        return "answered"

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(leave_early, range(10)))
    assert outcomes == ["left"] * 10
    time.sleep(0.6)  # the batch that was running when they left, and anything wrongly left in the queue
    ran = RUNS[("slow", "1")] - before
    assert ran <= 2, f"{ran} of 10 abandoned requests still ran"  # at most the one(s) already running
    stats = client.get("/api/v1/stats").json()
    (slow,) = [v for v in stats["versions"] if v["model"] == "slow"]
    assert slow["responses_by_status"].get("499", 0) >= 8, slow["responses_by_status"]
    metrics = client.get("/metrics").text
    assert 'http_response_status_code="499"' in metrics and "ladle_responses_total" in metrics


def test_an_experiment_reports_each_answers_arm(served: RunningServer, client: httpx.Client) -> None:
    x = np.ones((1, 2), np.float32)
    seen = Counter()
    for i in range(40):
        response = client.post(
            "/v2/models/experiment/infer", json=v2(x), headers={"Ladle-Routing-Key": f"u{i}"}
        )
        arm = response.headers["Ladle-Experiment-Arm"]
        assert arm == {"1": "control", "2": "treatment"}[response.headers["Ladle-Model-Version"]]
        seen[arm] += 1
    assert seen["control"] > 5 and seen["treatment"] > 5
    sticky = {
        client.post("/v2/models/experiment/infer", json=v2(x), headers={"Ladle-Routing-Key": "u7"}).headers[
            "Ladle-Experiment-Arm"
        ]
        for _ in range(5)
    }
    assert len(sticky) == 1
    model = client.get("/api/v1/deployments/experiment").json()
    assert model["delivery"]["router"]["arms"]["control"] >= seen["control"]
    log = served.server.telemetry.logs
    assert log is not None
    deadline = time.monotonic() + 5
    while len(records := log.query("experiment", limit=100)) < 45 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {(r["version"], r["arm"]) for r in records} == {("1", "control"), ("2", "treatment")}


def test_a_torch_model_in_a_worker_process_keeps_torch_out_of_the_front(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    version = tmp_path / "models" / "net" / "1"
    version.mkdir(parents=True)
    module = torch.nn.Sequential(torch.nn.Linear(4, 2))
    program = torch.export.export(module, (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(program, str(version / "model.pt2"))
    (tmp_path / "models" / "net" / "model.toml").write_text('executor = "process"\n')
    script = textwrap.dedent(
        f"""
        import asyncio, json, sys
        import numpy as np
        from ladle import InferenceRequest
        from ladle.server import Server, load_config
        from pathlib import Path

        async def main():
            server = Server(load_config(Path({str(tmp_path / "models")!r})))
            await server.start()
            answer = await server.manager.admission.infer(
                InferenceRequest("net", {{"input": np.ones((3, 4), np.float32)}})
            )
            await server.stop()
            print(json.dumps({{"rows": int(next(iter(answer.outputs.values())).shape[0]),
                              "torch": "torch" in sys.modules}}))

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"rows": 3, "torch": False}


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    from ladle import ModelNotFoundError, ServerBusyError
    from ladle.http.responses import error_headers

    assert error_headers(ServerBusyError("full", retry_after=2.5))["Retry-After"] == "3"
    assert error_headers(ServerBusyError("full", retry_after=0.2))["Retry-After"] == "1"
    assert error_headers(ServerBusyError("full", retry_after=2.0))["Retry-After"] == "2"
    assert "Retry-After" not in error_headers(ModelNotFoundError("no such model"))


def test_refusals_for_made_up_models_share_one_series(client: httpx.Client) -> None:
    x = np.ones((1, 2), np.float32)
    for name in ("nope-a", "nope-b", "nope-c"):
        assert client.post(f"/v2/models/{name}/infer", json=v2(x)).status_code == 404
    assert client.post("/v2/models/fast/infer", content=b"{not json").status_code == 400
    assert client.post("/v1/completions", json={"model": "nope-d", "prompt": "x"}).status_code == 404
    metrics = client.get("/metrics").text
    assert "nope-" not in metrics  # a client cannot create a series per invented name
    unrouted = client.get("/api/v1/stats").json()["unrouted"]
    assert unrouted[""]["404"] >= 4 and unrouted["fast"]["400"] >= 1
