"""The V2 tensor codec on its own: every datatype through JSON and the binary extension."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from ladle.errors import InvalidRequestError
from ladle.http.v2_codec import decode_request, encode_response
from ladle.tensors import DATATYPES

NUMERIC = [name for name in DATATYPES if name != "BYTES"]


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        array = np.empty(4, dtype=object)
        array[:] = [b"a", b"", "é".encode(), b"\x00\xff"]
        return array.reshape(2, 2)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    return np.arange(4).reshape(2, 2).astype(DATATYPES[datatype])


def binary_request(arrays: dict[str, np.ndarray]) -> tuple[bytes, int]:
    inputs, chunks = [], []
    for name, array in arrays.items():
        if array.dtype == object:
            raw = b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
            datatype = "BYTES"
        else:
            raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
            datatype = next(k for k, v in DATATYPES.items() if v == array.dtype)
        inputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    header = orjson.dumps(
        {"inputs": inputs, "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in arrays]}
    )
    return header + b"".join(chunks), len(header)


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_round_trips_as_json(datatype: str) -> None:
    array = sample(datatype)
    if datatype == "BYTES":  # JSON carries text: keep to UTF-8 elements
        array[1, 1] = b"z"
    data = [v.decode() for v in array.reshape(-1)] if datatype == "BYTES" else array.reshape(-1).tolist()
    body = orjson.dumps({"inputs": [{"name": "t", "datatype": datatype, "shape": [2, 2], "data": data}]})
    decoded = decode_request(body, None)
    got = decoded.inputs["t"]
    assert got.shape == (2, 2) and decoded.rows == 2
    assert got.tolist() == array.tolist()
    content, length = encode_response("m", "1", None, {"t": got}, None, False)
    assert length is None
    (output,) = orjson.loads(content)["outputs"]
    assert output["datatype"] == datatype and output["shape"] == [2, 2]
    assert output["data"] == data


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_round_trips_in_binary(datatype: str) -> None:
    array = sample(datatype)
    body, header_length = binary_request({"t": array})
    decoded = decode_request(body, header_length)
    assert decoded.inputs["t"].tolist() == array.tolist() and decoded.binary_outputs == {"t"}
    content, length = encode_response("m", "1", "x", decoded.inputs, decoded.outputs, decoded.binary_outputs)
    assert length is not None
    header = orjson.loads(content[:length])
    (output,) = header["outputs"]
    raw = content[length:]
    assert output["parameters"]["binary_data_size"] == len(raw) and header["id"] == "x"
    if datatype == "BYTES":
        again, _ = binary_request({"t": array})
        assert raw == again[-len(raw) :]
    else:
        assert np.frombuffer(raw, dtype=DATATYPES[datatype]).reshape(2, 2).tolist() == array.tolist()


def framed(header: dict[str, object], binary: bytes) -> tuple[bytes, int]:
    raw = orjson.dumps(header)
    return raw + binary, len(raw)


def binary_input(datatype: str, shape: list[int], size: int) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "t", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}
        ]
    }


@pytest.mark.parametrize(
    ("body", "length", "fragment"),
    [
        (orjson.dumps(binary_input("FP32", [1], 4)), None, "no Inference"),
        (*framed(binary_input("FP32", [2], 8), b"\x00\x00"), "out of range"),
        (*framed(binary_input("BYTES", [1], 3), b"\x05\x00\x00"), "truncated"),
        (b"{}", 10, "exceeds the body"),
        (b'{"inputs":[{"name":"t","datatype":"INT8","shape":[1],"data":[300]}]}', None, "INT8"),
        (b'{"inputs":[{"name":"t","datatype":"FP32","shape":[-1],"data":[1]}]}', None, "non-negative"),
        (
            b'{"inputs":[{"name":"t","datatype":"FP32","shape":[1],"data":[1]},'
            b'{"name":"t","datatype":"FP32","shape":[1],"data":[1]}]}',
            None,
            "twice",
        ),
    ],
)
def test_malformed_tensors_are_named(body: bytes, length: int | None, fragment: str) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        decode_request(body, length)
