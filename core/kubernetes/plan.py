"""What one ladle service asks of Kubernetes, read from its config exactly as ``ladle serve`` reads it.

``plan_service`` resolves every model through ``ModelRepository.plan`` (the merge of built-in
defaults, ``[defaults]``, ``model.toml`` and ``[models.<name>]`` that the server uses) and turns the
result into figures a pod needs: ports, GPUs, CPU and memory, how long start-up and a drain may take,
the per-model autoscaling targets, and the ``ladle.toml`` the pod reads. Nothing here imports the
Kubernetes client.

GPUs: a model whose device is ``cuda`` or ``cuda:N`` takes ``resources.gpus`` whole GPUs (default
one per model: its instances share that GPU); a model that declares ``resources.gpu_share`` instead
claims that fraction of a GPU per instance and version, and the claims of all such models are summed
and rounded up. An explicit ``cuda:N`` means at least N + 1 GPUs are visible to the pod.

Memory: 1 GiB for the interpreter and frameworks plus twice the bytes of every served version folder
(weights on disk and in memory while loading), rounded up to 256 MiB. CPU: the threads of every
instance (``instances`` x ``threads``). Both are estimates; ``RenderOptions`` can override them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..config import ModelConfig, ServerConfig
from ..errors import ConfigError
from ..plugin_host import PluginHost
from ..repository import ModelPlan, ModelRepository

__all__ = [
    "DEFAULT_DRAIN_GRACE",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_TARGET_ONGOING_REQUESTS",
    "POD_CONFIG_DIR",
    "POD_CONFIG_FILE",
    "POD_MODELS",
    "POD_WORKDIR",
    "ModelNeeds",
    "ServicePlan",
    "plan_service",
]

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_DRAIN_GRACE = 5.0
DEFAULT_TARGET_ONGOING_REQUESTS = 2.0
#: where the pod finds its config (a ConfigMap), its model repository and a writable folder
POD_CONFIG_DIR = "/etc/ladle"
POD_CONFIG_FILE = f"{POD_CONFIG_DIR}/ladle.toml"
POD_MODELS = "/models"
POD_WORKDIR = "/var/lib/ladle"

MiB = 1 << 20
GiB = 1 << 30
_BASE_MEMORY = GiB
_MEMORY_STEP = 256 * MiB
_BASE_STARTUP = 300  # seconds before the first model is ready, on top of 2 minutes per GiB of weights
_STARTUP_PER_GIB = 120
_KILL_MARGIN = 5  # seconds between the end of the longest drain and SIGKILL


@dataclass(frozen=True)
class ModelNeeds:
    """One served model as the pod sees it."""

    name: str
    versions: tuple[str, ...]
    runtimes: tuple[str, ...]
    device: str
    instances: int
    threads: int
    #: whole GPUs (0 on CPU, or when the model declares a share instead)
    gpus: int
    #: the fraction of one GPU that all its instances and versions claim together (0: none declared)
    gpu_share: float
    #: the highest ``cuda:N`` index it names, or -1
    gpu_index: int
    artifact_bytes: int
    #: queued + running requests one replica should hold (``scaling.target_ongoing_requests``)
    target_ongoing_requests: float

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


@dataclass(frozen=True)
class ServicePlan:
    """Everything the manifests are rendered from."""

    source: str
    models: tuple[ModelNeeds, ...]
    http_port: int
    grpc_port: int | None
    drain_timeout: float
    drain_grace: float
    metrics: bool
    #: an API token is configured: the pod reads ``LADLE_API_TOKEN`` from a Secret
    needs_token: bool
    #: the ``ladle.toml`` the pod reads, as data (repository, host and port set for the pod)
    pod_config: dict[str, Any]
    #: pip requirements of the runtimes served, e.g. ``ladle[xgboost]``
    requirements: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def gpus(self) -> int:
        """GPUs the pod requests (``nvidia.com/gpu``)."""
        whole = sum(m.gpus for m in self.models)
        shared = sum(m.gpu_share for m in self.models)
        count = whole + math.ceil(shared - 1e-9)
        highest = max((m.gpu_index for m in self.models), default=-1)
        return max(count, highest + 1)

    @property
    def cpu_cores(self) -> int:
        return max(1, sum(m.instances * m.threads for m in self.models))

    @property
    def artifact_bytes(self) -> int:
        return sum(m.artifact_bytes for m in self.models)

    @property
    def memory_bytes(self) -> int:
        wanted = _BASE_MEMORY + 2 * self.artifact_bytes
        return math.ceil(wanted / _MEMORY_STEP) * _MEMORY_STEP

    @property
    def startup_seconds(self) -> int:
        """How long the startup probe waits for every model to load and warm up."""
        return _BASE_STARTUP + _STARTUP_PER_GIB * math.ceil(self.artifact_bytes / GiB)

    @property
    def pre_stop_seconds(self) -> int:
        """The preStop sleep: endpoints drop the pod before it is sent SIGTERM."""
        return math.ceil(self.drain_grace)

    @property
    def termination_grace_seconds(self) -> int:
        """preStop sleep + ladle's own drain (readiness off for ``drain_grace``, then up to
        ``drain_timeout`` for requests in flight) + a margin before SIGKILL."""
        return self.pre_stop_seconds + math.ceil(self.drain_grace + self.drain_timeout) + _KILL_MARGIN

    @property
    def ladle_extras(self) -> tuple[str, ...]:
        """The extras of ladle itself among ``requirements`` (the image's ``LADLE_EXTRAS``)."""
        found = [r[len("ladle[") : -1] for r in self.requirements if r.startswith("ladle[")]
        return tuple(sorted(set(found)))


def _plugin_host(config: ServerConfig) -> PluginHost:
    """The plugin host the server would build for ``config``."""
    host = PluginHost(config.plugins.disabled)
    for module in config.plugins.modules:
        host.add_module(module)
    return host.discover()


def _folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _gpu_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else -1


def _model_needs(plan: ModelPlan) -> ModelNeeds:
    config: ModelConfig = plan.config
    on_gpu = config.device.startswith("cuda")
    resources = config.resources
    share = resources.gpu_share if on_gpu else None
    target = config.scaling.options.get("target_ongoing_requests", DEFAULT_TARGET_ONGOING_REQUESTS)
    return ModelNeeds(
        name=plan.name,
        versions=plan.versions,
        runtimes=tuple(sorted({spec.plugin for spec in plan.specs.values()})),
        device=config.device,
        instances=config.instances,
        threads=config.threads or 1,
        gpus=resources.gpus if on_gpu and share is None else 0,
        gpu_share=share * config.instances * len(plan.versions) if share is not None else 0.0,
        gpu_index=_gpu_index(config.device) if on_gpu else -1,
        artifact_bytes=sum(_folder_bytes(Path(spec.artifact)) for spec in plan.specs.values()),
        target_ongoing_requests=float(target or DEFAULT_TARGET_ONGOING_REQUESTS),
    )


def _in_workdir(value: str) -> str:
    """A writable file named relative to ``ladle.toml`` moves under the pod's writable folder."""
    return value if PurePosixPath(value).is_absolute() else f"{POD_WORKDIR}/{value}"


def _pod_config(config: ServerConfig, http_port: int, notes: list[str]) -> dict[str, Any]:
    """``config`` as the pod reads it: the repository at ``POD_MODELS``, bound on every address, no
    secret in plain text, writable files in ``POD_WORKDIR``."""
    from ..telemetry.config import parse_telemetry_config

    data = config.model_dump(
        mode="json", exclude={"source"}, exclude_unset=True, exclude_none=True, serialize_as_any=True
    )
    server = data.setdefault("server", {})
    server.update(host="0.0.0.0", port=http_port, repository=POD_MODELS)
    server.pop("api_token", None)
    if config.server.state is not None:
        server["state"] = _in_workdir(config.server.state)
        notes.append(
            f"[server] state is kept in {server['state']} on an emptyDir, one store per pod; "
            "managed mode across replicas needs a shared store"
        )
    telemetry = parse_telemetry_config(config.telemetry, config.source or "ladle.toml")
    if telemetry.logs.enabled:
        logs = data.setdefault("telemetry", {}).setdefault("logs", {})
        logs["path"] = _in_workdir(telemetry.logs.path)
    if any(not PurePosixPath(p).is_absolute() for p in telemetry.quality.references.values()):
        notes.append(
            "[telemetry.quality] references are relative to ladle.toml; ship them in the image "
            f"and name them by absolute path (the pod's ladle.toml is {POD_CONFIG_FILE})"
        )
    if config.plugins.modules:
        notes.append(f"the image must contain the plugin modules {config.plugins.modules}")
    return data


def plan_service(config: ServerConfig, host: PluginHost | None = None) -> ServicePlan:
    """Resolve every model of ``config`` as the server does; raises ``ConfigError`` as it would."""
    host = host if host is not None else _plugin_host(config)
    repository = ModelRepository(config.repository_path)
    plans = [repository.plan(name, config, host) for name in repository.models()]
    if not plans:
        raise ConfigError(
            f"model repository {config.repository_path} holds no model to serve", file=str(repository.root)
        )
    from ..telemetry.config import parse_telemetry_config

    telemetry = parse_telemetry_config(config.telemetry, config.source or "ladle.toml")
    section = config.server
    http_port = section.port or DEFAULT_HTTP_PORT
    grpc_port = (DEFAULT_GRPC_PORT if section.grpc_port is None else section.grpc_port) or None
    notes: list[str] = []
    models = tuple(_model_needs(plan) for plan in plans)
    requirements = set()
    for needs in models:
        for runtime in needs.runtimes:
            registration = host.get("runtime", runtime)
            if registration.extra:
                requirements.add(f"{registration.distribution or 'ladle'}[{registration.extra}]")
    if grpc_port is not None:
        requirements.add("ladle[grpc]")  # the pod serves the gRPC port the Service exposes
    return ServicePlan(
        source=config.source or str(config.repository_path),
        models=models,
        http_port=http_port,
        grpc_port=int(grpc_port) if grpc_port else None,
        drain_timeout=float(section.drain_timeout),
        drain_grace=float(section.drain_grace),
        metrics=telemetry.enabled and telemetry.metrics,
        needs_token=section.api_token is not None or section.data_plane_token,
        pod_config=_pod_config(config, http_port, notes),
        requirements=tuple(sorted(requirements)),
        notes=tuple(notes),
    )
