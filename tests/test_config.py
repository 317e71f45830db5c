"""Configuration: ladle.toml, model.toml and their precedence (ladle.config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ladle.config import (
    ModelConfig,
    ServerConfig,
    VersionPolicy,
    load_server_config,
    merge_model_config,
)
from ladle.errors import ConfigError


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_no_file_gives_the_defaults() -> None:
    config = load_server_config(None)
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8000
    assert config.source is None
    model = merge_model_config(config, "m", None)
    assert model == ModelConfig()
    assert model.batcher.name == "dynamic"
    assert model.router.name == "single"
    assert model.placement.name == "fixed"


def test_server_file_is_read_and_paths_resolve_next_to_it(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "conf" / "ladle.toml",
        '[server]\nport = 0\nrepository = "repo"\n[plugins]\ndisabled = ["router-ab"]\n'
        "[plugins.options.mine]\nlevel = 3\n",
    )
    config = load_server_config(path)
    assert config.server.port == 0
    assert config.source == str(path)
    assert config.repository_path == tmp_path / "conf" / "repo"
    assert config.plugins.disabled == ["router-ab"]
    assert config.plugin_options("mine") == {"level": 3}
    assert config.plugin_options("other") == {}


def test_precedence_defaults_then_model_file_then_models_table(tmp_path: Path) -> None:
    server_file = _write(
        tmp_path / "ladle.toml",
        """
[defaults]
instances = 2
threads = 4
device = "cuda:0"
batcher = { name = "dynamic", max_rows = 64, max_delay_ms = 1 }
options = { a = 1, b = 1 }

[models.m]
threads = 3
batcher = { max_delay_ms = 5 }
options = { b = 3 }
""",
    )
    model_file = _write(
        tmp_path / "models" / "m" / "model.toml",
        """
