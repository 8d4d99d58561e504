"""The local engine: the input cut into chunks by this process as it goes, each chunk's batches run in worker
processes (`pipeline.workers.BatchPool`) and written here in input order. Where a worker can read a batch's rows
itself (plain JSON Lines and CSV files: `plan.input_items`), it is sent only where they are, so this process neither
parses the rows nor pickles them, and its share of the work stays small however many workers there are."""
from __future__ import annotations

import functools
import gc
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.engines.chunk import BatchTask, ChunkFiles, ChunkResult, Records, batches, build_task
from pipeline.engines.plan import Item, Piece, pack, read_pieces
from pipeline.progress import progress
from pipeline.stages.mixture import row_tokens
from pipeline.workers import BatchPool
from schemas.config import PreprocessConfig
from schemas.sources import SourceConfig


def run_local(config: PreprocessConfig, pool: BatchPool, items: Iterable[Item], work: Path,
              finished: Callable[[int], bool]) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(index, receipt)` of each chunk of `items` (the run's input, streamed: records, or where they are) not
    `finished` yet, in chunk order, its files written into `work`.

    The batches of every chunk go to the workers as one stream, so the workers stay busy across a chunk's end
    (the next chunk's batches are already running while the last of this one's finish); the results come back in
    input order, and each goes to the files of the chunk it was cut from."""
    sent: deque[int] = deque()  # the chunk of each batch handed to the pool and not yet back

    def batches_to_run() -> Iterator[list[Piece] | Records]:
        for index, chunk in enumerate(_chunks(progress(items, desc="preprocess"), config.output.rows_per_shard)):
            if finished(index):
                for _ in chunk:  # already written: read past its rows
                    pass
                continue
            for batch in batches(chunk, config.output.batch_size):
                sent.append(index)
                yield pack(batch)

    files: ChunkFiles | None = None
    for part in pool.map(batches_to_run()):
        index = sent.popleft()
        if files is not None and files.index != index:
            yield files.index, files.close()
            files = None
        files = files or ChunkFiles(work, index)
        files.add(part)
    if files is not None:
        yield files.index, files.close()


class BatchReader:
    """What a worker runs on one packed batch: reads the rows it was sent the places of, then runs the task."""

    def __init__(self, task: BatchTask, source: SourceConfig):
        self.task, self.source = task, source

    def __call__(self, pieces: list[Piece]) -> ChunkResult:
        return self.task(read_pieces(pieces, self.source))


def build_reader(config: PreprocessConfig) -> BatchReader:
    """A spawned worker's own `BatchReader`, built from the config alone."""
    return BatchReader(build_task(config), config.source)


def count_row_tokens(config: PreprocessConfig, pool: BatchPool, records: Records) -> Iterator[int]:
    """A mixture's counting pass on the run's worker pool: each record's tokens as written (0 when rejected or
    filtered)."""
    batched = batches(progress(records, desc="count tokens"), config.output.batch_size)
    for counts in pool.map(batched, using=_row_tokens):
        yield from counts


def _row_tokens(reader: BatchReader, records: list) -> list[int]:
    """A worker's part of the counting pass, with the worker's own chain."""
    return row_tokens(reader.task.chain, records)


@contextmanager
def worker_pool(config: PreprocessConfig, task: BatchTask) -> Iterator[BatchPool]:
    """The worker pool for the run (its counting pass, if any, and its chunks), each worker running a
    `BatchReader` around `task`.

    Everything alive now (modules, tokenizer, template) lives for the whole run: `gc.freeze` takes it out of the
    garbage collector's full passes, which otherwise rescan it again and again while rows are processed (about a
    tenth of the run's time), and keeps forked workers from copying the pages those passes touch. A caller that
    froze objects itself manages freezing: then nothing is frozen or unfrozen here."""
    froze = gc.get_freeze_count() == 0
    if froze:
        gc.freeze()
    try:
        with BatchPool(BatchReader(task, config.source), workers=config.output.workers,
                       build=functools.partial(build_reader, config)) as pool:
            yield pool
    finally:
        if froze:
            gc.unfreeze()


def _chunks(items: Iterable, size: int) -> Iterator[Iterator]:
    """Lazy chunks of `size` items; each must be consumed before the next is taken."""
    iterator = iter(items)
    while (first := next(iterator, _END)) is not _END:
        yield itertools.chain([first], itertools.islice(iterator, size - 1))


_END = object()
