"""The JAX runtime against jax's own results."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from ladle import Batch, ConfigError, InvalidInputError, SignatureMismatchError
from ladle.plugins.runtimes.jax import detect
from ladle.plugins.runtimes.jax.runtime import _limit_cpu_threads
from ladle.testing import models


@pytest.fixture(scope="module")
def dynamic_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("jax")
    models.build_jax_mlp(directory)
    return directory


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("jax-static")
    models.build_jax_mlp(directory, static_batch=True)
    return directory


def test_detect(tmp_path, dynamic_dir) -> None:
    assert detect(dynamic_dir)
    assert not detect(tmp_path)


def test_predictions_equal_jax(load_runtime, dynamic_dir, features, reference) -> None:
    runtime = load_runtime("jax", dynamic_dir)
    outputs = runtime.predict(Batch.of({"input": features}))
    exported = export.deserialize(bytearray((dynamic_dir / "model.jax").read_bytes()))
    with jax.default_device(jax.devices("cpu")[0]):  # where a GPU is the default
        own = np.asarray(exported.call(features)["probability"])
    np.testing.assert_allclose(outputs["probability"], own, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outputs["probability"], reference, rtol=1e-5, atol=1e-6)
    assert runtime.signature().to_dict() == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1]}],
    }
    assert runtime.memory_bytes() == (dynamic_dir / "model.jax").stat().st_size


@pytest.mark.parametrize("rows", [1, 3, 5, 8])
def test_padded_batches_equal_unpadded(load_runtime, dynamic_dir, features, rows) -> None:
    padded = load_runtime("jax", dynamic_dir).predict(Batch.of({"input": features[:rows]}))
    exact = load_runtime("jax", dynamic_dir, options={"pad_batch": False}).predict(
        Batch.of({"input": features[:rows]})
    )
    assert padded["probability"].shape == (rows,)
    np.testing.assert_allclose(padded["probability"], exact["probability"], rtol=1e-6, atol=1e-7)


def test_static_batch_is_served_in_slices(load_runtime, static_dir, features, reference) -> None:
    runtime = load_runtime("jax", static_dir)
    assert runtime.max_batch_rows == 1
    assert runtime.signature().inputs[0].shape == (-1, 30)
    probability = runtime.predict(Batch.of({"input": features[:5]}))["probability"]
    np.testing.assert_allclose(probability, reference[:5], rtol=1e-5, atol=1e-6)


def test_non_finite_rows_refused_only_when_asked(load_runtime, dynamic_dir, features) -> None:
    rows = features[:3].copy()
    rows[1, 4] = np.nan
    served = load_runtime("jax", dynamic_dir).predict(Batch.of({"input": rows}))["probability"]
    assert np.isnan(served[1]) and np.isfinite(served[[0, 2]]).all()
    guarded = load_runtime("jax", dynamic_dir, options={"reject_non_finite": True})
    with pytest.raises(InvalidInputError, match=r"rows \[1\] hold NaN or infinite values"):
        guarded.predict(Batch.of({"input": rows}))


def test_shape_and_dtype_mismatches_are_client_errors(load_runtime, dynamic_dir) -> None:
    runtime = load_runtime("jax", dynamic_dir)
    with pytest.raises(SignatureMismatchError, match="shape"):
        runtime.predict(Batch.of({"input": np.zeros((2, 31), np.float32)}))
    with pytest.raises(SignatureMismatchError, match="datatype FP64"):
        runtime.predict(Batch.of({"input": np.zeros((2, 30))}))


def test_names_come_from_dict_arguments_and_results(tmp_path, load_runtime) -> None:
    def combine(inputs):
        return {"sum": inputs["a"] + inputs["b"], "product": inputs["a"] * inputs["b"]}

    batch = export.symbolic_shape("batch")[0]
    spec = jax.ShapeDtypeStruct((batch, 3), jnp.float32)
    exported = export.export(jax.jit(combine), platforms=["cpu"])({"a": spec, "b": spec})
    (tmp_path / "model.jax").write_bytes(exported.serialize())
    runtime = load_runtime("jax", tmp_path)
    signature = runtime.signature()
    assert [s.name for s in signature.inputs] == ["a", "b"]
    assert sorted(s.name for s in signature.outputs) == ["product", "sum"]
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 2.0, np.float32)
    outputs = runtime.predict(Batch.of({"b": b, "a": a}))
    np.testing.assert_array_equal(outputs["sum"], a + b)
    np.testing.assert_array_equal(outputs["product"], a * b)
    with pytest.raises(InvalidInputError, match="missing input 'b'"):
        runtime.predict(Batch.of({"a": a}))


def test_names_from_options(load_runtime, dynamic_dir, reference, features) -> None:
    runtime = load_runtime("jax", dynamic_dir, options={"input_names": ["x"], "output_names": ["p"]})
    np.testing.assert_allclose(runtime.predict(Batch.of({"x": features[:2]}))["p"], reference[:2], rtol=1e-5)
    with pytest.raises(ConfigError, match="takes 1 inputs"):
        load_runtime("jax", dynamic_dir, options={"input_names": ["x", "y"]})


def test_bad_artifact_and_platform_are_config_errors(tmp_path, load_runtime, dynamic_dir) -> None:
    (tmp_path / "model.jax").write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match=r"not a jax\.export artifact"):
        load_runtime("jax", tmp_path)
    with pytest.raises(ConfigError, match=r"exported for \['cpu'\], not 'cuda'"):
        load_runtime("jax", dynamic_dir, device="cuda")
    with pytest.raises(ConfigError, match="unknown jax runtime options"):
        load_runtime("jax", dynamic_dir, options={"pad": True})


def test_one_thread_budget_sets_xla_flags_unless_the_user_did(monkeypatch) -> None:
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    _limit_cpu_threads(2)
    assert "XLA_FLAGS" not in os.environ
    _limit_cpu_threads(1)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
    _limit_cpu_threads(1)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=true"


@pytest.mark.gpu
def test_cuda_predictions_equal_cpu(cuda_device, tmp_path, load_runtime, features) -> None:
    models.build_jax_mlp(tmp_path, platforms=("cpu", "cuda"))
    cpu = load_runtime("jax", tmp_path).predict(Batch.of({"input": features}))["probability"]
    runtime = load_runtime("jax", tmp_path, device=cuda_device)
    assert runtime.device.platform == "gpu"
    gpu = runtime.predict(Batch.of({"input": features}))["probability"]
    # XLA multiplies float32 matrices in TF32 on the GPU by default: about 3 significant digits.
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=2e-3)
    assert np.mean((gpu > 0.5) == (cpu > 0.5)) > 0.99
