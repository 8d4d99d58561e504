"""Shards to micro-batches. Reads only `manifest.json` and the memory-mapped Arrow files (through
`pipeline.shards.reader`): no tokenizer, no template.

The order of micro-batches is a pure function of (seed, epoch), the same on every rank, so a position in the stream
(the global micro-batch index) is all a checkpoint needs to resume the data exactly. Rank `r` of `W` takes, for
optimizer step `s` with `A` micro-batches per rank, the global micro-batches `(s*W + r)*A ... (s*W + r)*A + A-1`.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import ConfigError, InputError
from pipeline.shards.format import IGNORE_INDEX
from pipeline.shards.reader import Shards, Split, open_shards


def open_training_shards(path: Path | str, storage_options: dict[str, Any] | None = None) -> Shards:
    """Open a `preprocess` output for training (`storage_options`: how to reach one in object storage). Raises
    `InputError` for anything the trainer cannot use safely: no train split, an empty one, a token outside the
    manifest's vocabulary, a label that is not unshifted."""
    shards = open_shards(path, storage_options)
    if "train" not in shards.manifest.splits:
        raise InputError(f"{shards.where}: manifest.json has no 'train' split")
    for split in shards.splits.values():
        split.check_tokens(shards.manifest.tokenizer.vocab_size)
    if len(shards.split("train")) == 0:
        raise InputError(f"{shards.where}: the train split is empty")
    return shards


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
