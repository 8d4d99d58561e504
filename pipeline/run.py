"""Chain the stages: ingest -> render -> tokenize -> mask -> truncate -> shards. Workers, order and resume live here.

Input rows are cut into fixed chunks of `rows_per_shard` rows; each chunk becomes one shard per split. Chunks depend
only on the input, so the shards are the same bytes whatever the number of workers, and a finished chunk is
recorded in a journal (`DIR/.work/`) that an interrupted run resumes from after checking its checksums.
"""
from __future__ import annotations

import gc
import hashlib
import itertools
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.encoders.choose import make_encoder
from pipeline.errors import InputError, PipelineError, RowError
from pipeline.outputs import OwnedDir, claim, write_atomic
from pipeline.progress import progress
from pipeline.shards.writer import (
    MANIFEST,
    MANIFEST_VERSION,
    Sample,
    SampleTable,
    ShardInfo,
    ShardWriter,
    finalize_split,
    sha256_file,
    split_files,
    write_dataset_dict,
    write_manifest,
)
from pipeline.stages.ingest import RawRecord, detect_format, find_inputs, read_records, to_conversation
from pipeline.stages.mask import message_regions, token_labels, trained_messages
from pipeline.stages.presets import glm4_rows, trl_completion_labels
from pipeline.stages.render import Rendered, Renderer, holds_reserved_characters, renderer_args, template_name
from pipeline.stages.render_limits import RenderLimits, render_timer
from pipeline.stages.text_fields import field_path, template_strings
from pipeline.stages.truncate import apply_limit, drop_oldest_turn
from pipeline.stats import Stats
from pipeline.tokenizer import (
    added_token_searches,
    chat_template_of,
    load_tokenizer,
    save_tokenizer,
    special_token_ids,
    tokenizer_summary,
)
from pipeline.workers import start_worker
from schemas.config import PreprocessConfig
from schemas.records import Conversation

SPLITS = ("train", "eval")
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


