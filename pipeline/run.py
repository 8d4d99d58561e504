"""The local executor: runs the preprocess chain (`pipeline.chain`) over the inputs in chunks, in worker processes,
in order, with a journal to resume from, then puts the output in place.

Input rows are cut into fixed chunks of `rows_per_shard` rows; each chunk becomes one shard per split. Chunks depend
only on the input, so the shards are the same bytes whatever the number of workers, and a finished chunk is
recorded in a journal (`DIR/.work/`) that an interrupted run resumes from after checking its checksums.
"""
from __future__ import annotations

import functools
import gc
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.chain import Toolkit, build_chain
from pipeline.errors import InputError, PipelineError, RowError
from pipeline.outputs import OwnedDir, claim, write_atomic
from pipeline.progress import progress
from pipeline.shards.format import MANIFEST, MANIFEST_VERSION, Manifest, ShardInfo, SplitInfo
from pipeline.shards.writer import (
    Sample,
    SampleTable,
    ShardWriter,
    finalize_split,
    sha256_file,
    split_files,
    write_dataset_dict,
    write_manifest,
)
from pipeline.stages.ingest import RawRecord, detect_formats, find_inputs, read_records
from pipeline.stages.split import SPLITS
from pipeline.stats import Stats
from pipeline.step import Chain
from pipeline.tokenizer import save_tokenizer, tokenizer_summary
from pipeline.workers import BatchPool
from schemas.config import PreprocessConfig

WORK_DIR = ".work"
# Everything preprocess creates or replaces in its output directory (the split folders' files are recorded as made).
OUTPUT_PATHS = (MANIFEST, "dataset_dict.json", "rejects.jsonl", "warnings.jsonl", "tokenizer", WORK_DIR, *SPLITS)


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
        for row in outcome.items:
            conversation = row.conversation
            result.samples[row.split].append(
                Sample(row.input_ids, row.labels, conversation.id, conversation.source, conversation.row))
        return result.seal()


def _build_task(config: PreprocessConfig) -> BatchTask:
    """A spawned worker's own task (a forked one shares its parent's)."""
    return BatchTask(build_chain(config, Toolkit.load(config)))


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
        with BatchPool(task, workers=config.output.workers, build=functools.partial(_build_task, config)) as pool:
            yield pool
    finally:
        if froze:
            gc.unfreeze()


def _process_chunk(pool: BatchPool, records: Iterable, writers: dict[str, ShardWriter], batch_size: int) -> ChunkResult:
    """Stream one chunk of input records (from `read_records`) into `writers`, batch by batch: memory holds a few
    batches, whatever the chunk or input size."""
    result = ChunkResult()
    for part in pool.map(_batches(records, batch_size)):
        for split, table in part.tables.items():
            writers[split].write(table)
        result.absorb(part)
    return result


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _chunks(items: Iterable, size: int) -> Iterator[Iterator]:
    """Lazy chunks of `size` items; each must be consumed before the next is taken."""
    iterator = iter(items)
    while (first := next(iterator, _END)) is not _END:
        yield itertools.chain([first], itertools.islice(iterator, size - 1))


_END = object()


def preprocess(config: PreprocessConfig, out: Path) -> dict[str, Any]:
    """Run the whole preprocess stage into `out` and return the manifest. Resumes an interrupted run."""
    found = find_inputs(config.inputs)
    owned = claim(out, "shards", inputs=[*found.named, *found.files, *_local_paths(config)], writes=OUTPUT_PATHS)
    formats = detect_formats(found.files, config.source)
    inputs = [_describe_input(path, fmt) for path, fmt in formats.items()]
    with _collector_paused():
        toolkit = Toolkit.load(config)
        task = BatchTask(build_chain(config, toolkit))
    with _executor(config, task) as pool:
        summary = tokenizer_summary(toolkit.tokenizer, toolkit.template)
        run_key = _fingerprint({"config": config.model_dump(mode="json"), "inputs": inputs, "tokenizer": summary, "version": __version__})
        work = _prepare_work_dir(owned, run_key)
        stats = Stats()
        shards: dict[str, list[tuple[Path, ShardInfo]]] = {s: [] for s in SPLITS}
        process = functools.partial(_process_chunk, pool, batch_size=config.output.batch_size)
        records = progress(read_records(formats, config.source), desc="preprocess")
        for index, chunk in enumerate(_chunks(records, config.output.rows_per_shard)):
            journal = work / f"chunk-{index:05d}.json"
            done = _load_finished_chunk(journal, work)
            if done is None:
                done = _write_chunk(work, index, process, chunk)
                write_atomic(journal, json.dumps(done, sort_keys=True).encode())
            else:
                for _ in chunk:  # already written: read past its rows
                    pass
            stats += Stats.from_json(done["stats"])
            for split, info in done["shards"].items():
                shards[split].append((work / info["file"], ShardInfo(**info)))
        if not stats.balanced:
            raise PipelineError(f"internal accounting error: {stats.to_json()}")
        return _finalize(owned, work, config, toolkit, inputs, summary, stats, shards)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Start-up (imports, tokenizer, template, encoder proof) makes long-lived objects and next to no garbage: the
    collector's passes over them would be wasted time. `_executor` then freezes them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _local_paths(config: PreprocessConfig) -> list[Path]:
    """The tokenizer and chat template files this run reads, where they are local paths: inputs too."""
    named = (config.render.tokenizer, config.render.chat_template)
    return [Path(p) for p in named if p and Path(p).exists()]


