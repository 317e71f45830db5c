"""The scikit-learn runtime against scikit-learn's own predictions, its trust rules, and a real server."""

from __future__ import annotations

import operator
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import skops.io
from sklearn.base import BaseEstimator
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from ladle import Arrays, Batch, ConfigError, InvalidInputError, PluginHost, RuntimeSpec
from ladle.config import ServerConfig
from ladle.plugins.runtimes.sklearn import detect
from ladle.plugins.runtimes.sklearn.runtime import _library_class
from ladle.server import Server
from ladle.testing.conformance import RuntimeConformance
from ladle.testing.server import RunningServer, run_server

Array = np.ndarray[Any, Any]


def iris() -> tuple[Array, Array]:
    return load_iris(return_X_y=True)


def iris_forest() -> RandomForestClassifier:
    features, labels = iris()
    forest = RandomForestClassifier(n_estimators=12, max_depth=4, random_state=0, n_jobs=2)
    return forest.fit(features, labels)


def named_iris_pipeline() -> Pipeline:
    """A scaler before a classifier whose labels are the species names (strings)."""
    data = load_iris()
    names = data.target_names[data.target]
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(data.data, names)


def diabetes_regressor() -> GradientBoostingRegressor:
    features, target = load_diabetes(return_X_y=True)
    return GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=0).fit(features, target)


def save(model: Any, directory: Path, file_name: str = "model.skops") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name
    if file_name.endswith(".skops"):
        skops.io.dump(model, path)
    elif file_name.endswith(".joblib"):
        joblib.dump(model, path)
    else:
        path.write_bytes(pickle.dumps(model))
    return path


def iris_rows(rows: int, seed: int) -> Array:
    features, _ = iris()
    return features[np.random.default_rng(seed).choice(len(features), rows, replace=False)]


# Conformance ---------------------------------------------------------------------------------


class TestSklearnConformance(RuntimeConformance):
    """A Pipeline (scaler + logistic regression) saved with skops, through both executors."""

    def make_spec(self, directory: Path) -> RuntimeSpec:
        features, labels = iris()
        save(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features, labels), directory
        )
        return RuntimeSpec(plugin="sklearn", artifact=str(directory), model="iris", version="1")

    def sample_inputs(self, rows: int, seed: int) -> Arrays:
        return {"input": iris_rows(rows, seed)}

    def bad_inputs(self, rows: int) -> Arrays:
        return {"input": np.full((rows, 4), np.nan)}  # LogisticRegression takes no missing values


# Predictions equal scikit-learn's own -----------------------------------------------------------


def test_iris_classifier_answers_labels_and_probabilities(tmp_path: Path, load_runtime: Any) -> None:
    forest = iris_forest()
    save(forest, tmp_path)  # trees hold sklearn.tree._tree.Tree, which skops does not trust by itself
    runtime = load_runtime("sklearn", tmp_path)
    features, labels = iris()
    outputs = runtime.predict(Batch.of({"input": features}))
    assert list(outputs) == ["predict", "predict_proba"]
    np.testing.assert_array_equal(outputs["predict"], forest.predict(features))
    # served with n_jobs=1, so the trees' votes may be summed in another order than forest's own
    np.testing.assert_allclose(outputs["predict_proba"], forest.predict_proba(features), rtol=1e-12)
    assert outputs["predict"].dtype == labels.dtype == np.int64
    assert np.mean(outputs["predict"] == labels) > 0.9
    assert runtime.signature().to_dict() == {
        "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
        ],
    }
    assert runtime.describe()["estimator"] == "RandomForestClassifier"
    assert runtime.model.n_jobs == 1  # saved with n_jobs=2; the instance's thread budget wins
    # memory: at least the trees' node arrays, and about what the estimator pickles to
    nodes = sum(tree.tree_.__getstate__()["nodes"].nbytes for tree in forest.estimators_)
    assert nodes <= runtime.memory_bytes() <= 2 * len(pickle.dumps(forest))


def test_diabetes_regressor_answers_predict_only(tmp_path: Path, load_runtime: Any) -> None:
    regressor = diabetes_regressor()
    save(regressor, tmp_path)
    runtime = load_runtime("sklearn", tmp_path)
    features, _ = load_diabetes(return_X_y=True)
    outputs = runtime.predict(Batch.of({"input": features}))
    assert list(outputs) == ["predict"]
    np.testing.assert_array_equal(outputs["predict"], regressor.predict(features))
    assert [s.to_dict() for s in runtime.signature().outputs] == [
        {"name": "predict", "datatype": "FP64", "shape": [-1]}
    ]
    assert runtime.signature().inputs[0].shape == (-1, 10)
    assert runtime.memory_bytes() > 0


