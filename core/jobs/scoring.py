"""Scoring chunks of predict records through the admission pipeline, as low-priority work.

One chunk becomes one ``InferenceRequest`` (``protocol="job"``, ``Priority.LOW``) of as many rows
as it has well-formed records, so a chunk costs the pipeline one request, not one per record. What
goes wrong stays with the records it concerns:

- a malformed record (not an object, wrong keys, values of the wrong type or shape) gets its
  error line and the rest of the chunk is scored without it;
- a chunk the model refuses for its inputs (400, 422) is scored again record by record, so only
  the offending records fail;
- a batcher that takes fewer rows than the chunk (413 naming ``max_rows``) gets the chunk in
  pieces of that size from then on;
- a busy, not-ready or timed-out answer (503, 504) is retried with backoff before the records fail.

Results come back as JSON Lines, one line per record in input order::

    {"line": 3, "id": "a7", "outputs": {"probability": 0.97}}
    {"line": 4, "error": {"message": "...", "code": "invalid_request", "status": 400}}
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..admission import Admission
from ..envelope import Arrays, InferenceRequest, Priority
from ..errors import (
    DeadlineExceededError,
    InvalidInputError,
    InvalidRequestError,
    LadleError,
    ModelNotReadyError,
    PayloadTooLargeError,
    ServerBusyError,
    SignatureMismatchError,
)
from ..http.ladle_api import records_to_arrays
from ..tensors import Signature
from .inputs import PreparedChunk, prepare_chunk, record_id_field
from .records import RecordChunk, error_body

__all__ = ["RETRY_DELAYS", "PredictScorer", "ScoredChunk", "answer_guarded", "retrying"]

#: Seconds to wait before each retry of a busy, not-ready or timed-out request.
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
_TRANSIENT = (ServerBusyError, ModelNotReadyError, DeadlineExceededError)
# Errors about a chunk's inputs: scoring its records one by one isolates the offending ones.
_ABOUT_INPUTS = (InvalidRequestError, InvalidInputError, SignatureMismatchError)


@dataclass(slots=True)
class ScoredChunk:
    """The result lines of one chunk (each ending in a newline), in input order; ``errors`` holds
    failed records' lines where a protocol keeps them apart (the OpenAI Batch API's error file);
    ``busy`` is the seconds the scorer itself worked on the event loop (preparing the records,
    writing the lines), which the job runner paces."""

    start: int
    count: int
    output: bytes
    failed: int
    errors: bytes = b""
    busy: float = 0.0


async def answer_guarded(admission: Admission, request: InferenceRequest) -> Any:
    """``admission.infer(request)``; a cancelled caller (job cancelled, server stopping) calls off
    the queued request too, so it never runs."""
    try:
        return await admission.infer(request)
    except asyncio.CancelledError:
        request.cancel.abandon("the job was cancelled or the server is stopping")
        raise


async def retrying(make: Any, admission: Admission) -> Any:
    """The answer of ``make()``'s request, retried after busy, not-ready or timed-out answers."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return await answer_guarded(admission, make())
        except _TRANSIENT:
            if delay is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


