"""The job runner: drains the job store through the admission pipeline as low-priority work.

Every active job gets a task that reads its inputs (once, from its input file, into the store:
parsed by a reader process of its own at idle scheduling priority and paced while online requests
arrive, so reading a large file takes neither the GIL nor the CPU they need; see
``ladle.jobs.intake``), then scores its chunks in order through the admission
pipeline (``protocol="job"``, ``Priority.LOW``) and stores each chunk's results as it completes.
All jobs together keep at most ``[jobs] concurrency`` requests in flight, so batch work fills the
capacity online traffic leaves and the batchers serve online requests first. The runner's own work
per chunk (store reads and writes, preparing records, writing result lines) is paced too: while
online requests arrive it takes at most ``[jobs] work_share`` of the server's time (``WorkPacer``),
as the batchers keep the jobs' batches to their ``background_share`` of an instance. A starting server
resumes its queued and running jobs at the chunks that have no results yet; a stopping one calls
off what is in flight and stores nothing for it, so those chunks run again after the restart.

What a job does per kind (``predict`` records, ``openai`` batch lines) is a ``JobKind``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

import httpx
import orjson

from ..batching import Foreground
from ..config import JobsSection
from ..errors import InvalidRequestError, LadleError
from ..executors import DedicatedThread
from ..serving import ModelManager
from .child import ChildIterator
from .intake import PUBLISH_INTERVAL, InputReader, SharedClock, record_chunks, store_inputs
from .records import RecordChunk, error_body
from .scoring import PredictScorer, ScoredChunk
from .store import JobRecord, JobStore

__all__ = ["JobExpiredError", "JobKind", "JobRunner", "PredictJobs", "Scorer", "WorkPacer"]

logger = logging.getLogger("ladle.jobs")

_T = TypeVar("_T")
#: Scores one chunk.
Scorer = Callable[[RecordChunk], Awaitable[ScoredChunk]]
_CALLBACK_DELAYS = (1.0, 4.0, None)


class JobExpiredError(LadleError):
    """A job's completion window passed: it stops, keeping what was answered."""

    code = "expired"


class JobKind(Protocol):
    """What a kind of job does; ``reader`` and ``finished`` run in the store's thread."""

    #: Chunks of one job in flight at once.
    window: int

    def reader(self, job: JobRecord) -> InputReader | None:
        """How the job's input is read into the store (``None``: its records came with it). Raises a
        ``LadleError`` when it cannot be read at all; the reader raises one (the job then fails with
        it) when the input as a whole is unusable."""

    def scorer(self, job: JobRecord, slots: asyncio.Semaphore) -> Scorer:
        """How the job's chunks are scored, holding a slot of ``slots`` per request in flight."""

    def finished(self, job: JobRecord) -> None:
        """After the job succeeded, failed or was cancelled (e.g. write its output files)."""


class PredictJobs:
    """Jobs of predict records (``POST /api/v1/models/{name}/jobs``)."""

    def __init__(self, store: JobStore, manager: ModelManager, settings: JobsSection) -> None:
        self.store = store
        self.manager = manager
        self.settings = settings
        self.window = max(2, settings.concurrency)

    def _signature(self, job: JobRecord) -> Any:
        assert job.model is not None
        endpoint = self.manager.endpoint(job.model)
        version = endpoint.loaded(job.version) if job.version is not None else endpoint.latest()
        return version.signature if version is not None else None

    def reader(self, job: JobRecord) -> InputReader | None:
        path = self.store.input_path(job.id)
        if path is None:  # inline records are stored with the job
            return None
        signature = self._signature(job)
        names = [s.name for s in signature.inputs] if signature is not None else []
        return record_chunks, (path, job.input_name, job.chunk_size, names, self.settings.max_records)

    def scorer(self, job: JobRecord, slots: asyncio.Semaphore) -> Scorer:
        assert job.model is not None
        inline = self.store.input_path(job.id) is None
        timeout = job.params.get("timeout_ms")
        scorer = PredictScorer(
            self.manager.admission,
            job.model,
            version=job.version,
            signature=self._signature(job),
            position=("index", 0) if inline else ("line", 1),
            timeout=float(timeout) / 1000 if timeout else self.settings.request_timeout,
            routing_key=job.params.get("routing_key"),
        )

        async def score(chunk: RecordChunk) -> ScoredChunk:
            async with slots:
                return await scorer.score(chunk)

        return score

    def finished(self, job: JobRecord) -> None:
        return None


