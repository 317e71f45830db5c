"""``Telemetry``: the one object a server owns for stats, metrics export, traces, quality and logs."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..batching import Batcher
from ..config import LatencySlo, ServerConfig
from ..envelope import InferenceRequest
from ..errors import ConfigError, MissingDependencyError
from ..tensors import Signature
from .config import TelemetryConfig, parse_telemetry_config
from .families import ATTR_MODEL, ATTR_PROTOCOL, ATTR_STATUS, ATTR_VERSION, version_attributes
from .inference_log import InferenceLog
from .observer import VersionObserver
from .quality import InputChecks, QualityMonitor, TensorReference, load_reference
from .resources import ResourceMonitor
from .scaling import scaling_snapshot
from .series import DEFAULT_LATENCY_BOUNDS, WindowedCounter
from .slo import slo_report
from .stats import StatsDelta, StatsRegistry, finite_or_none
from .tracing import SpanEmitter, TraceSampler

if TYPE_CHECKING:
    from .otel import MetricsExport

__all__ = ["Telemetry"]

_log = logging.getLogger("ladle.telemetry")
_EXTRA = "pip install 'ladle[telemetry]'"


class Telemetry:
    """Built from the ``[telemetry]`` table; the server wires it in at four points:

    - ``ModelManager(..., observers=telemetry.observer_for)``: one batch observer per version;
    - ``telemetry.version_ready(model, version, batcher=..., signature=...)`` once a version serves,
      and ``telemetry.version_removed(model, version)`` when it is unloaded;
    - ``telemetry.sampler.start_request(request.headers)`` at the edge, giving the envelope's trace;
    - ``telemetry_routes(telemetry)`` (``ladle.telemetry.routes``) for ``/metrics`` and ``/api/v1/stats``;
      and ``telemetry.close()`` at shutdown.

    ``span_exporter`` and ``metric_readers`` (reader classes with keyword arguments) replace or
    add export destinations; tests pass in-memory ones.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | TelemetryConfig | None = None,
        *,
        base_dir: Path | None = None,
        source: str = "ladle.toml",
        span_exporter: Any = None,
        metric_readers: Sequence[tuple[type[Any], dict[str, Any]]] = (),
    ) -> None:
        self.config = config = parse_telemetry_config(config, source)
        self.base_dir = base_dir or Path.cwd()
        self.started = time.time()
        self.stats = StatsRegistry(config.horizon, config.latency_buckets or DEFAULT_LATENCY_BOUNDS)
        self.sampler = TraceSampler(config.traces.enabled, config.traces.ratio)
        self.resources = ResourceMonitor(gpu=config.resources.gpu) if config.resources.enabled else None
        self.quality = self._quality() if config.quality.enabled else None
        self.spans = self._spans(span_exporter) if config.traces.enabled else None
        self.metrics: MetricsExport | None = None
        self.metrics_error = ""
        self.logs: InferenceLog | None = None
        self._metrics(metric_readers)
        if config.logs.enabled:
            self.logs = self._logs()
        self._checks: dict[tuple[str, str], InputChecks] = {}
        self.responses = self.stats.responses
        self._slos: dict[tuple[str, str], LatencySlo] = {}
        self._answered: dict[tuple[str, str, str, int], WindowedCounter] = {}

    @classmethod
    def from_server_config(cls, server: ServerConfig, **kwargs: Any) -> Telemetry:
        """From a loaded ``ladle.toml``: relative paths resolve against its folder."""
        return cls(server.telemetry, base_dir=server.base_dir, source=server.source or "ladle.toml", **kwargs)

    # construction --------------------------------------------------------------------------------

    def _path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.base_dir / path

    def _quality(self) -> QualityMonitor:
        settings = self.config.quality.model_dump(exclude={"enabled", "references"})
        references: dict[str, list[TensorReference]] = {
            model: load_reference(self._path(path)) for model, path in self.config.quality.references.items()
        }
        return QualityMonitor(self.stats, settings, references)

    def _spans(self, exporter: Any) -> SpanEmitter:
        traces, otlp = self.config.traces, self.config.otlp
        try:
            if exporter is not None:
                return SpanEmitter.create(self.config.service_name, exporter, batch=False)
            if traces.exporter == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                return SpanEmitter.create(self.config.service_name, ConsoleSpanExporter(), batch=False)
            if traces.exporter == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                endpoint = f"{otlp.endpoint.rstrip('/')}/v1/traces" if otlp.endpoint else None
                return SpanEmitter.create(
                    self.config.service_name,
                    OTLPSpanExporter(endpoint=endpoint, headers=otlp.headers or None, timeout=otlp.timeout),
                )
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            return SpanEmitter.create(self.config.service_name, InMemorySpanExporter(), batch=False)
        except ImportError as exc:
            raise MissingDependencyError(
                f"[telemetry.traces] needs OpenTelemetry ({exc.name} is missing): {_EXTRA}", extra="telemetry"
            ) from None

    def _metrics(self, readers: Sequence[tuple[type[Any], dict[str, Any]]]) -> None:
        otlp = self.config.otlp
        wanted_otlp = bool(otlp.endpoint) and otlp.metrics_interval > 0
        if not (self.config.metrics or wanted_otlp or readers):
            return
        try:
            from .otel import MetricsExport

            self.metrics = MetricsExport(
                self.stats,
                service_name=self.config.service_name,
                prometheus=self.config.metrics,
                otlp_endpoint=otlp.endpoint if wanted_otlp else None,
                otlp_headers=dict(otlp.headers),
                otlp_timeout=otlp.timeout,
                otlp_interval=otlp.metrics_interval,
                readers=readers,
            )
        except ImportError as exc:
            self.metrics_error = f"metrics export needs OpenTelemetry and prometheus-client: {_EXTRA}"
            if wanted_otlp or readers:
                raise MissingDependencyError(
                    f"{self.metrics_error} ({exc.name} is missing)", extra="telemetry"
                ) from None
            _log.warning("%s; the stats layer still runs", self.metrics_error)
            return
        if self.resources is not None:
            self.resources.register(self.metrics.meter)

    def _logs(self) -> InferenceLog:
        logs = self.config.logs
        log = InferenceLog(
            self._path(logs.path),
            sample=logs.sample,
            inputs=logs.inputs,
            outputs=logs.outputs,
            buffer=logs.buffer,
            flush_interval=logs.flush_interval,
            max_age=logs.max_age,
            max_rows=logs.max_rows,
        )
        self.logs = log
        if self.metrics is not None:
            self._log_instruments()
        return log

    def _log_instruments(self) -> None:
        from opentelemetry.metrics import Observation

        log, metrics = self.logs, self.metrics
        assert log is not None and metrics is not None
        metrics.meter.create_observable_counter(
            "ladle.inference_log.records",
            [
                lambda _o: [
                    Observation(log.written, {"ladle.log.outcome": "written"}),
                    Observation(log.dropped, {"ladle.log.outcome": "dropped"}),
                ]
            ],
            unit="{record}",
            description="Inference log records written, or dropped on a full buffer",
        )

    # wiring points -------------------------------------------------------------------------------

    def observer_for(self, model: str, version: str) -> VersionObserver:
        """The batch observer of a version (matches ``ladle.serving.ObserverFactory``)."""
        return VersionObserver(
            self.stats.version(model, version),
            spans=self.spans,
            quality=self.quality.version(model, version) if self.quality is not None else None,
            logs=self.logs,
        )

    def answered(self, request: InferenceRequest, version: str | None, status: int) -> None:
        """Count one answer no batch reported (matches ``ladle.admission.AnswerListener``):
        refusals (404 before routing, 4xx checks, 503 shed, 499 for clients that left, 504 for
        deadlines), failures, and answers from a cache or a static fallback. Answers a batch
        computed are counted by the batch observer."""
        key = (request.model, version or "", request.protocol, status)
        series = self._answered.get(key)
        if series is None:
            attributes = {ATTR_PROTOCOL: request.protocol or "in-process", ATTR_STATUS: str(status)}
            series = self._answered[key] = self.responses.get(
                version_attributes(request.model, version or "", attributes)
            )
        series.add(1, time.monotonic())

    def responses_by_status(self, model: str, version: str, seconds: float) -> dict[str, int]:
        """Answers of one version over the last ``seconds``, by status code (all protocols)."""
        now = time.monotonic()
        prefix = version_attributes(model, version)
        counts: dict[str, int] = {}
        for key, series in list(self.responses.series.items()):
            if key[: len(prefix)] == prefix:
                status = dict(key).get(ATTR_STATUS, "")
                counts[status] = counts.get(status, 0) + int(series.window(seconds, now))
        return {k: n for k, n in sorted(counts.items()) if n}

    def unrouted(self, seconds: float) -> dict[str, dict[str, int]]:
        """Answers refused before any version was reached, by model (``""``: a model not served) and
        status, over the last ``seconds``."""
        models = {
            dict(key).get(ATTR_MODEL, "")
            for key in list(self.responses.series)
            if dict(key).get(ATTR_VERSION) == ""
        }
        found = {model: self.responses_by_status(model, "", seconds) for model in sorted(models)}
        return {model: counts for model, counts in found.items() if counts}

    def version_ready(
        self,
        model: str,
        version: str,
        *,
        batcher: Batcher | None = None,
        signature: Mapping[str, Any] | Signature | None = None,
        slo: LatencySlo | None = None,
    ) -> None:
        """Gauges read from the batcher (queue depth, batches in flight, ready instances), input
        checks from the signature (its dict form may carry ``min``/``max`` per input), and the
        latency objectives ``/api/v1/stats`` reports against."""
        if slo is not None:
            self._slos[(model, version)] = slo
        if batcher is not None:
            replicas = batcher.replicas
            self.stats.register_gauges(
                model,
                version,
                queue_depth=lambda: batcher.queue_depth,
                in_flight=lambda: batcher.in_flight,
                instances=lambda: sum(1 for i in replicas.instances if i.ready),
            )
        if self.quality is not None:
            checks = self.quality.configure_checks(model, version, signature)
            if checks is not None and checks.mode == "reject":
                self._checks[(model, version)] = checks

    def version_removed(self, model: str, version: str) -> None:
        """Forget a version: its series leave the exports."""
        self.stats.remove(model, version)
        self._slos.pop((model, version), None)
        for key in [k for k in self._answered if k[0] == model and k[1] == version]:
            del self._answered[key]
        self._checks.pop((model, version), None)
        if self.quality is not None:
            self.quality.remove(model, version)

    def input_checks(self, model: str, version: str) -> InputChecks | None:
        """Checks to run before queueing (``checks = "reject"``): ``checks.validate(inputs)`` raises a 400."""
        return self._checks.get((model, version))

    def route_span(self, request: InferenceRequest, start: float, end: float, **attributes: Any) -> None:
        """Record routing time of a sampled request (call only when ``request.trace.sampled``)."""
        if self.spans is not None:
            self.spans.route_span(request, start, end, **attributes)

    def merge(self, delta: StatsDelta) -> None:
        """Merge figures a worker process recorded (``StatsRegistry.take_delta()`` there)."""
        self.stats.merge(delta)

    # reading -------------------------------------------------------------------------------------

    def prometheus_text(self, accept: str | None = None) -> tuple[bytes, str]:
        """The ``/metrics`` body and content type; raises ``MissingDependencyError`` without the extra."""
        if not self.config.metrics:
            raise ConfigError("metrics are off ([telemetry] metrics = false)")
        if self.metrics is None or self.metrics.prometheus_registry is None:
            raise MissingDependencyError(self.metrics_error, extra="telemetry")
        return self.metrics.prometheus_text(accept)

    def snapshot(self, seconds: float = 10.0) -> dict[str, Any]:
        """What ``GET /api/v1/stats`` returns: per-version windows, resources, log counters."""
        versions = []
        for window in self.stats.windows(seconds):
            entry = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in window.to_dict().items()}
            entry["responses_by_status"] = self.responses_by_status(window.model, window.version, seconds)
            entry["slo"] = slo_report(
                self.stats,
                window.model,
                window.version,
                self._slos.get((window.model, window.version)),
                seconds,
            )
            entry.update(scaling_snapshot(self.stats, window.model, window.version, seconds))
            if self.quality is not None:
                drift = {
                    k: v
                    for k, v in self.quality.drift(window.model, window.version).items()
                    if math.isfinite(v)
                }
                entry["drift"] = max(drift.values()) if drift else None
                entry["drift_features"] = drift
            else:
                entry["drift"] = None
            versions.append(entry)
        return {
            "service": self.config.service_name,
            "time": time.time(),
            "uptime": time.time() - self.started,
            "window": seconds,
            "versions": versions,
            "unrouted": self.unrouted(seconds),
            "resources": self.resources.snapshot() if self.resources is not None else None,
            "logs": {
                "written": self.logs.written,
                "dropped": self.logs.dropped,
                "buffered": self.logs.buffered,
            }
            if self.logs is not None
            else None,
            "traces": {"enabled": self.sampler.enabled, "ratio": self.sampler.ratio},
        }

    def close(self) -> None:
        """Flush and stop exporters and the log writer."""
        if self.logs is not None:
            self.logs.close()
        if self.spans is not None:
            self.spans.shutdown()
        if self.metrics is not None:
            self.metrics.shutdown()
        if self.resources is not None:
            self.resources.close()
