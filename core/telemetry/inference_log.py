"""Inference logs: a sampled record per request in an SQLite file of its own (WAL mode).

Records are appended to a bounded in-memory buffer on the data path (no I/O, no lock wait); a
background thread drains it in transactions and applies retention (by age and by row count). A
full buffer drops new records and counts them (``dropped``). The schema is versioned with
``PRAGMA user_version`` and migrated forward on open; a file written by a newer ladle is refused.

Table ``inference_logs``: ``id``, ``ts`` (Unix seconds), ``request_id``, ``model``, ``version``,
``latency`` (seconds, arrival to end of batch), ``status`` (``ok`` or the error code),
``trace_id`` (when traced), ``inputs`` and ``outputs`` (JSON, only when enabled), ``arm`` (the
experiment arm that served the request, when the model's router names arms).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..envelope import Arrays, InferenceRequest
from ..errors import ConfigError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "InferenceLog"]

#: Migration i (1-based) brings a file from schema version i - 1 to i.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE inference_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            request_id TEXT NOT NULL,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            latency REAL,
            status TEXT NOT NULL
        )""",
        "CREATE INDEX inference_logs_ts ON inference_logs (ts)",
        "CREATE INDEX inference_logs_model ON inference_logs (model, version, ts)",
    ),
    (
        "ALTER TABLE inference_logs ADD COLUMN trace_id TEXT",
        "ALTER TABLE inference_logs ADD COLUMN inputs TEXT",
        "ALTER TABLE inference_logs ADD COLUMN outputs TEXT",
    ),
    ("ALTER TABLE inference_logs ADD COLUMN arm TEXT",),
)
SCHEMA_VERSION = len(MIGRATIONS)

