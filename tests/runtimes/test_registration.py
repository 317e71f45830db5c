"""How the built-in runtimes register: lazily, with their extras, and detected by their files."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ladle import PluginHost
from ladle.testing import models

EXPECTED = {
    "xgboost": (("xgboost",), "xgboost"),
    "onnx": (("onnxruntime",), "onnx"),
    "torch": (("torch",), "torch"),
    "jax": (("jax", "flatbuffers"), "jax"),
    "python": ((), None),
}


def test_registrations(host: PluginHost) -> None:
    registered = {r.name: r for r in host.registrations("runtime")}
    for name, (requires, extra) in EXPECTED.items():
        registration = registered[name]
        assert (registration.requires, registration.extra) == (requires, extra), name
        assert isinstance(registration.factory, str), f"{name} must be imported lazily"
        assert registration.factory.startswith(f"ladle.plugins.runtimes.{name}.runtime:")
        assert registration.detect is not None and registration.description


def _python(code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_registration_imports_no_framework() -> None:
    _python(
        """
        import sys
        from ladle import PluginHost
        host = PluginHost().discover()
        names = {r.name for r in host.registrations("runtime")}
        assert {"xgboost", "onnx", "torch", "jax", "python"} <= names, names
        heavy = {"torch", "jax", "onnxruntime", "xgboost", "onnx", "sklearn"} & set(sys.modules)
        assert not heavy, heavy
        """
    )


def test_missing_dependency_still_registers_and_names_the_extra() -> None:
    _python(
        """
        import importlib.abc, sys
        HIDDEN = {"torch", "jax", "flatbuffers", "onnxruntime", "xgboost"}

        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.partition(".")[0] in HIDDEN:
                    raise ModuleNotFoundError(name)
                return None

        sys.meta_path.insert(0, Hide())
        from ladle import MissingDependencyError, PluginHost
        host = PluginHost().discover()
        for name, extra in [("xgboost", "xgboost"), ("onnx", "onnx"), ("torch", "torch"), ("jax", "jax")]:
            try:
                host.load("runtime", name)
            except MissingDependencyError as exc:
                assert exc.details["extra"] == extra, exc.details
                assert f"pip install 'ladle[{extra}]'" in exc.message, exc.message
            else:
                raise AssertionError(f"{name} loaded without its dependency")
        host.load("runtime", "python")  # needs nothing beyond the core
        """
    )


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (models.build_xgboost, "xgboost"),
        (models.build_onnx_mlp, "onnx"),
        (models.build_jax_mlp, "jax"),
        (lambda d: models.build_python_handler(d, handler_file=True), "python"),
        (lambda d: (d / "model.pt2").write_bytes(b"PK"), "torch"),
    ],
)
def test_artifacts_are_detected(tmp_path, host: PluginHost, build, expected) -> None:
    if expected in ("xgboost", "jax", "onnx"):
        pytest.importorskip(expected)  # the builder needs the framework
    build(tmp_path)
    assert host.detect_runtime(tmp_path) == expected
