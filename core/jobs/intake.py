"""A job's intake: its input read into the job store by a reader process (``ladle.jobs.child``).

The serving process only starts the reader and waits: the reader parses the input and writes the
store itself (``store_inputs``), at idle scheduling priority, and while the server runs online work
it takes at most ``READ_SHARE`` of the time (on a shared machine even a process at idle priority
takes CPU, caches and memory bandwidth that online requests feel). What a kind of job reads is a
generator of stored chunks: ``record_chunks`` for predict records (the OpenAI Batch API has its own).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..batching import Foreground
from .records import InputFileError, RecordChunk, read_chunks
from .store import JobStore, StoredChunk

__all__ = [
    "CHUNKS_PER_WRITE",
    "PUBLISH_INTERVAL",
    "READ_SHARE",
    "InputReader",
    "SharedClock",
    "record_chunks",
    "store_inputs",
]


class SharedClock(Protocol):
    """A ``time.monotonic()`` value the server keeps up to date (a ``multiprocessing`` shared double)."""

    value: float


#: How a job's inputs are read: a module-level generator and its arguments, run in a reader
#: process; it yields lists of ``StoredChunk`` in input order.
InputReader = tuple[Callable[..., Iterator[list[StoredChunk]]], tuple[Any, ...]]
#: The share of time a job's input reading takes while online work runs.
READ_SHARE = 0.001
#: Seconds between updates of the reader's copy of the server's ``Foreground``.
PUBLISH_INTERVAL = 0.05
#: Stored chunks per store transaction.
CHUNKS_PER_WRITE = 64


def store_inputs(
    store_path: str,
    job_id: str,
    function: Callable[..., Iterator[list[StoredChunk]]],
    args: tuple[Any, ...],
    foreground: SharedClock,
) -> Iterator[int]:
    """In a reader process: the job's input, read by ``function(*args)``, into the store at
    ``store_path``; yields the record count once all are stored. The count is stored last, so a
    job stopped on the way has its input read again from the start.

    ``foreground`` (shared memory) holds when the server last ran online work: while it is recent,
    the reader takes at most ``READ_SHARE`` of the time."""
    store = JobStore.open(Path(store_path))
    try:
        store.clear_inputs(job_id)
        total = 0
        began = time.monotonic()
        for chunks in function(*args):
            total = store.add_inputs(job_id, chunks) or total
            now = time.monotonic()
            resume = now + (now - began) * (1 / READ_SHARE - 1)
            while now < resume and now - foreground.value <= Foreground.window:
                time.sleep(min(PUBLISH_INTERVAL, resume - now))
                now = time.monotonic()
            began = now
        store.set_total(job_id, total)
    finally:
        store.close()
    yield total


def record_chunks(
    path: str, name: str | None, chunk_size: int, names: list[str], limit: int
) -> Iterator[list[StoredChunk]]:
    """The predict records of the input file at ``path`` (``name`` as its job names it), as stored
    chunks; at most ``limit`` records."""
    group: list[StoredChunk] = []
    try:
        for chunk in read_chunks(Path(path), chunk_size, input_names=names):
            if chunk.start + chunk.count > limit:
                raise InputFileError(
                    f"input file {name!r}: record {limit + 1}: more than the "
                    f"{limit} records a job may hold ([jobs] max_records)",
                    max_records=limit,
                )
            records = chunk.records if chunk.arrays is None else _rows(chunk)
            blob = orjson.dumps(records, option=orjson.OPT_SERIALIZE_NUMPY)
            group.append((chunk.start, chunk.count, blob, chunk.errors))
            if len(group) == CHUNKS_PER_WRITE:
                yield group
                group = []
    except OSError as exc:
        raise InputFileError(f"input file {name!r} cannot be read: {exc.strerror}") from None
    if group:
        yield group


def _rows(chunk: RecordChunk) -> list[Any]:
    assert chunk.arrays is not None
    columns = {name: array.tolist() for name, array in chunk.arrays.items()}
    return [{name: column[i] for name, column in columns.items()} for i in range(chunk.count)]
