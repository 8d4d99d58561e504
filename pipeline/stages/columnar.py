"""Columnar inputs: Parquet files and Arrow IPC files (file or stream format, as `datasets.save_to_disk` writes them)
-> one record per table row, read a record batch at a time so memory stays flat whatever the file size.

A row becomes the record a JSON line holding the same values would be: `{column: value}`, structs as objects, lists as
arrays. Arrow cannot tell a missing key from a null one (every row of a column has every field of its struct type), so
a null column or struct field is left out of the record, as a JSON writer that never wrote it would have it; nulls
inside lists stay. Rows are numbered from 1 within their file.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

COLUMNAR_SUFFIXES = (".parquet", ".arrow")
_BATCH_ROWS = 1024  # Parquet rows decoded at a time; Arrow IPC files keep the batches they were written with
_ARROW_FILE_MAGIC = b"ARROW1"


def iter_rows(f: IO[bytes], kind: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row, record) for every row of an open `parquet` or `arrow` file, in file order. `pyarrow.ArrowException` or
    `OSError` when the file is not one."""
    row = 0
    for batch in _batches(f, kind):
        for values in batch.to_pylist():
            row += 1
            yield row, _without_nulls(values)


def _batches(f: IO[bytes], kind: str) -> Iterator[pa.RecordBatch]:
    if kind == "parquet":
        yield from pq.ParquetFile(f).iter_batches(batch_size=_BATCH_ROWS)
        return
    if f.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC:  # the random-access file format; else a stream
        f.seek(0)
        reader = pa.ipc.open_file(f)
        yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
        return
    f.seek(0)
    yield from pa.ipc.open_stream(f)


def _without_nulls(value: Any) -> Any:
    """`value` with the null members of every object left out (see the module docstring)."""
    if isinstance(value, dict):
        return {key: _without_nulls(v) for key, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
