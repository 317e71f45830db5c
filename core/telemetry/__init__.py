"""Telemetry: a ladle-owned stats layer fed once per batch, exported through OpenTelemetry.

The server owns one ``Telemetry`` built from the ``[telemetry]`` table of ``ladle.toml``. The
data path never calls OpenTelemetry: batchers feed a ``VersionObserver`` once per batch with
plain-Python arithmetic; exporters read the figures when they collect. Controllers and scalers
read windowed figures through ``telemetry.stats.window(model, version, seconds)``.

Configuration (every key optional; defaults shown)::

    [telemetry]
    enabled = true                  # false: no stats layer, no exports, nothing on the data path
    metrics = true                  # Prometheus text at GET /metrics (needs ladle[telemetry])
    service_name = "ladle"          # service.name of exported metrics and spans
    horizon = 300                   # longest window kept, seconds (10..3600)
    latency_buckets = [0.0001, ...] # bucket bounds of the duration histograms, seconds

    [telemetry.otlp]                # OTLP/HTTP export, off unless endpoint is set
    endpoint = "http://collector:4318"   # base URL; /v1/metrics and /v1/traces are appended
    headers = {}
    timeout = 10.0
    metrics_interval = 30.0         # seconds between metric pushes; 0 pushes none

    [telemetry.traces]              # off by default
    enabled = false
    ratio = 0.01                    # share of requests without a traceparent that are sampled
    exporter = "otlp"               # otlp | console | none

    [telemetry.logs]                # inference logs in an SQLite file; off by default
    enabled = false
    path = "inference-logs.sqlite3" # relative to ladle.toml's folder
    sample = 1.0                    # share of requests recorded
    inputs = false                  # also store inputs / outputs (JSON)
    outputs = false
    buffer = 10000                  # records held in memory; beyond, records are dropped and counted
    flush_interval = 1.0            # seconds between writes
    max_age = 604800                # retention: seconds ...
    max_rows = 1000000              # ... and rows

    [telemetry.quality]             # distributions and drift; off by default
    enabled = false
    outputs = true                  # monitor outputs ...
    inputs = false                  # ... and inputs
    sample = 1.0                    # share of batches looked at
    bins = 10                       # reference bins (quantiles)
    reference_rows = 1000           # rows of the reference window when no file is given
    references = {}                 # model = "reference.json" (see quality.write_reference)
    window = 300                    # seconds compared with the reference
    min_count = 100                 # values needed in the window before a drift score is given
    max_columns = 16                # columns monitored per tensor
    checks = "off"                  # off | count | reject: input range and schema checks
    ranges = {}                     # [telemetry.quality.ranges.<model>] input = [min, max]

    [telemetry.resources]
    enabled = true                  # process CPU and memory (psutil)
    gpu = true                      # GPU memory and utilisation (NVML, ladle[nvml]) when present

Exported names (OpenTelemetry style; Prometheus names in brackets):
``ladle.requests`` [ladle_requests_total] by ``error.type``; ``ladle.request.duration``,
``ladle.queue.duration``, ``ladle.batch.duration`` [..._seconds]; ``ladle.batch.size`` (rows) and
``ladle.batch.requests``; gauges ``ladle.queue.depth``, ``ladle.active_batches``,
``ladle.instance.count``; ``ladle.quality.*``; ``process.*`` and ``hw.gpu.*`` per the semantic
conventions. Every version series carries ``ladle.model.name`` and ``ladle.model.version``.
"""

from __future__ import annotations

from .config import TelemetryConfig, parse_telemetry_config
from .families import CounterFamily, GaugeFamily, HistogramFamily
from .inference_log import InferenceLog
from .observer import VersionObserver
from .quality import (
    InputChecks,
    QualityMonitor,
    TensorReference,
    load_reference,
    reference_from_arrays,
    write_reference,
)
from .resources import ResourceMonitor
from .routes import telemetry_routes
from .series import DEFAULT_LATENCY_BOUNDS, HistogramSnapshot, WindowedCounter, WindowedHistogram
from .stats import StatsDelta, StatsRegistry, VersionStats, WindowStats
from .telemetry import Telemetry
from .tracing import SpanEmitter, TraceSampler

__all__ = [
    "DEFAULT_LATENCY_BOUNDS",
    "CounterFamily",
    "GaugeFamily",
    "HistogramFamily",
    "HistogramSnapshot",
    "InferenceLog",
    "InputChecks",
    "QualityMonitor",
    "ResourceMonitor",
    "SpanEmitter",
    "StatsDelta",
    "StatsRegistry",
    "Telemetry",
    "TelemetryConfig",
    "TensorReference",
    "TraceSampler",
    "VersionObserver",
    "VersionStats",
    "WindowStats",
    "WindowedCounter",
    "WindowedHistogram",
    "load_reference",
    "parse_telemetry_config",
    "reference_from_arrays",
    "telemetry_routes",
    "write_reference",
]
