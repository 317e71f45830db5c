"""The design brief's deployment API end to end, on a managed server: its deploy body, the traffic
split, the brief's data model in ``GET``, replicas at runtime, and all of it kept across a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from ladle.deployments.errors import ConflictError
from ladle.deployments.resources import check_gpu, machine_gpu_names

from .harness import AUTH, config, infer, serving, write_model


def _absent_gpu() -> str:
    present = " ".join(machine_gpu_names()).lower()
    return "A100" if "a100" not in present else "Z9000"


def _deployments(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["version"]: entry for entry in state["deployments"]}


def test_the_briefs_deployment_api_end_to_end(tmp_path: Path) -> None:
    repo = write_model(
        tmp_path / "models",
        "fraud",
        'version_policy = { specific = ["v3.0"] }\noptions = { delay = 0.01 }\n',
        versions=("v3.0", "v3.1"),
    )
    cfg = config(repo, state=str(tmp_path / "deployments.db"))
    with serving(cfg) as running, httpx.Client(base_url=running.url, timeout=60, headers=AUTH) as client:
        gpu = _absent_gpu()
        brief = {
            "model_name": "fraud",
            "version": "v3.1",
            "traffic_percent": 10,
            "resources": {"gpu": gpu, "replicas": 4},
        }
        refused = client.post("/api/v1/deployments", json=brief)
        assert refused.status_code == 409, refused.text
        assert f"resources.gpu '{gpu}'" in refused.json()["error"] and "it has" in refused.json()["error"]
        assert "v3.1" not in running.server.manager.models["fraud"].versions  # nothing loaded

        brief["resources"] = {"replicas": 4}
        created = client.post("/api/v1/deployments", json=brief)
        assert created.status_code == 201, created.text
        view = _deployments(created.json())
        assert view["v3.1"] == {
            "deployment_id": "fraud:v3.1",
            "model_name": "fraud",
            "version": "v3.1",
            "status": "active",
            "replicas": 4,
            "ready_replicas": 4,
            "gpu_type": None,
            "traffic_pct": 10.0,
            "created_at": view["v3.1"]["created_at"],
        }
        assert view["v3.1"]["created_at"].endswith("Z")
        assert (view["v3.0"]["status"], view["v3.0"]["replicas"], view["v3.0"]["traffic_pct"]) == (
            "active",
            1,
            90.0,
        )

        split = client.put("/api/v1/deployments/fraud/traffic", json={"v3.0": 50, "v3.1": 50})
        assert split.status_code == 200, split.text
        assert {v: d["traffic_pct"] for v, d in _deployments(split.json()).items()} == {
            "v3.0": 50,
            "v3.1": 50,
        }
        served = {infer(client, "fraud").headers["ladle-model-version"] for _ in range(40)}
        assert served == {"v3.0", "v3.1"}

        scaled = client.put("/api/v1/deployments/fraud/versions/v3.1/replicas", json={"replicas": 2})
        assert scaled.status_code == 200, scaled.text
        assert (
            _deployments(scaled.json())["v3.1"]["replicas"],
            _deployments(scaled.json())["v3.1"]["ready_replicas"],
        ) == (2, 2)

        alias = client.post("/api/v1/deployments", json={"model": "fraud", "version": "v3.1", "traffic": 50})
        assert alias.status_code == 201, alias.text  # the older spelling still works
        assert _deployments(alias.json())["v3.1"]["replicas"] == 2  # and keeps the replicas

    with serving(cfg) as running, httpx.Client(base_url=running.url, timeout=60, headers=AUTH) as client:
        state = client.get("/api/v1/deployments/fraud").json()
        view = _deployments(state)
        assert (view["v3.1"]["replicas"], view["v3.1"]["ready_replicas"]) == (2, 2)  # restored
        assert state["traffic"] == {"v3.0": 50.0, "v3.1": 50.0}


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"model_name": "fraud", "model": "fraud", "version": "v3.1"}, "not both"),
        ({"model_name": "fraud", "version": "v3.1", "traffic_percent": 10, "traffic": 10}, "not both"),
        ({"model_name": "fraud", "version": "v3.1", "resources": {"gpus": "A100"}}, "gpus"),
        ({"model_name": "fraud", "version": "v3.1", "resources": {"replicas": 0}}, "replicas"),
        ({"model_name": "fraud", "version": "v3.1", "traffic_percent": 120}, "traffic"),
    ],
)
def test_bad_deploy_bodies_are_400_naming_the_field(
    tmp_path: Path, body: dict[str, Any], complaint: str
) -> None:
    repo = write_model(tmp_path / "models", "fraud", "", versions=("v3.0", "v3.1"))
    cfg = config(repo, state=str(tmp_path / "deployments.db"))
    with serving(cfg) as running, httpx.Client(base_url=running.url, timeout=30, headers=AUTH) as client:
        response = client.post("/api/v1/deployments", json=body)
        assert response.status_code == 400, response.text
        assert complaint in response.text


def test_a_gpu_kind_matches_within_the_machines_gpu_names() -> None:
    names = ("NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3")
    assert check_gpu("a100", names) == "NVIDIA A100-SXM4-80GB"
    assert check_gpu("H100", names) == "NVIDIA H100 80GB HBM3"
    with pytest.raises(ConflictError) as missing:
        check_gpu("L4", names)
    assert missing.value.status == 409
    assert "2x NVIDIA A100-SXM4-80GB, 1x NVIDIA H100 80GB HBM3" in missing.value.message
    with pytest.raises(ConflictError, match="it has no GPU"):
        check_gpu("A100", ())