def _timed(function: Callable[..., _T], *args: Any) -> tuple[_T, float]:
    """``function(*args)`` and the seconds it took."""
    began = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - began


class WorkPacer:
    """Keeps work to ``share`` of the time while online work runs: after work that took ``t``
    seconds while ``foreground`` was recent, the next work waits until ``t * (1 / share - 1)`` has
    passed, or until online work is no longer recent; with no online work nothing waits. One
    pacer serves every job of a server, so all of them together keep to the share."""

    def __init__(self, foreground: Foreground, share: float) -> None:
        self._foreground = foreground
        self._pause = 1.0 / share - 1.0
        self._resume_at = -math.inf

    def spent(self, seconds: float) -> None:
        """Count ``seconds`` of work just done."""
        now = time.monotonic()
        if self._pause and self._foreground.recent(now):
            self._resume_at = max(self._resume_at, now) + seconds * self._pause

    async def wait(self) -> None:
        """Return once the next work may start."""
        while True:
            now = time.monotonic()
            if now >= self._resume_at or not self._foreground.recent(now):
                return
            await asyncio.sleep(min(self._resume_at - now, Foreground.window))


class JobRunner:
    """Runs the jobs of one server (see the module docstring)."""

    def __init__(
        self, store: JobStore, manager: ModelManager, settings: JobsSection, kinds: dict[str, JobKind]
    ) -> None:
        self.store = store
        self.manager = manager
        self.settings = settings
        self.kinds = kinds
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._io = DedicatedThread("ladle-jobs")
        self._pacer = WorkPacer(manager.foreground, settings.work_share)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    async def io(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run a store call in the store's own thread (SQLite waits never block the event loop)."""
        return await self._io.call(function, *args)

    # lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume the queued and running jobs, deliver callbacks left pending, start the sweeper."""
        for job in await self.io(self.store.active_jobs):
            self.submit(job.id)
        for job in await self.io(self.store.pending_callbacks):
            self._spawn(self._notify(job))
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        """Call off every job task (their jobs stay active and resume at the next start)."""
        self._closed = True
        tasks = [*self._tasks.values(), *self._background]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._io.close(wait=True)
        self.store.close()

    def submit(self, job_id: str) -> None:
        """Start (or resume) running a stored job."""
        if self._closed or job_id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._run(job_id), name=f"ladle-job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel an active job: nothing more of it is scored; what was scored is kept."""
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        job = await self.io(self._finish, job_id, "cancelled", None)
        if job is not None and job.status == "cancelled":
            self._after(job)
        return job

    # running a job -----------------------------------------------------------------------------

    def _finish(self, job_id: str, status: str, error: dict[str, Any] | None) -> JobRecord | None:
        job = self.store.finish(job_id, status, retention=self.settings.retention, error=error)
        if job is not None and job.status == status:
            kind = self.kinds.get(job.kind)
            if kind is not None:
                kind.finished(job)
        return job

    async def _models_loaded(self) -> None:
        while self.manager.loading:
            await asyncio.sleep(0.05)

    async def _run(self, job_id: str) -> None:
        job = await self.io(self.store.job, job_id)
        if job is None or job.finished:
            return
        status, error = "succeeded", None
        try:
            await self._models_loaded()
            kind = self.kinds.get(job.kind)
            if kind is None:
                raise InvalidRequestError(f"this server runs no {job.kind!r} jobs")
            if job.total is None:
                await self._read_inputs(job, kind)
            running = await self.io(self.store.mark_running, job_id)
            if running is None or running.finished:
                return
            await self._chunks(running, kind)
        except asyncio.CancelledError:
            raise
        except JobExpiredError as exc:
            status, error = "cancelled", error_body(exc)
        except LadleError as exc:
            status, error = "failed", error_body(exc)
        except Exception as exc:  # a bug: the job fails with it, the server goes on
            logger.exception("job %s failed", job_id)
            status, error = (
                "failed",
                {"message": f"internal error: {type(exc).__name__}", "code": "internal_error"},
            )
        finished = await self.io(self._finish, job_id, status, error)
        if finished is not None and finished.status == status:
            self._after(finished)

    async def _read_inputs(self, job: JobRecord, kind: JobKind) -> None:
        """Read the job's input into the store with ``kind``'s reader, in a reader process that
        writes the store itself (``store_inputs``): the serving process only waits for it."""
        source = await self.io(kind.reader, job)
        if source is None:
            return
        function, args = source
        foreground = multiprocessing.get_context("spawn").RawValue("d", -math.inf)
        reader: ChildIterator[int] = ChildIterator(
            store_inputs,
            str(self.store.path),
            job.id,
            function,
            args,
            foreground,
            name="ladle-job-reader",
            idle=True,
        )
        publisher = asyncio.get_running_loop().create_task(self._publish(foreground))
        try:
            reader.begin()
            async for _ in reader:
                pass
        finally:
            publisher.cancel()
            reader.close()

    async def _publish(self, foreground: SharedClock) -> None:
        """Keep a reader's copy of when online work last ran up to date."""
        clock = self.manager.foreground
        while True:
            foreground.value = clock.at
            await asyncio.sleep(PUBLISH_INTERVAL)

    async def _chunks(self, job: JobRecord, kind: JobKind) -> None:
        assert job.total is not None
        scorer = kind.scorer(job, self._slots)
        scored = await self.io(self.store.scored_starts, job.id)
        pending: set[asyncio.Task[None]] = set()

        async def run(chunk: RecordChunk, read: float) -> None:
            result = await scorer(chunk)
            _, saved = await self.io(
                _timed,
                self.store.save_result,
                job.id,
                result.start,
                result.count,
                result.failed,
                result.output,
                result.errors,
            )
            self._pacer.spent(read + result.busy + saved)

        try:
            deadline = job.params.get("deadline_at")
            for start in range(0, job.total, job.chunk_size):
                if start in scored:
                    continue
                if deadline is not None and time.time() > deadline:
                    raise JobExpiredError(f"job {job.id} did not finish within its completion window")
                while len(pending) >= kind.window:
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    pending -= done
                    for task in done:
                        task.result()  # a failure fails the job
                await self._pacer.wait()
                (records, errors), read = await self.io(_timed, self.store.input_chunk, job.id, start)
                count = min(job.chunk_size, job.total - start)
                if len(records) != count:
                    raise InvalidRequestError(f"job {job.id}: the inputs of records from {start} are missing")
                chunk = RecordChunk(start, count, records, errors)
                pending.add(asyncio.get_running_loop().create_task(run(chunk, read)))
            if pending:
                await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    # after a job -------------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _after(self, job: JobRecord) -> None:
        if job.callback_url and job.callback_state == "pending" and not self._closed:
            self._spawn(self._notify(job))

    async def _notify(self, job: JobRecord) -> None:
        """POST the finished job to its callback URL (a few tries; redirects are not followed)."""
        assert job.callback_url is not None
        body = orjson.dumps(job.describe())
        state = "failed"
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
            for delay in _CALLBACK_DELAYS:
                try:
                    response = await client.post(
                        job.callback_url, content=body, headers={"content-type": "application/json"}
                    )
                    if response.is_success:
                        state = "sent"
                        break
                    logger.warning("callback of job %s answered %d", job.id, response.status_code)
                except httpx.HTTPError as exc:
                    logger.warning("callback of job %s failed: %s", job.id, exc)
                if delay is not None:
                    await asyncio.sleep(delay)
        await self.io(self.store.set_callback_state, job.id, state)

    async def _sweep(self) -> None:
        """Delete expired jobs and files now and then."""
        interval = min(self.settings.retention / 4, 600.0)
        while True:
            try:
                await self.io(self.store.delete_expired, time.time())
            except Exception:  # a locked or full disk must not stop the runner
                logger.exception("deleting expired jobs failed")
            await asyncio.sleep(interval)
