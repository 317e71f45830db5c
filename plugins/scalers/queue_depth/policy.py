"""The queue-depth scaling policy: instances follow the requests a version holds (queued + running).

Configured per model::

    scaling = { name = "queue-depth", min_instances = 1, max_instances = 4,
                target_ongoing_requests = 2, upscale_delay = 0, downscale_delay = 300 }

Exact semantics, on every tick of the scaling loop (times are seconds of the monotonic clock, so
they mean wall-clock seconds however often the loop ticks):

- **Load.** ``wanted = ceil(ongoing / target_ongoing_requests) + warm_pool``, where ``ongoing`` is
  the requests queued plus running at the reading.
- **Latency.** With ``latency_slo`` (seconds), a windowed p99 above it while requests are ongoing
  asks for one instance more than the current count, at most once per ``window`` seconds (the p99
  window, 10 s) so the new instance shows in the figure before another is added; it also holds
  off any scale-down.
- **Bounds.** ``wanted`` is clamped to ``[floor, max_instances]``. The floor is an operator's count
  for the version (a deployment's ``resources.replicas`` or ``ladle scale``) when one was given,
  else ``min_instances``, else the model's ``instances``. A count outside the bounds (the floor was
  raised, say) moves to them at once.
- **Up fast.** Once ``wanted`` has exceeded the current count for ``upscale_delay`` seconds (0: at
  once, within the tick), the count jumps to ``wanted`` in one step.
- **Down slowly.** Only after ``wanted`` has stayed below the current count for ``downscale_delay``
  seconds does the count drop, by one instance per tick while it stays below; any reading at or
  above the current count starts the wait over. Under a constant load the count therefore changes
  direction at most once per ``downscale_delay``.
- **Scale to zero.** With ``min_instances = 0`` an idle version drops to no instance; the first
  request then waits (bounded by its deadline) while one starts: a version with no instance and a
  request waiting scales up at once, whatever ``upscale_delay`` says.
- **Warm pool.** ``warm_pool`` instances are kept beyond what the load needs, ready for a spike
  (with ``min_instances = 0`` and ``warm_pool = 1``, an idle version keeps one warm instance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator

from ladle import PluginOptions, ScalingPolicy, VersionMetrics, parse_options

__all__ = ["QueueDepthOptions", "QueueDepthPolicy"]


class QueueDepthOptions(PluginOptions):
    """Options of the queue-depth policy (see the module docstring for their exact meaning)."""

    min_instances: int | None = Field(default=None, ge=0, le=256, description="default: the model's")
    max_instances: int = Field(default=4, ge=1, le=256)
    target_ongoing_requests: float = Field(default=2.0, gt=0, description="queued + running per instance")
    upscale_delay: float = Field(default=0.0, ge=0, description="seconds over target before scaling up")
    downscale_delay: float = Field(default=300.0, ge=0, description="seconds under target before down")
    latency_slo: float | None = Field(default=None, gt=0, description="p99 seconds")
    warm_pool: int = Field(default=0, ge=0, le=256, description="idle instances kept ready")

    @model_validator(mode="after")
    def _bounds(self) -> QueueDepthOptions:
        if self.min_instances is not None and self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) must be <= max_instances ({self.max_instances})"
            )
        return self


class QueueDepthPolicy(ScalingPolicy):
    """Scales on ongoing requests per instance; see the module docstring."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.settings = parse_options(QueueDepthOptions, options, "scaling policy 'queue-depth'")
        self._above: float | None = None  # since when the load has wanted more instances
        self._below: float | None = None  # since when it has wanted fewer
        self._latency_step = -math.inf  # when the latency SLO last added an instance

    def floor(self, metrics: VersionMetrics) -> int:
        """The fewest instances the version may have."""
        if metrics.requested is not None:
            return metrics.requested
        minimum = self.settings.min_instances
        return minimum if minimum is not None else metrics.configured

    def desired(self, metrics: VersionMetrics) -> int:
        settings = self.settings
        now = metrics.now
        current = metrics.instances
        floor = self.floor(metrics)
        ceiling = max(settings.max_instances, floor)
        ongoing = metrics.ongoing
        wanted = math.ceil(ongoing / settings.target_ongoing_requests) + settings.warm_pool
        reason = "load"
        slow = ongoing > 0 and (
            bool(metrics.slo_breached)  # the model's own latency_slo (p99, ttft, itl)
            or (
                settings.latency_slo is not None
                and metrics.p99_latency is not None
                and metrics.p99_latency > settings.latency_slo
            )
        )
        if slow and wanted <= current and now - self._latency_step >= self.window:
            wanted, reason = current + 1, "latency"
        target = min(max(wanted, floor), ceiling)
        if current < floor or current > ceiling:  # the bounds moved: follow them at once
            self._above = self._below = None
            self.reason = "bounds"
            return target
        if target > current:
            self._below = None
            if self._above is None:
                self._above = now
            if current == 0 or now - self._above >= settings.upscale_delay:
                self._above = None
                if reason == "latency":
                    self._latency_step = now
                self.reason = reason
                return target
            return current
        if target < current and not slow:
            self._above = None
            if self._below is None:
                self._below = now
            if now - self._below >= settings.downscale_delay:
                self.reason = reason
                return current - 1
            return current
        self._above = self._below = None
        return current
