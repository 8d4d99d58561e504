"""The local engine's parent process does little per row: the rows of plain JSON Lines and CSV files are read and
parsed by the workers (the parent sends where each batch starts), and the output is the same bytes as when the
parent reads every row."""
from __future__ import annotations

import gzip
import itertools
import json

import pytest

import pipeline.stages.json_text as json_text
import pipeline.workers as workers_module
from pipeline.engines.chunk import batches
from pipeline.engines.plan import Span, input_items, pack, read_pieces
from pipeline.run import preprocess
from pipeline.stages.ingest import RawRecord, detect_formats, read_records
from schemas.config import load_config
from schemas.sources import SourceConfig
from tests.conftest import DEMO_TOKENIZER
from tests.containers import chat, write_records


def _inputs(tmp_path):
    """One file of each kind a run may mix: JSON Lines (with a bad and a blank line), CSV (a record over two lines,
    a bad one), gzipped JSON Lines and a JSON array."""
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join([chat(answer="a1"), "", "{not json", *(chat(answer=f"a{k}") for k in range(6))]) + "\n",
                     encoding="utf-8")
    csv_path = tmp_path / "b.csv"
    csv_path.write_text('system,question,chosen\n,"Line one\nline two",ok\n,q2,a2\n,q3,a3,extra\n,q4,a4\n,q5,a5\n',
                        encoding="utf-8")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(chat(answer=f"gz {k}") for k in range(4)) + "\n")
    array = write_records(tmp_path, "d", [chat(answer=f"array {k}") for k in range(5)], "json")
    return [jsonl, csv_path, tmp_path / "c.jsonl.gz", array]


def _key(item):
    record, fmt = item
    return (record.source, record.row, record.data if isinstance(record, RawRecord) else record.reason, fmt)


@pytest.mark.parametrize("size", [1, 3, 50])
def test_batches_read_by_the_workers_hold_the_rows_the_parent_would_read(tmp_path, size):
    source = SourceConfig()
    files = detect_formats(_inputs(tmp_path), source)
    packed = [pack(batch) for batch in batches(input_items(files, source, by_workers=True), size)]
    read = [[_key(item) for item in read_pieces(pieces, source)] for pieces in packed]
    streamed = [[_key(item) for item in batch] for batch in batches(read_records(files, source), size)]
    assert read == streamed
    spans = {piece.path for pieces in packed for piece in pieces if isinstance(piece, Span)}
    assert spans == {str(tmp_path / "a.jsonl"), str(tmp_path / "b.csv")}  # gzip and JSON arrays: read by the parent


def test_one_worker_reads_every_row_itself(tmp_path):
    source = SourceConfig()
    files = detect_formats(_inputs(tmp_path), source)
    assert [_key(i) for i in input_items(files, source, by_workers=False)] == [_key(i) for i in read_records(files, source)]


def _config(inputs, **overrides):
    return load_config(None, {"inputs": [str(p) for p in inputs], "render.tokenizer": str(DEMO_TOKENIZER), **overrides})


def test_the_parent_does_not_parse_json_lines_rows(tmp_path, monkeypatch):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(chat(answer=f"answer {k}") + "\n" for k in range(40)), encoding="utf-8")
    monkeypatch.setattr(workers_module.multiprocessing, "get_all_start_methods", lambda: ["fork"])
    calls = itertools.count()
    real = json_text.loads
    monkeypatch.setattr(json_text, "loads", lambda text: (next(calls), real(text))[1])  # forked workers count apart
    manifest = preprocess(_config([data], **{"source.format": "openai", "output.workers": 2,
                                             "output.rows_per_shard": 15, "output.batch_size": 4}), tmp_path / "out")
    assert manifest["accounting"]["written"] == 40
    assert next(calls) == 0


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_the_same_bytes_whoever_reads_the_rows(tmp_path, monkeypatch, start):
    """Workers read the JSON Lines and CSV rows with two workers, the parent reads all with one: same files."""
    monkeypatch.setattr(workers_module.multiprocessing, "get_all_start_methods", lambda: [start])
    inputs = _inputs(tmp_path)
    outs = []
    for workers in (1, 2):
        outs.append(tmp_path / f"w{workers}")
        manifest = preprocess(_config(inputs, **{"output.workers": workers, "output.rows_per_shard": 7,
                                                 "output.batch_size": 3, "output.eval_split": 0.2}), outs[-1])
        assert manifest["accounting"]["rejected"] == 2  # the bad JSON line, the CSV row with a cell too many
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file() and p.name != "manifest.json")
    assert len([f for f in files if f.suffix == ".arrow"]) >= 2
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    manifests = [json.loads((out / "manifest.json").read_text()) for out in outs]
    for manifest in manifests:
        manifest["config"]["output"].pop("workers")
    assert manifests[0] == manifests[1]
