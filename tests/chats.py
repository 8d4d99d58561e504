"""Hand-written conversations covering what templates treat differently, and an independent canonical -> HF mapping.

`hf_messages` is written here from the Hugging Face chat-template conventions, not imported from the pipeline, so
parity tests compare the pipeline against `apply_chat_template` rather than against itself.
"""
from __future__ import annotations

import json

from schemas.records import Conversation, Message, ToolCall

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def conversation(*messages: Message, tools=None, row: int = 1) -> Conversation:
    return Conversation(id=f"test-{row}", source="test.jsonl", row=row, messages=tuple(messages), tools=tools)


PLAIN = conversation(
    Message(role="user", content="What is 2 + 2?"),
    Message(role="assistant", content="2 + 2 = 4."),
)
WITH_SYSTEM = conversation(
    Message(role="system", content="You are a concise assistant."),
    Message(role="user", content="  Name a prime number.  "),
    Message(role="assistant", content="Seven.  "),
    Message(role="user", content="用中文说一个质数。"),
    Message(role="assistant", content="十一是一个质数。\n它只能被1和自身整除。"),
    row=2,
)
WITH_TOOLS = conversation(
    Message(role="system", content="You can look up the weather."),
    Message(role="user", content="Is it cold in 北京 today?"),
    Message(role="assistant", content="", tool_calls=(ToolCall(name="get_weather", arguments={"city": "北京"}),)),
    Message(role="tool", content='{"temp_c": -3, "sky": "clear"}', name="get_weather"),
    Message(role="assistant", content="Yes: -3 °C and clear skies in Beijing."),
    tools=(WEATHER_TOOL,),
    row=3,
)
WITH_REASONING = conversation(
    Message(role="user", content="Is 91 prime?"),
    Message(role="assistant", content="No, 91 = 7 × 13.", reasoning_content="Try small primes: 91 / 7 = 13."),
    Message(role="user", content="And 97?"),
    Message(role="assistant", content="Yes, 97 is prime.", reasoning_content="No prime up to 9 divides 97."),
    row=4,
)
ALL = [PLAIN, WITH_SYSTEM, WITH_TOOLS, WITH_REASONING]


def hf_tools(conv: Conversation) -> list[dict] | None:
    """Tools in the JSON-schema form Hugging Face chat templates document: bare function specs get wrapped."""
    if not conv.tools:
        return None
    return [t if "type" in t or "function" in t else {"type": "function", "function": t} for t in conv.tools]


def hf_messages(conv: Conversation, *, tool_role: str = "tool", tools_on_system: bool = False,
                tool_calls_as_json: bool = False) -> list[dict]:
    """The messages a user would pass to `apply_chat_template` for this conversation."""
    out = []
    for m in conv.messages:
        message = {"role": tool_role if m.role == "tool" else m.role, "content": m.content}
        if m.reasoning_content:
            message["reasoning_content"] = m.reasoning_content
        if m.tool_calls:
            if tool_calls_as_json:  # GLM-4's written form, after any text of the message
                calls = [json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False) for c in m.tool_calls]
                message["content"] = "\n".join(([m.content] if m.content else []) + calls)
            else:
                message["tool_calls"] = [
                    {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls
                ]
        if m.name:
            message["name"] = m.name
        if m.tool_call_id:
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    if conv.tools and tools_on_system:
        if out[0]["role"] == "system":
            out[0]["tools"] = hf_tools(conv)
        else:
            out.insert(0, {"role": "system", "content": "", "tools": hf_tools(conv)})
    return out
