"""Readers: discovery, row numbering, streaming, encodings, malformed containers, and the read == accepted + rejected
accounting of `read_conversations`."""
from __future__ import annotations

import gzip
import json
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError, InputError, RowError
from pipeline.stages.ingest import (
    _CHUNK,
    RawRecord,
    detect_format,
    detect_formats,
    iter_records,
    parse_csv_map,
    read_conversations,
    resolve_inputs,
)
from schemas.records import Conversation
from schemas.sources import SourceConfig
from tests.containers import BIG, CONTAINERS, LIMIT_ROWS, SOURCE, as_json_string, row_numbers, tool_call, write_records

DATA = Path(__file__).parents[1] / "data" / "ingest"
SRC = SourceConfig()
CHAT = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def records(path: Path, source: SourceConfig = SRC) -> list:
    return list(iter_records(path, source))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- discovery ------------------------------------------------------------------------------------------------------
def test_resolve_inputs_dirs_globs_files_sorted_and_deduplicated(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.jsonl", "a.json", "sub/c.csv", "sub/d.jsonl.gz", "notes.md", "sub/e.txt"]:
        (tmp_path / name).write_text("")
    got = resolve_inputs([str(tmp_path)])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["a.json", "b.jsonl", "sub/c.csv", "sub/d.jsonl.gz"]
    got = resolve_inputs([str(tmp_path / "*.json*"), str(tmp_path / "a.json")])
    assert [p.name for p in got] == ["a.json", "b.jsonl"]  # glob sorted, the repeated file listed once


def test_resolve_inputs_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        resolve_inputs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(InputError, match="no file matches"):
        resolve_inputs([str(tmp_path / "*.jsonl")])
    with pytest.raises(InputError, match="holds no"):
        resolve_inputs([str(tmp_path)])
    write(tmp_path / "x.txt", "")
    with pytest.raises(InputError, match="unsupported file type"):
        resolve_inputs([str(tmp_path / "x.txt")])
    with pytest.raises(InputError, match="no input"):
        resolve_inputs([])


def test_one_file_under_a_relative_and_an_absolute_name_is_read_once(tmp_path, monkeypatch, capsys):
    write(tmp_path / "chats.jsonl", json.dumps(CHAT) + "\n")
    monkeypatch.chdir(tmp_path)
    got = resolve_inputs(["chats.jsonl", str(tmp_path / "chats.jsonl"), "./chats.jsonl", "."])
    assert got == [Path("chats.jsonl")]
    warning = capsys.readouterr().err
    assert "read once" in warning and f"chats.jsonl (also given as {tmp_path / 'chats.jsonl'})" in warning


def test_a_symlink_loop_is_walked_once(tmp_path):
    """`data/sub/loop` points back at `data`: a `**` glob and a directory walk find each file once, and quickly."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write(data / "a.jsonl", "")
    write(data / "sub" / "b.jsonl", "")
    (data / "sub" / "loop").symlink_to(data, target_is_directory=True)
    expected = [data / "a.jsonl", data / "sub" / "b.jsonl"]
    assert resolve_inputs([f"{data}/**/*.jsonl"]) == expected
    assert resolve_inputs([f"{data}/**"]) == expected
    (data / "again").symlink_to(data / "sub", target_is_directory=True)  # a second way into the same folder
    assert resolve_inputs([str(data)]) == expected
    assert resolve_inputs([f"{data}/**/*.jsonl"]) == expected


def test_a_symlinked_folder_that_is_no_loop_is_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(elsewhere / "c.jsonl", "")
    data = tmp_path / "data"
    data.mkdir()
    (data / "link").symlink_to(elsewhere, target_is_directory=True)
    assert resolve_inputs([f"{data}/**/*.jsonl"]) == [data / "link" / "c.jsonl"]
    assert resolve_inputs([str(data)]) == [data / "link" / "c.jsonl"]


def test_glob_matches_hidden_names_only_when_asked(tmp_path):
    write(tmp_path / ".hidden.jsonl", "")
    write(tmp_path / "seen.jsonl", "")
    assert resolve_inputs([f"{tmp_path}/*.jsonl"]) == [tmp_path / "seen.jsonl"]
    assert resolve_inputs([f"{tmp_path}/.*.jsonl"]) == [tmp_path / ".hidden.jsonl"]


# --- JSONL ----------------------------------------------------------------------------------------------------------
def test_jsonl_rows_are_physical_lines_and_bad_lines_are_row_errors(tmp_path):
    path = write(tmp_path / "x.jsonl", json.dumps(CHAT) + "\n\n" + '{"messages": [\n' + json.dumps(CHAT) + "\n")
    got = records(path)
    assert [type(r) for r in got] == [RawRecord, RowError, RawRecord]
    assert [r.row for r in got] == [1, 3, 4]  # the blank line 2 is not a record
    assert got[1].reason == "invalid_json" and got[1].raw == '{"messages": [' and str(got[1]).startswith(f"{path}:3: ")


def test_jsonl_gz_and_crlf(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
        f.write(json.dumps(CHAT) + "\r\n" + json.dumps(CHAT) + "\r\n")
    assert [r.row for r in records(path)] == [1, 2]
    assert all(isinstance(c, Conversation) for c in read_conversations(detect_formats([path], SRC), SRC))


def test_truncated_gzip_is_an_input_error(tmp_path):
    raw = gzip.compress((json.dumps(CHAT) + "\n").encode() * 2000)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cut.jsonl.gz: cannot read"):
        records(path)


def test_ten_megabyte_line_works_and_a_bad_one_keeps_its_line_number(tmp_path):
    big = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x" * 10_000_000}]}
    path = write(tmp_path / "big.jsonl", json.dumps(CHAT) + "\n" + json.dumps(big) + "\n" + json.dumps(big)[:-1] + "\n")
    items = list(read_conversations(detect_formats([path], SRC), SRC))
    assert isinstance(items[1], Conversation) and len(items[1].messages[1].content) == 10_000_000
    assert isinstance(items[2], RowError) and (items[2].row, items[2].reason) == (3, "invalid_json")


LONE_SURROGATE = '{"messages": [{"role": "user", "content": "a \\ud800 b"}, {"role": "assistant", "content": "\\ud83d\\ude00"}]}'


@pytest.mark.parametrize("layout", ["jsonl", "array", "array across a refill", "object"])
def test_a_lone_surrogate_escape_is_a_bad_row_not_a_crash(tmp_path, layout):
    """`\\ud800` parses as JSON but is no Unicode character: UTF-8 (hashing, the tokenizer) cannot hold it. A valid
    pair (the emoji) is fine. In a large array the bad element may start in one read of the file and end in the next."""
    pair = LONE_SURROGATE.replace("\\ud800", "\\ud83d\\ude00")
    padded = pair.replace('"content": "', '"content": "' + "y" * (_CHUNK - len(pair) - 20), 1)
    text = {"jsonl": f"{pair}\n{LONE_SURROGATE}\n", "array": f"[{pair},\n{LONE_SURROGATE}]",
            "array across a refill": f"[{padded},\n{LONE_SURROGATE}]", "object": LONE_SURROGATE}[layout]
    path = write(tmp_path / f"x.{'jsonl' if layout == 'jsonl' else 'json'}", text)
    items = list(read_conversations(detect_formats([path], SRC), SRC))
    bad = items[-1]
    assert isinstance(bad, RowError) and bad.reason == "invalid_json" and "surrogate" in bad.message
    assert bad.row == (1 if layout == "object" else 2)
    assert bad.raw is not None and "\\ud800" in bad.raw
    if layout != "object":
        assert isinstance(items[0], Conversation) and items[0].messages[1].content.endswith("\U0001F600")


def test_jsonl_keeps_what_the_json_module_reads(tmp_path):
    """Integers beyond 64 bits and NaN are read as Python's json module reads them."""
    row = dict(CHAT, id=2**70, score=float("nan"))
    path = write(tmp_path / "x.jsonl", json.dumps(row) + "\n")
    (got,) = records(path)
    assert got.data["id"] == 2**70 and got.data["score"] != got.data["score"]


# --- numbers and nesting --------------------------------------------------------------------------------------------
def _read_in(tmp_path, monkeypatch, rows: list[str], kind: str) -> tuple[Path, list]:
    """`rows` read back from `kind`: a container, or `json in 7-character reads` (every value straddles reads)."""
    if kind == "json in 7-character reads":
        import pipeline.stages.ingest as ingest

        monkeypatch.setattr(ingest, "_CHUNK", 7)
        kind = "json"
    path = write_records(tmp_path, "rows", rows, kind)
    return path, list(read_conversations(detect_formats([path], SOURCE), SOURCE))


@pytest.mark.parametrize("kind", CONTAINERS)
def test_integers_beyond_64_bits_stay_exact_in_every_container(tmp_path, monkeypatch, kind):
    """Wherever the JSON text is (a line, an array element, a CSV cell, a tools or arguments string), an integer is
    the integer written, never a float rounded from it."""
    tools = as_json_string(f'[{{"type": "function", "function": {{"name": "f", "parameters": {{"maximum": {BIG}}}}}}}]')
    rows = [
        tool_call(f'{{"account": {BIG}}}', record_id=str(BIG)),
        tool_call(as_json_string(f'{{"account": {BIG}, "other": -{BIG}}}'), record_id=str(BIG + 1)).replace(
            '"tools": [{"type": "function", "function": {"name": "open_account"}}]', f'"tools": {tools}'),
    ]
    _, items = _read_in(tmp_path, monkeypatch, rows, kind)
    assert all(isinstance(c, Conversation) for c in items), items
    first, second = items
    if kind != "csv":  # a CSV row's id is its own column's, not one inside the messages cell
        assert (first.id, second.id) == (str(BIG), str(BIG + 1))
    assert first.messages[1].tool_calls[0].arguments == {"account": BIG}
    assert second.messages[1].tool_calls[0].arguments == {"account": BIG, "other": -BIG}
    assert second.tools[0]["function"]["parameters"]["maximum"] == BIG
    assert type(second.messages[1].tool_calls[0].arguments["account"]) is int


FLOATS = ["0.1", "1e400", "-1e400", "-0.0", "5e-324", "1e-400", "2.2250738585072014e-308", "1.7976931348623157e308",
          "0.30000000000000004", "1E+2", "123456789012345678901234567890.5", "18446744073709551616.0", "NaN", "-Infinity"]


@pytest.mark.parametrize("kind", CONTAINERS)
@pytest.mark.parametrize("as_string", [False, True], ids=["object", "json string"])
def test_floats_read_as_python_reads_them_in_every_container(tmp_path, monkeypatch, kind, as_string):
    """A row per float, so each goes the way its own text takes (orjson, or Python's json for `NaN`, `1e400` or 20
    digits in a row): both round correctly, to the nearest double."""
    arguments = ['{"x": ' + text + "}" for text in FLOATS]
    rows = [tool_call(as_json_string(a) if as_string else a) for a in arguments]
    _, items = _read_in(tmp_path, monkeypatch, rows, kind)
    got = [conv.messages[1].tool_calls[0].arguments["x"] for conv in items]
    assert [repr(x) for x in got] == [repr(float(text)) for text in FLOATS]


@pytest.mark.parametrize("kind", [*CONTAINERS, "json in 7-character reads"])
def test_rows_too_deep_or_with_too_long_integers_are_rejected_and_reading_goes_on(tmp_path, monkeypatch, kind):
    """A value nested past the limit (even past the parser's own recursion limit) or an integer past Python's digit
    limit rejects its row with the cause; the rows after it are read. Rows at the limit are read."""
    rows = [text for text, _ in LIMIT_ROWS]
    path, items = _read_in(tmp_path, monkeypatch, rows, kind)
    expected = [reason if reason in ("invalid_json", "invalid_tool_arguments") else None for _, reason in LIMIT_ROWS]
    assert [i.reason if isinstance(i, RowError) else None for i in items] == expected, items
    assert [i.row for i in items] == row_numbers(kind.split()[0], len(rows))
    deep, deeper, digits, *_ = (i for i in items if isinstance(i, RowError))
    for error in (deep, deeper):
        assert "nested deeper than 100 levels" in error.message
    assert "4301 digits" in digits.message and "integer" in digits.message
    assert "nested deeper than 100 levels" in items[-1].message and items[-1].field.endswith("arguments")
    for error in (deep, deeper, digits):
        assert str(error).startswith(f"{path}:{error.row}: ")
        if kind == "csv":
            assert error.raw == {"messages": rows[items.index(error)]} and error.field == "messages"
        else:
            assert error.raw == rows[items.index(error)]
        if kind not in ("jsonl", "csv"):  # an array element's row is its index; the line it starts on is kept
            assert error.extra["line"] == items.index(error) + 2


def test_a_single_object_file_too_deep_is_one_rejected_row(tmp_path):
    path = write(tmp_path / "one.json", LIMIT_ROWS[1][0])
    (item,) = records(path)
    assert isinstance(item, RowError) and item.row == 1 and "nested deeper than 100 levels" in item.message


def test_invalid_utf8_names_file_line_and_byte_offset():
    path = DATA / "bad_utf8.jsonl"
    first_line = path.read_bytes().split(b"\n")[0]
    offset = len(first_line) + 1 + path.read_bytes().split(b"\n")[1].index(b"\xe9")
    with pytest.raises(InputError) as e:
        records(path)
    assert f"bad_utf8.jsonl: line 2, byte offset {offset}" in str(e.value) and "--encoding" in str(e.value)
    got = records(path, SourceConfig(encoding="latin-1"))
    assert got[1].data["messages"][0]["content"] == "café"


# --- JSON -----------------------------------------------------------------------------------------------------------
def test_json_array_rows_are_element_indexes_with_start_lines(tmp_path):
    text = "[\n  " + json.dumps(CHAT) + ",\n\n  " + json.dumps(CHAT, indent=2) + ", " + json.dumps(CHAT) + "\n]\n"
    got = records(write(tmp_path / "a.json", text))
    third = 4 + json.dumps(CHAT, indent=2).count("\n")  # on the line where the indented element ends
    assert [(r.row, r.line) for r in got] == [(1, 2), (2, 4), (3, third)]
    assert all(r.data == CHAT for r in got)


def test_json_array_of_scalars_and_empty_array(tmp_path):
    assert [r.data for r in records(write(tmp_path / "s.json", "[1, 22,\n333, \"x\", null]"))] == [1, 22, 333, "x", None]
    assert records(write(tmp_path / "e.json", " [ ] ")) == []
    assert records(write(tmp_path / "z.json", "")) == []


def test_single_object_json_and_jsonl_named_json(tmp_path):
    one = records(write(tmp_path / "one.json", json.dumps(CHAT, indent=4)))
    assert [(r.row, r.data) for r in one] == [(1, CHAT)]
    many = records(write(tmp_path / "many.json", (json.dumps(CHAT) + "\n") * 3 + "{broken\n"))
    assert [r.row for r in many] == [1, 2, 3, 4] and isinstance(many[3], RowError)


@pytest.mark.parametrize(
    "text, match",
    [
        ('[\n{"a": 1},\n{"a": ', "line 3: invalid JSON"),  # truncated
        ('[\n{"a": 1}\n{"a": 2}]', "line 3: expected ',' or ']' after element 1"),
        ('[{"a": 1}] [', "extra data after the JSON array"),
        ('\n\n"just a string"', "line 3: expected a JSON array or object"),
        ('[\n{"a": 1},\n{"a": 1 2}]', "line 3: invalid JSON"),
        ('[\n{"a": 1},\n{"a": ' + "[" * 1100, "line 3: invalid JSON: the file ends inside a value"),  # too deep, cut
    ],
)
def test_malformed_json_files_are_input_errors_with_lines(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        records(write(tmp_path / "bad.json", text))


def test_json_array_element_split_across_reads(tmp_path, monkeypatch):
    import pipeline.stages.ingest as ingest

    monkeypatch.setattr(ingest, "_CHUNK", 7)  # every element, number and string straddles a read boundary
    items = [{"n": 12345678901234567890, "s": "é" * 30, "f": -1.5e-3}, [True, False, None], 1234567]
    got = records(write(tmp_path / "a.json", json.dumps(items, ensure_ascii=False, indent=1)))
    assert [r.data for r in got] == items


def test_json_array_streams_in_flat_memory(tmp_path):
    row = {"messages": [{"role": "user", "content": "q" * 100}, {"role": "assistant", "content": "a" * 300}]}
    path = tmp_path / "big.json"
    with path.open("w") as f:
        f.write("[" + ",\n".join([json.dumps(row)] * 20_000) + "]")  # ~9 MB
    assert path.stat().st_size > 8_000_000
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_records(path, SRC))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 20_000
    assert peak < 3_000_000, peak  # a few read buffers, not the file


# --- CSV ------------------------------------------------------------------------------------------------------------
def test_csv_bom_crlf_and_multiline_rows_count_the_header_as_line_one():
    got = records(DATA / "bom_multiline.csv")
    assert [r.row for r in got] == [2, 6]  # the first record spans lines 2-5
    assert got[0].data == {"system": "Be kind.", "question": "Two\r\nlines", "chosen": "Answer\r\nacross\r\nthree"}
    assert got[1].data["system"] == ""


def test_csv_cells_stay_strings():
    got = records(DATA / "messages_map.csv")
    assert got[0].data == {"id": "7", "question": "Line one\nline two", "chosen": "00123"}
    assert got[1].data["chosen"] == "3.30"


def test_csv_gb18030_needs_its_encoding():
    path = DATA / "gb18030.csv"
    with pytest.raises(InputError, match=r"gb18030.csv: line 2, byte offset \d+: cannot decode"):
        records(path)
    (row,) = records(path, SourceConfig(encoding="gb18030"))
    assert row.data == {"system": "", "question": "你好", "chosen": "您好！有什么可以帮您？"}


def test_csv_bad_quoting_and_field_counts_are_reported_and_reading_goes_on():
    got = records(DATA / "bad_quoting.csv")
    assert [(r.row, type(r).__name__) for r in got] == [(2, "RawRecord"), (3, "RowError"), (4, "RawRecord"), (5, "RowError")]
    assert got[1].reason == "invalid_csv" and "quoting" in got[1].message
    assert got[3].reason == "invalid_csv" and "4 fields, but the header has 3" in got[3].message


def test_csv_unterminated_quote_is_one_row_error(tmp_path):
    got = records(write(tmp_path / "u.csv", 'system,question,chosen\n,ok,fine\n,"never closed,x\n,a,b\n'))
    assert [(r.row, type(r).__name__) for r in got] == [(2, "RawRecord"), (3, "RowError")]


def test_csv_header_problems_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="duplicate column"):
        records(write(tmp_path / "d.csv", "a,a\n1,2\n"))
    with pytest.raises(InputError, match=r"question \(user\).*--csv-map"):
        detect_format(write(tmp_path / "m.csv", "prompt,answer\nq,a\n"), SRC)


