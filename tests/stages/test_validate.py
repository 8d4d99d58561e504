"""Validation rules and notes over adapted conversations."""
from __future__ import annotations

import pytest

from pipeline.errors import Kind
from pipeline.stages.validate import check_conversation, notes_for
from schemas.records import Conversation, Message, ToolCall


def conv(*messages: Message) -> Conversation:
    return Conversation(id="x", source="s", row=1, messages=messages)


U, A, T, S = (lambda c="x", r=r, **kw: Message(role=r, content=c, **kw) for r in ("user", "assistant", "tool", "system"))
CALL = (ToolCall(name="f"),)


# --- rules ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "messages, reason",
    [
        ((), "empty_conversation"),
        ((S(), U()), "no_assistant"),
        ((U(), A(" \n")), "empty_assistant"),
        ((U(), A(""), U(), A()), "empty_assistant"),
        ((U(), A(), U()), "no_final_assistant"),
        ((U(), A("", tool_calls=CALL), T()), "no_final_assistant"),
        ((U(), A()), None),
        ((U(), A("", tool_calls=CALL)), None),  # ends on a call: accepted, trains the call
        ((U(), A("", reasoning_content="thinking only")), None),
        ((A(),), None),
    ],
)
def test_rules(messages, reason):
    problem = check_conversation(conv(*messages))
    assert (problem[0] if problem else None) == reason
    if problem:
        assert problem[0].kind is Kind.REJECTED


def test_notes():
    assert notes_for(conv(U(), A())) == []
    assert notes_for(conv(S(), A())) == ["starts_with_assistant"]
    assert notes_for(conv(U(), U(), A(), A())) == ["consecutive_same_role"]
    assert notes_for(conv(U(""), A("", tool_calls=CALL))) == ["ends_with_tool_call", "empty_user_turn"]
    assert notes_for(conv(U(), S(), A())) == ["system_not_first"]
    assert all(note.kind is Kind.NOTED for note in notes_for(conv(U(""), U(), S(), A("", tool_calls=CALL))))
