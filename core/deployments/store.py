"""The deployment store: an SQLite file of its own that records what a managed server serves.

Tables: ``models`` (router and model-level options), ``deployments`` (one row per model version:
traffic percent, status, options), ``traffic_splits`` (every split ever applied, for history and
rollback), ``events`` (what happened and why), ``rollouts`` (the guarded rollout of each model) and
``rollout_progress`` (the running step's start and the guards' samples, saved every few seconds).
The schema version lives in ``PRAGMA user_version`` and migrations run in order at open. The file
runs in WAL mode with full synchronisation; every change is one transaction, so a crash leaves the
state either before or after a change, never in between.

A file that is not an SQLite database, fails its integrity check, was written by a newer ladle or
cannot be written raises ``ConfigError`` at open: the server refuses to start rather than serve from
state it cannot trust or keep.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..sqlite_file import open_sqlite

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "DeploymentRecord",
    "DeploymentStore",
    "EventRecord",
    "ModelRecord",
    "RolloutProgress",
    "RolloutRecord",
    "SplitRecord",
    "Transaction",
]

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE models (
        name TEXT PRIMARY KEY,
        router TEXT,
        router_options TEXT NOT NULL DEFAULT '{}',
        options TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE deployments (
        model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
        version TEXT NOT NULL,
        traffic REAL NOT NULL DEFAULT 0 CHECK (traffic >= 0 AND traffic <= 100),
        status TEXT NOT NULL,
        options TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        deployed_at REAL NOT NULL,
        PRIMARY KEY (model, version)
    );
    CREATE TABLE traffic_splits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
        weights TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX traffic_splits_by_model ON traffic_splits (model, id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL,
        version TEXT,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        details TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    CREATE INDEX events_by_model ON events (model, id);
    CREATE TABLE rollouts (
        model TEXT PRIMARY KEY REFERENCES models(name) ON DELETE CASCADE,
        canary TEXT NOT NULL,
        stable TEXT NOT NULL,
        plan TEXT NOT NULL,
        step INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: where a running rollout's step is, so that a restart resumes it with its evidence
    """
    CREATE TABLE rollout_progress (
        model TEXT PRIMARY KEY REFERENCES models(name) ON DELETE CASCADE,
        started_at REAL NOT NULL,
        step INTEGER NOT NULL,
        step_started_at REAL NOT NULL,
        samples BLOB NOT NULL,
        saved_at REAL NOT NULL
    );
    """,
)

#: The schema version this ladle writes.
SCHEMA_VERSION = len(MIGRATIONS)


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _load(text: str) -> Any:
    return orjson.loads(text)


@dataclass(frozen=True)
class ModelRecord:
    name: str
    router: str | None
    router_options: dict[str, Any]
    options: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class DeploymentRecord:
    """One version of a model: its traffic percent and status (``serving``, ``standby``,
    ``rolled_back``, ``failed``, ``retired``)."""

    model: str
    version: str
    traffic: float
    status: str
    options: dict[str, Any]
    created_at: float
    updated_at: float
    deployed_at: float


@dataclass(frozen=True)
class SplitRecord:
    id: int
    model: str
    weights: dict[str, float]
    reason: str
    created_at: float


@dataclass(frozen=True)
class EventRecord:
    id: int
    model: str
    version: str | None
    kind: str
    message: str
    details: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class RolloutProgress:
    """Where a running rollout is: the rollout (``started_at`` of its ``RolloutRecord``), its step,
    the wall time that step began and the guards' samples (``ladle.deployments.guards.encode_samples``)."""

    model: str
    started_at: float
    step: int
    step_started_at: float
    samples: bytes
    saved_at: float


@dataclass(frozen=True)
class RolloutRecord:
    """A guarded rollout: ``step`` indexes ``plan["steps"]``; ``state`` is ``running``,
    ``promoted``, ``rolled_back`` or ``cancelled``."""

    model: str
    canary: str
    stable: str
    plan: dict[str, Any]
    step: int
    state: str
    reason: str
    started_at: float
    updated_at: float


