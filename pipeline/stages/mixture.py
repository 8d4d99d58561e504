"""Sources and mixtures: which rows of each `sources:` entry go into the run, how often, and read with which settings.

Each source is counted first (`read`: its records, bad lines included, in file order), then drawn from:
- no rule: every row once; `max_rows: m`: min(m, read) rows;
- `epochs: e`: round(e x read) rows, halves up, with e taken as the decimal written (1.5 of 7 rows = 11 rows);
- `weight: w`: its share of `mixture.total_rows`, shares rounded by largest remainder so that they add up exactly
  (ties to the earlier source).
A source asked for `q` rows is read `q // read` times whole, in file order, and then once more for a seeded choice of
`q % read` of its rows (in file order, without repeats): a source with fewer rows than its share repeats them.

With `mixture.total_tokens` the weights share out tokens instead (by largest remainder too). A row's tokens are those
it is written with (0 when rejected or filtered), so they are known only after the chain: a counting pass runs the
run's own chain over one pass of every source first (`Mixture.counted`). A source asked for `t` tokens whose rows
write `s` is read `t // s` times whole, then once more for the fewest rows of a seeded order of its rows (those that
write tokens) whose tokens reach `t % s`, taken in file order: it writes at least `t` tokens, and less than one row
more.

Every choice depends only on `mixture.seed` and the source's position, so the rows drawn, their order and therefore
the shards are the same for any number of workers. Sources follow each other in the config's order (the trainer
shuffles).

Draw `d` of a record (the pass it was drawn in) is written with the id `ID#d` from the second draw on, so repeats
stay distinguishable in the shards and in rejects.jsonl; every draw of a record goes to the same split (`Row.split_key`).
A file belongs to one source: its rows are counted for that source in the manifest's `sources` list.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import numpy as np

from pipeline.errors import InputError, RowError
from pipeline.shards.format import SourceEntry
from pipeline.stages import adapt
from pipeline.stages.ingest import Inputs, RawRecord, detect_formats, file_identity, find_inputs, read_records
from pipeline.stages.row import Row
from pipeline.step import Chain, RowStep, Tally
from schemas.mixture import MixtureConfig, MixtureSource
from schemas.records import Conversation, Message


@dataclass(frozen=True)
class Drawn:
    """One draw of a record (or of a line that is not one) from source number `source`; `draw` counts from 1."""

    record: RawRecord | RowError
    source: int
    draw: int


# --- how many rows ---------------------------------------------------------------------------------------------------
def _exact(value: float) -> Fraction:
    """The number as written in the config (0.3 is 3/10, not the float nearest to it)."""
    return Fraction(str(value))


def _half_up(value: Fraction) -> int:
    return int((value + Fraction(1, 2)) // 1)


def weighted_shares(total: int, weights: Sequence[float]) -> list[int]:
    """`total` shared out in proportion to `weights` by largest remainder: the shares add up to `total` exactly."""
    exact = [_exact(w) for w in weights]
    whole = sum(exact)
    ideal = [total * w / whole for w in exact]
    shares = [int(share // 1) for share in ideal]
    by_remainder = sorted(range(len(ideal)), key=lambda k: (-(ideal[k] - shares[k]), k))
    for k in by_remainder[: total - sum(shares)]:
        shares[k] += 1
    return shares


def rows_to_draw(spec: MixtureSource, rows: int) -> int:
    """How many rows an unweighted source's rule asks for, given the rows it holds."""
    if spec.epochs is not None:
        return _half_up(_exact(spec.epochs) * rows)
    if spec.max_rows is not None:
        return min(spec.max_rows, rows)
    return rows


def _mask(rows: int, positions: np.ndarray) -> np.ndarray:
    mask = np.zeros(rows, dtype=bool)
    mask[positions] = True
    return mask


def chosen_rows(rows: int, count: int, seed: int, index: int) -> np.ndarray:
    """A seeded choice of `count` of `rows` positions, without repeats, as a mask over the positions."""
    return _mask(rows, np.random.default_rng([seed, index]).choice(rows, size=count, replace=False))


def rows_reaching(tokens: np.ndarray, count: int, seed: int, index: int) -> np.ndarray:
    """The fewest rows, in a seeded order of the rows that write tokens, whose `tokens` reach `count` (below their
    sum), as a mask over the positions."""
    order = np.random.default_rng([seed, index]).permutation(np.flatnonzero(tokens))
    taken = int(np.searchsorted(np.cumsum(tokens[order]), count)) + 1
    return _mask(len(tokens), order[:taken])


