"""Columnar containers (Parquet, Arrow IPC file and stream, `datasets.save_to_disk` folders) and bare-array JSON Lines:
the same records give the same shards whatever holds them, and every row keeps its file and row."""
from __future__ import annotations

import json

import datasets
import pytest

from pipeline.errors import InputError, Reason, RowError
from pipeline.stages.ingest import detect_format, iter_records, read_conversations, resolve_inputs
from schemas.records import Conversation
from schemas.sources import SourceConfig
from tests.inputs import CONVERSIONS, build, chat_records, convert, same_shards, write_jsonl, write_parquet

SRC = SourceConfig()


@pytest.mark.parametrize("kind", CONVERSIONS)
def test_a_jsonl_file_and_its_conversion_give_the_same_shards(tmp_path, kind):
    jsonl = write_jsonl(tmp_path / "chats.jsonl", chat_records())
    converted = convert(jsonl, kind, tmp_path / kind)
    reference = build([str(jsonl)], tmp_path / "out-jsonl")
    manifest = build([str(converted)], tmp_path / "out")
    assert reference["accounting"]["written"] == 12 and set(reference["splits"]) == {"train", "eval"}
    data_file = converted / "train" / "data-00000-of-00001.arrow" if kind == "save_to_disk" else converted
    same_shards(tmp_path / "out", manifest, tmp_path / "out-jsonl", reference, {str(jsonl): str(data_file)})
    assert [i["path"] for i in manifest["inputs"]] == [str(data_file)] and manifest["inputs"][0]["sha256"]


def test_columnar_rows_are_numbered_from_one_and_nulls_read_as_absent_keys(tmp_path):
    rows = chat_records(3)
    path = convert(write_jsonl(tmp_path / "chats.jsonl", rows), "arrow_stream", tmp_path)
    records = list(iter_records(path, SRC))
    assert [(r.source, r.row) for r in records] == [(str(path), 1), (str(path), 2), (str(path), 3)]
    assert [r.data for r in records] == [_without_none(r) for r in rows]


def _without_none(value):
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return [_without_none(v) for v in value] if isinstance(value, list) else value


def test_a_bad_parquet_row_is_rejected_with_its_file_and_row(tmp_path):
    rows = chat_records(4)
    rows[2]["messages"][0]["role"] = "robot"
    path = write_parquet(tmp_path / "chats.parquet", rows)
    items = list(read_conversations({path: detect_format(path, SRC)}, SRC))
    assert [type(i) for i in items] == [Conversation, Conversation, RowError, Conversation]
    bad = items[2]
    assert (bad.source, bad.row, bad.reason, bad.field) == (str(path), 3, Reason.UNKNOWN_ROLE, "messages.0.role")
    manifest = build([str(path)], tmp_path / "out")
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["source"], r["row"], r["reason"]) for r in rejects] == [(str(path), 3, "unknown_role")]
    assert manifest["accounting"]["read"] == 4 and manifest["accounting"]["written"] == 3


def test_a_file_that_is_not_parquet_is_an_input_error_naming_it(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"broken\.parquet: cannot read as parquet"):
        list(iter_records(path, SRC))


def test_a_saved_dataset_folder_is_read_as_its_data_files_not_the_cache_files_beside_them(tmp_path):
    saved = tmp_path / "saved"
    rows = chat_records(4)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3]),
                          "test": datasets.Dataset.from_list(rows[3:])}).save_to_disk(str(saved))
    (saved / "train" / "cache-0123abcd.arrow").write_bytes((saved / "train" / "data-00000-of-00001.arrow").read_bytes())
    (tmp_path / "more.jsonl").write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    files = resolve_inputs([str(tmp_path)])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "more.jsonl", "saved/test/data-00000-of-00001.arrow", "saved/train/data-00000-of-00001.arrow"]


@pytest.mark.parametrize("turns, fmt", [
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "openai"),
    ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}], "sharegpt"),
])
def test_jsonl_lines_that_are_bare_arrays_of_messages_are_conversations(tmp_path, turns, fmt):
    path = write_jsonl(tmp_path / "bare.jsonl", [turns, turns, [{"role": "robot", "content": "x"}]])
    assert detect_format(path, SRC) == fmt
    items = list(read_conversations({path: fmt}, SRC))
    assert [m.content for m in items[0].messages] == ["Hi", "Hello."] and items[1].row == 2
    bad = items[2]
    assert isinstance(bad, RowError) and bad.row == 3 and bad.raw == [{"role": "robot", "content": "x"}]