instances = 4
threads = 2
timeout = 2.5
batcher = { max_rows = 32 }
options = { a = 2, c = 2 }
""",
    )
    server = load_server_config(server_file)
    config = merge_model_config(server, "m", model_file)
    assert config.device == "cuda:0"  # only in [defaults]
    assert config.instances == 4  # model.toml beats [defaults]
    assert config.timeout == 2.5  # only in model.toml
    assert config.threads == 3  # [models.m] beats model.toml and [defaults]
    # tables merge key by key across all three layers
    assert config.batcher.name == "dynamic"
    assert config.batcher.options == {"max_rows": 32, "max_delay_ms": 5}
    assert config.options == {"a": 2, "b": 3, "c": 2}
    # another model sees [defaults] only
    other = merge_model_config(server, "other", None)
    assert (other.instances, other.threads, other.timeout) == (2, 4, 30.0)
    assert other.batcher.options == {"max_rows": 64, "max_delay_ms": 1}


def test_plugin_choice_shorthand_replaces_the_whole_choice(tmp_path: Path) -> None:
    server = ServerConfig(defaults={"batcher": {"name": "dynamic", "max_rows": 8}, "router": "canary"})
    model_file = _write(tmp_path / "model.toml", 'batcher = "passthrough"\n')
    config = merge_model_config(server, "m", model_file)
    assert config.router.name == "canary"
    assert config.batcher.name == "passthrough"
    assert config.batcher.options == {}  # another plugin's options do not leak into this one


def test_version_policy_is_replaced_not_blended(tmp_path: Path) -> None:
    server = ServerConfig(defaults={"version_policy": {"latest": 3}})
    model_file = _write(tmp_path / "model.toml", 'version_policy = { specific = ["1"] }\n')
    policy = merge_model_config(server, "m", model_file).version_policy
    assert policy == VersionPolicy(specific=["1"])


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (VersionPolicy(), ["10"]),
        (VersionPolicy(latest=2), ["9", "10"]),
        (VersionPolicy(latest=10), ["1", "2", "9", "10"]),
        (VersionPolicy(all=True), ["1", "2", "9", "10"]),
        (VersionPolicy(specific=["2", "10", "404"]), ["2", "10"]),
    ],
)
def test_version_policy_select(policy: VersionPolicy, expected: list[str]) -> None:
    assert policy.select(["1", "2", "9", "10"]) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('version_policy = "all"', VersionPolicy(all=True)),
        ('version_policy = "latest"', VersionPolicy(latest=1)),
    ],
)
def test_version_policy_shorthands(tmp_path: Path, text: str, expected: VersionPolicy) -> None:
    model_file = _write(tmp_path / "model.toml", text + "\n")
    assert merge_model_config(ServerConfig(), "m", model_file).version_policy == expected


def test_version_policy_allows_one_choice_only(tmp_path: Path) -> None:
    model_file = _write(tmp_path / "model.toml", "version_policy = { latest = 2, all = true }\n")
    with pytest.raises(ConfigError, match="only one of latest, all, specific") as info:
        merge_model_config(ServerConfig(), "m", model_file)
    assert info.value.details["file"] == str(model_file)


def test_unknown_key_names_file_key_and_expectation(tmp_path: Path) -> None:
    path = _write(tmp_path / "ladle.toml", "[server]\nport = 8000\nprot = 9000\n")
    with pytest.raises(ConfigError) as info:
        load_server_config(path)
    error = info.value
    assert str(path) in error.message
    assert "server.prot" in error.message
    assert error.details["file"] == str(path)
    assert error.details["problems"] == [{"key": "server.prot", "expected": "unknown key", "got": "9000"}]


def test_wrong_type_names_file_key_and_expectation(tmp_path: Path) -> None:
    path = _write(tmp_path / "ladle.toml", '[server]\nport = "eighty"\n')
    with pytest.raises(ConfigError) as info:
        load_server_config(path)
    (problem,) = info.value.details["problems"]
    assert problem["key"] == "server.port"
    assert "integer" in problem["expected"]
    assert "eighty" in problem["got"]
    assert str(path) in info.value.message


def test_out_of_range_value_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "ladle.toml", "[server]\nport = 70000\n")
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_server_config(path)


def test_bad_model_file_is_blamed_not_the_merge(tmp_path: Path) -> None:
    model_file = _write(
        tmp_path / "models" / "m" / "model.toml", 'instances = 0\nexecutor = "gpu"\nbogus = 1\n'
    )
    with pytest.raises(ConfigError) as info:
        merge_model_config(ServerConfig(defaults={"instances": 2}), "m", model_file)
    error = info.value
    assert error.details["file"] == str(model_file)
    keys = {p["key"]: p["expected"] for p in error.details["problems"]}
    assert set(keys) == {"instances", "executor", "bogus"}
    assert keys["bogus"] == "unknown key"
    assert "greater than or equal to 1" in keys["instances"]
    assert "'thread' or 'process'" in keys["executor"]


def test_bad_models_table_names_its_section(tmp_path: Path) -> None:
    path = _write(tmp_path / "ladle.toml", "[models.m]\nthreads = -1\n")
    server = load_server_config(path)  # model sections are validated when the model is planned
    with pytest.raises(ConfigError) as info:
        merge_model_config(server, "m", None)
    assert info.value.details["file"] == f"{path} [models.m]"
    assert info.value.details["problems"][0]["key"] == "threads"


def test_bad_defaults_table_names_its_section(tmp_path: Path) -> None:
    path = _write(tmp_path / "ladle.toml", '[defaults]\ntimeout = "soon"\n')
    with pytest.raises(ConfigError) as info:
        merge_model_config(load_server_config(path), "m", None)
    assert info.value.details["file"] == f"{path} [defaults]"
    assert info.value.details["problems"][0]["key"] == "timeout"


@pytest.mark.parametrize("name", ["ladle.toml", "model.toml"])
def test_toml_syntax_error_names_the_file(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, "[server\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        if name == "ladle.toml":
            load_server_config(path)
        else:
            merge_model_config(ServerConfig(), "m", path)
    assert str(path) in info.value.message
    assert "line 1" in info.value.message
    assert info.value.details["file"] == str(path)


def test_missing_server_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_server_config(path)
    assert info.value.details["file"] == str(path)


def test_configs_are_immutable() -> None:
    config = ModelConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.instances = 3  # type: ignore[misc]
