"""Opening one of ladle's SQLite files (the deployment store, the job store): WAL, an integrity
check, migrations by ``user_version``, and a real write at every start, so an unusable or unwritable
file stops the start with a ``ConfigError`` naming it, not the first change."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from .errors import ConfigError

__all__ = ["migrate", "open_sqlite"]

#: Seconds ``open_sqlite`` keeps trying while another process holds the file.
_LOCKED_PATIENCE = 10.0


def open_sqlite(
    path: Path, kind: str, migrations: Sequence[str], *, synchronous: Literal["NORMAL", "FULL"]
) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the ``kind`` file at ``path`` ("job store", say).

    ``migrations[i]`` takes the schema from version ``i`` to ``i + 1`` (statements separated by
    ``;``); the file needs a ``meta (key, value)`` table from the first one on.
    """
    where = f"{kind} {path}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot create its directory: {exc.strerror}", file=str(path)) from None
    if path.exists() and not path.is_file():
        raise ConfigError(f"{where}: not a regular file", file=str(path))
    try:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    except sqlite3.Error as exc:
        raise ConfigError(f"{where}: cannot open: {exc}", file=str(path)) from None
    try:
        # Tried again while another process holds the file (several fronts, or a job's input reader,
        # opening it at once): switching to WAL does not wait for a lock as transactions do.
        deadline = time.monotonic() + _LOCKED_PATIENCE
        while True:
            try:
                migrate(connection, path, kind, migrations, synchronous=synchronous)
                break
            except sqlite3.OperationalError as exc:
                held = exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not held or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    except ConfigError:
        connection.close()
        raise
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise ConfigError(
            f"{where}: unusable ({exc}); restore it from a backup or move it away to start afresh",
            file=str(path),
        ) from None
    return connection


def migrate(
    db: sqlite3.Connection,
    path: Path,
    kind: str,
    migrations: Sequence[str],
    *,
    synchronous: Literal["NORMAL", "FULL"],
) -> None:
    """Check the open file ``db`` (at ``path``), bring its schema to ``len(migrations)`` and write to it."""
    where = f"{kind} {path}"
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise ConfigError(f"{where}: cannot switch to WAL mode (got {mode!r})", file=str(path))
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA foreign_keys=ON")
    check = db.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise ConfigError(f"{where}: integrity check failed: {check}", file=str(path))
    latest = len(migrations)
    db.execute("BEGIN")  # one snapshot for both reads: another process may be migrating the file
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    tables = int(db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
    db.execute("COMMIT")
    if version > latest:
        raise ConfigError(
            f"{where}: schema version {version} was written by a newer ladle (this one knows {latest})",
            file=str(path),
        )
    if version == 0 and tables:
        raise ConfigError(f"{where}: an SQLite file that is not a ladle {kind}", file=str(path))
    try:
        db.execute("BEGIN IMMEDIATE")
        # Another process may have migrated the file since it was read: read again, under the lock.
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        for index in range(version, latest):
            for statement in migrations[index].split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute(f"PRAGMA user_version = {latest}")
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('opened_at', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (repr(time.time()),),
        )
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise ConfigError(f"{where}: cannot be written: {exc}", file=str(path)) from None
