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
    "JobsSection",
    "ModelConfig",
    "PluginChoice",
    "Resources",
    "ServerConfig",
    "Speculative",
    "Supervision",
    "VersionPolicy",
    "load_server_config",
    "merge_model_config",
    "model_config_sources",
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


class Supervision(_Strict):
    """How the supervisor replaces a model's failed instances (``ladle.supervisor``): the first
    failure within ``restart_window`` seconds is replaced at once, each further one after ``backoff``
    seconds doubling up to ``max_backoff``; a version with more than ``max_restarts`` failures in the
    window is *exhausted* (still retried, every ``max_backoff``), and a model whose versions are all
    exhausted with no ready instance makes ``/v2/health/live`` answer 503."""

    backoff: float = Field(default=1.0, gt=0, description="seconds before the second replacement")
    max_backoff: float = Field(default=60.0, gt=0)
    max_restarts: int = Field(default=5, ge=1, description="failures in the window before giving up")
    restart_window: float = Field(default=600.0, gt=0, description="seconds failures are counted over")


class Speculative(_Strict):
    """Speculative decoding: ``draft`` names another model of the repository with the same tokenizer
    that proposes ``num_tokens`` tokens per decoding sequence and step, which this model verifies
    (checked when the config is merged: ``ladle.speculative``)."""

    draft: str | None = Field(default=None, description="the draft model's name in the repository")
    num_tokens: int = Field(default=4, ge=1, le=16, description="draft tokens per sequence and step")


class LatencySlo(_Strict):
    """A model's latency objectives, in seconds: ``p99`` of whole requests; for generative models
    ``ttft`` (time to first token) and ``itl`` (time between tokens), both at the 95th percentile.
    Reported against in ``/api/v1/stats`` and ``ladle top``; a scaling policy reads a breach as a
    reason to add an instance (``VersionMetrics.slo_breached``)."""

    p99: float | None = Field(default=None, gt=0)
    ttft: float | None = Field(default=None, gt=0)
    itl: float | None = Field(default=None, gt=0)


class ModelConfig(_Strict):
    """Settings of one model; every field is optional so sources can be layered.

    ``instances`` is the fixed instance count; with an autoscaling ``scaling`` policy, the count a
    version starts with (and its floor unless the policy sets ``min_instances``).
    """

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
    scaling: PluginChoice = PluginChoice(name="fixed")
    supervision: Supervision = Supervision()
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
    speculative: Speculative | None = None
    latency_slo: LatencySlo | None = None

    @field_validator("version_policy", mode="before")
    @classmethod
    def _policy_shorthand(cls, value: Any) -> Any:
        if value == "all":
            return {"all": True}
        if value == "latest":
            return {"latest": 1}
        return value

    @field_validator("batcher", "router", "placement", "scaling", mode="before")
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
    # KServe V2 gRPC (ladle.grpc)
    grpc_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="gRPC port; 0: off; unset: 8001 under `ladle serve` when the grpc extra is installed",
    )
    grpc_max_message_bytes: int = Field(
        default=2**31 - 1, ge=1024, le=2**31 - 1, description="largest gRPC message, either way"
    )
    drain_timeout: float = Field(default=30.0, ge=0)
    drain_grace: float = Field(
        default=5.0,
        ge=0,
        description="seconds the server goes on answering after SIGTERM with readiness off",
    )
    # connection limits (ladle.http.limits)
    header_timeout: float = Field(default=5.0, gt=0, description="seconds to send a request's headers")
    body_timeout: float = Field(
        default=10.0, gt=0, description="seconds to send a body, plus one per min_body_rate bytes"
    )
    min_body_rate: int = Field(default=64 * 1024, ge=1, description="bytes per second a body may take")
    keep_alive_timeout: float = Field(default=5.0, gt=0, description="seconds an idle connection stays")
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=8)
    max_connections: int = Field(default=16384, ge=1)
    max_json_elements: int = Field(
        default=8 * 1024 * 1024, ge=1, description="values a JSON request body may hold"
    )
    keep_going: bool = Field(
        default=False,
        description="serve what loaded when a model's config or load fails (default: the start stops)",
    )
    strict_readiness: bool = Field(
        default=True,
        description="/v2/health/ready needs every model ready (false: any one model serving will do)",
    )


