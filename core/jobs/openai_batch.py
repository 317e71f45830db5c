"""The OpenAI Batch API over the job store: ``/v1/files`` and ``/v1/batches``.

A batch is a job of kind ``openai``. Its input file (uploaded with purpose ``batch``) holds one
request per line::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}}

Validation reads the whole file first: a line that is not a JSON object, lacks a unique
``custom_id``, or names another method or endpoint than the batch fails the batch (its ``errors``
name the lines). Each body is then parsed exactly as the online endpoint parses it
(``ladle.http.generation_api.openai_payload``) and answered through the admission pipeline at low
priority; a body the model refuses fails that request alone. The output file holds one line per
answered request, the error file one per failed request, both keyed by ``custom_id``::

    {"id": "batch_req_…", "custom_id": "r1", "error": null,
     "response": {"status_code": 200, "request_id": "…", "body": {…the chat.completion…}}}

Statuses are OpenAI's: ``validating`` (queued, file not read yet), ``in_progress``, ``completed``,
``failed`` (the file did not validate, or the batch could not run), ``expired`` (the completion
window passed; what was answered is in the output file), ``cancelled``.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ..config import JobsSection
from ..envelope import InferenceRequest, Priority
from ..errors import InvalidRequestError, LadleError
from ..http.generation_api import openai_error_body, openai_payload, openai_response
from ..serving import ModelManager
from .files import FileRecord
from .intake import CHUNKS_PER_WRITE, InputReader
from .records import RecordChunk, parse_line
from .runner import Scorer
from .scoring import ScoredChunk, retrying
from .store import JobRecord, JobStore, StoredChunk, new_id

__all__ = ["ENDPOINTS", "BatchFileError", "OpenAIBatches", "batch_object", "completion_window"]

#: Batch endpoint -> the object kind of its answers.
ENDPOINTS = {"/v1/completions": "text_completion", "/v1/chat/completions": "chat.completion"}
_WINDOW = re.compile(r"^([1-9][0-9]{0,3})([hm])$")
_REPORTED_LINES = 100  # validation errors named per batch


class BatchFileError(InvalidRequestError):
    """The batch input file does not validate; ``errors`` names each bad line."""

    code = "invalid_batch_file"


def completion_window(value: Any) -> float:
    """Seconds of a completion window such as ``"24h"`` (OpenAI's only value) or ``"30m"``."""
    found = _WINDOW.match(value) if isinstance(value, str) else None
    if found is None:
        raise InvalidRequestError(
            f"completion_window must be like '24h' or '90m', got {value!r}", param="completion_window"
        )
    return int(found[1]) * (3600.0 if found[2] == "h" else 60.0)


class OpenAIBatches:
    """The ``openai`` job kind: validate and store the lines, answer each, write output files."""

    window = 2

    def __init__(self, store: JobStore, manager: ModelManager, settings: JobsSection) -> None:
        self.store = store
        self.manager = manager
        self.settings = settings

    def reader(self, job: JobRecord) -> InputReader:
        file_id = str(job.params.get("input_file_id"))  # (``batch_chunks`` says if it was deleted)
        args = (
            str(self.store.path),
            file_id,
            job.params["endpoint"],
            self.settings.max_records,
            job.chunk_size,
        )
        return batch_chunks, args

    def scorer(self, job: JobRecord, slots: asyncio.Semaphore) -> Scorer:
        endpoint = job.params["endpoint"]
        kind = ENDPOINTS[endpoint]
        admission = self.manager.admission
        timeout = self.settings.request_timeout
        prefix = "chatcmpl-" if kind == "chat.completion" else "cmpl-"

        async def answer(entry: dict[str, Any]) -> tuple[bool, bytes]:
            request_id = new_id(prefix)
            try:
                body = entry["body"]
                if body.get("stream"):
                    raise InvalidRequestError("a batch request cannot stream", param="stream")
                model = body.get("model")
                if not isinstance(model, str) or not model:
                    raise InvalidRequestError("'model' must name a served model", param="model")
                payload = openai_payload(endpoint, body)
                user = body.get("user")

                def make() -> InferenceRequest:
                    return InferenceRequest(
                        model,
                        {},
                        id=request_id,
                        generation=payload,
                        deadline=time.monotonic() + timeout,
                        priority=Priority.LOW,
                        routing_key=user if isinstance(user, str) and user else None,
                        protocol="job",
                    )

                async with slots:
                    result = await retrying(make, admission)
                assert result.generation is not None
                data = openai_response(request_id, kind, int(time.time()), result.model, result.generation)
                status, ok = 200, True
            except LadleError as exc:
                data, status, ok = openai_error_body(exc), exc.status, False
            line = {
                "id": new_id("batch_req_"),
                "custom_id": entry["custom_id"],
                "response": {"status_code": status, "request_id": request_id, "body": data},
                "error": None,
            }
            return ok, orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)

        async def score(chunk: RecordChunk) -> ScoredChunk:
            answers = await asyncio.gather(*(answer(entry) for entry in chunk.records))
            output = b"".join(line for ok, line in answers if ok)
            errors = b"".join(line for ok, line in answers if not ok)
            failed = sum(not ok for ok, _ in answers)
            return ScoredChunk(chunk.start, chunk.count, output, failed, errors)

        return score

    def finished(self, job: JobRecord) -> None:
        """The output and error files of what was answered (also of a cancelled or expired batch)."""
        for part, purpose in (("output", "batch_output"), ("error", "batch_output")):
            size = self.store.result_bytes(job.id, errors=part == "error")
            if size:
                self.store.batch_files.create(
                    purpose=purpose,
                    filename=f"{job.id}_{part}.jsonl",
                    content=None,
                    size=size,
                    job_id=job.id,
                    part=part,
                    expires_at=job.expires_at,
                )