class Transaction:
    """Writes inside one transaction (``DeploymentStore.transaction``); all or nothing."""

    def __init__(self, connection: sqlite3.Connection, now: float) -> None:
        self._db = connection
        self.now = now

    def upsert_model(
        self,
        name: str,
        *,
        router: str | None = None,
        router_options: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        keep_router: bool = True,
    ) -> None:
        """Create the model row if missing; set the router (unless ``keep_router`` and none given)
        and the options that are given."""
        self._db.execute(
            "INSERT INTO models (name, router, router_options, options, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO NOTHING",
            (name, router, _json(dict(router_options or {})), _json(dict(options or {})), self.now, self.now),
        )
        if router is not None or not keep_router:
            self._db.execute(
                "UPDATE models SET router = ?, router_options = ?, updated_at = ? WHERE name = ?",
                (router, _json(dict(router_options or {})), self.now, name),
            )
        if options is not None:
            self._db.execute(
                "UPDATE models SET options = ?, updated_at = ? WHERE name = ?",
                (_json(dict(options)), self.now, name),
            )

    def upsert_deployment(
        self,
        model: str,
        version: str,
        *,
        status: str,
        options: Mapping[str, Any] | None = None,
        deployed: bool = False,
    ) -> None:
        """Create or update the row of one version (its traffic changes only through ``set_split``);
        ``deployed`` marks it as the most recently deployed version of its model."""
        self._db.execute(
            "INSERT INTO deployments "
            "(model, version, traffic, status, options, created_at, updated_at, deployed_at) "
            "VALUES (?, ?, 0, ?, ?, ?, ?, ?) ON CONFLICT(model, version) "
            "DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
            (model, version, status, _json(dict(options or {})), self.now, self.now, self.now),
        )
        if deployed:
            self._db.execute(
                "UPDATE deployments SET deployed_at = ? WHERE model = ? AND version = ?",
                (self.now, model, version),
            )
        if options is not None:
            self._db.execute(
                "UPDATE deployments SET options = ? WHERE model = ? AND version = ?",
                (_json(dict(options)), model, version),
            )

    def set_status(self, model: str, version: str, status: str) -> None:
        self._db.execute(
            "UPDATE deployments SET status = ?, updated_at = ? WHERE model = ? AND version = ?",
            (status, self.now, model, version),
        )

    def set_split(self, model: str, weights: Mapping[str, float], reason: str) -> None:
        """Make ``weights`` the model's traffic (other versions get 0) and append it to the history."""
        self._db.execute(
            "UPDATE deployments SET traffic = 0, updated_at = ? WHERE model = ? AND traffic != 0",
            (self.now, model),
        )
        for version, weight in weights.items():
            cursor = self._db.execute(
                "UPDATE deployments SET traffic = ?, updated_at = ? WHERE model = ? AND version = ?",
                (float(weight), self.now, model, version),
            )
            if cursor.rowcount != 1:
                raise ValueError(f"model {model!r} has no deployment {version!r}")
        self._db.execute(
            "INSERT INTO traffic_splits (model, weights, reason, created_at) VALUES (?, ?, ?, ?)",
            (model, _json({v: float(w) for v, w in weights.items()}), reason, self.now),
        )

    def delete_deployment(self, model: str, version: str) -> None:
        self._db.execute("DELETE FROM deployments WHERE model = ? AND version = ?", (model, version))

    def event(
        self,
        model: str,
        kind: str,
        message: str,
        *,
        version: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self._db.execute(
            "INSERT INTO events (model, version, kind, message, details, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (model, version, kind, message, _json(dict(details or {})), self.now),
        )

    def save_rollout(self, record: RolloutRecord) -> None:
        self._db.execute(
            "INSERT INTO rollouts (model, canary, stable, plan, step, state, reason, started_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(model) DO UPDATE SET canary = excluded.canary, "
            "stable = excluded.stable, plan = excluded.plan, step = excluded.step, state = excluded.state, "
            "reason = excluded.reason, started_at = excluded.started_at, updated_at = excluded.updated_at",
            (
                record.model,
                record.canary,
                record.stable,
                _json(record.plan),
                record.step,
                record.state,
                record.reason,
                record.started_at,
                self.now,
            ),
        )

    def save_rollout_progress(self, progress: RolloutProgress) -> None:
        self._db.execute(
            "INSERT INTO rollout_progress (model, started_at, step, step_started_at, samples, saved_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(model) DO UPDATE SET started_at = excluded.started_at, "
            "step = excluded.step, step_started_at = excluded.step_started_at, "
            "samples = excluded.samples, saved_at = excluded.saved_at",
            (
                progress.model,
                progress.started_at,
                progress.step,
                progress.step_started_at,
                progress.samples,
                self.now,
            ),
        )


class DeploymentStore:
    """Thread-safe access to the store file (the controller calls it from a worker thread)."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path) -> DeploymentStore:
        """Open (creating if needed) and migrate the store; ``ConfigError`` if it cannot be trusted."""
        path = Path(path)
        return cls(open_sqlite(path, "deployment store", MIGRATIONS, synchronous="FULL"), path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One atomic change: committed when the block ends, rolled back if it raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._db, time.time())
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # reads -------------------------------------------------------------------------------------

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: it changes after another connection (another front
        process) committed to the file, and only then; no table is read."""
        return int(self._rows("PRAGMA data_version")[0][0])

    def is_empty(self) -> bool:
        return not self._rows("SELECT 1 FROM models LIMIT 1")

    def models(self) -> list[ModelRecord]:
        return [
            ModelRecord(name, router, _load(ropts), _load(opts), created, updated)
            for name, router, ropts, opts, created, updated in self._rows(
                "SELECT name, router, router_options, options, created_at, updated_at "
                "FROM models ORDER BY name"
            )
        ]

    def model(self, name: str) -> ModelRecord | None:
        return next((m for m in self.models() if m.name == name), None)

    def deployments(self, model: str | None = None) -> list[DeploymentRecord]:
        sql = (
            "SELECT model, version, traffic, status, options, created_at, updated_at, deployed_at "
            "FROM deployments"
        )
        rows = (
            self._rows(sql + " WHERE model = ? ORDER BY created_at, version", (model,))
            if model
            else self._rows(sql + " ORDER BY model, created_at, version")
        )
        return [DeploymentRecord(m, v, t, s, _load(o), c, u, d) for m, v, t, s, o, c, u, d in rows]

    def split(self, model: str) -> dict[str, float]:
        """The current split: versions with traffic, by percent."""
        return {d.version: d.traffic for d in self.deployments(model) if d.traffic > 0}

    def splits(self, model: str, limit: int = 100) -> list[SplitRecord]:
        """The most recent splits, newest first."""
        rows = self._rows(
            "SELECT id, model, weights, reason, created_at FROM traffic_splits WHERE model = ? "
            "ORDER BY id DESC LIMIT ?",
            (model, limit),
        )
        return [SplitRecord(i, m, _load(w), r, c) for i, m, w, r, c in rows]

    def events(self, model: str | None = None, limit: int = 100) -> list[EventRecord]:
        """The most recent events, newest first."""
        sql = "SELECT id, model, version, kind, message, details, created_at FROM events"
        rows = (
            self._rows(sql + " WHERE model = ? ORDER BY id DESC LIMIT ?", (model, limit))
            if model
            else self._rows(sql + " ORDER BY id DESC LIMIT ?", (limit,))
        )
        return [EventRecord(i, m, v, k, msg, _load(d), c) for i, m, v, k, msg, d, c in rows]

    def rollout(self, model: str) -> RolloutRecord | None:
        rows = self._rows(
            "SELECT model, canary, stable, plan, step, state, reason, started_at, updated_at "
            "FROM rollouts WHERE model = ?",
            (model,),
        )
        if not rows:
            return None
        m, canary, stable, plan, step, state, reason, started, updated = rows[0]
        return RolloutRecord(m, canary, stable, _load(plan), step, state, reason, started, updated)

    def rollout_progress(self, model: str) -> RolloutProgress | None:
        rows = self._rows(
            "SELECT model, started_at, step, step_started_at, samples, saved_at "
            "FROM rollout_progress WHERE model = ?",
            (model,),
        )
        if not rows:
            return None
        m, started, step, step_started, samples, saved = rows[0]
        return RolloutProgress(m, started, step, step_started, bytes(samples), saved)
