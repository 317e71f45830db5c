"""The torch runtime against torch's own results, for exported programs and TorchScript."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from ladle import Batch, ConfigError, InvalidInputError, SignatureMismatchError
from ladle.plugins.runtimes.torch import detect
from ladle.plugins.runtimes.torch.runtime import check_exported_archive
from ladle.testing import models


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("pt2")
    models.build_torch_mlp(directory)
    return directory


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("pt2-static")
    models.build_torch_mlp(directory, static_batch=True)
    return directory


@pytest.fixture(scope="module")
def scripted_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("torchscript")
    models.build_torchscript_mlp(directory)
    return directory


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("pt2-tokens")
    models.build_torch_token_classifier(directory)
    return directory


@pytest.fixture(autouse=True)
def keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


MLP_BYTES = 4 * (30 * 16 + 16 + 16 + 1 + 30 + 30)  # weights, biases, mean and scale, float32


def test_detect(tmp_path, exported_dir, scripted_dir) -> None:
    assert detect(exported_dir) and detect(scripted_dir)
    assert not detect(tmp_path)
    (tmp_path / "model.ts").write_bytes(b"")
    assert detect(tmp_path)


def test_exported_program_equals_torch(load_runtime, exported_dir, features, reference) -> None:
    runtime = load_runtime("torch", exported_dir, threads=1)
    assert torch.get_num_threads() == 1
    outputs = runtime.predict(Batch.of({"input": features}))
    program = torch.export.load(str(exported_dir / "model.pt2"))
    with torch.no_grad():
        own = program.module()(torch.from_numpy(features))["probability"].numpy()
    np.testing.assert_array_equal(outputs["probability"], own)
    np.testing.assert_allclose(outputs["probability"], reference, rtol=1e-5, atol=1e-6)
    assert runtime.signature().to_dict() == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1]}],
    }
    assert runtime.max_batch_rows is None
    assert runtime.memory_bytes() == MLP_BYTES


@pytest.mark.parametrize("rows", [1, 7])
def test_static_batch_program_is_served_row_by_row(
    load_runtime, static_dir, features, reference, rows
) -> None:
    runtime = load_runtime("torch", static_dir)
    assert runtime.max_batch_rows == 1
    assert runtime.signature().inputs[0].shape == (-1, 30)  # any number of rows is served
    program = torch.export.load(str(static_dir / "model.pt2"))
    with pytest.raises(Exception, match="Guard failed"):
        program.module()(torch.zeros(2, 30))  # the program itself takes exactly one row
    probability = runtime.predict(Batch.of({"input": features[:rows]}))["probability"]
    np.testing.assert_allclose(probability, reference[:rows], rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("file_name", ["model.pt", "model.ts"])
def test_torchscript_equals_torch(tmp_path, load_runtime, features, file_name) -> None:
    models.build_torchscript_mlp(tmp_path, file_name=file_name)
    runtime = load_runtime("torch", tmp_path)
    assert runtime.kind == "torchscript"
    assert runtime.signature() is None  # TorchScript carries no shapes; config may give one
    own = torch.jit.load(str(tmp_path / file_name))(torch.from_numpy(features))["probability"]
    outputs = runtime.predict(Batch.of({"input": features}))
    np.testing.assert_allclose(outputs["probability"], own.detach().numpy(), rtol=1e-6)
    assert runtime.memory_bytes() == MLP_BYTES


def test_configured_signature_wins(load_runtime, scripted_dir) -> None:
    signature = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1]}],
    }
    runtime = load_runtime("torch", scripted_dir, signature=signature)
    assert runtime.signature().to_dict() == signature


def test_dict_outputs_keep_their_names_and_output_names_rename(load_runtime, tokens_dir) -> None:
    runtime = load_runtime("torch", tokens_dir)
    assert [s.name for s in runtime.signature().outputs] == ["logits", "probability"]
    assert runtime.signature().inputs[0].to_dict() == {
        "name": "tokens",
        "datatype": "INT64",
        "shape": [-1, 6],
    }
    tokens = np.random.default_rng(1).integers(0, 32, (4, 6))
    outputs = runtime.predict(Batch.of({"tokens": tokens}))
    np.testing.assert_allclose(outputs["logits"], models.token_classifier_weights().logits(tokens), rtol=1e-5)
    renamed = load_runtime("torch", tokens_dir, options={"output_names": ["scores", "p"]})
    assert list(renamed.predict(Batch.of({"tokens": tokens}))) == ["scores", "p"]
    assert [s.name for s in renamed.signature().outputs] == ["scores", "p"]


def test_index_out_of_range_is_a_client_error(load_runtime, tokens_dir) -> None:
    runtime = load_runtime("torch", tokens_dir)
    tokens = np.zeros((2, 6), np.int64)
    tokens[0, 0] = 40
    with pytest.raises(InvalidInputError, match="index out of range"):
        runtime.predict(Batch.of({"tokens": tokens}))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_errors_are_mapped(tmp_path, load_runtime) -> None:
    class Checked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(4, 2)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            if bool((tokens == 3).any()):
                raise ValueError("token 3 is reserved")
            return self.embedding(tokens).sum(1)

    torch.jit.save(torch.jit.script(Checked()), str(tmp_path / "model.pt"))
    runtime = load_runtime("torch", tmp_path)
    assert runtime.predict(Batch.of({"tokens": np.array([[0, 1]])}))["output"].shape == (1, 2)
    with pytest.raises(InvalidInputError, match="ValueError: token 3 is reserved"):
        runtime.predict(Batch.of({"tokens": np.array([[3, 1]])}))
    with pytest.raises(InvalidInputError, match="index out of range"):
        runtime.predict(Batch.of({"tokens": np.array([[9, 1]])}))


def test_signature_mismatch_is_refused_before_running(load_runtime, exported_dir) -> None:
    runtime = load_runtime("torch", exported_dir)
    with pytest.raises(SignatureMismatchError, match="datatype FP64"):
        runtime.predict(Batch.of({"input": np.zeros((1, 30))}))
    with pytest.raises(SignatureMismatchError, match="shape"):
        runtime.predict(Batch.of({"input": np.zeros((1, 31), np.float32)}))


def test_read_only_input_is_accepted(load_runtime, exported_dir, features, reference) -> None:
    rows = features[:3].copy()
    rows.flags.writeable = False
    probability = load_runtime("torch", exported_dir).predict(Batch.of({"input": rows}))["probability"]
    np.testing.assert_allclose(probability, reference[:3], rtol=1e-5, atol=1e-6)


def test_pickled_module_needs_trust_code(tmp_path, load_runtime) -> None:
    module = torch.nn.Sequential(torch.nn.Linear(3, 2))
    torch.save(module, str(tmp_path / "model.pt"))
    with pytest.raises(ConfigError, match="trust_code"):
        load_runtime("torch", tmp_path)
    runtime = load_runtime("torch", tmp_path, trust_code=True)
    rows = np.random.default_rng(0).random((4, 3), dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(runtime.predict(Batch.of({"input": rows}))["output"], expected, rtol=1e-6)


class _MakeDirectory:
    """Unpickling this creates a directory: a harmless stand-in for arbitrary code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def _rewrite(source, target, replace):
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item.filename)
            new.writestr(item, replace(item.filename, data))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pt2_with_pickled_sample_inputs_is_refused_without_running_it(
    tmp_path, exported_dir, load_runtime
) -> None:
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(_MakeDirectory(str(marker)))
    version = tmp_path / "1"
    version.mkdir()
    _rewrite(
        exported_dir / "model.pt2",
        version / "model.pt2",
        lambda name, data: payload if "/data/sample_inputs/" in name else data,
    )
    with pytest.raises(ConfigError, match=r"sample inputs .* are pickled objects"):
        load_runtime("torch", version)
    assert not marker.exists()
    # What the check prevents: torch.export.load itself falls back to unpickling them.
    with pytest.raises(Exception):  # noqa: B017 - what it raises after running the payload varies
        torch.export.load(str(version / "model.pt2"))
    assert marker.exists()


