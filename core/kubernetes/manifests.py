"""From a ladle config to manifests on disk: a dry run that touches no cluster."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..errors import ConfigError
from . import custom, workload
from .options import RenderOptions
from .plan import ServicePlan

__all__ = ["FILE_NAMES", "Manifest", "Rendered", "render", "to_yaml", "write"]

#: object kind -> file name, in the order ``kubectl apply -f DIR`` reads them
FILE_NAMES = {
    "ConfigMap": "10-configmap.yaml",
    "Deployment": "20-deployment.yaml",
    "Service": "30-service.yaml",
    "ServingRuntime": "20-servingruntime.yaml",
    "InferenceService": "30-inferenceservice.yaml",
    "PodDisruptionBudget": "40-poddisruptionbudget.yaml",
    "ScaledObject": "50-scaledobject.yaml",
    "HorizontalPodAutoscaler": "50-horizontalpodautoscaler.yaml",
}


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object in its wire form."""

    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def file_name(self) -> str:
        return FILE_NAMES[self.kind]


@dataclass(frozen=True)
class Rendered:
    plan: ServicePlan
    options: RenderOptions
    manifests: tuple[Manifest, ...]

    def by_kind(self, kind: str) -> dict[str, Any]:
        (found,) = [m.obj for m in self.manifests if m.kind == kind]
        return found


def render(plan: ServicePlan, options: RenderOptions) -> Rendered:
    """The manifests serving ``plan`` (from ``plan_service``) as ``options`` asks."""
    if not plan.metrics and options.autoscaler != "none":
        raise ConfigError(
            "autoscaling reads ladle_ongoing_requests from /metrics, which [telemetry] turns off; "
            "enable [telemetry] metrics, or render without an autoscaler",
            key="telemetry.metrics",
        )
    objects = [workload.config_map(plan, options)]
    if options.kserve:
        objects += [custom.serving_runtime(plan, options), custom.inference_service(plan, options)]
        pods, target = custom.kserve_pod_labels(options), custom.kserve_target(options)
    else:
        objects += [workload.deployment(plan, options), workload.service(plan, options)]
        pods, target = workload.selector(options), options.name
    objects.append(workload.disruption_budget(options, pods))
    if options.autoscaler == "hpa":
        objects.append(workload.horizontal_autoscaler(plan, options, target))
    elif options.autoscaler == "keda":
        objects.append(custom.scaled_object(plan, options, target))
    return Rendered(plan, options, tuple(Manifest(obj) for obj in objects))


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML ships no type hints
    """Block style throughout; multi-line strings (the ConfigMap's ladle.toml) as literal blocks."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def to_yaml(manifests: Iterable[Manifest]) -> str:
    """One YAML stream, a document per object."""
    header = f"# Rendered by `ladle k8s render` (ladle {__version__}); a dry run, nothing was applied.\n"
    documents = [yaml.dump(m.obj, Dumper=_Dumper, sort_keys=False, width=110) for m in manifests]
    return header + "---\n".join(documents)


def write(rendered: Rendered, directory: Path, *, replace: bool = False) -> list[Path]:
    """Write one file per object into ``directory``; a folder that holds other files is refused
    unless ``replace``, which removes earlier renders' files first (so a switch from KEDA to an HPA
    leaves no stale ScaledObject behind) and keeps anything else."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is not a folder", key="out")
    present = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
    if present and not replace:
        raise ConfigError(f"{directory} is not empty (pass --force to replace an earlier render)", key="out")
    directory.mkdir(parents=True, exist_ok=True)
    for name in set(FILE_NAMES.values()) & set(present):
        (directory / name).unlink()
    written = []
    for manifest in rendered.manifests:
        path = directory / manifest.file_name
        path.write_text(to_yaml([manifest]))
        written.append(path)
    return written
