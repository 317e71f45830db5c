"""The stats layer: windowed per-version figures, fed once per batch, read by controllers and exporters.

Figures live in metric *families* (``ladle.telemetry.families``); every series of the built-in
families carries the model and version. The built-in families are the ``ladle.*`` names below;
later families (generation, routers) add their own through ``histogram_family``,
``counter_family`` and ``gauge_family`` and feed them per batch or per step; exporters publish
every family without further wiring.

Controllers and scalers read ``StatsRegistry.window(model, version, seconds)``; worker processes
record into their own registry and ship ``take_delta()`` to the front process, which ``merge``\\ s it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..scaling import VersionMetrics
from .families import (
    ATTR_ERROR,
    ATTR_MODEL,
    ATTR_PROTOCOL,
    ATTR_STATUS,
    ATTR_VERSION,
    Attributes,
    CounterFamily,
    GaugeFamily,
    HistogramFamily,
    MetricFamily,
    version_attributes,
)
from .series import DEFAULT_LATENCY_BOUNDS, HistogramSnapshot, SlotClock, WindowedCounter, WindowedHistogram

__all__ = ["StatsDelta", "StatsRegistry", "VersionStats", "WindowStats", "finite_or_none"]

#: A plain-data delta of a registry (picklable and JSON-serialisable).
StatsDelta = dict[str, Any]

#: The built-in families.
REQUESTS = "ladle.requests"
REQUEST_DURATION = "ladle.request.duration"
QUEUE_DURATION = "ladle.queue.duration"
BATCH_DURATION = "ladle.batch.duration"
BATCH_SIZE = "ladle.batch.size"
BATCH_REQUESTS = "ladle.batch.requests"
QUEUE_DEPTH = "ladle.queue.depth"
ACTIVE_BATCHES = "ladle.active_batches"
INSTANCE_COUNT = "ladle.instance.count"
RESPONSES = "ladle.responses"

_ROW_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_GAUGES = {"queue_depth": QUEUE_DEPTH, "in_flight": ACTIVE_BATCHES, "instances": INSTANCE_COUNT}


@dataclass(frozen=True)
class WindowStats:
    """Figures of one version over the last ``seconds`` (times in seconds; ``None`` without data).

    Latency and queue-time percentiles cover requests that ran; requests dropped before running
    (shed, deadline passed, cancelled) count in ``requests``, ``errors`` and ``dropped``.
    """

    model: str
    version: str
    seconds: float
    requests: int = 0
    request_rate: float = 0.0
    errors: int = 0
    error_ratio: float = 0.0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None
    latency_mean: float | None = None
    queue_p50: float | None = None
    queue_p95: float | None = None
    queue_p99: float | None = None
    batches: int = 0
    batch_rate: float = 0.0
    batch_duration_mean: float | None = None
    batch_rows_mean: float | None = None
    batch_requests_mean: float | None = None
    queue_depth: float | None = None
    in_flight: float | None = None
    instances: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_version_metrics(self) -> VersionMetrics:
        """The figures a scaling policy reads."""
        return VersionMetrics(
            model=self.model,
            version=self.version,
            instances=int(self.instances or 0),
            queue_depth=int(self.queue_depth or 0),
            in_flight=int(self.in_flight or 0),
            request_rate=self.request_rate,
            p95_latency=self.latency_p95 or 0.0,
            error_ratio=self.error_ratio,
        )


class VersionStats:
    """Direct handles on one version's series, so per-batch recording does no lookups."""

    __slots__ = (
        "_failures",
        "_ok",
        "_registry",
        "_shared",
        "batch_duration",
        "batch_requests",
        "batch_rows",
        "clock",
        "created",
        "key",
        "latency",
        "model",
        "queue",
        "succeeded",
        "version",
    )

    def __init__(self, registry: StatsRegistry, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self.key = version_attributes(model, version)
        self.created = time.monotonic()
        self._registry = registry
        self.clock = clock = SlotClock(registry.horizon, 1.0, self.created)
        self.succeeded = registry.requests.get(self.key, clock)
        self.latency = registry.request_duration.get(self.key, clock=clock)
        self.queue = registry.queue_duration.get(self.key, clock=clock)
        self.batch_duration = registry.batch_duration.get(self.key, clock=clock)
        self.batch_rows = registry.batch_size.get(self.key, clock=clock)
        self.batch_requests = registry.batch_requests.get(self.key, clock=clock)
        self._failures: dict[str, WindowedCounter] = {}
        self._ok: dict[str, WindowedCounter] = {}
        # a series someone recorded into before this version was set up keeps its own clock
        self._shared = all(
            series.clock is clock
            for series in (
                self.succeeded,
                self.latency,
                self.queue,
                self.batch_duration,
                self.batch_rows,
                self.batch_requests,
            )
        )

    def ok(self, protocol: str) -> WindowedCounter:
        """The counter of answers (status 200) by ``protocol`` that this version computed."""
        counter = self._ok.get(protocol)
        if counter is None:
            attributes = {ATTR_PROTOCOL: protocol or "in-process", ATTR_STATUS: "200"}
            key = version_attributes(self.model, self.version, attributes)
            counter = self._registry.responses.get(key, clock=self.clock)
            self._ok[protocol] = counter
        return counter

    def failed(self, code: str) -> WindowedCounter:
        """The counter of requests that ended with error ``code``."""
        counter = self._failures.get(code)
        if counter is None:
            counter = self._registry.requests.get((*self.key, (ATTR_ERROR, code)))
            self._failures[code] = counter
        return counter

    def record_batch(
        self,
        requests: Sequence[Any],
        started: float,
        finished: float,
        errors: Sequence[str | None],
    ) -> None:
        """Record one finished batch: the hot path of the stats layer (plain list arithmetic, one
        slot lookup for all of the version's series)."""
        index = self.clock.index(finished) if self._shared else -1
        if index < 0:  # finished before the ring's oldest slot, or series on clocks of their own
            self._record_each(requests, started, finished, errors)
            return
        count = len(requests)
        if count == 1:  # the common case under light load: no lists at all
            request = requests[0]
            arrival = request.arrival
            self.latency.add_at(index, finished - arrival)
            self.queue.add_at(index, started - arrival)
            rows = request.rows
        else:
            arrivals = [r.arrival for r in requests]
            self.latency.add_many_at(index, [finished - a for a in arrivals])
            self.queue.add_many_at(index, [started - a for a in arrivals])
            rows = sum([r.rows for r in requests])
        self.batch_duration.add_at(index, finished - started)
        self.batch_rows.add_at(index, rows)
        self.batch_requests.add_at(index, count)
        ok = errors.count(None)
        if ok:
            self.succeeded.add_at(index, ok)
            protocol = requests[0].protocol
            if ok == count and (count == 1 or [r.protocol for r in requests].count(protocol) == count):
                series = self._ok.get(protocol)
                if series is None:
                    series = self.ok(protocol)
                series.add_at(index, count)
            else:
                for request, code in zip(requests, errors, strict=True):
                    if code is None:
                        self.ok(request.protocol).add_at(index, 1)
        if ok != count:
            for code in errors:
                if code is not None:
                    self.failed(code).add(1, finished)

    def _record_each(
        self, requests: Sequence[Any], started: float, finished: float, errors: Sequence[str | None]
    ) -> None:
        self.latency.observe_many([finished - r.arrival for r in requests], finished)
        self.queue.observe_many([started - r.arrival for r in requests], finished)
        self.batch_duration.observe(finished - started, finished)
        self.batch_rows.observe(sum(r.rows for r in requests), finished)
        self.batch_requests.observe(len(requests), finished)
        for request, code in zip(requests, errors, strict=True):
            if code is None:
                self.succeeded.add(1, finished)
                self.ok(request.protocol).add(1, finished)
            else:
                self.failed(code).add(1, finished)

    def record_dropped(self, count: int, code: str, now: float) -> None:
        self.failed(code).add(count, now)

    def window(self, seconds: float, now: float | None = None) -> WindowStats:
        now = time.monotonic() if now is None else now
        registry = self._registry
        succeeded = int(self.succeeded.window(seconds, now))
        by_type: dict[str, int] = {}
        width = len(self.key)
        for key, counter in list(registry.requests.series.items()):
            if len(key) == width + 1 and key[:width] == self.key and key[width][0] == ATTR_ERROR:
                count = int(counter.window(seconds, now))
                if count:
                    by_type[key[width][1]] = count
        errors = sum(by_type.values())
        total = succeeded + errors
        span = max(1.0, min(seconds, now - self.created))
        latency = self.latency.window(seconds, now)
        queue = self.queue.window(seconds, now)
        batch = self.batch_duration.window(seconds, now)
        rows = self.batch_rows.window(seconds, now)
        per_batch = self.batch_requests.window(seconds, now)
        return WindowStats(
            model=self.model,
            version=self.version,
            seconds=seconds,
            requests=total,
            request_rate=total / span,
            errors=errors,
            error_ratio=errors / total if total else 0.0,
            errors_by_type=by_type,
            latency_p50=latency.quantile(0.5),
            latency_p95=latency.quantile(0.95),
            latency_p99=latency.quantile(0.99),
            latency_mean=latency.mean,
            queue_p50=queue.quantile(0.5),
            queue_p95=queue.quantile(0.95),
            queue_p99=queue.quantile(0.99),
            batches=batch.count,
            batch_rate=batch.count / span,
            batch_duration_mean=batch.mean,
            batch_rows_mean=rows.mean,
            batch_requests_mean=per_batch.mean,
            queue_depth=registry.queue_depth.read(self.key),
            in_flight=registry.active_batches.read(self.key),
            instances=registry.instance_count.read(self.key),
        )


class StatsRegistry:
    """Every family and every version's stats; one per process.

    ``horizon`` is the longest window kept (seconds); ``latency_bounds`` are the bucket bounds of
    the duration histograms.
    """

    def __init__(
        self, horizon: float = 300.0, latency_bounds: Sequence[float] = DEFAULT_LATENCY_BOUNDS
    ) -> None:
        self.horizon = float(horizon)
        self.latency_bounds = tuple(float(b) for b in latency_bounds)
        self.families: dict[str, MetricFamily] = {}
        self._versions: dict[tuple[str, str], VersionStats] = {}
        self._listeners: list[Callable[[MetricFamily], None]] = []
        self._lock = threading.RLock()
        bounds = self.latency_bounds
        self.requests = self.counter_family(
            REQUESTS, "{request}", "Requests finished, by error.type (absent on success)"
        )
        self.request_duration = self.histogram_family(
            REQUEST_DURATION, "s", "Time from a request's arrival to the end of its batch", bounds
        )
        self.queue_duration = self.histogram_family(
            QUEUE_DURATION, "s", "Time from a request's arrival to the start of its batch", bounds
        )
        self.batch_duration = self.histogram_family(
            BATCH_DURATION, "s", "Time a batch spent in the runtime instance", bounds
        )
        self.batch_size = self.histogram_family(BATCH_SIZE, "{row}", "Rows per batch", _ROW_BOUNDS)
        self.batch_requests = self.histogram_family(
            BATCH_REQUESTS, "{request}", "Requests per batch", _ROW_BOUNDS
        )
        self.queue_depth = self.gauge_family(
            QUEUE_DEPTH, "{request}", "Requests waiting in the batcher's queue"
        )
        self.active_batches = self.gauge_family(ACTIVE_BATCHES, "{batch}", "Batches running on instances")
        self.instance_count = self.gauge_family(INSTANCE_COUNT, "{instance}", "Ready instances")
        self.responses = self.counter_family(
            RESPONSES,
            "{response}",
            "Every answer, refused ones included, by model, version, protocol and status code",
        )

    # families ------------------------------------------------------------------------------------

    def _add(self, family: MetricFamily) -> MetricFamily:
        with self._lock:
            existing = self.families.get(family.name)
            if existing is not None:
                if existing.describe() | {"description": ""} != family.describe() | {"description": ""}:
                    raise ValueError(
                        f"metric family {family.name!r} is already defined differently: {existing.describe()}"
                    )
                return existing
            self.families[family.name] = family
            listeners = list(self._listeners)
        for listener in listeners:
            listener(family)
        return family

    def histogram_family(
        self,
        name: str,
        unit: str,
        description: str,
        bounds: Sequence[float] | None = None,
        slot_seconds: float = 1.0,
        horizon: float | None = None,
    ) -> HistogramFamily:
        """Define (or get) a histogram family; ``bounds`` default to the latency bounds, ``horizon``
        (the longest window kept, seconds) to the registry's."""
        family = self._add(
            HistogramFamily(
                name, unit, description, bounds or self.latency_bounds, horizon or self.horizon, slot_seconds
            )
        )
        assert isinstance(family, HistogramFamily)
        return family

    def counter_family(
        self, name: str, unit: str, description: str, slot_seconds: float = 1.0
    ) -> CounterFamily:
        """Define (or get) a counter family."""
        family = self._add(CounterFamily(name, unit, description, self.horizon, slot_seconds))
        assert isinstance(family, CounterFamily)
        return family

    def gauge_family(self, name: str, unit: str, description: str) -> GaugeFamily:
        """Define (or get) a gauge family."""
        family = self._add(GaugeFamily(name, unit, description))
        assert isinstance(family, GaugeFamily)
        return family

    def add_listener(self, listener: Callable[[MetricFamily], None]) -> None:
        """Call ``listener`` with every family, now and whenever one is added (exporters use this)."""
        with self._lock:
            self._listeners.append(listener)
            families = list(self.families.values())
        for family in families:
            listener(family)

    def histograms(self) -> list[HistogramFamily]:
        return [f for f in list(self.families.values()) if isinstance(f, HistogramFamily)]

    # versions ------------------------------------------------------------------------------------

    def version(self, model: str, version: str) -> VersionStats:
        """The stats of a version, created on first use."""
        stats = self._versions.get((model, version))
        if stats is None:
            with self._lock:
                stats = self._versions.setdefault((model, version), VersionStats(self, model, version))
        return stats

    def versions(self) -> list[tuple[str, str]]:
        return sorted(self._versions)

    def register_gauges(
        self,
        model: str,
        version: str,
        *,
        queue_depth: Callable[[], float | None] | None = None,
        in_flight: Callable[[], float | None] | None = None,
        instances: Callable[[], float | None] | None = None,
    ) -> None:
        """Callbacks read at collection time for a version's queue depth, batches in flight, instances."""
        self.version(model, version)
        key = version_attributes(model, version)
        for name, callback in (
            ("queue_depth", queue_depth),
            ("in_flight", in_flight),
            ("instances", instances),
        ):
            if callback is not None:
                family = self.families[_GAUGES[name]]
                assert isinstance(family, GaugeFamily)
                family.register(key, callback)

    def remove(self, model: str, version: str) -> None:
        """Forget a version's series (its figures leave the exports)."""
        prefix = version_attributes(model, version)
        with self._lock:
            self._versions.pop((model, version), None)
            families = list(self.families.values())
        for family in families:
            family.remove(lambda key: key[: len(prefix)] == prefix)

    def window(
        self, model: str, version: str, seconds: float = 60.0, now: float | None = None
    ) -> WindowStats:
        """Figures of one version over the last ``seconds`` (at most ``horizon``)."""
        if not 0 < seconds <= self.horizon:
            raise ValueError(f"window must be in (0, {self.horizon:g}] seconds, got {seconds:g}")
        return self.version(model, version).window(seconds, now)

    def windows(self, seconds: float = 60.0, now: float | None = None) -> list[WindowStats]:
        """Figures of every version over the last ``seconds``."""
        now = time.monotonic() if now is None else now
        return [self.window(m, v, seconds, now) for m, v in self.versions()]

    def family_window(
        self, name: str, model: str, version: str, seconds: float, attributes: Mapping[str, str] | None = None
    ) -> HistogramSnapshot | float | None:
        """A histogram family's window snapshot, a counter family's windowed sum or a gauge's value."""
        family = self.families.get(name)
        key = version_attributes(model, version, attributes)
        now = time.monotonic()
        if isinstance(family, HistogramFamily):
            return family.get(key).window(seconds, now)
        if isinstance(family, CounterFamily):
            return family.get(key).window(seconds, now)
        if isinstance(family, GaugeFamily):
            return family.read(key)
        raise KeyError(name)

    # merging across processes --------------------------------------------------------------------

    def take_delta(self) -> StatsDelta:
        """Move out everything recorded since the last call (plain data: pickles and serialises).

        A worker process calls this periodically and sends the result to the front process.
        Gauges travel as their current values.
        """
        families: list[dict[str, Any]] = []
        for family in list(self.families.values()):
            entry = family.describe()
            if isinstance(family, HistogramFamily | CounterFamily):
                recorded: list[tuple[Attributes, WindowedHistogram | WindowedCounter]]
                recorded = list(family.series.items())
                entry["series"] = [[list(map(list, key)), series.take_delta()] for key, series in recorded]
            elif isinstance(family, GaugeFamily):
                entry["series"] = [[list(map(list, key)), value] for key, value in family.points()]
            if entry["series"]:
                families.append(entry)
        return {"families": families}

    def merge(self, delta: StatsDelta) -> None:
        """Add a delta from another registry; families it defines that this one lacks are created."""
        for entry in delta["families"]:
            name, kind = entry["name"], entry["kind"]
            if kind == "histogram":
                family: MetricFamily = self.histogram_family(
                    name,
                    entry["unit"],
                    entry["description"],
                    entry["bounds"],
                    entry["slot_seconds"],
                    entry["horizon"],
                )
            elif kind == "counter":
                family = self.counter_family(name, entry["unit"], entry["description"], entry["slot_seconds"])
            else:
                family = self.gauge_family(name, entry["unit"], entry["description"])
            for raw_key, data in entry["series"]:
                key: Attributes = tuple((str(k), str(v)) for k, v in raw_key)
                if len(key) >= 2 and key[0][0] == ATTR_MODEL and key[1][0] == ATTR_VERSION:
                    self.version(key[0][1], key[1][1])
                if isinstance(family, HistogramFamily):
                    family.get(key, data["bounds"]).merge_delta(data)
                elif isinstance(family, CounterFamily):
                    family.get(key).merge_delta(data)
                elif isinstance(family, GaugeFamily):
                    family.values[key] = float(data)


def finite_or_none(value: float | None) -> float | None:
    """``None`` for missing or non-finite numbers (JSON has no NaN)."""
    return value if value is not None and math.isfinite(value) else None
