"""Quality: drift of shifted streams, reference files, input range and schema checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ladle.errors import ConfigError, InvalidInputError
from ladle.telemetry import Telemetry, load_reference, reference_from_arrays, write_reference
from ladle.telemetry.quality import psi

from .feed import requests, run_batch

QUALITY = {"enabled": True, "inputs": True, "reference_rows": 400, "min_count": 200, "window": 60}


def make(quality: dict[str, Any], base_dir: Path | None = None) -> Telemetry:
    return Telemetry({"quality": quality, "resources": {"enabled": False}}, base_dir=base_dir)


def feed(telemetry: Telemetry, rng: np.random.Generator, batches: int, shift: float = 0.0) -> None:
    """Batches of 20 rows x 2 features, output = sum of features."""
    observer = telemetry.observer_for("iris", "1")
    for _ in range(batches):
        x = (rng.normal(size=(20, 2)) + shift).astype(np.float32)
        batch = requests(1, inputs={"x": x})
        run_batch(observer, batch, queued=0.0, runtime=0.001, outputs=[{"y": x.sum(axis=1)}])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_psi_of_equal_and_shifted_histograms() -> None:
    assert psi([10, 20, 30], [20, 40, 60]) == pytest.approx(0.0)
    assert psi([50, 50, 0, 0], [0, 0, 50, 50]) > 5
    assert psi([1, 1], [0, 0]) == 0.0


def test_a_shifted_input_stream_raises_the_drift_score(rng: np.random.Generator) -> None:
    steady, shifted = make(QUALITY), make(QUALITY)
    try:
        feed(steady, rng, 20 + 30)  # 400 reference rows, then 600 more from the same distribution
        feed(shifted, rng, 20)
        feed(shifted, rng, 30, shift=1.5)
        calm = steady.quality.drift("iris", "1")  # type: ignore[union-attr]
        moved = shifted.quality.drift("iris", "1")  # type: ignore[union-attr]
        assert set(calm) == {"input:x[0]", "input:x[1]", "output:y"}
        assert max(calm.values()) < 0.1
        assert min(moved.values()) > 0.25
        assert shifted.snapshot(10)["versions"][0]["drift"] == pytest.approx(max(moved.values()))
        # exported: the drift gauge and the distribution over the reference bins
        body = shifted.prometheus_text()[0].decode()
        found = {
            (s.name, s.labels.get("ladle_quality_feature"), s.labels.get("le")): s.value
            for f in text_string_to_metric_families(body)
            for s in f.samples
        }
        assert found[("ladle_quality_drift", "y", None)] == pytest.approx(moved["output:y"])
        # rows after the reference window (buckets with negative bounds carry no _count in Prometheus)
        assert found[("ladle_quality_distribution_bucket", "x[1]", "+Inf")] == 600
    finally:
        steady.close()
        shifted.close()


def test_no_score_before_enough_data(rng: np.random.Generator) -> None:
    telemetry = make(QUALITY)
    try:
        feed(telemetry, rng, 25)  # 400 reference rows + 100 monitored, below min_count
        assert telemetry.quality.drift("iris", "1") == {}  # type: ignore[union-attr]
        assert telemetry.snapshot(10)["versions"][0]["drift"] is None
    finally:
        telemetry.close()


def test_reference_file_from_training_data(tmp_path: Path, rng: np.random.Generator) -> None:
    training = rng.normal(size=(2000, 2)).astype(np.float32)
    write_reference(tmp_path / "iris.json", reference_from_arrays({"x": training}, role="input"))
    assert load_reference(tmp_path / "iris.json")[0].edges[0][4] == pytest.approx(0.0, abs=0.1)  # the median
    settings = {**QUALITY, "inputs": False, "outputs": False, "references": {"iris": "iris.json"}}
    telemetry = make(settings, base_dir=tmp_path)
    try:
        feed(telemetry, rng, 15, shift=-2.0)  # no reference window: compared with the file at once
        drift = telemetry.quality.drift("iris", "1")  # type: ignore[union-attr]
        assert set(drift) == {"input:x[0]", "input:x[1]"} and min(drift.values()) > 1
        saved = telemetry.quality.reference("iris", "1")  # type: ignore[union-attr]
        assert saved == load_reference(tmp_path / "iris.json")
    finally:
        telemetry.close()


def test_a_bad_reference_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"format": "something-else"}')
    with pytest.raises(ConfigError, match=r"bad\.json"):
        make({"enabled": True, "references": {"iris": "bad.json"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"missing\.json"):
        make({"enabled": True, "references": {"iris": "missing.json"}}, base_dir=tmp_path)


@pytest.fixture
def counting() -> Iterator[Telemetry]:
    telemetry = make(
        {"enabled": True, "outputs": False, "checks": "count", "ranges": {"iris": {"x": [0.0, 1.0]}}}
    )
    yield telemetry
    telemetry.close()


def test_count_mode_counts_out_of_range_values(counting: Telemetry) -> None:
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}
    counting.version_ready("iris", "1", signature=signature)
    assert counting.input_checks("iris", "1") is None  # count mode never rejects
    values = np.array([[0.5, 2.0], [np.nan, 0.1]], np.float32)
    run_batch(
        counting.observer_for("iris", "1"), requests(2, inputs={"x": values}), queued=0.0, runtime=0.001
    )
    out_of_range = counting.stats.family_window(
        "ladle.quality.out_of_range", "iris", "1", 10, {"ladle.quality.input": "x"}
    )
    assert out_of_range == 4  # 2.0 and NaN, in each of the two requests


def test_reject_mode_validates_before_queueing() -> None:
    telemetry = make({"enabled": True, "checks": "reject"})
    try:
        signature = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2], "min": [0, -1], "max": [1, 1]}]
        }
        telemetry.version_ready("iris", "1", signature=signature)
        checks = telemetry.input_checks("iris", "1")
        assert checks is not None
        checks.validate({"x": np.array([[1.0, -1.0]], np.float32)})  # within per-column bounds
        with pytest.raises(InvalidInputError) as caught:
            checks.validate({"x": np.array([[0.5, -2.0], [3.0, 0.0]], np.float32)})
        assert caught.value.status == 400
        assert caught.value.to_dict()["inputs"] == {
            "x": {"out_of_range": 2, "min": [0.0, -1.0], "max": [1.0, 1.0]}
        }
        with pytest.raises(InvalidInputError) as mismatch:
            checks.validate({"x": np.zeros((1, 3), np.float32)})
        assert mismatch.value.to_dict()["schema_mismatch"] == ["x"]
        assert telemetry.stats.family_window("ladle.quality.rejected", "iris", "1", 10) == 2
    finally:
        telemetry.close()


def test_small_and_large_batches_bin_alike(rng: np.random.Generator) -> None:
    """Few values are binned in Python, many with numpy: both must agree, NaN left out of both."""
    settings = {**QUALITY, "outputs": False, "reference_rows": 100}
    small, large = make(settings), make(settings)
    try:
        reference = rng.normal(size=(100, 2)).astype(np.float32)
        data = rng.normal(size=(300, 2))  # float64: the edge below is then exactly representable
        data[5, 1] = np.nan
        for telemetry in (small, large):
            run_batch(
                telemetry.observer_for("iris", "1"),
                requests(1, inputs={"x": reference}),
                queued=0.0,
                runtime=0.001,
            )
        (learned,) = small.quality.reference("iris", "1")  # type: ignore[union-attr]
        data[7, 0] = learned.edges[0][3]  # exactly on a bin edge: counts in the bin below (le)
        for row in range(0, 300, 2):
            run_batch(
                small.observer_for("iris", "1"),
                requests(1, inputs={"x": data[row : row + 2]}),
                queued=0.0,
                runtime=0.001,
            )
        run_batch(large.observer_for("iris", "1"), requests(1, inputs={"x": data}), queued=0.0, runtime=0.001)
        for feature in ("x[0]", "x[1]"):
            key = (
                ("ladle.model.name", "iris"),
                ("ladle.model.version", "1"),
                ("ladle.quality.role", "input"),
                ("ladle.quality.feature", feature),
            )
            one, other = (t.quality.distribution.series[key].cumulative() for t in (small, large))  # type: ignore[union-attr]
            assert one.counts == other.counts
            assert one.total == pytest.approx(other.total, rel=1e-5)
            assert one.count == (299 if feature == "x[1]" else 300)
    finally:
        small.close()
        large.close()
