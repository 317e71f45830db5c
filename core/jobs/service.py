"""The jobs of one server: the store, the runner and the rules a new job or file must pass.

Off unless ``[jobs] store`` names a file (relative to ``ladle.toml``): jobs need a durable store,
and ladle writes no file a configuration did not ask for.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from ..config import JobsSection, ServerConfig
from ..errors import ClientError, InvalidRequestError, ModelNotFoundError, PayloadTooLargeError
from ..serving import ModelManager
from .files import FileRecord
from .openai_batch import ENDPOINTS, OpenAIBatches, completion_window
from .records import input_format
from .runner import JobKind, JobRunner, PredictJobs
from .store import JobRecord, JobStore, new_id

__all__ = ["JOB_PARAMS", "JobNotFoundError", "JobService", "JobsDisabledError"]

#: Keys of a job's ``params``.
JOB_PARAMS = ("version", "routing_key", "timeout_ms")
_BODY_KEYS = {"inputs", "input_file", "params", "callback_url"}
_METADATA_KEYS = 16


class JobNotFoundError(ClientError):
    """No job or file has that id."""

    status = 404
    code = "not_found"


class JobsDisabledError(ClientError):
    """The server has no job store (``[jobs] store`` is unset)."""

    status = 404
    code = "jobs_disabled"


class JobService:
    """The store, runner and creation rules of a server's jobs (``Server.jobs``)."""

    def __init__(self, config: ServerConfig, manager: ModelManager, store: JobStore) -> None:
        self.config = config
        self.settings: JobsSection = config.jobs
        self.manager = manager
        self.store = store
        kinds: dict[str, JobKind] = {
            "predict": PredictJobs(store, manager, self.settings),
            "openai": OpenAIBatches(store, manager, self.settings),
        }
        self.runner = JobRunner(store, manager, self.settings, kinds)

    @classmethod
    def open(cls, config: ServerConfig, manager: ModelManager) -> JobService | None:
        """The jobs of a server configured with ``[jobs] store`` (``None`` without one); a store
        that cannot be opened raises ``ConfigError`` before the server serves anything."""
        if config.jobs.store is None:
            return None
        path = Path(config.jobs.store)
        return cls(config, manager, JobStore.open(path if path.is_absolute() else config.base_dir / path))

    async def start(self) -> None:
        await self.runner.start()

    async def close(self) -> None:
        await self.runner.close()

    # predict jobs ------------------------------------------------------------------------------

    async def create_predict(self, model: str, body: Mapping[str, Any]) -> JobRecord:
        """Check and store a new predict job (``POST /api/v1/models/{name}/jobs``), then run it."""
        unknown = set(body) - _BODY_KEYS
        if unknown:
            raise InvalidRequestError(
                f"unknown fields {sorted(unknown)}; allowed: {', '.join(sorted(_BODY_KEYS))}",
                allowed=sorted(_BODY_KEYS),
            )
        params = self._params(body.get("params"))
        version = params.pop("version", None)
        self._check_model(model, version)
        callback = self._callback(body.get("callback_url"))
        inputs, input_file = body.get("inputs"), body.get("input_file")
        if (inputs is None) == (input_file is None):
            raise InvalidRequestError("give either 'inputs' (a list of records) or 'input_file'")
        common: dict[str, Any] = {
            "kind": "predict",
            "model": model,
            "version": version,
            "params": params,
            "chunk_size": self.settings.batch_rows,
            "callback_url": callback,
        }
        if inputs is not None:
            if not isinstance(inputs, list) or not inputs:
                raise InvalidRequestError("'inputs' must be a non-empty list of records")
            self._check_size(len(inputs))
            job = await self.runner.io(
                lambda: self.store.create_job(source="inline", records=inputs, **common)
            )
        else:
            path = self._input_file(input_file)
            job = await self.runner.io(
                lambda: self.store.create_job(
                    source="file", input_path=str(path), input_name=str(input_file), **common
                )
            )
        self.runner.submit(job.id)
        return job

    def _params(self, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping) or set(value) - set(JOB_PARAMS):
            raise InvalidRequestError(
                f"'params' must be an object with keys from {', '.join(JOB_PARAMS)} "
                "(jobs always run at low priority)",
                allowed=list(JOB_PARAMS),
            )
        params = dict(value)
        if params.get("version") is not None:
            params["version"] = str(params["version"])
        if params.get("routing_key") is not None:
            params["routing_key"] = str(params["routing_key"])
        timeout = params.get("timeout_ms")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 3_600_000
        ):
            raise InvalidRequestError(f"timeout_ms must be a number in (0, 3600000], got {timeout!r}")
        return {k: v for k, v in params.items() if v is not None}

    def _check_model(self, model: str, version: str | None) -> None:
        manager = self.manager
        if model not in manager.models:
            if manager.loading:  # it may still appear; a job for a model never served fails
                return
            manager.endpoint(model)  # raises ModelNotFoundError naming the served models
            raise ModelNotFoundError(f"model {model!r} is not served", model=model)
        if version is not None and not manager.loading:
            manager.models[model].loaded(version)

    def _check_size(self, records: int) -> None:
        limit = self.settings.max_records
        if records > limit:
            raise PayloadTooLargeError(
                f"a job holds at most {limit} records ([jobs] max_records); this one has {records}",
                max_records=limit,
            )

    def _input_file(self, name: Any) -> Path:
        """The server-side file ``name`` inside an allowed input folder (errors never show a path)."""
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("'input_file' must be a file name")
        if not self.settings.input_dirs:
            raise InvalidRequestError("this server reads no input files: [jobs] input_dirs is empty")
        input_format(Path(name))  # the format, by suffix, before any file system look-up
        for folder in self.settings.input_dirs:
            root = Path(folder)
            root = (root if root.is_absolute() else self.config.base_dir / root).resolve()
            candidate = (root / name).resolve()
            if candidate.is_relative_to(root) and candidate.is_file():
                return candidate
        raise InvalidRequestError(f"input_file {name!r} is not a file in an allowed input folder")

    def _callback(self, value: Any) -> str | None:
        if value is None:
            return None
        try:
            url = httpx.URL(value) if isinstance(value, str) else None
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise InvalidRequestError("'callback_url' must be an http or https URL", param="callback_url")
        hosts = self.settings.callback_hosts
        if url.host not in hosts and (url.port is None or f"{url.host}:{url.port}" not in hosts):
            raise InvalidRequestError(
                f"callbacks to {url.host!r} are not allowed; [jobs] callback_hosts lists the hosts that are",
                param="callback_url",
            )
        return str(url)

    # the OpenAI Batch API ----------------------------------------------------------------------

    async def upload(self, filename: str, purpose: str, content: bytes) -> FileRecord:
        """Store an uploaded batch input file."""
        if purpose != "batch":
            raise InvalidRequestError(f"purpose must be 'batch', got {purpose!r}", param="purpose")
        if len(content) > self.settings.max_file_bytes:
            raise PayloadTooLargeError(
                f"a file may hold at most {self.settings.max_file_bytes} bytes",
                limit=self.settings.max_file_bytes,
            )
        expires = time.time() + self.settings.retention
        return await self.runner.io(
            lambda: self.store.batch_files.create(
                purpose="batch", filename=filename, content=content, expires_at=expires
            )
        )

    async def create_batch(self, body: Mapping[str, Any]) -> JobRecord:
        """Check and store a new batch (``POST /v1/batches``), then run it."""
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise InvalidRequestError(
                f"endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}", param="endpoint"
            )
        window = completion_window(body.get("completion_window"))
        file_id = body.get("input_file_id")
        source = (
            await self.runner.io(self.store.batch_files.get, str(file_id))
            if isinstance(file_id, str)
            else None
        )
        if source is None or source.purpose != "batch":
            raise JobNotFoundError(f"no batch input file {file_id!r}", param="input_file_id")
        metadata = body.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, dict)
            or len(metadata) > _METADATA_KEYS
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            raise InvalidRequestError(
                f"metadata must map at most {_METADATA_KEYS} strings to strings", param="metadata"
            )
        params = {
            "endpoint": endpoint,
            "input_file_id": file_id,
            "completion_window": body["completion_window"],
            "deadline_at": time.time() + window,
            "metadata": metadata,
        }
        job = await self.runner.io(
            lambda: self.store.create_job(
                kind="openai",
                model=None,
                version=None,
                params=params,
                source="upload",
                input_name=file_id,
                chunk_size=self.settings.batch_rows,
                job_id=new_id("batch_"),
            )
        )
        self.runner.submit(job.id)
        return job
