"""The two scaler contracts: a policy (metrics -> desired instances) and a placement (where they run)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .instance import Instance
from .plugin_host import PluginHost
from .runtime import RuntimeSpec

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
    """Decides where instances run and creates them there."""

    def __init__(self, options: Mapping[str, Any], host: PluginHost) -> None:
        self.options = dict(options)
        self.host = host

    @abstractmethod
    def create(self, spec: RuntimeSpec, index: int) -> Instance:
        """A new, not yet started instance of ``spec`` (the caller starts and registers it)."""

    def initial_instances(self, configured: int) -> int:
        """How many instances to start with."""
        return configured
