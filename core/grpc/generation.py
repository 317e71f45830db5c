"""Generation over gRPC, as Triton's decoupled LLM models speak it to ``tritonclient``'s streams.

A request to a generative model carries its prompt in a BYTES input ``text_input`` (one element)
and optionally a BOOL ``stream`` (default true: a response per chunk; false: one response with the
whole text) and a BYTES ``sampling_parameters`` holding a JSON object (as
Triton's vLLM backend takes it). Sampling parameters may also be request parameters
(``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``, ``ignore_eos``); the
per-request settings (``timeout_ms``, ``priority``, ``routing_key``) and tritonclient's own
(``sequence_*``, ``timeout``, ``triton_enable_empty_final_response``) are read elsewhere or
ignored; any other parameter is refused, naming it.

Each response carries the chunk's text in a BYTES output ``text_output`` of shape ``[1]`` (and its
token ids in an INT64 ``token_ids`` output when that output is requested). The last response of a
request has the parameter ``triton_final_response = true`` and ``finish_reason``,
``prompt_tokens`` and ``completion_tokens``; every other has ``triton_final_response = false``.
When the last chunk brings no text and the request set ``triton_enable_empty_final_response``, the
last response has no outputs at all, as Triton sends it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from ..errors import InvalidRequestError
from ..generation import GenerationPayload, SamplingParams, Usage
from .codec import decode_bytes, encode_bytes

__all__ = [
    "TEXT_INPUT",
    "TEXT_OUTPUT",
    "TOKEN_IDS_OUTPUT",
    "GenerationCall",
    "decode_generation",
    "response_parameters",
]

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
TOKEN_IDS_OUTPUT = "token_ids"
STREAM_INPUT = "stream"
SAMPLING_INPUT = "sampling_parameters"
FINAL_RESPONSE = "triton_final_response"
EMPTY_FINAL = "triton_enable_empty_final_response"
_OUTPUTS = (TEXT_OUTPUT, TOKEN_IDS_OUTPUT)
#: Parameters that are not sampling parameters: read by ``RequestContext`` or tritonclient's own.
_NOT_SAMPLING = frozenset(
    (
        "timeout_ms",
        "priority",
        "routing_key",
        "timeout",
        "sequence_id",
        "sequence_start",
        "sequence_end",
        EMPTY_FINAL,
    )
)


class GenerationCall:
    """A decoded generation request: the payload, whether to stream, and how to answer."""

    __slots__ = ("empty_final", "payload", "stream", "text", "token_ids")

    def __init__(
        self, payload: GenerationPayload, stream: bool, text: bool, token_ids: bool, empty_final: bool
    ) -> None:
        self.payload = payload
        self.stream = stream
        #: Which outputs each response carries.
        self.text = text
        self.token_ids = token_ids
        self.empty_final = empty_final

    def outputs(
        self, chunk_text: str, token_ids: list[int], tensor_type: Any
    ) -> tuple[list[Any], list[bytes]]:
        """The output tensors and raw contents of one response."""
        tensors, contents = [], []
        if self.text:
            tensors.append(tensor_type(name=TEXT_OUTPUT, datatype="BYTES", shape=(1,)))
            contents.append(encode_bytes((chunk_text.encode(),)))
        if self.token_ids:
            tensors.append(tensor_type(name=TOKEN_IDS_OUTPUT, datatype="INT64", shape=(len(token_ids),)))
            contents.append(np.asarray(token_ids, dtype="<i8").tobytes())
        return tensors, contents


def _one_element(index: int, tensor: Any, raw: Any) -> Any:
    """The single element of a one-element input (raw or typed contents)."""
    name = tensor.name
    count = 1
    for dim in tensor.shape:
        count *= dim
    if count != 1:
        raise InvalidRequestError(
            f"input {name!r} must hold one element, shape is {list(tensor.shape)}", input=name
        )
    if tensor.datatype == "BYTES":
        items = decode_bytes(raw[index], name) if raw else list(tensor.contents.bytes_contents)
        if len(items) != 1:
            raise InvalidRequestError(f"input {name!r} must hold one element", input=name)
        return items[0]
    if tensor.datatype == "BOOL":
        if raw:
            if len(raw[index]) != 1:
                raise InvalidRequestError(f"input {name!r}: one BOOL is one byte", input=name)
            return raw[index] != b"\x00"
        values = tensor.contents.bool_contents
        if len(values) != 1:
            raise InvalidRequestError(f"input {name!r} must hold one element", input=name)
        return bool(values[0])
    raise InvalidRequestError(f"input {name!r} has datatype {tensor.datatype}", input=name)


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise InvalidRequestError(f"input {name!r} is not UTF-8 text", input=name) from None


def decode_generation(message: Any, parameters: Mapping[str, Any]) -> GenerationCall:
    """The generation a ``ModelInferRequest`` on ModelStreamInfer asks for."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidRequestError(
            f"raw_input_contents holds {len(raw)} tensors for {len(message.inputs)} inputs"
        )
    prompt: str | None = None
    stream = True
    sampling: dict[str, Any] = {}
    for index, tensor in enumerate(message.inputs):
        name = tensor.name
        if name == TEXT_INPUT:
            if tensor.datatype != "BYTES":
                raise InvalidRequestError(f"input {TEXT_INPUT!r} must be BYTES", input=name)
            prompt = _text(_one_element(index, tensor, raw), name)
        elif name == STREAM_INPUT:
            if tensor.datatype != "BOOL":
                raise InvalidRequestError(f"input {STREAM_INPUT!r} must be BOOL", input=name)
            stream = bool(_one_element(index, tensor, raw))
        elif name == SAMPLING_INPUT:
            if tensor.datatype != "BYTES":
                raise InvalidRequestError(f"input {SAMPLING_INPUT!r} must be BYTES", input=name)
            try:
                data = orjson.loads(_one_element(index, tensor, raw))
            except orjson.JSONDecodeError as exc:
                raise InvalidRequestError(
                    f"input {SAMPLING_INPUT!r} is not JSON: {exc}", input=name
                ) from None
            if not isinstance(data, dict):
                raise InvalidRequestError(f"input {SAMPLING_INPUT!r} must be a JSON object", input=name)
            sampling.update(data)
        else:
            raise InvalidRequestError(
                f"a generative model takes the inputs {[TEXT_INPUT, STREAM_INPUT, SAMPLING_INPUT]}, "
                f"not {name!r}",
                input=name,
            )
    if prompt is None:
        raise InvalidRequestError(
            f"a generation request needs a BYTES input {TEXT_INPUT!r}", input=TEXT_INPUT
        )
    for key, value in parameters.items():
        if key in _NOT_SAMPLING:
            continue
        if key not in SamplingParams.FIELDS:
            raise InvalidRequestError(
                f"unknown generation parameter {key!r}", param=key, known=sorted(SamplingParams.FIELDS)
            )
        sampling[key] = value
    requested = [output.name for output in message.outputs]
    for name in requested:
        if name not in _OUTPUTS:
            raise InvalidRequestError(
                f"requested output {name!r} does not exist; a generative model returns {list(_OUTPUTS)}",
                output=name,
                available=list(_OUTPUTS),
            )
    payload = GenerationPayload(prompt=prompt, sampling=SamplingParams.from_mapping(sampling))
    text = not requested or TEXT_OUTPUT in requested
    token_ids = TOKEN_IDS_OUTPUT in requested
    return GenerationCall(payload, stream, text, token_ids, bool(parameters.get(EMPTY_FINAL, False)))


def response_parameters(finish_reason: str | None, usage: Usage) -> dict[str, Any]:
    """Plain values of a response's parameters: ``triton_final_response``, and on the last response
    (``finish_reason`` set) why it finished and the token counts."""
    if finish_reason is None:
        return {FINAL_RESPONSE: False}
    return {
        FINAL_RESPONSE: True,
        "finish_reason": finish_reason,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
    }
