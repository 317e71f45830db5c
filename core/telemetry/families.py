"""Metric families: a named figure (a name, a unit, a kind) with one series per attribute set.

Histogram and counter families keep windowed series (``ladle.telemetry.series``) over a horizon;
gauge families read callbacks or stored values at collection time. Every built-in series carries
the model and version (``version_attributes``); the stats layer (``ladle.telemetry.stats``) holds
the families and feeds them, and exporters publish every family.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

from .series import HistogramSnapshot, SlotClock, WindowedCounter, WindowedHistogram

__all__ = [
    "ATTR_ERROR",
    "ATTR_MODEL",
    "ATTR_PROTOCOL",
    "ATTR_STATUS",
    "ATTR_VERSION",
    "Attributes",
    "CounterFamily",
    "GaugeFamily",
    "HistogramFamily",
    "MetricFamily",
    "WindowedFamily",
    "iter_points",
    "version_attributes",
]

#: Attribute names on exported series (OpenTelemetry style; ``error.type`` is the semantic-convention one).
ATTR_MODEL = "ladle.model.name"
ATTR_VERSION = "ladle.model.version"
ATTR_ERROR = "error.type"
ATTR_PROTOCOL = "ladle.protocol"
ATTR_STATUS = "http.response.status_code"

#: A series key: attribute (name, value) pairs in a fixed order.
Attributes = tuple[tuple[str, str], ...]

Kind = Literal["counter", "histogram", "gauge"]


def version_attributes(model: str, version: str, extra: Mapping[str, str] | None = None) -> Attributes:
    """The series key of a model version, with optional further attributes."""
    base: Attributes = ((ATTR_MODEL, model), (ATTR_VERSION, version))
    return base + tuple(sorted(extra.items())) if extra else base


class MetricFamily:
    """A named figure with one series per attribute set."""

    kind: Kind

    def __init__(self, name: str, unit: str, description: str) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "unit": self.unit, "description": self.description}

    def remove(self, match: Callable[[Attributes], bool]) -> None:
        """Drop every series whose key ``match`` accepts (a version was unloaded)."""


SeriesT = TypeVar("SeriesT")


class WindowedFamily(MetricFamily, Generic[SeriesT]):
    """A family whose series keep slots over ``horizon`` seconds (histograms and counters)."""

    def __init__(
        self, name: str, unit: str, description: str, horizon: float, slot_seconds: float = 1.0
    ) -> None:
        super().__init__(name, unit, description)
        self.horizon = horizon
        self.slot_seconds = slot_seconds
        self.series: dict[Attributes, SeriesT] = {}
        self.started: dict[Attributes, float] = {}

    def _create(self, key: Attributes, make: Callable[[], SeriesT]) -> SeriesT:
        """The series of ``key``, made by ``make`` unless another thread made it first."""
        with self._lock:
            series = self.series.get(key)
            if series is None:
                series = make()
                self.started[key] = time.time()
                self.series[key] = series
        return series

    def remove(self, match: Callable[[Attributes], bool]) -> None:
        with self._lock:
            for key in [k for k in self.series if match(k)]:
                del self.series[key]
                self.started.pop(key, None)


class HistogramFamily(WindowedFamily[WindowedHistogram]):
    """Fixed-bucket histograms (cumulative for export, windowed for controllers)."""

    kind: Kind = "histogram"

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        bounds: Sequence[float],
        horizon: float,
        slot_seconds: float = 1.0,
    ) -> None:
        super().__init__(name, unit, description, horizon, slot_seconds)
        self.bounds = tuple(float(b) for b in bounds)

    def get(
        self, key: Attributes, bounds: Sequence[float] | None = None, clock: SlotClock | None = None
    ) -> WindowedHistogram:
        """The series of ``key``, created on first use (hold on to it on hot paths).

        ``bounds`` give a new series bounds of its own (quality distributions have one set per
        feature); by default a series uses the family's. ``clock`` makes it share slots with the
        series recorded together with it (it must have the family's slot length).
        """
        series = self.series.get(key)
        if series is not None:
            return series
        return self._create(
            key,
            lambda: WindowedHistogram(
                self.bounds if bounds is None else bounds,
                self.horizon,
                self.slot_seconds,
                time.monotonic(),
                clock,
            ),
        )

    def record(
        self,
        model: str,
        version: str,
        values: Sequence[float],
        now: float | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        """Record a batch's (or a step's) values for one version."""
        if values:
            self.get(version_attributes(model, version, attributes)).observe_many(
                values, time.monotonic() if now is None else now
            )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "bounds": list(self.bounds),
            "slot_seconds": self.slot_seconds,
            "horizon": self.horizon,
        }


class CounterFamily(WindowedFamily[WindowedCounter]):
    """Monotonic counts (cumulative for export, windowed for controllers)."""

    kind: Kind = "counter"

    def get(self, key: Attributes, clock: SlotClock | None = None) -> WindowedCounter:
        """The series of ``key``, created on first use (``clock`` as for histograms)."""
        series = self.series.get(key)
        if series is not None:
            return series
        return self._create(
            key, lambda: WindowedCounter(self.horizon, self.slot_seconds, time.monotonic(), clock)
        )

    def add(
        self,
        model: str,
        version: str,
        amount: float,
        now: float | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        self.get(version_attributes(model, version, attributes)).add(
            amount, time.monotonic() if now is None else now
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "slot_seconds": self.slot_seconds}


class GaugeFamily(MetricFamily):
    """Current values: read from callbacks at collection time, or set by whoever knows them."""

    kind: Kind = "gauge"

    def __init__(self, name: str, unit: str, description: str) -> None:
        super().__init__(name, unit, description)
        self.callbacks: dict[Attributes, Callable[[], float | None]] = {}
        self.values: dict[Attributes, float] = {}

    def register(self, key: Attributes, callback: Callable[[], float | None]) -> None:
        with self._lock:
            self.callbacks[key] = callback

    def set(
        self, model: str, version: str, value: float, attributes: Mapping[str, str] | None = None
    ) -> None:
        """Set the current value (cheap: one dict store)."""
        self.values[version_attributes(model, version, attributes)] = value

    def read(self, key: Attributes) -> float | None:
        callback = self.callbacks.get(key)
        if callback is not None:
            try:
                return callback()
            except Exception:  # a gauge of something being torn down: skip it this time
                return None
        return self.values.get(key)

    def points(self) -> Iterator[tuple[Attributes, float]]:
        with self._lock:
            keys = list(dict.fromkeys([*self.callbacks, *self.values]))
        for key in keys:
            value = self.read(key)
            if value is not None:
                yield key, float(value)

    def remove(self, match: Callable[[Attributes], bool]) -> None:
        with self._lock:
            for key in [k for k in self.callbacks if match(k)]:
                del self.callbacks[key]
            for key in [k for k in self.values if match(k)]:
                del self.values[key]


def iter_points(family: HistogramFamily) -> Iterable[tuple[Attributes, HistogramSnapshot, float]]:
    """(key, cumulative snapshot, wall-clock start) of each series of a histogram family."""
    for key, series in list(family.series.items()):
        yield key, series.cumulative(), family.started.get(key, time.time())
