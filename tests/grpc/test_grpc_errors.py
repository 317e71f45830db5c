"""Errors over gRPC: each of ladle's errors gets its status code and the message HTTP sends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc_runtimes
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_support import GrpcServer, infer_input, serving
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

X = np.array([[1.0, 2.0]], dtype=np.float32)


def grpc_error(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def code_of(error: InferenceServerException) -> str:
    return str(error.status()).removeprefix("StatusCode.")


def http_error(served: GrpcServer, model: str, body: dict[str, Any]) -> tuple[int, str]:
    response = httpx.post(f"{served.url}/v2/models/{model}/infer", json=body, timeout=10)
    return response.status_code, response.json()["error"]


def v2_input(name: str, datatype: str, data: list[Any], shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


@pytest.mark.parametrize(
    ("model", "tensors", "parameters", "code", "http_status"),
    [
        ("nope", [("x", X, "FP32")], None, "NOT_FOUND", 404),
        ("behaviour", [("z", X, "FP32")], None, "INVALID_ARGUMENT", 422),
        ("behaviour", [("x", X.astype(np.int32), "INT32")], None, "INVALID_ARGUMENT", 422),
        ("behaviour", [("x", np.ones((1, 3), np.float32), "FP32")], None, "INVALID_ARGUMENT", 422),
        ("behaviour", [("x", np.array([[-1.0, 0.0]], np.float32), "FP32")], None, "INVALID_ARGUMENT", 400),
        ("behaviour", [("x", np.array([[-2.0, 0.0]], np.float32), "FP32")], None, "INTERNAL", 500),
        ("behaviour", [("x", X, "FP32")], {"timeout_ms": -5}, "INVALID_ARGUMENT", 400),
    ],
)
def test_status_codes_and_messages_match_http(
    client: grpcclient.InferenceServerClient,
    served: GrpcServer,
    model: str,
    tensors: list[tuple[str, np.ndarray, str]],
    parameters: dict[str, Any] | None,
    code: str,
    http_status: int,
) -> None:
    inputs = [infer_input(name, array, datatype) for name, array, datatype in tensors]
    error = grpc_error(lambda: client.infer(model, inputs, parameters=parameters))
    assert code_of(error) == code
    body: dict[str, Any] = {
        "inputs": [v2_input(n, d, a.reshape(-1).tolist(), list(a.shape)) for n, a, d in tensors]
    }
    if parameters:
        body["parameters"] = parameters
    status, message = http_error(served, model, body)
    assert status == http_status
    assert error.message() == message


def test_unknown_versions_are_not_found(client: grpcclient.InferenceServerClient) -> None:
    error = grpc_error(lambda: client.infer("echo", [infer_input("x", X, "FP32")], model_version="7"))
    assert code_of(error) == "NOT_FOUND" and "'7'" in error.message()


def test_a_priority_out_of_range_is_invalid_as_over_http(
    client: grpcclient.InferenceServerClient, served: GrpcServer
) -> None:
    error = grpc_error(lambda: client.infer("behaviour", [infer_input("x", X, "FP32")], priority=9))
    body = {"inputs": [v2_input("x", "FP32", [1.0, 2.0], [1, 2])], "parameters": {"priority": 9}}
    assert code_of(error) == "INVALID_ARGUMENT"
    assert http_error(served, "behaviour", body) == (400, error.message())


def raw_call(served: GrpcServer, request: Any) -> grpc.RpcError:
    with grpc.insecure_channel(served.grpc) as channel, pytest.raises(grpc.RpcError) as caught:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    return caught.value


def test_malformed_tensors_are_invalid_arguments(served: GrpcServer) -> None:
    short = service_pb2.ModelInferRequest(model_name="echo")
    short.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    short.raw_input_contents.append(b"\x00" * 12)  # 3 floats for 4
    unknown = service_pb2.ModelInferRequest(model_name="echo")
    unknown.inputs.add(name="x", datatype="FP8", shape=[1]).contents.int_contents.append(1)
    half = service_pb2.ModelInferRequest(model_name="echo")
    half.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    overflow = service_pb2.ModelInferRequest(model_name="echo")
    overflow.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    bad_bytes = service_pb2.ModelInferRequest(model_name="echo")
    bad_bytes.inputs.add(name="x", datatype="BYTES", shape=[1])
    bad_bytes.raw_input_contents.append(b"\x09\x00\x00\x00abc")  # says 9 bytes, holds 3
    mixed = service_pb2.ModelInferRequest(model_name="echo")
    mixed.inputs.add(name="a", datatype="FP32", shape=[1])
    mixed.inputs.add(name="b", datatype="FP32", shape=[1])
    mixed.raw_input_contents.append(b"\x00" * 4)  # raw for one input of two
    shared = service_pb2.ModelInferRequest(model_name="echo")
    shared.inputs.add(name="x", datatype="FP32", shape=[1]).parameters[
        "shared_memory_region"
    ].string_param = "r"
    no_output = service_pb2.ModelInferRequest(model_name="echo")
    no_output.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(1)
    no_output.outputs.add(name="nope")
    cases = {
        "needs 16 bytes": short,
        "unknown datatype 'FP8'": unknown,
        "raw_input_contents": half,
        "do not fit INT8": overflow,
        "truncated BYTES": bad_bytes,
        "send every input raw": mixed,
        "shared memory": shared,
        "'nope' does not exist": no_output,
    }
    for words, request in cases.items():
        error = raw_call(served, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (words, error.details())
        assert words in error.details()
        assert ("ladle-error-code", "invalid_request") in tuple(error.trailing_metadata())


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


class Calls:
    """Requests sent with tritonclient's ``async_infer``; their results or errors by name."""

    def __init__(self, client: grpcclient.InferenceServerClient) -> None:
        self.client = client
        self.done: dict[str, Any] = {}
        self.lock = threading.Lock()

    def send(self, name: str, model: str, first: float, **options: Any) -> Any:
        def callback(result: Any, error: Any) -> None:
            with self.lock:
                self.done[name] = error if error is not None else result

        x = np.array([[first, 0.0]], dtype=np.float32)
        return self.client.async_infer(model, [infer_input("x", x, "FP32")], callback, **options)

    def wait(self, *names: str, timeout: float = 10.0) -> None:
        wait_for(lambda: all(n in self.done for n in names), timeout)


