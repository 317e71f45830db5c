"""Export: Prometheus text read back with prometheus_client's parser, and the OpenTelemetry readers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics.export import Histogram, InMemoryMetricReader, Sum
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ladle.errors import ConfigError
from ladle.telemetry import Telemetry

from .feed import requests, run_batch

VERSION = {"ladle_model_name": "iris", "ladle_model_version": "1"}


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    made = Telemetry({}, metric_readers=[(InMemoryMetricReader, {})])
    yield made
    made.close()


def samples(telemetry: Telemetry) -> list[Sample]:
    body, content_type = telemetry.prometheus_text()
    assert content_type.startswith("text/plain")
    return [s for family in text_string_to_metric_families(body.decode()) for s in family.samples]


def value(found: list[Sample], name: str, **labels: str) -> float:
    matches = [
        s.value for s in found if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, f"{name} {labels}: {matches}"
    return matches[0]


def test_counts_and_buckets_after_known_batches(telemetry: Telemetry) -> None:
    observer = telemetry.observer_for("iris", "1")
    for _ in range(6):
        run_batch(
            observer,
            requests(4, rows=3),
            queued=0.003,
            runtime=0.004,
            errors=[None, None, None, "invalid_input"],
        )
    for _ in range(2):
        run_batch(observer, requests(1), queued=0.100, runtime=0.300)
    observer.requests_dropped(requests(3), "deadline_exceeded")
    found = samples(telemetry)

    assert value(found, "ladle_requests_total", error_type="", **VERSION) == 6 * 3 + 2
    assert value(found, "ladle_requests_total", error_type="invalid_input", **VERSION) == 6
    assert value(found, "ladle_requests_total", error_type="deadline_exceeded", **VERSION) == 3
    # 24 requests took 7 ms, 2 took 400 ms; the dropped ones never ran
    duration = "ladle_request_duration_seconds"
    assert value(found, f"{duration}_count", **VERSION) == 26
    assert value(found, f"{duration}_bucket", le="0.005", **VERSION) == 0
    assert value(found, f"{duration}_bucket", le="0.01", **VERSION) == 24
    assert value(found, f"{duration}_bucket", le="0.2", **VERSION) == 24
    assert value(found, f"{duration}_bucket", le="0.5", **VERSION) == 26
    assert value(found, f"{duration}_bucket", le="+Inf", **VERSION) == 26
    assert value(found, f"{duration}_sum", **VERSION) == pytest.approx(24 * 0.007 + 2 * 0.4)
    assert value(found, "ladle_queue_duration_seconds_bucket", le="0.005", **VERSION) == 24
    assert value(found, "ladle_batch_duration_seconds_count", **VERSION) == 8
    assert value(found, "ladle_batch_size_bucket", le="8.0", **VERSION) == 2
    assert value(found, "ladle_batch_size_bucket", le="16.0", **VERSION) == 8
    assert value(found, "ladle_batch_requests_sum", **VERSION) == 26


def test_scrapes_are_cumulative(telemetry: Telemetry) -> None:
    observer = telemetry.observer_for("iris", "1")
    run_batch(observer, requests(2), queued=0.0, runtime=0.001)
    assert value(samples(telemetry), "ladle_request_duration_seconds_count", **VERSION) == 2
    run_batch(observer, requests(3), queued=0.0, runtime=0.001)
    assert value(samples(telemetry), "ladle_request_duration_seconds_count", **VERSION) == 5


def test_gauges_resources_and_custom_families_are_exported(telemetry: Telemetry) -> None:
    telemetry.stats.register_gauges(
        "iris", "1", queue_depth=lambda: 5, in_flight=lambda: 2, instances=lambda: 3
    )
    tokens = telemetry.stats.counter_family("ladle.generation.tokens", "{token}", "Tokens generated")
    ttft = telemetry.stats.histogram_family("gen_ai.server.time_to_first_token", "s", "Time to first token")
    tokens.add("lm", "1", 42)
    ttft.record("lm", "1", [0.03, 0.3])
    found = samples(telemetry)
    assert value(found, "ladle_queue_depth", **VERSION) == 5
    assert value(found, "ladle_active_batches", **VERSION) == 2
    assert value(found, "ladle_instance_count", **VERSION) == 3
    assert value(found, "ladle_generation_tokens_total", ladle_model_name="lm") == 42
    assert (
        value(found, "gen_ai_server_time_to_first_token_seconds_bucket", le="0.05", ladle_model_name="lm")
        == 1
    )
    assert value(found, "process_memory_usage_bytes", ladle_process_role="front") > 1_000_000
    assert value(found, "target_info", service_name="ladle") == 1


def test_openmetrics_is_served_when_asked(telemetry: Telemetry) -> None:
    run_batch(telemetry.observer_for("iris", "1"), requests(1), queued=0.0, runtime=0.001)
    body, content_type = telemetry.prometheus_text("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_opentelemetry_readers_get_the_same_figures(telemetry: Telemetry) -> None:
    run_batch(telemetry.observer_for("iris", "1"), requests(4), queued=0.001, runtime=0.002)
    assert telemetry.metrics is not None
    reader = telemetry.metrics.extra_readers[0]
    data = reader.get_metrics_data()
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    duration = metrics["ladle.request.duration"]
    assert duration.unit == "s" and isinstance(duration.data, Histogram)
    (point,) = duration.data.data_points
    assert point.count == 4 and point.attributes == {"ladle.model.name": "iris", "ladle.model.version": "1"}
    assert point.min == pytest.approx(0.003) and point.max == pytest.approx(0.003)
    requests_metric = metrics["ladle.requests"]
    assert isinstance(requests_metric.data, Sum) and requests_metric.data.is_monotonic
    assert sum(p.value for p in requests_metric.data.data_points) == 4


def test_metrics_can_be_turned_off() -> None:
    telemetry = Telemetry({"metrics": False})
    try:
        assert telemetry.metrics is None
        with pytest.raises(ConfigError, match="metrics are off"):
            telemetry.prometheus_text()
    finally:
        telemetry.close()
