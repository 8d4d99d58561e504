"""Arrow shards in the layout of `datasets.DatasetDict.save_to_disk`, written atomically and byte-reproducibly.

Files are Arrow IPC streams with the `datasets` feature metadata, so `datasets.load_from_disk(DIR)` opens them and
any Arrow reader memory-maps them. Nothing here depends on time, paths or randomness: the same rows give the same
bytes. The manifest (a `Manifest`, see `format.py`) is written last, atomically, with sorted keys.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.checksums import sha256_file
from pipeline.outputs import write_atomic
from pipeline.shards.arrays import numeric_array, string_array
from pipeline.shards.format import FEATURES, IGNORE_INDEX, MANIFEST, SCHEMA, Manifest, ShardInfo


@dataclass(frozen=True)
class Sample:
    """One written row."""

    input_ids: np.ndarray
    labels: np.ndarray
    id: str
    source: str
    row: int


@dataclass(frozen=True)
class SampleTable:
    """A batch of samples as one Arrow table with its counts. Built where the samples are made (a worker process):
    it pickles as a few flat buffers, and the writing process only appends it."""

    table: pa.Table
    tokens: int
    trained_tokens: int

    @classmethod
    def of(cls, samples: list[Sample]) -> "SampleTable":
        lengths = np.array([len(s.input_ids) for s in samples], dtype=np.int64)
        offsets = numeric_array(np.concatenate(([0], np.cumsum(lengths))), pa.int32())
        flat_ids = np.concatenate([s.input_ids for s in samples] or [np.zeros(0)]).astype(np.int32)
        flat_labels = np.concatenate([s.labels for s in samples] or [np.zeros(0)]).astype(np.int32)
        table = pa.Table.from_arrays(
            [
                pa.ListArray.from_arrays(offsets, numeric_array(flat_ids, pa.int32())),
                pa.ListArray.from_arrays(offsets, numeric_array(flat_labels, pa.int32())),
                numeric_array(lengths, pa.int32()),
                string_array([s.id for s in samples]),
                string_array([s.source for s in samples]),
                numeric_array(np.array([s.row for s in samples], dtype=np.int64), pa.int64()),
            ],
            schema=SCHEMA,
        )
        return cls(table, len(flat_ids), int(np.count_nonzero(flat_labels != IGNORE_INDEX)))


class ShardWriter:
    """One shard file written as it fills: each batch of samples is appended to a temp file as Arrow record
    batches, so memory holds one batch, not one shard. `close` renames it into place and returns its manifest entry."""

    def __init__(self, path: Path, schema: pa.Schema = SCHEMA):
        self.path = path
        self.schema = schema
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._handle = None
        self._writer = None
        self.rows = self.tokens = self.trained_tokens = 0

    def write(self, batch: SampleTable) -> None:
        if not batch.table.num_rows:
            return
        if self._writer is None:
            self._handle = open(self._tmp, "wb")
            self._writer = pa.ipc.new_stream(self._handle, self.schema)
        self._writer.write_table(batch.table, max_chunksize=1000)
        self.rows += batch.table.num_rows
        self.tokens += batch.tokens
        self.trained_tokens += batch.trained_tokens

    def close(self) -> ShardInfo | None:
        """Finish the file (None when nothing was written)."""
        if self._writer is None:
            return None
        self._writer.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._tmp, self.path)
        return ShardInfo(file=self.path.name, rows=self.rows, tokens=self.tokens, trained_tokens=self.trained_tokens,
                         sha256=sha256_file(self.path))


def split_files(total: int) -> list[str]:
    """The files `finalize_split` writes for a split of `total` shards: the shards under their `datasets` names,
    then the metadata files."""
    return [f"data-{k:05d}-of-{total:05d}.arrow" for k in range(total)] + ["state.json", "dataset_info.json"]


def finalize_split(split_dir: Path, shards: list[tuple[Path, ShardInfo]], features: dict[str, Any] = FEATURES
                   ) -> list[ShardInfo]:
    """Move a split's shard files into place under their `datasets` names and write its metadata files (`features`:
    those of the files' columns)."""
    split_dir.mkdir(parents=True, exist_ok=True)
    names = split_files(len(shards))
    final: list[ShardInfo] = []
    for name, (path, info) in zip(names, shards):
        os.replace(path, split_dir / name)
        final.append(info.model_copy(update={"file": name}))
    fingerprint = hashlib.sha256("".join(s.sha256 for s in final).encode()).hexdigest()[:16]
    state = {
        "_data_files": [{"filename": s.file} for s in final],
        "_fingerprint": fingerprint,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    info = {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}
    write_atomic(split_dir / "state.json", _json_bytes(state))
    write_atomic(split_dir / "dataset_info.json", _json_bytes(info))
    return final


def write_dataset_dict(out: Path, splits: list[str]) -> None:
    write_atomic(out / "dataset_dict.json", _json_bytes({"splits": splits}))


def write_manifest(out: Path, manifest: Manifest) -> None:
    """Written last: a directory with a manifest is a complete output."""
    write_atomic(out / MANIFEST, _json_bytes(manifest.to_json()))


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
