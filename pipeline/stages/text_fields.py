"""Every string of a conversation that reaches the chat template, with where it is.

A template may write any of them into the text that is tokenized: message text and reasoning, message `name` and
`tool_call_id`, tool-call names, ids and arguments, and tool definitions whole (names, descriptions, parameter
schemas), which templates write with `tojson`, keys included. The strings are read as the data holds them: JSON
escaping never touches the `<`, `|`, `>`, `[` and `]` of a special token, so a token typed in a raw string is one in
the rendering too. Checks on what text may hold read every string from here, so that no field is forgotten.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Union

from schemas.records import Conversation

Where = Union[str, tuple["Where", str | int]]
"""Where a string is: a root name, or (where its container is, its key or index). Linked, not a flat tuple, so that
walking a tool schema builds one small pair per string: every row is walked, and only a row with a finding needs
`field_path`. A dictionary key's place is that of its value."""

_MESSAGE_TEXTS = ("content", "reasoning_content", "name", "tool_call_id")


def template_strings(conversation: Conversation) -> Iterator[tuple[Where, str]]:
    """Each non-empty string the template is given, in the order templates write them: tools first, then messages."""
    if conversation.tools:
        yield from json_strings(conversation.tools, "tools")
    for index, message in enumerate(conversation.messages):
        at: Where = ("messages", index)
        for name in _MESSAGE_TEXTS:
            text = getattr(message, name)
            if text:
                yield (at, name), text
        for k, call in enumerate(message.tool_calls or ()):
            call_at: Where = ((at, "tool_calls"), k)
            yield (call_at, "name"), call.name
            if call.id:
                yield (call_at, "id"), call.id
            yield from json_strings(call.arguments, (call_at, "arguments"))


def json_strings(value: Any, where: Where) -> Iterator[tuple[Where, str]]:
    """Every non-empty string in a JSON value, keys and values, in document order. Walked with a stack of its own,
    not by recursion, so that no nesting depth the parser accepted can overflow Python's stack here."""
    stack: list[tuple[Where, Any]] = [(where, value)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if value:
                yield where, value
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                at = (where, key)
                stack.append((at, item))
                stack.append((at, key))
        elif isinstance(value, (list, tuple)):
            stack.extend([((where, i), item) for i, item in reversed(list(enumerate(value)))])


def field_path(where: Where) -> str:
    """The dotted path rejects and warnings name: `tools.0.function.description`."""
    parts: list[str | int] = []
    while isinstance(where, tuple):
        where, key = where
        parts.append(key)
    parts.append(where)
    return ".".join(map(str, reversed(parts)))
