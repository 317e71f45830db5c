"""A real int8 ONNX model with dynamic ``[batch, seq]`` inputs, served over V2 REST.

The model is ``rawi.int8.onnx`` from the ``text2tashkeel`` package (Arabic diacritisation: a
dynamically quantised BiLSTM, ``input`` INT64 ``[batch, sequence]`` -> ``output`` FP32
``[batch, sequence, 73]``), copied into a temporary model repository. Its graph takes no lengths
and no mask, so a zero-padded row is not the same row: the backward LSTM reads the padding before
it reads the real tokens. The onnx runtime therefore does not declare ``pads``, and the dynamic
batcher puts only requests of equal shapes into one batch.

Batching equal shapes is not exact for this model either: ``DynamicQuantizeLinear`` takes one
activation scale over the whole batch, so a row's logits move with its batch mates (by up to ~0.3
here; about 1% of the argmax classes change in batches of 8). Where every answer must equal the
request run alone, serve such a model with ``batcher = "passthrough"``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ladle import PluginHost
from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.server import RunningServer, run_server

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("text2tashkeel")


MODEL = "rawi.int8.onnx"
SHORT = "بسم الله الرحمن الرحيم"
LONG = "السلام عليكم ورحمة الله وبركاته، كيف حالك اليوم يا صديقي العزيز؟"


def bundled(name: str) -> Path:
    """A file shipped inside the text2tashkeel wheel (no download)."""
    return Path(str(resources.files("text2tashkeel") / "models" / name))


def encode(text: str) -> np.ndarray[Any, Any]:
    """Characters -> the model's ids (``<UNK>`` for unknown ones), as one row."""
    vocabulary = json.loads(bundled("rawi.vocab.json").read_text(encoding="utf-8"))["char_to_idx"]
    return np.array([[vocabulary.get(c, vocabulary["<UNK>"]) for c in text]], dtype=np.int64)


def alone(feed: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """onnxruntime's own answer for this request, run by itself."""
    session = ort.InferenceSession(str(bundled(MODEL)), providers=["CPUExecutionProvider"])
    output: np.ndarray[Any, Any] = session.run(["output"], {"input": feed})[0]
    return output


def test_zero_padding_changes_the_answer_for_the_real_positions() -> None:
    short, long = encode(SHORT), encode(LONG)
    assert short.shape[1] < long.shape[1]
    padded = np.pad(short, [(0, 0), (0, long.shape[1] - short.shape[1])])  # 0 is the model's <PAD>
    together = alone(np.concatenate([padded, long]))
    difference = np.abs(together[0, : short.shape[1]] - alone(short)[0]).max()
    assert difference > 0.1  # not rounding: the padding flows into the real rows
    registration = PluginHost().discover().get("runtime", "onnx")
    assert not registration.capabilities.pads


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("onnx-int8") / "models"
    (repository / "rawi" / "1").mkdir(parents=True)
    shutil.copyfile(bundled(MODEL), repository / "rawi" / "1" / "model.onnx")
    (repository / "rawi" / "model.toml").write_text('batcher = "dynamic"\ntimeout = 60.0\n')
    (repository / "rawi_alone" / "1").mkdir(parents=True)
    shutil.copyfile(bundled(MODEL), repository / "rawi_alone" / "1" / "model.onnx")
    (repository / "rawi_alone" / "model.toml").write_text('batcher = "passthrough"\ntimeout = 60.0\n')
    config = ServerConfig.model_validate({"server": {"repository": str(repository)}})
    with run_server(Server(config, PluginHost().discover())) as running:
        yield running


def blocked_then_two(
    served: RunningServer, model: str, first: np.ndarray[Any, Any], second: np.ndarray[Any, Any]
) -> list[np.ndarray[Any, Any]]:
    """Send a large request that keeps the one instance busy, then ``first`` and ``second`` at once,
    so those two queue together and would share the next batch if the batcher put them together;
    returns their answers (V2 REST through tritonclient, binary tensors)."""
    import gevent
    import tritonclient.http as triton

    client = triton.InferenceServerClient(served.url.removeprefix("http://"), concurrency=3)

    def send(rows: np.ndarray[Any, Any]) -> Any:
        tensor = triton.InferInput("input", list(rows.shape), "INT64")
        tensor.set_data_from_numpy(rows, binary_data=True)
        return client.async_infer(model, [tensor], outputs=[triton.InferRequestedOutput("output")])

    try:
        blocker = np.tile(encode(LONG * 8), (32, 1))  # about 2.5 s of compute on this machine
        busy = send(blocker)
        gevent.sleep(0.3)  # the client's greenlets send the blocker now; it runs before the two arrive
        pending = [send(first), send(second)]
        answers = [request.get_result(timeout=60).as_numpy("output") for request in pending]
        assert busy.get_result(timeout=60).as_numpy("output").shape == (32, blocker.shape[1], 73)
        return answers
    finally:
        client.close()


def test_requests_of_different_lengths_each_get_their_own_answer(served: RunningServer) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    metadata = client.get_model_metadata("rawi")
    client.close()
    assert metadata["inputs"] == [{"name": "input", "datatype": "INT64", "shape": [-1, -1]}]
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, -1, 73]}]
    short, long = encode(SHORT), encode(LONG)
    for rows, answer in zip((short, long), blocked_then_two(served, "rawi", short, long), strict=True):
        assert answer.shape == (1, rows.shape[1], 73)
        np.testing.assert_allclose(answer, alone(rows), rtol=0, atol=1e-6)


def test_with_the_passthrough_batcher_equal_lengths_are_answered_as_alone(served: RunningServer) -> None:
    first = encode(LONG)
    second = encode((SHORT * 5)[: first.shape[1]])  # the same length, other characters
    for rows, answer in zip(
        (first, second), blocked_then_two(served, "rawi_alone", first, second), strict=True
    ):
        np.testing.assert_allclose(answer, alone(rows), rtol=0, atol=1e-6)
