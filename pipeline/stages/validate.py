"""Validation rules over adapted conversations (the `validate` command that runs them over files is in
`pipeline.commands.validate`).

A rule either rejects (a `Reason` of kind rejected, like the adapters') or accepts with a note (counted, never
dropped).
Rules look at the canonical messages, so a `messages.N` field in a rule error indexes the adapted conversation.
"""
from __future__ import annotations

from pipeline.errors import Reason
from schemas.records import Conversation


def check_conversation(conv: Conversation) -> tuple[Reason, str, str] | None:
    """The first rule the conversation breaks, as (reason, field, message), or None when it is accepted."""
    msgs = conv.messages
    if not msgs:
        return Reason.EMPTY_CONVERSATION, "messages", "the conversation has no messages"
    if not any(m.role == "assistant" for m in msgs):
        return Reason.NO_ASSISTANT, "messages", "no assistant message, so nothing to train on"
    for i, m in enumerate(msgs):
        if m.role == "assistant" and not m.content.strip() and not m.tool_calls and not (m.reasoning_content or "").strip():
            return Reason.EMPTY_ASSISTANT, f"messages.{i}.content", f"assistant message {i} has no content and no tool calls"
    if msgs[-1].role != "assistant":
        return Reason.NO_FINAL_ASSISTANT, f"messages.{len(msgs) - 1}.role", f"ends on a {msgs[-1].role} turn, not the assistant's"
    return None


def notes_for(conv: Conversation) -> list[Reason]:
    """What is odd but accepted about a conversation."""
    msgs = conv.messages
    notes = []
    first = next((m.role for m in msgs if m.role != "system"), None)
    if first == "assistant":
        notes.append(Reason.STARTS_WITH_ASSISTANT)
    if any(a.role == b.role for a, b in zip(msgs, msgs[1:])):
        notes.append(Reason.CONSECUTIVE_SAME_ROLE)
    if msgs and msgs[-1].tool_calls:
        notes.append(Reason.ENDS_WITH_TOOL_CALL)
    if any(m.role == "user" and not m.content.strip() for m in msgs):
        notes.append(Reason.EMPTY_USER_TURN)
    if any(m.role == "system" for m in msgs[1:]):
        notes.append(Reason.SYSTEM_NOT_FIRST)
    return notes
