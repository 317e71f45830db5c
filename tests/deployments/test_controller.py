"""The controller: static vs managed mode, deploy / traffic / rollback / retire, and restarts that
restore every version, split and router exactly."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ladle import InvalidRequestError, ModelNotFoundError
from ladle.deployments.controller import DeploymentFailedError
from ladle.deployments.errors import ConflictError
from ladle.deployments.store import DeploymentStore

from .harness import make_config, predict, rows, run_async, serving, write_version


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    write_version(repo, "fraud", "v1")
    return repo


async def split_of(endpoint, n: int = 400) -> Counter[str]:  # type: ignore[no-untyped-def]
    return Counter([(await predict(endpoint, rows(1), key=f"user-{i}"))[0] for i in range(n)])


@run_async
async def test_static_mode_serves_config_and_refuses_changes(repo: Path) -> None:
    async with serving(make_config(repo)) as (manager, controller):
        assert controller.mode == "static"
        assert (await predict(manager.endpoint("fraud"), rows(1)))[0] == "v1"
        state = await controller.describe("fraud")
        assert state["traffic"] == {"v1": 100.0} and state["mode"] == "static"
        with pytest.raises(ConflictError, match="static mode"):
            await controller.deploy("fraud", "v1")
        with pytest.raises(ConflictError):
            await controller.set_traffic("fraud", {"v1": 100})
        with pytest.raises(ConflictError):
            await controller.rollback("fraud")


@run_async
async def test_first_managed_start_seeds_the_store_from_config(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "deployments.db"
    async with serving(make_config(repo, state)) as (_, controller):
        assert controller.mode == "managed"
    store = DeploymentStore.open(state)
    assert store.split("fraud") == {"v1": 100.0}
    assert store.model("fraud") is not None and store.model("fraud").router == "single"  # type: ignore[union-attr]
    assert [e.kind for e in store.events("fraud")] == ["seeded"]


@run_async
async def test_a_version_copied_in_after_start_is_loaded_warmed_then_given_traffic(
    repo: Path, tmp_path: Path
) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        endpoint = manager.endpoint("fraud")
        write_version(repo, "fraud", "v2", shift=0.25)  # arrives after start
        state = await controller.deploy("fraud", "v2", traffic=20)
        assert endpoint.versions["v2"].ready
        assert state["traffic"] == {"v1": 80.0, "v2": 20.0}
        assert state["router"] == "canary"  # the single router cannot split: switched
        counts = await split_of(endpoint)
        assert 0.12 < counts["v2"] / 400 < 0.28
        # the split is sticky: the same keys give the same versions
        assert await split_of(endpoint) == counts
        kinds = [e["kind"] for e in state["history"]["events"]]
        assert kinds[:2] == ["deployed", "loading"]


@run_async
async def test_a_version_that_fails_to_load_changes_nothing(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "fraud", "v2", fail_load=True)
        with pytest.raises(DeploymentFailedError, match="failed to load"):
            await controller.deploy("fraud", "v2", traffic=50)
        assert manager.endpoint("fraud").table.versions == ("v1",)
        assert (await controller.describe("fraud"))["traffic"] == {"v1": 100.0}
        write_version(repo, "fraud", "v3", fail_warmup=True)
        with pytest.raises(DeploymentFailedError, match="failed to load"):
            await controller.deploy("fraud", "v3", traffic=50)
        assert "v3" not in manager.endpoint("fraud").versions
        with pytest.raises(ModelNotFoundError):
            await controller.deploy("fraud", "v9")
        with pytest.raises(InvalidRequestError):
            await controller.deploy("fraud", "../etc")
        state = await controller.describe("fraud")
        assert {v["version"]: v["status"] for v in state["versions"]}["v2"] == "failed"
        assert state["history"]["events"][0]["kind"] == "load_failed"


@run_async
async def test_traffic_changes_are_validated(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "fraud", "v2")
        await controller.deploy("fraud", "v2", traffic=0)
        with pytest.raises(InvalidRequestError, match="unknown version 'v3'"):
            await controller.set_traffic("fraud", {"v1": 50, "v3": 50})
        with pytest.raises(InvalidRequestError, match="sum to 100"):
            await controller.set_traffic("fraud", {"v1": 50, "v2": 40})
        state = await controller.set_traffic("fraud", {"v1": 50, "v2": 50})
        assert state["traffic"] == {"v1": 50.0, "v2": 50.0}
        counts = await split_of(manager.endpoint("fraud"))
        assert 0.4 < counts["v2"] / 400 < 0.6


@run_async
async def test_rollback_returns_to_the_previous_whole_version(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "fraud", "v2")
        write_version(repo, "fraud", "v3")
        endpoint = manager.endpoint("fraud")
        await controller.deploy("fraud", "v2", traffic=10)
        state = await controller.rollback("fraud")
        assert state["traffic"] == {"v1": 100.0}
        assert {v["version"]: v["status"] for v in state["versions"]}["v2"] == "rolled_back"
        await controller.deploy("fraud", "v3")  # 100%
        assert (await predict(endpoint, rows(1)))[0] == "v3"
        state = await controller.rollback("fraud")
        assert state["traffic"] == {"v1": 100.0}  # v2 was rolled back, so not v2
        with pytest.raises(ConflictError, match="no earlier version"):
            await controller.rollback("fraud")
        assert (await controller.rollback("fraud", to="v3"))["traffic"] == {"v3": 100.0}


@run_async
async def test_a_restart_restores_versions_splits_and_routers_exactly(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "d.db"
    config = make_config(repo, state)
    async with serving(config) as (manager, controller):
        write_version(repo, "fraud", "v2", shift=0.1)
        write_version(repo, "fraud", "v3")
        await controller.deploy("fraud", "v2", traffic=30)
        await controller.deploy("fraud", "v3", traffic=0)  # loaded, warm, no traffic
        await controller.set_traffic("fraud", {"v1": 65, "v2": 25, "v3": 10})
        before = await controller.describe("fraud", history=False)
        keys_before = await split_of(manager.endpoint("fraud"))
    # A new version appears in the repository while down: the store, not the config, decides.
    write_version(repo, "fraud", "v4")
    async with serving(config) as (manager, controller):
        after = await controller.describe("fraud", history=False)
        assert after["traffic"] == before["traffic"] == {"v1": 65.0, "v2": 25.0, "v3": 10.0}
        assert after["router"] == before["router"] == "canary"
        assert sorted(manager.endpoint("fraud").versions) == ["v1", "v2", "v3"]
        assert [(v["version"], v["status"]) for v in after["versions"]] == [
            (v["version"], v["status"]) for v in before["versions"]
        ]
        assert await split_of(manager.endpoint("fraud")) == keys_before  # every key where it was


@run_async
async def test_retire_unloads_only_versions_without_traffic(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "fraud", "v2")
        await controller.deploy("fraud", "v2", traffic=50)
        with pytest.raises(ConflictError, match="still has traffic"):
            await controller.retire("fraud", "v1")
        # deploying a serving version again (new options, same share) keeps it serving
        state = await controller.deploy("fraud", "v1", traffic=50)
        assert {v["version"]: v["status"] for v in state["versions"]} == {"v1": "serving", "v2": "serving"}
        await controller.set_traffic("fraud", {"v2": 100})
        state = await controller.retire("fraud", "v1")
        assert "v1" not in manager.endpoint("fraud").versions
        assert {v["version"]: v["status"] for v in state["versions"]}["v1"] == "retired"
        # retired versions can come back: rollback loads it again
        assert (await controller.rollback("fraud", to="v1"))["traffic"] == {"v1": 100.0}
        assert manager.endpoint("fraud").versions["v1"].ready


@run_async
async def test_blue_green_switches_all_traffic_at_once(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "fraud", "green")
        endpoint = manager.endpoint("fraud")
        await controller.deploy("fraud", "green", traffic=0, options={"router": {"name": "blue-green"}})
        assert set((await split_of(endpoint, 50)).keys()) == {"v1"}
        with pytest.raises(InvalidRequestError, match="one version"):
            await controller.set_traffic("fraud", {"v1": 50, "green": 50})
        await controller.set_traffic("fraud", {"green": 100})
        assert set((await split_of(endpoint, 50)).keys()) == {"green"}


@run_async
async def test_a_model_copied_in_after_start_can_be_deployed(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "churn", "1")
        with pytest.raises(ConflictError, match="remaining 50%"):
            await controller.deploy("churn", "1", traffic=50)  # refused before anything loads
        assert "churn" not in manager.models
        state = await controller.deploy("churn", "1")
        assert state["traffic"] == {"1": 100.0}
        assert (await predict(manager.endpoint("churn"), rows(1)))[0] == "1"


@run_async
async def test_a_split_the_router_refuses_loads_nothing(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "fraud", "v2")
        with pytest.raises(InvalidRequestError, match="one version"):
            await controller.deploy("fraud", "v2", traffic=50, options={"router": {"name": "blue-green"}})
        assert "v2" not in manager.endpoint("fraud").versions
        with pytest.raises(InvalidRequestError, match="router 'nope'"):
            await controller.deploy("fraud", "v2", options={"router": {"name": "nope"}})
        with pytest.raises(InvalidRequestError, match="stickyy"):
            await controller.deploy("fraud", "v2", options={"router": {"name": "canary", "stickyy": 1}})


@run_async
async def test_a_standby_version_gets_no_traffic_whatever_the_router(repo: Path, tmp_path: Path) -> None:
    # The single router sends everything to the newest version in the table; a newer version
    # loaded with no traffic, or an older one rolled back to, must still get exactly its share.
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        endpoint = manager.endpoint("fraud")
        write_version(repo, "fraud", "v2")
        state = await controller.deploy("fraud", "v2", traffic=0)
        assert state["traffic"] == {"v1": 100.0}
        assert set((await split_of(endpoint, 50)).keys()) == {"v1"}
        await controller.set_traffic("fraud", {"v2": 100})
        assert set((await split_of(endpoint, 50)).keys()) == {"v2"}
        await controller.rollback("fraud")
        assert set((await split_of(endpoint, 50)).keys()) == {"v1"}


@run_async
async def test_bad_resilience_in_config_is_a_config_error_at_start(repo: Path) -> None:
    from types import SimpleNamespace

    from ladle import ConfigError
    from ladle.deployments.controller import DeploymentController
    from ladle.repository import ModelPlan
    from ladle.serving import ModelManager

    from .harness import make_host

    # ModelConfig carries a ``resilience`` table once config grows one; a plan stands in for it here.
    config = SimpleNamespace(resilience={"circuit_breaker": {"error_ratio": 5}})
    controller = DeploymentController(ModelManager(make_config(repo), make_host()))
    with pytest.raises(ConfigError, match=r"resilience of model 'fraud'.*error_ratio"):
        await controller.start([ModelPlan("fraud", config, (), {})])  # type: ignore[arg-type]