# --- finding, counting and drawing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One entry of `sources:`, its position, and the files its path names."""

    index: int
    spec: MixtureSource
    inputs: Inputs

    @property
    def name(self) -> str:
        return f"sources.{self.index} ({self.spec.path})"


def find_sources(specs: Sequence[MixtureSource]) -> list[Source]:
    """Each source's files (`find_inputs`); `InputError` when a source names no file or a file is in two sources."""
    sources = []
    owner: dict[str, Source] = {}
    for index, spec in enumerate(specs):
        try:
            source = Source(index, spec, find_inputs([spec.path], spec.storage_options))
        except InputError as e:
            raise InputError(f"sources.{index}: {e}") from None
        for path in source.inputs.files:
            first = owner.setdefault(file_identity(path), source)
            if first is not source:
                raise InputError(f"{path}: named by {first.name} and {source.name}; a file belongs to one source")
        sources.append(source)
    return sources


def all_inputs(sources: Sequence[Source]) -> Inputs:
    """The files and named paths of every source, in source order."""
    return Inputs([p for s in sources for p in s.inputs.files], [p for s in sources for p in s.inputs.named])


@dataclass(frozen=True, eq=False)
class PlannedSource:
    """A source with its files' formats, the rows it holds and the rows to draw from it: `passes` whole passes, then
    the rows of `part` (a mask over one pass) once more."""

    source: Source
    formats: dict[Path, str]
    rows: int
    passes: int = 0
    part: np.ndarray | None = None
    token_share: int | None = None

    @classmethod
    def of_rows(cls, source: Source, formats: dict[Path, str], rows: int, drawn: int, seed: int) -> "PlannedSource":
        """`drawn` rows: as many whole passes as fit, and a seeded choice of the rest."""
        if drawn and not rows:
            raise InputError(f"{source.name}: holds no rows, but {drawn} are to be drawn from it")
        passes, rest = divmod(drawn, rows) if rows else (0, 0)
        return cls(source, formats, rows, passes, chosen_rows(rows, rest, seed, source.index) if rest else None)

    def of_tokens(self, tokens: np.ndarray, share: int, seed: int) -> "PlannedSource":
        """`share` tokens, given the `tokens` each row of one pass writes: as many whole passes as fit, and the fewest
        seeded rows that reach the rest."""
        whole = int(tokens.sum())
        if share and not whole:
            raise InputError(f"{self.source.name}: writes no tokens ({self.rows} rows read, none written), but "
                             f"{share} tokens are to be drawn from it")
        passes, rest = divmod(share, whole) if whole else (0, 0)
        part = rows_reaching(tokens, rest, seed, self.source.index) if rest else None
        return dataclasses.replace(self, passes=passes, part=part, token_share=share)

    @property
    def drawn(self) -> int:
        return self.passes * self.rows + (int(self.part.sum()) if self.part is not None else 0)

    def records(self) -> Iterator[tuple[RawRecord | RowError, str]]:
        """One pass over the source's records, each with its file's format."""
        return read_records(self.formats, self.source.spec)


TokenCount = Callable[["Mixture"], Iterable[int]]
"""The tokens each record of a mixture's first pass (`Mixture.first_pass`) is written with (0 when the chain does not
write it), in `records` order."""

T = TypeVar("T")


