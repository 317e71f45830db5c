"""HTTP routes of jobs and of the OpenAI Batch API.

=======  ================================  ===================================================
method   path                              does
=======  ================================  ===================================================
POST     /api/v1/models/{name}/jobs        ``{"inputs": [records], "params": {...}}`` or
                                           ``{"input_file": "name.jsonl"}``, optional
                                           ``"callback_url"``: 202, the job, ``Location``
GET      /api/v1/jobs                      jobs, newest first (``?status=``, ``limit``, ``after``)
GET      /api/v1/jobs/{id}                 status and progress
GET      /api/v1/jobs/{id}/results         results in input order: JSON, or JSON Lines
                                           (``?format=jsonl``; the default past 10,000 records)
DELETE   /api/v1/jobs/{id}                 cancel (what was scored stays readable)
POST     /v1/files                         upload a batch input file (multipart, purpose batch)
GET      /v1/files, /v1/files/{id}         list, retrieve; ``/v1/files/{id}/content`` the bytes
DELETE   /v1/files/{id}                    delete
POST     /v1/batches                       ``{"input_file_id", "endpoint", "completion_window"}``
GET      /v1/batches, /v1/batches/{id}     list, retrieve; ``POST /v1/batches/{id}/cancel``
=======  ================================  ===================================================

With a token configured (``[server] api_token`` or ``LADLE_API_TOKEN``) every route needs it as
``Authorization: Bearer <token>`` (the OpenAI client sends its ``api_key`` so). Unknown ids are
404. Errors are ladle's JSON bodies, OpenAI's shape on the ``/v1`` routes. Without ``[jobs] store``
every route answers 404 saying how to turn jobs on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..config import ServerConfig
from ..deployments.auth import BearerAuth, configured_tokens
from ..errors import ClientError, InvalidRequestError, LadleError, PayloadTooLargeError
from ..http.generation_api import openai_error_body
from ..http.responses import (
    error_headers,
    error_response,
    json_response,
    log_server_error,
    read_json_object,
)
from .openai_batch import batch_object
from .service import JobNotFoundError, JobsDisabledError, JobService
from .store import STATUSES, JobRecord

__all__ = ["job_routes"]

Handler = Callable[[Request], Awaitable[Response]]
_JSONL = "application/x-ndjson"
_JSON_RESULTS_LIMIT = 10_000  # records past which results stream as JSON Lines by default


def _limit(request: Request, default: int = 20, most: int = 100) -> int:
    text = request.query_params.get("limit", str(default))
    if not text.isdigit() or not 0 < int(text) <= most:
        raise InvalidRequestError(f"limit must be an integer from 1 to {most}", param="limit")
    return int(text)


async def _stream(service: JobService, pieces: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A store generator read in the store's thread, piece by piece."""
    done = object()
    while True:
        piece = await service.runner.io(next, pieces, done)
        if piece is done:
            return
        assert isinstance(piece, bytes)
        yield piece


