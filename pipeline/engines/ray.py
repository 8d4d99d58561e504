"""The Ray Data engine: the driver plans the chunks (`plan`), and each chunk is one call of a `ChunkWorker`, which
reads the chunk from the inputs itself, runs the preprocess chain on it and writes its files into the journal
directory, returning only a small receipt. The driver journals the receipts; the output is then put in place as the
local engine's is, so the bytes are the same.

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

from pipeline.engines.chunk import build_task, write_chunk
from pipeline.engines.plan import Chunk, plan_chunks, read_chunk
from pipeline.errors import PipelineError
from pipeline.progress import progress
from pipeline.stages.ingest import InputPath
from schemas.config import PreprocessConfig


class ChunkWorker:
    """One Ray worker: builds the tokenizer, template, encoder and chain once, then writes chunk after chunk."""

    def __init__(self, config_json: str, paths: Mapping[str, InputPath], work: str, cwd: str):
        os.chdir(cwd)  # inputs and the tokenizer may be named relative to where the run was started
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one CPU per worker: encode on one thread, as local workers do
        self.config = PreprocessConfig.model_validate_json(config_json)
        self.paths, self.work = paths, Path(work)
        task = build_task(self.config)
        self.run = functools.partial(map, task)  # one process: the batches in turn
        gc.freeze()  # the toolkit lives as long as the worker: keep it out of the collector's full passes

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        indexes, receipts = [], []
        for text in batch["chunk"]:
            chunk = Chunk.from_json(str(text))
            records = read_chunk(chunk, self.config.source, self.paths)
            indexes.append(chunk.index)
            receipts.append(json.dumps(write_chunk(self.work, chunk.index, self.run, records,
                                                     self.config.output.batch_size)))
        return {"index": indexes, "receipt": receipts}


def run_ray(config: PreprocessConfig, files: Mapping[InputPath, str], work: Path, finished: Callable[[int], bool], *,
            address: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(index, receipt)` of each chunk not `finished` yet, as they finish, their files written into `work`.
    `address`: the cluster to join (default: `RAY_ADDRESS`, else a new local one, shut down after)."""
    pending = [chunk for chunk in plan_chunks(files, config.source, config.output.rows_per_shard)
               if not finished(chunk.index)]
    if not pending:
        return
    with _connected(address):
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = False  # our own bar counts chunks
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        chunks = ray.data.from_items([{"chunk": chunk.to_json()} for chunk in pending],
                                     override_num_blocks=len(pending))
        receipts = chunks.map_batches(
            ChunkWorker, fn_constructor_args=(config.model_dump_json(), {str(p): p for p in files}, str(work.resolve()), os.getcwd()),
            batch_size=1, compute=ray.data.ActorPoolStrategy(size=config.output.workers))
        try:
            for row in progress(receipts.iter_rows(), desc="preprocess", unit="chunks"):
                yield int(row["index"]), json.loads(row["receipt"])
        except ray.exceptions.RayError as e:
            raise PipelineError(f"a Ray worker failed; rerun to resume from the finished chunks: {_cause(e)}") from None


@contextmanager
def _connected(address: str | None) -> Iterator[None]:
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
