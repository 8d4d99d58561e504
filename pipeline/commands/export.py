"""`export`: a copy of a `preprocess` output laid out as one trainer loads it, so it takes the shards as they are.

Each consumer gets a `datasets.DatasetDict.save_to_disk` layout with the columns its collator accepts and the split
names its loader looks for (what each loader requires, read from its source, is in `LAYOUTS` and the README):
- `trl`: `input_ids`, `labels` (SFTTrainer keeps only those; the labels are used as they are), splits train/eval;
- `llamafactory`: `input_ids`, `attention_mask`, `labels` (its collator pads every column, so no string column may
  remain), splits train/validation (`tokenized_path` loading reads only those two names);
- `axolotl`: `input_ids`, `attention_mask`, `labels` (the three a dataset needs to be taken as pre-tokenized),
  splits train/test (`datasets:` reads `train`, `test_datasets:` reads `test`);
- `hf`: the same three columns, splits train/validation: the Hugging Face convention, for any other trainer.

The shards are read through the one reader and checked against the manifest's checksums first; each shard file
becomes one file of the copy (memory holds one record batch), written under the output-directory rules of
`pipeline/outputs.py`: never into the shards' own directory, never over a path the tool did not create. The shards'
tokenizer is copied beside the splits, and `export.json` says where the copy came from.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import __version__
from pipeline.checksums import sha256_file
from pipeline.errors import InputError
from pipeline.outputs import claim, write_atomic
from pipeline.shards.format import ATTENTION_MASK, IGNORE_INDEX, MANIFEST, ShardInfo, SplitInfo, schema_of
from pipeline.shards.reader import Shards, iter_batches, open_shards, row_arrays
from pipeline.shards.writer import (SampleTable, ShardWriter, finalize_split, split_files,
                                    write_dataset_dict)
from schemas.consumers import Consumer

EXPORT_INFO = "export.json"
WORK_DIR = ".work"
TOKENIZER = "tokenizer"
SPLIT_NAMES = ("train", "eval", "validation", "test")  # every name any layout gives a split


@dataclass(frozen=True)
class Layout:
    """What one consumer loads: these columns, and each split of the shards under the name its loader reads."""

    columns: tuple[str, ...]
    split_names: dict[str, str]  # shards' split -> the consumer's


TRAINER_COLUMNS = ("input_ids", ATTENTION_MASK, "labels")
LAYOUTS: dict[Consumer, Layout] = {
    "trl": Layout(("input_ids", "labels"), {"train": "train", "eval": "eval"}),
    "llamafactory": Layout(TRAINER_COLUMNS, {"train": "train", "eval": "validation"}),
    "axolotl": Layout(TRAINER_COLUMNS, {"train": "train", "eval": "test"}),
    "hf": Layout(TRAINER_COLUMNS, {"train": "train", "eval": "validation"}),
}


def export(directory: Path | str, consumer: Consumer, out: Path | str,
           storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the copy of the shards in `directory` (`storage_options`: how to reach one in object storage) that
    `consumer` loads into `out`; returns what `export.json` says. `InputError` for shards that are not valid or whose
    files differ from the manifest, `OutputError` for an `out` that may not be written."""
    layout = LAYOUTS[consumer]
    shards = open_shards(directory, storage_options)
    _refuse_changed_files(shards)
    out = Path(out)
    names = [layout.split_names[split] for split in shards.split_names]
    owned = claim(out, "export", inputs=[shards.path],
                  writes=[EXPORT_INFO, "dataset_dict.json", TOKENIZER, WORK_DIR, *SPLIT_NAMES])
    owned.remove(EXPORT_INFO)  # the copy is complete only once it is written again
    for name in SPLIT_NAMES:
        owned.remove(name)  # also an earlier export's split that this layout names otherwise
    work = owned.scratch(WORK_DIR, fresh=True)
    schema = schema_of(layout.columns)
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    splits = {}
    for split, name in zip(shards.split_names, names):
        files = shards.files(split)
        owned.record(*(f"{name}/{file}" for file in split_files(len(files))))
        written = [_copy_file(path, work / f"{name}-{k:05d}.arrow", layout.columns)
                   for k, (path, _) in enumerate(files)]
        splits[name] = SplitInfo.of(finalize_split(out / name, written, features))
    write_dataset_dict(out, names)
    shutil.copytree(shards.tokenizer_dir, owned.scratch(f"{WORK_DIR}/{TOKENIZER}", fresh=True), dirs_exist_ok=True)
    owned.replace_dir(f"{WORK_DIR}/{TOKENIZER}", TOKENIZER)
    info = {
        "tool": {"name": "chatshard", "version": __version__},
        "consumer": consumer,
        "source": {"path": shards.where, "manifest_sha256": sha256_file(shards.path / MANIFEST)},
        "columns": list(layout.columns),
        "splits": {name: {"from": split, **splits[name].to_json()} for split, name in zip(shards.split_names, names)},
    }
    owned.record(EXPORT_INFO)
    write_atomic(out / EXPORT_INFO, (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    owned.remove(WORK_DIR)
    return info


def _refuse_changed_files(shards: Shards) -> None:
    """A copy of a shard file that differs from its manifest entry would pass the damage on unnoticed."""
    changed = shards.changed_files()
    if changed:
        raise InputError(f"{shards.shown(changed[0])}: sha256 differs from {shards.shown(shards.path / MANIFEST)}; "
                         "the shards changed after preprocess wrote them (`python -m pipeline check "
                         f"{shards.where}` says more)")


def _copy_file(source: Path, dest: Path, columns: tuple[str, ...]) -> tuple[Path, ShardInfo]:
    """One shard file with only `columns`, batch by batch; returns (the written file, its manifest entry)."""
    writer = ShardWriter(dest, schema_of(columns))
    for batch in iter_batches(source):
        offsets, ids = row_arrays(batch.column("input_ids"))
        _, labels = row_arrays(batch.column("labels"))
        arrays = {"input_ids": batch.column("input_ids"), "labels": batch.column("labels"),
                  ATTENTION_MASK: pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                                           pa.array(np.ones(len(ids), np.int8)))}
        table = pa.Table.from_arrays([arrays[c] for c in columns], schema=schema_of(columns))
        writer.write(SampleTable(table, len(ids), int(np.count_nonzero(labels != IGNORE_INDEX))))
    entry = writer.close()
    if entry is None:  # preprocess never lists one
        raise InputError(f"{source}: a shard file with no rows")
    return dest, entry
