"""Validation rules over adapted conversations (the `validate` command that runs them over files is in
`pipeline.commands.validate`).

A rule either rejects (a reason code, like the adapters' codes) or accepts with a note (counted, never dropped).
Rules look at the canonical messages, so a `messages.N` field in a rule error indexes the adapted conversation.
"""
from __future__ import annotations

from pipeline.stages.json_text import MAX_DEPTH
from schemas.records import Conversation

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
