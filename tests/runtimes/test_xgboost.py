"""The XGBoost runtime against XGBoost's own predictions."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import xgboost
from sklearn.datasets import load_iris

from ladle import Batch, ConfigError, InvalidInputError
from ladle.plugins.runtimes.xgboost import detect
from ladle.plugins.runtimes.xgboost.dense import DensePredictor
from ladle.testing import models


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("xgb")
    models.build_xgboost(directory, n_estimators=30, max_depth=4)
    return directory


@pytest.fixture(scope="module")
def booster(model_dir) -> xgboost.Booster:
    booster = xgboost.Booster()
    booster.load_model(str(model_dir / "model.json"))
    return booster


def test_detect_reads_json_content_and_ubj(tmp_path, model_dir) -> None:
    assert (model_dir / "model.json").stat().st_size > 16 * 1024  # "version" sits far from the head
    assert detect(model_dir)
    pretty = tmp_path / "pretty"
    pretty.mkdir()
    document = json.loads((model_dir / "model.json").read_text())
    (pretty / "model.json").write_text(json.dumps(document, indent=2))
    assert detect(pretty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.json").write_text(json.dumps({"weights": [1, 2, 3], "version": 1}))
    assert not detect(other)
    ubj = tmp_path / "ubj"
    models.build_xgboost(ubj, n_estimators=2, file_name="model.ubj")
    assert detect(ubj)


@pytest.mark.parametrize("file_name", ["model.json", "model.ubj"])
def test_probabilities_equal_xgboost(tmp_path, load_runtime, features, file_name) -> None:
    models.build_xgboost(tmp_path, n_estimators=30, max_depth=4, file_name=file_name)
    booster = xgboost.Booster(model_file=str(tmp_path / file_name))
    expected = booster.predict(xgboost.DMatrix(features))
    runtime = load_runtime("xgboost", tmp_path)
    outputs = runtime.predict(Batch.of({"input": features}))
    assert list(outputs) == ["predict"]
    assert outputs["predict"].dtype == np.float32
    np.testing.assert_allclose(outputs["predict"], expected, rtol=1e-6, atol=1e-7)
    assert np.mean((outputs["predict"] > 0.5) == models.breast_cancer()[1]) > 0.9
    sig = runtime.signature()
    assert sig.inputs[0].to_dict() == {"name": "input", "datatype": "FP32", "shape": [-1, 30]}
    assert sig.outputs[0].to_dict() == {"name": "predict", "datatype": "FP32", "shape": [-1]}


def test_json_and_ubj_report_the_same_memory(tmp_path, load_runtime, model_dir, booster) -> None:
    booster.save_model(str(tmp_path / "model.ubj"))
    from_json = load_runtime("xgboost", model_dir).memory_bytes()
    from_ubj = load_runtime("xgboost", tmp_path).memory_bytes()
    assert from_json == from_ubj == len(booster.save_raw("ubj"))


def test_margin_output(load_runtime, model_dir, booster, features) -> None:
    runtime = load_runtime("xgboost", model_dir, options={"output": "margin"})
    margin = runtime.predict(Batch.of({"input": features[:50]}))["predict"]
    expected = booster.predict(xgboost.DMatrix(features[:50]), output_margin=True)
    np.testing.assert_allclose(margin, expected, rtol=1e-6, atol=1e-6)
    assert (margin < 0).any() and (margin > 1).any()  # margins, not probabilities


def test_multiclass_signature_and_probabilities(tmp_path, load_runtime) -> None:
    data, labels = load_iris(return_X_y=True)
    data = data.astype(np.float32)
    classifier = xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(data, labels)
    classifier.get_booster().save_model(str(tmp_path / "model.ubj"))
    runtime = load_runtime("xgboost", tmp_path)
    assert runtime.signature().outputs[0].shape == (-1, 3)
    outputs = runtime.predict(Batch.of({"input": data}))["predict"]
    np.testing.assert_allclose(outputs, classifier.predict_proba(data), rtol=1e-6, atol=1e-7)


def test_missing_values_served_and_infinity_refused(load_runtime, model_dir, booster, features) -> None:
    runtime = load_runtime("xgboost", model_dir)
    rows = features[:4].copy()
    rows[1, 3] = np.nan
    expected = booster.predict(xgboost.DMatrix(rows))
    np.testing.assert_allclose(runtime.predict(Batch.of({"input": rows}))["predict"], expected, rtol=1e-6)
    rows[2, 0] = np.inf
    with pytest.raises(InvalidInputError, match=r"rows \[2\] hold infinite values"):
        runtime.predict(Batch.of({"input": rows}))


@pytest.mark.parametrize("output", ["probability", "margin"])
def test_c_prediction_path_equals_inplace_predict(tmp_path, load_runtime, output) -> None:
    """The direct C call serves float32/float64 matrices bit for bit like ``inplace_predict``; other
    layouts and dtypes take ``inplace_predict`` itself."""
    data, labels = load_iris(return_X_y=True)
    classifier = xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(data, labels)
    booster = classifier.get_booster()
    booster.save_model(str(tmp_path / "model.ubj"))
    runtime = load_runtime("xgboost", tmp_path, options={"output": output})
    assert runtime.describe() == {"device": "cpu", "predict": "c_api"}
    predict_type = "margin" if output == "margin" else "value"
    rows = data[:7].copy()
    rows[2, 1] = np.nan
    shifted = b"x" + rows.astype(np.float32).tobytes()
    unaligned = np.frombuffer(shifted, np.float32, offset=1).reshape(rows.shape)
    assert not unaligned.flags.aligned  # binary V2 tensors can sit at any offset of the body
    layouts = (rows.astype(np.float32), rows, np.asfortranarray(rows), data[:7].astype(np.int32), unaligned)
    for matrix in (*layouts, rows[:1]):
        got = runtime.predict(Batch.of({"input": matrix}))["predict"]
        expected = booster.inplace_predict(matrix, predict_type=predict_type)
        assert got.shape == expected.shape == (len(matrix), 3)
        np.testing.assert_array_equal(got, expected)
    # which of them the C call itself took, and which it left to inplace_predict
    direct = DensePredictor.create(booster, predict_type)
    assert direct is not None
    for matrix in (rows.astype(np.float32), rows, rows[:1]):
        expected = booster.inplace_predict(matrix, predict_type=predict_type)
        np.testing.assert_array_equal(direct(matrix), expected)
    assert all(direct(matrix) is None for matrix in layouts[2:])
    direct.close()


def test_c_prediction_path_raises_xgboost_errors(booster) -> None:
    predict = DensePredictor.create(booster, "value")
    assert predict is not None
    with pytest.raises(xgboost.core.XGBoostError, match="features"):
        predict(np.zeros((1, 31), np.float32))  # the runtime refuses this before XGBoost sees it
    predict.close()
    predict.close()
    ones = np.ones((2, 30), np.float32)
    np.testing.assert_array_equal(predict(ones), booster.inplace_predict(ones))  # works without its proxy


def test_c_prediction_path_is_safe_from_several_threads(booster, features) -> None:
    """One call at a time uses the shared proxy DMatrix; a concurrent call gets XGBoost's own."""
    predict = DensePredictor.create(booster, "value")
    assert predict is not None
    expected = booster.inplace_predict(features)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: predict(features[i % 7 :]), range(200)))
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got, expected[i % 7 :])
    predict.close()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input": np.zeros((2, 29), np.float32)}, "expected 30 features"),
        ({"input": np.array([[b"x"] * 30], dtype=object)}, "numeric"),
        ({"a": np.zeros((1, 30), np.float32), "b": np.zeros((1, 30), np.float32)}, "one input named"),
    ],
)
def test_bad_inputs_are_client_errors(load_runtime, model_dir, inputs, message) -> None:
    runtime = load_runtime("xgboost", model_dir)
    with pytest.raises(InvalidInputError, match=message) as caught:
        runtime.predict(Batch.of(inputs))
    assert caught.value.status == 400


