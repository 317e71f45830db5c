"""The job store: an SQLite file of its own (``[jobs] store``) holding jobs, their inputs, their
results and the files of the OpenAI Batch API.

Tables: ``jobs`` (one row per job: model, parameters, status, progress counters, error, times),
``job_inputs`` (a job's records in chunks of its ``chunk_size``, keyed by the index of the chunk's
first record), ``job_results`` (the result lines of each scored chunk, keyed the same way),
``files`` (uploaded batch input files, and the output and error files of finished batches, whose
content is read from ``job_results``) and ``meta``. The schema version lives in
``PRAGMA user_version`` and migrations run in order at open.

Durability: the file runs in WAL mode; every change is one transaction. A chunk's results and the
job's counters are written together, and a chunk already written is never written again (its
primary key), so a server killed at any point resumes each job at the chunks that have no results
yet: no record is lost and none is answered twice. ``synchronous=NORMAL`` keeps every commit
through a crash of the process; after a power loss the last commits may be scored again.

A file that is not an SQLite database, fails its integrity check, was written by a newer ladle or
cannot be written raises ``ConfigError`` at open.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..sqlite_file import open_sqlite

__all__ = [
    "FINISHED",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STATUSES",
    "JobRecord",
    "JobStore",
    "StoredChunk",
]

#: Consecutive records of a job as stored: ``(start, count, JSON array of the records, why
#: records are malformed by their offset)``.
StoredChunk = tuple[int, int, bytes, dict[int, str]]

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        model TEXT,
        version TEXT,
        params TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL,
        source TEXT NOT NULL,
        input_path TEXT,
        input_name TEXT,
        chunk_size INTEGER NOT NULL CHECK (chunk_size > 0),
        total INTEGER,
        done INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        callback_url TEXT,
        callback_state TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        expires_at REAL
    );
    CREATE INDEX jobs_by_status ON jobs (status, created_at);
    CREATE INDEX jobs_by_kind ON jobs (kind, created_at);
    CREATE TABLE job_inputs (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        start INTEGER NOT NULL,
        records BLOB NOT NULL,
        errors TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (job_id, start)
    ) WITHOUT ROWID;
    CREATE TABLE job_results (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        start INTEGER NOT NULL,
        count INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        output BLOB NOT NULL,
        errors BLOB NOT NULL DEFAULT x'',
        PRIMARY KEY (job_id, start)
    ) WITHOUT ROWID;
    CREATE TABLE files (
        id TEXT PRIMARY KEY,
        purpose TEXT NOT NULL,
        filename TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        job_id TEXT REFERENCES jobs(id) ON DELETE CASCADE,
        part TEXT,
        content BLOB
    );
    CREATE INDEX files_by_purpose ON files (purpose, created_at);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
)

#: The schema version this ladle writes.
SCHEMA_VERSION = len(MIGRATIONS)
#: Every job status, and the ones a job never leaves.
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = frozenset(("succeeded", "failed", "cancelled"))
_JOB_COLUMNS = (
    "id, kind, model, version, params, status, source, input_name, chunk_size, total, done, failed, "
    "error, callback_url, callback_state, created_at, started_at, finished_at, expires_at"
)
_PAGE = 256  # result chunks read per query while streaming


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def new_id(prefix: str) -> str:
    """A random, unguessable object id: ``job-…``, ``batch_…``, ``file-…``."""
    return f"{prefix}{secrets.token_hex(12)}"


@dataclass(frozen=True)
class JobRecord:
    """One job as stored. ``kind`` is ``predict`` or ``openai``; ``source`` is ``inline`` (records
    in the request), ``file`` (a server-side input file) or ``upload`` (an uploaded batch file)."""

    id: str
    kind: str
    model: str | None
    version: str | None
    params: dict[str, Any]
    status: str
    source: str
    input_name: str | None
    chunk_size: int
    total: int | None
    done: int
    failed: int
    error: dict[str, Any] | None
    callback_url: str | None
    callback_state: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def describe(self) -> dict[str, Any]:
        """The job as the HTTP API shows it (never a server path)."""
        total = self.total
        return {
            "id": self.id,
            "object": "job",
            "model": self.model,
            "version": self.version,
            "status": self.status,
            "input": self.input_name if self.source == "file" else None,
            "progress": {
                "total": total,
                "done": self.done,
                "failed": self.failed,
                "fraction": round(self.done / total, 4) if total else (1.0 if total == 0 else 0.0),
            },
            "error": self.error,
            "callback": {"url": self.callback_url, "state": self.callback_state}
            if self.callback_url
            else None,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "expires_at": self.expires_at,
            "results": f"/api/v1/jobs/{self.id}/results",
        }


def _job(row: tuple[Any, ...]) -> JobRecord:
    values = list(row)
    values[4] = orjson.loads(values[4])
    values[12] = orjson.loads(values[12]) if values[12] is not None else None
    return JobRecord(*values)


class JobStore:
    """Thread-safe access to the job store file; every method is one statement or transaction."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.db = connection
        self.path = path
        self.lock = threading.RLock()
        from .files import BatchFiles

        #: The files of the OpenAI Batch API, in the same database.
        self.batch_files = BatchFiles(self)

    @classmethod
    def open(cls, path: Path) -> JobStore:
        """Open (creating if needed) and migrate the store; ``ConfigError`` if it cannot be trusted."""
        path = Path(path)
        return cls(open_sqlite(path, "job store", MIGRATIONS, synchronous="NORMAL"), path)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return list(self.db.execute(sql, args).fetchall())

    def write(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> int:
        """Run ``statements`` in one transaction; returns the rows the first one changed."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                first = -1
                for sql, args in statements:
                    changed = self.db.execute(sql, args).rowcount
                    if first < 0:
                        first = changed
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            return first

    # jobs --------------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        kind: str,
        model: str | None,
        version: str | None,
        params: Mapping[str, Any],
        source: str,
        chunk_size: int,
        input_path: str | None = None,
        input_name: str | None = None,
        callback_url: str | None = None,
        records: list[Any] | None = None,
        job_id: str | None = None,
    ) -> JobRecord:
        """A new queued job; inline ``records`` are stored with it, in chunks."""
        now = time.time()
        job_id = job_id or new_id("job-")
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                "INSERT INTO jobs (id, kind, model, version, params, status, source, input_path, input_name, "
                "chunk_size, total, callback_url, callback_state, created_at) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    kind,
                    model,
                    version,
                    _json(dict(params)),
                    source,
                    input_path,
                    input_name,
                    chunk_size,
                    len(records) if records is not None else None,
                    callback_url,
                    "pending" if callback_url else None,
                    now,
                ),
            )
        ]
        for start in range(0, len(records or ()), chunk_size):
            assert records is not None
            blob = orjson.dumps(records[start : start + chunk_size])
            statements.append(
                ("INSERT INTO job_inputs (job_id, start, records) VALUES (?, ?, ?)", (job_id, start, blob))
            )
        self.write(statements)
        job = self.job(job_id)
        assert job is not None
        return job

    def job(self, job_id: str) -> JobRecord | None:
        rows = self.rows(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def input_path(self, job_id: str) -> str | None:
        rows = self.rows("SELECT input_path FROM jobs WHERE id = ?", (job_id,))
        return rows[0][0] if rows else None

    def jobs(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[JobRecord]:
        """Jobs, newest first; ``after`` continues a listing after that job's id."""
        where, args = [], []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if after is not None:
            where.append("(created_at, id) < (SELECT created_at, id FROM jobs WHERE id = ?)")
            args.append(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs {clause} ORDER BY created_at DESC, id DESC LIMIT ?"
        return [_job(row) for row in self.rows(sql, (*args, limit))]

    def active_jobs(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first (what a starting server resumes)."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at, id"
        return [_job(row) for row in self.rows(sql)]

    def clear_inputs(self, job_id: str) -> None:
        """Forget a job's stored records (before they are read again from its input)."""
        self.write([("DELETE FROM job_inputs WHERE job_id = ?", (job_id,))])

    def add_inputs(self, job_id: str, chunks: Iterable[StoredChunk]) -> int:
        """Store some of a job's records (one transaction); returns the index after the last. The
        job's ``total``, set once every record is stored (``set_total``), marks its inputs complete:
        a job without one has its records read again."""
        end = 0
        statements = []
        for start, count, blob, errors in chunks:
            statements.append(
                (
                    "INSERT INTO job_inputs (job_id, start, records, errors) VALUES (?, ?, ?, ?)",
                    (job_id, start, blob, _json({str(k): v for k, v in errors.items()})),
                )
            )
            end = start + count
        if statements:
            self.write(statements)
        return end

    def set_total(self, job_id: str, total: int) -> None:
        self.write([("UPDATE jobs SET total = ? WHERE id = ?", (total, job_id))])

    def input_chunk(self, job_id: str, start: int) -> tuple[list[Any], dict[int, str]]:
        """The records of the chunk at ``start`` and why any of them are malformed."""
        rows = self.rows(
            "SELECT records, errors FROM job_inputs WHERE job_id = ? AND start = ?", (job_id, start)
        )
        if not rows:
            return [], {}
        records, errors = rows[0]
        return orjson.loads(records), {int(k): v for k, v in orjson.loads(errors).items()}

    def scored_starts(self, job_id: str) -> set[int]:
        return {row[0] for row in self.rows("SELECT start FROM job_results WHERE job_id = ?", (job_id,))}

    def save_result(
        self, job_id: str, start: int, count: int, failed: int, output: bytes, errors: bytes = b""
    ) -> bool:
        """Store one chunk's results and count them; ``False`` (and nothing changes) if that chunk
        has results already."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                inserted = self.db.execute(
                    "INSERT INTO job_results (job_id, start, count, failed, output, errors) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, start) DO NOTHING",
                    (job_id, start, count, failed, output, errors),
                ).rowcount
                if inserted:
                    self.db.execute(
                        "UPDATE jobs SET done = done + ?, failed = failed + ? WHERE id = ?",
                        (count, failed, job_id),
                    )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return bool(inserted)

    def mark_running(self, job_id: str) -> JobRecord | None:
        self.write(
            [
                (
                    "UPDATE jobs SET status = 'running', started_at = coalesce(started_at, ?) "
                    "WHERE id = ? AND status IN ('queued', 'running')",
                    (time.time(), job_id),
                )
            ]
        )
        return self.job(job_id)

    def finish(
        self, job_id: str, status: str, *, retention: float, error: Mapping[str, Any] | None = None
    ) -> JobRecord | None:
        """Move an active job to a final ``status`` (``None`` error keeps none); its inputs are
        dropped, its results kept for ``retention`` seconds. A finished job stays as it is."""
        assert status in FINISHED
        now = time.time()
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                changed = self.db.execute(
                    "UPDATE jobs SET status = ?, error = ?, finished_at = ?, expires_at = ? "
                    "WHERE id = ? AND status IN ('queued', 'running')",
                    (status, _json(dict(error)) if error else None, now, now + retention, job_id),
                ).rowcount
                if changed:
                    self.db.execute("DELETE FROM job_inputs WHERE job_id = ?", (job_id,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return self.job(job_id)

    def pending_callbacks(self) -> list[JobRecord]:
        """Finished jobs whose completion callback has not been delivered yet."""
        sql = (
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE callback_state = 'pending' "
            "AND status IN ('succeeded', 'failed', 'cancelled') ORDER BY finished_at"
        )
        return [_job(row) for row in self.rows(sql)]

    def set_callback_state(self, job_id: str, state: str) -> None:
        self.write([("UPDATE jobs SET callback_state = ? WHERE id = ?", (state, job_id))])

    def update_params(self, job_id: str, params: Mapping[str, Any]) -> None:
        self.write([("UPDATE jobs SET params = ? WHERE id = ?", (_json(dict(params)), job_id))])

    def results(self, job_id: str, *, errors: bool = False) -> Iterator[bytes]:
        """The job's result lines (or, with ``errors``, its error lines), chunk by chunk in input
        order; read in pages, so a large job streams in bounded memory."""
        column = "errors" if errors else "output"
        start = -1
        while True:
            rows = self.rows(
                f"SELECT start, {column} FROM job_results WHERE job_id = ? AND start > ? "
                "ORDER BY start LIMIT ?",
                (job_id, start, _PAGE),
            )
            for _, blob in rows:
                if blob:
                    yield bytes(blob)
            if len(rows) < _PAGE:
                return
            start = rows[-1][0]

    def result_bytes(self, job_id: str, *, errors: bool = False) -> int:
        column = "errors" if errors else "output"
        rows = self.rows(
            f"SELECT coalesce(sum(length({column})), 0) FROM job_results WHERE job_id = ?", (job_id,)
        )
        return int(rows[0][0])

    def delete_expired(self, now: float | None = None) -> int:
        """Delete finished jobs (with their results and output files) and files past their expiry."""
        now = time.time() if now is None else now
        return self.write(
            [
                ("DELETE FROM jobs WHERE expires_at IS NOT NULL AND expires_at < ?", (now,)),
                ("DELETE FROM files WHERE expires_at IS NOT NULL AND expires_at < ?", (now,)),
            ]
        )
