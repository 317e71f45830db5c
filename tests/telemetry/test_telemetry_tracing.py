"""Traces: the edge decision, and spans emitted after the fact to an in-memory exporter."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ladle.envelope import TraceContext
from ladle.telemetry import Telemetry, TraceSampler
from ladle.telemetry.tracing import request_span_id

from .feed import requests, run_batch

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(exporter: InMemorySpanExporter) -> Iterator[Telemetry]:
    made = Telemetry({"metrics": False, "traces": {"enabled": True, "ratio": 0.0}}, span_exporter=exporter)
    yield made
    made.close()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_sampling_decisions() -> None:
    assert TraceSampler(enabled=False, ratio=1.0).start_request({"traceparent": SAMPLED}) is None
    never = TraceSampler(enabled=True, ratio=0.0)
    assert never.start_request({}) is None
    assert never.start_request({"traceparent": "00-garbage-01"}) is None
    # parent-based: the caller's flag decides, whatever the ratio
    incoming = never.start_request({"traceparent": SAMPLED, "tracestate": "vendor=1"})
    assert incoming == TraceContext(TRACE_ID, PARENT_ID, True, "vendor=1")
    unsampled = TraceSampler(enabled=True, ratio=1.0).start_request(
        {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    )
    assert unsampled is not None and not unsampled.sampled
    root = TraceSampler(enabled=True, ratio=1.0).start_request({})
    assert root is not None and root.sampled and root.parent_span_id == "" and len(root.trace_id) == 32
    with pytest.raises(ValueError):
        TraceSampler(enabled=True, ratio=1.5)


def test_incoming_traceparent_appears_in_exported_spans(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    incoming = telemetry.sampler.start_request({"traceparent": SAMPLED})
    root = TraceSampler(enabled=True, ratio=1.0).start_request({})
    assert incoming is not None and root is not None
    batch = [*requests(1, trace=incoming), *requests(1, trace=root), *requests(2)]
    run_batch(
        telemetry.observer_for("iris", "1"),
        batch,
        queued=0.010,
        runtime=0.020,
        errors=[None, "invalid_input", None, None],
    )
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == [
        "ladle.batch",
        "ladle.queue",
        "ladle.queue",
        "ladle.request",
        "ladle.request",
    ]

    traced, rooted = sorted(
        by_name(spans, "ladle.request"), key=lambda s: s.context.trace_id != int(TRACE_ID, 16)
    )
    assert traced.context.trace_id == int(TRACE_ID, 16)
    assert (
        traced.parent is not None and traced.parent.span_id == int(PARENT_ID, 16) and traced.parent.is_remote
    )
    assert traced.context.span_id == request_span_id(TRACE_ID, batch[0].id)
    assert traced.kind is SpanKind.SERVER
    assert traced.attributes["ladle.request.id"] == batch[0].id
    assert traced.attributes["ladle.model.name"] == "iris"
    assert (traced.end_time - traced.start_time) / 1e9 == pytest.approx(0.030, abs=1e-5)
    # a request that arrived without a traceparent starts its own trace, with the id chosen at the edge
    assert rooted.parent is None and rooted.context.trace_id == int(root.trace_id, 16)
    assert (
        rooted.status.status_code is StatusCode.ERROR and rooted.attributes["error.type"] == "invalid_input"
    )

    for queue in by_name(spans, "ladle.queue"):
        owner = traced if queue.context.trace_id == traced.context.trace_id else rooted
        assert queue.parent is not None and queue.parent.span_id == owner.context.span_id
        assert (queue.end_time - queue.start_time) / 1e9 == pytest.approx(0.010, abs=1e-5)
    (batch_span,) = by_name(spans, "ladle.batch")
    assert batch_span.attributes["ladle.batch.requests"] == 4
    assert {link.context.span_id for link in batch_span.links} == {
        traced.context.span_id,
        rooted.context.span_id,
    }
    # span times are wall-clock: they end about now
    assert abs(batch_span.end_time / 1e9 - time.time()) < 5


def test_unsampled_requests_make_no_spans(telemetry: Telemetry, exporter: InMemorySpanExporter) -> None:
    unsampled = telemetry.sampler.start_request({"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    run_batch(telemetry.observer_for("iris", "1"), requests(3, trace=unsampled), queued=0.0, runtime=0.001)
    assert exporter.get_finished_spans() == ()


def test_dropped_and_routed_requests(telemetry: Telemetry, exporter: InMemorySpanExporter) -> None:
    incoming = telemetry.sampler.start_request({"traceparent": SAMPLED})
    (request,) = requests(1, trace=incoming)
    start = time.monotonic()
    telemetry.route_span(request, start, start + 0.0005, **{"ladle.router": "canary"})
    telemetry.observer_for("iris", "1").requests_dropped([request], "deadline_exceeded")
    spans = exporter.get_finished_spans()
    (route,) = by_name(spans, "ladle.route")
    (span,) = by_name(spans, "ladle.request")
    assert route.parent is not None and route.parent.span_id == span.context.span_id
    assert route.attributes["ladle.router"] == "canary"
    assert span.attributes["error.type"] == "deadline_exceeded"
    assert span.status.status_code is StatusCode.ERROR
    assert len(by_name(spans, "ladle.queue")) == 1


def test_traces_are_off_by_default() -> None:
    telemetry = Telemetry({"metrics": False})
    try:
        assert telemetry.spans is None
        assert telemetry.sampler.start_request({"traceparent": SAMPLED}) is None
    finally:
        telemetry.close()