def test_pt2_with_pickled_weights_is_refused(tmp_path, exported_dir) -> None:
    def mark_pickled(name: str, data: bytes) -> bytes:
        if not name.endswith("_weights_config.json"):
            return data
        config = json.loads(data)
        for payload in config["config"].values():
            payload["use_pickle"] = True
        return json.dumps(config).encode()

    _rewrite(exported_dir / "model.pt2", tmp_path / "model.pt2", mark_pickled)
    with pytest.raises(ConfigError, match="is a pickled object"):
        check_exported_archive(tmp_path / "model.pt2")
    check_exported_archive(exported_dir / "model.pt2")  # a plain export passes


def test_broken_and_misconfigured_are_config_errors(tmp_path, load_runtime, exported_dir) -> None:
    (tmp_path / "model.pt2").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"not a torch\.export archive"):
        load_runtime("torch", tmp_path)
    with pytest.raises(ConfigError, match="unknown torch runtime options"):
        load_runtime("torch", exported_dir, options={"outputs": ["x"]})


def test_cuda_refused_without_gpu(no_gpu, load_runtime, exported_dir) -> None:
    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device")
    with pytest.raises(ConfigError, match="torch sees no CUDA device"):
        load_runtime("torch", exported_dir, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("artifact", ["exported", "scripted"])
def test_cuda_predictions_equal_cpu(
    cuda_device, load_runtime, exported_dir, scripted_dir, features, artifact
) -> None:
    directory = exported_dir if artifact == "exported" else scripted_dir
    cpu = load_runtime("torch", directory).predict(Batch.of({"input": features}))["probability"]
    runtime = load_runtime("torch", directory, device=cuda_device)
    assert runtime.describe()["device"] == cuda_device
    gpu = runtime.predict(Batch.of({"input": features}))["probability"]
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-5)


