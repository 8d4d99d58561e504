"""A small output directory written by the real shard writer, with a manifest the `Manifest` model accepts: for tests
that need shards but not a tokenizing `preprocess` run (the reader's, the trainer's)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.shards.format import IGNORE_INDEX, MANIFEST_VERSION, Manifest, SplitInfo
from pipeline.shards.writer import Sample, SampleTable, ShardWriter, finalize_split, write_dataset_dict, write_manifest
from schemas.config import PreprocessConfig

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
TEMPLATE_SHA256 = hashlib.sha256(b"a test template").hexdigest()


def sample(k: int, ids: list[int], trained_from: int) -> Sample:
    """Sample `k`: `ids`, trained from position `trained_from` on."""
    input_ids = np.array(ids, dtype=np.int32)
    labels = np.where(np.arange(len(ids)) >= trained_from, input_ids, IGNORE_INDEX).astype(np.int32)
    return Sample(input_ids, labels, f"row-{k}", "fake.jsonl", k + 1)


def write_output(path: Path, splits: dict[str, list[Sample]], *, vocab_size: int, rows_per_shard: int = 1000,
                 eos_token_id: int | None = None, pad_token_id: int | None = None) -> Path:
    """Each split's samples in shards of `rows_per_shard`, the `datasets` metadata, an empty rejects.jsonl and the
    manifest (written last, as `preprocess` does)."""
    path.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, samples in splits.items():
        shards = []
        for k in range(0, len(samples), rows_per_shard):
            writer = ShardWriter(path / f".{name}-{k}.arrow")
            writer.write(SampleTable.of(samples[k : k + rows_per_shard]))
            shards.append((writer.path, writer.close()))
        entries[name] = SplitInfo.of(finalize_split(path / name, shards))
    write_dataset_dict(path, list(entries))
    (path / "rejects.jsonl").write_bytes(b"")
    written = sum(len(samples) for samples in splits.values())
    write_manifest(path, Manifest(
        version=MANIFEST_VERSION,
        tool={"name": "chatshard", "version": __version__},
        config=PreprocessConfig(inputs=("fake.jsonl",)).model_dump(mode="json"),
        inputs=[{"path": "fake.jsonl", "format": "openai", "bytes": 0, "sha256": EMPTY_SHA256}],
        tokenizer={"fingerprint": "0" * 64, "class": "PreTrainedTokenizerFast", "vocab_size": vocab_size,
                   "bos_token_id": None, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
                   "special_tokens": {}, "chat_template_sha256": TEMPLATE_SHA256},
        chat_template={"source": "tokenizer", "sha256": TEMPLATE_SHA256, "tool_role": None, "injects": ""},
        encoder={"name": "hf", "reason": "a test fixture"},
        splits=entries,
        accounting={"read": written, "written": written, "rejected": 0, "filtered": 0, "rejected_reasons": {},
                    "filtered_reasons": {}, "notes": {}, "note_tokens": {}, "balanced": True},
        rejects_sha256=EMPTY_SHA256,
    ))
    return path
