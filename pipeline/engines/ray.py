"""The Ray Data engine: the driver plans the chunks (`plan`), and each chunk is one call of a `ChunkWorker`, which
reads the chunk from the inputs itself, runs the preprocess chain on it and writes its files into the journal
directory, returning only a small receipt. The driver journals the receipts; the output is then put in place as the
local engine's is, so the bytes are the same. A run of `sources:` is planned over its drawn records
(`plan.plan_drawn_chunks`); the counting pass of a mixture of tokens is a map over the chunks of its first pass
(`count_row_tokens`), each returning the tokens of its rows.

Chunks, not Ray's blocks, decide the files: every chunk is its own block and its own batch (`batch_size=1`), whatever
Ray's executor does with block sizes. A worker process that dies is restarted by Ray and its chunk run again (the
chunk's files are written under temporary names and renamed, so a half-written chunk leaves nothing behind that
counts). Every path (inputs, tokenizer, output) must be the same path on every node: one machine, or a shared
filesystem.
"""
from __future__ import annotations

import functools
import gc
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.engines.chunk import batches, build_task, write_chunk
from pipeline.engines.plan import Chunk, plan_drawn_chunks, read_chunk
from pipeline.errors import PipelineError
from pipeline.progress import progress
from pipeline.stages.ingest import InputPath
from pipeline.stages.mixture import Mixture, row_tokens
from schemas.config import PreprocessConfig


class ChunkWorker:
    """One Ray worker: builds the tokenizer, template, encoder and chain once, then writes chunk after chunk."""

    def __init__(self, config: PreprocessConfig, paths: Mapping[str, InputPath], work: str, cwd: str):
        os.chdir(cwd)  # inputs and the tokenizer may be named relative to where the run was started
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one CPU per worker: encode on one thread, as local workers do
        self.config = config  # pickled as it is: a JSON round trip would mark every default as set
        self.paths, self.work = paths, Path(work)
        self.sources = self.config.sources or (self.config.source,)  # the settings a span's `source` names
        self.task = build_task(self.config)
        self.run = functools.partial(map, self.task)  # one process: the batches in turn
        gc.freeze()  # the toolkit lives as long as the worker: keep it out of the collector's full passes

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        indexes, receipts = [], []
        for text in batch["chunk"]:
            chunk = Chunk.from_json(str(text))
            indexes.append(chunk.index)
            receipts.append(json.dumps(write_chunk(self.work, chunk.index, self.run, self.records(chunk),
                                                     self.config.output.batch_size)))
        return {"index": indexes, "result": receipts}

    def records(self, chunk: Chunk) -> Iterator[tuple[Any, str]]:
        """The chunk's records, read by this worker from the inputs."""
        return read_chunk(chunk, self.sources, self.paths)


class TokenCounter(ChunkWorker):
    """One Ray worker of a mixture's counting pass: the tokens each row of a chunk is written with, nothing
    written."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        indexes, counts = [], []
        for text in batch["chunk"]:
            chunk = Chunk.from_json(str(text))
            indexes.append(chunk.index)
            counts.append(json.dumps([count for records in batches(self.records(chunk), self.config.output.batch_size)
                                      for count in row_tokens(self.task.chain, records)]))
        return {"index": indexes, "result": counts}


def run_ray(config: PreprocessConfig, chunks: list[Chunk], files: Mapping[InputPath, str], work: Path,
            finished: Callable[[int], bool]) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(index, receipt)` of each of the planned `chunks` not `finished` yet, as they finish, their files written
    into `work` (`files`: every input file; Ray joined or started by `connected`)."""
    pending = [chunk for chunk in chunks if not finished(chunk.index)]
    for index, receipt in _map_chunks(ChunkWorker, config, pending, files, work, desc="preprocess"):
        yield index, json.loads(receipt)


def count_row_tokens(config: PreprocessConfig, files: Mapping[InputPath, str], work: Path,
                     first_pass: Mixture) -> list[int]:
    """A mixture's counting pass on Ray: the tokens each record of `first_pass` is written with (0 when rejected or
    filtered), in order, each chunk of it counted by a worker that reads it itself."""
    counts = dict(_map_chunks(TokenCounter, config, plan_drawn_chunks(first_pass, config.output.rows_per_shard),
                              files, work, desc="count tokens"))
    return [count for index in sorted(counts) for count in json.loads(counts[index])]


def _map_chunks(worker: type[ChunkWorker], config: PreprocessConfig, chunks: list[Chunk],
                files: Mapping[InputPath, str], work: Path, *, desc: str) -> Iterator[tuple[int, str]]:
    """`(index, result)` of each chunk run by a pool of `worker`s, as they finish: each chunk its own block and
    batch."""
    if not chunks:
        return
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False  # our own bar counts chunks
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    items = ray.data.from_items([{"chunk": chunk.to_json()} for chunk in chunks], override_num_blocks=len(chunks))
    results = items.map_batches(
        worker, fn_constructor_args=(config, {str(p): p for p in files}, str(work.resolve()), os.getcwd()),
        batch_size=1, compute=ray.data.ActorPoolStrategy(size=config.output.workers))
    try:
        for row in progress(results.iter_rows(), desc=desc, unit="chunks"):
            yield int(row["index"]), str(row["result"])
    except ray.exceptions.RayError as e:
        raise PipelineError(f"a Ray worker failed; rerun to resume from the finished chunks: {_cause(e)}") from None


@contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Ray, joined or started for the run. A Ray this process already runs (ray.init by the caller) is used as it
    is; one started here is shut down after."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = {"address": address} if address else {"address": "local", "include_dashboard": False}
    ray.init(**options, logging_level=logging.WARNING, configure_logging=True)
    try:
        yield
    finally:
        ray.shutdown()


def _cause(error: Exception) -> str:
    """The first line of what went wrong inside the worker, without Ray's traceback."""
    cause = getattr(error, "cause", None) or error
    return str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