class PredictScorer:
    """Scores ``RecordChunk``s of one model (see the module docstring).

    ``position`` names each result: ``("line", 1)`` gives ``"line": index + 1``, ``("index", 0)``
    the 0-based index. A record's ``id_field`` key is its id unless the model has an input of that
    name. Requests get ``timeout`` seconds each and the job's ``routing_key``.
    """

    def __init__(
        self,
        admission: Admission,
        model: str,
        *,
        version: str | None,
        signature: Signature | None,
        position: tuple[str, int] = ("line", 1),
        id_field: str | None = "id",
        timeout: float = 600.0,
        routing_key: str | None = None,
    ) -> None:
        self.admission = admission
        self.model = model
        self.version = version
        self.signature = signature
        self.input_names = [s.name for s in signature.inputs] if signature is not None else []
        self.position_key, self.position_base = position
        self.id_field = record_id_field(id_field, self.input_names)
        self.timeout = timeout
        self.routing_key = routing_key
        #: The most rows one request may carry, once the batcher said so (413).
        self.max_rows: int | None = None
        #: The versions that answered, with how many records each.
        self.versions: dict[str, int] = {}

    async def score(self, chunk: RecordChunk) -> ScoredChunk:
        """The result lines of ``chunk``."""
        began = time.perf_counter()
        prepared = prepare_chunk(chunk, self.signature, self.id_field)
        preparing = time.perf_counter() - began
        scored = await self.score_prepared(prepared)
        scored.busy += preparing
        return scored

    async def score_prepared(self, chunk: PreparedChunk) -> ScoredChunk:
        """The result lines of a chunk ``prepare_chunk`` made ready (with this scorer's ``id_field``)."""
        work = _Work(chunk)
        for offset, problem in chunk.problems.items():
            self._fail(work, offset, InvalidRequestError(problem))
        if chunk.arrays is not None:
            await self._score_arrays(work, chunk.good, chunk.arrays)
        elif chunk.records:
            await self._one_by_one(work, chunk.good, chunk.records)
        began = time.perf_counter()
        output = b"".join(line for line in work.lines if line is not None)
        busy = work.busy + time.perf_counter() - began
        return ScoredChunk(chunk.start, chunk.count, output, work.failed, busy=busy)

    async def _score_arrays(self, work: _Work, good: Sequence[int], arrays: Arrays) -> None:
        try:
            outputs = await self._infer(arrays, len(good))
        except _ABOUT_INPUTS as exc:
            if len(good) == 1:
                self._fail(work, good[0], exc)
            else:  # isolate the offending records: one request per row
                await asyncio.gather(
                    *(
                        self._score_arrays(work, [offset], {n: a[i : i + 1] for n, a in arrays.items()})
                        for i, offset in enumerate(good)
                    )
                )
            return
        except LadleError as exc:
            for offset in good:
                self._fail(work, offset, exc)
            return
        self._output_lines(work, good, outputs)

    async def _one_by_one(self, work: _Work, good: Sequence[int], records: Sequence[Any]) -> None:
        async def one(offset: int, record: Any) -> None:
            try:
                arrays = records_to_arrays([record], self.signature)
            except InvalidRequestError as exc:
                self._fail(work, offset, exc)
                return
            await self._score_arrays(work, [offset], arrays)

        await asyncio.gather(*(one(offset, record) for offset, record in zip(good, records, strict=True)))

    async def _infer(self, arrays: Arrays, rows: int) -> Arrays:
        cap = self.max_rows
        if cap is not None and rows > cap:
            parts = await asyncio.gather(
                *(
                    self._infer({n: a[s : s + cap] for n, a in arrays.items()}, min(cap, rows - s))
                    for s in range(0, rows, cap)
                )
            )
            return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

        def make() -> InferenceRequest:
            return InferenceRequest(
                self.model,
                arrays,
                version=self.version,
                deadline=time.monotonic() + self.timeout,
                priority=Priority.LOW,
                routing_key=self.routing_key,
                rows=rows,
                protocol="job",
            )

        try:
            answer = await retrying(make, self.admission)
        except PayloadTooLargeError as exc:
            limit = exc.details.get("max_rows")
            if not isinstance(limit, int) or not 0 < limit < rows:
                raise
            self.max_rows = limit
            return await self._infer(arrays, rows)
        self.versions[answer.version] = self.versions.get(answer.version, 0) + rows
        outputs: Arrays = answer.outputs
        return outputs

    def _fail(self, work: _Work, offset: int, error: LadleError) -> None:
        head: dict[str, Any] = {self.position_key: work.chunk.start + offset + self.position_base}
        if work.ids[offset] is not None:
            head["id"] = work.ids[offset]
        head["error"] = error_body(error)
        work.lines[offset] = orjson.dumps(head, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)
        work.failed += 1

    def _output_lines(self, work: _Work, good: Sequence[int], outputs: Arrays) -> None:
        began = time.perf_counter()
        columns = {
            name: array.tolist()
            if array.dtype.kind != "O"
            else [v.decode(errors="replace") if isinstance(v, bytes) else v for v in array]
            for name, array in outputs.items()
        }
        key, first, ids, lines = (
            self.position_key,
            work.chunk.start + self.position_base,
            work.ids,
            work.lines,
        )
        option = orjson.OPT_APPEND_NEWLINE
        for row, offset in enumerate(good):
            head: dict[str, Any] = {key: first + offset}
            if ids[offset] is not None:
                head["id"] = ids[offset]
            head["outputs"] = {name: column[row] for name, column in columns.items()}
            lines[offset] = orjson.dumps(head, option=option)
        work.busy += time.perf_counter() - began


class _Work:
    """One chunk being scored: its records' ids and result lines, and how many failed."""

    __slots__ = ("busy", "chunk", "failed", "ids", "lines")

    def __init__(self, chunk: PreparedChunk) -> None:
        self.chunk = chunk
        self.ids: list[Any] = chunk.ids or [None] * chunk.count
        self.lines: list[bytes | None] = [None] * chunk.count
        self.failed = 0
        self.busy = 0.0  # seconds spent writing result lines
