"""The ladle API: ``POST /api/v1/models/{name}/predict`` with records in and records out.

Request::

    {"inputs": [{"features": [5.1, 3.5, ...]}, ...],
     "params": {"version": "2", "timeout_ms": 500, "priority": "high", "routing_key": "user-42"}}

Each record maps input names to one row's values. A model with a single input accepts any one key
(``features`` by convention). ``params`` is optional; every key in it is optional.

Response (200), one output record per input record, in order; the ``Ladle-Model-Version`` header
names the version that served it::

    {"id": "…", "model": "iris", "version": "2", "outputs": [{"predict": 0.97}, ...]}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from ..envelope import Arrays, CancelSignal, InferenceRequest
from ..errors import InvalidRequestError
from ..request_context import RequestContext
from ..server import Server
from ..serving import ModelEndpoint
from ..tensors import Signature, datatype_of, numpy_dtype
from .fast_path import FastRoutes, Reply, json_answer_headers
from .v2_codec import check_json_scalars, parse_json

__all__ = ["records_to_arrays", "routes"]

_PARAMS = {"version", "timeout_ms", "priority", "routing_key"}


def records_to_arrays(records: list[Any], signature: Signature | None) -> Arrays:
    """Stack records (one dict per row) into named arrays typed by the signature (FP32 without one).

    As strict as V2 tensors (no ``null``, no booleans in numeric inputs, no overflow) but for text
    that reads as a number: records also come from CSV files."""
    if not records:
        raise InvalidRequestError("'inputs' must be a non-empty list of records")
    first = records[0]
    if not isinstance(first, dict) or not first:
        raise InvalidRequestError("each record in 'inputs' must be a non-empty JSON object")
    specs = signature.inputs if signature is not None else ()
    keys = list(first)
    if len(specs) == 1 and len(keys) == 1:
        names = {keys[0]: specs[0].name}
    else:
        expected = {s.name for s in specs}
        if expected and set(keys) != expected:
            raise InvalidRequestError(
                f"record keys {sorted(keys)} do not match the model's inputs: expected {sorted(expected)}",
                expected=sorted(expected),
                got=sorted(keys),
            )
        names = {k: k for k in keys}
    dtypes = {s.name: numpy_dtype(s.datatype) for s in specs}
    arrays: Arrays = {}
    for key, name in names.items():
        try:
            column = [record[key] for record in records]
        except (KeyError, TypeError):
            raise InvalidRequestError(f"every record needs the key {key!r}", input=key) from None
        dtype = dtypes.get(name, np.dtype(np.float32))
        try:
            if dtype.kind == "O":
                array = np.empty(len(column), dtype=object)
                array[:] = [v.encode() if isinstance(v, str) else v for v in column]
            else:
                with np.errstate(over="raise"):
                    array = np.asarray(column, dtype=dtype)
                check_json_scalars(column, array.ndim, datatype_of(array), key, strings=True)
        except (ValueError, TypeError, FloatingPointError, OverflowError) as exc:
            raise InvalidRequestError(
                f"input {key!r}: values are not {dtype} rows of one shape: {exc}", input=key
            ) from None
        arrays[name] = array
    return arrays


def _records(outputs: Arrays, rows: int) -> list[dict[str, Any]]:
    columns = {
        name: array.tolist()
        if array.dtype.kind != "O"
        else [v.decode(errors="replace") if isinstance(v, bytes) else v for v in array]
        for name, array in outputs.items()
    }
    return [{name: column[i] for name, column in columns.items()} for i in range(rows)]


def routes(server: Server, fast_routes: FastRoutes) -> None:
    manager = server.manager
    admission = manager.admission
    trace_context = server.trace_context

    def _signature(endpoint: ModelEndpoint, version: str | None) -> Signature | None:
        chosen = endpoint.loaded(version) if version is not None else endpoint.latest()
        return chosen.signature if chosen is not None else None

    async def predict(
        model: str | None, _: str | None, raw: bytes, headers: Mapping[str, str], cancel: CancelSignal
    ) -> Reply:
        assert model is not None
        endpoint = manager.endpoint(model)
        body = parse_json(raw)
        if not isinstance(body, dict):
            raise InvalidRequestError("request body must be a JSON object")
        unknown = set(body) - {"inputs", "params", "id"}
        if unknown:
            raise InvalidRequestError(
                f"unknown fields {sorted(unknown)}; allowed: id, inputs, params",
                allowed=["id", "inputs", "params"],
            )
        params = body.get("params") or {}
        if not isinstance(params, Mapping) or set(params) - _PARAMS:
            raise InvalidRequestError(
                "'params' must be an object with keys from " + ", ".join(sorted(_PARAMS))
            )
        records = body.get("inputs")
        if not isinstance(records, list):
            raise InvalidRequestError("'inputs' must be a list of records")
        version = params.get("version")
        if version is not None:
            version = str(version)
        arrays = records_to_arrays(records, _signature(endpoint, version))
        context = RequestContext.parse(headers, params, trace_context)
        request = InferenceRequest(
            endpoint.name,
            arrays,
            version=version,
            id=str(body["id"]) if body.get("id") is not None else None,
            deadline=context.deadline,
            priority=context.priority,
            routing_key=context.routing_key,
            trace=context.trace,
            rows=len(records),
            protocol="ladle",
            cancel=cancel,
        )
        answer = await admission.infer(request)
        payload = {
            "id": request.id,
            "model": answer.model,
            "version": answer.version,
            "outputs": _records(answer.outputs, request.rows),
        }
        return 200, orjson.dumps(payload), json_answer_headers(answer)

    fast_routes.add("/api/v1/models/{model}/predict", predict, "ladle")
