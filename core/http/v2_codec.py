"""KServe V2 / Open Inference Protocol tensors: JSON and the binary tensor extension.

Binary extension: the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by
raw tensor data, in input order, for each input whose ``parameters.binary_data_size`` is set. BYTES
elements are each a 4-byte little-endian length followed by the bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from ..envelope import Arrays
from ..errors import InvalidRequestError, SignatureMismatchError
from ..tensors import DATATYPES, datatype_of

__all__ = ["V2Request", "decode_request", "encode_response", "parse_json"]

HEADER_LENGTH = "inference-header-content-length"


class V2Request:
    """A decoded V2 inference request."""

    __slots__ = ("binary_outputs", "id", "inputs", "outputs", "parameters", "rows")

    def __init__(
        self,
        id: str | None,
        inputs: Arrays,
        parameters: dict[str, Any],
        outputs: list[str] | None,
        binary_outputs: set[str] | bool,
        rows: int,
    ) -> None:
        self.id = id
        self.inputs = inputs
        self.parameters = parameters
        self.outputs = outputs
        self.binary_outputs = binary_outputs
        self.rows = rows


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None


def _decode_bytes_elements(raw: bytes | memoryview, name: str) -> list[bytes]:
    items: list[bytes] = []
    offset = 0
    size = len(raw)
    while offset < size:
        if offset + 4 > size:
            raise InvalidRequestError(f"input {name!r}: truncated BYTES element length", input=name)
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > size:
            raise InvalidRequestError(f"input {name!r}: truncated BYTES element", input=name)
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    return items


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    raise TypeError("not a string")


def _tensor(spec: Mapping[str, Any], raw: memoryview | None) -> np.ndarray[Any, Any]:
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError("every input needs a string 'name'")
    datatype = spec.get("datatype")
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidRequestError(
            f"input {name!r}: unknown datatype {datatype!r}", input=name, expected=sorted(DATATYPES)
        )
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidRequestError(
            f"input {name!r}: 'shape' must be a list of non-negative integers", input=name
        )
    count = 1
    for d in shape:
        count *= d
    try:
        if raw is not None:
            if datatype == "BYTES":
                array = np.empty(len(items := _decode_bytes_elements(raw, name)), dtype=object)
                array[:] = items
            else:
                array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
        else:
            data = spec.get("data")
            if data is None:
                raise InvalidRequestError(f"input {name!r} has neither 'data' nor binary data", input=name)
            if datatype == "BYTES":
                flat = np.asarray(data, dtype=object).reshape(-1)
                array = np.empty(flat.shape[0], dtype=object)
                array[:] = [_to_bytes(v) for v in flat]
            else:
                array = np.asarray(data, dtype=dtype)
        if array.size != count:
            raise InvalidRequestError(
                f"input {name!r}: shape {shape} needs {count} elements, got {array.size}", input=name
            )
        return array.reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequestError(
            f"input {name!r}: data does not match {datatype}: {exc}", input=name
        ) from None


def decode_request(body: bytes, header_length: int | None) -> V2Request:
    """Decode a V2 request body (JSON, or JSON header + binary tensors) into named arrays."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidRequestError(
                f"Inference-Header-Content-Length {header_length} exceeds the body size {len(body)}"
            )
        header = parse_json(body[:header_length])
        binary = memoryview(body)[header_length:]
    else:
        header = parse_json(body)
        binary = None
    if not isinstance(header, dict):
        raise InvalidRequestError("request body must be a JSON object")
    specs = header.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise InvalidRequestError("'inputs' must be a non-empty list")
    inputs: Arrays = {}
    offset = 0
    for spec in specs:
        if not isinstance(spec, dict):
            raise InvalidRequestError("every input must be a JSON object")
        params = spec.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        raw = None
        if size is not None:
            if binary is None:
                raise InvalidRequestError(
                    f"input {spec.get('name')!r} has binary_data_size but the request has no "
                    "Inference-Header-Content-Length header"
                )
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidRequestError(f"input {spec.get('name')!r}: binary_data_size out of range")
            raw = binary[offset : offset + size]
            offset += size
        array = _tensor(spec, raw)
        if spec["name"] in inputs:
            raise InvalidRequestError(f"input {spec['name']!r} is given twice", input=spec["name"])
        inputs[spec["name"]] = array
    rows = _rows(inputs)
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequestError("'parameters' must be a JSON object")
    outputs: list[str] | None = None
    binary_outputs: set[str] | bool = bool(parameters.get("binary_data_output", False))
    requested = header.get("outputs")
    if requested is not None:
        if not isinstance(requested, list):
            raise InvalidRequestError("'outputs' must be a list")
        outputs = []
        flagged: set[str] = set()
        for out in requested:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidRequestError("every requested output needs a string 'name'")
            outputs.append(out["name"])
            out_params = out.get("parameters") or {}
            if isinstance(out_params, dict) and out_params.get("binary_data"):
                flagged.add(out["name"])
        if flagged:
            binary_outputs = flagged
    request_id = header.get("id")
    return V2Request(
        str(request_id) if request_id is not None else None, inputs, parameters, outputs, binary_outputs, rows
    )


def _rows(inputs: Arrays) -> int:
    rows = -1
    for name, array in inputs.items():
        if array.ndim == 0:
            raise SignatureMismatchError(f"input {name!r} needs a batch dimension", input=name)
        if rows == -1:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise SignatureMismatchError(
                f"inputs disagree on the batch dimension: {name!r} has {array.shape[0]} rows, others {rows}",
                input=name,
            )
    return rows


def _bytes_payload(array: np.ndarray[Any, Any]) -> bytes:
    parts = []
    for value in array.reshape(-1):
        data = value if isinstance(value, bytes) else str(value).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _json_data(array: np.ndarray[Any, Any]) -> Any:
    if array.dtype.kind in "OSU":
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    return array.reshape(-1)


def encode_response(
    model: str,
    version: str,
    request_id: str | None,
    outputs: Arrays,
    requested: list[str] | None,
    binary: set[str] | bool,
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    names = requested if requested is not None else list(outputs)
    tensors = []
    chunks: list[bytes] = []
    for name in names:
        array = outputs.get(name)
        if array is None:
            raise InvalidRequestError(
                f"requested output {name!r} does not exist", output=name, available=sorted(outputs)
            )
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary is True or (isinstance(binary, set) and name in binary):
            payload = (
                _bytes_payload(array)
                if array.dtype.kind in "OSU"
                else np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(payload)}
            chunks.append(payload)
        else:
            entry["data"] = _json_data(array)
        tensors.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request_id is not None:
        response["id"] = request_id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join((header, *chunks)), len(header)