def test_pipeline_with_string_labels_answers_bytes(tmp_path: Path, load_runtime: Any) -> None:
    pipeline = named_iris_pipeline()
    save(pipeline, tmp_path)
    runtime = load_runtime("sklearn", tmp_path)
    features, _ = iris()
    outputs = runtime.predict(Batch.of({"input": features}))
    assert outputs["predict"].dtype == object
    assert outputs["predict"].tolist() == [label.encode() for label in pipeline.predict(features)]
    np.testing.assert_array_equal(outputs["predict_proba"], pipeline.predict_proba(features))
    specs = {s.name: (s.datatype, s.shape) for s in runtime.signature().outputs}
    assert specs == {"predict": ("BYTES", (-1,)), "predict_proba": ("FP64", (-1, 3))}
    assert runtime.describe()["estimator"] == "Pipeline(StandardScaler, LogisticRegression)"
    assert load_runtime("sklearn", tmp_path, threads=2).model.get_params()["logisticregression__n_jobs"] == 2


def test_feature_names_are_described(tmp_path: Path, load_runtime: Any) -> None:
    features, labels = iris()
    model = LogisticRegression(max_iter=500).fit(features, labels)
    model.feature_names_in_ = np.array(load_iris().feature_names, dtype=object)  # as fit(DataFrame) sets
    save(model, tmp_path)
    runtime = load_runtime("sklearn", tmp_path)
    assert runtime.describe()["feature_names"] == load_iris().feature_names
    with warnings.catch_warnings(record=True) as seen:
        outputs = runtime.predict(Batch.of({"input": features[:5]}))
    assert not [str(w.message) for w in seen if "feature names" in str(w.message)]
    np.testing.assert_array_equal(outputs["predict"], model.predict(features[:5]))


def test_outputs_option_chooses_and_is_checked(tmp_path: Path, load_runtime: Any) -> None:
    save(iris_forest(), tmp_path / "forest")
    save(diabetes_regressor(), tmp_path / "regressor")
    runtime = load_runtime("sklearn", tmp_path / "forest", options={"outputs": ["predict"]})
    assert list(runtime.predict(Batch.of({"input": iris_rows(3, 0)}))) == ["predict"]
    assert [s.name for s in runtime.signature().outputs] == ["predict"]
    with pytest.raises(ConfigError, match=r"\['predict_proba'\] not offered .* offers \['predict'\]"):
        load_runtime("sklearn", tmp_path / "regressor", options={"outputs": ["predict_proba"]})
    with pytest.raises(ConfigError, match="non-empty list"):
        load_runtime("sklearn", tmp_path / "forest", options={"outputs": "predict"})
    with pytest.raises(ConfigError, match=r"unknown sklearn runtime options \['output'\]"):
        load_runtime("sklearn", tmp_path / "forest", options={"output": "probability"})


@pytest.mark.parametrize(
    "shape", [(2, 5), (2, 3), (4,), (1, 2, 2)], ids=["too-many", "too-few", "one-dim", "three-dim"]
)
def test_wrong_shape_is_invalid_input_naming_the_expected_shape(
    tmp_path: Path, load_runtime: Any, shape: tuple[int, ...]
) -> None:
    save(iris_forest(), tmp_path)
    runtime = load_runtime("sklearn", tmp_path)
    with pytest.raises(InvalidInputError, match=r"must have shape \[-1, 4\] \(4 features per row\)") as info:
        runtime.predict(Batch.of({"input": np.zeros(shape)}))
    assert info.value.status == 400 and info.value.details["expected"] == [-1, 4]
    assert "Traceback" not in info.value.message and "/" not in info.value.message


def test_values_sklearn_refuses_are_invalid_input(tmp_path: Path, load_runtime: Any) -> None:
    features, labels = iris()
    save(LogisticRegression(max_iter=500).fit(features, labels), tmp_path)
    runtime = load_runtime("sklearn", tmp_path)
    rows = features[:3].copy()
    rows[1, 2] = np.inf
    with pytest.raises(InvalidInputError, match="infinity"):
        runtime.predict(Batch.of({"input": rows}))


