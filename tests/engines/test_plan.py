"""Planned chunks read on their own give exactly the records the local engine's streaming cut gives, whatever the
container, and a chunk may span files; so do the chunks of a run of `sources:`, over its drawn records."""
from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest

from pipeline.engines.plan import Chunk, plan_chunks, plan_drawn_chunks, read_chunk
from pipeline.stages.ingest import RawRecord, detect_formats, find_inputs, read_records
from pipeline.stages.mixture import Mixture, find_sources
from schemas.mixture import MixtureConfig, MixtureSource
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
        assert [_key(i) for i in read_chunk(again, [source], {str(p): p for p in files})] == [_key(i) for i in want]
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


# --- runs of `sources:` -----------------------------------------------------------------------------------------------
def _mixture_files(tmp_path) -> list[dict]:
    """Three sources: JSON Lines (a `.gz` beside it, and a bad line), a CSV and a JSON array."""
    lines = tmp_path / "lines"
    lines.mkdir()
    (lines / "a.jsonl").write_text("\n".join([chat(answer=f"a{k}") for k in range(5)] + ["{broken"]) + "\n",
                                   encoding="utf-8")
    with gzip.open(lines / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(chat(answer=f"gz {k}") for k in range(3)) + "\n")
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text("system,question,chosen\n" + "".join(f',"q{k}\nmore",a{k}\n' for k in range(6)),
                        encoding="utf-8")
    array = write_records(tmp_path, "array", [chat(answer=f"array {k}") for k in range(4)], "json")
    return [{"path": str(lines)}, {"path": str(csv_path)}, {"path": str(array)}]


def _drawn_key(item):
    drawn, fmt = item
    return drawn.source, drawn.draw, *_key((drawn.record, fmt))


def _assert_same_drawn_chunks(mixture: Mixture, size: int) -> list[Chunk]:
    """The planned chunks, read on their own, give `Mixture.records` cut in runs of `size`."""
    drawn = [_drawn_key(item) for item in mixture.records()]
    chunks = plan_drawn_chunks(mixture, size)
    assert [c.rows for c in chunks] == [len(drawn[k:k + size]) for k in range(0, len(drawn), size)]
    settings = [p.source.spec for p in mixture.planned]
    paths = {str(path): path for path in mixture.formats}
    read = [_drawn_key(item) for chunk in chunks for item in read_chunk(Chunk.from_json(chunk.to_json()), settings, paths)]
    assert read == drawn
    return chunks


@pytest.mark.parametrize("size", [1, 4, 100])
@pytest.mark.parametrize("rules, mixture", [
    ([{"epochs": 1.5}, {"max_rows": 4}, {"epochs": 2.5}], {}),
    ([{"weight": 0.5}, {"weight": 0.2}, {"weight": 0.3}], {"total_rows": 47, "seed": 5}),
])
def test_drawn_chunks_read_on_their_own_match_the_drawn_records(tmp_path, size, rules, mixture):
    specs = [MixtureSource(**spec, **rule) for spec, rule in zip(_mixture_files(tmp_path), rules)]
    plan = Mixture.plan(find_sources(specs), MixtureConfig(**mixture))
    assert all(p.part is not None for p in plan.planned)  # every source has a seeded part
    chunks = _assert_same_drawn_chunks(plan, size)
    spans = [span for chunk in chunks for span in chunk.spans]
    assert {span.draw for span in spans if span.source == 2} == set(range(1, plan.planned[2].passes + 2))
    if size > 1:
        assert any(span.picks for span in spans), "no span picks records out of a file"


def test_drawn_chunks_of_a_mixture_of_tokens_match_its_drawn_records(tmp_path):
    specs = [MixtureSource(**spec, weight=1) for spec in _mixture_files(tmp_path)]
    plan = Mixture.plan(find_sources(specs), MixtureConfig(total_tokens=200))

    def count(first_pass):  # a stand-in for the chain: rows write 1 to 7 tokens, the bad line none
        return ((drawn.record.row % 7 + 1) * isinstance(drawn.record, RawRecord) for drawn, _ in first_pass.records())

    counted = plan.counted(count)
    assert all(p.passes >= 2 and p.part is not None for p in counted.planned)  # repeats, then a seeded part
    _assert_same_drawn_chunks(counted, 5)
    first_pass = _assert_same_drawn_chunks(plan.first_pass(), 5)  # what the Ray engine's counting pass reads
    assert {span.draw for chunk in first_pass for span in chunk.spans} == {1}
