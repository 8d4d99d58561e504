"""The chunks of an input, planned before any is processed, so that each can be read on its own.

A chunk is `rows_per_shard` consecutive input records (the last one fewer), in the order `read_records` yields
them, so the plan depends only on the input and matches the local engine's streaming cut. A chunk may span files:
it holds one `Span` per file it takes records from. Where a file can be entered mid-way (JSON Lines and CSV, `.gz`
too), a span starts at the byte offset of its first record; in a JSON file it names how many records to read past.
Planning reads the inputs once, without parsing JSON Lines records.

The local engine cuts its batches the same way, as it goes: the parent sends a worker where a batch starts in a
plain JSON Lines or CSV file and the worker reads and parses the rows, so that the parent's work per row stays a
small part of a worker's and more workers keep going faster.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from pipeline.engines.chunk import batches
from pipeline.errors import RowError
from pipeline.stages.ingest import InputPath, Position, RawRecord, container_kind, iter_records, record_starts
from schemas.sources import SourceConfig


@dataclass(frozen=True)
class Span:
    """`count` records of one file: from `start` when the file can be entered there, else after the file's first
    `skip` records."""

    path: str
    format: str
    skip: int
    count: int
    start: Position | None


@dataclass(frozen=True)
class Chunk:
    """One unit of work: the run's input records from `index * rows_per_shard` on, from one or more files."""

    index: int
    spans: tuple[Span, ...]

    @property
    def rows(self) -> int:
        return sum(span.count for span in self.spans)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Chunk":
        data = json.loads(text)
        spans = tuple(Span(**{**s, "start": Position(*s["start"]) if s["start"] else None}) for s in data["spans"])
        return cls(data["index"], spans)


class Place(NamedTuple):
    """Where one input record is, found without parsing it: its file, the file's format, its index in the file and,
    in a line-based file, where it starts."""

    path: str
    format: str
    index: int
    start: Position | None


Item = Place | tuple[RawRecord | RowError, str]
"""One input record, as the process that cuts the input hands it on: where it is, or the record read already."""

Piece = Span | list[tuple[RawRecord | RowError, str]]
"""Part of a batch: records a worker reads itself, or records read already."""


def plan_chunks(files: Mapping[InputPath, str], source: SourceConfig, rows_per_shard: int) -> list[Chunk]:
    """The run's chunks, in order (`files`: from `detect_formats`)."""
    places = _items(files, source, lambda path: True)
    return [Chunk(index, tuple(pack(group))) for index, group in enumerate(batches(places, rows_per_shard))]


def input_items(files: Mapping[InputPath, str], source: SourceConfig, *, by_workers: bool) -> Iterator[Item]:
    """The run's input in `read_records` order, for the local engine: with `by_workers`, the place of each record of
    a plain local JSON Lines or CSV file, which a worker enters at a byte offset to read its batch itself, so this
    process does not parse it; the records of every other file (JSON arrays, `.gz`, columnar and remote files, read
    from their start) and, without `by_workers`, of all files, read here."""
    return _items(files, source, lambda path: by_workers and _entered_by_workers(path))


def _items(files: Mapping[InputPath, str], source: SourceConfig, placed: Callable[[InputPath], bool]) -> Iterator[Item]:
    for path, fmt in files.items():
        if placed(path):
            for index, start in enumerate(record_starts(path, source)):
                yield Place(str(path), fmt, index, start)
        else:
            for item in iter_records(path, source):
                yield item, fmt


def _entered_by_workers(path: InputPath) -> bool:
    """A regular local file read line by line without decompressing: entering it mid-way costs a seek."""
    return (isinstance(path, Path) and path.is_file() and container_kind(path) in ("jsonl", "csv")
            and not path.name.lower().endswith(".gz"))


def pack(items: Sequence[Item]) -> list[Piece]:
    """A run of items as pieces: consecutive places in one file joined into one `Span`, records kept as they are."""
    pieces: list[Piece] = []
    for path, group in itertools.groupby(items, key=lambda item: item.path if isinstance(item, Place) else None):
        if path is None:
            pieces.append(list(group))
        else:
            first, *rest = group
            pieces.append(Span(path, first.format, first.index, 1 + len(rest), first.start))
    return pieces


def read_pieces(pieces: Iterable[Piece], source: SourceConfig) -> list[tuple[RawRecord | RowError, str]]:
    """The records of a packed batch of local files, as `read_records` yields them."""
    items: list[tuple[RawRecord | RowError, str]] = []
    for piece in pieces:
        items.extend(_read_span(piece, source, Path(piece.path)) if isinstance(piece, Span) else piece)
    return items


def read_chunk(chunk: Chunk, source: SourceConfig,
               paths: Mapping[str, InputPath]) -> Iterator[tuple[RawRecord | RowError, str]]:
    """The chunk's records, as `read_records` yields them for the whole input (`paths`: each input file by the name
    its spans give, local or remote)."""
    for span in chunk.spans:
        yield from _read_span(span, source, paths[span.path])


def _read_span(span: Span, source: SourceConfig, path: InputPath) -> Iterator[tuple[RawRecord | RowError, str]]:
    records = iter_records(path, source, span.start)
    if span.start is None:
        records = itertools.islice(records, span.skip, None)
    for item in itertools.islice(records, span.count):
        yield item, span.format
