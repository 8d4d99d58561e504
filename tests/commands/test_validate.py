"""`validate_inputs` (counts, rejects file), the `validate` command's exit codes, and the real public corpora in
../shared/corpora with expected counts computed here, independently of the adapters."""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.commands.validate import validate_inputs
import pipeline.stages.ingest as ingest
from pipeline.errors import InputError
from pipeline.stages.ingest import detect_formats, read_conversations
from schemas.sources import SourceConfig
from tests.conftest import shared_path
from tests.containers import CONTAINERS, LIMIT_ROWS, write_records

DATA = Path(__file__).parents[1] / "data" / "ingest"
SAMPLES = Path(__file__).parents[2] / "data" / "samples"
SRC = SourceConfig()


# --- validate_inputs ------------------------------------------------------------------------------------------------
MESSY = {  # line -> reason, from the comments in tests/data/ingest/README.md
    2: "wrong_type", 3: "invalid_json", 4: "unknown_role", 6: "empty_conversation", 7: "no_assistant",
    8: "no_final_assistant", 9: "empty_assistant", 10: "wrong_type", 11: "wrong_type",
}


def test_validate_inputs_counts_and_rejects_file(tmp_path):
    rejects = tmp_path / "rejects.jsonl"
    report = validate_inputs([str(DATA / "messy.jsonl")], SRC, rejects=rejects, max_examples=3)
    assert (report.read, report.accepted, report.rejected) == (10, 1, 9)
    assert report.read == report.accepted + report.rejected
    assert report.files == {str(DATA / "messy.jsonl"): "openai"}
    lines = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert {row["row"]: row["reason"] for row in lines} == MESSY
    assert all(row["source"] == str(DATA / "messy.jsonl") and "raw" in row and row["message"] for row in lines)
    assert lines[0]["field"] == "messages.1.content" and lines[0]["raw"]["messages"][1]["content"] == 5
    assert len(report.examples) == 3 and not list(tmp_path.glob(".*tmp*"))
    text = report.to_text()
    assert f"{DATA / 'messy.jsonl'}:2: messages.1.content: Input should be a valid string (got int)  [wrong_type]" in text
    assert re.search(r"^  wrong_type +3$", text, re.M) and "rejected by reason:" in text
    summary = report.to_json()
    assert summary["reasons"] == {r: list(MESSY.values()).count(r) for r in set(MESSY.values())}


def test_validate_inputs_opens_each_file_once_to_detect_its_format_and_once_for_its_rows(monkeypatch):
    opened, real_open = Counter(), ingest._open
    monkeypatch.setattr(ingest, "_open", lambda path: (opened.update([path.name]), real_open(path))[1])
    report = validate_inputs([str(DATA / "messy.jsonl")], SRC)
    assert report.read == 10 and opened == {"messy.jsonl": 2}


def test_a_file_beside_rejects_named_like_a_temp_file_is_left_alone(tmp_path):
    theirs = tmp_path / f".rejects.jsonl.tmp-{os.getpid()}"
    theirs.write_text("someone's notes")
    validate_inputs([str(DATA / "messy.jsonl")], SRC, rejects=tmp_path / "rejects.jsonl")
    assert theirs.read_text() == "someone's notes"


def test_validate_inputs_leaves_no_rejects_file_when_a_file_is_unreadable(tmp_path):
    rejects = tmp_path / "r.jsonl"
    with pytest.raises(InputError, match="byte offset"):
        validate_inputs([str(DATA / "messy.jsonl"), str(DATA / "bad_utf8.jsonl")], SRC, rejects=rejects)
    assert list(tmp_path.iterdir()) == []


def test_samples_validate_clean():
    report = validate_inputs([str(SAMPLES)], SRC)
    glm = [json.loads(line) for line in (SAMPLES / "glm_messages.jsonl").read_text(encoding="utf-8").splitlines()]
    assert report.rejected == 0 and report.read == len(glm) + 30
    assert report.files == {str(SAMPLES / "glm_messages.jsonl"): "glm", str(SAMPLES / "qa.csv"): "csv"}
    with_tools = sum(any("tools" in m for m in r["messages"]) for r in glm)
    with_obs = sum(any(m["role"] == "observation" for m in r["messages"]) for r in glm)
    assert len(glm) >= 40 and with_tools >= 8 and with_obs >= 8


# --- CLI ------------------------------------------------------------------------------------------------------------
def run(*args: str):
    return CliRunner().invoke(main, ["validate", *args])


def test_cli_exit_0_and_human_summary():
    result = run(str(DATA / "openai_tools.jsonl"))
    assert result.exit_code == 0, result.output
    assert "read 3, accepted 3, rejected 0" in result.output and "openai" in result.output


