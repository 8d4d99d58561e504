"""The same records written as JSON Lines, a JSON array or a CSV messages column, for tests that check every container
reads a row alike; and rows at and past the limits of what a row's JSON may hold (see `pipeline.stages.json_text`).

Records are JSON text, not dicts: some cannot be made by `json.dumps` (a 4,301-digit integer, 1,100 levels).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from schemas.sources import SourceConfig

CONTAINERS = ("jsonl", "json", "csv")
SOURCE = SourceConfig(csv_messages_column="messages")
"""Reads every container: the CSV's `messages` column holds a whole record."""

BIG = 123456789012345678901234567890  # 30 digits: far past 64 bits


def nested(depth: int) -> str:
    """JSON text of arrays nested `depth` levels deep."""
    return "[" * depth + "]" * depth


def chat(extra: str = "", answer: str = "Done.") -> str:
    """A valid chat record as JSON text; `extra` is more top-level members as JSON text (`"key": value`)."""
    members = f'"messages": [{{"role": "user", "content": "Hi"}}, {{"role": "assistant", "content": "{answer}"}}]'
    return "{" + members + (", " + extra if extra else "") + "}"


def tool_call(arguments: str, *, record_id: str = '"c"', answer: str = "Done.") -> str:
    """An OpenAI tool-call record as JSON text; `arguments` is the call's arguments as JSON text (an object, or a
    JSON string holding one). The arguments object sits 7 levels deep in the record."""
    return (
        f'{{"id": {record_id}, "tools": [{{"type": "function", "function": {{"name": "open_account"}}}}], "messages": ['
        '{"role": "user", "content": "Open my account"}, {"role": "assistant", "content": null, "tool_calls": '
        f'[{{"id": "c1", "type": "function", "function": {{"name": "open_account", "arguments": {arguments}}}}}]}}, '
        f'{{"role": "tool", "tool_call_id": "c1", "content": "ok"}}, {{"role": "assistant", "content": "{answer}"}}]}}'
    )


def as_json_string(text: str) -> str:
    """`text` as a JSON string literal."""
    return json.dumps(text)


# Rows at and past the limits, each with the reason `preprocess` gives it (None: written; `validate`, which has no
# tokenizer, accepts the special-token row). Every later stage (validation, rendering,
# rejects.jsonl, workers) sees the rows at the limit, each JSON text in them nested exactly 100 levels deep.
LIMIT_ROWS: list[tuple[str, str | None]] = [
    (chat(), None),
    (chat('"extra": ' + nested(1100)), "invalid_json"),  # past the parser's own recursion limit
    (tool_call('{"x": ' + nested(94) + "}"), "invalid_json"),  # 101 levels
    (chat('"n": ' + "7" * 4301), "invalid_json"),  # past Python's integer digit limit
    (tool_call('{"x": ' + nested(93) + "}"), None),  # 100 levels
    (tool_call(as_json_string('{"x": ' + nested(99) + "}")), None),  # a JSON string holding 100 levels
    (tool_call('{"x": ' + nested(93) + "}", answer="<|user|>"), "special_token_in_content"),  # rejected after adapting
    (tool_call(as_json_string('{"x": ' + nested(100) + "}")), "invalid_tool_arguments"),  # a string holding 101
]


def write_records(directory: Path, name: str, rows: list[str], kind: str) -> Path:
    """`rows` (JSON texts) as `directory/name.<kind>`: one per line, the elements of an array, or the `messages`
    cells of a CSV."""
    path = directory / f"{name}.{kind}"
    if kind == "jsonl":
        path.write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    elif kind == "json":
        path.write_text("[\n" + ",\n".join(rows) + "\n]\n", encoding="utf-8")
    else:
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["messages"])
            writer.writerows([row] for row in rows)
    return path


def row_numbers(kind: str, count: int) -> list[int]:
    """The row number of each of `count` records as `write_records` writes them (a CSV's header is line 1)."""
    return [k + (2 if kind == "csv" else 1) for k in range(count)]