class PluginsSection(_Strict):
    disabled: list[str] = Field(default_factory=list)
    modules: list[str] = Field(default_factory=list)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)


class JobsSection(_Strict):
    """``[jobs]``: async jobs and the OpenAI Batch API (``ladle.jobs``); off until ``store`` is set."""

    store: str | None = Field(default=None, description="job store file (SQLite); unset: no jobs API")
    max_records: int = Field(default=1_000_000, ge=1, description="records (or batch lines) one job may hold")
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1024, description="largest uploaded batch file")
    retention: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="seconds a finished job's results and files are kept"
    )
    input_dirs: list[str] = Field(
        default_factory=list, description="folders that server-side input files may be read from"
    )
    callback_hosts: list[str] = Field(
        default_factory=list, description="hosts (or host:port) completion callbacks may be sent to"
    )
    concurrency: int = Field(
        default=4, ge=1, le=1024, description="job requests in flight, all jobs together"
    )
    batch_rows: int = Field(default=32, ge=1, le=65536, description="records per request of a predict job")
    request_timeout: float = Field(default=600.0, gt=0, description="deadline of one job request, seconds")
    work_share: float = Field(
        default=0.001,
        gt=0,
        le=1,
        description="share of the server's time the job runner's own work (store reads and writes, "
        "preparing records, result lines) takes while online requests arrive (1: no limit)",
    )


class ServerConfig(_Strict):
    """The whole of ``ladle.toml``; ``source`` is the file it came from (``None`` for defaults)."""

    server: ServerSection = ServerSection()
    plugins: PluginsSection = PluginsSection()
    defaults: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    telemetry: dict[str, Any] = Field(default_factory=dict)
    jobs: JobsSection = JobsSection()
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
    "scaling": {"name": "fixed"},
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
    "scaling",
    "supervision",
    "speculative",
    "latency_slo",
)


def _layer(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if key in _TABLES and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            if key == "version_policy":
                merged[key] = dict(value)  # a policy is one choice, never a blend of two
            else:
                merged[key] = {**merged[key], **value}
        elif key in ("batcher", "router", "placement", "scaling") and isinstance(value, str):
            merged[key] = {"name": value}
        else:
            merged[key] = value
    return merged


def _model_layers(
    server: ServerConfig, model: str, model_file: Path | None
) -> list[tuple[str, Mapping[str, Any]]]:
    """The sources of a model's config, lowest precedence first, each with its label."""
    layers: list[tuple[str, Mapping[str, Any]]] = []
    server_file = server.source or SERVER_CONFIG_FILE
    if server.defaults:
        layers.append((f"{server_file} [defaults]", server.defaults))
    if model_file is not None and model_file.is_file():
        layers.append((str(model_file), _read_toml(model_file)))
    if model in server.models:
        layers.append((f"{server_file} [models.{model}]", server.models[model]))
    return layers


def model_config_sources(server: ServerConfig, model: str, model_file: Path | None) -> dict[str, str]:
    """Which source last set each top-level key of a model's config (what an error names)."""
    return {key: source for source, layer in _model_layers(server, model, model_file) for key in layer}


def merge_model_config(
    server: ServerConfig, model: str, model_file: Path | None, *, with_draft: bool = True
) -> ModelConfig:
    """Layer the sources in documented precedence and validate the result.

    With a ``speculative`` table (and ``with_draft``), the draft model is checked against the
    repository and handed to the runtime (``ladle.speculative.resolve_draft``).
    """
    layers = _model_layers(server, model, model_file)
    merged: dict[str, Any] = dict(_BUILTIN)
    for source, layer in layers:
        try:
            ModelConfig.model_validate(_layer(_BUILTIN, layer))
        except ValidationError as exc:
            raise validation_error(source, exc) from None
        merged = _layer(merged, layer)
    try:
        config = ModelConfig.model_validate(merged)
    except ValidationError as exc:
        raise validation_error(" + ".join(s for s, _ in layers) or "defaults", exc) from None
    if with_draft and config.speculative is not None:
        from .speculative import resolve_draft  # it reads other models' config through this module

        config = resolve_draft(server, model, config, model_file)
    return config