def _describe_input(path: Path, fmt: str) -> dict[str, Any]:
    """The manifest's entry for one input file of format `fmt`; `InputError` naming the file when it cannot be read."""
    try:
        return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size, "format": fmt}
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _prepare_work_dir(owned: OwnedDir, run_key: str) -> Path:
    """The journal directory. A journal from a different config or different inputs is discarded, not reused."""
    key_file = owned.root / WORK_DIR / "run.key"
    fresh = not key_file.exists() or key_file.read_text() != run_key
    work = owned.scratch(WORK_DIR, fresh=fresh)
    if fresh:
        write_atomic(key_file, run_key.encode())
    return work


def _load_finished_chunk(journal: Path, work: Path) -> dict[str, Any] | None:
    """A finished chunk's record, if its journal exists and every file it names still has its checksum."""
    if not journal.exists():
        return None
    done = json.loads(journal.read_text())
    files = [work / info["file"] for info in done["shards"].values()] + [work / done["rejects"], work / done["warnings"]]
    sums = [info["sha256"] for info in done["shards"].values()] + [done["rejects_sha256"], done["warnings_sha256"]]
    if all(f.exists() and sha256_file(f) == s for f, s in zip(files, sums)):
        return done
    return None


def _write_chunk(work: Path, index: int, process, chunk: Iterable) -> dict[str, Any]:
    """Chunk `index` processed (`process`: `_process_chunk` with the run's pool) into its journal's files."""
    writers = {split: ShardWriter(work / f"chunk-{index:05d}.{split}.arrow") for split in SPLITS}
    result = process(chunk, writers)
    shards = {split: info.to_json() for split, writer in writers.items() if (info := writer.close()) is not None}
    rejects, warnings = work / f"chunk-{index:05d}.rejects.jsonl", work / f"chunk-{index:05d}.warnings.jsonl"
    write_atomic(rejects, _jsonl(result.rejects + result.dropped))
    write_atomic(warnings, _jsonl(result.warnings))
    return {
        "shards": shards,
        "rejects": rejects.name,
        "rejects_sha256": sha256_file(rejects),
        "warnings": warnings.name,
        "warnings_sha256": sha256_file(warnings),
        "stats": result.stats.to_journal(),
    }


def _jsonl(errors: list[RowError]) -> bytes:
    return "".join(json.dumps(e.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for e in errors).encode("utf-8")


def _finalize(owned: OwnedDir, work, config, toolkit: Toolkit, inputs, summary, stats, shards) -> dict[str, Any]:
    """Move everything into place; the manifest goes last, so a directory with one is complete."""
    out = owned.root
    owned.remove(MANIFEST)
    for split in SPLITS:
        owned.remove(split)
    splits = {}
    for split in SPLITS:
        if shards[split]:
            owned.record(*(f"{split}/{name}" for name in split_files(len(shards[split]))))
            splits[split] = SplitInfo.of(finalize_split(out / split, shards[split]))
    write_dataset_dict(out, list(splits))
    for name in ("rejects", "warnings"):
        parts = sorted(work.glob(f"chunk-*.{name}.jsonl"))
        write_atomic(out / f"{name}.jsonl", b"".join(p.read_bytes() for p in parts))
    save_tokenizer(toolkit.tokenizer, toolkit.template, owned.scratch(".tokenizer.tmp", fresh=True))
    owned.replace_dir(".tokenizer.tmp", "tokenizer")
    manifest = Manifest(
        version=MANIFEST_VERSION,
        tool={"name": "chatshard", "version": __version__},
        config=config.model_dump(mode="json"),
        inputs=inputs,
        tokenizer=summary,
        chat_template={
            "source": config.render.chat_template or "tokenizer",
            "sha256": summary["chat_template_sha256"],
            "tool_role": toolkit.renderer.traits.tool_role,
            "injects": toolkit.injected.probe,
        },
        encoder={"name": toolkit.encode.name, "reason": toolkit.encoder_reason},
        splits=splits,
        accounting=stats.to_json(),
        rejects_sha256=sha256_file(out / "rejects.jsonl"),
    )
    owned.record(MANIFEST)
    write_manifest(out, manifest)
    owned.remove(WORK_DIR)
    return manifest.to_json()
