"""The controller inside a real ladle server on a loopback port: deploy, split and roll back over
HTTP while the data plane answers, each answer naming the version that served it."""

from __future__ import annotations

from pathlib import Path

import httpx

from ladle.server import Server
from ladle.testing.server import run_server

from .harness import make_config, make_host, write_version

TOKEN = "e2e-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def predict(client: httpx.Client, key: str) -> str:
    body = {"inputs": [{"x": [0.1, 0.2, 0.3, 0.4]}]}
    response = client.post("/api/v1/models/fraud/predict", json=body, headers={"Ladle-Routing-Key": key})
    assert response.status_code == 200, response.text
    version = response.headers["Ladle-Model-Version"]
    assert response.json()["version"] == version
    return version


def test_deploy_split_and_roll_back_over_http(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_version(repo, "fraud", "v1")
    config = make_config(repo, tmp_path / "deployments.db", api_token=TOKEN)
    with (
        run_server(Server(config, host=make_host())) as running,
        httpx.Client(base_url=running.url, timeout=30) as client,
    ):
        assert {predict(client, f"user-{i}") for i in range(5)} == {"v1"}
        write_version(repo, "fraud", "v2")
        deployed = client.post(
            "/api/v1/deployments", json={"model": "fraud", "version": "v2", "traffic": 30}, headers=AUTH
        )
        assert deployed.status_code == 201, deployed.text
        served = {key: predict(client, key) for key in (f"user-{i}" for i in range(200))}
        assert 0.15 < sum(v == "v2" for v in served.values()) / 200 < 0.45
        assert all(predict(client, key) == version for key, version in list(served.items())[:40])  # sticky
        v2 = client.post(
            "/v2/models/fraud/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 1]}]},
            headers={"Ladle-Routing-Key": next(k for k, v in served.items() if v == "v2")},
        )
        assert v2.status_code == 200 and v2.json()["model_version"] == "v2"
        assert client.post("/api/v1/deployments/fraud/rollback", headers=AUTH).json()["traffic"] == {
            "v1": 100.0
        }
        assert {predict(client, key) for key in served} == {"v1"}
        assert client.get("/api/v1/deployments/fraud").status_code == 401