def batch_chunks(
    store_path: str, file_id: str, endpoint: str, max_records: int, chunk_size: int
) -> Iterator[list[StoredChunk]]:
    """The lines of a batch input file (in the job store at ``store_path``), validated as a whole,
    as stored chunks of ``chunk_size``; ``BatchFileError`` names the bad lines."""
    store = JobStore(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True), Path(store_path))
    try:
        source = store.batch_files.get(file_id)
        if source is None:
            raise InvalidRequestError("the batch's input file was deleted before the batch ran")
        lines = _valid_lines(store.batch_files.content(source), endpoint, max_records)
    finally:
        store.close()
    chunks: list[StoredChunk] = [
        (start, len(part), orjson.dumps(part), {})
        for start in range(0, len(lines), chunk_size)
        if (part := lines[start : start + chunk_size])
    ]
    for first in range(0, len(chunks), CHUNKS_PER_WRITE):
        yield chunks[first : first + CHUNKS_PER_WRITE]


def _valid_lines(content: Iterator[bytes], endpoint: str, max_records: int) -> list[Any]:
    lines: list[Any] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, line in enumerate(_lines(content), 1):
        if number > max_records:
            problems.append(_problem("too_many_requests", number, f"more than {max_records} requests"))
            break
        entry, why = parse_line(line)
        if why is None:
            why = _line_problem(entry, endpoint, seen)
        if why is not None:
            if len(problems) < _REPORTED_LINES:
                problems.append(_problem("invalid_request", number, why))
            continue
        lines.append({"custom_id": entry["custom_id"], "body": entry["body"]})
    if not lines and not problems:
        problems.append(_problem("empty_file", None, "the input file holds no requests"))
    if problems:
        first = problems[0]
        where = f"line {first['line']}: " if first["line"] else ""
        raise BatchFileError(
            f"the batch input file does not validate: {where}{first['message']}", errors=problems
        )
    return lines


def _lines(pieces: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for piece in pieces:
        rest += piece
        *complete, rest = rest.split(b"\n")
        yield from complete
    if rest.strip():
        yield rest


def _problem(code: str, line: int | None, message: str) -> dict[str, Any]:
    return {"code": code, "line": line, "message": message, "param": None}


def _line_problem(entry: dict[str, Any], endpoint: str, seen: set[str]) -> str | None:
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "'custom_id' must be a non-empty string"
    if custom_id in seen:
        return f"custom_id {custom_id!r} is used twice"
    seen.add(custom_id)
    if entry.get("method", "POST") != "POST":
        return "'method' must be POST"
    if entry.get("url") != endpoint:
        return f"'url' must be the batch's endpoint {endpoint}, got {entry.get('url')!r}"
    if not isinstance(entry.get("body"), dict):
        return "'body' must be a JSON object"
    return None


_STATUS = {"succeeded": "completed", "failed": "failed", "cancelled": "cancelled"}


def batch_object(job: JobRecord, files: dict[str, FileRecord]) -> dict[str, Any]:
    """The OpenAI ``batch`` object of a job."""
    params = job.params
    error = job.error or {}
    if job.status == "queued":
        status = "in_progress" if job.total is not None else "validating"
    elif job.status == "running":
        status = "in_progress"
    elif job.status == "cancelled" and error.get("code") == "expired":
        status = "expired"
    else:
        status = _STATUS[job.status]
    problems = error.get("errors") if job.status == "failed" else None
    if job.status == "failed" and not problems:
        problems = [{"code": error.get("code"), "line": None, "message": error.get("message"), "param": None}]
    stamp = int(job.finished_at) if job.finished_at is not None else None
    return {
        "id": job.id,
        "object": "batch",
        "endpoint": params.get("endpoint"),
        "errors": {"object": "list", "data": problems} if problems else None,
        "input_file_id": params.get("input_file_id"),
        "completion_window": params.get("completion_window"),
        "status": status,
        "output_file_id": files["output"].id if "output" in files else None,
        "error_file_id": files["error"].id if "error" in files else None,
        "created_at": int(job.created_at),
        "in_progress_at": int(job.started_at) if job.started_at is not None else None,
        "expires_at": int(params["deadline_at"]) if "deadline_at" in params else None,
        "finalizing_at": stamp if status == "completed" else None,
        "completed_at": stamp if status == "completed" else None,
        "failed_at": stamp if status == "failed" else None,
        "expired_at": stamp if status == "expired" else None,
        "cancelling_at": stamp if status == "cancelled" else None,
        "cancelled_at": stamp if status == "cancelled" else None,
        "request_counts": {
            "total": job.total or 0,
            "completed": job.done - job.failed,
            "failed": job.failed,
        },
        "metadata": params.get("metadata"),
    }
