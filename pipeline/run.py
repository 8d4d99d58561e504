"""The preprocess driver: claims the output, loads the toolkit, has an engine (`pipeline.engines`) write the
input's chunks into a journal, then puts the output in place.

Input rows are cut into fixed chunks of `rows_per_shard` rows; each chunk becomes one shard per split. Chunks depend
only on the input, so the shards are the same bytes whatever the engine or the number of workers, and a finished
chunk is recorded in a journal (`DIR/.work/`) that an interrupted run resumes from after checking its checksums.
"""
from __future__ import annotations

import functools
import gc
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.chain import Toolkit, build_chain
from pipeline.checksums import sha256_file
from pipeline.engines.chunk import BatchTask
from pipeline.engines.journal import WORK_DIR, Journal
from pipeline.engines.local import count_row_tokens, run_local, worker_pool
from pipeline.engines.plan import input_items, plan_chunks, plan_drawn_chunks
from pipeline.errors import InputError, PipelineError
from pipeline.outputs import OwnedDir, claim, write_atomic
from pipeline.shards.format import (
    MANIFEST,
    MANIFEST_VERSION,
    InputFile,
    Manifest,
    ShardInfo,
    SourceEntry,
    SplitInfo,
)
from pipeline.shards.writer import finalize_split, split_files, write_dataset_dict, write_manifest
from pipeline.stages.ingest import InputPath, detect_formats, find_inputs
from pipeline.stages.mixture import Mixture, all_inputs, find_sources
from pipeline.stages.remote import RemoteFile
from pipeline.stages.split import SPLITS
from pipeline.stats import Stats
from pipeline.tokenizer import save_tokenizer, tokenizer_summary
from schemas.config import PreprocessConfig

# Everything preprocess creates or replaces in its output directory (the split folders' files are recorded as made).
OUTPUT_PATHS = (MANIFEST, "dataset_dict.json", "rejects.jsonl", "warnings.jsonl", "tokenizer", WORK_DIR, *SPLITS)
# Settings that decide how a run is carried out, not what it writes: a journal stays good when they change.
EXECUTION_KEYS = ("engine", "workers")


def preprocess(config: PreprocessConfig, out: Path, *, ray_address: str | None = None,
               on_journal: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Run the whole preprocess stage into `out` and return the manifest. Resumes an interrupted run, whichever
    engine wrote its journal. `ray_address`: the Ray cluster to join (`--engine ray`; default: `RAY_ADDRESS`, else a
    new local one). `on_journal` is called each time a chunk has been journaled (to copy the journal elsewhere)."""
    sources = find_sources(config.sources)
    found = all_inputs(sources) if sources else find_inputs(config.inputs, config.source.storage_options)
    owned = claim(out, "shards", inputs=[*found.local, *_local_paths(config)], writes=OUTPUT_PATHS)
    mixture = Mixture.plan(sources, config.mixture) if sources else None
    formats = mixture.formats if mixture else detect_formats(found.files, config.source)
    inputs = [_describe_input(path, fmt) for path, fmt in formats.items()]
    with _collector_paused():
        toolkit = Toolkit.load(config)
        task = BatchTask(build_chain(config, toolkit)) if config.output.engine == "local" else None
    summary = tokenizer_summary(toolkit.tokenizer, toolkit.template)
    journal = Journal(owned, _run_key(config, inputs, summary))
    rows_per_shard = config.output.rows_per_shard
    if config.output.engine == "ray":
        from pipeline.engines import ray as ray_engine

        with ray_engine.connected(ray_address):
            if mixture:
                mixture = mixture.counted(functools.partial(ray_engine.count_row_tokens, config, formats, journal.work))
            chunks = (plan_drawn_chunks(mixture, rows_per_shard) if mixture
                      else plan_chunks(formats, config.source, rows_per_shard))
            _journal(journal, ray_engine.run_ray(config, chunks, formats, journal.work, journal.finished), on_journal)
    else:
        with worker_pool(config, task) as pool:
            if mixture:
                mixture = mixture.counted(lambda first: count_row_tokens(config, pool, first.records()))
            items = mixture.records() if mixture else input_items(formats, config.source,
                                                                  by_workers=config.output.workers > 1)
            _journal(journal, run_local(config, pool, items, journal.work, journal.finished), on_journal)
    stats = Stats()
    shards: dict[str, list[tuple[Path, ShardInfo]]] = {s: [] for s in SPLITS}
    for receipt in journal.receipts():
        stats += Stats.from_json(receipt["stats"])
        for split, info in receipt["shards"].items():
            shards[split].append((journal.work / info["file"], ShardInfo(**info)))
    if not stats.balanced:
        raise PipelineError(f"internal accounting error: {stats.to_json()}")
    entries = mixture.entries(stats.files) if mixture else None
    return _finalize(owned, journal.work, config, toolkit, inputs, summary, stats, shards, entries)


def _journal(journal: Journal, receipts: Iterable[tuple[int, dict[str, Any]]], on_journal: Callable[[], None]) -> None:
    """Journal each chunk's receipt as the engine finishes it."""
    for index, receipt in receipts:
        journal.record(index, receipt)
        on_journal()


def _run_key(config: PreprocessConfig, inputs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """What a journal must have been written for to be reused: the config (less how it is executed), the inputs,
    the tokenizer and this version."""
    settings = config.model_dump(mode="json")
    settings["output"] = {k: v for k, v in settings["output"].items() if k not in EXECUTION_KEYS}
    return _fingerprint({"config": settings, "inputs": inputs, "tokenizer": summary, "version": __version__})


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Start-up (imports, tokenizer, template, encoder proof) makes long-lived objects and next to no garbage: the
    collector's passes over them would be wasted time. The engine then freezes them."""
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


def _describe_input(path: InputPath, fmt: str) -> dict[str, Any]:
    """The manifest's entry for one input file of format `fmt`; `InputError` naming the file when it cannot be read.
    A remote file is described by its store's etag or version and size, not read a second time."""
    if isinstance(path, RemoteFile):
        return InputFile(**path.describe(), format=fmt).to_json()
    try:
        return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size, "format": fmt}
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _finalize(owned: OwnedDir, work, config, toolkit: Toolkit, inputs, summary, stats, shards,
              sources: list[SourceEntry] | None) -> dict[str, Any]:
    """Move everything into place; the manifest goes last, so a directory with one is complete. `sources`: the
    per-source counts of a run of `sources` (only such a run's manifest has them)."""
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
        sources=sources,
    )
    owned.record(MANIFEST)
    write_manifest(out, manifest)
    owned.remove(WORK_DIR)
    return manifest.to_json()
