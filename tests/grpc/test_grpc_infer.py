"""ModelInfer with tritonclient.grpc: frameworks' own predictions, every datatype, typed contents,
requested outputs, ids, versions and parameters."""

from __future__ import annotations

from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_support import GrpcServer, infer_input
from tritonclient.grpc import service_pb2, service_pb2_grpc


def test_xgboost_predictions_are_the_boosters_own(
    client: grpcclient.InferenceServerClient, repository: Path, rows: np.ndarray
) -> None:
    import xgboost

    booster = xgboost.Booster(model_file=str(repository / "bc" / "1" / "model.ubj"))
    for batch in (rows[:1], rows[:32]):
        result = client.infer("bc", [infer_input("input", batch, "FP32")])
        expected = booster.inplace_predict(batch)
        np.testing.assert_allclose(result.as_numpy("predict"), expected, rtol=1e-6)
        assert result.get_response().model_version == "1"


def test_onnx_predictions_are_onnxruntimes_own(
    client: grpcclient.InferenceServerClient, repository: Path, rows: np.ndarray
) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(repository / "mlp" / "1" / "model.onnx"))
    batch = rows[:8]
    (expected,) = session.run(["probability"], {"input": batch})
    result = client.infer("mlp", [infer_input("input", batch, "FP32")])
    np.testing.assert_allclose(result.as_numpy("probability"), expected, rtol=1e-6)


def test_the_request_id_is_echoed_and_versions_can_be_named(client: grpcclient.InferenceServerClient) -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    for version in ("1", "2"):
        result = client.infer("echo", [infer_input("x", x, "FP32")], model_version=version, request_id="r-7")
        response = result.get_response()
        assert (response.id, response.model_version) == ("r-7", version)
    assert client.infer("echo", [infer_input("x", x, "FP32")]).get_response().id == ""


def test_the_serving_version_is_in_the_trailing_metadata(served: GrpcServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="echo", model_version="1")
    tensor = request.inputs.add(name="x", datatype="INT32", shape=[1])
    tensor.contents.int_contents.append(5)
    with grpc.insecure_channel(served.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        _, call = stub.ModelInfer.with_call(request)
    assert ("ladle-model-version", "1") in tuple(call.trailing_metadata())


@pytest.mark.parametrize(
    ("datatype", "array"),
    [
        ("BOOL", np.array([[True, False, True]])),
        ("UINT8", np.array([[0, 7, 255]], dtype=np.uint8)),
        ("UINT16", np.array([[0, 7, 65535]], dtype=np.uint16)),
        ("UINT32", np.array([[0, 7, 2**32 - 1]], dtype=np.uint32)),
        ("UINT64", np.array([[0, 7, 2**64 - 1]], dtype=np.uint64)),
        ("INT8", np.array([[-128, 0, 127]], dtype=np.int8)),
        ("INT16", np.array([[-(2**15), 0, 2**15 - 1]], dtype=np.int16)),
        ("INT32", np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32)),
        ("INT64", np.array([[-(2**63), 0, 2**63 - 1]], dtype=np.int64)),
        ("FP16", np.array([[-1.5, 0.0, 65504.0]], dtype=np.float16)),
        ("FP32", np.array([[-1.5, np.pi, 3.4e38]], dtype=np.float32)),
        ("FP64", np.array([[-1.5, np.pi, 1e308]], dtype=np.float64)),
        ("BYTES", np.array([[b"", b"\x00\xffbinary", "ünïcode".encode()]], dtype=np.object_)),
    ],
)
def test_every_datatype_round_trips_raw(
    client: grpcclient.InferenceServerClient, datatype: str, array: np.ndarray
) -> None:
    result = client.infer("echo", [infer_input("t", array, datatype)])
    output = result.get_output("t")
    assert output.datatype == datatype and list(output.shape) == list(array.shape)
    back = result.as_numpy("t")
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_bf16_arrives_as_float32(client: grpcclient.InferenceServerClient) -> None:
    values = np.array([[1.0, -2.5, 3.140625, 1e30]], dtype=ml_dtypes.bfloat16)
    result = client.infer("echo", [infer_input("t", values, "BF16")])
    assert result.get_output("t").datatype == "FP32"
    np.testing.assert_array_equal(result.as_numpy("t"), values.astype(np.float32))


def test_typed_contents_fields_are_decoded(served: GrpcServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="echo", id="typed")
    fields = {
        "b": ("BOOL", "bool_contents", [True, False]),
        "i8": ("INT8", "int_contents", [-3, 4]),
        "i64": ("INT64", "int64_contents", [-(2**40), 5]),
        "u16": ("UINT16", "uint_contents", [1, 65535]),
        "u64": ("UINT64", "uint64_contents", [2**64 - 1, 0]),
        "f32": ("FP32", "fp32_contents", [0.5, -1.25]),
        "f64": ("FP64", "fp64_contents", [1e-300, 2.0]),
        "s": ("BYTES", "bytes_contents", [b"ab", b""]),
    }
    for name, (datatype, field, values) in fields.items():
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[2, 1])
        getattr(tensor.contents, field).extend(values)
    with grpc.insecure_channel(served.grpc) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    result = grpcclient.InferResult(response)
    assert response.id == "typed"
    for name, (datatype, _, values) in fields.items():
        back = result.as_numpy(name)
        assert result.get_output(name).datatype == datatype
        assert back.shape == (2, 1)
        assert back.reshape(-1).tolist() == values


def test_requested_outputs_come_back_in_their_order(client: grpcclient.InferenceServerClient) -> None:
    a = np.array([[1, 2]], dtype=np.int32)
    b = np.array([[3.0]], dtype=np.float32)
    outputs = [grpcclient.InferRequestedOutput("b"), grpcclient.InferRequestedOutput("a")]
    result = client.infer(
        "echo", [infer_input("a", a, "INT32"), infer_input("b", b, "FP32")], outputs=outputs
    )
    assert [o.name for o in result.get_response().outputs] == ["b", "a"]
    np.testing.assert_array_equal(result.as_numpy("a"), a)
    np.testing.assert_array_equal(result.as_numpy("b"), b)


def test_priority_and_parameters_are_accepted(client: grpcclient.InferenceServerClient) -> None:
    x = np.ones((1, 2), dtype=np.float32)
    for priority in (1, 2):  # tritonclient sends its uint64 priority only when it is not 0
        result = client.infer(
            "behaviour", [infer_input("x", x, "FP32")], priority=priority, parameters={"note": "hi", "n": 3}
        )
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    result = client.infer(
        "behaviour",
        [infer_input("x", x, "FP32")],
        headers={"ladle-priority": "high", "ladle-routing-key": "k"},
    )
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)


def test_a_message_over_grpcs_own_4_mib_default_is_taken(client: grpcclient.InferenceServerClient) -> None:
    big = np.arange(2 * 1024 * 1024, dtype=np.float32).reshape(1, -1)  # 8 MiB each way
    result = client.infer("echo", [infer_input("t", big, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("t"), big)


def test_the_readme_example_runs(served: GrpcServer, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "tritonclient.grpc" in b]
    source = block.replace("localhost:8001", served.grpc).replace('"breast_cancer"', '"bc"')
    exec(compile(source, "README.md", "exec"), {})
    assert capsys.readouterr().out.rstrip().endswith(" 1")  # the predictions, then the version