class Mixture:
    """The planned draws of every source: the records to run, in order, and the manifest's `sources` list.
    `token_shares`: the tokens asked of each source, while they still have to be counted (`counted`)."""

    def __init__(self, planned: list[PlannedSource], seed: int, token_shares: list[int] | None = None):
        self.planned, self.seed, self.token_shares = planned, seed, token_shares

    @classmethod
    def plan(cls, sources: Sequence[Source], config: MixtureConfig) -> "Mixture":
        """Detect each file's format and count each source's rows (one pass over the inputs), then share out rows;
        tokens are shared out once counted (`counted`)."""
        counted = []
        for source in sources:
            formats = detect_formats(source.inputs.files, source.spec)
            rows = sum(1 for _ in read_records(formats, source.spec))
            counted.append((source, formats, rows))
        weights = [source.spec.weight for source in sources]
        if config.total_tokens is not None:
            return cls([PlannedSource(*entry) for entry in counted], config.seed,
                       weighted_shares(config.total_tokens, weights))
        shares = weighted_shares(config.total_rows, weights) if config.total_rows is not None else [None] * len(sources)
        return cls([PlannedSource.of_rows(source, formats, rows,
                                          share if share is not None else rows_to_draw(source.spec, rows), config.seed)
                    for (source, formats, rows), share in zip(counted, shares)], config.seed)

    def first_pass(self) -> "Mixture":
        """One whole pass over every source: what the counting pass of a mixture of tokens runs."""
        return Mixture([dataclasses.replace(p, passes=1, part=None, token_share=None) for p in self.planned],
                       self.seed)

    def counted(self, count: TokenCount) -> "Mixture":
        """The mixture with its token shares drawn, from `count` run on its first pass; a mixture of rows as it is."""
        if self.token_shares is None:
            return self
        tokens = np.fromiter(count(self.first_pass()), dtype=np.int64, count=sum(p.rows for p in self.planned))
        ends = np.cumsum([p.rows for p in self.planned])
        return Mixture([p.of_tokens(own, share, self.seed) for p, own, share in
                        zip(self.planned, np.split(tokens, ends[:-1]), self.token_shares)], self.seed)

    @property
    def formats(self) -> dict[Path, str]:
        """Every input file with its format, in source order."""
        return {path: fmt for p in self.planned for path, fmt in p.formats.items()}

    def records(self) -> Iterator[tuple[Drawn, str]]:
        """The drawn records with their file's format, source after source: whole passes, then the seeded part."""
        return ((Drawn(item, source, draw), fmt) for (item, fmt), source, draw in self.draws(PlannedSource.records))

    def draws(self, one_pass: Callable[[PlannedSource], Iterable[T]]) -> Iterator[tuple[T, int, int]]:
        """`(item, source, draw)` of every draw, in order, where `one_pass` gives one pass over a source's records
        (the records themselves, or where they are in its files: the Ray engine's planner)."""
        if self.token_shares is not None:
            raise ValueError("a mixture of tokens draws once its tokens are counted (Mixture.counted)")
        for p in self.planned:
            index = p.source.index
            for draw in range(1, p.passes + 1):
                for item in one_pass(p):
                    yield item, index, draw
            if p.part is not None:
                for position, item in enumerate(one_pass(p)):
                    if p.part[position]:
                        yield item, index, p.passes + 1

    def entries(self, files: Mapping[str, Counter[str]]) -> list[SourceEntry]:
        """The manifest's `sources` list from the run's counts per input file (`Stats.files`)."""
        entries = []
        for p in self.planned:
            counts = sum((files.get(str(path), Counter()) for path in p.formats), Counter())
            entries.append(SourceEntry(path=p.source.spec.path, read=p.rows, drawn=p.drawn, written=counts["written"],
                                       rejected=counts["rejected"], filtered=counts["filtered"],
                                       tokens=counts["tokens"], trained_tokens=counts["trained_tokens"],
                                       token_share=p.token_share))
        return entries


def row_tokens(chain: Chain, batch: list[tuple[Drawn, str]]) -> list[int]:
    """The tokens each record of `batch` is written with by `chain` (0 when rejected or filtered), in order: the
    counting pass of a mixture of `total_tokens` (nothing is written)."""
    written = {(row.conversation.source, row.conversation.row): len(row.input_ids) for row in chain(batch).items}
    return [written.get((drawn.record.source, drawn.record.row), 0) for drawn, _ in batch]


# --- the adapt step of a mixture -------------------------------------------------------------------------------------
def draw_id(record_id: str, draw: int) -> str:
    """The id of a record's `draw`-th draw: the record's own for the first, `ID#d` after."""
    return record_id if draw == 1 else f"{record_id}#{draw}"


def with_default_system(conversation: Conversation, text: str | None) -> Conversation:
    """The conversation with a system message `text` first, unless it has a system message (or no text is given)."""
    if text is None or any(m.role == "system" for m in conversation.messages):
        return conversation
    return conversation.model_copy(update={"messages": (Message(role="system", content=text), *conversation.messages)})


class DrawnAdapt(RowStep):
    """The adapt step of a run of `sources`: each drawn record adapted with its source's settings, given the
    source's `default_system`, and the id of its draw; a line that is not a record is rejected under that id."""

    name = "adapt"

    def __init__(self, sources: Sequence[MixtureSource]):
        self.sources = tuple(sources)

    def row(self, item: tuple[Drawn, str], tally: Tally) -> Row | None:
        drawn, fmt = item
        spec = self.sources[drawn.source]
        record = drawn.record
        conversation = record if isinstance(record, RowError) else adapt.to_conversation(record, fmt, source=spec)
        if isinstance(conversation, RowError):
            if conversation.id is not None:
                conversation = dataclasses.replace(conversation, id=draw_id(conversation.id, drawn.draw))
            tally.drop(conversation)
            return None
        conversation = with_default_system(conversation, spec.default_system)
        first_id = conversation.id
        conversation = conversation.model_copy(update={"id": draw_id(first_id, drawn.draw)})
        return Row(conversation, split_key=first_id)
