"""Input records of jobs and ``ladle batch``, read in chunks, and the result line of each record.

A record is one row as ``POST /api/v1/models/{name}/predict`` takes it: an object mapping input
names to that row's values (a model with one input takes any one key). A record may also carry an
``id`` (the ``id_field``, unless the model has an input of that name); results name it.

Input files, by suffix:

=================  ==========================================================================
``.jsonl``         one record per line (``.ndjson`` too); a line that is not a JSON object
                   (empty, invalid JSON, an array...) fails that record alone
``.csv``           a header, then one record per row: columns named after the model's inputs
                   give one value each; otherwise every column (but the id) is the one input's
                   vector. A row with the wrong number of fields fails that record alone
``.parquet``       columns as for CSV (needs ``pyarrow``: ``pip install 'ladle[batch]'``)
``.npy``           one record per row of the array, for a model with one input
=================  ==========================================================================

A file that cannot be read as a whole (unknown suffix, no CSV header, bytes that are not UTF-8 text
in a CSV, an unreadable Parquet or ``.npy`` file) raises ``InputFileError``, naming the line where
there is one.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..envelope import Arrays
from ..errors import InvalidRequestError, LadleError

__all__ = [
    "FORMATS",
    "InputFileError",
    "RecordChunk",
    "count_records",
    "error_body",
    "input_format",
    "read_chunks",
]

#: File suffix -> format name.
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".npy": "npy"}
_VECTOR_KEY = "input"  # the key of a whole-row vector when the model names no input


class InputFileError(InvalidRequestError):
    """The input file as a whole cannot be read (the message names the line where there is one)."""

    code = "invalid_input_file"


@dataclass(slots=True)
class RecordChunk:
    """``count`` consecutive records from index ``start`` (0-based): ``records`` (parsed; ``None``
    where ``errors`` says why a record is malformed), or ``arrays`` when the input is columnar."""

    start: int
    count: int
    records: list[Any] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    arrays: Arrays | None = None


def error_body(error: LadleError) -> dict[str, Any]:
    """The ``error`` object of a failed record: message, code, HTTP-style status and details."""
    return {"message": error.message, "code": error.code, "status": error.status, **error.details}


def input_format(path: Path) -> str:
    """The format of ``path`` by its suffix; ``InputFileError`` for one ladle does not read."""
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise InputFileError(
            f"input file {path.name!r}: unknown format; use one of {', '.join(sorted(FORMATS))}",
            formats=sorted(FORMATS),
        )
    return found


def parse_line(line: bytes) -> tuple[Any, str | None]:
    """One JSON Lines record: ``(record, None)`` or ``(None, why it is malformed)``."""
    if not line.strip():
        return None, "empty line: a record must be a JSON object"
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc}"
    if not isinstance(record, dict) or not record:
        return None, "a record must be a non-empty JSON object"
    return record, None


def count_records(path: Path) -> int:
    """How many records ``path`` holds (for progress; CSV rows with quoted line breaks count twice)."""
    kind = input_format(path)
    if kind == "npy":
        return int(_load_npy(path).shape[0])
    if kind == "parquet":
        return int(_parquet_file(path).metadata.num_rows)
    lines = 0
    last = b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return max(0, lines - 1) if kind == "csv" else lines


def read_chunks(
    path: Path,
    chunk_size: int,
    *,
    start: int = 0,
    input_names: Sequence[str] = (),
    id_field: str | None = "id",
) -> Iterator[RecordChunk]:
    """The records of ``path`` from index ``start`` on, ``chunk_size`` at a time."""
    kind = input_format(path)
    if kind == "jsonl":
        return _jsonl(path, chunk_size, start)
    if kind == "csv":
        return _csv(path, chunk_size, start, input_names, id_field)
    if kind == "parquet":
        return _parquet(path, chunk_size, start, input_names, id_field)
    return _npy(path, chunk_size, start, input_names)


def _jsonl(path: Path, chunk_size: int, start: int) -> Iterator[RecordChunk]:
    with path.open("rb") as f:
        for _ in range(start):
            if not f.readline():
                return
        index = start
        while lines := list(itertools.islice(f, chunk_size)):
            yield _parsed(index, lines)
            index += len(lines)


def _parsed(start: int, lines: list[bytes]) -> RecordChunk:
    """The chunk of JSON Lines ``lines``, the first being record ``start``. Well-formed chunks (the
    usual case) are parsed in one pass; one that is not is parsed again line by line."""
    try:
        records = list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:
        pass
    else:
        if all(type(record) is dict and record for record in records):
            return RecordChunk(start, len(lines), records)
    chunk = RecordChunk(start, len(lines))
    for offset, line in enumerate(lines):
        record, problem = parse_line(line)
        if problem is not None:
            chunk.errors[offset] = f"line {start + offset + 1}: {problem}"
        chunk.records.append(record)
    return chunk


class _Columns:
    """How the columns of a CSV or Parquet file become a record."""

    def __init__(
        self, header: Sequence[str], input_names: Sequence[str], id_field: str | None, where: str
    ) -> None:
        names = set(input_names)
        self.id_column = (
            header.index(id_field) if id_field and id_field in header and id_field not in names else None
        )
        columns = [c for i, c in enumerate(header) if i != self.id_column]
        if names and names <= set(columns):
            self.vector: str | None = None
            self.picked = [(header.index(n), n) for n in input_names]
        elif len(input_names) <= 1:
            self.vector = input_names[0] if input_names else _VECTOR_KEY
            self.picked = [(i, c) for i, c in enumerate(header) if i != self.id_column]
        else:
            raise InputFileError(
                f"{where}: the header must name the model's inputs {sorted(names)}, got {list(header)}",
                expected=sorted(names),
            )
        if not self.picked:
            raise InputFileError(f"{where}: the header names no input column")

    def record(self, row: Sequence[Any], id_field: str | None) -> dict[str, Any]:
        record: dict[str, Any] = (
            {self.vector: [row[i] for i, _ in self.picked]}
            if self.vector is not None
            else {name: row[i] for i, name in self.picked}
        )
        if self.id_column is not None and id_field:
            record[id_field] = row[self.id_column]
        return record


def _decoded(lines: Iterator[bytes], name: str) -> Iterator[str]:
    """Lines of a text file decoded one by one, so an undecodable one is named by its number."""
    for number, raw in enumerate(lines, 1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise InputFileError(f"input file {name!r}: line {number}: not UTF-8 text", line=number) from None


def _csv(
    path: Path, chunk_size: int, start: int, input_names: Sequence[str], id_field: str | None
) -> Iterator[RecordChunk]:
    with path.open("rb") as raw:
        reader = csv.reader(_decoded(raw, path.name))
        try:
            header = next(reader, None)
            if not header:
                raise InputFileError(f"input file {path.name!r}: line 1: a CSV file needs a header row")
            columns = _Columns(header, input_names, id_field, f"input file {path.name!r}: line 1")
            width = len(header)
            index = 0
            chunk = RecordChunk(start, 0)
            for row in reader:
                if index < start:
                    index += 1
                    continue
                if len(row) != width:
                    chunk.errors[chunk.count] = (
                        f"line {reader.line_num}: {len(row)} fields where the header has {width}"
                    )
                    chunk.records.append(None)
                else:
                    chunk.records.append(columns.record(row, id_field))
                chunk.count += 1
                index += 1
                if chunk.count == chunk_size:
                    yield chunk
                    chunk = RecordChunk(index, 0)
            if chunk.count:
                yield chunk
        except csv.Error as exc:
            raise InputFileError(
                f"input file {path.name!r}: line {reader.line_num}: {exc}", line=reader.line_num
            ) from None


def _parquet_file(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputFileError(
            "reading Parquet needs pyarrow: pip install 'ladle[batch]'", extra="batch"
        ) from None
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise InputFileError(f"input file {path.name!r}: not a readable Parquet file: {exc}") from None


def _parquet(
    path: Path, chunk_size: int, start: int, input_names: Sequence[str], id_field: str | None
) -> Iterator[RecordChunk]:
    import pyarrow as pa

    source = _parquet_file(path)
    header = list(source.schema_arrow.names)
    columns = _Columns(header, input_names, id_field, f"input file {path.name!r}")
    numeric = all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in source.schema_arrow.types)
    index = 0
    for batch in source.iter_batches(batch_size=chunk_size):
        if index + batch.num_rows <= start:
            index += batch.num_rows
            continue
        if index < start:
            batch = batch.slice(start - index)
            index = start
        if columns.vector is not None and columns.id_column is None and numeric:
            matrix = np.column_stack(
                [batch.column(i).to_numpy(zero_copy_only=False) for i, _ in columns.picked]
            )
            yield RecordChunk(index, batch.num_rows, arrays={columns.vector: matrix})
        else:
            rows = [list(row.values()) for row in batch.to_pylist()]
            yield RecordChunk(index, len(rows), [columns.record(row, id_field) for row in rows])
        index += batch.num_rows


def _load_npy(path: Path) -> np.ndarray[Any, Any]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputFileError(f"input file {path.name!r}: not a readable .npy array: {exc}") from None
    if not isinstance(array, np.ndarray) or array.ndim == 0:
        raise InputFileError(f"input file {path.name!r}: a .npy input needs at least one dimension")
    return array


def _npy(path: Path, chunk_size: int, start: int, input_names: Sequence[str]) -> Iterator[RecordChunk]:
    if len(input_names) > 1:
        raise InputFileError(
            f"input file {path.name!r}: a .npy array feeds a model with one input; this one takes "
            f"{list(input_names)}"
        )
    array = _load_npy(path)
    name = input_names[0] if input_names else _VECTOR_KEY
    for index in range(start, array.shape[0], chunk_size):
        rows = np.ascontiguousarray(array[index : index + chunk_size])
        yield RecordChunk(index, rows.shape[0], arrays={name: rows})
