"""The routes on a starlette app assembled here: /api/v1/stats and /metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient

from ladle.telemetry import Telemetry, telemetry_routes

from .feed import requests, run_batch


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    made = Telemetry({})
    yield made
    made.close()


@pytest.fixture
def client(telemetry: Telemetry) -> Iterator[TestClient]:
    with TestClient(Starlette(routes=telemetry_routes(telemetry))) as test_client:
        yield test_client


def test_stats_route_reports_each_version(telemetry: Telemetry, client: TestClient) -> None:
    telemetry.stats.register_gauges(
        "iris", "1", queue_depth=lambda: 4, in_flight=lambda: 1, instances=lambda: 2
    )
    observer = telemetry.observer_for("iris", "1")
    for _ in range(5):
        run_batch(
            observer, requests(4), queued=0.001, runtime=0.004, errors=[None, None, None, "runtime_error"]
        )
    response = client.get("/api/v1/stats", params={"window": 60})
    assert response.status_code == 200
    body = response.json()
    assert body["window"] == 60
    (entry,) = body["versions"]
    assert (entry["model"], entry["version"]) == ("iris", "1")
    assert entry["requests"] == 20 and entry["errors"] == 5
    assert entry["errors_by_type"] == {"runtime_error": 5}
    assert entry["latency_p50"] == pytest.approx(0.005)
    assert (entry["queue_depth"], entry["in_flight"], entry["instances"]) == (4, 1, 2)
    assert entry["batch_requests_mean"] == pytest.approx(4.0)
    assert entry["drift"] is None
    assert body["resources"]["processes"][0]["role"] == "front"
    assert body["traces"] == {"enabled": False, "ratio": 0.01}


@pytest.mark.parametrize("window", ["0", "-3", "301", "soon", "nan"])
def test_a_bad_window_is_a_400_naming_it(client: TestClient, window: str) -> None:
    response = client.get("/api/v1/stats", params={"window": window})
    assert response.status_code == 400
    assert response.json()["parameter"] == "window" and response.json()["got"] == window


def test_metrics_route_serves_prometheus_text(telemetry: Telemetry, client: TestClient) -> None:
    run_batch(telemetry.observer_for("iris", "1"), requests(3), queued=0.0, runtime=0.002)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    (count,) = [s for s in families["ladle_request_duration_seconds"].samples if s.name.endswith("_count")]
    assert count.value == 3
    openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")


def test_no_metrics_route_when_metrics_are_off() -> None:
    telemetry = Telemetry({"metrics": False})
    try:
        with TestClient(Starlette(routes=telemetry_routes(telemetry))) as client:
            assert client.get("/metrics").status_code == 404
            assert client.get("/api/v1/stats").status_code == 200
    finally:
        telemetry.close()
