"""The chunks of an input, planned before any is processed, so that each can be read on its own.

A chunk is `rows_per_shard` consecutive input records (the last one fewer), in the order `read_records` yields
them, so the plan depends only on the input and matches the local engine's streaming cut. A chunk may span files:
it holds one `Span` per file it takes records from. Where a file can be entered mid-way (JSON Lines and CSV, `.gz`
too), a span starts at the byte offset of its first record; in a JSON file it names how many records to read past.
Planning reads the inputs once, without parsing JSON Lines records.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

from pipeline.errors import RowError
from pipeline.stages.ingest import InputPath, Position, RawRecord, iter_records, record_starts
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


def plan_chunks(files: Mapping[InputPath, str], source: SourceConfig, rows_per_shard: int) -> list[Chunk]:
    """The run's chunks, in order (`files`: from `detect_formats`)."""
    chunks: list[Chunk] = []
    spans: list[Span] = []
    filled = 0  # records in the chunk being planned
    for path, fmt in files.items():
        count = 0  # records of this file in that chunk
        for index, start in enumerate(record_starts(path, source)):
            if count == 0:
                first = (index, start)
            count += 1
            filled += 1
            if filled == rows_per_shard:
                spans.append(Span(str(path), fmt, first[0], count, first[1]))
                chunks.append(Chunk(len(chunks), tuple(spans)))
                spans, count, filled = [], 0, 0
        if count:
            spans.append(Span(str(path), fmt, first[0], count, first[1]))
    if spans:
        chunks.append(Chunk(len(chunks), tuple(spans)))
    return chunks


def read_chunk(chunk: Chunk, source: SourceConfig,
               paths: Mapping[str, InputPath]) -> Iterator[tuple[RawRecord | RowError, str]]:
    """The chunk's records, as `read_records` yields them for the whole input (`paths`: each input file by the name
    its spans give, local or remote)."""
    for span in chunk.spans:
        records = iter_records(paths[span.path], source, span.start)
        if span.start is None:
            records = itertools.islice(records, span.skip, None)
        for item in itertools.islice(records, span.count):
            yield item, span.format
