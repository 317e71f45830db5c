"""The fixed scaler: a constant instance count, placed in this host on threads or worker processes.

Options (the same table configures both; each reads what it needs):

- ``instances`` (int, 1-256, default 1): the policy's desired count, whatever the load;
- ``executor`` (``"thread"``, the default, or ``"process"``): the placement runs each instance on a
  dedicated thread of the front process or in a worker process of its own (one CUDA context each).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ladle.config import validation_error
from ladle.instance import Instance, make_executor
from ladle.plugin_host import PluginHost
from ladle.runtime import RuntimeSpec
from ladle.scaling import Placement, ScalingPolicy, VersionMetrics

__all__ = ["FixedOptions", "FixedPlacement", "FixedPolicy"]


class FixedOptions(BaseModel):
    """Options of the fixed policy and placement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instances: int = Field(default=1, ge=1, le=256)
    executor: Literal["thread", "process"] = "thread"


def _parse(options: Mapping[str, Any], what: str) -> FixedOptions:
    try:
        return FixedOptions.model_validate(dict(options))
    except ValidationError as exc:
        raise validation_error(f"{what} options", exc) from None


class FixedPolicy(ScalingPolicy):
    """Desired instances = ``instances``, whatever the metrics say."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.settings = _parse(options, "scaling policy 'fixed'")

    def desired(self, metrics: VersionMetrics) -> int:
        return self.settings.instances


class FixedPlacement(Placement):
    """Creates instances in this host: a thread or a worker process each (``executor``)."""

    def __init__(self, options: Mapping[str, Any], host: PluginHost) -> None:
        super().__init__(options, host)
        self.settings = _parse(options, "placement 'fixed'")

    def create(self, spec: RuntimeSpec, index: int) -> Instance:
        executor = make_executor(self.settings.executor, spec, self.host)
        return Instance(spec, executor, name=str(index))
