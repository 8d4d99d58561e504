"""The one reader: clear refusals naming the file and field, splits memory-mapped from the files the manifest lists."""
from __future__ import annotations

import json
import os

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


def test_stream_reads_every_row_in_order_one_batch_at_a_time(out):
    shards = open_shards(out)
    batches = list(shards.stream("train"))
    assert [(b.start, len(b)) for b in batches] == [(0, 3), (3, 3), (6, 2)]  # one batch per shard file here
    streamed = [b.row(k) for b in batches for k in range(len(b))]
    train = shards.split("train")
    for k, row in enumerate(streamed):
        assert (row.split, row.index, row.id) == ("train", k, train.row(k).id)
        assert row.input_ids.tolist() == train.row(k).input_ids.tolist()
        assert row.labels.tolist() == train.row(k).labels.tolist()
    assert batches[1].column("id") == ["row-3", "row-4", "row-5"]
    assert [r.index for r in shards.take("train", [7, 2, 4])] == [7, 2, 4]
    assert shards.take("train", [99]) == [] and shards.sources == []


def test_stream_refuses_what_split_refuses(out):
    path = out / "train" / "data-00001-of-00003.arrow"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="data-00001-of-00003.arrow: not a readable Arrow stream"):
        list(open_shards(out).stream("train"))
    with pytest.raises(InputError, match=r"missing column\(s\) nope, x"):
        list(open_shards(out).stream("eval", columns=("input_ids", "labels", "id", "source", "nope", "x")))


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


def _upload(out, url: str) -> None:
    from pipeline.storage import open_store

    open_store(url).upload((p, p.relative_to(out).as_posix()) for p in sorted(out.rglob("*")) if p.is_file())


@pytest.fixture
def on_s3(out, s3_env, tmp_path, monkeypatch):
    """`out` uploaded to a prefix of the local S3 server, and a fresh cache for copies of outputs in storage."""
    pytest.importorskip("s3fs")
    monkeypatch.setenv("CHATSHARD_CACHE", str(tmp_path / "cache"))
    url = f"s3://{s3_env}/shards"
    _upload(out, url)
    return url


def test_an_output_in_object_storage_is_copied_down_checked_and_reused(out, on_s3, monkeypatch):
    from pipeline.storage import Store

    shards = open_shards(on_s3)
    assert str(shards.path).startswith(os.environ["CHATSHARD_CACHE"])
    assert len(shards.split("train")) == 8 and shards.split("train").row(5).id == "row-5"
    for path, _ in shards.files("train"):
        assert path.read_bytes() == (out / "train" / path.name).read_bytes()
    monkeypatch.setattr(Store, "download", lambda *a: pytest.fail("an up-to-date copy is fetched again"))
    assert open_shards(on_s3).path == shards.path


def test_a_shard_in_storage_that_differs_from_the_manifest_is_refused(out, on_s3):
    from pipeline.storage import open_store

    open_store(on_s3).write("train/data-00001-of-00003.arrow", b"not the shard")
    with pytest.raises(InputError, match=r"s3://.*/shards/train/data-00001-of-00003.arrow: sha256 differs from the manifest's"):
        open_shards(on_s3)


def test_errors_in_a_copied_down_output_name_its_url_not_the_cache(out, s3_env, tmp_path, monkeypatch):
    from pipeline.checksums import sha256_file

    shard = out / "train" / "data-00001-of-00003.arrow"
    shard.write_bytes(b"not an arrow stream")  # with the manifest's sha256 to match: only reading it finds out
    edit_manifest(out, lambda m: m["splits"]["train"]["shards"][1].update(sha256=sha256_file(shard)))
    edit_manifest(out, lambda m: m["config"].update(truncation={"max_length": "long"}))
    monkeypatch.setenv("CHATSHARD_CACHE", str(tmp_path / "cache"))
    url = f"s3://{s3_env}/shards"
    _upload(out, url)
    shards = open_shards(url)
    named = rf"^{url}/train/data-00001-of-00003.arrow: not a readable Arrow stream"
    with pytest.raises(InputError, match=named):
        shards.split("train")
    with pytest.raises(InputError, match=named):
        list(shards.stream("train"))
    with pytest.raises(InputError, match=rf"^{url}/manifest.json is not a valid manifest: config.truncation"):
        shards.config_section("truncation", TruncationConfig)


def test_a_key_that_would_land_outside_the_copy_is_refused_and_nothing_is_written_there(on_s3, s3_env, tmp_path):
    import boto3

    boto3.client("s3").put_object(Bucket=s3_env, Key="shards/train/../../../escaped.txt", Body=b"x")
    with pytest.raises(InputError, match=r"shards/train/\.\./\.\./\.\./escaped.txt: not a plain path inside the output"):
        open_shards(on_s3)
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("*"))


def test_processes_fetching_the_same_output_at_once_download_it_once(on_s3, monkeypatch):
    import threading
    import time

    from pipeline.storage import Store

    fetched = []
    download = Store.download

    def slow_download(self, rel, local):
        fetched.append(rel)
        time.sleep(0.05)  # long enough for the other fetch to start meanwhile
        download(self, rel, local)

    monkeypatch.setattr(Store, "download", slow_download)
    paths, errors = [], []

    def fetch_one():
        try:
            paths.append(open_shards(on_s3).path)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    workers = [threading.Thread(target=fetch_one) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors and len(paths) == 2 and paths[0] == paths[1]
    assert fetched and len(fetched) == len(set(fetched)), fetched


def test_a_prefix_without_a_manifest_is_not_an_output(s3_env):
    pytest.importorskip("s3fs")
    with pytest.raises(InputError, match=r"s3://.*/nothing is not a preprocess output: no manifest.json"):
        open_shards(f"s3://{s3_env}/nothing")
