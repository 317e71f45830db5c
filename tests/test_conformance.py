"""Every built-in runtime through the conformance kit, on both executors; and the kit checked itself."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from ladle import Arrays, InferenceRequest, PluginHost, RuntimeSpec
from ladle.envelope import Batch
from ladle.testing import models
from ladle.testing.conformance import (
    RunningInstance,
    RuntimeConformance,
    check_bad_item_isolated,
    check_batch_order,
    probe_inputs,
    running_instance,
    write_probe,
)


def cancer_rows(rows: int, seed: int) -> np.ndarray:
    features = models.breast_cancer()[0]
    return features[np.random.default_rng(seed).choice(len(features), rows, replace=False)]


def token_rows(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 32, (rows, 6))


class TestXGBoost(RuntimeConformance):
    def make_spec(self, directory: Path) -> RuntimeSpec:
        models.build_xgboost(directory)
        return RuntimeSpec(plugin="xgboost", artifact=str(directory), model="cancer", version="1")

    def sample_inputs(self, rows: int, seed: int) -> Arrays:
        return {"input": cancer_rows(rows, seed)}

    def bad_inputs(self, rows: int) -> Arrays:
        rows_ = cancer_rows(rows, 99).copy()
        rows_[:, 0] = np.inf
        return {"input": rows_}


class TestOnnx(RuntimeConformance):
    def make_spec(self, directory: Path) -> RuntimeSpec:
        models.build_onnx_token_classifier(directory)
        return RuntimeSpec(plugin="onnx", artifact=str(directory), model="tokens", version="1")

    def sample_inputs(self, rows: int, seed: int) -> Arrays:
        return {"tokens": token_rows(rows, seed)}

    def bad_inputs(self, rows: int) -> Arrays:
        return {"tokens": np.full((rows, 6), 1000, np.int64)}


class TestTorch(RuntimeConformance):
    def make_spec(self, directory: Path) -> RuntimeSpec:
        models.build_torch_token_classifier(directory)
        return RuntimeSpec(plugin="torch", artifact=str(directory), model="tokens", version="1")

    def sample_inputs(self, rows: int, seed: int) -> Arrays:
        return {"tokens": token_rows(rows, seed)}

    def bad_inputs(self, rows: int) -> Arrays:
        return {"tokens": np.full((rows, 6), 1000, np.int64)}


class TestJax(RuntimeConformance):
    def make_spec(self, directory: Path) -> RuntimeSpec:
        models.build_jax_mlp(directory)
        options = {"reject_non_finite": True}
        return RuntimeSpec(
            plugin="jax", artifact=str(directory), model="cancer", version="1", options=options
        )

    def sample_inputs(self, rows: int, seed: int) -> Arrays:
        return {"input": cancer_rows(rows, seed)}

    def bad_inputs(self, rows: int) -> Arrays:
        return {"input": np.full((rows, models.FEATURES), np.nan, np.float32)}


class TestPython(RuntimeConformance):
    def make_spec(self, directory: Path) -> RuntimeSpec:
        models.build_python_handler(directory)
        options = {"handler": "ladle.testing.models:NumpyMLPHandler"}
        return RuntimeSpec(
            plugin="python", artifact=str(directory), model="cancer", version="1", options=options
        )

    def sample_inputs(self, rows: int, seed: int) -> Arrays:
        return {"input": cancer_rows(rows, seed)}

    def bad_inputs(self, rows: int) -> Arrays:
        return {"input": np.full((rows, models.FEATURES), np.inf, np.float32)}


def probe_host() -> PluginHost:
    host = PluginHost().discover()
    host.add_module("ladle.testing.conformance")
    return host


class TestProbe(RuntimeConformance):
    """The kit against a runtime that is right by construction, plus what only the probe can see."""

    deadline_outputs = frozenset({"deadline"})

    def plugin_host(self) -> PluginHost:
        return probe_host()

    def make_spec(self, directory: Path) -> RuntimeSpec:
        return RuntimeSpec(plugin="conformance-probe", artifact=str(write_probe(directory)))

    def sample_inputs(self, rows: int, seed: int) -> Arrays:
        return probe_inputs(rows, seed)

    def bad_inputs(self, rows: int) -> Arrays:
        return {"x": -np.ones((rows, 4), np.float32)}

    def test_deadlines_reach_the_runtime(self, running: RunningInstance) -> None:
        now = time.monotonic()
        deadlines = [now + 30.0, None, now + 60.0]
        requests = [
            InferenceRequest("probe", probe_inputs(rows, seed), deadline=deadline)
            for seed, (rows, deadline) in enumerate(zip((2, 1, 3), deadlines, strict=True))
        ]
        results = running.execute(Batch.from_requests(requests))
        for result, deadline, request in zip(results, deadlines, requests, strict=True):
            assert not isinstance(result, Exception), result
            seen = result["deadline"]
            assert seen.shape == (request.rows,)
            if deadline is None:
                assert np.isnan(seen).all()
            else:
                assert np.all(seen == deadline)
            np.testing.assert_array_equal(result["y"], request.inputs["x"] * 2)


@pytest.mark.parametrize("fault", ["reverse", "server_error"])
def test_the_kit_catches_a_faulty_runtime(tmp_path: Path, fault: str) -> None:
    spec = RuntimeSpec(
        plugin="conformance-probe", artifact=str(write_probe(tmp_path)), options={"fault": fault}
    )
    samples = [probe_inputs(rows, seed) for seed, rows in enumerate((2, 1, 3), start=1)]
    with running_instance(spec, "thread", probe_host()) as running:
        if fault == "reverse":
            with pytest.raises(AssertionError, match="item 0 of a 3-item batch"):
                check_batch_order(running, samples, 1e-6, 1e-7)
        else:
            with pytest.raises(AssertionError, match="should fail with a 4xx error"):
                check_bad_item_isolated(running, samples[:2], {"x": -np.ones((1, 4), np.float32)}, 1e-6, 1e-7)


def test_probe_reports_no_deadline_as_nan(tmp_path: Path) -> None:
    spec = RuntimeSpec(plugin="conformance-probe", artifact=str(write_probe(tmp_path)))
    with running_instance(spec, "thread", probe_host()) as running:
        outputs = running.outputs(probe_inputs(1, 0))
    assert math.isnan(float(outputs["deadline"][0]))