# --- formats --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, fmt",
    [
        ("openai_tools.jsonl", "openai"), ("sharegpt_toolcall.json", "sharegpt"), ("chatglm3.json", "glm"),
        ("alpaca_history.jsonl", "alpaca"), ("messages_map.csv", "csv"), ("bom_multiline.csv", "csv"),
    ],
)
def test_detect_format(name, fmt):
    assert detect_format(DATA / name, SRC) == fmt


def test_detect_format_special_cases(tmp_path):
    assert detect_format(write(tmp_path / "e.jsonl", "\n"), SRC) == "empty"
    odd = write(tmp_path / "o.jsonl", "not json\n" + json.dumps({"chosen": [], "rejected": []}) + "\n")
    with pytest.raises(InputError, match=r"o.jsonl: row 2: cannot tell the format.*\['chosen', 'rejected'\].*--format"):
        detect_format(odd, SRC)
    assert detect_format(odd, SourceConfig(format="sharegpt")) == "sharegpt"
    alpaca_csv = write(tmp_path / "a.csv", "instruction,input,output\ni,,o\n")
    assert detect_format(alpaca_csv, SRC) == "alpaca"
    with pytest.raises(InputError, match="question"):  # an explicit map is used as given, never read as alpaca
        detect_format(alpaca_csv, SourceConfig(csv_map={"user": "question", "assistant": "output"}))
    with pytest.raises(InputError, match="cannot be read from CSV"):
        detect_format(alpaca_csv, SourceConfig(format="glm"))
    with pytest.raises(InputError, match="reads .csv files only"):
        detect_format(DATA / "openai_tools.jsonl", SourceConfig(format="csv"))