# Trust --------------------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", ["model.joblib", "model.pkl"])
def test_pickled_models_need_trust_code(tmp_path: Path, load_runtime: Any, file_name: str) -> None:
    forest = iris_forest()
    path = save(forest, tmp_path, file_name)
    with pytest.raises(ConfigError) as info:
        load_runtime("sklearn", tmp_path, model="iris")
    message = info.value.message
    assert message.startswith(f"{path}: refusing to unpickle the model")
    assert "runs arbitrary code" in message
    assert "set trust_code = true for model 'iris' (model.toml or ladle.toml)" in message
    assert "skops.io.dump" in message
    assert info.value.details == {"file": str(path), "key": "trust_code"}
    runtime = load_runtime("sklearn", tmp_path, model="iris", trust_code=True)
    features, _ = iris()
    outputs = runtime.predict(Batch.of({"input": features}))
    np.testing.assert_allclose(outputs["predict_proba"], forest.predict_proba(features), rtol=1e-12)
    assert runtime.describe()["format"] == file_name.rpartition(".")[2]


def test_skops_with_a_foreign_type_needs_trust_code(tmp_path: Path, load_runtime: Any) -> None:
    features, labels = iris()
    pipeline = make_pipeline(FunctionTransformer(operator.neg), LogisticRegression(max_iter=500))
    pipeline.fit(features, labels)
    path = save(pipeline, tmp_path)
    with pytest.raises(ConfigError) as info:
        load_runtime("sklearn", tmp_path, model="negated")
    message = info.value.message
    assert "holds types that are not classes of scikit-learn, numpy or scipy: ['_operator.neg']" in message
    assert "set trust_code = true for model 'negated'" in message
    assert info.value.details["untrusted_types"] == ["_operator.neg"]
    runtime = load_runtime("sklearn", tmp_path, model="negated", trust_code=True)
    outputs = runtime.predict(Batch.of({"input": features[:10]}))
    np.testing.assert_array_equal(outputs["predict"], pipeline.predict(features[:10]))
    assert path.is_file()


def test_only_classes_the_libraries_define_are_trusted() -> None:
    assert _library_class("sklearn.tree._tree.Tree")
    assert _library_class("numpy.ndarray") and _library_class("scipy.sparse._csr.csr_matrix")
    assert not _library_class("numpy.sum")  # a function: it could be called with any argument
    assert not _library_class("posix.system") and not _library_class("builtins.eval")
    # a foreign class imported into a scikit-learn module is not scikit-learn's own
    assert not _library_class("sklearn.base.defaultdict")
    assert not _library_class("sklearn.no_such_module.Thing")
    assert not _library_class("sklearnish.Thing")


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_broken_or_foreign_artifacts_are_config_errors(tmp_path: Path, load_runtime: Any) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.skops").write_bytes(b"not a zip file")
    with pytest.raises(ConfigError, match="not a loadable skops model"):
        load_runtime("sklearn", tmp_path / "junk")
    save(StandardScaler().fit(iris()[0]), tmp_path / "scaler")
    with pytest.raises(ConfigError, match="holds a StandardScaler, which has no predict method"):
        load_runtime("sklearn", tmp_path / "scaler")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no scikit-learn model file"):
        load_runtime("sklearn", tmp_path / "empty")
    features, labels = iris()
    logged = make_pipeline(FunctionTransformer(np.log), LogisticRegression(max_iter=500))
    save(logged.fit(features, labels), tmp_path / "logged")  # log(0) is -inf, which it refuses
    with pytest.raises(ConfigError, match=r"fails on a row of zeros \(Input X contains infinity"):
        load_runtime("sklearn", tmp_path / "logged")


class _NoWidth(BaseEstimator):
    """An estimator that never recorded ``n_features_in_``."""

    def predict(self, data: Array) -> Array:
        return np.asarray(data).sum(axis=1)


def test_an_estimator_without_its_width_needs_a_configured_signature(
    tmp_path: Path, load_runtime: Any
) -> None:
    save(_NoWidth(), tmp_path, "model.pkl")
    with pytest.raises(ConfigError, match=r"n_features_in_\); give the model a signature"):
        load_runtime("sklearn", tmp_path, trust_code=True)
    signature = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "predict", "datatype": "FP32", "shape": [-1]}],
    }
    runtime = load_runtime("sklearn", tmp_path, trust_code=True, signature=signature)
    assert runtime.signature().inputs[0].datatype == "FP32"
    rows = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    np.testing.assert_array_equal(runtime.predict(Batch.of({"input": rows}))["predict"], [3.0, 7.0])


