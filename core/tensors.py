"""Tensor datatypes (KServe V2 names), tensor specs and model signatures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from .errors import InvalidRequestError, SignatureMismatchError

__all__ = [
    "DATATYPES",
    "Signature",
    "TensorSpec",
    "datatype_of",
    "numpy_dtype",
]

#: V2 datatype name -> numpy dtype. BYTES tensors are numpy object arrays of ``bytes``.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_BY_DTYPE: dict[np.dtype[Any], str] = {dtype: name for name, dtype in DATATYPES.items()}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a V2 datatype name; raises ``SignatureMismatchError`` for unknown names."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise SignatureMismatchError(
            f"unknown datatype {datatype!r}; known: {', '.join(DATATYPES)}", expected=sorted(DATATYPES)
        ) from None


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The V2 datatype name of a numpy array (strings and bytes map to BYTES)."""
    name = _BY_DTYPE.get(array.dtype)
    if name is not None:
        return name
    if array.dtype.kind in "SUO":
        return "BYTES"
    raise SignatureMismatchError(f"dtype {array.dtype} has no V2 datatype")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor: V2 datatype and shape, ``-1`` for a variable dimension (the first is the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    # Precomputed for ``check``'s fast accept: the dtype, the rank, and the non-batch dims when fixed.
    _dtype: np.dtype[Any] | None = field(default=None, init=False, compare=False, repr=False)
    _rank: int = field(default=0, init=False, compare=False, repr=False)
    _tail: tuple[int, ...] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        tail = self.shape[1:]
        object.__setattr__(self, "_dtype", DATATYPES.get(self.datatype))
        object.__setattr__(self, "_rank", len(self.shape))
        object.__setattr__(self, "_tail", None if -1 in tail else tail)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))

    def check(self, array: np.ndarray[Any, Any]) -> None:
        """Raise ``SignatureMismatchError`` unless ``array`` fits this spec (the batch dimension is free)."""
        shape = array.shape
        if array.dtype is self._dtype and len(shape) == self._rank and shape[1:] == self._tail:
            return  # the common case, decided without a loop
        if _BY_DTYPE.get(array.dtype) != self.datatype and datatype_of(array) != self.datatype:
            raise SignatureMismatchError(
                f"input {self.name!r} has datatype {datatype_of(array)}, expected {self.datatype}",
                input=self.name,
            )
        if len(shape) != len(self.shape):
            self._wrong_shape(shape)
        for want, got in zip(self.shape[1:], shape[1:], strict=True):
            if want != got and want != -1:
                self._wrong_shape(shape)

    def _wrong_shape(self, shape: tuple[int, ...]) -> NoReturn:
        raise SignatureMismatchError(
            f"input {self.name!r} has shape {list(shape)}, expected {list(self.shape)}", input=self.name
        )


@dataclass(frozen=True, slots=True)
class Signature:
    """The inputs and outputs a model takes and returns."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec.from_dict(d) for d in data.get("inputs", ())),
            tuple(TensorSpec.from_dict(d) for d in data.get("outputs", ())),
        )

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def check_inputs(self, arrays: Mapping[str, np.ndarray[Any, Any]]) -> None:
        """Raise ``SignatureMismatchError`` if names, datatypes or shapes differ from the signature."""
        if not self.inputs:
            return
        for spec in self.inputs:
            array = arrays.get(spec.name)
            if array is None:
                self._wrong_names(arrays)
            spec.check(array)
        if len(arrays) != len(self.inputs):
            self._wrong_names(arrays)

    def check_outputs(self, names: Sequence[str]) -> None:
        """Raise ``InvalidRequestError`` (400) if a requested output is not one the model returns."""
        if not self.outputs:
            return
        known = [spec.name for spec in self.outputs]
        for name in names:
            if name not in known:
                raise InvalidRequestError(
                    f"requested output {name!r} does not exist; the model returns {known}",
                    output=name,
                    available=known,
                )

    def _wrong_names(self, arrays: Mapping[str, Any]) -> NoReturn:
        expected = {spec.name for spec in self.inputs}
        missing = sorted(expected.difference(arrays))
        unexpected = sorted(set(arrays).difference(expected))
        takes = ", ".join(f"{spec.name!r} ({spec.datatype} {list(spec.shape)})" for spec in self.inputs)
        text = f"input names do not match the signature: the model takes {takes}"
        text += f"; missing {missing}" if missing else ""
        text += f"; unexpected {unexpected}" if unexpected else ""
        raise SignatureMismatchError(text, missing=missing, unexpected=unexpected, expected=sorted(expected))
