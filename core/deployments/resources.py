"""What a deployment asks of the machine (``resources``), and the design brief's view of a deployment.

``POST /api/v1/deployments`` takes ``"resources": {"gpu": "A100", "replicas": 4}``:

- ``replicas`` (1-256) is the version's instance count: it starts with that many, the fixed policy
  keeps them, an autoscaling policy takes them as its floor. ``ladle scale`` changes it later.
- ``gpu`` names the GPU kind the version needs (matched, ignoring case, within the names NVML or
  ``nvidia-smi`` report, so ``"A100"`` matches ``"NVIDIA A100-SXM4-80GB"``). On a machine without
  such a GPU the deployment is refused with 409, naming the GPUs the machine has; nothing loads.
  The model's ``device`` still decides where it runs.

Each version of ``GET /api/v1/deployments/{name}`` also appears in ``deployments`` in the brief's
data model: ``deployment_id``, ``model_name``, ``version``, ``status`` (``deploying`` while it loads,
``active`` once it serves or stands by, ``draining`` while it is being unloaded; ``failed`` or
``retired`` for records of versions that are not loaded), ``replicas`` (desired), ``ready_replicas``,
``gpu_type``, ``traffic_pct`` and ``created_at``.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidRequestError
from ..gpus import machine_gpus
from ..options import validation_error
from .errors import ConflictError
from .events import iso_time
from .store import DeploymentRecord

if TYPE_CHECKING:
    from ..scaling_loop import ScalingLoop
    from ..serving import ModelEndpoint, VersionEndpoint

__all__ = [
    "DeploymentResources",
    "check_gpu",
    "deployment_view",
    "machine_gpu_names",
    "parse_resources",
    "stored_resources",
    "versions_view",
]


class DeploymentResources(BaseModel):
    """``resources`` of ``POST /api/v1/deployments``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: str | None = Field(default=None, min_length=1, max_length=64)
    replicas: int | None = Field(default=None, ge=1, le=256, strict=True)


def parse_resources(raw: DeploymentResources | dict[str, Any] | None) -> DeploymentResources | None:
    if raw is None or isinstance(raw, DeploymentResources):
        return raw
    try:
        return DeploymentResources.model_validate(raw)
    except ValidationError as exc:
        error = validation_error("resources", exc)
        raise InvalidRequestError(error.message, problems=error.details.get("problems", [])) from None


def stored_resources(options: dict[str, Any]) -> DeploymentResources | None:
    """The resources a deployment record's options hold (``None`` when it has none, or bad ones)."""
    raw = options.get("resources")
    if not isinstance(raw, dict):
        return None
    try:
        return DeploymentResources.model_validate(raw)
    except ValidationError:
        return None


@functools.cache
def machine_gpu_names() -> tuple[str, ...]:
    """The names of this machine's GPUs: NVML's (``ladle[nvml]``), else ``nvidia-smi``'s, else none.
    Read once per process."""
    gpus = machine_gpus()
    if gpus is not None:
        return tuple(gpu.name or f"GPU {gpu.index}" for gpu in gpus)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    if done.returncode != 0:
        return ()
    return tuple(line.strip() for line in done.stdout.splitlines() if line.strip())


def check_gpu(kind: str, names: tuple[str, ...] | None = None) -> str:
    """The first GPU named like ``kind``; ``ConflictError`` (409) naming what the machine has."""
    names = machine_gpu_names() if names is None else names
    wanted = kind.strip().lower()
    for name in names:
        if wanted in name.lower():
            return name
    if names:
        counts: dict[str, int] = {}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        have = "it has " + ", ".join(f"{n}x {name}" for name, n in counts.items())
    else:
        have = "it has no GPU"
    raise ConflictError(
        f"resources.gpu {kind!r}: this machine has no such GPU ({have}); deploy where one is, "
        "or leave resources.gpu out",
        gpu=kind,
        available=list(names),
    )


def deployment_view(
    model: str,
    version: str,
    *,
    status: str,
    replicas: int,
    ready_replicas: int,
    gpu_type: str | None,
    traffic: float,
    created_at: float | None,
) -> dict[str, Any]:
    """One version in the design brief's data model."""
    return {
        "deployment_id": f"{model}:{version}",
        "model_name": model,
        "version": version,
        "status": status,
        "replicas": replicas,
        "ready_replicas": ready_replicas,
        "gpu_type": gpu_type,
        "traffic_pct": traffic,
        "created_at": iso_time(created_at) if created_at else None,
    }


def _gpu_type(served: VersionEndpoint | None, record: DeploymentRecord | None) -> str | None:
    wanted = stored_resources(record.options) if record is not None else None
    if wanted is not None and wanted.gpu is not None:
        return wanted.gpu
    if served is None or not served.config.device.startswith("cuda"):
        return None
    _, _, index = served.config.device.partition(":")
    names = machine_gpu_names()
    position = int(index) if index.isdigit() else 0
    return names[position] if position < len(names) else "cuda"


def versions_view(
    model: str,
    versions: list[dict[str, Any]],
    endpoint: ModelEndpoint | None,
    records: list[DeploymentRecord],
    scaling: ScalingLoop | None,
    deploying: Mapping[tuple[str, str], float],
    traffic: Mapping[str, float],
) -> list[dict[str, Any]]:
    """Add each served version's replica figures to its entry of ``versions`` (``replicas``,
    ``ready_replicas``, ``scaling``), and return every version in the brief's data model, with the
    versions being deployed or drained right now."""
    by_version = {record.version: record for record in records}
    controls = scaling.controls if scaling is not None else {}
    view: list[dict[str, Any]] = []
    for entry in versions:
        version = entry["version"]
        served = endpoint.versions.get(version) if endpoint is not None else None
        record = by_version.get(version)
        if served is not None and (model, version) in controls and scaling is not None:
            figures = scaling.describe(model, version)
            replicas, ready = figures["replicas"], figures["ready_replicas"]
            entry["scaling"] = figures
        elif served is not None:
            replicas = len(served.replicas.instances)
            ready = sum(1 for i in served.replicas.instances if i.ready)
        else:
            replicas = ready = 0
        entry["replicas"], entry["ready_replicas"] = replicas, ready
        status = "active" if served is not None else (record.status if record is not None else "draining")
        created = (
            record.created_at if record is not None else (served.loaded_at if served is not None else None)
        )
        view.append(
            deployment_view(
                model,
                version,
                status=status,
                replicas=replicas,
                ready_replicas=ready,
                gpu_type=_gpu_type(served, record),
                traffic=float(traffic.get(version, 0.0)),
                created_at=created,
            )
        )
    listed = {entry["version"] for entry in versions}
    for (name, version), control in list(controls.items()):
        if name == model and version not in listed and not control.served():
            view.append(
                deployment_view(
                    model,
                    version,
                    status="draining",
                    replicas=0,
                    ready_replicas=control.ready,
                    gpu_type=_gpu_type(control.endpoint, by_version.get(version)),
                    traffic=0.0,
                    created_at=control.endpoint.loaded_at,
                )
            )
    for (name, version), since in list(deploying.items()):
        if name == model and version not in listed:
            view.append(
                deployment_view(
                    model,
                    version,
                    status="deploying",
                    replicas=0,
                    ready_replicas=0,
                    gpu_type=None,
                    traffic=0.0,
                    created_at=since,
                )
            )
    return view
