"""The model repository on disk (ladle.repository): names, version order, policies, runtime inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ladle.config import ServerConfig, load_server_config
from ladle.errors import ConfigError, InvalidRequestError, ModelNotFoundError, PluginNotFoundError
from ladle.plugin_host import PluginHost
from ladle.repository import ModelRepository, check_name, version_key


@pytest.mark.parametrize("name", ["m", "iris-v2", "Model_1.0", "v3.10", "1", "a..b", "-x"])
def test_valid_names(name: str) -> None:
    assert check_name("model", name) == name


@pytest.mark.parametrize(
    "name", ["", ".", "..", "...", "a/b", "../etc", "a b", " m", "m\n", "m\x00", "mödel", "a\\b", "*", "m?"]
)
def test_invalid_names_are_client_errors(name: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_name("version", name)
    assert info.value.status == 400
    assert info.value.details == {"version": name}


def test_natural_version_order() -> None:
    versions = ["v3.10", "10", "v3.9", "2", "1", "v3.9.1", "v10.0", "1a", "v2.0-rc1"]
    assert sorted(versions, key=version_key) == [
        "1",
        "1a",
        "2",
        "10",
        "v2.0-rc1",
        "v3.9",
        "v3.9.1",
        "v3.10",
        "v10.0",
    ]
    assert version_key("v3.9") < version_key("v3.10")
    assert version_key("2") < version_key("10")


def _repository(root: Path, layout: dict[str, list[str]]) -> ModelRepository:
    for model, versions in layout.items():
        for version in versions:
            (root / model / version).mkdir(parents=True)
    return ModelRepository(root)


def test_models_and_versions_are_listed_in_order(tmp_path: Path) -> None:
    repo = _repository(tmp_path, {"b": ["10", "2", "1"], "a": ["v3.10", "v3.9"]})
    (tmp_path / "b" / "notes.txt").write_text("a file is not a version")
    (tmp_path / "b" / "bad name").mkdir()
    (tmp_path / "stray.txt").write_text("a file is not a model")
    assert repo.models() == ["a", "b"]
    assert repo.versions("b") == ["1", "2", "10"]
    assert repo.versions("a") == ["v3.9", "v3.10"]
    assert repo.version_dir("b", "10") == tmp_path / "b" / "10"


def test_lookups_refuse_escapes_and_report_missing(tmp_path: Path) -> None:
    repo = _repository(tmp_path / "repo", {"m": ["1"]})
    (tmp_path / "outside" / "1").mkdir(parents=True)
    with pytest.raises(InvalidRequestError):
        repo.model_dir("../outside")
    with pytest.raises(InvalidRequestError):
        repo.version_dir("m", "..")
    with pytest.raises(ModelNotFoundError) as info:
        repo.model_dir("absent")
    assert info.value.status == 404
    with pytest.raises(ModelNotFoundError, match="version '2'"):
        repo.version_dir("m", "2")


def test_missing_repository_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        ModelRepository(tmp_path / "absent").models()


# Planning (config + versions + runtime inference) ---------------------------------------------


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost().discover()


@pytest.fixture(scope="module")
def booster() -> object:
    xgboost = pytest.importorskip("xgboost")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    return xgboost.train(
        {"objective": "binary:logistic", "nthread": 1}, xgboost.DMatrix(x, y), num_boost_round=3
    )


def test_runtime_is_inferred_from_xgboost_artifacts(
    tmp_path: Path, host: PluginHost, booster: object
) -> None:
    repo = _repository(tmp_path, {"ubj": ["1"], "js": ["1"]})
    booster.save_model(str(tmp_path / "ubj" / "1" / "model.ubj"))  # type: ignore[attr-defined]
    booster.save_model(str(tmp_path / "js" / "1" / "model.json"))  # type: ignore[attr-defined]
    for model in ("ubj", "js"):
        plan = repo.plan(model, ServerConfig(), host)
        assert plan.specs["1"].plugin == "xgboost", model
        assert plan.specs["1"].artifact == str(tmp_path / model / "1")


def test_json_that_is_not_an_xgboost_model_is_not_claimed(tmp_path: Path, host: PluginHost) -> None:
    repo = _repository(tmp_path, {"m": ["1"]})
    (tmp_path / "m" / "1" / "model.json").write_text(json.dumps({"labels": ["cat", "dog"], "version": 2}))
    with pytest.raises(ConfigError) as info:
        repo.plan("m", ServerConfig(), host)
    assert info.value.details["key"] == "runtime"
    assert "model.toml" in info.value.message
    assert str(tmp_path / "m" / "1") in info.value.message


def test_plan_applies_version_policy_and_config(tmp_path: Path, host: PluginHost, booster: object) -> None:
    repo = _repository(tmp_path / "models", {"m": ["1", "2", "10", "9"]})
    for version in repo.versions("m"):
        booster.save_model(str(tmp_path / "models" / "m" / version / "model.ubj"))  # type: ignore[attr-defined]
    (tmp_path / "models" / "m" / "model.toml").write_text(
        "version_policy = { latest = 2 }\nthreads = 2\noptions = { output = 'margin' }\n"
    )
    (tmp_path / "ladle.toml").write_text('[models.m]\ndevice = "cuda:1"\n')
    server = load_server_config(tmp_path / "ladle.toml")
    plan = repo.plan("m", server, host)
    assert plan.versions == ("9", "10")
    spec = plan.specs["10"]
    assert (spec.model, spec.version, spec.plugin) == ("m", "10", "xgboost")
    assert (spec.threads, spec.device) == (2, "cuda:1")
    assert spec.options == {"output": "margin"}


def test_plan_with_no_matching_version_fails_at_start(tmp_path: Path, host: PluginHost) -> None:
    repo = _repository(tmp_path, {"m": ["1"]})
    (tmp_path / "m" / "model.toml").write_text('runtime = "xgboost"\nversion_policy = { specific = ["7"] }\n')
    with pytest.raises(ConfigError, match="no version directory"):
        repo.plan("m", ServerConfig(), host)


def test_unknown_runtime_name_fails_at_start(tmp_path: Path, host: PluginHost) -> None:
    repo = _repository(tmp_path, {"m": ["1"]})
    (tmp_path / "m" / "model.toml").write_text('runtime = "xgbost"\n')
    with pytest.raises(PluginNotFoundError) as info:
        repo.plan("m", ServerConfig(), host)
    assert "xgboost" in info.value.details["available"]
