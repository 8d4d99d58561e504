"""The chunks of an input, planned before any is processed, so that each can be read on its own.

A chunk is `rows_per_shard` consecutive input records (the last one fewer), in the order `read_records` yields
them, so the plan depends only on the input and matches the local engine's streaming cut. A chunk may span files:
it holds one `Span` per file it takes records from. Where a file can be entered mid-way (JSON Lines and CSV, `.gz`
too), a span starts at the byte offset of its first record; in a JSON file it names how many records to read past.
Planning reads the inputs once, without parsing JSON Lines records.

A run of `sources:` is cut the same way, over its drawn records (`Mixture.records`): each span then names its source
and draw, and a span of a source's seeded part names the records it picks (at most a chunk's worth), so a worker
reads the drawn records themselves. Planning reads each source once per pass drawn from it.

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
from pipeline.stages.mixture import Drawn, Mixture
from schemas.sources import SourceConfig


@dataclass(frozen=True)
class Span:
    """`count` records of one file: from `start` when the file can be entered there, else after the file's first
    `skip` records; with `picks`, only the records of those indexes in the file (the first is `skip`). In a run of
    `sources:`, `source` is the index of the source the file belongs to and `draw` the draw of its records."""

    path: str
    format: str
    skip: int
    count: int
    start: Position | None
    source: int = 0
    draw: int | None = None
    picks: tuple[int, ...] | None = None


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
        spans = tuple(Span(**{**s, "start": Position(*s["start"]) if s["start"] else None,
                              "picks": tuple(s["picks"]) if s["picks"] is not None else None}) for s in data["spans"])
        return cls(data["index"], spans)


class Place(NamedTuple):
    """Where one input record is, found without parsing it: its file, the file's format, its index in the file and,
    in a line-based file, where it starts; in a run of `sources:`, its source and draw."""

    path: str
    format: str
    index: int
    start: Position | None
    source: int = 0
    draw: int | None = None


Item = Place | tuple[RawRecord | RowError, str]
"""One input record, as the process that cuts the input hands it on: where it is, or the record read already."""

Piece = Span | list[tuple[RawRecord | RowError, str]]
"""Part of a batch: records a worker reads itself, or records read already."""


def plan_chunks(files: Mapping[InputPath, str], source: SourceConfig, rows_per_shard: int) -> list[Chunk]:
    """The run's chunks, in order (`files`: from `detect_formats`)."""
    return _chunked(_places(files, source), rows_per_shard)


def plan_drawn_chunks(mixture: Mixture, rows_per_shard: int) -> list[Chunk]:
    """The chunks of a run of `sources:`, in order: `mixture`'s drawn records, cut as `plan_chunks` cuts inputs."""
    drawn = mixture.draws(lambda planned: _places(planned.formats, planned.source.spec))
    return _chunked((place._replace(source=source, draw=draw) for place, source, draw in drawn), rows_per_shard)


def _places(files: Mapping[InputPath, str], source: SourceConfig) -> Iterator[Place]:
    for path, fmt in files.items():
        for index, start in enumerate(record_starts(path, source)):
            yield Place(str(path), fmt, index, start)


def _chunked(places: Iterable[Place], rows_per_shard: int) -> list[Chunk]:
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
            yield from _places({path: fmt}, source)
        else:
            for item in iter_records(path, source):
                yield item, fmt


def _entered_by_workers(path: InputPath) -> bool:
    """A regular local file read line by line without decompressing: entering it mid-way costs a seek."""
    return (isinstance(path, Path) and path.is_file() and container_kind(path) in ("jsonl", "csv")
            and not path.name.lower().endswith(".gz"))


def pack(items: Sequence[Item]) -> list[Piece]:
    """A run of items as pieces: consecutive places in one file (of one draw) joined into one `Span`, records kept
    as they are."""
    pieces: list[Piece] = []
    for key, group in itertools.groupby(items, key=_span_key):
        if key is None:
            pieces.append(list(group))
        else:
            places = list(group)
            first, indexes = places[0], tuple(place.index for place in places)
            picks = None if indexes == tuple(range(first.index, first.index + len(places))) else indexes
            pieces.append(Span(first.path, first.format, first.index, len(places), first.start, first.source,
                               first.draw, picks))
    return pieces


def _span_key(item: Item) -> tuple[str, int, int | None] | None:
    """Places of one span share this: their file, source and draw."""
    return (item.path, item.source, item.draw) if isinstance(item, Place) else None


def read_pieces(pieces: Iterable[Piece], source: SourceConfig) -> list[tuple[RawRecord | RowError, str]]:
    """The records of a packed batch of local files, as `read_records` yields them."""
    items: list[tuple[RawRecord | RowError, str]] = []
    for piece in pieces:
        items.extend(_read_span(piece, source, Path(piece.path)) if isinstance(piece, Span) else piece)
    return items


def read_chunk(chunk: Chunk, sources: Sequence[SourceConfig],
               paths: Mapping[str, InputPath]) -> Iterator[tuple[RawRecord | RowError | Drawn, str]]:
    """The chunk's records, as `read_records` yields them for the whole input, or for a run of `sources:` as
    `Mixture.records` yields them (`sources`: the settings each span's `source` names, the run's one `source` for
    `inputs:`; `paths`: each input file by the name its spans give, local or remote)."""
    for span in chunk.spans:
        items = _read_span(span, sources[span.source], paths[span.path])
        if span.draw is None:
            yield from items
        else:
            yield from ((Drawn(record, span.source, span.draw), fmt) for record, fmt in items)


def _read_span(span: Span, source: SourceConfig, path: InputPath) -> Iterator[tuple[RawRecord | RowError, str]]:
    records = iter_records(path, source, span.start)
    if span.start is None:
        records = itertools.islice(records, span.skip, None)
    if span.picks is None:
        taken = itertools.islice(records, span.count)
    else:
        picked = set(span.picks)
        taken = (record for index, record in zip(range(span.skip, span.picks[-1] + 1), records) if index in picked)
    for item in taken:
        yield item, span.format
