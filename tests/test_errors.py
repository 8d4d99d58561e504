"""The reason codes: one enum, and the README's reason table lists each code with its kind."""
from __future__ import annotations

import json
import pickle
import re

from pipeline.errors import Kind, Reason, RowError
from schemas.records import Conversation, Message
from tests.conftest import REPO


def readme_reasons() -> dict[str, str]:
    """{code: kind} from the rows of the README's `### Reasons` table (a row may name several codes)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n### Reasons\n", 1)[1].split("\n#", 1)[0]
    table: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        codes, _stage, meaning = (cell.strip() for cell in line.strip("|").split(" | ", 2))
        kind = re.match(r"(\w+)", meaning).group(1)
        for code in re.findall(r"`([a-z0-9_]+)`", codes):
            assert code not in table, f"{code} is listed twice"
            table[code] = kind
    return table


def test_the_readme_table_lists_every_reason_with_its_kind_and_nothing_else():
    table = readme_reasons()
    assert set(table) == {reason.value for reason in Reason}
    assert {code: Reason(code).kind.value for code in table} == table


def test_a_reason_is_its_code_in_json_counts_and_pickles():
    error = RowError("a.jsonl", 3, Reason.INVALID_JSON, "not JSON")
    assert json.dumps(error.to_json()["reason"]) == '"invalid_json"'
    assert {Reason.TOO_LONG: 1} == {"too_long": 1}
    again = pickle.loads(pickle.dumps(error))
    assert again.reason is Reason.INVALID_JSON and again.reason.kind is Kind.REJECTED


def test_a_conversation_row_error_carries_its_provenance_and_the_whole_row():
    conversation = Conversation(id="c1", source="in.jsonl", row=7, messages=(Message(role="user", content="hi"),))
    error = RowError.of(conversation, Reason.TEMPLATE_ERROR, "messages.0.content", "refused")
    assert (error.source, error.row, error.id, error.field) == ("in.jsonl", 7, "c1", "messages.0.content")
    assert error.raw == {"id": "c1", "source": "in.jsonl", "row": 7, "messages": [{"role": "user", "content": "hi"}]}
    assert str(error) == "in.jsonl:7: messages.0.content: refused"
