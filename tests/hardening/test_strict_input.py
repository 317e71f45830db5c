"""Strict input: what numpy or a lenient parser would have read anyway is a 4xx naming the input."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hardening_support import BODY, serve, write_repository

from ladle.errors import LadleError
from ladle.http import v2_codec
from ladle.http.v2_codec import decode_request, parse_json
from ladle.testing.server import RunningServer


def refusal(body: Any, header_length: int | None = None, max_values: int = 1 << 23) -> LadleError:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(LadleError) as caught:
        decode_request(raw, header_length, max_values)
    return caught.value


def tensor(data: Any, datatype: str = "FP32", shape: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    spec = {"name": "x", "datatype": datatype, "shape": shape or [len(data)], "data": data}
    return {"inputs": [spec], **extra}


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "named"),
    [
        ([1.0, None], "FP32", [2], "null"),
        ([1.0, True], "FP32", [2], "booleans"),
        ([[1.0, 2.0], [3.0, False]], "FP64", [2, 2], "booleans"),
        ([1, True], "INT64", [2], "booleans"),
        ([1, "2", None], "FP32", [3], "null and strings"),
        ([True, 1], "BOOL", [2], "numbers"),
        ([True, None], "BOOL", [2], "null"),
    ],
)
def test_null_and_booleans_in_numeric_data_are_400_naming_the_input(
    data: list[Any], datatype: str, shape: list[int], named: str
) -> None:
    error = refusal(tensor(data, datatype, shape))
    assert error.status == 400 and error.details["input"] == "x"
    assert f"holds {named}" in error.message


def test_booleans_elsewhere_in_the_body_do_not_make_numbers_suspect() -> None:
    body = tensor([1.0, 2.0], parameters={"binary_data_output": False, "flag": True})
    decoded = decode_request(orjson.dumps(body), None)
    assert decoded.inputs["x"].tolist() == [1.0, 2.0]
    booleans = decode_request(orjson.dumps(tensor([True, False], "BOOL")), None)
    assert booleans.inputs["x"].tolist() == [True, False]


def test_booleans_as_shape_or_binary_size_are_refused() -> None:
    assert refusal(tensor([1.0, 2.0], shape=[True, 2])).status == 400
    spec = {"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": True}}
    header = orjson.dumps({"inputs": [spec]})
    assert refusal(header + b"\0\0\0\0", len(header)).status == 400


def binary_body(values: list[float], trailing: bytes = b"") -> tuple[bytes, int]:
    payload = struct.pack(f"<{len(values)}f", *values)
    parameters = {"binary_data_size": len(payload)}
    spec = {"name": "x", "datatype": "FP32", "shape": [len(values)], "parameters": parameters}
    header = orjson.dumps({"inputs": [spec]})
    return header + payload + trailing, len(header)


def test_bytes_after_the_declared_binary_data_are_400() -> None:
    body, length = binary_body([1.0, 2.0])
    assert decode_request(body, length).inputs["x"].tolist() == [1.0, 2.0]
    body, length = binary_body([1.0, 2.0], trailing=b"junk")
    error = refusal(body, length)
    assert error.status == 400 and "4 bytes follow the binary tensor data" in error.message


def test_json_values_over_the_limit_are_413_before_parsing() -> None:
    error = refusal(tensor([0.0] * 100), max_values=50)
    assert error.status == 413 and error.details["limit"] == 50
    # a shape that asks for more than the limit is refused before any data is converted
    error = refusal(tensor([0.0] * 10, shape=[10, 1]), max_values=5)
    assert error.status == 413
    with pytest.raises(LadleError) as caught:
        parse_json(b"[" + b"0," * 99 + b"0]", max_values=50)
    assert caught.value.status == 413


def test_an_oversized_body_is_refused_without_being_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    # the body: 60 MB, 31M values; refused by a scan of its commas (what it costs is in the
    # report: about one pass over the bytes), never parsed or converted
    values = 31_000_000
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[%d],"data":[' % values
    body += b"0," * (values - 1) + b"0]}]}"

    def parse(_: bytes) -> None:
        raise AssertionError("the oversized body was parsed")

    monkeypatch.setattr(v2_codec.orjson, "loads", parse)
    error = refusal(body)
    assert error.status == 413 and "max_json_elements" in error.message


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serve(write_repository(tmp_path_factory.mktemp("strict")), max_json_elements=1000) as running:
        yield running


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_a_body_that_is_not_json_is_415(running: RunningServer, content_type: str) -> None:
    for path in ("/v2/models/doubler/infer", "/api/v1/models/doubler/predict", "/v1/completions"):
        response = httpx.post(
            running.url + path, content=orjson.dumps(BODY), headers={"content-type": content_type}
        )
        assert response.status_code == 415, (path, response.text)
        assert response.json()["code"] == "unsupported_media_type"


def test_octet_stream_is_read_only_with_the_binary_extension(running: RunningServer) -> None:
    url = running.url + "/v2/models/doubler/infer"
    spec = {"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
    header = orjson.dumps({"inputs": [spec]})
    binary = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}
    ok = httpx.post(url, content=header + struct.pack("<2f", 1.0, 2.0), headers=binary)
    assert ok.status_code == 200, ok.text
    plain = httpx.post(url, content=orjson.dumps(BODY), headers={"content-type": "application/octet-stream"})
    assert plain.status_code == 415


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8"])
def test_json_and_no_content_type_are_read(running: RunningServer, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(
        running.url + "/v2/models/doubler/infer", content=orjson.dumps(BODY), headers=headers
    )
    assert response.status_code == 200, response.text


def test_over_http_null_is_400_and_too_many_values_413(running: RunningServer) -> None:
    url = running.url + "/v2/models/doubler/infer"
    response = httpx.post(url, json=tensor([1.0, None], shape=[1, 2]))
    assert response.status_code == 400 and response.json()["input"] == "x"
    response = httpx.post(url, json=tensor([1.0] * 2000, shape=[1000, 2]))
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("row", "named"),
    [([1.0, None], "holds null"), ([True, 2.0], "holds booleans"), ([1e300, 2.0], "overflow")],
)
def test_records_are_as_strict_as_v2_tensors(running: RunningServer, row: list[Any], named: str) -> None:
    url = running.url + "/api/v1/models/doubler/predict"
    assert httpx.post(url, json={"inputs": [{"x": [1.0, 2.0]}]}).status_code == 200
    response = httpx.post(url, json={"inputs": [{"x": [1.0, 2.0]}, {"x": row}]})
    assert response.status_code == 400, response.text
    assert response.json()["input"] == "x" and named in response.json()["error"]
