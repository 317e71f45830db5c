"""Latency objectives (``latency_slo``): judged on the stats windows, reported in ``/api/v1/stats``
and shown by ``ladle top``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from rich.console import Console

from ladle.commands import top
from ladle.config import LatencySlo, ModelConfig
from ladle.telemetry import Telemetry
from ladle.telemetry.slo import ITL, TTFT, breached, slo_report

from .feed import requests, run_batch


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    made = Telemetry({"metrics": False, "resources": {"enabled": False}})
    yield made
    made.close()


def _rendered(data: dict[str, object]) -> str:
    console = Console(width=250, record=True)
    console.print(top.render(data, "http://test"))
    return console.export_text()


def test_request_p99_is_judged_against_the_objective(telemetry: Telemetry) -> None:
    telemetry.version_ready("iris", "1", slo=LatencySlo(p99=0.05))
    telemetry.version_ready("iris", "2", slo=LatencySlo(p99=0.5))
    for version in ("1", "2"):
        run_batch(telemetry.observer_for("iris", version), requests(4), queued=0.01, runtime=0.09)

    by_version = {entry["version"]: entry for entry in telemetry.snapshot(10)["versions"]}
    missed, met = by_version["1"]["slo"]["p99"], by_version["2"]["slo"]["p99"]
    assert missed["target"] == 0.05 and missed["met"] is False
    assert missed["value"] == pytest.approx(0.1)
    assert met["met"] is True
    assert breached(by_version["1"]["slo"]) == ("p99",)
    assert breached(by_version["2"]["slo"]) == ()

    text = _rendered(telemetry.snapshot(10))
    rows = {line.split("│")[2].strip(): line for line in text.splitlines() if "iris" in line}
    assert "missed p99" in rows["1"]
    assert "ok" in rows["2"] and "missed" not in rows["2"]


def test_generation_objectives_read_ttft_and_itl_families(telemetry: Telemetry) -> None:
    ttft = telemetry.stats.histogram_family(TTFT, "s", "time to first token")
    itl = telemetry.stats.histogram_family(ITL, "s", "time between tokens")
    now = time.monotonic()
    ttft.record("llm", "1", [0.4] * 20, now)
    itl.record("llm", "1", [0.01] * 20, now)
    run_batch(telemetry.observer_for("llm", "1"), requests(2), queued=0.0, runtime=0.5)

    report = slo_report(telemetry.stats, "llm", "1", LatencySlo(ttft=0.2, itl=0.05), 10)
    assert set(report) == {"ttft", "itl"}  # only the objectives that were set
    assert report["ttft"]["met"] is False and report["ttft"]["value"] == pytest.approx(0.4, rel=0.3)
    assert report["itl"]["met"] is True
    assert breached(report) == ("ttft",)


def test_no_data_is_neither_met_nor_missed(telemetry: Telemetry) -> None:
    report = slo_report(telemetry.stats, "quiet", "1", LatencySlo(p99=0.1, ttft=0.1), 10)
    assert report == {
        "p99": {"target": 0.1, "value": None, "met": None},
        "ttft": {"target": 0.1, "value": None, "met": None},
    }
    assert breached(report) == ()
    assert slo_report(telemetry.stats, "quiet", "1", None, 10) == {}


def test_objectives_are_validated_and_merge_like_other_model_settings() -> None:
    with pytest.raises(ValueError, match="p99"):
        ModelConfig.model_validate({"latency_slo": {"p99": -1}})
    with pytest.raises(ValueError, match="p95"):
        ModelConfig.model_validate({"latency_slo": {"p95": 0.1}})
    assert ModelConfig.model_validate({"latency_slo": {"ttft": 0.5}}).latency_slo == LatencySlo(ttft=0.5)
