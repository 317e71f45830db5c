"""The fixed scaler: a constant instance count, placed in this host on threads or worker processes.

- The policy's desired count is constant whatever the load: an operator's count for the version
  (a deployment's ``resources.replicas``, ``ladle scale``) if one was given, else the policy's
  ``instances`` option (1-256) if set, else the model's ``instances``.
- The placement runs each instance on a dedicated thread of the front process or in a worker
  process of its own (one CUDA context each), as the model's ``executor`` says (``"thread"`` or
  ``"process"``). It takes no options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from ladle import (
    Instance,
    ModelConfig,
    Placement,
    PluginHost,
    PluginOptions,
    RuntimeSpec,
    ScalingPolicy,
    VersionMetrics,
    make_executor,
    parse_options,
)

__all__ = ["FixedOptions", "FixedPlacement", "FixedPolicy"]


class FixedOptions(PluginOptions):
    """Options of the fixed policy."""

    instances: int | None = Field(default=None, ge=1, le=256, description="default: the model's")


class FixedPolicy(ScalingPolicy):
    """Desired instances = the requested count, else ``instances``, whatever the load."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.settings = parse_options(FixedOptions, options, "scaling policy 'fixed'")

    def desired(self, metrics: VersionMetrics) -> int:
        if metrics.requested is not None:
            return metrics.requested
        fixed = self.settings.instances
        return fixed if fixed is not None else metrics.configured


class FixedPlacement(Placement):
    """Creates instances in this host: a thread or a worker process each (the model's ``executor``)."""

    def __init__(self, options: Mapping[str, Any], host: PluginHost) -> None:
        super().__init__(options, host)
        parse_options(PluginOptions, options, "placement 'fixed'")

    def create(self, spec: RuntimeSpec, index: int, config: ModelConfig) -> Instance:
        parse_options(PluginOptions, config.placement.options, f"placement 'fixed' of model {spec.model!r}")
        return Instance(spec, make_executor(config.executor, spec, self.host), name=str(index))
