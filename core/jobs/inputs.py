"""A chunk of records made ready for the model: checked, ids taken out, stacked into arrays.

Preparing a chunk needs nothing but the chunk and the model's signature, so it can run wherever
the records are read: in the scorer itself (server jobs) or in the reader process of ``ladle
batch`` (``ladle.jobs.reader``), which keeps the parsing off the process that scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..envelope import Arrays
from ..errors import InvalidRequestError
from ..http.ladle_api import records_to_arrays
from ..tensors import Signature
from .records import RecordChunk

__all__ = ["PreparedChunk", "prepare_chunk", "record_id_field"]


@dataclass(slots=True)
class PreparedChunk:
    """``count`` records from index ``start``: ``good`` are the offsets of those to score, as
    ``arrays`` (one row per good record) or, when they do not stack into arrays, as ``records``
    (scored one by one); ``problems`` says why each other record is malformed. ``ids`` holds each
    record's id (``None`` when no record has one)."""

    start: int
    count: int
    good: Sequence[int]
    arrays: Arrays | None = None
    records: list[Any] | None = None
    problems: dict[int, str] = field(default_factory=dict)
    ids: list[Any] | None = None


def record_id_field(id_field: str | None, input_names: Sequence[str]) -> str | None:
    """The record key that names a record: ``id_field``, unless the model has an input of that name."""
    return id_field if id_field and id_field not in input_names else None


def prepare_chunk(chunk: RecordChunk, signature: Signature | None, id_field: str | None) -> PreparedChunk:
    """``chunk`` ready to score; ``id_field`` as ``record_id_field`` gives it."""
    if chunk.arrays is not None:
        return PreparedChunk(chunk.start, chunk.count, range(chunk.count), arrays=chunk.arrays)
    good: list[int] = []
    records: list[Any] = []
    problems: dict[int, str] = {}
    ids: list[Any] | None = None
    errors = chunk.errors
    for offset, record in enumerate(chunk.records):
        problem = errors.get(offset) if errors else None
        if problem is None and (type(record) is not dict or not record):
            problem = "a record must be a non-empty JSON object"
        if problem is None and id_field is not None and id_field in record:
            if ids is None:
                ids = [None] * chunk.count
            problem = _take_id(record, id_field, offset, ids)
        if problem is not None:
            problems[offset] = problem
            continue
        good.append(offset)
        records.append(record)
    prepared = PreparedChunk(chunk.start, chunk.count, good, problems=problems, ids=ids)
    if records:
        try:
            prepared.arrays = records_to_arrays(records, signature)
        except InvalidRequestError:
            prepared.records = records  # some record does not fit the others: one by one
    return prepared


def _take_id(record: dict[str, Any], id_field: str, offset: int, ids: list[Any]) -> str | None:
    """Move the record's id into ``ids``; why it is wrong, if it is."""
    key = record.pop(id_field)
    if isinstance(key, bool) or not isinstance(key, str | int):
        return f"{id_field!r} must be a string or an integer"
    ids[offset] = key
    if not record:
        return "the record has an id but no inputs"
    return None
