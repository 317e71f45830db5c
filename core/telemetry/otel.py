"""The OpenTelemetry export surface of the stats layer (needs ``ladle[telemetry]``).

A ``MeterProvider`` of its own (never the global one) reads the stats registry at collection
time only: counter and gauge families become observable instruments; histogram families, which
OpenTelemetry Python cannot observe asynchronously, are added to each collection by the readers
themselves (``_receive_metrics``, the SDK's hook for reader subclasses), as cumulative histogram
points built from the registry's bucket counts. The same data reaches every reader: the
Prometheus reader behind ``/metrics`` and, when configured, the periodic OTLP/HTTP exporter.

Prometheus names follow the exporter's translation of OpenTelemetry names and units:
``ladle.request.duration`` (unit ``s``) becomes ``ladle_request_duration_seconds``,
``ladle.requests`` becomes ``ladle_requests_total``, annotations such as ``{row}`` are dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .. import __version__
from .families import CounterFamily, GaugeFamily, MetricFamily, iter_points
from .stats import StatsRegistry

__all__ = ["MetricsExport", "augmenting_reader"]

SCOPE = "ladle"


def _histogram_metrics(stats: StatsRegistry) -> list[Any]:
    from opentelemetry.sdk.metrics.export import AggregationTemporality, Histogram, HistogramDataPoint, Metric

    now = time.time_ns()
    metrics = []
    for family in stats.histograms():
        points = [
            HistogramDataPoint(
                attributes=dict(key),
                start_time_unix_nano=int(started * 1e9),
                time_unix_nano=now,
                count=snapshot.count,
                sum=snapshot.total,
                bucket_counts=list(snapshot.counts),
                explicit_bounds=list(snapshot.bounds),
                min=snapshot.minimum,
                max=snapshot.maximum,
            )
            for key, snapshot, started in iter_points(family)
        ]
        if points:
            metrics.append(
                Metric(
                    name=family.name,
                    description=family.description,
                    unit=family.unit,
                    data=Histogram(
                        data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE
                    ),
                )
            )
    return metrics


def with_histograms(data: Any, stats: StatsRegistry, resource: Any) -> Any:
    """``data`` (a ``MetricsData`` or ``None``) plus the registry's histograms, in the ``ladle`` scope."""
    from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    extra = _histogram_metrics(stats)
    if not extra:
        return data
    resource_metrics = list(data.resource_metrics) if data is not None else []
    if not resource_metrics:
        scope = ScopeMetrics(InstrumentationScope(SCOPE, __version__), extra, "")
        return MetricsData([ResourceMetrics(resource, [scope], "")])
    first = resource_metrics[0]
    scopes = list(first.scope_metrics)
    for index, scope_metrics in enumerate(scopes):
        if scope_metrics.scope.name == SCOPE:
            scopes[index] = ScopeMetrics(
                scope_metrics.scope, [*scope_metrics.metrics, *extra], scope_metrics.schema_url
            )
            break
    else:
        scopes.append(ScopeMetrics(InstrumentationScope(SCOPE, __version__), extra, ""))
    resource_metrics[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
    return MetricsData(resource_metrics)


def augmenting_reader(base: Any) -> Any:
    """A subclass of the metric reader class ``base`` whose collections include the histograms.

    Instances take ``augment=`` (``MetricsData -> MetricsData``) besides ``base``'s arguments.
    """

    class AugmentingReader(base):  # type: ignore[misc]
        def __init__(self, *args: Any, augment: Callable[[Any], Any], **kwargs: Any) -> None:
            self._augment = augment
            super().__init__(*args, **kwargs)

        def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> None:
            super()._receive_metrics(self._augment(metrics_data), timeout_millis=timeout_millis, **kwargs)

    AugmentingReader.__name__ = f"Ladle{base.__name__}"
    return AugmentingReader


class MetricsExport:
    """Meter provider and readers over one stats registry.

    ``prometheus``: keep a Prometheus registry for ``/metrics``; ``otlp_endpoint``: base URL of an
    OTLP/HTTP collector to push to every ``otlp_interval`` seconds; ``readers``: reader *classes*
    with their keyword arguments, augmented too (tests use the in-memory reader).
    """

    def __init__(
        self,
        stats: StatsRegistry,
        *,
        service_name: str = "ladle",
        prometheus: bool = True,
        otlp_endpoint: str | None = None,
        otlp_headers: dict[str, str] | None = None,
        otlp_timeout: float = 10.0,
        otlp_interval: float = 30.0,
        readers: Sequence[tuple[type[Any], dict[str, Any]]] = (),
    ) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource

        self.stats = stats
        self.resource = Resource.create({"service.name": service_name, "service.version": __version__})

        def augment(data: Any) -> Any:
            return with_histograms(data, stats, self.resource)

        self._readers: list[Any] = []
        self.prometheus_registry: Any = None
        self._scrape_lock = threading.Lock()
        if prometheus:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            self.prometheus_registry = CollectorRegistry(auto_describe=False)
            self._readers.append(
                augmenting_reader(PrometheusMetricReader)(
                    augment=augment, registry=self.prometheus_registry, scope_info_enabled=False
                )
            )
        if otlp_endpoint and otlp_interval > 0:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            exporter = OTLPMetricExporter(
                endpoint=f"{otlp_endpoint.rstrip('/')}/v1/metrics",
                headers=otlp_headers or None,
                timeout=otlp_timeout,
            )
            self._readers.append(
                augmenting_reader(PeriodicExportingMetricReader)(
                    exporter, augment=augment, export_interval_millis=otlp_interval * 1000
                )
            )
        self.extra_readers = [augmenting_reader(cls)(augment=augment, **kwargs) for cls, kwargs in readers]
        self._readers.extend(self.extra_readers)
        self.provider = MeterProvider(metric_readers=self._readers, resource=self.resource)
        self.meter = self.provider.get_meter(SCOPE, __version__)
        stats.add_listener(self._instrument)

    def _instrument(self, family: MetricFamily) -> None:
        """Observable instruments for counter and gauge families (histograms come from the readers)."""
        from opentelemetry.metrics import Observation

        if isinstance(family, CounterFamily):

            def counters(_options: Any, family: CounterFamily = family) -> Iterator[Observation]:
                for key, series in list(family.series.items()):
                    yield Observation(series.total(), dict(key))

            self.meter.create_observable_counter(
                family.name, [counters], unit=family.unit, description=family.description
            )
        elif isinstance(family, GaugeFamily):

            def gauges(_options: Any, family: GaugeFamily = family) -> Iterator[Observation]:
                for key, value in family.points():
                    yield Observation(value, dict(key))

            self.meter.create_observable_gauge(
                family.name, [gauges], unit=family.unit, description=family.description
            )

    def prometheus_text(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when ``accept`` asks) and its content type."""
        from prometheus_client.exposition import choose_encoder

        if self.prometheus_registry is None:
            raise RuntimeError("Prometheus export is off")
        encoder, content_type = choose_encoder(accept or "")
        with self._scrape_lock:  # the exporter's collector is not safe for concurrent scrapes
            return encoder(self.prometheus_registry), content_type

    def force_flush(self, timeout_millis: float = 10_000) -> None:
        self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.provider.shutdown()
