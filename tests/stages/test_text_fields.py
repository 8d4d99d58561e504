"""Every string the chat template is given is found, with the path a reject names."""
from __future__ import annotations

from pipeline.stages.text_fields import field_path, json_strings, template_strings
from schemas.records import Conversation, Message, ToolCall


def test_every_string_the_template_is_given_is_found_in_order_with_its_path():
    conversation = Conversation(
        id="a", source="s.jsonl", row=1,
        tools=({"type": "function",
                "function": {"name": "f", "parameters": {"properties": {"x": {"enum": ["p", 1]}}}}},),
        messages=(Message(role="system", content="sys"),
                  Message(role="user", content="", name="ann"),
                  Message(role="assistant", reasoning_content="think",
                          tool_calls=(ToolCall(name="f", id="c1", arguments={"x": {"y": ["q"]}}),)),
                  Message(role="tool", content="r", tool_call_id="c1")),
    )
    assert [(field_path(where), text) for where, text in template_strings(conversation)] == [
        ("tools.0.type", "type"), ("tools.0.type", "function"),
        ("tools.0.function", "function"), ("tools.0.function.name", "name"), ("tools.0.function.name", "f"),
        ("tools.0.function.parameters", "parameters"), ("tools.0.function.parameters.properties", "properties"),
        ("tools.0.function.parameters.properties.x", "x"), ("tools.0.function.parameters.properties.x.enum", "enum"),
        ("tools.0.function.parameters.properties.x.enum.0", "p"),
        ("messages.0.content", "sys"), ("messages.1.name", "ann"), ("messages.2.reasoning_content", "think"),
        ("messages.2.tool_calls.0.name", "f"), ("messages.2.tool_calls.0.id", "c1"),
        ("messages.2.tool_calls.0.arguments.x", "x"), ("messages.2.tool_calls.0.arguments.x.y", "y"),
        ("messages.2.tool_calls.0.arguments.x.y.0", "q"),
        ("messages.3.content", "r"), ("messages.3.tool_call_id", "c1"),
    ]


def test_nesting_deeper_than_the_recursion_limit_is_walked():
    value: object = "deep"
    for _ in range(5000):
        value = [value]
    key, (where, text) = json_strings({"k": value}, "arguments")
    assert key[1] == "k" and text == "deep" and field_path(where) == "arguments.k" + ".0" * 5000
