"""A real ladle server whose XGBoost instances are Ray actors, over HTTP (on the session's Ray)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ladle import ServerConfig
from ladle.server import Server
from ladle.testing import models
from ladle.testing.server import run_server


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    models.build_xgboost(root / "cancer" / "1", n_estimators=20, max_depth=3)
    (root / "cancer" / "model.toml").write_text(
        'instances = 2\nplacement = { name = "ray", num_cpus = 0.5 }\n'
    )
    return root


def actor_calls(client: httpx.Client) -> set[str]:
    placed = client.get("/api/v1/placement")
    assert placed.status_code == 200, placed.text
    return {actor["calls"] for actor in placed.json()["ray"]["actors"]}


def test_a_server_answers_from_ray_actors_like_xgboost_itself(ray_session: Any, repository: Path) -> None:
    import xgboost

    config = ServerConfig.model_validate({"server": {"repository": str(repository)}})
    server = Server(config)
    features = models.breast_cancer()[0][:5].astype(np.float32)
    booster = xgboost.Booster()
    booster.load_model(str(repository / "cancer" / "1" / "model.json"))
    expected = booster.predict(xgboost.DMatrix(features))
    with run_server(server) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        metadata = client.get("/v2/models/cancer").json()
        name = metadata["inputs"][0]["name"]
        body = {
            "inputs": [
                {
                    "name": name,
                    "shape": list(features.shape),
                    "datatype": "FP32",
                    "data": features.ravel().tolist(),
                }
            ]
        }
        answer = client.post("/v2/models/cancer/infer", json=body)
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        assert output["name"] == "predict"
        np.testing.assert_allclose(np.asarray(output["data"], dtype=np.float32), expected, rtol=1e-6)
        (described,) = client.get("/api/v1/models").json()["models"]
        instances = described["versions"][0]["instances"]
        assert [i["state"] for i in instances] == ["ready", "ready"]
        pids = {i["runtime"]["ray_pid"] for i in instances}
        assert len(pids) == 2 and None not in pids  # two actors, two processes
        placement = client.get("/api/v1/placement").json()["ray"]
        assert {a["instance"] for a in placement["actors"]} == {0, 1}
        assert {a["pid"] for a in placement["actors"]} == pids
        assert all(a["num_cpus"] == 0.5 for a in placement["actors"])
        # Batches that keep coming go through a compiled graph (one at a time reach the first actor).
        deadline = time.monotonic() + 60
        while "compiled_graph" not in (calls := actor_calls(client)):
            assert time.monotonic() < deadline, calls
            time.sleep(0.2)  # the control API's reads are rate limited: poll it gently
            for _ in range(20):
                again = client.post("/v2/models/cancer/infer", json=body)
                assert again.status_code == 200
                np.testing.assert_allclose(
                    np.asarray(again.json()["outputs"][0]["data"], dtype=np.float32), expected, rtol=1e-6
                )
    assert server.manager.placements["ray"].describe()["actors"] == []  # stopped with the server


def test_an_actor_killed_between_batches_is_replaced_by_the_supervisor(
    ray_session: Any, repository: Path
) -> None:
    config = ServerConfig.model_validate({"server": {"repository": str(repository)}})
    server = Server(config)
    features = models.breast_cancer()[0][:1].astype(np.float32)
    with run_server(server) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        name = client.get("/v2/models/cancer").json()["inputs"][0]["name"]
        body = {
            "inputs": [
                {"name": name, "shape": [1, 30], "datatype": "FP32", "data": features.ravel().tolist()}
            ]
        }

        def actor_pids() -> dict[str, Any]:
            (described,) = client.get("/api/v1/models").json()["models"]
            return {
                i["name"]: (i["state"], i["runtime"].get("ray_pid"))
                for i in described["versions"][0]["instances"]
            }

        before = actor_pids()
        victim = server.manager.models["cancer"].versions["1"].replicas.instances[0]
        ray_session.kill(
            victim.executor.actor, no_restart=True
        )  # no batch is running: only the watch sees it
        deadline = time.monotonic() + 120
        while True:
            assert client.post("/v2/models/cancer/infer", json=body).status_code == 200  # the other serves
            now = actor_pids()
            replaced = now.get(victim.name)
            if replaced is not None and replaced[0] == "ready" and replaced[1] != before[victim.name][1]:
                break
            assert time.monotonic() < deadline, now
            time.sleep(0.2)
        assert victim.state.value == "failed"
        assert len({pid for _, pid in now.values()}) == 2
