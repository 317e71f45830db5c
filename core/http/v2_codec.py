"""KServe V2 / Open Inference Protocol tensors: JSON and the binary tensor extension.

Binary extension: the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by
raw tensor data, in input order, for each input whose ``parameters.binary_data_size`` is set. BYTES
elements are each a 4-byte little-endian length followed by the bytes.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from ..envelope import Arrays
from ..errors import InvalidRequestError, PayloadTooLargeError, SignatureMismatchError
from ..tensors import DATATYPES, datatype_of

__all__ = [
    "MAX_JSON_VALUES",
    "V2Request",
    "check_json_scalars",
    "decode_request",
    "encode_response",
    "parse_json",
]

HEADER_LENGTH = "inference-header-content-length"
#: The default of ``[server] max_json_elements``: values one JSON body may hold.
MAX_JSON_VALUES = 8 * 1024 * 1024
_MAX_DIMENSIONS = 32
_L, _R = ord("l"), ord("r")
_NUMBERS = frozenset({int, float})
_BOOLEAN = frozenset({bool})
_TEXT = frozenset({str})
_JSON_NAMES = {
    type(None): "null",
    bool: "booleans",
    int: "numbers",
    float: "numbers",
    str: "strings",
    dict: "objects",
    list: "lists",
}


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


def parse_json(body: bytes, max_values: int = MAX_JSON_VALUES) -> Any:
    """The JSON value of ``body``; 400 if it is not JSON, 413 (before parsing) if it could hold
    more than ``max_values`` values (a JSON text of n values has at least n - 1 commas)."""
    if len(body) > max_values and body.count(b",") >= max_values:
        raise PayloadTooLargeError(
            f"the JSON body holds more than {max_values} values ([server] max_json_elements); "
            "send large tensors with the binary tensor extension",
            limit=max_values,
        )
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


def check_json_scalars(data: Any, depth: int, datatype: str, name: str, *, strings: bool = False) -> None:
    """400 unless every element of ``data`` (nested ``depth`` lists deep) is a JSON number, or a
    JSON boolean for ``BOOL``: numpy would read ``null`` as NaN and ``true`` as 1. ``strings``: text
    is accepted too (numpy parsed it as a number already; a CSV cell is text)."""
    flat = data if depth else [data]
    for _ in range(depth - 1):
        flat = list(itertools.chain.from_iterable(flat))
    found = set(map(type, flat))
    allowed = _BOOLEAN if datatype == "BOOL" else _NUMBERS
    if strings:
        allowed |= _TEXT
    if not found <= allowed:
        names = sorted({_JSON_NAMES.get(t, t.__name__) for t in found - allowed})
        expected = "true or false" if datatype == "BOOL" else "numbers"
        raise InvalidRequestError(
            f"input {name!r}: {datatype} data holds {' and '.join(names)}; only {expected} are accepted",
            input=name,
        )


def _tensor(
    spec: Mapping[str, Any], raw: memoryview | None, suspect: bool = True, max_values: int = MAX_JSON_VALUES
) -> np.ndarray[Any, Any]:
    """One input as an array. ``suspect``: the body may hold ``null`` or booleans (checked then);
    ``max_values``: the most elements JSON ``data`` may still hold in this request."""
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError("every input needs a string 'name'")
    datatype = spec.get("datatype")
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidRequestError(
            f"input {name!r}: unknown datatype {datatype!r}; known: {', '.join(DATATYPES)}",
            input=name,
            expected=sorted(DATATYPES),
        )
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidRequestError(
            f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r:.80}", input=name
        )
    if len(shape) > _MAX_DIMENSIONS:
        raise InvalidRequestError(
            f"input {name!r}: 'shape' has {len(shape)} dimensions, more than {_MAX_DIMENSIONS}", input=name
        )
    count = 1
    for d in shape:
        count *= d
    if raw is None and count > max_values:
        raise PayloadTooLargeError(
            f"input {name!r}: shape {shape} has {count} elements; a JSON body may hold "
            f"{max_values} more ([server] max_json_elements); send large tensors as binary data",
            input=name,
            limit=max_values,
        )
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
                if suspect or datatype == "BOOL":
                    check_json_scalars(data, array.ndim, str(datatype), name)
        if array.size != count:
            raise InvalidRequestError(
                f"input {name!r}: shape {shape} needs {count} elements, got {array.size}", input=name
            )
        return array.reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequestError(
            f"input {name!r}: data does not match {datatype}: {exc}", input=name
        ) from None


def decode_request(body: bytes, header_length: int | None, max_values: int = MAX_JSON_VALUES) -> V2Request:
    """Decode a V2 request body (JSON, or JSON header + binary tensors) into named arrays.

    Strict: ``null``, booleans or strings in numeric data, bytes after the declared binary data and
    JSON data of more than ``max_values`` elements (checked before anything is converted) are refused.
    """
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidRequestError(
                f"Inference-Header-Content-Length {header_length} exceeds the body size {len(body)}"
            )
        text = body[:header_length]
        binary = memoryview(body)[header_length:]
    else:
        text = body
        binary = None
    header = parse_json(text, max_values)
    # numpy reads null as NaN and true as 1: look closer only when the text holds such a literal
    # (one byte, given as an int, is found by memchr; null and false hold an "l", true an "r")
    suspect = (_L in text and (b"null" in text or b"false" in text)) or (_R in text and b"true" in text)
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
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise InvalidRequestError(f"input {spec.get('name')!r}: binary_data_size out of range")
            raw = binary[offset : offset + size]
            offset += size
        array = _tensor(spec, raw, suspect, max_values)
        if raw is None:
            max_values -= array.size
        if spec["name"] in inputs:
            raise InvalidRequestError(f"input {spec['name']!r} is given twice", input=spec["name"])
        inputs[spec["name"]] = array
    if binary is not None and offset != len(binary):
        raise InvalidRequestError(
            f"{len(binary) - offset} bytes follow the binary tensor data the inputs declare "
            f"({offset} bytes); each binary input needs parameters.binary_data_size",
        )
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
                f"requested output {name!r} does not exist; the model returns {sorted(outputs)}",
                output=name,
                available=sorted(outputs),
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
