"""Validation rules over adapted conversations, and `validate_inputs`: read everything, count, write rejects, report.

A rule either rejects (a reason code, like the adapters' codes) or accepts with a note (counted, never dropped).
Rules look at the canonical messages, so a `messages.N` field in a rule error indexes the adapted conversation.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import RowError
from pipeline.json_text import MAX_DEPTH
from pipeline.progress import progress
from schemas.records import Conversation
from schemas.sources import SourceConfig

REASONS = {
    # ingest: the line is not a record
    "invalid_json": "a record's JSON (a line, an array element, a CSV messages cell) is not valid JSON, or is nested "
                    f"deeper than {MAX_DEPTH} levels, or holds an integer past Python's digit limit",
    "invalid_csv": "bad CSV quoting, or a row with a different number of fields than the header",
    # adapt: the record does not map to a conversation
    "wrong_type": "a field has the wrong JSON type (the field path comes from pydantic's loc)",
    "missing_field": "a required field is missing (messages, output, ...)",
    "unknown_role": "a role / from value no format defines",
    "invalid_tools": "tool definitions are not a list of tool objects (or a JSON string of one)",
    "invalid_tool_call": "a tool call without a name, or a function_call turn that is not a JSON call",
    "invalid_tool_arguments": "tool-call arguments are not a JSON object (or a string holding one)",
    "unsupported_content": "images or other non-text content",
    "invalid_loss_weight": "loss_weight not 0 or 1, or loss flags that disagree",
    # rules
    "empty_conversation": "no messages at all",
    "no_assistant": "no assistant message: nothing to train on",
    "empty_assistant": "an assistant message with no content, no reasoning and no tool calls",
    "no_final_assistant": "the last message is not the assistant's (ends on a user or tool turn)",
}
NOTES = {
    "starts_with_assistant": "no user turn before the first assistant turn (pre-training style rows)",
    "consecutive_same_role": "two turns of the same role in a row (the chat template decides)",
    "ends_with_tool_call": "the last assistant message is a tool call with no result after it (trains the call)",
    "empty_user_turn": "a user message with empty content",
    "system_not_first": "a system message after the first turn",
}


def check_conversation(conv: Conversation) -> tuple[str, str, str] | None:
    """The first rule the conversation breaks, as (reason, field, message), or None when it is accepted."""
    msgs = conv.messages
    if not msgs:
        return "empty_conversation", "messages", "the conversation has no messages"
    if not any(m.role == "assistant" for m in msgs):
        return "no_assistant", "messages", "no assistant message, so nothing to train on"
    for i, m in enumerate(msgs):
        if m.role == "assistant" and not m.content.strip() and not m.tool_calls and not (m.reasoning_content or "").strip():
            return "empty_assistant", f"messages.{i}.content", f"assistant message {i} has no content and no tool calls"
    if msgs[-1].role != "assistant":
        return "no_final_assistant", f"messages.{len(msgs) - 1}.role", f"ends on a {msgs[-1].role} turn, not the assistant's"
    return None


def notes_for(conv: Conversation) -> list[str]:
    """What is odd but accepted about a conversation (see NOTES)."""
    msgs = conv.messages
    notes = []
    first = next((m.role for m in msgs if m.role != "system"), None)
    if first == "assistant":
        notes.append("starts_with_assistant")
    if any(a.role == b.role for a, b in zip(msgs, msgs[1:])):
        notes.append("consecutive_same_role")
    if msgs and msgs[-1].tool_calls:
        notes.append("ends_with_tool_call")
    if any(m.role == "user" and not m.content.strip() for m in msgs):
        notes.append("empty_user_turn")
    if any(m.role == "system" for m in msgs[1:]):
        notes.append("system_not_first")
    return notes


@dataclass
class ValidationReport:
    """Counts of one `validate_inputs` run; `read == accepted + rejected` always."""

    files: dict[str, str] = field(default_factory=dict)
    read: int = 0
    accepted: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    examples: list[RowError] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
            "notes": dict(sorted(self.notes.items())),
            "files": self.files,
            "errors": [{k: v for k, v in e.to_json().items() if k != "raw"} for e in self.examples],
        }

    def to_text(self) -> str:
        width = max((len(p) for p in self.files), default=0)
        lines = ["files:"] + [f"  {p:<{width}}  {fmt}" for p, fmt in self.files.items()]
        lines.append(f"read {self.read}, accepted {self.accepted}, rejected {self.rejected}")
        for title, counts in (("rejected by reason:", self.reasons), ("accepted with notes:", self.notes)):
            if counts:
                lines.append(title)
                lines += [f"  {code:<24} {n}" for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        if self.examples:
            lines.append(f"first {len(self.examples)} error(s):")
            for e in self.examples:
                at = f" (line {e.extra['line']})" if e.extra.get("line") else ""
                lines.append(f"  {e}{at}  [{e.reason}]")
        return "\n".join(lines)


def validate_inputs(
    inputs: Sequence[str], source: SourceConfig, *, rejects: Path | None = None, max_examples: int = 10,
    show_progress: bool | None = None,
) -> ValidationReport:
    """Read every input with `source`, count accepted and rejected rows per reason, keep the first errors, and
    write every rejected row to `rejects` as JSONL (written to a temp file, renamed when the run completes).

    `InputError` when an input is missing or unreadable; nothing is left at `rejects` then.
    """
    from pipeline.ingest import detect_format, read_conversations, resolve_inputs  # ingest -> adapt -> this module

    paths = resolve_inputs(inputs)
    report = ValidationReport(files={str(p): detect_format(p, source) for p in paths})
    tmp = rejects.with_name(f".{rejects.name}.tmp-{os.getpid()}") if rejects is not None else None
    out = open(tmp, "w", encoding="utf-8") if tmp is not None else None
    try:
        for item in progress(read_conversations(paths, source), desc="validate", enabled=show_progress):
            report.read += 1
            if isinstance(item, RowError):
                report.reasons[item.reason] += 1
                if len(report.examples) < max_examples:
                    report.examples.append(item)
                if out is not None:
                    out.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
            else:
                report.accepted += 1
                report.notes.update(notes_for(item))
        if out is not None:
            out.close()
            os.replace(tmp, rejects)
    finally:
        if out is not None and not out.closed:
            out.close()
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return report
