"""The two scaler contracts: a policy (metrics -> desired instances) and a placement (where they run).

The core's scaling loop (``ladle.scaling_loop``) asks each served version's policy, every tick, for
a desired count from a ``VersionMetrics`` reading, and applies the answer through the version's
placement: new instances are created with ``Placement.create``, loaded and warmed off the replica
set and join it once ready; removed ones leave the set first, drain, then stop. The supervisor
(``ladle.supervisor``) replaces failed instances through the same ``create``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .instance import Instance
from .packing import InstanceKey, Move
from .plugin_host import PluginHost
from .runtime import RuntimeSpec

if TYPE_CHECKING:
    from .config import ModelConfig

__all__ = ["Placement", "ScalingPolicy", "VersionMetrics"]


@dataclass(frozen=True)
class VersionMetrics:
    """One reading of a version, taken by the scaling loop at ``now``.

    ``instances`` is the count in effect (ready plus starting); ``ready_instances`` those serving.
    ``queue_depth`` and ``in_flight`` are requests queued and running now, ``ongoing`` their sum.
    The windowed figures (``request_rate``, latencies, ``error_ratio``) cover the policy's
    ``window`` seconds of the stats layer (zero or ``None`` when telemetry is off or nothing ran).
    ``configured`` is the config's ``instances``; ``requested`` an operator's count for this version
    (a deployment's ``resources.replicas`` or ``ladle scale``), ``None`` when none was given.
    """

    model: str
    version: str
    instances: int
    queue_depth: int = 0
    in_flight: int = 0
    request_rate: float = 0.0
    p95_latency: float = 0.0
    error_ratio: float = 0.0
    ready_instances: int = 0
    p99_latency: float | None = None
    configured: int = 1
    requested: int | None = None
    #: ``time.monotonic()`` of the reading: policies measure their delays in these seconds.
    now: float = 0.0
    #: The model's latency objectives missed now (``"p99"``, ``"ttft"``, ``"itl"``; see ``latency_slo``).
    slo_breached: tuple[str, ...] = ()

    @property
    def ongoing(self) -> int:
        """Requests queued plus running now."""
        return self.queue_depth + self.in_flight


class ScalingPolicy(ABC):
    """Turns metrics into a desired instance count (scale up fast, down slowly).

    One policy object per served version, so it may keep state between ticks (how long the load
    has been low, say). ``desired`` is called on every tick of the scaling loop, and once more when
    a request finds a version with no instance (a version scaled to zero: the reading then counts
    that request); it must be quick and must not block.
    """

    #: Seconds of stats-layer history the windowed figures of ``VersionMetrics`` cover.
    window: ClassVar[float] = 10.0

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)
        #: Why the last answer differs from ``metrics.instances`` (a short, low-cardinality word:
        #: ``"load"``, ``"latency"``, ``"idle"``, ``"bounds"``); events and metrics carry it.
        self.reason = ""

    @abstractmethod
    def desired(self, metrics: VersionMetrics) -> int:
        """The number of instances this version should have now (0 scales it to zero)."""


class Placement(ABC):
    """Decides where instances run and creates them there.

    One placement object serves the whole server for every version whose config names it, so it
    can pack several models onto one device. ``options`` are its server-wide options (the
    ``[plugins.options.<name>]`` table); each model's own placement options are in
    ``config.placement.options`` of the config handed to ``create``.

    The supervisor and the scaling loop use it through four calls: ``create`` for every new or
    replacement instance (a replacement keeps the index of the one it replaces; raising a
    ``LadleError`` refuses the instance, and the loop backs off), ``affected`` when an instance
    fails, ``health`` and ``take_moves`` on every tick. An instance gives its room back when it
    stops (its executor's ``stop``).
    """

    def __init__(self, options: Mapping[str, Any], host: PluginHost) -> None:
        self.options = dict(options)
        self.host = host

    @abstractmethod
    def create(self, spec: RuntimeSpec, index: int, config: ModelConfig) -> Instance:
        """A new, not yet started instance of ``spec`` (the caller starts and registers it)."""

    def affected(self, model: str, version: str, instance: int) -> list[InstanceKey]:
        """The instances a failure of this one takes down with it (itself by default; under MPS,
        every instance on its GPU). The supervisor replaces all of them."""
        return [(model, version, instance)]

    def health(self) -> list[InstanceKey]:
        """Running instances to rebuild now because something they share failed (a daemon, a
        device); polled every tick. None by default."""
        return []

    def take_moves(self) -> list[Move]:
        """Running instances a re-plan moved since the last call; each is drained and created
        again (same index), so ``create`` places it where the plan now says. None by default."""
        return []

    def describe(self) -> dict[str, Any]:
        """Where instances run now (for status listings and ``GET /api/v1/placement``)."""
        return {}

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the placement holds (daemons, clusters); called once at shutdown."""
