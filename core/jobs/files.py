"""The files of the OpenAI Batch API, kept in the job store's database (table ``files``).

An uploaded batch input file keeps its bytes in the table; the output and error files of a finished
batch name the job and a ``part``, and their content is read from the job's results, so nothing is
stored twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .store import JobStore, new_id

__all__ = ["BatchFiles", "FileRecord"]

_FILE_COLUMNS = "id, purpose, filename, bytes, created_at, expires_at, job_id, part"


@dataclass(frozen=True)
class FileRecord:
    """A file of the OpenAI Batch API: uploaded (``content`` in the store) or the output or error
    ``part`` of a finished batch (``job_id``; its content is read from the job's results)."""

    id: str
    purpose: str
    filename: str
    bytes: int
    created_at: float
    expires_at: float | None
    job_id: str | None
    part: str | None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at),
            "expires_at": int(self.expires_at) if self.expires_at is not None else None,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


class BatchFiles:
    """The ``files`` table of a ``JobStore`` (``store.batch_files``)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def create(
        self,
        *,
        purpose: str,
        filename: str,
        content: bytes | None,
        expires_at: float | None,
        size: int | None = None,
        job_id: str | None = None,
        part: str | None = None,
    ) -> FileRecord:
        file_id = new_id("file-")
        self._store.write(
            [
                (
                    "INSERT INTO files (id, purpose, filename, bytes, created_at, expires_at, job_id, part, "
                    "content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        file_id,
                        purpose,
                        filename,
                        len(content) if content is not None else int(size or 0),
                        time.time(),
                        expires_at,
                        job_id,
                        part,
                        content,
                    ),
                )
            ]
        )
        record = self.get(file_id)
        assert record is not None
        return record

    def get(self, file_id: str) -> FileRecord | None:
        rows = self._store.rows(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?", (file_id,))
        return FileRecord(*rows[0]) if rows else None

    def list(
        self, *, purpose: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[FileRecord]:
        where, args = [], []
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        if after is not None:
            where.append("(created_at, id) < (SELECT created_at, id FROM files WHERE id = ?)")
            args.append(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_FILE_COLUMNS} FROM files {clause} ORDER BY created_at DESC, id DESC LIMIT ?"
        return [FileRecord(*row) for row in self._store.rows(sql, (*args, limit))]

    def job_files(self, job_id: str) -> dict[str, FileRecord]:
        """The output and error files of a finished batch, by part."""
        rows = self._store.rows(f"SELECT {_FILE_COLUMNS} FROM files WHERE job_id = ?", (job_id,))
        return {row[7]: FileRecord(*row) for row in rows}

    def delete(self, file_id: str) -> bool:
        return self._store.write([("DELETE FROM files WHERE id = ?", (file_id,))]) > 0

    def content(self, record: FileRecord) -> Iterator[bytes]:
        """The bytes of a file, in pieces."""
        if record.job_id is not None:
            yield from self._store.results(record.job_id, errors=record.part == "error")
            return
        with self._store.lock:
            rowid = self._store.db.execute("SELECT rowid FROM files WHERE id = ?", (record.id,)).fetchone()
        if rowid is None:
            return
        offset, piece = 0, 1 << 20
        while True:
            with self._store.lock:
                rows = self._store.db.execute(
                    "SELECT substr(content, ?, ?) FROM files WHERE rowid = ?", (offset + 1, piece, rowid[0])
                ).fetchone()
            data = bytes(rows[0]) if rows and rows[0] is not None else b""
            if not data:
                return
            yield data
            offset += len(data)
