"""Configuration: ``ladle.toml`` for the server and ``<model>/model.toml`` for each model.

Precedence, lowest first (a later source overrides an earlier one, key by key):

1. built-in defaults (this module);
2. ``[defaults]`` in ``ladle.toml``;
3. ``REPO/<model>/model.toml``;
4. ``[models.<model>]`` in ``ladle.toml``.

Tables (``batcher``, ``router``, ``placement``, ``options``, ``signature``, ``resources``) merge key
by key; every other key is replaced. Unknown keys are errors, reported with the file, the key and what
was expected.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .gpus import memory_bytes
from .options import validation_error

__all__ = [
    "MODEL_CONFIG_FILE",
    "SERVER_CONFIG_FILE",
    "ModelConfig",
    "PluginChoice",
    "Resources",
    "ServerConfig",
    "VersionPolicy",
    "load_server_config",
    "merge_model_config",
    "validation_error",
]

SERVER_CONFIG_FILE = "ladle.toml"
DEFAULT_BATCHER = "dynamic"
MODEL_CONFIG_FILE = "model.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginChoice(BaseModel):
    """A plugin by name plus its own options (the plugin validates those)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class VersionPolicy(_Strict):
    """Which versions of a model to serve: the latest N (default 1), all, or a specific list."""

    latest: int | None = Field(default=None, ge=1)
    all: bool = False
    specific: list[str] | None = None

    @model_validator(mode="after")
    def _one_choice(self) -> VersionPolicy:
        chosen = sum([self.latest is not None, self.all, self.specific is not None])
        if chosen > 1:
            raise ValueError("set only one of latest, all, specific")
        return self

    def select(self, versions: list[str]) -> list[str]:
        """The versions to serve, from a naturally sorted list."""
        if self.all:
            return list(versions)
        if self.specific is not None:
            return [v for v in versions if v in self.specific]
        return versions[-(self.latest or 1) :]


class Resources(_Strict):
    """What one instance needs from its GPU: ``gpu_memory`` (``"20GiB"``, ``"500MB"`` or bytes; a
    measured figure replaces it once the instance ran), ``gpu_share`` (the fraction of the GPU's SMs
    it should get, 0 < x <= 1) and ``gpus`` (GPUs per instance)."""

    gpu_memory: int | None = None
    gpu_share: float | None = Field(default=None, gt=0, le=1)
    gpus: int = Field(default=1, ge=1, strict=True)

    @field_validator("gpu_memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Any:
        return None if value is None else memory_bytes(value)


class ModelConfig(_Strict):
    """Settings of one model; every field is optional so sources can be layered."""

    runtime: str | None = None
    executor: Literal["thread", "process"] = "thread"
    instances: int = Field(default=1, ge=1, le=256)
    device: str = "cpu"
    threads: int | None = Field(default=None, ge=1)
    trust_code: bool = False
    timeout: float = Field(default=30.0, gt=0, description="default deadline of a request, seconds")
    version_policy: VersionPolicy = VersionPolicy()
    batcher: PluginChoice = PluginChoice(name=DEFAULT_BATCHER)
    router: PluginChoice = PluginChoice(name="single")
    split_router: str = Field(
        default="canary",
        description="the router a traffic split switches to when the model's router cannot split weights",
    )
    placement: PluginChoice = PluginChoice(name="fixed")
    signature: dict[str, Any] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    traffic: dict[str, float] = Field(
        default_factory=dict,
        description="static split, percent per version (sums to 100); needs a weighted router",
    )
    resilience: dict[str, Any] = Field(
        default_factory=dict, description="circuit breaker, fallback and response cache (ladle.deployments)"
    )
    resources: Resources = Resources()

    @field_validator("version_policy", mode="before")
    @classmethod
    def _policy_shorthand(cls, value: Any) -> Any:
        if value == "all":
            return {"all": True}
        if value == "latest":
            return {"latest": 1}
        return value

    @field_validator("batcher", "router", "placement", mode="before")
    @classmethod
    def _choice_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class ServerSection(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    repository: str = "models"
    state: str | None = Field(default=None, description="deployment store file; set for managed mode")
    api_token: str | None = None
    data_plane_token: bool = False
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    drain_timeout: float = Field(default=30.0, ge=0)


class PluginsSection(_Strict):
    disabled: list[str] = Field(default_factory=list)
    modules: list[str] = Field(default_factory=list)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ServerConfig(_Strict):
    """The whole of ``ladle.toml``; ``source`` is the file it came from (``None`` for defaults)."""

    server: ServerSection = ServerSection()
    plugins: PluginsSection = PluginsSection()
    defaults: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    telemetry: dict[str, Any] = Field(default_factory=dict)
    source: str | None = None

    @property
    def base_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()

    @property
    def repository_path(self) -> Path:
        path = Path(self.server.repository)
        return path if path.is_absolute() else self.base_dir / path

    def plugin_options(self, name: str) -> dict[str, Any]:
        return dict(self.plugins.options.get(name, {}))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}", file=str(path)) from None


def load_server_config(path: Path | None) -> ServerConfig:
    """Read and validate ``ladle.toml``; ``None`` gives the embedded defaults."""
    if path is None:
        return ServerConfig()
    data = _read_toml(path)
    try:
        return ServerConfig.model_validate({**data, "source": str(path)})
    except ValidationError as exc:
        raise validation_error(str(path), exc) from None


_BUILTIN: dict[str, Any] = {
    "batcher": {"name": DEFAULT_BATCHER},
    "router": {"name": "single"},
    "placement": {"name": "fixed"},
}
_TABLES = (
    "traffic",
    "resilience",
    "batcher",
    "router",
    "placement",
    "options",
    "signature",
    "version_policy",
    "resources",
)


def _layer(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if key in _TABLES and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            if key == "version_policy":
                merged[key] = dict(value)  # a policy is one choice, never a blend of two
            else:
                merged[key] = {**merged[key], **value}
        elif key in ("batcher", "router", "placement") and isinstance(value, str):
            merged[key] = {"name": value}
        else:
            merged[key] = value
    return merged


def merge_model_config(server: ServerConfig, model: str, model_file: Path | None) -> ModelConfig:
    """Layer the sources in documented precedence and validate the result."""
    layers: list[tuple[str, Mapping[str, Any]]] = []
    server_file = server.source or SERVER_CONFIG_FILE
    if server.defaults:
        layers.append((f"{server_file} [defaults]", server.defaults))
    if model_file is not None and model_file.is_file():
        layers.append((str(model_file), _read_toml(model_file)))
    if model in server.models:
        layers.append((f"{server_file} [models.{model}]", server.models[model]))
    merged: dict[str, Any] = dict(_BUILTIN)
    for source, layer in layers:
        try:
            ModelConfig.model_validate(_layer(_BUILTIN, layer))
        except ValidationError as exc:
            raise validation_error(source, exc) from None
        merged = _layer(merged, layer)
    try:
        return ModelConfig.model_validate(merged)
    except ValidationError as exc:
        raise validation_error(" + ".join(s for s, _ in layers) or "defaults", exc) from None
