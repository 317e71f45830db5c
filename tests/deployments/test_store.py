"""The deployment store: schema and migrations, atomic changes, and refusing a file it cannot trust."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ladle import ConfigError
from ladle.deployments.store import MIGRATIONS, SCHEMA_VERSION, DeploymentStore, RolloutRecord
from ladle.sqlite_file import migrate


def test_a_new_store_has_the_schema_and_is_empty(tmp_path: Path) -> None:
    store = DeploymentStore.open(tmp_path / "state" / "deployments.db")
    assert store.is_empty()
    store.close()
    db = sqlite3.connect(tmp_path / "state" / "deployments.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"models", "deployments", "traffic_splits", "events", "rollouts"} <= tables


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "deployments.db"
    store = DeploymentStore.open(path)
    with store.transaction() as tx:
        tx.upsert_model("fraud", router="canary", router_options={"sticky": True}, options={"x": 1})
        tx.upsert_deployment("fraud", "v1", status="serving")
        tx.upsert_deployment(
            "fraud", "v2", status="serving", options={"rollout": {"steps": [50, 100]}}, deployed=True
        )
        tx.set_split("fraud", {"v1": 90.0, "v2": 10.0}, "canary")
        tx.event("fraud", "deployed", "v2 deployed", version="v2", details={"traffic": {"v2": 10.0}})
        tx.save_rollout(RolloutRecord("fraud", "v2", "v1", {"steps": [50, 100]}, 0, "running", "", 1.0, 1.0))
    store.close()

    again = DeploymentStore.open(path)
    assert not again.is_empty()
    model = again.model("fraud")
    assert model is not None and (model.router, model.router_options, model.options) == (
        "canary",
        {"sticky": True},
        {"x": 1},
    )
    assert again.split("fraud") == {"v1": 90.0, "v2": 10.0}
    deployments = {d.version: d for d in again.deployments("fraud")}
    assert deployments["v2"].options == {"rollout": {"steps": [50, 100]}}
    assert deployments["v2"].deployed_at >= deployments["v1"].deployed_at
    assert [e.kind for e in again.events("fraud")] == ["deployed"]
    assert [s.weights for s in again.splits("fraud")] == [{"v1": 90.0, "v2": 10.0}]
    rollout = again.rollout("fraud")
    assert rollout is not None and (rollout.canary, rollout.stable, rollout.state) == ("v2", "v1", "running")


def test_a_failed_change_leaves_nothing_behind(tmp_path: Path) -> None:
    store = DeploymentStore.open(tmp_path / "deployments.db")
    with store.transaction() as tx:
        tx.upsert_model("fraud")
        tx.upsert_deployment("fraud", "v1", status="serving")
        tx.set_split("fraud", {"v1": 100.0}, "first")
    with pytest.raises(ValueError, match="no deployment 'v9'"), store.transaction() as tx:
        tx.event("fraud", "traffic", "about to fail")
        tx.set_split("fraud", {"v1": 50.0, "v9": 50.0}, "half to a version that does not exist")
    assert store.split("fraud") == {"v1": 100.0}
    assert store.events("fraud") == []
    assert len(store.splits("fraud")) == 1


def test_a_file_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deployments.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match=r"deployment store .*unusable"):
        DeploymentStore.open(path)


def test_a_damaged_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deployments.db"
    store = DeploymentStore.open(path)
    with store.transaction() as tx:
        for i in range(300):
            tx.event("m", "noise", "x" * 200 + str(i))
    store.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096  # the events fill several pages
    data[-3 * 4096 : -2 * 4096] = b"\xff" * 4096  # scribble over one of their b-tree pages
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="deployment store"):
        DeploymentStore.open(path)


def test_another_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE something (x)").connection.commit()
    with pytest.raises(ConfigError, match="not a ladle deployment store"):
        DeploymentStore.open(path)


def test_a_store_from_a_newer_ladle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deployments.db"
    DeploymentStore.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="newer ladle"):
        DeploymentStore.open(path)


def test_an_unwritable_location_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the directory should be")
    with pytest.raises(ConfigError, match="cannot create its directory"):
        DeploymentStore.open(tmp_path / "taken" / "deployments.db")
    (tmp_path / "a-directory.db").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        DeploymentStore.open(tmp_path / "a-directory.db")


def test_a_read_only_store_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deployments.db"
    DeploymentStore.open(path).close()
    # Open through a read-only URI: the same refusal a read-only file or mount gives.
    uri = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    with pytest.raises(ConfigError, match=r"cannot be written|unusable"):
        migrate(uri, path, "deployment store", MIGRATIONS, synchronous="FULL")
