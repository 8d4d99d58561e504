"""Injected text: rows whose rendering holds text the chat template wrote and the data does not hold are counted, with
their tokens, and `check` and the report say so. The reference here is independent of the code under test: the
tokenizer's own `apply_chat_template` rendering, the prompt text found in it, and the tokenizer's offsets."""
from __future__ import annotations

import json

import pytest

from pipeline.commands.check import run_checks
from pipeline.commands.report import render_report
from pipeline.run import preprocess
from schemas.check_config import CheckConfig
from schemas.config import load_config
from tests.conftest import DEMO_TOKENIZER, real_tokenizer, shared_path

QWEN_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
LLAMA_DATE = "Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2024"


def _chat(k: int, system: bool) -> dict:
    turns = [{"role": "user", "content": f"What is {k} plus {k}?"}, {"role": "assistant", "content": f"It is {2 * k}."}]
    return {"messages": ([{"role": "system", "content": "Answer in one line."}] if system else []) + turns}


def _run(tmp_path, rows: list[dict], tokenizer, **options) -> tuple[dict, object]:
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = load_config(None, {"inputs": [str(data)], "render.tokenizer": str(tokenizer), **options})
    return preprocess(config, tmp_path / "out"), tmp_path / "out"


def _tokens_holding(tokenizer, messages: list[dict], text: str) -> int:
    """Tokens of the template's own rendering that hold any character of `text`."""
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    start = rendered.index(text)
    offsets = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return sum(1 for a, b in offsets if a < start + len(text) and b > start)


def test_qwen25_default_system_prompt_is_counted_on_rows_without_a_system_message(tmp_path):
    path = shared_path("tokenizers", "qwen2.5")
    tokenizer = real_tokenizer("qwen2.5")
    rows = [_chat(k, system=k % 3 == 0) for k in range(9)]  # 3 with a system message, 6 without
    manifest, out = _run(tmp_path, rows, path)
    acc = manifest["accounting"]
    assert manifest["chat_template"]["injects"] == QWEN_DEFAULT
    assert acc["notes"]["injected_text"] == 6
    expected = sum(_tokens_holding(tokenizer, r["messages"], QWEN_DEFAULT) for r in rows if len(r["messages"]) == 2)
    assert expected > 6 * 10 and acc["note_tokens"]["injected_text"] == expected

    report = run_checks(out)
    result = {r.name: r for r in report.results}["injected_text"]
    assert result.status == "fail" and result.value == pytest.approx(6 / 9, abs=1e-6)
    assert f"6 of 9 written rows hold {expected} tokens" in result.detail and "You are Qwen" in result.detail
    html = render_report(report)
    assert f"6 of 9 written rows hold {expected} tokens" in html and QWEN_DEFAULT in html
    relaxed = {r.name: r for r in run_checks(out, CheckConfig(max_injected_text_rate=0.7)).results}
    assert relaxed["injected_text"].status == "pass"


def test_the_builtin_chatml_template_injects_nothing_on_qwen25(tmp_path):
    path = shared_path("tokenizers", "qwen2.5")
    rows = [_chat(k, system=False) for k in range(4)]
    manifest, out = _run(tmp_path, rows, path, **{"render.chat_template": "chatml"})
    assert manifest["chat_template"]["injects"] == ""
    assert "injected_text" not in manifest["accounting"]["notes"]
    assert {r.name: r for r in run_checks(out).results}["injected_text"].status == "pass"


def test_llama32_date_line_is_counted_on_every_row(tmp_path):
    path = shared_path("tokenizers", "llama3.2")
    tokenizer = real_tokenizer("llama3.2")
    rows = [_chat(k, system=k % 2 == 0) for k in range(4)]
    manifest, _ = _run(tmp_path, rows, path)
    assert manifest["chat_template"]["injects"] == LLAMA_DATE
    assert manifest["accounting"]["notes"]["injected_text"] == 4
    # the reference renders with today's date; the pipeline with its fixed one, of the same length in tokens here
    expected = sum(_tokens_holding(tokenizer, r["messages"], "Cutting Knowledge Date: December 2023\nToday Date:")
                   for r in rows)
    assert manifest["accounting"]["note_tokens"]["injected_text"] == expected + 4 * len(
        tokenizer(" 01 Jan 2024", add_special_tokens=False)["input_ids"])


def test_tool_presentation_and_markup_are_not_injected_text(tmp_path):
    """The demo tokenizer's GLM-4-style template: role tokens, and the tool instructions it writes for rows with
    tools, are the template's way of writing the data."""
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object"}}}]
    rows = [_chat(k, system=k % 2 == 0) | ({"tools": tools} if k % 2 else {}) for k in range(4)]
    manifest, out = _run(tmp_path, rows, DEMO_TOKENIZER)
    assert manifest["chat_template"]["injects"] == ""
    assert "injected_text" not in manifest["accounting"]["notes"] and manifest["accounting"]["note_tokens"] == {}
    assert {r.name: r for r in run_checks(out).results}["injected_text"].status == "pass"
