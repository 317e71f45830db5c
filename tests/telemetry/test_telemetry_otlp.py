"""OTLP/HTTP export, received by a collector stand-in on an ephemeral loopback port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ladle.telemetry import Telemetry

from .feed import requests, run_batch

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class Collector(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_spans_and_metrics_reach_an_otlp_collector(collector: Collector) -> None:
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    telemetry = Telemetry(
        {
            "metrics": False,
            "otlp": {"endpoint": endpoint, "metrics_interval": 3600},
            "traces": {"enabled": True, "ratio": 0.0},
        }
    )
    try:
        trace = telemetry.sampler.start_request({"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
        run_batch(telemetry.observer_for("iris", "1"), requests(2, trace=trace), queued=0.001, runtime=0.002)
        assert telemetry.spans is not None and telemetry.spans.force_flush()
        assert telemetry.metrics is not None
        telemetry.metrics.force_flush()
    finally:
        telemetry.close()

    bodies = collector.received
    traces = [ExportTraceServiceRequest.FromString(body) for path, body in bodies if path == "/v1/traces"]
    spans = [s for t in traces for rs in t.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert {s.name for s in spans} == {"ladle.request", "ladle.queue", "ladle.batch"}
    assert {s.trace_id.hex() for s in spans} == {TRACE_ID}

    metrics = [ExportMetricsServiceRequest.FromString(body) for path, body in bodies if path == "/v1/metrics"]
    exported = {
        m.name: m for r in metrics for rm in r.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    (point,) = exported["ladle.request.duration"].histogram.data_points
    assert point.count == 2 and list(point.explicit_bounds)[:2] == [0.0001, 0.0002]
    assert sum(p.as_double or p.as_int for p in exported["ladle.requests"].sum.data_points) == 2
