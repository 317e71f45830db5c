"""KServe V2 gRPC tensors <-> numpy, as ``tritonclient.grpc`` sends and expects them.

Inputs come either all in ``raw_input_contents`` (what tritonclient sends: little-endian, row-major;
BYTES elements each a 4-byte little-endian length and the bytes; BOOL one byte each) or each in its
typed ``contents`` field (``fp32_contents``, ``int_contents``, ...; FP16 and BF16 have none and must
be raw). Raw numeric tensors are read in place with ``np.frombuffer`` (read-only arrays over the
message's bytes). BF16 becomes FP32: numpy has no bfloat16, and widening is exact (the 16 bits
become the high half of a float32). Outputs always go back in ``raw_output_contents``, in the order
of ``outputs``, which is how tritonclient's ``as_numpy`` reads them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..envelope import Arrays
from ..errors import InvalidRequestError, SignatureMismatchError
from ..tensors import datatype_of

__all__ = [
    "DATATYPES",
    "decode_bytes",
    "decode_inputs",
    "encode_bytes",
    "encode_outputs",
    "parameter_values",
    "requested_outputs",
]

Array = np.ndarray[Any, Any]

#: V2 datatype -> the little-endian numpy dtype its raw bytes hold (BF16: the raw 16 bits).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
    "BYTES": np.dtype(np.object_),
}
#: V2 datatype -> its typed field in ``InferTensorContents`` (FP16 and BF16 have none).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_SHARED_MEMORY = "shared_memory_region"
_LENGTH = struct.Struct("<I")


def parameter_values(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``map<string, InferParameter>`` as plain values (bool, int, str or float)."""
    if not parameters:
        return {}
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice is not None else None
    return values


def decode_bytes(raw: bytes | memoryview, name: str) -> list[bytes]:
    """The elements of a serialized BYTES tensor (4-byte little-endian length, then the bytes)."""
    items: list[bytes] = []
    offset = 0
    size = len(raw)
    unpack = _LENGTH.unpack_from
    while offset < size:
        if offset + 4 > size:
            raise InvalidRequestError(f"input {name!r}: truncated BYTES element length", input=name)
        (length,) = unpack(raw, offset)
        offset += 4
        if offset + length > size:
            raise InvalidRequestError(f"input {name!r}: truncated BYTES element", input=name)
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    return items


def _element_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


def encode_bytes(values: Iterable[Any]) -> bytes:
    """Serialize BYTES elements (bytes as they are, anything else as its UTF-8 ``str``)."""
    pack = _LENGTH.pack
    parts: list[bytes] = []
    for value in values:
        data = _element_bytes(value)
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _object_array(items: Sequence[bytes]) -> Array:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _shape(tensor: Any, name: str) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    for dim in shape:
        if dim < 0:
            raise InvalidRequestError(
                f"input {name!r}: shape {list(shape)} has a negative dimension", input=name
            )
    return shape


def _from_raw(raw: bytes, datatype: str, dtype: np.dtype[Any], shape: tuple[int, ...], name: str) -> Array:
    count = 1
    for dim in shape:
        count *= dim
    if datatype == "BYTES":
        array = _object_array(decode_bytes(raw, name))
        if array.size != count:
            raise InvalidRequestError(
                f"input {name!r}: shape {list(shape)} needs {count} elements, got {array.size}", input=name
            )
        return array.reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidRequestError(
            f"input {name!r}: shape {list(shape)} of {datatype} needs {expected} bytes of raw contents, "
            f"got {len(raw)}",
            input=name,
        )
    array = np.frombuffer(raw, dtype=dtype)
    if datatype == "BF16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array.reshape(shape)


def _from_contents(tensor: Any, datatype: str, shape: tuple[int, ...], name: str) -> Array:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise InvalidRequestError(
            f"input {name!r}: {datatype} tensors have no typed contents; send them in raw_input_contents",
            input=name,
        )
    values = getattr(tensor.contents, field)
    if datatype == "BYTES":
        array = _object_array(list(values))
    else:
        try:
            array = np.array(values, dtype=DATATYPES[datatype])
        except (OverflowError, ValueError) as exc:
            raise InvalidRequestError(
                f"input {name!r}: {field} do not fit {datatype}: {exc}", input=name
            ) from None
    count = 1
    for dim in shape:
        count *= dim
    if array.size != count:
        raise InvalidRequestError(
            f"input {name!r}: shape {list(shape)} needs {count} elements, {field} holds {array.size}",
            input=name,
        )
    return array.reshape(shape)