def test_thread_budget_is_applied(load_runtime, model_dir) -> None:
    runtime = load_runtime("xgboost", model_dir, threads=2)
    config = json.loads(runtime.booster.save_config())
    assert config["learner"]["generic_param"]["nthread"] == "2"


@pytest.mark.parametrize(
    ("options", "message"),
    [({"outputs": "margin"}, "unknown xgboost runtime options"), ({"output": "logit"}, "must be one of")],
)
def test_bad_options_are_config_errors(load_runtime, model_dir, options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_runtime("xgboost", model_dir, options=options)


def test_broken_file_is_config_error(tmp_path, load_runtime) -> None:
    (tmp_path / "model.ubj").write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match="not a loadable XGBoost model"):
        load_runtime("xgboost", tmp_path)


def cuda_usable() -> bool:
    return os.path.exists("/dev/nvidia0") and bool(xgboost.build_info().get("USE_CUDA"))


@pytest.mark.filterwarnings("ignore:.*GPU")
def test_cuda_refused_where_xgboost_cannot_use_it(load_runtime, model_dir) -> None:
    if cuda_usable():
        pytest.skip("XGBoost can use the GPU here")
    with pytest.raises(ConfigError, match="requested but XGBoost runs on 'cpu'"):
        load_runtime("xgboost", model_dir, device="cuda")


@pytest.mark.gpu
def test_cuda_predictions_equal_cpu(cuda_device, load_runtime, model_dir, features) -> None:
    if not cuda_usable():
        pytest.skip("this XGBoost build has no CUDA")
    cpu = load_runtime("xgboost", model_dir).predict(Batch.of({"input": features}))["predict"]
    runtime = load_runtime("xgboost", model_dir, device=cuda_device)
    assert runtime.device.startswith("cuda")
    gpu = runtime.predict(Batch.of({"input": features}))["predict"]
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6)
