"""The local engine: the input streamed once by this process, cut into chunks as it goes, each chunk's batches run
in worker processes (`pipeline.workers.BatchPool`) and written here in input order."""
from __future__ import annotations

import functools
import gc
import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.engines.chunk import BatchTask, Records, batches, build_task, process_chunk, write_chunk
from pipeline.progress import progress
from pipeline.stages.mixture import row_tokens
from pipeline.workers import BatchPool
from schemas.config import PreprocessConfig


def run_local(config: PreprocessConfig, task: BatchTask, records: Records, work: Path,
              finished: Callable[[int], bool]) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(index, receipt)` of each chunk of `records` (the run's input, streamed) not `finished` yet, in chunk order,
    its files written into `work`."""
    with _executor(config, task) as pool:
        process = functools.partial(process_chunk, pool.map, batch_size=config.output.batch_size)
        for index, chunk in enumerate(_chunks(progress(records, desc="preprocess"), config.output.rows_per_shard)):
            if finished(index):
                for _ in chunk:  # already written: read past its rows
                    pass
                continue
            yield index, write_chunk(work, index, process, chunk)


def count_row_tokens(config: PreprocessConfig, task: BatchTask, records: Records) -> Iterator[int]:
    """A mixture's counting pass on the worker pool: each record's tokens as written (0 when rejected or filtered)."""
    with _executor(config, task) as pool:
        batched = batches(progress(records, desc="count tokens"), config.output.batch_size)
        for counts in pool.map(batched, using=_row_tokens):
            yield from counts


def _row_tokens(task: BatchTask, records: list) -> list[int]:
    """A worker's part of the counting pass, with the worker's own chain."""
    return row_tokens(task.chain, records)


@contextmanager
def _executor(config: PreprocessConfig, task: BatchTask) -> Iterator[BatchPool]:
    """The worker pool for the run.

    Everything alive now (modules, tokenizer, template) lives for the whole run: `gc.freeze` takes it out of the
    garbage collector's full passes, which otherwise rescan it again and again while rows are processed (about a
    tenth of the run's time), and keeps forked workers from copying the pages those passes touch. A caller that
    froze objects itself manages freezing: then nothing is frozen or unfrozen here."""
    froze = gc.get_freeze_count() == 0
    if froze:
        gc.freeze()
    try:
        with BatchPool(task, workers=config.output.workers, build=functools.partial(build_task, config)) as pool:
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
