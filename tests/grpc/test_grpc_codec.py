"""The tensor codec against tritonclient's own serialization (``tritonclient.utils``)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from ladle.errors import InvalidRequestError
from ladle.grpc.codec import decode_bytes, decode_inputs, encode_bytes, encode_outputs

Tensor = service_pb2.ModelInferResponse.InferOutputTensor
TEXTS = np.array([b"", b"a\x00b", "ünï".encode(), b"x" * 300], dtype=np.object_)


def test_bytes_elements_are_serialized_as_tritonclient_does() -> None:
    assert encode_bytes(TEXTS.tolist()) == serialize_byte_tensor(TEXTS).item()
    assert decode_bytes(serialize_byte_tensor(TEXTS).item(), "t") == TEXTS.tolist()
    assert deserialize_bytes_tensor(encode_bytes(["plain str", 7])).tolist() == [b"plain str", b"7"]


def request(datatype: str, shape: list[int], raw: bytes) -> object:
    message = service_pb2.ModelInferRequest(model_name="m")
    message.inputs.add(name="t", datatype=datatype, shape=shape)
    message.raw_input_contents.append(raw)
    return message


def test_raw_numeric_inputs_are_read_in_place() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    inputs, rows = decode_inputs(request("FP32", [2, 3], values.tobytes()))
    array = inputs["t"]
    assert rows == 2 and array.dtype == np.float32
    np.testing.assert_array_equal(array, values)
    assert not array.flags.owndata and not array.flags.writeable  # a view of the message's bytes


def test_bf16_widens_exactly_to_float32() -> None:
    values = np.array([[1.0, -0.0078125, 3.0e38, -np.inf]], dtype=ml_dtypes.bfloat16)
    inputs, _ = decode_inputs(request("BF16", [1, 4], values.tobytes()))
    assert inputs["t"].dtype == np.float32
    np.testing.assert_array_equal(inputs["t"], values.astype(np.float32))


def test_outputs_are_little_endian_bf16_and_bytes_as_tritonclient_reads_them() -> None:
    outputs = {
        "big": np.arange(3, dtype=">i4"),
        "half": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
        "text": TEXTS,
    }
    tensors, contents = encode_outputs(outputs, None, Tensor)
    assert [(t.name, t.datatype, list(t.shape)) for t in tensors] == [
        ("big", "INT32", [3]),
        ("half", "BF16", [2]),
        ("text", "BYTES", [4]),
    ]
    assert np.frombuffer(contents[0], "<i4").tolist() == [0, 1, 2]
    assert np.frombuffer(contents[1], ml_dtypes.bfloat16).tolist() == [1.5, -2.0]
    assert deserialize_bytes_tensor(contents[2]).tolist() == TEXTS.tolist()


def test_a_raw_size_that_does_not_fit_the_shape_names_both() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_inputs(request("INT64", [2], b"\x00" * 12))
    assert "needs 16 bytes" in caught.value.message and "got 12" in caught.value.message
