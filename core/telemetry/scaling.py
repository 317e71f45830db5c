"""Figures of the scaling loop and the supervisor, in the stats layer (exported like every family).

Gauges, read at collection time: ``ladle.ongoing_requests`` (queued + running requests; Prometheus
``ladle_ongoing_requests``, what the rendered Kubernetes autoscalers target),
``ladle.instance.desired`` (the count the scaling loop aims for; ``ladle.instance.count`` is the
ready count), ``ladle.predicted_wait`` (seconds a normal-priority request arriving now is predicted
to wait for its answer). Counters: ``ladle.instance.restarts`` (failed instances replaced, by
``ladle.restart.reason``; ``ladle_instance_restarts_total``) and ``ladle.scale.events`` (changes of
the desired count, by ``ladle.scale.direction`` and ``ladle.scale.reason``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .families import Attributes, CounterFamily, GaugeFamily, version_attributes
from .stats import StatsRegistry

__all__ = [
    "DESIRED",
    "ONGOING",
    "PREDICTED_WAIT",
    "RESTARTS",
    "SCALE_EVENTS",
    "ScalingFigures",
    "scaling_snapshot",
]

ONGOING = "ladle.ongoing_requests"
DESIRED = "ladle.instance.desired"
PREDICTED_WAIT = "ladle.predicted_wait"
RESTARTS = "ladle.instance.restarts"
SCALE_EVENTS = "ladle.scale.events"
ATTR_DIRECTION = "ladle.scale.direction"
ATTR_SCALE_REASON = "ladle.scale.reason"
ATTR_RESTART_REASON = "ladle.restart.reason"


class ScalingFigures:
    """Registers a version's scaling gauges and counts its restarts and scale events."""

    def __init__(self, stats: StatsRegistry) -> None:
        self.stats = stats
        self.restarts: CounterFamily = stats.counter_family(
            RESTARTS, "{restart}", "Failed instances replaced, by reason"
        )
        self.scale_events: CounterFamily = stats.counter_family(
            SCALE_EVENTS, "{event}", "Changes of a version's desired instance count, by direction and reason"
        )
        self._ongoing = stats.gauge_family(ONGOING, "{request}", "Requests queued plus running")
        self._desired = stats.gauge_family(DESIRED, "{instance}", "Instances the scaling loop aims for")
        self._wait = stats.gauge_family(
            PREDICTED_WAIT, "s", "Predicted wait of a normal-priority request arriving now"
        )

    def register(
        self,
        model: str,
        version: str,
        *,
        ongoing: Callable[[], float | None],
        desired: Callable[[], float | None],
        predicted_wait: Callable[[], float | None],
    ) -> None:
        key = version_attributes(model, version)
        self.stats.version(model, version)
        self._ongoing.register(key, ongoing)
        self._desired.register(key, desired)
        self._wait.register(key, predicted_wait)

    def restarted(self, model: str, version: str, reason: str) -> None:
        self.restarts.add(model, version, 1, time.monotonic(), {ATTR_RESTART_REASON: reason})

    def scaled(self, model: str, version: str, direction: str, reason: str) -> None:
        attributes = {ATTR_DIRECTION: direction, ATTR_SCALE_REASON: reason}
        self.scale_events.add(model, version, 1, time.monotonic(), attributes)


def _sum(family: CounterFamily, prefix: Attributes, seconds: float | None, now: float) -> int:
    total = 0.0
    for key, series in list(family.series.items()):
        if key[: len(prefix)] == prefix:
            total += series.total() if seconds is None else series.window(seconds, now)
    return int(total)


def scaling_snapshot(stats: StatsRegistry, model: str, version: str, seconds: float) -> dict[str, Any]:
    """A version's scaling figures for ``GET /api/v1/stats``: ongoing requests, desired instances,
    predicted wait, restarts (in the window and since start) and scale events in the window."""
    key = version_attributes(model, version)
    now = time.monotonic()
    figures: dict[str, Any] = {}
    gauges = (("ongoing", ONGOING), ("desired_instances", DESIRED), ("predicted_wait", PREDICTED_WAIT))
    for field, name in gauges:
        gauge = stats.families.get(name)
        figures[field] = gauge.read(key) if isinstance(gauge, GaugeFamily) else None
    counters = (
        ("restarts", RESTARTS, seconds),
        ("restarts_total", RESTARTS, None),
        ("scale_events", SCALE_EVENTS, seconds),
    )
    for field, name, window in counters:
        counter = stats.families.get(name)
        figures[field] = _sum(counter, key, window, now) if isinstance(counter, CounterFamily) else 0
    return figures