class Processor:
    """Everything built once per run: tokenizer, template, renderer. Turns a chunk of rows into samples."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        self.tokenizer = load_tokenizer(config.render)
        self.template = chat_template_of(self.tokenizer, config.render)
        self.special_ids = frozenset(special_token_ids(self.tokenizer).tolist())
        threads = max(1, (os.cpu_count() or 1) // config.output.workers)  # workers share the cores
        self.encode, self.encoder_reason = make_encoder(self.tokenizer, config.render.encoder, threads)
        self.control_tokens, self.other_added_tokens = added_token_searches(self.tokenizer, self.template)
        self.renderer = Renderer(self.template, **renderer_args(self.tokenizer), limits=RenderLimits.of(config.render))
        self.limit = config.truncation.limit(config.mask.preset)
        mask = config.mask
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.response_ids = encode(mask.response_template) if mask.response_template else None
        self.instruction_ids = encode(mask.instruction_template) if mask.instruction_template else None
        self._pool = None
        self._froze = False

    def __enter__(self) -> "Processor":
        """Start the worker processes. Where the platform can fork, each worker starts as a copy of this process,
        tokenizer, template and proven encoder included, so it costs no second start-up; elsewhere each builds
        its own Processor. A worker that dies fails the run with a clear error instead of hanging it; a worker dies
        with this process and leaves Ctrl-C to it (`start_worker`).

        Everything alive now (modules, tokenizer, template) lives for the whole run: `gc.freeze` takes it out of
        the garbage collector's full passes, which otherwise rescan it again and again while rows are processed
        (about a tenth of the run's time), and keeps forked workers from copying the pages those passes touch. A
        caller that froze objects itself manages freezing: then nothing is frozen or unfrozen here."""
        global _worker
        self._froze = gc.get_freeze_count() == 0
        if self._froze:
            gc.freeze()
        workers, parent = self.config.output.workers, os.getpid()
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            _worker = self
            self._pool = ProcessPoolExecutor(
                workers, multiprocessing.get_context("fork"), initializer=_init_worker, initargs=(parent, None)
            )
        elif workers > 1:
            self._pool = ProcessPoolExecutor(
                workers, multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(parent, self.config)
            )
        return self

    def __exit__(self, *exc) -> None:
        global _worker
        try:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
                self._pool = None
        finally:
            _worker = None
            if self._froze:
                gc.unfreeze()

    def process(self, records: Iterable[tuple[RawRecord | RowError, str]], writers: dict[str, ShardWriter]) -> ChunkResult:
        """Stream one chunk of input records (from `read_records`) into `writers`, batch by batch: memory holds a few
        batches, whatever the chunk or input size."""
        result = ChunkResult()
        for part in self._batch_results(_batches(records, self.config.output.batch_size)):
            for split, table in part.tables.items():
                writers[split].write(table)
            result.absorb(part)
        result.stats.rejected.update(r.reason for r in result.rejects)
        return result

    def _batch_results(self, batches: Iterator[list[tuple[RawRecord | RowError, str]]]) -> Iterator[ChunkResult]:
        """Each batch's result, in input order. With workers, a batch is processed whole in a worker process (adapt,
        render, tokenize, mask) while this process reads and writes; up to two batches per worker are in flight,
        never more, so memory stays bounded."""
        if self._pool is None:
            yield from map(self.process_batch, batches)
            return
        pending: deque = deque()
        try:
            for batch in batches:
                pending.append(self._pool.submit(_process_batch_in_worker, batch))
                if len(pending) > 2 * self.config.output.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise PipelineError("a worker process died (killed for memory?); rerun to resume from the last finished "
                                "chunk, with fewer --workers") from None

    def process_batch(self, records: list[tuple[RawRecord | RowError, str]]) -> ChunkResult:
        """What one batch of input records becomes: samples by split, rejected and filtered rows, warnings, counts.
        Every record is counted as read."""
        with render_timer():  # one signal handler for all of the batch's renderings
            return self._process_records(records)

    def _process_records(self, records: list[tuple[RawRecord | RowError, str]]) -> ChunkResult:
        result = ChunkResult()
        result.stats.read += len(records)
        admitted, remarks = [], []
        for record, fmt in records:
            item = to_conversation(record, fmt, self.config.source)
            if isinstance(item, RowError):
                result.rejects.append(item)
                continue
            texts = "\0".join(text for _, text in template_strings(item))  # NUL: in no token, no reserved character
            problem = self._content_problem(item, texts)
            if problem is not None:
                result.rejects.append(problem)
                continue
            admitted.append(item)
            if remark := self._added_token_remark(item, texts):
                remarks.append(remark)
        if admitted:
            self.renderer.check_single_rendering(admitted, template_name(self.config.render))
            trained = [self._checked_messages(c) for c in admitted]
            rendered = [_render_or_error(self.renderer, c, t) for c, t in zip(admitted, trained)]
            self._process_batch(admitted, trained, rendered, result)
        _note_written(remarks, result)
        return result.seal()

    def _content_problem(self, conversation: Conversation, texts: str) -> RowError | None:
        """Why the strings the template is given (`template_strings`, joined as `texts`) make the row unusable, if they
        do: a reserved character breaks the spans; a control token typed as text would be tokenized as one (a forged
        turn, role or tool call). The joined text is searched once; only a row with a hit is searched field by field,
        to name the field."""
        if holds_reserved_characters(texts):
            for where, text in template_strings(conversation):
                if holds_reserved_characters(text):
                    return _row_error(conversation, "reserved_character", field_path(where),
                                      "text holds a private-use character (U+F0000-U+F0002) that the pipeline reserves")
        if self.control_tokens is None or self.config.render.allow_special_tokens_in_content:
            return None
        if self.control_tokens.search(texts) is None:
            return None
        for where, text in template_strings(conversation):
            found = self.control_tokens.search(text)
            if found:
                return _row_error(
                    conversation,
                    "special_token_in_content",
                    field_path(where),
                    f"contains the special token {found.group(0)!r} as text (it would be tokenized as a control "
                    "token; pass --allow-special-tokens to keep such rows)",
                )
        return None

    def _added_token_remark(self, conversation: Conversation, texts: str) -> RowError | None:
        """A remark listing, by field, the added tokens that are not control tokens (Qwen's `<|fim_prefix|>`) typed in
        the strings the template is given (joined as `texts`): each is tokenized as one id, which the user should
        know of, but it forges nothing of the chat format, so the row is kept."""
        if self.other_added_tokens is None or self.other_added_tokens.search(texts) is None:
            return None
        found = {field_path(where): tokens for where, text in template_strings(conversation)
                 if (tokens := self.other_added_tokens.findall(text))}
        if not found:  # a hit across the joined texts only: no field holds a token
            return None
        listed = "; ".join(f"{path}: {', '.join(map(repr, tokens))}" for path, tokens in found.items())
        error = _row_error(conversation, "added_token_in_text", next(iter(found)),
                           f"holds added tokens as text, each tokenized as one id (the row is kept): {listed}")
        error.extra["added_tokens"] = found
        return error

    def _checked_messages(self, conversation: Conversation) -> frozenset[int]:
        """The messages whose text the mask takes from the rendering, so the renderer must find them verbatim: under
        the default mask, the trained messages (none otherwise)."""
        mask = self.config.mask
        if mask.preset != "default" or mask.train_on_prompt:
            return frozenset()
        return frozenset(trained_messages(conversation, mask))

    def _process_batch(self, conversations: list[Conversation], trained: list[frozenset[int]],
                       rendered: list[Rendered | RowError], result: ChunkResult) -> None:
        for conversation, outcome in zip(conversations, rendered):
            if isinstance(outcome, RowError):
                outcome.raw = conversation.model_dump(mode="json", exclude_none=True)
        ok = [(c, t, r) for c, t, r in zip(conversations, trained, rendered) if not isinstance(r, RowError)]
        result.rejects.extend(r for r in rendered if isinstance(r, RowError))
        encoded = self.encode([r.text for _, _, r in ok])
        if self.config.mask.preset == "glm4":
            self._glm4_batch([c for c, _, _ in ok], encoded, result)
            return
        for (conversation, chosen, render), enc in zip(ok, encoded):
            labels = self._labels(render, enc, chosen)
            ids = enc.input_ids
            if self.config.mask.append_eos and self.tokenizer.eos_token_id is not None:
                ids = np.append(ids, self.tokenizer.eos_token_id)
                labels = np.append(labels, self.tokenizer.eos_token_id).astype(np.int32)
            if self.config.truncation.strategy == "drop_oldest_turns" and self.limit and len(ids) > self.limit:
                shortened = self._drop_oldest_turns(conversation)
                if isinstance(shortened, RowError):
                    shortened.raw = conversation.model_dump(mode="json", exclude_none=True)
                    result.rejects.append(shortened)
                    continue
                if shortened is not None:
                    ids, labels = shortened
                    result.stats.notes["turns_dropped"] += 1
            self._emit(conversation, ids, labels, result)

    def _labels(self, render: Rendered, enc, chosen: frozenset[int]) -> np.ndarray:
        """Labels under the mask policy; `chosen`: the trained messages (`_checked_messages`) under the default mask."""
        mask = self.config.mask
        if mask.preset == "trl_completion_only":
            return trl_completion_labels(
                enc.input_ids,
                response_ids=self.response_ids,
                instruction_ids=self.instruction_ids,
                pad_id=self.tokenizer.pad_token_id,
            )
        if mask.train_on_prompt:
            return token_labels(enc.input_ids, enc.spans, render, [], special_ids=self.special_ids, train_everything=True)
        regions = message_regions(render, chosen, train_eot=mask.train_end_of_turn)
        return token_labels(enc.input_ids, enc.spans, render, regions, special_ids=self.special_ids)

    def _drop_oldest_turns(self, conversation: Conversation) -> tuple[np.ndarray, np.ndarray] | RowError | None:
        """Drop whole oldest rounds (system kept) until the sample fits; None if it never does, the template's
        error if it refuses a shortened conversation (or goes over a rendering limit on it)."""
        current = drop_oldest_turn(conversation)
        while current is not None:
            chosen = self._checked_messages(current)
            render = _render_or_error(self.renderer, current, chosen)
            if isinstance(render, RowError):
                return render
            (enc,) = self.encode([render.text])
            if len(enc.input_ids) <= self.limit:
                return enc.input_ids, self._labels(render, enc, chosen)
            current = drop_oldest_turn(current)
        return None

    def _glm4_batch(self, conversations: list[Conversation], encoded, result: ChunkResult) -> None:
        rows = glm4_rows(self.renderer, self.tokenizer, self.encode, conversations)
        for conversation, enc, row in zip(conversations, encoded, rows):
            if isinstance(row, Exception):
                message = f"the chat template refused a message rendered alone (the glm4 preset's rendering): {row}"
                result.rejects.append(_row_error(conversation, "template_error", "messages", message))
                continue
            ids, labels = row
            if not np.array_equal(ids[:-1], enc.input_ids):
                result.stats.notes["glm4_per_message_differs"] += 1
                result.warnings.append(
                    _row_error(
                        conversation,
                        "glm4_per_message_differs",
                        "messages",
                        "GLM-4's per-message tokens differ from the whole-conversation rendering; the glm4 preset "
                        "writes GLM-4's per-message tokens (the default preset writes the exact rendering)",
                    )
                )
            self._emit(conversation, ids, labels, result)

    def _emit(self, conversation: Conversation, ids: np.ndarray, labels: np.ndarray, result: ChunkResult) -> None:
        cut = apply_limit(ids, labels, limit=self.limit, strategy=self.config.truncation.strategy)
        if cut.reason is not None:
            result.stats.filtered[cut.reason] += 1
            result.dropped.append(_row_error(conversation, cut.reason, "", _FILTER_MESSAGES[cut.reason].format(limit=self.limit)))
            return
        if cut.truncated:
            result.stats.notes["truncated"] += 1
        split = assign_split(conversation.id, self.config.output.eval_split, self.config.output.seed)
        result.samples[split].append(Sample(cut.input_ids, cut.labels, conversation.id, conversation.source, conversation.row))
        result.stats.written += 1


_FILTER_MESSAGES = {
    "too_long": "longer than the limit of {limit} tokens (truncation strategy 'drop')",
    "too_long_after_dropping_turns": "still longer than {limit} tokens with only its last round left",
    "no_trained_tokens": "no token is trained under the mask policy",
    "no_trained_tokens_after_truncation": "no trained token is left after cutting to {limit} tokens",
}


_worker: Processor | None = None


def _init_worker(parent: int, config: PreprocessConfig | None) -> None:
    """First in every worker: it ends with the run (`start_worker`), and encodes on one thread (the workers already
    fill the cores). A spawned worker (`config` given) builds its own Processor; a forked one has its parent's."""
    global _worker
    start_worker(parent)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if config is not None:
        _worker = Processor(config)


def _process_batch_in_worker(records: list[tuple[RawRecord | RowError, str]]) -> ChunkResult:
    return _worker.process_batch(records)


def _note_written(remarks: list[RowError], result: ChunkResult) -> None:
    """Keep the remarks on rows that were written: a row rejected or filtered after its remark is listed for that."""
    written = {(sample.source, sample.row) for samples in result.samples.values() for sample in samples}
    for remark in remarks:
        if (remark.source, remark.row) in written:
            result.warnings.append(remark)
            result.stats.notes[remark.reason] += 1


def _render_or_error(renderer: Renderer, conversation: Conversation, trained: frozenset[int]) -> Rendered | RowError:
    try:
        return renderer(conversation, trained)
    except RowError as error:
        return error


def _row_error(conversation: Conversation, reason: str, field_path: str, message: str) -> RowError:
    return RowError(
        source=conversation.source,
        row=conversation.row,
        id=conversation.id,
        reason=reason,
        field=field_path,
        message=message,
        raw=conversation.model_dump(mode="json", exclude_none=True),
    )


def assign_split(sample_id: str, eval_fraction: float, seed: int) -> str:
    """A split from a hash of the id: stable across runs, chunking and workers."""
    if eval_fraction <= 0:
        return "train"
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"


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
    paths = found.files
    inputs = [_describe_input(p, config) for p in paths]
    with _collector_paused():
        processor = Processor(config)
    with processor:
        summary = tokenizer_summary(processor.tokenizer, processor.template)
        run_key = _fingerprint({"config": config.model_dump(mode="json"), "inputs": inputs, "tokenizer": summary, "version": __version__})
        work = _prepare_work_dir(owned, run_key)
        stats = Stats()
        shards: dict[str, list[tuple[Path, ShardInfo]]] = {s: [] for s in SPLITS}
        records = progress(read_records(paths, config.source), desc="preprocess")
        for index, chunk in enumerate(_chunks(records, config.output.rows_per_shard)):
            journal = work / f"chunk-{index:05d}.json"
            done = _load_finished_chunk(journal, work)
            if done is None:
                done = _write_chunk(work, index, processor, chunk)
                write_atomic(journal, json.dumps(done, sort_keys=True).encode())
            else:
                for _ in chunk:  # already written: read past its rows
                    pass
            stats += Stats.from_json(done["stats"])
            for split, info in done["shards"].items():
                shards[split].append((work / info["file"], ShardInfo(**info)))
        if not stats.balanced:
            raise PipelineError(f"internal accounting error: {stats.to_json()}")
        return _finalize(owned, work, config, processor, inputs, summary, stats, shards)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Start-up (imports, tokenizer, template, encoder proof) makes long-lived objects and next to no garbage: the
    collector's passes over them would be wasted time. `Processor.__enter__` then freezes them."""
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


def _describe_input(path: Path, config: PreprocessConfig) -> dict[str, Any]:
    """The manifest's entry for one input file; `InputError` naming the file when it cannot be read."""
    try:
        return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size,
                "format": detect_format(path, config.source)}
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


