"""Planned chunks read on their own give exactly the records the local engine's streaming cut gives, whatever the
container, and a chunk may span files."""
from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest

from pipeline.engines.plan import Chunk, plan_chunks, read_chunk
from pipeline.stages.ingest import RawRecord, detect_formats, find_inputs, read_records
from schemas.sources import SourceConfig
from tests.containers import CONTAINERS, LIMIT_ROWS, SOURCE, chat, write_records
from tests.inputs import chat_records, convert, write_jsonl


def _streamed(files, source, size):
    """The local engine's cut: `read_records` in consecutive runs of `size` items."""
    items = list(read_records(files, source))
    return [items[k:k + size] for k in range(0, len(items), size)]


def _key(item):
    record, fmt = item
    return (record.source, record.row, record.data if isinstance(record, RawRecord) else record.reason, fmt)


def _assert_same_chunks(files, source, size):
    chunks = plan_chunks(files, source, size)
    expected = _streamed(files, source, size)
    assert [c.index for c in chunks] == list(range(len(expected)))
    for chunk, want in zip(chunks, expected):
        again = Chunk.from_json(chunk.to_json())  # as a worker receives it
        assert again == chunk
        assert [_key(i) for i in read_chunk(again, source, {str(p): p for p in files})] == [_key(i) for i in want]
    return chunks


@pytest.mark.parametrize("kind", CONTAINERS)
@pytest.mark.parametrize("size", [1, 3, 100])
def test_chunks_read_on_their_own_match_the_streamed_cut(tmp_path, kind, size):
    rows = [row for row, _ in LIMIT_ROWS] + [chat(answer=f"answer {k}") for k in range(7)]
    path = write_records(tmp_path, "in", rows, kind)
    _assert_same_chunks(detect_formats([path], SOURCE), SOURCE, size)


def test_chunks_span_files_and_enter_line_files_mid_way(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join([chat(answer="a1"), "", "  ", "{not json", chat(answer="第二")]) + "\n\n", encoding="utf-8")
    csv_path = tmp_path / "b.csv"
    csv_path.write_text('system,question,chosen\n,"Line one\nline two",ok\n\n,q2,"a2"\n,"bad"quote,x\n,q3,a3,extra\n'
                        ',q4,a4\n', encoding="utf-8")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(chat(answer=f"gz {k}") for k in range(4)) + "\n")
    array = write_records(tmp_path, "d", [chat(answer=f"array {k}") for k in range(3)], "json")
    source = SourceConfig()
    files = detect_formats([jsonl, csv_path, tmp_path / "c.jsonl.gz", array], source)
    chunks = _assert_same_chunks(files, source, 2)
    spanning = [c for c in chunks if len({s.path for s in c.spans}) > 1]
    assert spanning, "no chunk spans two files"
    entered = [s for c in chunks for s in c.spans if s.start is not None and s.start.offset > 0]
    assert {Path(s.path).suffix for s in entered} >= {".jsonl", ".csv", ".gz"}
    assert all(s.start is None for c in chunks for s in c.spans if s.path == str(array))


def test_planning_does_not_parse_json_lines(tmp_path, monkeypatch):
    import pipeline.stages.json_text as json_text

    path = write_records(tmp_path, "in", [chat() for _ in range(5)], "jsonl")
    calls = itertools.count()
    real = json_text.loads
    monkeypatch.setattr(json_text, "loads", lambda text: (next(calls), real(text))[1])
    chunks = plan_chunks(detect_formats([path], SourceConfig()), SourceConfig(), 2)
    parsed_to_detect = next(calls)
    assert [c.rows for c in chunks] == [2, 2, 1] and parsed_to_detect == 1  # the first record, to detect the format


@pytest.mark.parametrize("kind", ["parquet", "arrow_file", "arrow_stream"])
def test_columnar_files_are_cut_as_streamed(tmp_path, kind):
    jsonl = write_jsonl(tmp_path / "chats.jsonl", chat_records(7))
    path = convert(jsonl, kind, tmp_path / kind)
    _assert_same_chunks(detect_formats([path], SOURCE), SOURCE, 3)


def test_remote_files_are_cut_as_streamed(tmp_path, s3_env):
    pytest.importorskip("s3fs")
    import fsspec

    write_jsonl(tmp_path / "chats.jsonl", chat_records(5))
    fsspec.filesystem("s3").put(str(tmp_path / "chats.jsonl"), f"{s3_env}/in/chats.jsonl")
    files = detect_formats(find_inputs([f"s3://{s3_env}/in/"]).files, SOURCE)
    _assert_same_chunks(files, SOURCE, 2)
