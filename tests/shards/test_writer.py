"""The writer: `datasets` layout, byte-reproducible shards, a manifest written from the model and read back unchanged."""
from __future__ import annotations

import json

import datasets

from pipeline.checksums import sha256_file
from pipeline.run import preprocess
from pipeline.shards.format import MANIFEST, Manifest
from pipeline.shards.writer import SampleTable, ShardWriter
from schemas.config import load_config
from tests.conftest import DEMO_TOKENIZER
from tests.shards.fake_output import sample, write_output


def samples(n: int) -> list:
    return [sample(k, list(range(4, 9 + k % 5)), trained_from=2) for k in range(n)]


def test_datasets_opens_what_the_writer_writes(tmp_path):
    out = write_output(tmp_path / "out", {"train": samples(7), "eval": samples(2)}, vocab_size=32, rows_per_shard=3)
    loaded = datasets.load_from_disk(str(out))
    assert {name: len(split) for name, split in loaded.items()} == {"train": 7, "eval": 2}
    assert loaded["train"][4]["input_ids"] == samples(7)[4].input_ids.tolist()
    assert loaded["train"][4]["labels"] == samples(7)[4].labels.tolist() and loaded["train"][4]["id"] == "row-4"
    manifest = Manifest.model_validate_json((out / MANIFEST).read_text())
    train = manifest.splits["train"]
    assert [s.file for s in train.shards] == [f"data-0000{k}-of-00003.arrow" for k in range(3)]
    assert [s.rows for s in train.shards] == [3, 3, 1] and train.rows == 7
    assert train.tokens == sum(len(s.input_ids) for s in samples(7)) and train.trained_tokens == train.tokens - 14
    assert all(sha256_file(out / "train" / s.file) == s.sha256 for s in train.shards)


def test_the_same_rows_give_the_same_bytes(tmp_path):
    first = write_output(tmp_path / "a", {"train": samples(5)}, vocab_size=32)
    second = write_output(tmp_path / "b", {"train": samples(5)}, vocab_size=32)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files and all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


def test_a_shard_with_nothing_written_leaves_no_file(tmp_path):
    writer = ShardWriter(tmp_path / "empty.arrow")
    writer.write(SampleTable.of([]))
    assert writer.close() is None and not any(tmp_path.iterdir())


def test_a_real_manifest_validates_and_is_written_back_byte_for_byte(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Hi {k}"},
                                                     {"role": "assistant", "content": f"Hello {k}."}]}) + "\n"
                            for k in range(3)), encoding="utf-8")
    out = tmp_path / "out"
    returned = preprocess(load_config(None, {"inputs": [str(data)], "render.tokenizer": str(DEMO_TOKENIZER)}), out)
    text = (out / MANIFEST).read_text(encoding="utf-8")
    manifest = Manifest.model_validate_json(text)
    assert manifest.to_json() == returned == json.loads(text)
    assert json.dumps(manifest.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n" == text
    assert manifest.splits["train"].rows == manifest.accounting.written == 3
    assert all(s.sha256 == sha256_file(out / "train" / s.file) for s in manifest.splits["train"].shards)
