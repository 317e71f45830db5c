"""The input of ``ladle batch``, read and prepared in a child process ahead of the scoring.

Parsing JSON Lines and stacking records into arrays costs more CPU than predicting them for a
small model, and it holds the GIL. In the scoring process it would take turns with the pipeline on
one core; in a reader process of its own it runs beside it, as data loader workers do. The child
reads ``read_chunks`` of the file, prepares each (``prepare_chunk``) and sends it through a pipe,
which holds the child at most a few chunks ahead. What the child cannot read (``InputFileError``)
is raised by the parent, at the chunk where it happened.

The child starts at once and waits for the model's signature (``begin``), so its start-up overlaps
the model's loading. A ``.npy`` input is already an array to slice: ``open_chunks`` reads it in the
scoring process itself (``InlineChunks``), where a pipe would only add copies.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import LadleError, RuntimeFailureError
from ..tensors import Signature
from .inputs import PreparedChunk, prepare_chunk, record_id_field
from .records import input_format, read_chunks

__all__ = ["ChunkReader", "InlineChunks", "open_chunks"]

_CHUNK, _END, _FAILED = "chunk", "end", "failed"


def _prepared(
    path: Path, chunk_size: int, start: int, signature: Signature | None, id_field: str | None
) -> Iterator[PreparedChunk]:
    """The chunks of ``path`` from record ``start`` on, each prepared for a model of ``signature``."""
    names = [s.name for s in signature.inputs] if signature is not None else []
    record_id = record_id_field(id_field, names)
    for chunk in read_chunks(path, chunk_size, start=start, input_names=names, id_field=id_field):
        yield prepare_chunk(chunk, signature, record_id)


def _read(connection: Connection, path: str, chunk_size: int, start: int, id_field: str | None) -> None:
    """The child: prepared chunks of ``path`` down ``connection``, then the end or the error."""
    try:
        signature: Signature | None = connection.recv()
        for chunk in _prepared(Path(path), chunk_size, start, signature, id_field):
            connection.send((_CHUNK, chunk))
        connection.send((_END, None))
    except LadleError as exc:
        connection.send((_FAILED, exc))
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass  # the parent is gone or stopping
    finally:
        connection.close()


def open_chunks(
    path: Path, chunk_size: int, *, start: int = 0, id_field: str | None = "id"
) -> ChunkReader | InlineChunks:
    """The prepared chunks of ``path``: from a reader process, or inline for an array file."""
    if input_format(path) == "npy":
        return InlineChunks(path, chunk_size, start=start, id_field=id_field)
    return ChunkReader(path, chunk_size, start=start, id_field=id_field)


class InlineChunks:
    """``ChunkReader``'s interface over chunks read in this process (for inputs with nothing to parse)."""

    def __init__(self, path: Path, chunk_size: int, *, start: int = 0, id_field: str | None = "id") -> None:
        self._path, self._chunk_size, self._start, self._id_field = path, chunk_size, start, id_field
        self._signature: Signature | None = None

    def begin(self, signature: Signature | None) -> None:
        self._signature = signature

    async def __aiter__(self) -> AsyncIterator[PreparedChunk]:
        for chunk in _prepared(self._path, self._chunk_size, self._start, self._signature, self._id_field):
            yield chunk

    def close(self) -> None:
        return None


class ChunkReader:
    """Prepared chunks of one input file from a reader process (``async for``); ``close`` ends it."""

    def __init__(self, path: Path, chunk_size: int, *, start: int = 0, id_field: str | None = "id") -> None:
        context = multiprocessing.get_context("spawn")  # the parent has threads: never fork it
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_read,
            args=(child, str(path), chunk_size, start, id_field),
            name="ladle-batch-reader",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._receiver = ThreadPoolExecutor(1, thread_name_prefix="ladle-batch-reader")
        self._done = False

    @property
    def pid(self) -> int | None:
        """The reader process's id."""
        return self._process.pid

    def begin(self, signature: Signature | None) -> None:
        """Start reading, for a model of ``signature``."""
        self._connection.send(signature)

    def _receive(self) -> Any:
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            code = self._process.exitcode
            return (_FAILED, RuntimeFailureError(f"the input reader process ended (exit code {code})"))

    def __aiter__(self) -> AsyncIterator[PreparedChunk]:
        return self

    async def __anext__(self) -> PreparedChunk:
        if self._done:
            raise StopAsyncIteration
        kind, value = await asyncio.get_running_loop().run_in_executor(self._receiver, self._receive)
        if kind == _CHUNK:
            chunk: PreparedChunk = value
            return chunk
        self._done = True
        if kind == _FAILED:
            raise value
        raise StopAsyncIteration

    def close(self) -> None:
        """Stop the reader process (at once if it is still reading) and free the pipe."""
        self._done = True
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(5)
        self._connection.close()
        self._receiver.shutdown(wait=False)
