"""The ONNX runtime against onnxruntime's own results."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ladle import Batch, ConfigError, InvalidInputError
from ladle.plugins.runtimes.onnx import detect
from ladle.plugins.runtimes.onnx import runtime as onnx_runtime
from ladle.testing import models


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("onnx-mlp")
    models.build_onnx_mlp(directory)
    return directory


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("onnx-int8")
    models.build_onnx_int8(directory)
    return directory


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("onnx-tokens")
    models.build_onnx_token_classifier(directory)
    return directory


def own_run(directory, feed):
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def test_detect(tmp_path, mlp_dir) -> None:
    assert detect(mlp_dir)
    assert not detect(tmp_path)


def test_fp32_equals_onnxruntime_and_the_trained_model(load_runtime, mlp_dir, features, reference) -> None:
    runtime = load_runtime("onnx", mlp_dir)
    outputs = runtime.predict(Batch.of({"input": features}))
    assert list(outputs) == ["probability"]
    np.testing.assert_array_equal(outputs["probability"], own_run(mlp_dir, {"input": features})[0])
    np.testing.assert_allclose(outputs["probability"], reference, rtol=1e-5, atol=1e-6)
    assert runtime.signature().to_dict() == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1]}],
    }
    weights = models.mlp_weights()
    assert runtime.memory_bytes() == sum(a.nbytes for a in weights.arrays().values()) + 8  # + the shape


def test_int8_model_serves_its_own_quantised_results(
    load_runtime, int8_dir, mlp_dir, features, reference
) -> None:
    ops = {node.op_type for node in onnx.load(str(int8_dir / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops
    runtime = load_runtime("onnx", int8_dir)
    probability = runtime.predict(Batch.of({"input": features}))["probability"]
    np.testing.assert_array_equal(probability, own_run(int8_dir, {"input": features})[0])
    difference = np.abs(probability - reference)
    assert difference.max() > 1e-4  # really quantised ...
    assert difference.max() < 0.1  # ... and still the same model
    assert np.mean((probability > 0.5) == (reference > 0.5)) > 0.97
    assert runtime.memory_bytes() < load_runtime("onnx", mlp_dir).memory_bytes()


def test_signature_of_integer_inputs_and_two_outputs(load_runtime, tokens_dir) -> None:
    runtime = load_runtime("onnx", tokens_dir)
    assert runtime.signature().to_dict() == {
        "inputs": [{"name": "tokens", "datatype": "INT64", "shape": [-1, 6]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "probability", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    tokens = np.random.default_rng(0).integers(0, 32, (5, 6))
    outputs = runtime.predict(Batch.of({"tokens": tokens}))
    np.testing.assert_allclose(outputs["logits"], models.token_classifier_weights().logits(tokens), rtol=1e-5)
    np.testing.assert_allclose(outputs["probability"].sum(axis=1), 1.0, rtol=1e-6)


def test_out_of_range_index_is_a_client_error(load_runtime, tokens_dir) -> None:
    runtime = load_runtime("onnx", tokens_dir)
    tokens = np.zeros((2, 6), np.int64)
    tokens[1, 2] = 99
    with pytest.raises(InvalidInputError, match="out of data bounds") as caught:
        runtime.predict(Batch.of({"tokens": tokens}))
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input": np.zeros((2, 31), np.float32)}, "invalid dimensions"),
        ({"input": np.zeros((2, 30), np.float64)}, "Unexpected input data type"),
        ({"x": np.zeros((1, 30), np.float32), "y": np.zeros((1, 30), np.float32)}, "missing input 'input'"),
    ],
)
def test_bad_inputs_are_client_errors(load_runtime, mlp_dir, inputs, message) -> None:
    runtime = load_runtime("onnx", mlp_dir)
    with pytest.raises(InvalidInputError, match=message):
        runtime.predict(Batch.of(inputs))


def test_a_lone_input_is_taken_whatever_its_name(load_runtime, mlp_dir, reference, features) -> None:
    runtime = load_runtime("onnx", mlp_dir)
    outputs = runtime.predict(Batch.of({"features": features[:3]}))
    np.testing.assert_allclose(outputs["probability"], reference[:3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("batch", "rows"), [(1, 5), (4, 6), (4, 4)])
def test_fixed_batch_graph_is_served_in_slices(
    tmp_path, load_runtime, features, reference, batch, rows
) -> None:
    models.build_onnx_mlp(tmp_path, batch=batch)
    runtime = load_runtime("onnx", tmp_path)
    assert runtime.max_batch_rows == batch
    assert runtime.signature().inputs[0].shape == (-1, 30)
    probability = runtime.predict(Batch.of({"input": features[:rows]}))["probability"]
    np.testing.assert_allclose(probability, reference[:rows], rtol=1e-5, atol=1e-6)


def test_provider_preference_keeps_only_available_ones(load_runtime, mlp_dir) -> None:
    runtime = load_runtime("onnx", mlp_dir, options={"providers": ["TensorRT", "CUDA", "CPU"]})
    available = ort.get_available_providers()
    expected_first = next(
        p
        for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
        if p in available
    )
    assert runtime.providers == runtime.session.get_providers()
    assert runtime.providers[0] == expected_first
    assert runtime.describe()["providers"] == runtime.providers


def test_no_available_provider_is_a_config_error(load_runtime, mlp_dir) -> None:
    with pytest.raises(ConfigError, match="none of the requested onnx providers"):
        load_runtime("onnx", mlp_dir, options={"providers": ["NoSuchAccelerator"]})


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_listed_but_not_started_provider_is_detected(monkeypatch, load_runtime, mlp_dir, caplog) -> None:
    """A GPU build lists CUDA even where it cannot start; the active providers decide."""
    listed = ["CUDAExecutionProvider", *ort.get_available_providers()]
    monkeypatch.setattr(onnx_runtime.ort, "get_available_providers", lambda: listed)
    if (
        "CUDAExecutionProvider"
        in ort.InferenceSession(
            str(mlp_dir / "model.onnx"), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        ).get_providers()
    ):
        pytest.skip("CUDA really starts here")
    runtime = load_runtime("onnx", mlp_dir, options={"providers": ["CUDA", "CPU"]})
    assert runtime.providers == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider did not start" in caplog.text
    with pytest.raises(ConfigError, match="started none of the requested providers"):
        load_runtime("onnx", mlp_dir, options={"providers": ["CUDA"]})


def test_thread_budget_sets_both_pools(load_runtime, mlp_dir) -> None:
    runtime = load_runtime("onnx", mlp_dir, threads=2)
    options = runtime.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 2)


def test_outputs_option_selects_outputs(load_runtime, tokens_dir) -> None:
    runtime = load_runtime("onnx", tokens_dir, options={"outputs": ["probability"]})
    outputs = runtime.predict(Batch.of({"tokens": np.ones((2, 6), np.int64)}))
    assert list(outputs) == ["probability"]
    assert [s.name for s in runtime.signature().outputs] == ["probability"]
    with pytest.raises(ConfigError, match="the model's tensor outputs are"):
        load_runtime("onnx", tokens_dir, options={"outputs": ["scores"]})


def test_broken_file_and_unknown_option_are_config_errors(tmp_path, load_runtime, mlp_dir) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ConfigError, match="onnxruntime cannot load it"):
        load_runtime("onnx", tmp_path)
    with pytest.raises(ConfigError, match="unknown onnx runtime options"):
        load_runtime("onnx", mlp_dir, options={"provider": ["CPU"]})
