"""The Python runtime: installed handlers, and handler.py only with trust_code."""

from __future__ import annotations

import numpy as np
import pytest

from ladle import Batch, ConfigError, InvalidInputError, PluginHost
from ladle.testing import models

HANDLER = "ladle.testing.models:NumpyMLPHandler"


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory):
    return models.build_python_handler(tmp_path_factory.mktemp("python"))


def test_installed_handler_serves_the_model(load_runtime, weights_dir, features, reference) -> None:
    runtime = load_runtime("python", weights_dir, options={"handler": HANDLER})
    outputs = runtime.predict(Batch.of({"input": features}))
    np.testing.assert_allclose(outputs["probability"], reference, rtol=1e-6)
    assert runtime.signature().to_dict() == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1]}],
    }
    assert runtime.memory_bytes() == sum(a.nbytes for a in models.mlp_weights().arrays().values())


def test_handler_options_are_passed_and_errors_kept(load_runtime, weights_dir, features) -> None:
    runtime = load_runtime("python", weights_dir, options={"handler": HANDLER, "input_name": "x"})
    assert runtime.signature().inputs[0].name == "x"
    rows = features[:2].copy()
    rows[0, 0] = np.inf
    with pytest.raises(InvalidInputError, match=r"rows \[0\]"):
        runtime.predict(Batch.of({"x": rows}))


def _handler_file(directory, marker):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "handler.py").write_text(
        "import pathlib\n"
        "import numpy as np\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "class Handler:\n"
        "    def load(self, directory, options):\n"
        "        self.factor = float(options['factor'])\n"
        "    def predict(self, batch):\n"
        "        return {'output': batch.inputs['input'] * self.factor}\n"
        "class Other(Handler):\n"
        "    def predict(self, batch):\n"
        "        return {'output': batch.inputs['input'] - self.factor}\n"
    )
    return directory


def test_model_directory_code_is_refused_without_trust_code(tmp_path, load_runtime, host: PluginHost) -> None:
    marker = tmp_path / "handler-ran"
    version = _handler_file(tmp_path / "1", marker)
    assert host.detect_runtime(version) == "python"
    with pytest.raises(ConfigError, match="refusing to execute code from the model directory") as caught:
        load_runtime("python", version, model="custom", options={"factor": 3})
    assert "trust_code = true" in caught.value.message
    assert not marker.exists()


def test_model_directory_code_runs_with_trust_code(tmp_path, load_runtime) -> None:
    marker = tmp_path / "handler-ran"
    version = _handler_file(tmp_path / "1", marker)
    runtime = load_runtime("python", version, trust_code=True, options={"factor": 3})
    assert marker.exists()
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(runtime.predict(Batch.of({"input": rows}))["output"], rows * 3)
    assert runtime.signature() is None
    assert isinstance(runtime.memory_bytes(), int)  # measured as the process's growth
    other = load_runtime("python", version, trust_code=True, options={"factor": 1, "handler_class": "Other"})
    np.testing.assert_array_equal(other.predict(Batch.of({"input": rows}))["output"], rows - 1)


def test_demo_handler_file_runs_with_trust_code(tmp_path, load_runtime) -> None:
    version = models.build_python_handler(tmp_path, handler_file=True)
    runtime = load_runtime("python", version, trust_code=True)
    rows = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(runtime.predict(Batch.of({"input": rows}))["output"], rows * 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"handler": "no_such_module_here:Handler"}, "cannot import handler module"),
        ({"handler": "ladle.testing.models:Missing"}, "has no 'Missing'"),
        ({"handler": "ladle.testing.models"}, "must be 'module:Class'"),
        ({"handler": "ladle.testing.models:FEATURES"}, "is not a class"),
        ({}, "no handler"),
    ],
)
def test_bad_handler_settings_are_config_errors(tmp_path, load_runtime, options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_runtime("python", tmp_path, options=options)