def decode_inputs(message: Any) -> tuple[Arrays, int]:
    """The named input arrays of a ``ModelInferRequest`` and their shared batch size (rows)."""
    tensors = message.inputs
    if not tensors:
        raise InvalidRequestError("'inputs' must be a non-empty list")
    raw_contents = message.raw_input_contents
    if raw_contents and len(raw_contents) != len(tensors):
        raise InvalidRequestError(
            f"raw_input_contents holds {len(raw_contents)} tensors for {len(tensors)} inputs: "
            "send every input raw, or none"
        )
    inputs: Arrays = {}
    rows = -1
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if not name:
            raise InvalidRequestError("every input needs a name")
        datatype = tensor.datatype
        dtype = DATATYPES.get(datatype)
        if dtype is None:
            raise InvalidRequestError(
                f"input {name!r}: unknown datatype {datatype!r}", input=name, expected=sorted(DATATYPES)
            )
        if tensor.parameters and _SHARED_MEMORY in tensor.parameters:
            raise InvalidRequestError(f"input {name!r}: shared memory is not supported", input=name)
        shape = _shape(tensor, name)
        if raw_contents:
            array = _from_raw(raw_contents[index], datatype, dtype, shape, name)
        else:
            array = _from_contents(tensor, datatype, shape, name)
        if name in inputs:
            raise InvalidRequestError(f"input {name!r} is given twice", input=name)
        if not shape:
            raise SignatureMismatchError(f"input {name!r} needs a batch dimension", input=name)
        if rows == -1:
            rows = shape[0]
        elif shape[0] != rows:
            raise SignatureMismatchError(
                f"inputs disagree on the batch dimension: {name!r} has {shape[0]} rows, others {rows}",
                input=name,
            )
        inputs[name] = array
    return inputs, rows


def requested_outputs(message: Any) -> list[str] | None:
    """The output names a request asks for, in its order (``None``: all of them)."""
    outputs = message.outputs
    if not outputs:
        return None
    names = []
    for output in outputs:
        if output.parameters and _SHARED_MEMORY in output.parameters:
            raise InvalidRequestError(
                f"output {output.name!r}: shared memory is not supported", output=output.name
            )
        names.append(output.name)
    return names


#: Output dtype -> V2 datatype, for the dtypes that need no further look (``dtype.name`` is slow).
_OUTPUT_DATATYPES: dict[np.dtype[Any], str] = {
    dtype: name for name, dtype in DATATYPES.items() if name not in ("BF16", "BYTES")
}


def _datatype(array: Array) -> str:
    datatype = _OUTPUT_DATATYPES.get(array.dtype)
    if datatype is not None:
        return datatype
    if array.dtype.byteorder == ">":  # big-endian: sent as its little-endian copy
        datatype = _OUTPUT_DATATYPES.get(array.dtype.newbyteorder("<"))
        if datatype is not None:
            return datatype
    if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16, as a torch runtime may return
        return "BF16"
    return datatype_of(array)


def _raw(array: Array, datatype: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes(array.reshape(-1).tolist())
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()


def encode_outputs(
    outputs: Arrays, names: Sequence[str] | None, tensor_type: Any
) -> tuple[list[Any], list[bytes]]:
    """The ``InferOutputTensor`` messages and their raw contents, in the order of ``names``."""
    tensors = []
    contents = []
    for name in names if names is not None else outputs:
        array = outputs.get(name)
        if array is None:
            raise InvalidRequestError(
                f"requested output {name!r} does not exist", output=name, available=sorted(outputs)
            )
        datatype = _datatype(array)
        tensors.append(tensor_type(name=name, datatype=datatype, shape=array.shape))
        contents.append(_raw(array, datatype))
    return tensors, contents
