"""The one reader: clear refusals naming the file and field, splits memory-mapped from the files the manifest lists."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.errors import InputError
from pipeline.shards.format import IGNORE_INDEX, MANIFEST
from pipeline.shards.reader import iter_batches, open_shards, row_arrays
from schemas.config import MaskConfig, TruncationConfig
from tests.shards.fake_output import sample, write_output


def rows(n: int, vocab: int = 32) -> list:
    return [sample(k, [(4 + 3 * k + j) % vocab for j in range(3 + k % 4)], trained_from=1) for k in range(n)]


@pytest.fixture
def out(tmp_path):
    return write_output(tmp_path / "out", {"eval": rows(3), "train": rows(8)}, vocab_size=32, rows_per_shard=3)


def edit_manifest(out, edit) -> None:
    manifest = json.loads((out / MANIFEST).read_text())
    edit(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest))


def test_splits_files_and_rows(out):
    shards = open_shards(out)
    assert shards.split_names == ["train", "eval"] and shards.tokenizer_dir == out / "tokenizer"
    assert [p.name for p, _ in shards.files("train")] == [f"data-0000{k}-of-00003.arrow" for k in range(3)]
    train = shards.split("train")
    assert len(train) == 8 and train.lengths.tolist() == [len(s.input_ids) for s in rows(8)]
    for k, expected in enumerate(rows(8)):
        row = train.row(k)
        assert (row.split, row.index, row.id) == ("train", k, expected.id)
        assert row.input_ids.tolist() == expected.input_ids.tolist() and row.labels.tolist() == expected.labels.tolist()
    assert train.index_of("row-5") == 5 and train.index_of("nope") is None
    assert train.ids([7, 0]) == ["row-7", "row-0"] and shards.split("train") is train  # opened once


def test_token_arrays_are_views_of_the_mapped_files(out):
    ids, labels = open_shards(out).split("train").sample(4)
    assert not ids.flags.owndata and not labels.flags.owndata and ids.dtype == np.int32


def test_row_arrays_rebase_sliced_batches_and_accept_empty_ones(out):
    batch = next(iter_batches(out / "train" / "data-00000-of-00003.arrow"))
    offsets, values = row_arrays(batch.slice(1, 2).column("input_ids"))
    assert offsets[0] == 0 and values.tolist() == rows(3)[1].input_ids.tolist() + rows(3)[2].input_ids.tolist()
    offsets, values = row_arrays(batch.slice(0, 0).column("labels"))
    assert offsets.tolist() == [0] and len(values) == 0


@pytest.mark.parametrize("damage, message", [
    (lambda out: (out / MANIFEST).unlink(), "is not a preprocess output: no manifest.json"),
    (lambda out: (out / MANIFEST).write_text("{not json"), "manifest.json is not a valid manifest: unreadable"),
    (lambda out: (out / MANIFEST).write_text("[1]"), "manifest.json is not a valid manifest: it must be a JSON object"),
    (lambda out: edit_manifest(out, lambda m: m.update(version=1)), "version 1 is not one this chatshard reads"),
    (lambda out: edit_manifest(out, lambda m: m["splits"]["train"]["shards"][1].update(rows="3")),
     "manifest.json is not a valid manifest: splits.train.shards.1.rows: Input should be a valid integer"),
    (lambda out: edit_manifest(out, lambda m: m.update(mixture={})), "mixture: unknown key"),
    (lambda out: (out / "eval" / "data-00000-of-00001.arrow").unlink(), "shard files named in the manifest are missing"),
])
def test_an_unusable_output_is_an_input_error_naming_file_and_field(out, damage, message):
    damage(out)
    with pytest.raises(InputError, match=message):
        open_shards(out)


def test_a_missing_directory(tmp_path):
    with pytest.raises(InputError, match="no such shard directory"):
        open_shards(tmp_path / "nope")


def test_config_sections_are_validated_against_this_version(out):
    shards = open_shards(out)
    assert shards.config_section("mask", MaskConfig) == MaskConfig()
    edit_manifest(out, lambda m: m["config"]["truncation"].update(strategy="sideways"))
    with pytest.raises(InputError, match=r"manifest.json is not a valid manifest: config.truncation: strategy: "):
        open_shards(out).config_section("truncation", TruncationConfig)


def test_unreadable_and_misaligned_shards(out):
    path = out / "eval" / "data-00000-of-00001.arrow"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="data-00000-of-00001.arrow: not a readable Arrow stream"):
        open_shards(out).split("eval")
    table = pa.Table.from_batches(list(iter_batches(out / "train" / "data-00000-of-00003.arrow")))
    labels = table.column("labels").to_pylist()
    labels[0] = labels[0][:-1]
    bad = table.set_column(1, "labels", pa.array(labels, type=pa.list_(pa.int32())))
    with pa.ipc.new_stream(str(out / "train" / "data-00000-of-00003.arrow"), bad.schema) as writer:
        writer.write_table(bad)
    with pytest.raises(InputError, match="input_ids and labels differ in length"):
        open_shards(out).split("train")


def test_check_tokens_refuses_ids_outside_the_vocabulary_and_shifted_labels(tmp_path):
    good = open_shards(write_output(tmp_path / "a", {"train": rows(4)}, vocab_size=32)).split("train")
    good.check_tokens(32)
    with pytest.raises(InputError, match=r"token id \d+ is outside the vocabulary"):
        good.check_tokens(10)
    shifted = rows(4)
    shifted[2].labels[1:] = np.roll(shifted[2].input_ids, -1)[1:]
    shifted[2].labels[-1] = IGNORE_INDEX
    split = open_shards(write_output(tmp_path / "b", {"train": shifted}, vocab_size=32)).split("train")
    with pytest.raises(InputError, match="labels are neither -100 nor the token at their position"):
        split.check_tokens(32)
