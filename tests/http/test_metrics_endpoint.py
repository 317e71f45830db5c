"""Telemetry through the real server: /metrics and /api/v1/stats count what the data path did."""

from __future__ import annotations

import httpx
from behaviour_runtime import INVALID
from prometheus_client.parser import text_string_to_metric_families


def samples(client: httpx.Client, name: str, version: str = "1") -> dict[str, float]:
    """``{error_type: value}`` of one counter for the ``counted`` model."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            wanted = (labels.get("ladle_model_name"), labels.get("ladle_model_version")) == (
                "counted",
                version,
            )
            if sample.name == name and wanted:
                found[labels.get("error_type", "")] = sample.value
    return found


def post(client: httpx.Client, first: float) -> int:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [first, 1]}]}
    return client.post("/v2/models/counted/infer", json=body).status_code


def test_requests_by_outcome_reach_prometheus_and_stats(client: httpx.Client) -> None:
    before = samples(client, "ladle_requests_total")
    statuses = [post(client, 1.0) for _ in range(5)] + [post(client, INVALID) for _ in range(2)]
    assert statuses == [200] * 5 + [400] * 2
    after = samples(client, "ladle_requests_total")
    assert after.get("", 0) - before.get("", 0) == 5
    assert after["invalid_input"] - before.get("invalid_input", 0) == 2
    durations = samples(client, "ladle_request_duration_seconds_count")
    assert durations[""] >= 7
    stats = client.get("/api/v1/stats", params={"window": 60}).json()
    (strings,) = [v for v in stats["versions"] if v["model"] == "counted"]
    assert strings["requests"] >= 7 and strings["errors"] >= 2 and strings["latency_p50"] > 0