def job_routes(service: JobService | None, config: ServerConfig) -> list[Route]:
    """The routes above; ``service`` is ``None`` on a server without ``[jobs] store``."""
    auth = BearerAuth(configured_tokens(config), rate=None)
    limit = config.server.max_request_bytes

    def guarded(
        handler: Callable[[Request, JobService], Awaitable[Response]], *, openai: bool = False
    ) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                auth.check(request.headers.get("authorization"), required=auth.enabled)
                if service is None:
                    raise JobsDisabledError("jobs are off on this server: set [jobs] store in ladle.toml")
                return await handler(request, service)
            except LadleError as exc:
                if not openai:
                    return error_response(exc, request=request)
                log_server_error(exc, f"{request.method} {request.url.path}")
                return json_response(openai_error_body(exc), exc.status, error_headers(exc))

        return endpoint

    async def job_of(service: JobService, job_id: str, kind: str | None = None) -> JobRecord:
        job = await service.runner.io(service.store.job, job_id)
        if job is None or (kind is not None and job.kind != kind):
            raise JobNotFoundError(f"no job {job_id!r}", id=job_id)
        return job

    # jobs ------------------------------------------------------------------------------------

    async def create(request: Request, service: JobService) -> Response:
        body = await read_json_object(request, limit)
        job = await service.create_predict(request.path_params["name"], body)
        return json_response(job.describe(), 202, {"Location": f"/api/v1/jobs/{job.id}"})

    async def list_jobs(request: Request, service: JobService) -> Response:
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            raise InvalidRequestError(f"status must be one of {', '.join(STATUSES)}", param="status")
        count = _limit(request)
        jobs = await service.runner.io(
            lambda: service.store.jobs(
                status=status, limit=count + 1, after=request.query_params.get("after")
            )
        )
        return json_response(
            {"object": "list", "data": [j.describe() for j in jobs[:count]], "has_more": len(jobs) > count}
        )

    async def get_job(request: Request, service: JobService) -> Response:
        return json_response((await job_of(service, request.path_params["id"])).describe())

    async def results(request: Request, service: JobService) -> Response:
        job = await job_of(service, request.path_params["id"])
        if not job.finished:
            raise _NotFinished(
                f"job {job.id} is {job.status}: its results are ready once it finished", status=job.status
            )
        wanted = request.query_params.get("format")
        if wanted is None:
            accept = request.headers.get("accept", "")
            wanted = (
                "jsonl"
                if "ndjson" in accept or "jsonl" in accept or (job.total or 0) > _JSON_RESULTS_LIMIT
                else "json"
            )
        if wanted not in ("json", "jsonl"):
            raise InvalidRequestError("format must be json or jsonl", param="format")
        pieces = service.store.results(job.id)
        if wanted == "jsonl":
            return StreamingResponse(_stream(service, pieces), media_type=_JSONL)
        lines = b"".join([piece async for piece in _stream(service, pieces)])
        head = orjson.dumps({"id": job.id, "status": job.status})[:-1]
        body = head + b',"results":[' + lines.rstrip(b"\n").replace(b"\n", b",") + b"]}"
        return Response(body, 200, media_type="application/json")

    async def cancel(request: Request, service: JobService) -> Response:
        job = await job_of(service, request.path_params["id"])
        if job.status in ("succeeded", "failed"):
            raise _NotFinished(f"job {job.id} already {job.status}", status=job.status)
        cancelled = await service.runner.cancel(job.id)
        assert cancelled is not None
        return json_response(cancelled.describe())

    # the OpenAI Batch API ----------------------------------------------------------------------

    async def batch(service: JobService, job: JobRecord) -> dict[str, Any]:
        return batch_object(job, await service.runner.io(service.store.batch_files.job_files, job.id))

    async def upload(request: Request, service: JobService) -> Response:
        most = service.settings.max_file_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > most + 64 * 1024:
            raise PayloadTooLargeError(f"a file may hold at most {most} bytes", limit=most)
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as exc:  # malformed multipart bodies raise several types
            raise InvalidRequestError(f"the upload must be multipart/form-data with a file: {exc}") from None
        try:
            file, purpose = form.get("file"), form.get("purpose")
            if file is None or isinstance(file, str):
                raise InvalidRequestError("the upload needs a 'file' part", param="file")
            content = await file.read(most + 1)
            record = await service.upload(file.filename or "upload.jsonl", str(purpose or ""), content)
        finally:
            await form.close()
        return json_response(record.describe())

    async def list_files(request: Request, service: JobService) -> Response:
        count = _limit(request, 100, 10_000)
        purpose = request.query_params.get("purpose")
        after = request.query_params.get("after")
        files = await service.runner.io(
            lambda: service.store.batch_files.list(purpose=purpose, limit=count + 1, after=after)
        )
        return json_response(_page([f.describe() for f in files], count))

    async def file_of(service: JobService, file_id: str) -> Any:
        record = await service.runner.io(service.store.batch_files.get, file_id)
        if record is None:
            raise JobNotFoundError(f"no file {file_id!r}", param="file_id")
        return record

    async def get_file(request: Request, service: JobService) -> Response:
        return json_response((await file_of(service, request.path_params["id"])).describe())

    async def file_content(request: Request, service: JobService) -> Response:
        record = await file_of(service, request.path_params["id"])
        return StreamingResponse(
            _stream(service, service.store.batch_files.content(record)), media_type=_JSONL
        )

    async def delete_file(request: Request, service: JobService) -> Response:
        record = await file_of(service, request.path_params["id"])
        await service.runner.io(service.store.batch_files.delete, record.id)
        return json_response({"id": record.id, "object": "file", "deleted": True})

    async def create_batch(request: Request, service: JobService) -> Response:
        job = await service.create_batch(await read_json_object(request, 1024 * 1024))
        return json_response(await batch(service, job))

    async def list_batches(request: Request, service: JobService) -> Response:
        count = _limit(request)
        after = request.query_params.get("after")
        jobs = await service.runner.io(
            lambda: service.store.jobs(kind="openai", limit=count + 1, after=after)
        )
        return json_response(_page([await batch(service, job) for job in jobs], count))

    async def get_batch(request: Request, service: JobService) -> Response:
        return json_response(await batch(service, await job_of(service, request.path_params["id"], "openai")))

    async def cancel_batch(request: Request, service: JobService) -> Response:
        job = await job_of(service, request.path_params["id"], "openai")
        if job.status in ("succeeded", "failed"):
            raise _NotFinished(f"batch {job.id} already {batch_object(job, {})['status']}", param="batch_id")
        cancelled = await service.runner.cancel(job.id)
        assert cancelled is not None
        return json_response(await batch(service, cancelled))

    return [
        Route("/api/v1/models/{name}/jobs", guarded(create), methods=["POST"]),
        Route("/api/v1/jobs", guarded(list_jobs), methods=["GET"]),
        Route("/api/v1/jobs/{id}", guarded(get_job), methods=["GET"]),
        Route("/api/v1/jobs/{id}", guarded(cancel), methods=["DELETE"]),
        Route("/api/v1/jobs/{id}/results", guarded(results), methods=["GET"]),
        Route("/v1/files", guarded(upload, openai=True), methods=["POST"]),
        Route("/v1/files", guarded(list_files, openai=True), methods=["GET"]),
        Route("/v1/files/{id}", guarded(get_file, openai=True), methods=["GET"]),
        Route("/v1/files/{id}", guarded(delete_file, openai=True), methods=["DELETE"]),
        Route("/v1/files/{id}/content", guarded(file_content, openai=True), methods=["GET"]),
        Route("/v1/batches", guarded(create_batch, openai=True), methods=["POST"]),
        Route("/v1/batches", guarded(list_batches, openai=True), methods=["GET"]),
        Route("/v1/batches/{id}", guarded(get_batch, openai=True), methods=["GET"]),
        Route("/v1/batches/{id}/cancel", guarded(cancel_batch, openai=True), methods=["POST"]),
    ]


class _NotFinished(ClientError):
    status = 409
    code = "conflict"


def _page(data: list[dict[str, Any]], count: int) -> dict[str, Any]:
    shown = data[:count]
    return {
        "object": "list",
        "data": shown,
        "first_id": shown[0]["id"] if shown else None,
        "last_id": shown[-1]["id"] if shown else None,
        "has_more": len(data) > count,
    }
