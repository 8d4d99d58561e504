"""Shards to micro-batches. Reads only `manifest.json` and the memory-mapped Arrow files: no tokenizer, no template.

The order of micro-batches is a pure function of (seed, epoch), the same on every rank, so a position in the stream
(the global micro-batch index) is all a checkpoint needs to resume the data exactly. Rank `r` of `W` takes, for
optimizer step `s` with `A` micro-batches per rank, the global micro-batches `(s*W + r)*A ... (s*W + r)*A + A-1`.
"""
from __future__ import annotations

import bisect

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.errors import ConfigError, InputError

IGNORE_INDEX = -100  # labels that are not trained (the Hugging Face / PyTorch cross-entropy convention)
MANIFEST_VERSIONS = (1,)
COLUMNS = ("input_ids", "labels", "id")


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

    def ids(self, indices: list[int]) -> list[str]:
        """The `id` column of these samples (provenance, for logs)."""
        return self.table.column("id").take(pa.array(indices, type=pa.int64())).to_pylist()


@dataclass(frozen=True)
class Shards:
    path: Path
    manifest: dict[str, Any]
    vocab_size: int
    pad_token_id: int | None
    bos_token_id: int | None
    eos_token_id: int | None
    splits: dict[str, Split]

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"


def open_shards(path: Path | str) -> Shards:
    """Open a `preprocess` output directory. Raises `InputError` for anything the trainer cannot use safely."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: no such shard directory (run `python -m pipeline preprocess` first)")
    manifest = _read_manifest(path)
    tok = manifest["tokenizer"]
    vocab_size = tok["vocab_size"]
    splits = {}
    for name in manifest["splits"]:
        split_dir = path / name
        if not split_dir.is_dir():
            raise InputError(f"{path}: manifest.json lists split {name!r} but {split_dir} is missing")
        splits[name] = _open_split(split_dir, name=name, vocab_size=vocab_size)
    if "train" not in splits:
        raise InputError(f"{path}: manifest.json has no 'train' split")
    if len(splits["train"]) == 0:
        raise InputError(f"{path}: the train split is empty")
    return Shards(path=path, manifest=manifest, vocab_size=vocab_size, pad_token_id=tok.get("pad_token_id"),
                  bos_token_id=tok.get("bos_token_id"), eos_token_id=tok.get("eos_token_id"), splits=splits)


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / "manifest.json"
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no manifest.json (not a `preprocess` output, or an interrupted one)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{file}: unreadable manifest: {e}") from None
    problems = []
    if not isinstance(manifest, dict):
        raise InputError(f"{file}: the manifest must be a JSON object")
    version = manifest.get("version")
    if version not in MANIFEST_VERSIONS:
        problems.append(f"version {version!r} is not one this trainer knows ({', '.join(map(str, MANIFEST_VERSIONS))})")
    tok = manifest.get("tokenizer")
    if not isinstance(tok, dict) or not _is_int(tok.get("vocab_size")) or tok["vocab_size"] < 1:
        problems.append("tokenizer.vocab_size must be a positive integer")
    else:
        for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
            if tok.get(key) is not None and not (_is_int(tok[key]) and 0 <= tok[key] < tok["vocab_size"]):
                problems.append(f"tokenizer.{key} must be null or an id below vocab_size, not {tok[key]!r}")
    if not isinstance(manifest.get("splits"), dict) or not manifest["splits"]:
        problems.append("splits must be a non-empty object of split name -> counts")
    if problems:
        raise InputError(f"{file}: invalid manifest: " + "; ".join(problems))
    return manifest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _arrow_files(split_dir: Path) -> list[Path]:
    state = split_dir / "state.json"
    if state.is_file():
        try:
            return [split_dir / f["filename"] for f in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{state}: unreadable: {e}") from None
    return sorted(split_dir.glob("data-*.arrow"))


def _open_split(split_dir: Path, *, name: str, vocab_size: int) -> Split:
    files = _arrow_files(split_dir)
    if not files:
        raise InputError(f"{split_dir}: no Arrow files")
    batches = []
    for file in files:
        try:
            # memory-mapped: the token lists stay in the page cache, not in this process's heap
            batches.extend(pa.ipc.open_stream(pa.memory_map(str(file), "r")).read_all().to_batches())
        except (OSError, pa.ArrowInvalid) as e:
            raise InputError(f"{file}: not a readable Arrow stream: {e}") from None
    table = pa.Table.from_batches(batches)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"{split_dir}: missing column(s) {', '.join(missing)}")
    chunks, counts = [], []
    for batch in batches:
        ids_col, labels_col = batch.column("input_ids"), batch.column("labels")
        if ids_col.null_count or labels_col.null_count:
            raise InputError(f"{split_dir}: null input_ids or labels")
        ids, offsets = _flat(ids_col)
        labels, label_offsets = _flat(labels_col)
        if not np.array_equal(offsets, label_offsets):
            raise InputError(f"{split_dir}: input_ids and labels differ in length in some rows")
        if ids.size:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= vocab_size:
                raise InputError(f"{split_dir}: token id {hi if hi >= vocab_size else lo} is outside the vocabulary "
                                 f"(manifest tokenizer.vocab_size = {vocab_size})")
            bad = (labels != IGNORE_INDEX) & (labels != ids)
            if bad.any():
                raise InputError(f"{split_dir}: {int(bad.sum())} labels are neither {IGNORE_INDEX} nor the token at "
                                 "their position (labels must be unshifted)")
        chunks.append((ids, labels, offsets))
        counts.append(len(offsets) - 1)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    lengths = np.concatenate([np.diff(c[2]) for c in chunks]).astype(np.int64) if chunks else np.zeros(0, np.int64)
    return Split(name=name, table=table, chunks=chunks, starts=starts, lengths=lengths)


def _flat(column: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """The values a list column uses and its offsets rebased to 0 (zero-copy views of the mapped buffers)."""
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    return values, (offsets - offsets[0]).astype(np.int64)


# --- planning: which samples go in which micro-batch ------------------------------------------------------------


def plan_epoch(lengths: np.ndarray, *, epoch: int, seed: int, batch_size: int | None, batch_tokens: int | None,
               bucket_batches: int, packing: bool, pack_length: int) -> list[list[list[int]]]:
    """The micro-batches of one epoch: each is a list of rows, each row a list of sample indices (one per row
    unless packing). Shuffled by (seed, epoch); padded batches are sorted by length within large random buckets, and
    packed rows are filled best-fit within such buckets, then shuffled."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if packing:
        per = batch_size or max(1, batch_tokens // pack_length)
        typical = max(1, pack_length // max(1, int(np.median(lengths))))  # samples in a row
        bucket = per * bucket_batches * typical
        rows = [row for b in range(0, len(order), bucket) for row in pack_rows(order[b:b + bucket], lengths, pack_length)]
        rows = [rows[k] for k in rng.permutation(len(rows)).tolist()]
        return [rows[k:k + per] for k in range(0, len(rows), per)]
    batches: list[list[list[int]]] = []
    bucket = (batch_size or max(1, batch_tokens // max(1, int(np.median(lengths))))) * bucket_batches
    for b in range(0, len(order), bucket):
        chunk = order[b:b + bucket]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")].tolist()  # longest first
        if batch_size:
            batches.extend([[i] for i in chunk[k:k + batch_size]] for k in range(0, len(chunk), batch_size))
        else:
            cur: list[list[int]] = []
            for i in chunk:  # sorted longest first, so the first sample sets the padded width
                if cur and (len(cur) + 1) * int(lengths[cur[0][0]]) > batch_tokens:
                    batches.append(cur)
                    cur = []
                cur.append([i])
            if cur:
                batches.append(cur)
    return [batches[k] for k in rng.permutation(len(batches)).tolist()]


def pack_rows(samples: np.ndarray, lengths: np.ndarray, pack_length: int) -> list[list[int]]:
    """Best-fit decreasing: the longest sample first, each into the fullest row it still fits, else a new row. Rows
    come out nearly full (a row closed at the first sample that does not fit is about two thirds full on chat data).
    Within a row, samples keep the order they were placed in; the order of rows is the caller's."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted: the first entry with room >= n is the best fit
    for i in samples[np.argsort(-lengths[samples], kind="stable")].tolist():
        n = int(lengths[i])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
        else:
            room, r = pack_length, len(rows)
            rows.append([])
        rows[r].append(i)
        bisect.insort(free, (room - n, r))
    return rows


def plan_eval(lengths: np.ndarray, *, batch_size: int | None, batch_tokens: int | None, packing: bool,
              pack_length: int) -> list[list[list[int]]]:
    """Eval micro-batches: a fixed order (no shuffle), padded or packed like training."""
    return plan_epoch(lengths, epoch=0, seed=0, batch_size=batch_size, batch_tokens=batch_tokens,
                      bucket_batches=len(lengths) + 1, packing=packing, pack_length=pack_length)


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None  # padded batches
    position_ids: torch.Tensor | None  # packed batches: restart at 0 for every sample
    samples: list[int]  # sample indices, in order
    tokens: int  # real (non-pad) tokens
    positions: int  # all positions, padding included
    trained: int  # positions whose shifted label is trained: the loss denominator's share
    sample_lengths: torch.Tensor  # per position, the length of the sample it belongs to (0 on padding): NEFTune

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids.to(device, non_blocking=True)}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask.to(device, non_blocking=True)
        if self.position_ids is not None:
            out["position_ids"] = self.position_ids.to(device, non_blocking=True)
        return out


def collate(split: Split, rows: list[list[int]], *, pad_id: int, packing: bool) -> Batch:
    """Right-padded tensors for these rows. Labels are padded with IGNORE_INDEX. A packed row gets position_ids
    restarting per sample and no attention mask: transformers then masks attention across samples (block-diagonal
    for sdpa/eager, variable-length for flash-attention). Each packed sample's first label is ignored, so no sample
    is trained to predict the first token of the next one."""
    width = max(sum(int(split.lengths[i]) for i in row) for row in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention = None if packing else torch.zeros((n, width), dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long) if packing else None
    sample_lengths = torch.zeros((n, width), dtype=torch.int32)
    samples, tokens = [], 0
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            ids, lab = split.sample(i)
            end = at + len(ids)
            input_ids[r, at:end] = torch.from_numpy(ids.astype(np.int64))
            labels[r, at:end] = torch.from_numpy(lab.astype(np.int64))
            sample_lengths[r, at:end] = len(ids)
            if packing:
                labels[r, at] = IGNORE_INDEX
                positions[r, at:end] = torch.arange(len(ids))
            else:
                attention[r, at:end] = 1
            samples.append(i)
            at = end
        tokens += at
        if packing and at < width:  # the padding tail is one more (untrained) pseudo-sample
            positions[r, at:] = torch.arange(width - at)
    trained = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return Batch(input_ids=input_ids, labels=labels, attention_mask=attention, position_ids=positions,
                 samples=samples, tokens=tokens, positions=n * width, trained=trained, sample_lengths=sample_lengths)


class MicroBatches:
    """The endless, epoch after epoch, deterministic stream of training micro-batches, addressed by global index."""

    def __init__(self, split: Split, *, seed: int, batch_size: int | None, batch_tokens: int | None,
                 bucket_batches: int, packing: bool, pack_length: int, pad_id: int):
        self.split = split
        self.pad_id = pad_id
        self.packing = packing
        self._plan_args = dict(seed=seed, batch_size=batch_size, batch_tokens=batch_tokens,
                               bucket_batches=bucket_batches, packing=packing, pack_length=pack_length)
        self._plans: dict[int, list[list[list[int]]]] = {}
        self._starts = [0]  # global index of the first micro-batch of each epoch planned so far

    def plan(self, epoch: int) -> list[list[list[int]]]:
        if epoch not in self._plans:
            self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}  # keep memory flat
            self._plans[epoch] = plan_epoch(self.split.lengths, epoch=epoch, **self._plan_args)
        return self._plans[epoch]

    def locate(self, k: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of global micro-batch `k`."""
        while len(self._starts) <= 1 or self._starts[-1] <= k:
            e = len(self._starts) - 1
            self._starts.append(self._starts[-1] + len(self.plan(e)))
        e = int(np.searchsorted(self._starts, k, side="right")) - 1
        return e, k - self._starts[e]

    def __getitem__(self, k: int) -> Batch:
        epoch, j = self.locate(k)
        return collate(self.split, self.plan(epoch)[j], pad_id=self.pad_id, packing=self.packing)

    def epoch_of(self, k: int) -> float:
        epoch, j = self.locate(k)
        return epoch + j / len(self.plan(epoch))


def steps_for_epochs(stream: MicroBatches, *, epochs: float, per_step: int) -> int:
    """Optimizer steps for `epochs` passes, counting the micro-batches of the epochs actually planned."""
    whole = math.floor(epochs)
    total = sum(len(stream.plan(e)) for e in range(whole))
    total += round((epochs - whole) * len(stream.plan(whole))) if epochs > whole else 0
    return max(1, math.ceil(total / per_step))


def check_fits(split: Split, *, batch_tokens: int | None, packing: bool, pack_length: int) -> None:
    """Refuse sizes that cannot hold the longest sample, before any model is built."""
    longest = int(split.lengths.max())
    if packing and longest > pack_length:
        n = int((split.lengths > pack_length).sum())
        raise ConfigError([f"pack_length ({pack_length}) is below the longest {split.name} sample ({longest} tokens, "
                           f"{n} samples longer): raise pack_length or truncate in preprocess"])
    if not packing and batch_tokens is not None and longest > batch_tokens:
        raise ConfigError([f"batch_tokens ({batch_tokens}) is below the longest {split.name} sample ({longest})"])
