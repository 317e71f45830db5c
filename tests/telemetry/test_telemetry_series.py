"""Windowed counters and histograms: bucket semantics, windows, recycling, deltas."""

from __future__ import annotations

import pickle

import orjson
import pytest

from ladle.telemetry import WindowedCounter, WindowedHistogram
from ladle.telemetry.series import quantile

BOUNDS = (0.001, 0.01, 0.1, 1.0)


def test_values_land_in_le_buckets_and_overflow() -> None:
    histogram = WindowedHistogram(BOUNDS, horizon=10, now=100.0)
    histogram.observe_many([0.0005, 0.001, 0.002, 0.5, 1.0, 7.0], now=100.2)
    snapshot = histogram.cumulative()
    # le semantics: a value equal to a bound counts in that bound's bucket
    assert snapshot.counts == (2, 1, 0, 2, 1)
    assert snapshot.count == 6
    assert snapshot.total == pytest.approx(8.5035)
    assert (snapshot.minimum, snapshot.maximum) == (0.0005, 7.0)


def test_window_covers_only_recent_slots_while_cumulative_keeps_everything() -> None:
    histogram = WindowedHistogram(BOUNDS, horizon=10, now=0.0)
    histogram.observe(0.005, now=1.5)
    histogram.observe(0.05, now=8.5)
    histogram.observe(0.5, now=9.5)
    assert histogram.window(2, now=9.9).count == 2
    assert histogram.window(10, now=9.9).count == 3
    # 30 s later the ring has recycled every slot: windows are empty, the total is not
    histogram.observe(0.0001, now=40.0)
    assert histogram.window(10, now=40.0).count == 1
    cumulative = histogram.cumulative()
    assert cumulative.counts == (1, 1, 1, 1, 0)
    assert cumulative.minimum == 0.0001 and cumulative.maximum == 0.5


def test_quantiles_interpolate_and_clamp_to_observed_range() -> None:
    histogram = WindowedHistogram(BOUNDS, horizon=10, now=0.0)
    histogram.observe_many([0.25] * 10, now=1.0)
    # all in one bucket (0.1, 1.0]: clamping to [min, max] makes every quantile exact
    assert histogram.window(10, now=1.0).quantile(0.99) == pytest.approx(0.25)
    assert quantile(0.5, [0, 0, 10, 10, 0], BOUNDS, 0.0, 10.0) == pytest.approx(0.1)
    assert quantile(0.75, [0, 0, 10, 10, 0], BOUNDS, 0.0, 10.0) == pytest.approx(0.55)
    assert quantile(0.5, [0, 0, 0, 0, 0], BOUNDS, 0.0, 0.0) is None


def test_data_older_than_the_ring_only_reaches_the_total() -> None:
    counter = WindowedCounter(horizon=10, now=0.0)
    counter.add(5, now=100.0)
    counter.add(3, now=50.0)  # far behind the newest slot
    assert counter.window(10, now=100.0) == 5
    assert counter.total() == 8


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        WindowedHistogram((1.0, 1.0, 2.0))


def test_delta_moves_data_and_merges_slot_by_slot() -> None:
    worker = WindowedHistogram(BOUNDS, horizon=10, now=0.0)
    worker.observe_many([0.005, 0.005], now=3.2)
    worker.observe(0.5, now=7.7)
    delta = worker.take_delta()
    assert worker.cumulative().count == 0  # taken, not copied
    delta = orjson.loads(orjson.dumps(delta))  # plain data: survives JSON and pickle
    assert pickle.loads(pickle.dumps(delta)) == delta

    front = WindowedHistogram(BOUNDS, horizon=10, now=0.0)
    front.observe(0.0005, now=7.1)
    front.merge_delta(delta)
    assert front.window(1, now=7.9).counts == (1, 0, 0, 1, 0)  # same second as the worker's 0.5
    assert front.window(10, now=7.9).counts == (1, 2, 0, 1, 0)
    assert front.cumulative().maximum == 0.5


def test_counter_delta_round_trip() -> None:
    worker = WindowedCounter(horizon=10, now=0.0)
    worker.add(4, now=2.0)
    worker.add(1, now=9.0)
    front = WindowedCounter(horizon=10, now=0.0)
    front.merge_delta(worker.take_delta())
    assert worker.total() == 0
    assert front.total() == 5
    assert front.window(2, now=9.5) == 1
