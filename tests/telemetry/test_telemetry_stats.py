"""The stats layer as controllers read it: windows per version, gauges, families, worker merges."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ladle.scaling import VersionMetrics
from ladle.telemetry import StatsRegistry, Telemetry, VersionObserver

from .feed import requests, run_batch


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    made = Telemetry({"metrics": False, "resources": {"enabled": False}})
    yield made
    made.close()


def test_window_counts_outcomes_latency_and_batches(telemetry: Telemetry) -> None:
    observer = telemetry.observer_for("iris", "1")
    for _ in range(3):
        run_batch(
            observer,
            requests(4, rows=2),
            queued=0.010,
            runtime=0.020,
            errors=[None, None, None, "runtime_error"],
        )
    observer.requests_dropped(requests(2), "overloaded")

    window = telemetry.stats.window("iris", "1", 10)
    assert window.requests == 14
    assert window.errors == 5
    assert window.errors_by_type == {"runtime_error": 3, "overloaded": 2}
    assert window.error_ratio == pytest.approx(5 / 14)
    # every request that ran waited 10 ms and ran 20 ms: percentiles are exact (one value per bucket)
    assert window.latency_p50 == pytest.approx(0.030)
    assert window.latency_p99 == pytest.approx(0.030)
    assert window.queue_p95 == pytest.approx(0.010)
    assert window.batches == 3
    assert window.batch_rows_mean == pytest.approx(8.0)
    assert window.batch_requests_mean == pytest.approx(4.0)
    assert window.batch_duration_mean == pytest.approx(0.020)
    # created moments ago: the rate is spread over at least one second, not over the whole window
    assert window.request_rate == pytest.approx(14.0)


def test_versions_are_kept_apart(telemetry: Telemetry) -> None:
    run_batch(telemetry.observer_for("iris", "1"), requests(3), queued=0.0, runtime=0.001)
    run_batch(telemetry.observer_for("iris", "2"), requests(5), queued=0.0, runtime=0.001)
    assert [(w.version, w.requests) for w in telemetry.stats.windows(10)] == [("1", 3), ("2", 5)]


def test_window_forgets_old_traffic(telemetry: Telemetry) -> None:
    observer = telemetry.observer_for("iris", "1")
    now = time.monotonic()
    run_batch(observer, requests(7), queued=0.0, runtime=0.001, finished=now - 30)
    run_batch(observer, requests(2), queued=0.0, runtime=0.001, finished=now)
    assert telemetry.stats.window("iris", "1", 10, now=now).requests == 2
    assert telemetry.stats.window("iris", "1", 60, now=now).requests == 9


def test_gauges_are_read_from_callbacks_and_feed_scaler_metrics(telemetry: Telemetry) -> None:
    depth = [3]
    telemetry.stats.register_gauges(
        "iris", "1", queue_depth=lambda: depth[0], in_flight=lambda: 1, instances=lambda: 2
    )
    run_batch(telemetry.observer_for("iris", "1"), requests(10), queued=0.05, runtime=0.05)
    depth[0] = 7
    metrics = telemetry.stats.window("iris", "1", 10).to_version_metrics()
    assert metrics == VersionMetrics(
        model="iris",
        version="1",
        instances=2,
        queue_depth=7,
        in_flight=1,
        request_rate=pytest.approx(10.0),
        p95_latency=pytest.approx(0.1),
        error_ratio=0.0,
    )


def test_a_failing_gauge_callback_reads_as_missing(telemetry: Telemetry) -> None:
    telemetry.stats.register_gauges("iris", "1", queue_depth=lambda: 1 / 0)
    assert telemetry.stats.window("iris", "1", 10).queue_depth is None


def test_window_bounds_are_checked(telemetry: Telemetry) -> None:
    with pytest.raises(ValueError, match="window"):
        telemetry.stats.window("iris", "1", 301)


def test_removed_versions_leave(telemetry: Telemetry) -> None:
    run_batch(telemetry.observer_for("iris", "1"), requests(1), queued=0.0, runtime=0.001)
    telemetry.version_removed("iris", "1")
    assert telemetry.stats.versions() == []
    assert not telemetry.stats.request_duration.series


def test_custom_families_record_per_step_and_window() -> None:
    stats = StatsRegistry()
    ttft = stats.histogram_family("gen_ai.server.time_to_first_token", "s", "Time to first token")
    tokens = stats.counter_family("ladle.generation.tokens", "{token}", "Tokens generated")
    kv = stats.gauge_family("ladle.kv_cache.usage", "1", "Share of KV-cache blocks in use")
    ttft.record("lm", "1", [0.04, 0.04, 0.04])
    tokens.add("lm", "1", 96)
    kv.set("lm", "1", 0.5)
    snapshot = stats.family_window("gen_ai.server.time_to_first_token", "lm", "1", 10)
    assert snapshot is not None and not isinstance(snapshot, float)
    assert snapshot.count == 3 and snapshot.quantile(0.5) == pytest.approx(0.04)
    assert stats.family_window("ladle.generation.tokens", "lm", "1", 10) == 96
    assert stats.family_window("ladle.kv_cache.usage", "lm", "1", 10) == 0.5
    # the same definition twice is the same family; a different one is refused
    assert stats.counter_family("ladle.generation.tokens", "{token}", "") is tokens
    with pytest.raises(ValueError, match="already defined"):
        stats.histogram_family("ladle.generation.tokens", "{token}", "")


def test_worker_deltas_merge_into_the_front_process() -> None:
    worker, front = StatsRegistry(), StatsRegistry()
    observer = VersionObserver(worker.version("lm", "3"))
    run_batch(
        observer, requests(5), queued=0.002, runtime=0.008, errors=[None, None, None, None, "invalid_input"]
    )
    worker.histogram_family("gen_ai.server.time_to_first_token", "s", "TTFT").record("lm", "3", [0.5])
    worker.gauge_family("ladle.kv_cache.usage", "1", "KV").set("lm", "3", 0.25)

    front.merge(worker.take_delta())
    window = front.window("lm", "3", 10)
    assert (window.requests, window.errors, window.errors_by_type) == (5, 1, {"invalid_input": 1})
    assert window.latency_p50 == pytest.approx(0.010)
    assert front.family_window("gen_ai.server.time_to_first_token", "lm", "3", 10).count == 1  # type: ignore[union-attr]
    assert front.family_window("ladle.kv_cache.usage", "lm", "3", 10) == 0.25
    # a second delta holds only what was recorded since the first
    run_batch(observer, requests(2), queued=0.0, runtime=0.001)
    front.merge(worker.take_delta())
    assert front.window("lm", "3", 10).requests == 7


def test_series_recorded_before_the_version_was_set_up_still_count() -> None:
    stats = StatsRegistry()
    stats.request_duration.record("iris", "1", [0.5])  # a series created outside the version's clock
    run_batch(VersionObserver(stats.version("iris", "1")), requests(3), queued=0.0, runtime=0.25)
    window = stats.window("iris", "1", 10)
    assert window.requests == 3
    assert (
        stats.request_duration.series[(("ladle.model.name", "iris"), ("ladle.model.version", "1"))]
        .window(10, time.monotonic())
        .count
        == 4
    )
    assert window.latency_mean == pytest.approx((0.5 + 3 * 0.25) / 4)