def test_cli_exit_1_json_and_rejects(tmp_path):
    rejects = tmp_path / "out" / "rejects.jsonl"
    rejects.parent.mkdir()
    result = run(str(DATA / "messy.jsonl"), str(DATA / "alpaca_history.jsonl"), "--json", "--rejects", str(rejects))
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["read"], summary["accepted"], summary["rejected"]) == (13, 4, 9)
    assert summary["files"][str(DATA / "alpaca_history.jsonl")] == "alpaca"
    assert sum(summary["reasons"].values()) == 9 == len(rejects.read_text().splitlines())


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jsonl"], "no such file"),
        ([str(DATA / "bad_utf8.jsonl")], "line 2, byte offset"),
        ([str(DATA / "gb18030.csv"), "--encoding", "nope"], "unknown encoding"),
        ([str(DATA / "gb18030.csv"), "--encoding", "utf-16"], "not ASCII-compatible"),
        ([str(DATA / "gb18030.csv"), "--csv-map", "bot=x"], "unknown role"),
        ([str(DATA / "gb18030.csv"), "--format", "glm", "--csv-map", "user=a,assistant=b"], "only used with format csv"),
        ([str(DATA / "gb18030.csv"), "--format", "yaml"], "Invalid value for '--format'"),
        ([], "Missing argument"),
    ],
)
def test_cli_exit_2_without_traceback(args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_cli_rejects_rows_too_deep_or_with_too_long_integers_and_goes_on(tmp_path):
    files = [write_records(tmp_path, "rows", [text for text, _ in LIMIT_ROWS], kind) for kind in CONTAINERS]
    rejects = tmp_path / "rejects.jsonl"
    result = run(*map(str, files), "--csv-messages-column", "messages", "--json", "--rejects", str(rejects))
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    adapted = [reason for _, reason in LIMIT_ROWS if reason in ("invalid_json", "invalid_tool_arguments")] * len(files)
    assert summary["reasons"] == {reason: adapted.count(reason) for reason in set(adapted)}
    assert summary["read"] == len(LIMIT_ROWS) * len(files) == summary["accepted"] + summary["rejected"]
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert len(lines) == summary["rejected"] and all(line["raw"] for line in lines)


def test_cli_encoding_and_csv_map_options():
    assert run(str(DATA / "gb18030.csv"), "--encoding", "gb18030").exit_code == 0
    result = run(str(DATA / "messages_column.csv"), "--csv-messages-column", "messages", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["reasons"] == {"invalid_json": 1}
    assert run(str(DATA / "messages_map.csv"), "--csv-map", "user=question,assistant=chosen").exit_code == 0


def test_cli_help_has_examples():
    result = CliRunner().invoke(main, ["validate", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output and "--rejects" in result.output


# --- real public corpora (../shared/corpora) ------------------------------------------------------------------------
def load(path: Path) -> list:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, list) else [data]


def check(path: Path, expected: dict[str, int], fmt: str) -> None:
    report = validate_inputs([str(path)], SRC)
    assert report.files[str(path)] == fmt
    assert dict(report.reasons) == {k: v for k, v in expected.items() if v}
    assert report.read == report.accepted + report.rejected


def is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("name", ["alpaca_en_demo.json", "alpaca_zh_demo.json", "identity.json"])
def test_corpus_llamafactory_alpaca(name):
    path = shared_path("corpora", "llamafactory_data", name)
    rows = load(path)
    check(path, {"empty_assistant": sum(not r["output"].strip() for r in rows)}, "alpaca")
    assert validate_inputs([str(path)], SRC).read == len(rows)


@pytest.mark.parametrize("name", ["glaive_toolcall_en_demo.json", "glaive_toolcall_zh_demo.json"])
def test_corpus_glaive_toolcall(name):
    path = shared_path("corpora", "llamafactory_data", name)
    rows = load(path)
    bad_calls = sum(any(t["from"] == "function_call" and not is_json(t["value"]) for t in r["conversations"]) for r in rows)
    bad_tools = sum(not is_json(r["tools"]) for r in rows)
    not_final = sum(r["conversations"][-1]["from"] not in ("gpt", "function_call") for r in rows)
    check(path, {"invalid_tool_call": bad_calls, "invalid_tools": bad_tools, "no_final_assistant": not_final}, "sharegpt")
    assert validate_inputs([str(path)], SRC).read == len(rows) == 300


def test_corpus_dpo_prompts_are_not_sft():
    path = shared_path("corpora", "llamafactory_data", "dpo_zh_demo.json")
    rows = load(path)
    no_gpt = sum(all(t["from"] != "gpt" for t in r["conversations"]) for r in rows)
    check(path, {"no_assistant": no_gpt, "no_final_assistant": len(rows) - no_gpt}, "sharegpt")


def test_corpus_llamafactory_messages():
    v1 = shared_path("corpora", "llamafactory_data", "v1_sft_demo.jsonl")
    rows = load(v1)
    check(v1, {}, "openai")
    masked = sum(m["loss_weight"] == 0 for r in rows for m in r["messages"])
    got = list(read_conversations(detect_formats([v1], SRC), SRC))
    assert sum(m.loss is False for c in got for m in c.messages) == masked
    reason = shared_path("corpora", "llamafactory_data", "reason_tool_use_demo_50.jsonl")
    rows = load(reason)
    check(reason, {}, "openai")
    calls = sum(p["type"] == "tool_call" for r in rows for m in r["messages"] for p in m["content"])
    assert sum(len(m.tool_calls or ()) for c in read_conversations(detect_formats([reason], SRC), SRC) for m in c.messages) == calls
    mllm = shared_path("corpora", "llamafactory_data", "mllm_demo.json")
    check(mllm, {"unsupported_content": sum(bool(r.get("images")) for r in load(mllm))}, "openai")


def test_corpus_functionary():
    folder = shared_path("corpora", "functionary_tests")
    for path in sorted(folder.glob("*.json")):
        (record,) = load(path)
        first = None  # the first problem in message order, found without the adapters
        for m in record["messages"]:
            if isinstance(m.get("content"), list) and any(p["type"] != "text" for p in m["content"]):
                first = first or "unsupported_content"
            for call in m.get("tool_calls") or []:
                if not is_json(call["function"]["arguments"]):
                    first = first or "invalid_tool_arguments"
            if m.get("function_call") and not is_json(m["function_call"]["arguments"]):
                first = first or "invalid_tool_arguments"
        check(path, {first: 1} if first else {}, "openai")
    report = validate_inputs([str(folder)], SRC)
    assert (report.read, report.accepted) == (4, 1)  # only the legacy-functions case has JSON arguments throughout


def test_corpus_glm4_official():
    adgen = shared_path("corpora", "glm4_official", "AdvertiseGen", "dev.jsonl")
    check(adgen, {}, "openai")  # no tools or observation in the first record: read the same way either way
    assert validate_inputs([str(adgen)], SourceConfig(format="glm")).accepted == len(load(adgen)) == 1070
    small = shared_path("corpora", "glm4_official", "small", "dev.jsonl")
    check(small, {"unsupported_content": sum(any("image" in m for m in r["messages"]) for r in load(small))}, "openai")


def test_corpus_ms_swift_and_torchtune_and_axolotl():
    swift = shared_path("corpora", "ms_swift_test_data")
    report = validate_inputs([str(swift)], SRC)
    json_rows = [r for p in sorted(swift.glob("*.json*")) for r in load(p)]
    csv_rows = sum(len(p.read_text().splitlines()) - 1 for p in swift.glob("*.csv"))
    assert report.read == len(json_rows) + csv_rows
    assert dict(report.reasons) == {"unsupported_content": sum(bool(r.get("images")) for r in json_rows)}
    assert report.files[str(swift / "alpaca.csv")] == "alpaca" and report.files[str(swift / "sharegpt.jsonl")] == "sharegpt"
    tt = shared_path("corpora", "torchtune_assets")
    check(tt / "chat_tiny.json", {}, "sharegpt")
    check(tt / "instruct_tiny.json", {}, "alpaca")
    with pytest.raises(InputError, match="cannot tell the format"):
        validate_inputs([str(tt / "hh_rlhf_tiny.json")], SRC)
    ax = shared_path("corpora", "axolotl_fixtures")
    check(ax / "conversation.json", {}, "sharegpt")
    empty = sum(t["from"] == "gpt" and not t["value"] for t in load(ax / "conversation.missingturns.json")[0]["conversations"])
    check(ax / "conversation.missingturns.json", {"empty_assistant": min(empty, 1)}, "sharegpt")
    check(ax / "alpaca" / "alpaca.json", {}, "alpaca")


def test_corpus_ms_swift_csv_keeps_numeric_looking_cells():
    path = shared_path("corpora", "ms_swift_test_data", "alpaca.csv")
    first = next(iter(read_conversations(detect_formats([path], SRC), SRC)))
    assert [(m.role, m.content) for m in first.messages] == [("system", "00000"), ("user", "11111\n\n22222"), ("assistant", "3.3")]
