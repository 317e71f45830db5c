"""Triton's repository (index, load, unload) and statistics extensions, through ``tritonclient.http``
against real servers: static mode refuses model control as Triton does; managed mode loads and
unloads through the deployment controller, token-protected and recorded in the history."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.server import RunningServer, run_server

TOKEN = "s3cret-token"
ROW = np.array([[5.1, 3.5, 1.4, 0.2]])


def triton_client(running: RunningServer, token: str | None = None) -> object:
    import tritonclient.http as triton

    return triton.InferenceServerClient(running.url.removeprefix("http://"))


def infer(client: object, model: str, rows: np.ndarray, headers: dict[str, str] | None = None) -> np.ndarray:
    import tritonclient.http as triton

    tensor = triton.InferInput("input", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    result = client.infer(model, [tensor], headers=headers)  # type: ignore[attr-defined]
    return result.as_numpy("predict")  # type: ignore[no-any-return]


@pytest.fixture
def static_server(repository: Path) -> Iterator[RunningServer]:
    config = ServerConfig.model_validate({"server": {"repository": str(repository)}})
    with run_server(Server(config)) as running:
        yield running


@pytest.fixture
def managed_server(repository: Path, tmp_path: Path) -> Iterator[RunningServer]:
    shutil.rmtree(repository / "slow")  # one model is enough here
    config = ServerConfig.model_validate(
        {"server": {"repository": str(repository), "state": str(tmp_path / "d.db"), "api_token": TOKEN}}
    )
    with run_server(Server(config)) as running:
        yield running


def test_metadata_index_and_statistics(static_server: RunningServer) -> None:
    client = triton_client(static_server)
    extensions = client.get_server_metadata()["extensions"]  # type: ignore[attr-defined]
    assert "model_repository" in extensions and "statistics" in extensions
    index = client.get_model_repository_index()  # type: ignore[attr-defined]
    assert index == [
        {"name": "iris", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},  # latest only
        {"name": "iris", "version": "2", "state": "READY", "reason": ""},
        {"name": "slow", "version": "1", "state": "READY", "reason": ""},
    ]
    ready_only = httpx.post(f"{static_server.url}/v2/repository/index", json={"ready": True}).json()
    assert [(e["name"], e["version"]) for e in ready_only] == [("iris", "2"), ("slow", "1")]
    for rows in (ROW, np.repeat(ROW, 3, axis=0)):
        infer(client, "iris", rows)
    (stat,) = client.get_inference_statistics("iris")["model_stats"]  # type: ignore[attr-defined]
    assert (stat["name"], stat["version"]) == ("iris", "2")
    assert stat["inference_count"] == 4 and stat["execution_count"] == 2
    inference = stat["inference_stats"]
    assert inference["success"]["count"] == 2 and inference["success"]["ns"] > 0
    assert inference["queue"]["count"] == 2 and inference["compute_infer"]["count"] == 2
    assert inference["fail"] == {"count": 0, "ns": 0}
    every = client.get_inference_statistics()["model_stats"]  # type: ignore[attr-defined]
    assert [(s["name"], s["version"]) for s in every] == [("iris", "2"), ("slow", "1")]
    one = client.get_inference_statistics("iris", "2")["model_stats"]  # type: ignore[attr-defined]
    assert one[0]["inference_count"] == 4
    with pytest.raises(InferenceServerException, match="has no version '1'; loaded: 2"):
        client.get_inference_statistics("iris", "1")  # type: ignore[attr-defined]


def test_static_mode_refuses_model_control_as_triton_does(static_server: RunningServer) -> None:
    client = triton_client(static_server)
    for call in (client.load_model, client.unload_model):  # type: ignore[attr-defined]
        with pytest.raises(InferenceServerException) as caught:
            call("iris")
        assert "explicit model load / unload is not allowed" in str(caught.value)
        assert caught.value.status() == "503"
    assert client.is_model_ready("iris")  # type: ignore[attr-defined]


def test_managed_mode_unloads_and_loads_through_the_controller(managed_server: RunningServer) -> None:
    client = triton_client(managed_server)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with pytest.raises(InferenceServerException, match="missing bearer token"):
        client.unload_model("iris")  # type: ignore[attr-defined]
    client.unload_model("iris", headers=auth)  # type: ignore[attr-defined]
    assert not client.is_model_ready("iris")  # type: ignore[attr-defined]
    with pytest.raises(InferenceServerException, match="model 'iris' is not served"):
        infer(client, "iris", ROW)
    with pytest.raises(InferenceServerException, match="missing bearer token"):
        client.get_model_repository_index()  # type: ignore[attr-defined]  # reads need it once one is set
    index = client.get_model_repository_index(headers=auth)  # type: ignore[attr-defined]
    assert {(e["version"], e["state"], e["reason"]) for e in index} == {
        ("1", "UNAVAILABLE", "unloaded"),
        ("2", "UNAVAILABLE", "unloaded"),
    }
    history = httpx.get(f"{managed_server.url}/api/v1/deployments/iris", headers=auth).json()
    assert history["history"]["events"][0]["kind"] == "unloaded"
    assert {v["version"]: v["status"] for v in history["versions"]} == {"2": "retired"}
    client.load_model("iris", headers=auth)  # type: ignore[attr-defined]
    assert client.is_model_ready("iris")  # type: ignore[attr-defined]
    assert infer(client, "iris", ROW).tolist() == [0]
    state = httpx.get(f"{managed_server.url}/api/v1/deployments/iris", headers=auth).json()
    assert state["traffic"] == {"2": 100.0}
    client.load_model("iris", headers=auth)  # type: ignore[attr-defined]  # serving already: a no-op
    with pytest.raises(InferenceServerException, match="not supported"):
        client.load_model("iris", headers=auth, config='{"max_batch_size": 8}')  # type: ignore[attr-defined]
    with pytest.raises(InferenceServerException, match="model 'ghost' is not in the repository"):
        client.load_model("ghost", headers=auth)  # type: ignore[attr-defined]