# TorchScript without a signature: shape and dtype errors are the client's ---------------------


def _assert_clean(message: str) -> None:
    """No interpreter traceback, serialized code or file path of the server in a client's answer."""
    for fragment in ("Traceback", "code/__torch__", "site-packages", ".py", "HERE", os.sep + "tmp"):
        assert fragment not in message, f"{fragment!r} in {message!r}"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        (np.zeros((2, 29), np.float32), "must match the size of tensor b (30)"),
        (np.zeros((2, 30), np.float64), "same dtype"),
    ],
    ids=["features", "dtype"],
)
def test_torchscript_shape_errors_are_invalid_input(load_runtime, scripted_dir, rows, fragment) -> None:
    runtime = load_runtime("torch", scripted_dir)
    assert runtime.signature() is None
    with pytest.raises(InvalidInputError) as info:
        runtime.predict(Batch.of({"input": rows}))
    message = info.value.message
    datatype = "FP64" if rows.dtype == np.float64 else "FP32"
    assert message.startswith(
        f"input 'input' of shape {list(rows.shape)} ({datatype}) does not fit the model"
    )
    assert fragment in message
    assert "signature = {...} in model.toml" in message
    assert info.value.status == 400 and info.value.details == {"input": "input"}
    _assert_clean(message)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scripted_convolution_errors_name_what_was_expected(tmp_path, load_runtime) -> None:
    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, image: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.conv(image) * scale

    torch.jit.save(torch.jit.script(Pair()), str(tmp_path / "model.pt"))
    runtime = load_runtime("torch", tmp_path)
    scale = np.ones((1,), np.float32)
    assert runtime.predict(Batch.of({"image": np.zeros((1, 3, 8, 8), np.float32), "scale": scale}))
    with pytest.raises(InvalidInputError) as info:
        runtime.predict(Batch.of({"image": np.zeros((1, 2, 8, 8), np.float32), "scale": scale}))
    message = info.value.message
    assert message.startswith(
        "inputs 'image' of shape [1, 2, 8, 8] (FP32), 'scale' of shape [1] (FP32) do not"
    )
    assert "to have 3 channels, but got 2 channels" in message
    assert info.value.details == {"inputs": ["image", "scale"]}
    _assert_clean(message)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_other_torchscript_failures_stay_server_errors(tmp_path, load_runtime) -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x > 0).any()):
                raise RuntimeError("the model's own bug")
            return x

    torch.jit.save(torch.jit.script(Broken()), str(tmp_path / "model.pt"))
    runtime = load_runtime("torch", tmp_path)
    with pytest.raises(Exception, match="the model's own bug") as info:
        runtime.predict(Batch.of({"x": np.ones((1, 2), np.float32)}))
    assert not isinstance(info.value, InvalidInputError)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_over_http_wrong_shape_is_a_400_and_a_signature_gives_422(tmp_path) -> None:
    import httpx

    from ladle import PluginHost
    from ladle.config import ServerConfig
    from ladle.server import Server
    from ladle.testing.server import run_server

    repository = tmp_path / "models"
    models.build_torchscript_mlp(repository / "bare" / "1")
    models.build_torchscript_mlp(repository / "signed" / "1")
    (repository / "signed" / "model.toml").write_text(
        'signature = { inputs = [{ name = "input", datatype = "FP32", shape = [-1, 30] }], '
        'outputs = [{ name = "probability", datatype = "FP32", shape = [-1] }] }\n'
    )
    config = ServerConfig.model_validate({"server": {"repository": str(repository)}})

    def infer(client: httpx.Client, model: str, columns: int) -> httpx.Response:
        body = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, columns], "data": [0.5] * columns}]
        }
        return client.post(f"/v2/models/{model}/infer", json=body)

    with (
        run_server(Server(config, PluginHost().discover())) as running,
        httpx.Client(base_url=running.url, timeout=30) as client,
    ):
        assert client.get("/v2/models/bare").json()["inputs"] == []
        wrong = infer(client, "bare", 29)
        assert wrong.status_code == 400, wrong.text
        body = wrong.json()
        assert body["code"] == "invalid_input" and body["input"] == "input"
        assert "input 'input' of shape [1, 29] (FP32) does not fit the model" in body["error"]
        _assert_clean(wrong.text)
        assert str(tmp_path) not in wrong.text
        assert infer(client, "bare", 30).status_code == 200  # the server stays healthy

        assert client.get("/v2/models/signed").json()["inputs"] == [
            {"name": "input", "datatype": "FP32", "shape": [-1, 30]}
        ]
        refused = infer(client, "signed", 29)
        assert refused.status_code == 422, refused.text
        assert "expected [-1, 30]" in refused.json()["error"]
        served = infer(client, "signed", 30).json()["outputs"]
        assert [o["name"] for o in served] == ["probability"]
