"""The input of ``ladle batch``, read and prepared in a child process ahead of the scoring.

Parsing JSON Lines and stacking records into arrays costs more CPU than predicting them for a
small model, and it holds the GIL. In the scoring process it would take turns with the pipeline on
one core; in a reader process of its own it runs beside it, as data loader workers do. The child
reads ``read_chunks`` of the file, prepares each (``prepare_chunk``) and sends it through a pipe,
which holds the child at most a few chunks ahead. What the child cannot read (``InputFileError``)
is raised by the parent, at the chunk where it happened.

The child starts at once and waits for the model's signature (``begin``), so its start-up overlaps
the model's loading. A ``.npy`` input is already an array to slice: ``open_chunks`` reads it in the
scoring process itself (``InlineChunks``), where a pipe would only add copies. The process is a
``ChildIterator``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from ..tensors import Signature
from .child import ChildIterator
from .inputs import PreparedChunk, prepare_chunk, record_id_field
from .records import input_format, read_chunks

__all__ = ["ChunkReader", "InlineChunks", "open_chunks"]


def _prepared(
    path: str, chunk_size: int, start: int, id_field: str | None, signature: Signature | None
) -> Iterator[PreparedChunk]:
    """The chunks of ``path`` from record ``start`` on, each prepared for a model of ``signature``."""
    names = [s.name for s in signature.inputs] if signature is not None else []
    record_id = record_id_field(id_field, names)
    for chunk in read_chunks(Path(path), chunk_size, start=start, input_names=names, id_field=id_field):
        yield prepare_chunk(chunk, signature, record_id)


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
        chunks = _prepared(str(self._path), self._chunk_size, self._start, self._id_field, self._signature)
        for chunk in chunks:
            yield chunk

    def close(self) -> None:
        return None


class ChunkReader(ChildIterator[PreparedChunk]):
    """Prepared chunks of one input file from a reader process (``async for``); ``begin(signature)``
    starts reading for a model of that signature, ``close`` ends it."""

    def __init__(self, path: Path, chunk_size: int, *, start: int = 0, id_field: str | None = "id") -> None:
        super().__init__(_prepared, str(path), chunk_size, start, id_field, name="ladle-batch-reader")
