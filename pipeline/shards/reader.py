"""The one reader of a `preprocess` output: `check`, `show` and `train` all open shards here.

`open_shards` validates `manifest.json` against the `Manifest` model (an `InputError` names the file and the field)
and that every shard file it lists is there. Splits are then read from the files the manifest lists, memory-mapped:
the token lists stay in the page cache, not in this process's heap, and arrays are zero-copy views of the mapped
buffers. `Shards.split` opens a whole split for random access (its per-row offsets in memory); `Shards.stream` reads
one record batch at a time, for a pass whose memory must stay flat however large the output. No tokenizer and no
template are loaded here: the trainer reads only the manifest and the Arrow files.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from filelock import FileLock
from pydantic import BaseModel, ValidationError

from pipeline.checksums import sha256_file
from pipeline.errors import InputError
from pipeline.outputs import LEDGER, write_atomic
from pipeline.shards.arrays import numeric_array, numpy_view
from pipeline.shards.format import IGNORE_INDEX, MANIFEST, SCHEMA, Manifest, ShardInfo
from pipeline.storage import Store, is_url, open_store
from schemas.loading import problems

COLUMNS = ("input_ids", "labels", "id")  # what a split needs to be read at all
Section = TypeVar("Section", bound=BaseModel)


def read_manifest(path: Path) -> Manifest:
    """The validated manifest of output directory `path`."""
    file = path / MANIFEST
    try:
        return parse_manifest(file.read_bytes(), str(file))
    except FileNotFoundError:
        raise InputError(f"{path} is not a preprocess output: no {MANIFEST} (an interrupted run writes none)") from None
    except OSError as exc:
        raise InputError(f"{file} is not a valid manifest: unreadable: {exc}") from None


def parse_manifest(text: bytes, file: str) -> Manifest:
    """The manifest in `text`, validated; `InputError` naming `file` and each bad field."""
    try:
        data = json.loads(text.decode("utf-8"))
    except ValueError as exc:
        raise InputError(f"{file} is not a valid manifest: unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{file} is not a valid manifest: it must be a JSON object")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{file} is not a valid manifest: " + "; ".join(problems(exc, source=None))) from None


def iter_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """Record batches of one shard file (an Arrow IPC stream), memory-mapped."""
    with pa.memory_map(str(path)) as source:
        yield from pa.ipc.open_stream(source)


def row_arrays(column: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets rebased to 0, flat values) of a list column; the values are a zero-copy view of the mapped buffer."""
    offsets = numpy_view(column.offsets).astype(np.int64)
    if not len(column):
        return np.zeros(1, np.int64), np.zeros(0, np.int32)
    values = numpy_view(column.values)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], values


@dataclass(frozen=True)
class RowSample:
    """One row, located: its split and index there, its id, the input file and row it came from, its tokens and
    (unshifted) labels."""

    split: str
    index: int
    id: str
    source: str
    row: int
    input_ids: np.ndarray
    labels: np.ndarray

    @property
    def origin(self) -> str:
        """`file:row` of the input row, as rejects.jsonl and the error messages name rows."""
        return f"{self.source}:{self.row}"


@dataclass(frozen=True)
class RowBatch:
    """One record batch of a split, streamed: its rows' provenance columns and flat token arrays (views of the mapped
    file, valid while the batch is in hand)."""

    split: str
    start: int  # the split index of its first row
    batch: pa.RecordBatch
    offsets: np.ndarray  # row k is values[offsets[k]:offsets[k + 1]]
    input_ids: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def column(self, name: str) -> list[Any]:
        """A provenance column (`id`, `source`, `row`) as Python values."""
        return self.batch.column(name).to_pylist()

    def row(self, k: int) -> RowSample:
        """Row `k` of the batch, its arrays copied (so it outlives the batch)."""
        lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
        return RowSample(self.split, self.start + k, *(self.batch.column(c)[k].as_py() for c in ("id", "source", "row")),
                         self.input_ids[lo:hi].copy(), self.labels[lo:hi].copy())