# Detection ----------------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", ["model.skops", "model.joblib", "model.pkl"])
def test_artifacts_are_detected(tmp_path: Path, host: PluginHost, file_name: str) -> None:
    assert not detect(tmp_path)
    (tmp_path / file_name).write_bytes(b"")
    assert detect(tmp_path)
    assert host.detect_runtime(tmp_path) == "sklearn"


# A real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict[str, Any]]]:
    """Zero-config skops models plus a joblib model that its model.toml trusts."""
    repository = tmp_path_factory.mktemp("sklearn-repo")
    estimators: dict[str, Any] = {
        "iris": iris_forest(),
        "species": named_iris_pipeline(),
        "diabetes": diabetes_regressor(),
    }
    for name in ("iris", "species", "diabetes"):
        save(estimators[name], repository / name / "1")
    estimators["trusted"] = estimators["iris"]
    save(estimators["trusted"], repository / "trusted" / "1", "model.joblib")
    (repository / "trusted" / "model.toml").write_text("trust_code = true\n")
    config = ServerConfig.model_validate({"server": {"repository": str(repository)}})
    with run_server(Server(config, PluginHost().discover())) as running:
        yield running, estimators


def test_tritonclient_gets_sklearns_predictions(served: tuple[RunningServer, dict[str, Any]]) -> None:
    import tritonclient.http as triton

    running, estimators = served
    client = triton.InferenceServerClient(running.url.removeprefix("http://"))
    rows = iris_rows(5, 3)
    for model in ("iris", "trusted"):
        for binary in (True, False):
            tensor = triton.InferInput("input", list(rows.shape), "FP64")
            tensor.set_data_from_numpy(rows, binary_data=binary)
            requested = [
                triton.InferRequestedOutput(n, binary_data=binary) for n in ("predict", "predict_proba")
            ]
            result = client.infer(model, [tensor], outputs=requested)
            np.testing.assert_array_equal(result.as_numpy("predict"), estimators[model].predict(rows))
            np.testing.assert_allclose(
                result.as_numpy("predict_proba"), estimators[model].predict_proba(rows), rtol=1e-12
            )
    tensor = triton.InferInput("input", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    species = client.infer("species", [tensor]).as_numpy("predict")
    assert species.tolist() == [label.encode() for label in estimators["species"].predict(rows)]
    metadata = client.get_model_metadata("iris")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]


def test_ladle_api_gets_sklearns_predictions(served: tuple[RunningServer, dict[str, Any]]) -> None:
    running, estimators = served
    features, _ = load_diabetes(return_X_y=True)
    with httpx.Client(base_url=running.url, timeout=30) as client:
        response = client.post(
            "/api/v1/models/diabetes/predict",
            json={"inputs": [{"input": row.tolist()} for row in features[:4]]},
        )
        assert response.status_code == 200, response.text
        assert response.headers["Ladle-Model-Version"] == "1"
        served_values = [record["predict"] for record in response.json()["outputs"]]
        np.testing.assert_allclose(served_values, estimators["diabetes"].predict(features[:4]), rtol=1e-12)

        rows = iris_rows(3, 4)
        response = client.post(
            "/api/v1/models/species/predict", json={"inputs": [{"input": r} for r in rows.tolist()]}
        )
        assert response.status_code == 200, response.text
        outputs = response.json()["outputs"]
        assert [o["predict"] for o in outputs] == estimators["species"].predict(rows).tolist()
        np.testing.assert_allclose(
            [o["predict_proba"] for o in outputs], estimators["species"].predict_proba(rows)
        )

        wrong = client.post("/api/v1/models/iris/predict", json={"inputs": [{"input": [1.0, 2.0, 3.0]}]})
        assert 400 <= wrong.status_code < 500, wrong.text
        body = wrong.json()
        assert "[-1, 4]" in body["error"] and "Traceback" not in wrong.text
        assert client.get("/v2/health/ready").status_code == 200  # still healthy

        listing = client.get("/api/v1/models").text  # each instance's runtime details
        assert (
            "Pipeline(StandardScaler, LogisticRegression)" in listing and "RandomForestClassifier" in listing
        )