_INSERT = (
    "INSERT INTO inference_logs (ts, request_id, model, version, latency, status, trace_id, inputs, outputs, "
    "arm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: A buffered record: (ts, request id, model, version, latency, status, trace id, inputs, outputs, arm).
Record = tuple[float, str, str, str, float | None, str, str | None, Any, Any, str | None]


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def migrate(connection: sqlite3.Connection, source: str = "inference log") -> int:
    """Bring the schema to ``SCHEMA_VERSION``; returns the version found before migrating."""
    found = int(connection.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise ConfigError(
            f"{source}: schema version {found} is newer than this ladle understands ({SCHEMA_VERSION})",
            file=source,
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version - 1]:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {version}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    return found


def _json(arrays: Arrays | None) -> str | None:
    if arrays is None:
        return None
    return orjson.dumps(
        {name: array for name, array in arrays.items()},
        option=orjson.OPT_SERIALIZE_NUMPY,
        default=lambda value: value.tolist() if hasattr(value, "tolist") else str(value),
    ).decode()


class InferenceLog:
    """Buffered, sampled inference records written by a background thread."""

    def __init__(
        self,
        path: Path,
        *,
        sample: float = 1.0,
        inputs: bool = False,
        outputs: bool = False,
        buffer: int = 10_000,
        flush_interval: float = 1.0,
        max_age: float | None = None,
        max_rows: int | None = None,
        retention_interval: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self.sample = sample
        self.inputs = inputs
        self.outputs = outputs
        self.capacity = buffer
        self.flush_interval = flush_interval
        self.max_age = max_age
        self.max_rows = max_rows
        self.retention_interval = retention_interval
        self.dropped = 0
        self.written = 0
        self.errors = 0
        self._buffer: deque[Record] = deque()
        self._sample_due = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flushed = threading.Condition()
        self._cycles = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with contextlib.closing(_connect(self.path)) as connection:
                migrate(connection, str(self.path))
        except sqlite3.Error as exc:
            raise ConfigError(f"{self.path}: cannot open inference log: {exc}", file=str(self.path)) from None
        self._thread = threading.Thread(target=self._run, name="ladle-inference-log", daemon=True)
        self._thread.start()

    @property
    def buffered(self) -> int:
        """Records waiting to be written."""
        return len(self._buffer)

    # data path -----------------------------------------------------------------------------------

    def _take(self) -> bool:
        """Deterministic sampling: keeps ``sample`` of the records, evenly spread."""
        if self.sample >= 1.0:
            return True
        self._sample_due += self.sample
        if self._sample_due >= 1.0:
            self._sample_due -= 1.0
            return True
        return False

    def _append(self, record: Record) -> None:
        if len(self._buffer) >= self.capacity:
            self.dropped += 1
            return
        self._buffer.append(record)

    def record_batch(
        self,
        model: str,
        version: str,
        requests: Sequence[InferenceRequest],
        finished: float,
        errors: Sequence[str | None],
        outputs: Sequence[Arrays | None] | None = None,
    ) -> None:
        """Buffer the sampled records of a finished batch (``finished`` is ``time.monotonic()``)."""
        wall = time.time() - (time.monotonic() - finished)
        for index, request in enumerate(requests):
            if not self._take():
                continue
            error = errors[index]
            trace = request.trace
            self._append(
                (
                    wall,
                    request.id,
                    model,
                    version,
                    finished - request.arrival,
                    "ok" if error is None else error,
                    trace.trace_id if trace is not None and trace.sampled else None,
                    request.inputs if self.inputs else None,
                    outputs[index] if self.outputs and outputs is not None else None,
                    request.arm,
                )
            )
        if len(self._buffer) * 2 >= self.capacity:
            self._wake.set()

    def record_dropped(
        self, model: str, version: str, requests: Sequence[InferenceRequest], code: str
    ) -> None:
        """Buffer records of requests answered without running."""
        now = time.monotonic()
        self.record_batch(model, version, requests, now, [code] * len(requests))

    # background ----------------------------------------------------------------------------------

    def _run(self) -> None:
        connection = _connect(self.path)
        next_retention = time.monotonic()
        try:
            while True:
                stopping = self._stop.is_set()
                self._drain(connection)
                if time.monotonic() >= next_retention or stopping:
                    self._retain(connection)
                    next_retention = time.monotonic() + self.retention_interval
                with self._flushed:
                    self._cycles += 1
                    self._flushed.notify_all()
                if stopping:
                    return
                self._wake.wait(self.flush_interval)
                self._wake.clear()
        finally:
            connection.close()

    def _drain(self, connection: sqlite3.Connection) -> None:
        while self._buffer:
            rows: list[tuple[Any, ...]] = []
            while self._buffer and len(rows) < 1000:
                record = self._buffer.popleft()
                rows.append((*record[:7], _json(record[7]), _json(record[8]), record[9]))
            try:
                connection.execute("BEGIN")
                connection.executemany(_INSERT, rows)
                connection.execute("COMMIT")
                self.written += len(rows)
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                self.errors += len(rows)

    def _retain(self, connection: sqlite3.Connection) -> None:
        try:
            if self.max_age is not None:
                connection.execute("DELETE FROM inference_logs WHERE ts < ?", (time.time() - self.max_age,))
            if self.max_rows is not None:
                connection.execute(
                    "DELETE FROM inference_logs WHERE id <= (SELECT MAX(id) FROM inference_logs) - ?",
                    (self.max_rows,),
                )
        except sqlite3.Error:
            self.errors += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was buffered before the call has been written; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._flushed:
            target = self._cycles + 2  # the pass under way may have started before the last append
            while self._cycles < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._wake.set()
                self._flushed.wait(remaining)
        return True

    def enforce_retention(self) -> None:
        """Apply retention now, from the calling thread (its own connection)."""
        with contextlib.closing(_connect(self.path)) as connection:
            self._retain(connection)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered, apply retention and stop the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    # reading -------------------------------------------------------------------------------------

    def query(
        self,
        model: str | None = None,
        version: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The latest records, newest first (a read connection of its own; WAL lets it run beside writes)."""
        clauses, params = [], []
        if model is not None:
            clauses.append("model = ?")
            params.append(model)
        if version is not None:
            clauses.append("version = ?")
            params.append(version)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with contextlib.closing(sqlite3.connect(self.path, timeout=10.0)) as connection:
            connection.row_factory = sqlite3.Row
            rows = connection.execute(
                f"SELECT * FROM inference_logs {where} ORDER BY id DESC LIMIT ?", (*params, limit)
            ).fetchall()
        return [_decode(dict(row)) for row in rows]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.query(limit=1_000_000))


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for column in ("inputs", "outputs"):
        if row.get(column) is not None:
            row[column] = orjson.loads(row[column])
    return row