@dataclass(frozen=True)
class Split:
    """One split, memory-mapped: per Arrow record batch, the flat token values and the list offsets."""

    name: str
    table: pa.Table
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (input_ids values, labels values, offsets) per batch
    starts: np.ndarray  # first sample index of each chunk, plus the total at the end
    lengths: np.ndarray  # tokens per sample

    def __len__(self) -> int:
        return len(self.lengths)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Input ids and (unshifted) labels of sample `i`, as views into the mapped files."""
        c = int(np.searchsorted(self.starts, i, side="right")) - 1
        ids, labels, offsets = self.chunks[c]
        j = i - int(self.starts[c])
        lo, hi = int(offsets[j]), int(offsets[j + 1])
        return ids[lo:hi], labels[lo:hi]

    def row(self, i: int) -> RowSample:
        """Sample `i` with its split, index, id and input file and row."""
        input_ids, labels = self.sample(i)
        found = self.table.select(["id", "source", "row"]).take(pa.array([i], type=pa.int64())).to_pylist()[0]
        return RowSample(self.name, i, found["id"], found["source"], found["row"], input_ids, labels)

    def ids(self, indices: list[int]) -> list[str]:
        """The `id` column of these samples (provenance, for logs)."""
        return self.table.column("id").take(numeric_array(np.asarray(indices), pa.int64())).to_pylist()

    def index_of(self, row_id: str) -> int | None:
        """The index of the first sample whose `id` is `row_id`."""
        k = pc.index(self.table.column("id"), row_id).as_py()
        return None if k < 0 else k

    def check_tokens(self, vocab_size: int) -> None:
        """`InputError` unless every token id is below `vocab_size` and every label is IGNORE_INDEX or its token."""
        for ids, labels, _ in self.chunks:
            if not ids.size:
                continue
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= vocab_size:
                raise InputError(f"{self.name}: token id {hi if hi >= vocab_size else lo} is outside the vocabulary "
                                 f"(manifest tokenizer.vocab_size = {vocab_size})")
            bad = (labels != IGNORE_INDEX) & (labels != ids)
            if bad.any():
                raise InputError(f"{self.name}: {int(bad.sum())} labels are neither {IGNORE_INDEX} nor the token at "
                                 "their position (labels must be unshifted)")


class Shards:
    """A `preprocess` output directory: its validated manifest, its shard files, its splits opened on demand. `url`:
    where an output in object storage lives (`path` is then its cached copy), which messages name."""

    def __init__(self, path: Path, manifest: Manifest, url: str | None = None):
        self.path = path
        self.manifest = manifest
        self.url = url
        self._open: dict[str, Split] = {}

    @property
    def where(self) -> str:
        """The output as messages name it: its URL, else its directory."""
        return self.url or str(self.path)

    def shown(self, file: Path) -> str:
        """A file of the output as messages name it: under its URL for a copy of an output in object storage."""
        return f"{self.url}/{file.relative_to(self.path).as_posix()}" if self.url else str(file)

    @property
    def tokenizer_dir(self) -> Path:
        """The tokenizer saved beside the shards (with the chat template used)."""
        return self.path / "tokenizer"

    @property
    def split_names(self) -> list[str]:
        """The splits, train first."""
        return sorted(self.manifest.splits, key=lambda name: (name != "train", name))

    def files(self, split: str) -> list[tuple[Path, ShardInfo]]:
        """The shard files of `split` in order, with their manifest entries."""
        return [(self.path / split / entry.file, entry) for entry in self.manifest.splits[split].shards]

    def changed_files(self) -> list[Path]:
        """The shard files, of every split, whose sha256 is not the one the manifest gives them."""
        return [path for split in self.split_names for path, entry in self.files(split) if sha256_file(path) != entry.sha256]

    def split(self, name: str) -> Split:
        """Split `name`, memory-mapped (opened once)."""
        if name not in self._open:
            self._open[name] = _open_split(name, [path for path, _ in self.files(name)], self.shown)
        return self._open[name]

    @property
    def splits(self) -> dict[str, Split]:
        return {name: self.split(name) for name in self.split_names}

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The per-source counts of a build made from `sources:` (the manifest's `sources` list), else []."""
        return [entry.to_json() for entry in getattr(self.manifest, "sources", None) or []]

    def stream(self, name: str, columns: tuple[str, ...] = COLUMNS) -> Iterator[RowBatch]:
        """The record batches of split `name` in order, one at a time, each checked as `split` checks it and holding
        at least `columns`; memory stays flat however many rows the split has."""
        start = 0
        for file, _ in self.files(name):
            try:
                for batch in iter_batches(file):
                    offsets, input_ids, labels = _token_arrays(batch, self.shown(file), columns)
                    yield RowBatch(name, start, batch, offsets, input_ids, labels)
                    start += batch.num_rows
            except (OSError, pa.ArrowInvalid) as e:
                raise InputError(f"{self.shown(file)}: not a readable Arrow stream: {e}") from None

    def take(self, name: str, indices: list[int]) -> list[RowSample]:
        """The rows of split `name` at `indices` (in that order), read by streaming: for a few rows of a large split."""
        wanted, found = set(indices), {}
        for batch in self.stream(name):
            found.update({i: batch.row(i - batch.start) for i in wanted if batch.start <= i < batch.start + len(batch)})
            if len(found) == len(wanted):
                break
        return [found[i] for i in indices if i in found]

    def config_section(self, key: str, model: type[Section]) -> Section:
        """Section `key` of the recorded preprocess config, validated against this version's `model`."""
        try:
            return model.model_validate(self.manifest.config.get(key))
        except ValidationError as exc:
            found = "; ".join(f"config.{key}: {problem}" for problem in problems(exc, source=None))
            raise InputError(f"{self.shown(self.path / MANIFEST)} is not a valid manifest: {found}") from None


