"""Guarded rollouts under steady load: broken, slow, drifting and wrong canaries are rolled back
automatically with the reason recorded; a healthy one is promoted; a restart resumes a rollout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ladle import Arrays, InferenceRequest
from ladle.deployments.controller import DeploymentController
from ladle.deployments.errors import UnknownRequestError
from ladle.deployments.store import DeploymentStore

from .harness import Load, make_config, run_async, serving, write_version

PLAN: dict[str, Any] = {
    "steps": [20, 50, 100],
    "interval": 0.3,
    "check_every": 0.05,
    "guard": {"min_samples": 30, "window": 30, "min_labels": 30},
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    write_version(repo, "fraud", "v1")
    return repo


async def roll_out(
    controller: DeploymentController, load: Load, plan: dict[str, Any] = PLAN
) -> dict[str, Any]:
    load.start()
    try:
        await controller.deploy("fraud", "v2", options={"rollout": plan})
        await controller.rollouts["fraud"].wait()
    finally:
        await load.stop()
    return await controller.describe("fraud")


@run_async
async def test_a_healthy_canary_steps_up_and_is_promoted(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "fraud", "v2")
        load = Load(manager.endpoint("fraud"), rate=300)
        state = await roll_out(controller, load)
        assert state["traffic"] == {"v2": 100.0}
        assert state["rollout"]["state"] == "promoted"
        assert load.failures == []
        splits = [s["traffic"] for s in reversed(state["history"]["splits"])]
        assert splits[-3:] == [{"v1": 80.0, "v2": 20.0}, {"v1": 50.0, "v2": 50.0}, {"v2": 100.0}]
        kinds = [e["kind"] for e in state["history"]["events"]]
        assert kinds[0] == "promoted" and "rollout_step" in kinds
        assert manager.endpoint("fraud").stages == ()  # nothing watches any more: plain data path


@pytest.mark.parametrize(
    ("behaviour", "guard"),
    [({"fail": True}, "error_rate"), ({"delay": 0.03}, "p95_latency"), ({"shift": 0.3}, "output_divergence")],
    ids=["raises", "slow", "shifted"],
)
def test_a_faulty_canary_is_rolled_back_with_the_reason(
    repo: Path, tmp_path: Path, behaviour: dict[str, Any], guard: str
) -> None:
    @run_async
    async def scenario() -> None:
        async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
            write_version(repo, "fraud", "v2", **behaviour)
            state = await roll_out(controller, Load(manager.endpoint("fraud"), rate=300))
            assert state["traffic"] == {"v1": 100.0}
            assert state["rollout"]["state"] == "rolled_back"
            assert guard in state["rollout"]["reason"]
            statuses = {v["version"]: v["status"] for v in state["versions"]}
            assert statuses == {"v1": "serving", "v2": "rolled_back"}
            event = state["history"]["events"][0]
            assert event["kind"] == "rolled_back" and guard in event["message"]
            assert [b["guard"] for b in event["details"]["breaches"]] == [guard]
            assert event["details"]["canary"]["requests"] >= 30  # the figures that justified it

    scenario()


@run_async
async def test_a_canary_with_worse_accuracy_is_rolled_back_from_feedback(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        # Flipped scores have the same distribution (so no divergence), but every label is wrong.
        write_version(repo, "fraud", "v2", flip=True)
        verdicts: list[dict[str, Any]] = []

        def label(request: InferenceRequest, version: str, outputs: Arrays) -> None:
            truth = int(request.inputs["x"].sum() > 0)
            try:
                verdicts.append(controller.feedback("fraud", request.id, truth))
            except UnknownRequestError:
                unknown.append(request.id)  # answered before the rollout started watching

        unknown: list[str] = []

        state = await roll_out(controller, Load(manager.endpoint("fraud"), rate=300, on_result=label))
        assert state["rollout"]["state"] == "rolled_back"
        assert "accuracy" in state["rollout"]["reason"]
        assert "output_divergence" not in state["rollout"]["reason"]
        assert any(v["recorded"] and v["version"] == "v2" and v["correct"] == 0 for v in verdicts)
        assert state["traffic"] == {"v1": 100.0}
        assert len(unknown) < len(verdicts) / 10


@run_async
async def test_feedback_without_a_rollout_is_accepted_but_not_recorded(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (_, controller):
        assert controller.feedback("fraud", "some-id", 1)["recorded"] is False


@run_async
async def test_a_restart_resumes_a_running_rollout(repo: Path, tmp_path: Path) -> None:
    config = make_config(repo, tmp_path / "d.db")
    slow_plan = {**PLAN, "interval": 3600.0}  # would wait an hour at 20%
    async with serving(config) as (manager, controller):
        write_version(repo, "fraud", "v2")
        await controller.deploy("fraud", "v2", options={"rollout": slow_plan})
        assert (await controller.describe("fraud"))["traffic"] == {"v1": 80.0, "v2": 20.0}
    store = DeploymentStore.open(tmp_path / "d.db")
    saved = store.rollout("fraud")
    store.close()
    assert saved is not None and (saved.state, saved.step) == ("running", 0)
    async with serving(config) as (manager, controller):
        rollout = controller.rollouts["fraud"]
        assert (rollout.canary, rollout.stable, rollout.state, rollout.percent) == ("v2", "v1", "running", 20)
        assert (await controller.describe("fraud"))["traffic"] == {"v1": 80.0, "v2": 20.0}
        # an operator's rollback ends it
        state = await controller.rollback("fraud")
        assert state["traffic"] == {"v1": 100.0} and state["rollout"]["state"] == "rolled_back"
        assert manager.endpoint("fraud").stages == ()


@run_async
async def test_a_manual_traffic_change_cancels_the_rollout(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (_, controller):
        write_version(repo, "fraud", "v2")
        await controller.deploy("fraud", "v2", options={"rollout": {**PLAN, "interval": 3600.0}})
        with pytest.raises(UnknownRequestError):
            controller.feedback("fraud", "never-served", 1)
        state = await controller.set_traffic("fraud", {"v1": 40, "v2": 60})
        assert state["rollout"]["state"] == "cancelled"
        assert state["traffic"] == {"v1": 40.0, "v2": 60.0}
        assert state["history"]["events"][0]["kind"] == "rollout_cancelled"


@run_async
async def test_a_step_without_enough_traffic_rolls_back_after_max_wait(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "fraud", "v2")
        plan = {**PLAN, "max_wait": 0.4}
        state = await roll_out(controller, Load(manager.endpoint("fraud"), rate=5), plan)
        assert state["traffic"] == {"v1": 100.0}
        assert state["rollout"]["state"] == "rolled_back"
        assert (
            "not enough traffic: the 20% step gathered fewer than 30 requests" in state["rollout"]["reason"]
        )
        event = state["history"]["events"][0]
        assert event["kind"] == "rolled_back" and "not enough traffic" in event["message"]


def test_rollout_plans_are_validated() -> None:
    from pydantic import ValidationError

    from ladle.deployments.controller import DeploymentOptions

    with pytest.raises(ValidationError, match="end at 100"):
        DeploymentOptions.model_validate({"rollout": {"steps": [5, 50]}})
    with pytest.raises(ValidationError, match="increase"):
        DeploymentOptions.model_validate({"rollout": {"steps": [50, 25, 100]}})
    with pytest.raises(ValidationError, match="max_wait"):
        DeploymentOptions.model_validate({"rollout": {"max_wait": 0}})
    assert np.isclose(DeploymentOptions.model_validate({}).model_dump()["rollout"] or 0, 0)
