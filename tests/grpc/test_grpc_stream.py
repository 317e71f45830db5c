"""ModelStreamInfer with tritonclient's streams: generation chunks (as the SSE path streams them),
tensor models on a stream, errors on a stream, and cancellation."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_support import GrpcServer, infer_input, serving

from ladle.testing.lm import llama_config, write_checkpoint
from ladle.testing.models import build_xgboost

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    repo = tmp_path_factory.mktemp("grpc-lm") / "models"
    write_checkpoint(repo / "tiny" / "1", llama_config())
    build_xgboost(repo / "bc" / "1", file_name="model.ubj")
    with serving(repo) as server:
        yield server


class Stream:
    """One tritonclient stream; responses (result or error) in arrival order."""

    def __init__(self, server: GrpcServer) -> None:
        self.client = server.client()
        self.responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def send(
        self, model: str, prompt: str | None = None, *, tensors: list[Any] | None = None, **options: Any
    ) -> None:
        inputs = tensors if tensors is not None else [text(prompt or PROMPT)]
        self.client.async_stream_infer(model, inputs, **options)

    def next(self, timeout: float = 30.0) -> tuple[Any, Any]:
        return self.responses.get(timeout=timeout)

    def until_final(self, request_id: str = "") -> list[Any]:
        """The responses of one request, through the one marked final."""
        got = []
        while True:
            result, error = self.next()
            assert error is None, error
            response = result.get_response()
            if response.id != request_id:
                continue
            got.append(result)
            if response.parameters["triton_final_response"].bool_param:
                return got

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def text(prompt: str, name: str = "text_input") -> grpcclient.InferInput:
    return infer_input(name, np.array([prompt.encode()], dtype=np.object_), "BYTES")


def chunk_text(result: Any) -> str:
    data = result.as_numpy("text_output")
    return "" if data is None else b"".join(data.tolist()).decode()


def generate_over_http(server: GrpcServer, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/api/v1/models/tiny/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_streamed_chunks_are_the_generation_http_gives(lm: GrpcServer) -> None:
    # Chunks that pile up behind a slow reader are merged, so a loaded machine may send a short
    # generation as one chunk; 64 tokens leave it many event-loop turns to stream.
    expected = generate_over_http(lm, prompt=PROMPT, max_tokens=64, temperature=0, ignore_eos=True)
    stream = Stream(lm)
    outputs = [grpcclient.InferRequestedOutput("text_output"), grpcclient.InferRequestedOutput("token_ids")]
    parameters = {"max_tokens": 64, "temperature": 0.0, "ignore_eos": True}
    stream.send("tiny", request_id="g1", parameters=parameters, outputs=outputs)
    results = stream.until_final("g1")
    stream.close()
    assert len(results) > 1  # chunks, not one answer
    assert "".join(chunk_text(r) for r in results) == expected["text"]
    tokens = [t for r in results for t in r.as_numpy("token_ids").tolist()]
    assert tokens == expected["token_ids"]
    flags = [r.get_response().parameters["triton_final_response"].bool_param for r in results]
    assert flags == [False] * (len(results) - 1) + [True]
    last = results[-1].get_response()
    assert last.parameters["finish_reason"].string_param == "length"
    assert last.parameters["completion_tokens"].int64_param == 64
    assert last.model_version == "1"


def test_stream_false_sends_one_response_and_sampling_parameters_are_read(lm: GrpcServer) -> None:
    expected = generate_over_http(lm, prompt=PROMPT, max_tokens=5, temperature=0)
    stream = Stream(lm)
    inputs = [
        text(PROMPT),
        infer_input("stream", np.array([False]), "BOOL"),
        text('{"max_tokens": 5, "temperature": 0}', "sampling_parameters"),
    ]
    stream.send("tiny", tensors=inputs, request_id="whole", enable_empty_final_response=True)
    results = stream.until_final("whole")
    stream.close()
    assert len(results) == 1
    assert chunk_text(results[0]) == expected["text"]
    assert results[0].get_response().parameters["completion_tokens"].int64_param == 5


def test_requests_on_one_stream_run_concurrently(lm: GrpcServer) -> None:
    stream = Stream(lm)
    for index in range(3):
        stream.send("tiny", f"prompt {index}", request_id=f"r{index}", parameters={"max_tokens": 6})
    finished: set[str] = set()
    while len(finished) < 3:
        result, error = stream.next()
        assert error is None, error
        response = result.get_response()
        if response.parameters["triton_final_response"].bool_param:
            finished.add(response.id)
    stream.close()
    assert finished == {"r0", "r1", "r2"}


def test_a_tensor_model_answers_once_on_a_stream(lm: GrpcServer, rows: np.ndarray) -> None:
    stream = Stream(lm)
    stream.send("bc", tensors=[infer_input("input", rows[:3], "FP32")], request_id="t")
    result, error = stream.next()
    stream.close()
    assert error is None and result.get_response().id == "t"
    unary = lm.client().infer("bc", [infer_input("input", rows[:3], "FP32")])
    np.testing.assert_array_equal(result.as_numpy("predict"), unary.as_numpy("predict"))


def test_errors_come_back_on_the_stream_and_it_goes_on(lm: GrpcServer) -> None:
    stream = Stream(lm)
    stream.send("tiny", request_id="bad", parameters={"colour": "red"})
    _, error = stream.next()
    assert "colour" in error.message()
    stream.send("tiny", tensors=[text("x", "prompt")], request_id="bad2")
    _, error = stream.next()
    assert "'prompt'" in error.message()
    stream.send("nope", request_id="bad3")
    _, error = stream.next()
    assert "not served" in error.message()
    stream.send("tiny", request_id="good", parameters={"max_tokens": 3})
    assert stream.until_final("good")[-1].get_response().parameters["completion_tokens"].int64_param == 3
    stream.close()


def test_cancelling_the_stream_aborts_the_generation(lm: GrpcServer) -> None:
    batcher = lm.running.server.manager.models["tiny"].versions["1"].batcher
    stream = Stream(lm)
    stream.send("tiny", request_id="long", parameters={"max_tokens": 200, "ignore_eos": True})
    result, error = stream.next()
    assert error is None, error.message()
    assert chunk_text(result)  # it is generating
    assert batcher.in_flight == 1
    stream.client.stop_stream(cancel_requests=True)
    deadline = time.monotonic() + 5
    while batcher.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.in_flight == 0  # aborted, its cache blocks back in the pool
    metrics = httpx.get(f"{lm.url}/metrics").text
    assert any(
        line.startswith("ladle_responses_total")
        and 'ladle_protocol="grpc"' in line
        and 'http_response_status_code="499"' in line
        for line in metrics.splitlines()
    )
    stream.client.close()


def test_model_infer_on_a_generative_model_answers_as_v2_rest_does(lm: GrpcServer) -> None:
    client = lm.client()
    result = client.infer("tiny", [text(PROMPT)], parameters={"max_tokens": 7, "temperature": 0.0})
    body = {
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [PROMPT]}],
        "parameters": {"max_tokens": 7, "temperature": 0.0},
    }
    rest = httpx.post(f"{lm.url}/v2/models/tiny/infer", json=body, timeout=60).json()
    by_name = {o["name"]: o["data"] for o in rest["outputs"]}
    assert [v.decode() for v in result.as_numpy("text_output").tolist()] == by_name["text_output"]
    assert result.as_numpy("completion_tokens").tolist() == by_name["completion_tokens"] == [7]
    client.close()