def test_parse_csv_map():
    assert parse_csv_map(" user = q , assistant=a,system=s") == {"user": "q", "assistant": "a", "system": "s"}
    with pytest.raises(ConfigError) as e:
        parse_csv_map("bot=x,user,user=a,user=b")
    assert len(e.value.problems) == 3


# --- accounting -----------------------------------------------------------------------------------------------------
def test_read_conversations_one_item_per_record_in_file_order():
    paths = [DATA / "messy.jsonl", DATA / "alpaca_history.jsonl"]
    items = list(read_conversations(detect_formats(paths, SRC), SRC))
    lines = [i + 1 for i, line in enumerate((DATA / "messy.jsonl").read_text().splitlines()) if line.strip()]
    assert [(it.source, it.row) for it in items] == [(str(paths[0]), n) for n in lines] + [(str(paths[1]), n) for n in (1, 2, 3)]


GOOD = [  # all OpenAI-shaped, read with format openai, so each line's fate is known in advance
    CHAT,
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}, {"role": "assistant", "content": "a"}]},
    {"id": 7, "messages": [{"role": "system", "content": ""}, {"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]},
]
BAD = [
    '{"messages": [',  # invalid_json
    '{"messages": [{"role": "user", "content": 3}]}',  # wrong_type
    '{"messages": [{"role": "bot", "content": "x"}]}',  # unknown_role
    '"a string"',  # wrong_type (not an object)
    '{"messages": [{"role": "user", "content": "q"}]}',  # no_assistant
    '{"instruction": "i"}',  # missing_field
]
BAD_REASON = ["invalid_json", "wrong_type", "unknown_role", "wrong_type", "no_assistant", "missing_field"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.tuples(st.just("good"), st.integers(0, len(GOOD) - 1)),
    st.tuples(st.just("bad"), st.integers(0, len(BAD) - 1)),
    st.tuples(st.just("blank"), st.just(0)),
), max_size=30))
def test_read_equals_accepted_plus_rejected(lines):
    text = [json.dumps(GOOD[k]) if kind == "good" else BAD[k] if kind == "bad" else "  " for kind, k in lines]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mix.jsonl"
        path.write_text("\n".join(text) + "\n", encoding="utf-8")
        source = SourceConfig(format="openai")
        items = list(read_conversations(detect_formats([path], source), source))
    rejected = [it for it in items if isinstance(it, RowError)]
    accepted = [it for it in items if isinstance(it, Conversation)]
    assert len(items) == len(accepted) + len(rejected)
    assert [it.row for it in items] == [n for n, (kind, _) in enumerate(lines, 1) if kind != "blank"]
    assert [(r.row, r.reason) for r in rejected] == [
        (n, BAD_REASON[k]) for n, (kind, k) in enumerate(lines, 1) if kind == "bad"
    ]
    assert len(accepted) == sum(kind == "good" for kind, _ in lines)
