"""The two scaler contracts: a policy (metrics -> desired instances) and a placement (where they run)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .instance import Instance
from .plugin_host import PluginHost
from .runtime import RuntimeSpec

if TYPE_CHECKING:
    from .config import ModelConfig

__all__ = ["Placement", "ScalingPolicy", "VersionMetrics"]


@dataclass(frozen=True)
class VersionMetrics:
    """Windowed figures of one version, as the stats layer keeps them."""

    model: str
    version: str
    instances: int
    queue_depth: int = 0
    in_flight: int = 0
    request_rate: float = 0.0
    p95_latency: float = 0.0
    error_ratio: float = 0.0


class ScalingPolicy(ABC):
    """Turns windowed metrics into a desired instance count (scale up fast, down slowly)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)

    @abstractmethod
    def desired(self, metrics: VersionMetrics) -> int:
        """The number of instances this version should have now."""


class Placement(ABC):
    """Decides where instances run and creates them there.

    One placement object serves the whole server for every version whose config names it, so it
    can pack several models onto one device. ``options`` are its server-wide options (the
    ``[plugins.options.<name>]`` table); each model's own placement options are in
    ``config.placement.options`` of the config handed to ``create``.
    """

    def __init__(self, options: Mapping[str, Any], host: PluginHost) -> None:
        self.options = dict(options)
        self.host = host

    @abstractmethod
    def create(self, spec: RuntimeSpec, index: int, config: ModelConfig) -> Instance:
        """A new, not yet started instance of ``spec`` (the caller starts and registers it)."""

    def describe(self) -> dict[str, Any]:
        """Where instances run now (for status listings and ``GET /api/v1/placement``)."""
        return {}

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the placement holds (daemons, clusters); called once at shutdown."""