def started(first: float) -> bool:
    return first in grpc_runtimes.SEEN


def test_a_full_queue_is_resource_exhausted_with_retry_after(served: GrpcServer) -> None:
    client = served.client()
    calls = Calls(client)
    calls.send("running", "tiny_queue", -3.0)
    wait_for(lambda: started(-3.0))
    calls.send("queued", "tiny_queue", 11.0)
    time.sleep(0.1)
    request = service_pb2.ModelInferRequest(model_name="tiny_queue")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([12.0, 0.0])
    error = raw_call(served, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue" in error.details() and "full" in error.details()
    assert dict(error.trailing_metadata())["retry-after"] == "1"
    calls.wait("running", "queued")
    assert not isinstance(calls.done["queued"], InferenceServerException)  # it ran once the slot freed
    client.close()


def test_the_call_deadline_is_the_request_deadline(served: GrpcServer) -> None:
    client = served.client()
    calls = Calls(client)
    calls.send("running", "behaviour", -3.0)  # holds the one instance for 1.5 s
    wait_for(lambda: started(-3.0))
    error = grpc_error(
        lambda: client.infer(
            "behaviour", [infer_input("x", np.array([[21.0, 0.0]], np.float32), "FP32")], client_timeout=0.15
        )
    )
    assert code_of(error) == "DEADLINE_EXCEEDED"
    error = grpc_error(
        lambda: client.infer(
            "behaviour",
            [infer_input("x", np.array([[22.0, 0.0]], np.float32), "FP32")],
            headers={"ladle-timeout-ms": "100"},
        )
    )
    assert code_of(error) == "DEADLINE_EXCEEDED"
    calls.wait("running")
    time.sleep(0.1)
    assert not started(21.0) and not started(22.0)  # expired in the queue: never computed
    client.close()


def test_a_cancelled_call_drops_its_queued_request(served: GrpcServer) -> None:
    client = served.client()
    calls = Calls(client)
    calls.send("running", "behaviour", -3.0)
    wait_for(lambda: started(-3.0))
    queued = calls.send("cancelled", "behaviour", 31.0)
    time.sleep(0.05)
    queued.cancel()
    calls.wait("running", "cancelled")
    assert "CANCELLED" in str(calls.done["cancelled"].status())
    time.sleep(0.1)
    assert not started(31.0)
    metrics = httpx.get(f"{served.url}/metrics").text
    answered = [
        line
        for line in metrics.splitlines()
        if line.startswith("ladle_responses_total")
        and 'ladle_protocol="grpc"' in line
        and 'http_response_status_code="499"' in line
        and 'ladle_model_name="behaviour"' in line
    ]
    assert answered and float(answered[0].rsplit(" ", 1)[1]) >= 1
    client.close()


@pytest.fixture(scope="module")
def guarded(repository: Path) -> Iterator[GrpcServer]:
    with serving(
        repository, data_plane_token=True, api_token="s3cret", grpc_max_message_bytes=64 * 1024
    ) as server:
        yield server


def test_the_data_plane_token_is_required_when_configured(guarded: GrpcServer) -> None:
    client = guarded.client()
    assert client.is_server_live() and client.is_server_ready()  # health stays open, as on HTTP
    calls = {
        "infer": lambda headers: client.infer("echo", [infer_input("x", X, "FP32")], headers=headers),
        "metadata": lambda headers: client.get_model_metadata("echo", headers=headers),
    }
    for call in calls.values():
        for headers in (None, {"authorization": "Bearer wrong"}):
            with pytest.raises(InferenceServerException) as caught:
                call(headers)
            assert code_of(caught.value) == "UNAUTHENTICATED"
        assert call({"authorization": "Bearer s3cret"}) is not None
    client.close()


def test_a_message_over_the_limit_is_resource_exhausted(guarded: GrpcServer) -> None:
    client = guarded.client()
    big = np.zeros((1, 32 * 1024), dtype=np.float32)  # 128 KiB over a 64 KiB limit
    headers = {"authorization": "Bearer s3cret"}
    error = grpc_error(lambda: client.infer("echo", [infer_input("x", big, "FP32")], headers=headers))
    assert code_of(error) == "RESOURCE_EXHAUSTED"
    small = np.zeros((1, 1024), dtype=np.float32)
    assert client.infer("echo", [infer_input("x", small, "FP32")], headers=headers) is not None
    client.close()


def test_a_model_still_loading_is_unavailable(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    (repo / "late" / "1").mkdir(parents=True)
    (repo / "late" / "model.toml").write_text('runtime = "grpc_slow_load"\noptions = { load_s = 3.0 }\n')
    with serving(repo, wait_ready=False) as server:
        client = server.client()
        assert client.is_server_live() and not client.is_server_ready()
        error = grpc_error(lambda: client.infer("late", [infer_input("x", X, "FP32")]))
        response = httpx.post(
            f"{server.url}/v2/models/late/infer",
            json={"inputs": [v2_input("x", "FP32", [1.0, 2.0], [1, 2])]},
        )
        assert response.status_code == 503
        assert code_of(error) == "UNAVAILABLE" and error.message() == response.json()["error"]
        client.close()
