"""Kubernetes manifests from a ladle config: a renderer on the control path, with no side effects.

``render(plan_service(config), options)`` resolves every model exactly as ``ladle serve`` would (the
same config merge and repository plan) and builds the objects that run it: a ConfigMap holding the
pod's ``ladle.toml``, a Deployment and a Service (or, for KServe, a ServingRuntime and an
InferenceService in RawDeployment mode), a PodDisruptionBudget, and a KEDA ScaledObject or an
``autoscaling/v2`` HorizontalPodAutoscaler on ladle's ``ladle_ongoing_requests`` gauge. ``write``
puts them in a folder, one file per object, for ``kubectl apply -f DIR``.

Built-in objects are made with the official ``kubernetes`` client's models (the ``k8s`` extra).
Planning and options import no client; ``render``, ``to_yaml`` and ``write`` import it on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .options import DEFAULT_PROMETHEUS, RenderOptions, derive_name
from .plan import ModelNeeds, ServicePlan, plan_service

if TYPE_CHECKING:
    from .manifests import Manifest, Rendered, render, to_yaml, write

__all__ = [
    "DEFAULT_PROMETHEUS",
    "Manifest",
    "ModelNeeds",
    "RenderOptions",
    "Rendered",
    "ServicePlan",
    "derive_name",
    "plan_service",
    "render",
    "to_yaml",
    "write",
]

_RENDERING = {"Manifest", "Rendered", "render", "to_yaml", "write"}


def __getattr__(name: str) -> Any:
    if name in _RENDERING:
        return getattr(importlib.import_module(".manifests", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
