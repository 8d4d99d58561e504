"""Adapters: every format to the canonical Conversation, and every adapter error with its reason and field."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import RowError
from pipeline.stages.adapt import detect_record_format, record_id, to_conversation
from pipeline.stages.ingest import RawRecord, detect_formats, read_conversations
from schemas.records import Conversation, Message, ToolCall
from schemas.sources import SourceConfig

DATA = Path(__file__).parents[1] / "data" / "ingest"
SRC = SourceConfig()


def adapt(data, fmt="openai", source=SRC, row=1) -> Conversation | RowError:
    return to_conversation(RawRecord("t.jsonl", row, data), fmt, source=source)


def ok(data, fmt="openai", source=SRC) -> Conversation:
    out = adapt(data, fmt, source)
    assert isinstance(out, Conversation), out
    return out


def err(data, fmt="openai", source=SRC) -> RowError:
    out = adapt(data, fmt, source)
    assert isinstance(out, RowError), out
    return out


def msgs(*pairs, **extra):
    return {"messages": [{"role": r, "content": c} for r, c in pairs], **extra}


QA = (("user", "q"), ("assistant", "a"))


def from_file(name: str, source: SourceConfig = SRC) -> list[Conversation | RowError]:
    return list(read_conversations(detect_formats([DATA / name], source), source))


# --- ids ------------------------------------------------------------------------------------------------------------
def test_ids_own_or_stable_hash():
    assert ok({**msgs(*QA), "id": "abc"}).id == "abc"
    assert ok({**msgs(*QA), "id": 42}).id == "42"
    h = ok(msgs(*QA)).id
    assert len(h) == 16 and int(h, 16) >= 0
    assert h == record_id(msgs(*QA), source="other/dir/t.jsonl", row=1)  # basename, not the directory
    assert h != record_id(msgs(*QA), source="t.jsonl", row=2) != record_id(msgs(("user", "q2"), ("assistant", "a")), source="t.jsonl", row=1)
    assert err({**msgs(*QA), "id": {"x": 1}}).reason == "wrong_type"


# --- GLM-4 / ChatGLM3 -----------------------------------------------------------------------------------------------
GLM_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def test_glm4_tools_on_system_and_json_call_kept_verbatim():
    call = json.dumps({"name": "get_weather", "arguments": {"city": "北京"}}, ensure_ascii=False)
    conv = ok({"messages": [
        {"role": "system", "content": "", "tools": [GLM_TOOL]},
        {"role": "user", "content": "北京天气？"},
        {"role": "assistant", "content": call},
        {"role": "observation", "content": '{"t": 20}'},
        {"role": "assistant", "content": "20 度。"},
    ]}, "glm")
    assert conv.tools == (GLM_TOOL,)
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.messages[2].content == call and conv.messages[2].tool_calls is None
    assert conv.messages[0].content == ""


def test_chatglm3_conversations_tool_step_and_loss():
    (conv,) = from_file("chatglm3.json")
    assert conv.tools[0]["name"] == "track_package"
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.messages[1].loss is False
    thought = conv.messages[2]  # the tool step's call joins the assistant thought before it
    assert thought.content == "I'll look it up." and thought.tool_calls == (ToolCall(name="track_package", arguments={"tracking_id": "SF123"}),)
    assert conv.messages[3] == Message(role="tool", content='{"status": "out for delivery"}', name="track_package")


def test_glm_tools_in_two_places_are_refused():
    data = {"tools": [GLM_TOOL], "messages": [{"role": "system", "content": "", "tools": [GLM_TOOL]}, *msgs(*QA)["messages"]]}
    assert (err(data, "glm").reason, err(data, "glm").field) == ("invalid_tools", "tools")
    twice = {"messages": [{"role": "system", "content": "", "tools": []}, {"role": "user", "content": "q", "tools": []}, {"role": "assistant", "content": "a"}]}
    assert (err(twice, "glm").reason, err(twice, "glm").field) == ("invalid_tools", "messages.1.tools")
    assert err({"prompt": "x"}, "glm").reason == "missing_field"


# --- OpenAI ---------------------------------------------------------------------------------------------------------
def test_openai_tool_calls_string_and_object_arguments_and_legacy_functions():
    first, legacy, parts = from_file("openai_tools.jsonl")
    assert first.id == "weather-1" and first.tools[0]["function"]["name"] == "get_weather"
    calls = first.messages[1].tool_calls
    assert calls == (ToolCall(name="get_weather", arguments={"city": "Paris"}, id="call_1"),
                     ToolCall(name="get_weather", arguments={"city": "Rome"}, id="call_2"))
    assert first.messages[1].content == ""
    assert [(m.role, m.name) for m in first.messages[2:4]] == [("tool", "get_weather")] * 2
    assert [m.tool_call_id for m in first.messages[2:4]] == ["call_1", "call_2"]
    assert legacy.tools == ({"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}},)
    assert legacy.messages[1].tool_calls == (ToolCall(name="add", arguments={"a": 2, "b": 3}),)
    assert legacy.messages[2] == Message(role="tool", content="5", name="add")
    assert parts.tools is None  # "[]"
    assert parts.messages[0] == Message(role="user", content="Hi there", loss=False)
    assert parts.messages[1] == Message(role="assistant", content="Hello!", reasoning_content="A greeting.", loss=True)


@pytest.mark.parametrize(
    "arguments, reason",
    [
        ("l.remove(3.6)", "invalid_tool_arguments"),  # functionary's code_interpreter: raw Python
        ("[1, 2]", "invalid_tool_arguments"),
        (5, "invalid_tool_arguments"),
        ("", None),
        ({"x": [1, {"y": None}]}, None),
    ],
)
def test_openai_arguments(arguments, reason):
    data = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": arguments}}]},
                         {"role": "tool", "content": "r"}, {"role": "assistant", "content": "done"}]}
    out = adapt(data)
    if reason is None:
        assert isinstance(out, Conversation) and out.messages[1].tool_calls[0].arguments == (arguments or {})
    else:
        assert (out.reason, out.field) == (reason, "messages.1.tool_calls.0.function.arguments")


@pytest.mark.parametrize(
    "tools, field",
    [
        ("[{bad json", "tools"),
        ({"name": "f"}, "tools"),
        ([1], "tools.0"),
        ([{"type": "function", "function": {"description": "no name"}}], "tools.0.function"),
        ([{"description": "no name, no type"}], "tools.0"),
    ],
)
def test_malformed_tools(tools, field):
    e = err(msgs(*QA, tools=tools))
    assert (e.reason, e.field) == ("invalid_tools", field)


def test_tools_kept_exactly_and_other_tool_types_allowed():
    tools = [{"type": "code_interpreter"}, {"name": "g", "args": {"<x>": "<y>"}}, {"type": "function", "function": {"name": "h", "parameters": {"type": "dict"}}}]
    assert ok(msgs(*QA, tools=json.dumps(tools))).tools == tuple(tools)
    assert err({**msgs(*QA), "tools": [], "functions": []}).reason == "invalid_tools"


def test_content_parts():
    e = err({"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "image_url", "image_url": "x.png"}]}, {"role": "assistant", "content": "a"}]})
    assert (e.reason, e.field) == ("unsupported_content", "messages.0.content.1.type")
    conv = ok({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "reasoning", "value": "think"},
        {"type": "tool_call", "value": '{"name": "a", "arguments": {"k": 1}}'},
        {"type": "tool_call", "value": '{"name": "b", "arguments": {}}'}]}]})
    assert conv.messages[1].content == "" and conv.messages[1].reasoning_content == "think"
    assert [c.name for c in conv.messages[1].tool_calls] == ["a", "b"]
    e = err({"messages": [{"role": "user", "content": [{"type": "text", "value": 3}]}]})
    assert (e.reason, e.field) == ("wrong_type", "messages.0.content.0.value")
    e = err({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "tool_call", "value": "nope"}]}]})
    assert (e.reason, e.field) == ("invalid_tool_call", "messages.1.content.0.value")


def test_media_keys_are_unsupported():
    assert err(msgs(*QA, images=["a.jpg"])).field == "images"
    assert ok(msgs(*QA, images=[])).messages  # an empty list is no media
    e = err({"messages": [{"role": "user", "content": "q", "image": "/x.jpg"}, {"role": "assistant", "content": "a"}]}, "glm")
    assert (e.reason, e.field) == ("unsupported_content", "messages.0.image")


@pytest.mark.parametrize(
    "flags, loss, reason",
    [
        ({"loss": False}, False, None),
        ({"loss_weight": 1}, True, None),
        ({"loss_weight": 0.0}, False, None),
        ({"metadata": {"masked": True}}, False, None),
        ({"metadata": {"masked": False}}, None, None),
        ({"loss_weight": 0.5}, None, "invalid_loss_weight"),
        ({"loss": True, "loss_weight": 0}, None, "invalid_loss_weight"),
        ({"loss": "yes"}, None, "wrong_type"),  # no coercion of strings to booleans
    ],
)
def test_loss_flags(flags, loss, reason):
    out = adapt({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", **flags}]})
    if reason is None:
        assert out.messages[1].loss is loss
    else:
        assert out.reason == reason and out.field.startswith("messages.1")


@pytest.mark.parametrize(
    "data, field",
    [
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": 1}]}, "messages.2.content"),
        ({"messages": {"role": "user"}}, "messages"),
        ({"messages": [{"role": "user", "content": "q"}, "hello"]}, "messages.1"),
        ({"messages": [{"content": "q"}]}, "messages.0.role"),
    ],
)
def test_wrong_types_carry_the_pydantic_loc(data, field):
    e = err(data)
    assert e.field == field and e.reason in ("wrong_type", "missing_field")
    assert str(e).startswith(f"t.jsonl:1: {field}: ") and e.raw == data


def test_unknown_role_and_calls_on_a_user_message():
    e = err(msgs(("narrator", "x"), ("assistant", "a")))
    assert (e.reason, e.field) == ("unknown_role", "messages.0.role")
    e = err({"messages": [{"role": "user", "content": "q", "tool_calls": [{"function": {"name": "f"}}]}, {"role": "assistant", "content": "a"}]})
    assert e.reason == "invalid_tool_call"
    assert err("just text").reason == "wrong_type"


# --- ShareGPT -------------------------------------------------------------------------------------------------------
def test_sharegpt_function_call_turns():
    first, second = from_file("sharegpt_toolcall.json")
    assert [m.role for m in first.messages] == ["user", "assistant", "tool", "assistant"]
    assert first.messages[1] == Message(role="assistant", content="", tool_calls=(ToolCall(name="make_invoice", arguments={"total": 3.5}),))
    assert first.tools == ({"name": "make_invoice", "parameters": {"type": "object"}},)
    # a function_call turn right after a gpt turn joins it; arguments given as a JSON string are parsed
    assert [m.role for m in second.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert second.messages[2].content == "Let me check." and second.messages[2].tool_calls[0].arguments == {"symbol": "AAPL"}
    assert second.tools is None


def test_sharegpt_variants_and_errors():
    conv = ok({"system": "", "conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "sharegpt")
    assert [m.role for m in conv.messages] == ["system", "user", "assistant"]
    pairs = ok({"system": "sys", "conversation": [{"human": "q1", "assistant": "a1"}, {"human": "q2", "assistant": "a2"}]}, "sharegpt")
    assert [(m.role, m.content) for m in pairs.messages] == [("system", "sys"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]
    e = err({"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}, "sharegpt")
    assert (e.reason, e.field) == ("unknown_role", "conversations.1.from")
    e = err({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "get it"}]}, "sharegpt")
    assert (e.reason, e.field) == ("invalid_tool_call", "conversations.1.value")
    e = err({"conversations": [{"from": "human", "value": 3}]}, "sharegpt")
    assert (e.reason, e.field) == ("wrong_type", "conversations.0.value")
    e = err({"conversation": [{"Human": 3}]}, "sharegpt")
    assert (e.reason, e.field) == ("wrong_type", "conversation.0.Human")


# --- alpaca ---------------------------------------------------------------------------------------------------------
def test_alpaca_history_input_and_response_variants():
    poem, plain, swift = from_file("alpaca_history.jsonl")
    assert [(m.role, m.content) for m in poem.messages] == [
        ("system", "你是一名诗人。"), ("user", "你好"), ("assistant", "你好，请出题。"),
        ("user", "续写下一句\n\n床前明月光"), ("assistant", "疑是地上霜。")]
    assert [(m.role, m.content) for m in plain.messages] == [("user", "Say hi."), ("assistant", "Hi!")]
    assert [(m.role, m.content) for m in swift.messages] == [("user", "1+1?"), ("assistant", "2")]
    joined = ok({"instruction": "A", "input": "B", "output": "C"}, "alpaca", SourceConfig(alpaca_input_separator=" | "))
    assert joined.messages[0].content == "A | B"
    assert ok({"response": "only"}, "alpaca").messages == (Message(role="assistant", content="only"),)
    assert err({"instruction": "i", "output": 3.3}, "alpaca").field == "output"  # no number -> string guessing
    assert err({"instruction": "i", "output": "o", "history": [["only one"]]}, "alpaca").field == "history.0"
    assert err({"instruction": "i"}, "alpaca").reason == "missing_field"


# --- CSV ------------------------------------------------------------------------------------------------------------
def test_csv_column_map_and_empty_system():
    first, second = from_file("messages_map.csv")
    assert first.id == "7" and first.row == 2
    assert [(m.role, m.content) for m in first.messages] == [("user", "Line one\nline two"), ("assistant", "00123")]
    (row,) = from_file("gb18030.csv", SourceConfig(encoding="gb18030"))
    assert [m.role for m in row.messages] == ["user", "assistant"]  # the empty system cell: no system message
    conv = ok({"s": "sys", "p": "q", "r": "a"}, "csv", SourceConfig(csv_map={"system": "s", "user": "p", "assistant": "r"}))
    assert [(m.role, m.content) for m in conv.messages] == [("system", "sys"), ("user", "q"), ("assistant", "a")]


def test_csv_messages_column():
    good, bad = from_file("messages_column.csv", SourceConfig(csv_messages_column="messages"))
    assert [(m.role, m.content) for m in good.messages] == [("user", "ping"), ("assistant", "pong")]
    assert (bad.reason, bad.field, bad.row) == ("invalid_json", "messages", 3)
    src = SourceConfig(csv_messages_column="m")
    e = err({"m": '[{"role": "user", "content": 1}]'}, "csv", src)
    assert (e.reason, e.field) == ("wrong_type", "m.0.content")
    e = err({"m": '[{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "x("}}]}]'}, "csv", src)
    assert (e.reason, e.field) == ("invalid_tool_arguments", "m.1.tool_calls.0.function.arguments")


# --- detection ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "record, fmt",
    [
        ({"messages": [{"role": "user", "content": "q"}]}, "openai"),
        ({"messages": [{"role": "system", "content": "", "tools": []}]}, "glm"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "observation", "content": "r"}]}, "glm"),
        ({"conversations": [{"role": "user", "content": "q"}]}, "glm"),
        ({"conversations": [{"from": "human", "value": "q"}]}, "sharegpt"),
        ({"conversation": [{"human": "q", "assistant": "a"}]}, "sharegpt"),
        ({"query": "q", "response": "r"}, "alpaca"),
        ({"chosen": [], "rejected": []}, None),
        ([1, 2], None),
    ],
)
def test_detect_record_format(record, fmt):
    assert detect_record_format(record) == fmt


@pytest.mark.parametrize("fmt", ["openai", "glm"])
def test_plain_turns_adapt_as_turns_that_spell_out_their_defaults(fmt):
    """A turn giving only `role` and a string `content` takes a short path; spelling out a default field (`name:
    null`) sends the same turn through every adapter step, and the result must not differ."""
    from pipeline.stages.adapt import ROLES

    turns = [{"role": "user", "content": ""}] + [{"role": role, "content": f"text of {role} ✓"} for role in ROLES] + \
        [{"role": "assistant", "content": "a"}]
    plain = ok({"messages": turns}, fmt)
    spelled = ok({"messages": [{**t, "name": None, "loss": None} for t in turns]}, fmt)
    assert plain.messages == spelled.messages
    assert [m.role for m in plain.messages] == ["user", *ROLES.values(), "assistant"]
    unknown = err({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "a"}]}, fmt)
    assert (unknown.reason, unknown.field) == ("unknown_role", "messages.0.role")
