"""One chunk of input records turned into its files: the preprocess chain run on its batches, the samples appended
to one shard per split, its rejects and warnings written beside them, and a small receipt that names them with
their checksums and counts. Every engine writes chunks this way, so the files are the same bytes whichever ran them.
"""
from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.chain import Toolkit, build_chain
from pipeline.checksums import sha256_file
from pipeline.errors import RowError
from pipeline.outputs import write_atomic
from pipeline.shards.format import IGNORE_INDEX
from pipeline.shards.writer import Sample, SampleTable, ShardWriter
from pipeline.stages.ingest import RawRecord
from pipeline.stages.split import SPLITS
from pipeline.stats import Stats
from pipeline.step import Chain, Outcome
from schemas.config import PreprocessConfig

Records = Iterable[tuple[RawRecord | RowError, str]]


@dataclass
class ChunkResult:
    """What one batch, then one chunk, of input rows produced. A batch collects its samples in `samples`, then
    `seal` turns them into one Arrow table per split (`tables`): that is what travels to the writing process."""

    samples: dict[str, list[Sample]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    tables: dict[str, SampleTable] = field(default_factory=dict)
    rejects: list[RowError] = field(default_factory=list)
    dropped: list[RowError] = field(default_factory=list)
    warnings: list[RowError] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)

    def absorb(self, part: "ChunkResult") -> None:
        """Add a batch's rows and counts to this chunk's (its samples have been written already)."""
        self.rejects.extend(part.rejects)
        self.dropped.extend(part.dropped)
        self.warnings.extend(part.warnings)
        self.stats += part.stats

    def seal(self) -> "ChunkResult":
        """Build the tables here, in the process that made the samples, and drop the samples."""
        self.tables = {split: SampleTable.of(samples) for split, samples in self.samples.items() if samples}
        self.samples = {s: [] for s in SPLITS}
        return self


class BatchTask:
    """What a worker runs on one batch of `(record, format)` pairs: the chain, its rows turned into samples by
    split. Built once per process."""

    def __init__(self, chain: Chain):
        self.chain = chain

    def __call__(self, records: list[tuple[RawRecord | RowError, str]]) -> ChunkResult:
        outcome = self.chain(records)
        result = ChunkResult(rejects=outcome.rejected, dropped=outcome.filtered, warnings=outcome.warnings,
                             stats=outcome.stats())
        result.stats.files = _counts_by_file(outcome)
        for row in outcome.items:
            conversation = row.conversation
            result.samples[row.split].append(
                Sample(row.input_ids, row.labels, conversation.id, conversation.source, conversation.row))
        return result.seal()


def _counts_by_file(outcome: Outcome) -> dict[str, Counter[str]]:
    """Per input file: the batch's rows written, rejected and filtered, and the tokens and trained tokens written."""
    files: dict[str, Counter[str]] = {}
    for row in outcome.items:
        counts = files.setdefault(row.conversation.source, Counter())
        counts.update(written=1, tokens=len(row.input_ids),
                      trained_tokens=int(np.count_nonzero(row.labels != IGNORE_INDEX)))
    for kind, errors in (("rejected", outcome.rejected), ("filtered", outcome.filtered)):
        for error in errors:
            files.setdefault(error.source, Counter())[kind] += 1
    return files


def build_task(config: PreprocessConfig) -> BatchTask:
    """A process's own task, built from the config alone (a spawned worker, a Ray worker)."""
    return BatchTask(build_chain(config, Toolkit.load(config)))


BatchMap = Callable[[Iterable[list]], Iterator[ChunkResult]]
"""Runs the task on each batch, results in input order: `BatchPool.map`, or plain `map` in one process."""


def batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


class ChunkFiles:
    """Chunk `index`'s files in `work`, written batch result by batch result in input order (memory holds a few
    batches, whatever the chunk's size); `close` writes its rejects and warnings and gives its receipt: the files
    with their checksums, and the chunk's counts."""

    def __init__(self, work: Path, index: int):
        self.work, self.index = work, index
        self.writers = {split: ShardWriter(work / f"chunk-{index:05d}.{split}.arrow") for split in SPLITS}
        self.result = ChunkResult()

    def add(self, part: ChunkResult) -> None:
        for split, table in part.tables.items():
            self.writers[split].write(table)
        self.result.absorb(part)

    def close(self) -> dict[str, Any]:
        shards = {split: info.to_json() for split, writer in self.writers.items() if (info := writer.close()) is not None}
        name = f"chunk-{self.index:05d}"
        rejects, warnings = self.work / f"{name}.rejects.jsonl", self.work / f"{name}.warnings.jsonl"
        write_atomic(rejects, _jsonl(self.result.rejects + self.result.dropped))
        write_atomic(warnings, _jsonl(self.result.warnings))
        return {
            "shards": shards,
            "rejects": rejects.name,
            "rejects_sha256": sha256_file(rejects),
            "warnings": warnings.name,
            "warnings_sha256": sha256_file(warnings),
            "stats": self.result.stats.to_journal(),
        }


def write_chunk(work: Path, index: int, run: BatchMap, records: Records, batch_size: int) -> dict[str, Any]:
    """Chunk `index`, all of it in hand, run batch by batch (`run`: the batch map) into its files; its receipt."""
    files = ChunkFiles(work, index)
    for part in run(batches(records, batch_size)):
        files.add(part)
    return files.close()


def _jsonl(errors: list[RowError]) -> bytes:
    return "".join(json.dumps(e.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for e in errors).encode("utf-8")