def _write_chunk(work: Path, index: int, processor: Processor, chunk: Iterable) -> dict[str, Any]:
    writers = {split: ShardWriter(work / f"chunk-{index:05d}.{split}.arrow") for split in SPLITS}
    result = processor.process(chunk, writers)
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
        "stats": result.stats.to_json(),
    }


def _jsonl(errors: list[RowError]) -> bytes:
    return "".join(json.dumps(e.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for e in errors).encode("utf-8")


def _finalize(owned: OwnedDir, work, config, processor, inputs, summary, stats, shards) -> dict[str, Any]:
    """Move everything into place; the manifest goes last, so a directory with one is complete."""
    out = owned.root
    owned.remove(MANIFEST)
    for split in SPLITS:
        owned.remove(split)
    splits = {}
    for split in SPLITS:
        if shards[split]:
            owned.record(*(f"{split}/{name}" for name in split_files(len(shards[split]))))
            final = finalize_split(out / split, shards[split])
            splits[split] = {
                "rows": sum(s.rows for s in final),
                "tokens": sum(s.tokens for s in final),
                "trained_tokens": sum(s.trained_tokens for s in final),
                "shards": [s.to_json() for s in final],
            }
    write_dataset_dict(out, list(splits))
    for name in ("rejects", "warnings"):
        parts = sorted(work.glob(f"chunk-*.{name}.jsonl"))
        write_atomic(out / f"{name}.jsonl", b"".join(p.read_bytes() for p in parts))
    save_tokenizer(processor.tokenizer, processor.template, owned.scratch(".tokenizer.tmp", fresh=True))
    owned.replace_dir(".tokenizer.tmp", "tokenizer")
    manifest = {
        "version": MANIFEST_VERSION,
        "tool": {"name": "chatshard", "version": __version__},
        "config": config.model_dump(mode="json"),
        "inputs": inputs,
        "tokenizer": summary,
        "chat_template": {
            "source": config.render.chat_template or "tokenizer",
            "sha256": summary["chat_template_sha256"],
            "tool_role": processor.renderer.traits.tool_role,
        },
        "encoder": {"name": processor.encode.name, "reason": processor.encoder_reason},
        "splits": splits,
        "accounting": stats.to_json(),
        "rejects_sha256": sha256_file(out / "rejects.jsonl"),
    }
    owned.record(MANIFEST)
    write_manifest(out, manifest)
    owned.remove(WORK_DIR)
    return manifest