def open_shards(path: Path | str, storage_options: dict[str, Any] | None = None) -> Shards:
    """Open a `preprocess` output directory, or one in object storage (`s3://...`, copied down first: see
    `fetch`; `storage_options`: how to reach it); `InputError` when it is not one or a shard file it lists is
    missing."""
    url = None
    if is_url(path):
        store = open_store(path, storage_options)
        url, path = store.url, fetch(store)
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: no such shard directory (run `python -m pipeline preprocess` first)")
    shards = Shards(path, read_manifest(path), url)
    missing = [shards.shown(file) for name in shards.split_names for file, _ in shards.files(name)
               if not file.is_file()]
    if missing:
        raise InputError(f"{shards.where}: shard files named in the manifest are missing: {', '.join(missing)}")
    return shards


def cache_root() -> Path:
    """Where outputs in object storage are copied down: `$CHATSHARD_CACHE`, else `chatshard/` in the user's cache
    folder (`$XDG_CACHE_HOME`, else `~/.cache`)."""
    if os.environ.get("CHATSHARD_CACHE"):
        return Path(os.environ["CHATSHARD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatshard"


def fetch(store: Store) -> Path:
    """A local copy of the output in `store`, in the cache, one folder per URL. Each shard and `rejects.jsonl` is
    checked against the manifest's sha256 as it arrives, and the manifest is written last, so a copy with a manifest
    is complete; a copy of the same manifest is reused as it is, and only files that differ are fetched again. Several processes (the ranks of a run) fetching
    at once take turns on a lock file beside the copy: the first downloads, the others find its copy complete."""
    local = cache_root() / "shards" / hashlib.sha256(store.url.encode()).hexdigest()[:16]
    try:
        text = store.read(MANIFEST)
    except FileNotFoundError:
        raise InputError(f"{store.url} is not a preprocess output: no {MANIFEST} (an interrupted run writes none)") from None
    except OSError as exc:
        raise InputError(f"{store.name(MANIFEST)}: cannot read: {exc.strerror or exc}") from None
    manifest = parse_manifest(text, store.name(MANIFEST))
    local.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(local.with_name(f"{local.name}.lock")):
        _copy_down(store, manifest, text, local)
    return local


def _copy_down(store: Store, manifest: Manifest, text: bytes, local: Path) -> None:
    """Make `local` a complete copy of the output whose manifest is `text` (see `fetch`)."""
    copy = local / MANIFEST
    if copy.is_file() and copy.read_bytes() == text:
        return
    copy.unlink(missing_ok=True)
    checksums = {f"{split}/{shard.file}": shard.sha256 for split, info in manifest.splits.items() for shard in info.shards}
    checksums["rejects.jsonl"] = manifest.rejects_sha256
    keys = [k for k in store.keys() if k not in (MANIFEST, LEDGER) and not k.startswith(".")]  # not the journal
    for key in keys:
        if not _plain_path(key):
            raise InputError(f"{store.name(key)}: not a plain path inside the output (an empty, `.` or `..` part); "
                             "it would be copied outside the local copy, so the output is not read")
    for key in keys:
        file, want = local / key, checksums.get(key)
        if want and file.is_file() and sha256_file(file) == want:
            continue
        store.download(key, file)
        if want and sha256_file(file) != want:
            raise InputError(f"{store.name(key)}: sha256 differs from the manifest's ({want[:12]}...): the output is "
                             "damaged or changed while it was read")
    for stale in local.rglob("*"):  # files of an earlier version of the output (not others' temp files)
        if stale.is_file() and not stale.name.startswith(".") and stale.relative_to(local).as_posix() not in keys:
            stale.unlink()
    write_atomic(copy, text)


def _plain_path(key: str) -> bool:
    """Whether a store key names a file inside the folder it is copied into: relative, no empty, `.` or `..` part."""
    return all(part not in ("", ".", "..") for part in key.split("/"))


def _open_split(name: str, files: list[Path], shown: Callable[[Path], str]) -> Split:
    """Split `name` from its `files`; `shown` names a file in messages."""
    batches = []
    for file in files:
        try:
            batches.extend(pa.ipc.open_stream(pa.memory_map(str(file), "r")).read_all().to_batches())
        except (OSError, pa.ArrowInvalid) as e:
            raise InputError(f"{shown(file)}: not a readable Arrow stream: {e}") from None
    where = shown(files[0].parent) if files else name
    table = pa.Table.from_batches(batches) if batches else SCHEMA.empty_table()
    _require_columns(table.schema, where)
    chunks, counts = [], []
    for batch in batches:
        offsets, ids, labels = _token_arrays(batch, where)
        chunks.append((ids, labels, offsets))
        counts.append(len(offsets) - 1)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    lengths = np.concatenate([np.diff(c[2]) for c in chunks]).astype(np.int64) if chunks else np.zeros(0, np.int64)
    return Split(name=name, table=table, chunks=chunks, starts=starts, lengths=lengths)


def _require_columns(schema: pa.Schema, where: Path | str, columns: tuple[str, ...] = COLUMNS) -> None:
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(missing)}")


def _token_arrays(batch: pa.RecordBatch, where: Path | str, columns: tuple[str, ...] = COLUMNS
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, input_ids values, labels values) of a batch; `InputError` for a missing column, a null list or
    token lists whose lengths differ from their labels'."""
    _require_columns(batch.schema, where, columns)
    ids_col, labels_col = batch.column("input_ids"), batch.column("labels")
    if ids_col.null_count or labels_col.null_count:
        raise InputError(f"{where}: null input_ids or labels")
    offsets, ids = row_arrays(ids_col)
    label_offsets, labels = row_arrays(labels_col)
    if not np.array_equal(offsets, label_offsets):
        raise InputError(f"{where}: input_ids and labels differ in length in some rows")
    return offsets, ids, labels
